"""The planner: per-device memory and PartitionSpecs before you rent the pod.

``plan_model`` works on an *abstract* model (``nnx.eval_shape``), a mesh given
as axis sizes (no devices needed) and a preset, and returns a :class:`Plan`:
per-device bytes of parameters, gradients and optimizer state (exact for the
given sharding), activations (an estimate: no rematerialisation, the usual
transformer accounting), the PartitionSpec of every parameter group, and
warnings when the preset will not fit or leaves devices idle.

``jaxkernel plan MODEL`` is the command-line face; MODEL is a named size
(``gpt2-xl``, ``bert-large``...) or a Hugging Face ``config.json`` / model dir.

Example::

    plan = plan_config(Gpt2Config(n_embd=1600, n_layer=48, n_head=25), "causal-lm",
                       mesh=(1, 8, 1), preset="fsdp", batch_size=32, seq_len=1024,
                       device_memory=16 * 2**30)
    print(format_plan(plan))
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np
from flax import nnx

from jaxkernel.sharding import rules as sharding_rules
from jaxkernel.sharding.mesh import MeshConfig

GiB = 2**30

# Optimizer state per trainable element, in units of the parameter's size.
OPTIMIZER_SLOTS = {"adamw": 2, "adam": 2, "lion": 1, "momentum": 1, "sgd": 0}

# Device memory (bytes) by accelerator name; "-N" suffixes give the device count.
DEVICE_MEMORY = {
    "v4": 32 * GiB, "v5e": 16 * GiB, "v5p": 95 * GiB, "v6e": 32 * GiB,
    "a100": 80 * GiB, "a100-40gb": 40 * GiB, "h100": 80 * GiB, "h200": 141 * GiB, "cpu": 16 * GiB,
}
# TPU slice names count TensorCores for v4/v5p (2 per chip, one JAX device per chip).
CORES_PER_DEVICE = {"v4": 2, "v5p": 2}

@dataclasses.dataclass(frozen=True)
class ParamGroup:
    """Parameters that share a path pattern (layer index -> ``*``), shape and spec."""

    pattern: str
    count: int
    shape: tuple[int, ...]
    logical_axes: tuple | None
    spec: jax.sharding.PartitionSpec
    dtype: str
    trainable: bool
    bytes_per_device: int  # all ``count`` tensors together


@dataclasses.dataclass
class Plan:
    preset: str
    axis_sizes: dict[str, int]
    batch_size: int
    seq_len: int
    microbatches: int
    optimizer: str
    groups: list[ParamGroup]
    param_bytes: int  # per device, every variable (trainable + frozen)
    trainable_bytes: int
    grad_bytes: int
    optimizer_bytes: int
    activation_bytes: int  # estimate
    device_memory: int | None
    num_params: int
    num_trainable: int
    warnings: list[str]
    notes: list[str]

    @property
    def total_bytes(self) -> int:
        return self.param_bytes + self.grad_bytes + self.optimizer_bytes + self.activation_bytes

    @property
    def num_devices(self) -> int:
        return math.prod(self.axis_sizes.values())


def parse_bytes(text: str | int | float | None) -> int | None:
    """``"16GiB"``, ``"80GB"``, ``"512M"``, ``1e9`` -> bytes; a device name (``v5e``) -> its memory."""
    if text is None or isinstance(text, (int, float)):
        return None if text is None else int(text)
    key = text.strip().lower()
    if key in DEVICE_MEMORY:
        return DEVICE_MEMORY[key]
    m = re.fullmatch(r"([\d.]+)\s*([kmgt]?)(i?)(b?)", key)
    if not m:
        raise ValueError(f"cannot read memory size {text!r}; write e.g. 16GiB, 80GB or a device name {sorted(DEVICE_MEMORY)}")
    power = " kmgt".index(m.group(2) or " ")
    base = 1000 if m.group(4) and not m.group(3) else 1024  # "80GB" is decimal, "16GiB"/"16G" binary
    return int(float(m.group(1)) * base**power)


def parse_device(name: str) -> tuple[int | None, int]:
    """``"v5e-8"`` -> (8 devices, 16 GiB); ``"v4-32"`` -> (16, 32 GiB); ``"h100"`` -> (None, 80 GiB)."""
    m = re.fullmatch(r"([a-z0-9]+?)(?:-(\d+))?", name.strip().lower())
    kind = m.group(1) if m else name
    if kind not in DEVICE_MEMORY:
        raise ValueError(f"unknown device {name!r}; known: {sorted(DEVICE_MEMORY)} (optionally -N, e.g. v5e-8)")
    count = int(m.group(2)) // CORES_PER_DEVICE.get(kind, 1) if m.group(2) else None
    return count, DEVICE_MEMORY[kind]


def _pattern(path: tuple) -> str:
    return ".".join("*" if isinstance(p, int) or str(p).isdigit() else str(p) for p in path)


def _slots(optimizer: str) -> int:
    if optimizer not in OPTIMIZER_SLOTS:
        raise ValueError(f"unknown optimizer {optimizer!r} for the planner; choose one of {sorted(OPTIMIZER_SLOTS)}")
    return OPTIMIZER_SLOTS[optimizer]


def shard_bytes(shape, dtype, spec, axis_sizes: Mapping[str, int]) -> int:
    """Bytes of one device's shard of an array with ``spec`` (dims divide evenly)."""
    ways = 1
    for entry in spec:
        for axis in sharding_rules._as_tuple(entry):
            ways *= axis_sizes.get(axis, 1)
    return int(math.prod(shape)) * np.dtype(dtype).itemsize // ways


def estimate_activation_bytes(config, task: str, axis_sizes, rules, batch_size: int, seq_len: int,
                              microbatches: int = 1, remat: bool = False) -> int:
    """Saved forward activations per device for one microbatch (no remat), an estimate.

    Per layer and token: ~6 D values replicated over ``tensor`` (LayerNorm
    inputs/outputs, residuals, projections), 4 D + 2 F split over it (q, k, v,
    attention output, MLP hidden and activation), 2 D bytes of dropout masks,
    and per head a T-long row of float32 probabilities, their dropped copy in
    the compute dtype and a byte mask; then the float32 logits, log-softmax and
    their gradient. Attention rows dominate at long T: shorten sequences or
    use microbatches when they do not fit. With ``remat`` (layer
    rematerialisation, ``train.remat``) only each layer's input is kept, plus
    one layer's activations while it is recomputed.
    """
    d = getattr(config, "hidden_size", None) or config.n_embd
    layers = getattr(config, "num_hidden_layers", None) or config.n_layer
    f = getattr(config, "intermediate_size", None) or config.inner_size
    heads = sharding_rules.num_heads_of(config)
    vocab = config.vocab_size
    dtype_bytes = np.dtype(config.compute_dtype or np.float32).itemsize
    data_ways = sharding_rules.data_parallel_size(axis_sizes)
    b = max(batch_size // microbatches // data_ways, 1)
    tp = math.prod(axis_sizes.get(a, 1) for a in rules.mesh_axes("heads"))
    tp_mlp = math.prod(axis_sizes.get(a, 1) for a in rules.mesh_axes("mlp"))
    t = seq_len
    per_layer = b * t * ((6 * d + 4 * d / tp) * dtype_bytes + 2 * f / tp_mlp * dtype_bytes + 2 * d)
    per_layer += b * heads / tp * t * t * (4 + dtype_bytes + 1)
    out_dim = vocab if task in ("causal-lm", "masked-lm") else getattr(config, "num_labels", 2)
    vocab_ways = math.prod(axis_sizes.get(a, 1) for a in rules.mesh_axes("vocab")) if out_dim == vocab else 1
    logits = b * t * out_dim / vocab_ways * 4 * 3
    if remat:
        return int(layers * b * t * d * dtype_bytes + per_layer + logits)
    return int(layers * per_layer + logits)


def plan_model(
    abstract_model: nnx.Module,
    axis_sizes: Mapping[str, int],
    rules,
    *,
    batch_size: int,
    seq_len: int,
    trainable: Any = nnx.Param,
    optimizer: str = "adamw",
    microbatches: int = 1,
    device_memory: int | None = None,
    remat: bool = False,
) -> Plan:
    """Plan an abstract model (``nnx.eval_shape(...)``) on a mesh of ``axis_sizes``.

    Args:
      abstract_model: the model as it will be trained (LoRA applied, int8...).
      axis_sizes: mesh axis -> size, e.g. ``{"data": 1, "fsdp": 8, "tensor": 1}``.
      rules: preset name or ShardingRules.
      batch_size, seq_len: the global batch and sequence length.
      trainable: NNX filter of the trained variables (as in the train step).
      optimizer: "adamw", "adam", "lion", "momentum" or "sgd" (state size).
      microbatches: gradient accumulation steps (activations shrink, an
        accumulator the size of the gradients is added).
      device_memory: bytes per device; when given, fit warnings are issued.
      remat: layer rematerialisation is on (smaller activation estimate).
    """
    rules = sharding_rules.get_rules(rules)
    sizes = sharding_rules.axis_sizes_of(axis_sizes)
    config = getattr(abstract_model, "config", None)
    warnings: list[str] = []
    notes: list[str] = []
    for check in (lambda: sharding_rules.check_model(config, rules, sizes),
                  lambda: sharding_rules.check_batch(batch_size, sizes, microbatches)):
        try:
            check()
        except ValueError as err:
            warnings.append(f"will fail: {err}")

    _, train_state, rest = nnx.split(abstract_model, trainable, ...)
    trainable_paths = {path for path, _ in nnx.to_flat_state(train_state)}
    groups: dict[tuple, dict] = {}
    param_bytes = trainable_bytes = num_params = num_trainable = 0
    for path, var in list(nnx.to_flat_state(train_state)) + list(nnx.to_flat_state(rest)):
        if isinstance(var, nnx.RngState):
            continue
        value = var.get_value()
        name = ".".join(map(str, path))
        spec = sharding_rules.variable_spec(var, rules, sizes, what=name, notes=notes)
        nbytes = shard_bytes(value.shape, value.dtype, spec, sizes)
        is_trainable = path in trainable_paths
        param_bytes += nbytes
        num_params += int(math.prod(value.shape))
        if is_trainable:
            trainable_bytes += nbytes
            num_trainable += int(math.prod(value.shape))
        key = (_pattern(path), tuple(value.shape), spec, str(value.dtype), is_trainable)
        group = groups.setdefault(key, dict(count=0, bytes=0, axes=sharding_rules.logical_axes_of(var)))
        group["count"] += 1
        group["bytes"] += nbytes
    notes[:] = sorted(set(re.sub(r"\.\d+\.", ".*.", n) for n in notes))
    rows = [
        ParamGroup(pattern, g["count"], shape, g["axes"], spec, dtype, is_trainable, g["bytes"])
        for (pattern, shape, spec, dtype, is_trainable), g in groups.items()
    ]
    grad_bytes = trainable_bytes * (2 if microbatches > 1 else 1)
    optimizer_bytes = trainable_bytes * _slots(optimizer)
    activation_bytes = 0
    if config is not None:
        activation_bytes = estimate_activation_bytes(
            config, getattr(abstract_model, "task", ""), sizes, rules, batch_size, seq_len, microbatches, remat
        )
    plan = Plan(
        rules.name, dict(sizes), batch_size, seq_len, microbatches, optimizer, rows, param_bytes, trainable_bytes,
        grad_bytes, optimizer_bytes, activation_bytes, device_memory, num_params, num_trainable, warnings, notes,
    )
    _fit_warnings(plan, rules)
    return plan


def _fit_warnings(plan: Plan, rules: sharding_rules.ShardingRules) -> None:
    used = {a for logical, _ in rules.mapping for a in rules.mesh_axes(logical)} | set(sharding_rules.BATCH_AXES)
    for axis, size in plan.axis_sizes.items():
        if size > 1 and axis not in used:
            plan.warnings.append(
                f"mesh axis {axis!r} has {size} devices but preset {rules.name!r} does not use it: "
                f"they hold identical copies and repeat the same work; use a preset that shards over {axis!r} "
                f"or give that axis size 1"
            )
    ways = sharding_rules.data_parallel_size(plan.axis_sizes)
    per_device = plan.batch_size // max(plan.microbatches, 1)
    if 0 < per_device < ways:
        plan.warnings.append(
            f"(micro)batch {per_device} is smaller than the {ways} data-parallel devices: some would sit idle"
        )
    if plan.device_memory:
        need, have = plan.total_bytes, plan.device_memory
        if need > have:
            plan.warnings.append(
                f"does not fit: needs ~{need / GiB:.1f} GiB per device, devices have {have / GiB:.1f} GiB. "
                "Try fsdp/fsdp_tp over more devices, LoRA, a smaller batch or sequence length, microbatches or bf16"
            )
        elif need > 0.9 * have:
            plan.warnings.append(
                f"tight: ~{need / GiB:.1f} of {have / GiB:.1f} GiB per device (XLA needs headroom for temporaries)"
            )


def model_config(name_or_path: str, **overrides):
    """(family, config) for a named size or a HF config.json / model directory."""
    from jaxkernel.models.registry import config_for_size, family_for, known_sizes

    if name_or_path in known_sizes():
        return config_for_size(name_or_path, **overrides)
    path = Path(name_or_path)
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(
            f"{name_or_path!r} is neither a named size ({', '.join(known_sizes())}) nor a config.json / model directory"
        )
    hf = json.loads(file.read_text())
    family = family_for(hf.get("model_type"), str(file))
    return family, family.config_from_hf(hf, {"source": str(file), **overrides})


def plan_config(
    config,
    task: str,
    *,
    mesh: tuple[int, ...] | MeshConfig,
    preset: str = "fsdp",
    overrides: Mapping[str, Any] | None = None,
    num_devices: int | None = None,
    **kwargs,
) -> Plan:
    """Plan a model given by its config: builds it abstractly, then :func:`plan_model`.

    ``mesh`` is a (data, fsdp, tensor) shape or a MeshConfig; ``-1`` resolves
    against ``num_devices`` (default: the product of the other sizes, i.e. -1 = 1).
    Remaining keyword arguments go to :func:`plan_model`.
    """
    from jaxkernel.models.registry import family_of_config

    mesh_config = mesh if isinstance(mesh, MeshConfig) else MeshConfig(tuple(mesh))
    if num_devices is None:
        num_devices = math.prod(s for s in mesh_config.shape if s != -1)
    sizes = mesh_config.axis_sizes(num_devices)
    family = family_of_config(config)
    family.check_task(task)
    abstract = nnx.eval_shape(lambda: family.build(task, config))
    return plan_model(abstract, sizes, sharding_rules.get_rules(preset, overrides), **kwargs)


def _fmt_bytes(n: float) -> str:
    for unit, size in (("GiB", GiB), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def format_plan(plan: Plan, *, max_groups: int = 40) -> str:
    """A human-readable report (the ``jaxkernel plan`` output)."""
    mesh = " x ".join(f"{a}={s}" for a, s in plan.axis_sizes.items())
    lines = [
        f"preset {plan.preset} on {plan.num_devices} devices ({mesh}); batch {plan.batch_size} x {plan.seq_len} tokens"
        + (f", {plan.microbatches} microbatches" if plan.microbatches > 1 else ""),
        f"parameters: {plan.num_params / 1e6:.1f} M ({plan.num_trainable / 1e6:.2f} M trainable), optimizer {plan.optimizer}",
        "",
        "per-device memory:",
        f"  parameters          {_fmt_bytes(plan.param_bytes):>12}",
        f"  gradients           {_fmt_bytes(plan.grad_bytes):>12}",
        f"  optimizer state     {_fmt_bytes(plan.optimizer_bytes):>12}",
        f"  activations (est.)  {_fmt_bytes(plan.activation_bytes):>12}",
        f"  total               {_fmt_bytes(plan.total_bytes):>12}"
        + (f"   of {_fmt_bytes(plan.device_memory)} ({100 * plan.total_bytes / plan.device_memory:.0f}%)"
           if plan.device_memory else ""),
        "",
        "parameter groups (pattern, count x shape, logical axes -> PartitionSpec, bytes/device):",
    ]
    rows = sorted(plan.groups, key=lambda g: -g.bytes_per_device)
    for g in rows[:max_groups]:
        spec = "P(" + ", ".join(repr(e) if e is not None else "None" for e in g.spec) + ")"
        flag = "" if g.trainable else "  [frozen]"
        lines.append(
            f"  {g.pattern:<48} {g.count:>3} x {str(g.shape):<14} {str(g.logical_axes):<22} -> {spec:<22} "
            f"{_fmt_bytes(g.bytes_per_device):>10}{flag}"
        )
    if len(rows) > max_groups:
        lines.append(f"  ... {len(rows) - max_groups} smaller groups")
    for note in plan.notes:
        lines.append(f"note: {note}")
    for warning in plan.warnings:
        lines.append(f"WARNING: {warning}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# `jaxkernel plan`


def _run_plan(args) -> int:
    from jaxkernel.sharding.mesh import parse_mesh_shape

    family, config = model_config(args.model, num_labels=args.num_labels, dtype=args.dtype)
    task = args.task or ("causal-lm" if family.causal else "token-classification")
    num_devices, memory = (None, None)
    if args.device:
        num_devices, memory = parse_device(args.device)
    num_devices = args.devices or num_devices
    if args.device_memory:
        memory = parse_bytes(args.device_memory)
    mesh = MeshConfig(parse_mesh_shape(args.mesh)) if args.mesh else MeshConfig.for_preset(args.preset)
    if num_devices is None and -1 in mesh.shape:
        num_devices = jax.device_count()
    overrides = {}
    for item in args.rule or []:
        logical, _, axes = item.partition("=")
        overrides[logical.strip()] = sharding_rules.parse_mesh_axes(axes)
    plan = plan_config(
        config, task, mesh=mesh, preset=args.preset, overrides=overrides, num_devices=num_devices,
        batch_size=args.batch_size, seq_len=args.seq_len, optimizer=args.optimizer,
        microbatches=args.microbatches, device_memory=memory, remat=args.remat,
    )
    print(f"{args.model} ({task}), estimated:")
    print(format_plan(plan))
    return 0


def add_plan(subparsers) -> None:
    """Register ``jaxkernel plan`` (see the module docstring)."""
    p = subparsers.add_parser(
        "plan", help="estimate per-device memory and show parameter shardings for a mesh and preset",
        description="Per-device memory (parameters, gradients, optimizer state, estimated activations) and the "
        "PartitionSpec of every parameter group, with warnings when it will not fit or leaves devices idle. "
        "No devices are needed: plan a TPU pod from a laptop.",
    )
    p.add_argument("model", help="named size (gpt2-xl, bert-large, llama-3-8b... see the registry) or a HF config.json / model directory")
    p.add_argument("--task", default=None, help="model head (default: causal-lm for GPT-2, token-classification for BERT)")
    p.add_argument("--preset", default="fsdp", choices=sorted(sharding_rules.PRESETS))
    p.add_argument("--mesh", default=None, help="data,fsdp,tensor sizes, -1 = the rest (default: the preset's)")
    p.add_argument("--device", default=None, help="accelerator, e.g. v5e-8, v4-32, h100 (sets memory and device count)")
    p.add_argument("--devices", type=int, default=None, help="device count, to resolve -1 in --mesh")
    p.add_argument("--device-memory", default=None, help="per-device memory, e.g. 16GiB (overrides --device)")
    p.add_argument("--batch-size", type=int, default=8, help="global batch size")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--microbatches", type=int, default=1)
    p.add_argument("--optimizer", default="adamw", choices=sorted(OPTIMIZER_SLOTS))
    p.add_argument("--remat", action="store_true", help="layer rematerialisation (train.remat) is on")
    p.add_argument("--dtype", default=None, help="compute dtype, e.g. bfloat16 (parameters stay float32)")
    p.add_argument("--num-labels", type=int, default=None)
    p.add_argument("--rule", action="append", metavar="LOGICAL=AXES",
                   help="override a preset rule, e.g. --rule vocab=none --rule mlp=fsdp+tensor")
    p.set_defaults(func=_run_plan)
