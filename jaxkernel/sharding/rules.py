"""Logical axis names -> mesh axes: the sharding presets, and the only file that names mesh axes.

Parameters carry *logical* axis names (``("embed", "mlp")``, see
``jaxkernel.models.layers``). A preset maps each name to mesh axes of the
``("data", "fsdp", "tensor")`` mesh:

=========  ==============================================  ==========================
preset     parameters                                      pick it when
=========  ==============================================  ==========================
dp         replicated everywhere                           model + Adam fit one device
fsdp       ``embed`` dim split over ``fsdp`` (ZeRO-3)      they do not; any model size
tp         Megatron: heads/qkv/mlp/vocab over ``tensor``   activations or latency dominate
fsdp_tp    both (``embed`` -> fsdp, heads... -> tensor)    big models on pods
=========  ==============================================  ==========================

The batch is always split over ``("data", "fsdp")``: FSDP is data parallel with
sharded weights. ``dp x fsdp x tp`` is ``fsdp_tp`` on a mesh whose three axes
are all > 1. Tensor parallelism is Megatron style: ``query/key/value``,
``c_attn`` and ``c_fc``/``intermediate`` are column-parallel (output dim over
``tensor``), the attention output and MLP output projections row-parallel (input
dim over ``tensor``), so each device holds whole heads and one all-reduce closes
each block. GPT-2's fused ``c_attn`` kernel (D, 3D) is split on its 3D columns,
which mixes q/k/v across shards (device 0 of 2 holds q and half of k); XLA's
partitioner still computes exactly, at the cost of one extra reshuffle of the
(B, T, 3D) activation per layer. Keeping the HF layout (and a single mapping
table) was judged worth that; see ``README`` for the trade-off.

Names no preset knows (LoRA's ``lora_rank``, prefix axes, ``norm``) stay
replicated: those tensors are tiny. A dimension that the mesh axes do not divide
is replicated too and reported (the planner prints it), except attention heads,
which must divide the tensor axis (:func:`check_model`).

Example::

    rules = get_rules("fsdp_tp", overrides={"vocab": None})
    spec = rules.spec(("vocab", "embed"), (50304, 768), {"data": 1, "fsdp": 4, "tensor": 2})
    # PartitionSpec('tensor', 'fsdp') ... with vocab override: PartitionSpec(None, 'fsdp')
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
from typing import Any, Iterator, Mapping

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxkernel.models.layers import activation_constraint

log = logging.getLogger(__name__)

DATA, FSDP, TENSOR = "data", "fsdp", "tensor"
MESH_AXES = (DATA, FSDP, TENSOR)
BATCH_AXES = (DATA, FSDP)  # the batch dimension is split over these

MeshAxes = str | tuple[str, ...] | None

# Logical names of parameter dimensions that tensor parallelism splits; the same
# names on activations follow the parameter rule. "embed" on an activation is
# never split (FSDP shards weights, not the residual stream).
TENSOR_PARALLEL_NAMES = ("heads", "qkv", "mlp", "vocab")

PRESETS: dict[str, dict[str, MeshAxes]] = {
    "dp": {},
    "fsdp": {"embed": FSDP},
    "tp": {name: TENSOR for name in TENSOR_PARALLEL_NAMES},
    "fsdp_tp": {"embed": FSDP, **{name: TENSOR for name in TENSOR_PARALLEL_NAMES}},
}

PRESET_MESH_SHAPES: dict[str, tuple[int, int, int]] = {
    "dp": (-1, 1, 1),
    "fsdp": (1, -1, 1),
    "tp": (1, 1, -1),
    "fsdp_tp": (1, -1, 2),
}
"""A sensible default mesh (data, fsdp, tensor) for each preset; -1 = the rest."""


def _as_tuple(axes: MeshAxes) -> tuple[str, ...]:
    if axes is None:
        return ()
    return (axes,) if isinstance(axes, str) else tuple(axes)


def parse_mesh_axes(text: str) -> MeshAxes:
    """``"tensor"``, ``"data+fsdp"``, ``"none"`` -> mesh axes (for CLI/config overrides)."""
    text = text.strip()
    if text.lower() in ("", "none", "null", "replicated"):
        return None
    parts = tuple(p.strip() for p in text.replace(",", "+").split("+"))
    return parts[0] if len(parts) == 1 else parts


@dataclasses.dataclass(frozen=True)
class ShardingRules:
    """A preset plus user overrides: logical axis name -> mesh axes (None = replicated)."""

    name: str
    mapping: tuple[tuple[str, MeshAxes], ...]

    def __post_init__(self):
        for logical, axes in self.mapping:
            for axis in _as_tuple(axes):
                if axis not in MESH_AXES:
                    raise ValueError(
                        f"sharding rule {logical!r} -> {axis!r}: unknown mesh axis; mesh axes are {MESH_AXES}"
                    )

    def mesh_axes(self, logical: str | None) -> tuple[str, ...]:
        """Mesh axes a parameter dimension named ``logical`` is split over."""
        return _as_tuple(dict(self.mapping).get(logical)) if logical is not None else ()

    def activation_axes(self, logical: str | None) -> tuple[str, ...]:
        """Mesh axes for an activation dimension: batch, or a tensor-parallel name."""
        if logical == "batch":
            return BATCH_AXES
        return self.mesh_axes(logical) if logical in TENSOR_PARALLEL_NAMES else ()

    def with_overrides(self, overrides: Mapping[str, MeshAxes | str] | None) -> "ShardingRules":
        if not overrides:
            return self
        mapping = dict(self.mapping)
        for logical, axes in overrides.items():
            mapping[logical] = parse_mesh_axes(axes) if isinstance(axes, str) else axes
        label = ",".join(f"{k}={v}" for k, v in overrides.items())
        return ShardingRules(f"{self.name}[{label}]", tuple(sorted(mapping.items())))

    def spec(self, logical_axes, shape, axis_sizes: Mapping[str, int], *, what: str = "", notes: list | None = None):
        """PartitionSpec for one array.

        Args:
          logical_axes: one logical name (or None) per dimension.
          shape: the array shape.
          axis_sizes: mesh axis name -> size.
          what: a name for messages (the parameter path).
          notes: if given, a message is appended for each dimension left
            replicated because the mesh does not divide it.

        Returns:
          A PartitionSpec. A mesh axis is used at most once (first dimension wins).
        """
        used: set[str] = set()
        entries = []
        for dim, (logical, size) in enumerate(zip(logical_axes, shape)):
            axes = tuple(a for a in self.mesh_axes(logical) if a not in used)
            ways = math.prod(axis_sizes.get(a, 1) for a in axes)
            if axes and size % ways:
                if notes is not None:
                    notes.append(
                        f"{what or 'array'} dim {dim} ({logical}={size}) is not divisible by "
                        f"{'*'.join(axes)}={ways}: replicated"
                    )
                axes = ()
            used.update(axes)
            entries.append(None if not axes else axes[0] if len(axes) == 1 else axes)
        while entries and entries[-1] is None:
            entries.pop()
        return PartitionSpec(*entries)


def get_rules(preset: "str | ShardingRules", overrides: Mapping[str, Any] | None = None) -> ShardingRules:
    """The rules of a preset name (``dp``, ``fsdp``, ``tp``, ``fsdp_tp``), with overrides."""
    if isinstance(preset, ShardingRules):
        return preset.with_overrides(overrides)
    if preset not in PRESETS:
        raise ValueError(f"unknown sharding preset {preset!r}; choose one of {sorted(PRESETS)}")
    return ShardingRules(preset, tuple(sorted(PRESETS[preset].items()))).with_overrides(overrides)


def axis_sizes_of(mesh: "Mesh | Mapping[str, int]") -> dict[str, int]:
    if isinstance(mesh, Mapping):
        return {axis: int(mesh.get(axis, 1)) for axis in MESH_AXES}
    return {axis: int(mesh.shape.get(axis, 1)) for axis in MESH_AXES}


# ---------------------------------------------------------------------------
# Checks that speak to the user


def data_parallel_size(mesh: "Mesh | Mapping[str, int]") -> int:
    sizes = axis_sizes_of(mesh)
    return math.prod(sizes[a] for a in BATCH_AXES)


def check_batch(batch_size: int, mesh: "Mesh | Mapping[str, int]", microbatches: int = 1) -> None:
    """Raise unless the global batch splits evenly over the data axes (and microbatches)."""
    sizes = axis_sizes_of(mesh)
    ways = data_parallel_size(sizes)
    per_micro, rem = divmod(batch_size, microbatches)
    if rem:
        raise ValueError(
            f"batch size {batch_size} is not divisible by {microbatches} microbatches: "
            "choose a batch size that is a multiple of the number of microbatches"
        )
    if per_micro % ways:
        split = f"data*fsdp = {sizes[DATA]}*{sizes[FSDP]} = {ways}"
        where = f"batch size {batch_size}" if microbatches == 1 else f"microbatch size {per_micro} ({batch_size}/{microbatches})"
        raise ValueError(
            f"{where} is not divisible by the data-parallel mesh axes {split}: "
            f"use a batch size that is a multiple of {ways * microbatches}"
        )


def num_heads_of(config) -> int | None:
    for name in ("num_attention_heads", "n_head"):
        if getattr(config, name, None) is not None:
            return int(getattr(config, name))
    return None


def check_model(config, rules: ShardingRules, mesh: "Mesh | Mapping[str, int]") -> None:
    """Raise when tensor parallelism would split an attention head (heads % tensor != 0)."""
    heads = num_heads_of(config)
    axes = rules.mesh_axes("heads")
    sizes = axis_sizes_of(mesh)
    ways = math.prod(sizes[a] for a in axes)
    if heads is not None and ways > 1 and heads % ways:
        divisors = [d for d in range(1, heads + 1) if heads % d == 0]
        raise ValueError(
            f"{heads} attention heads are not divisible by the {'*'.join(axes)} mesh axis size {ways}: "
            f"tensor parallelism splits whole heads; use a tensor size in {divisors} "
            "or a preset without tensor parallelism (dp, fsdp)"
        )


# ---------------------------------------------------------------------------
# Trees of parameters -> PartitionSpecs / NamedShardings


def logical_axes_of(var: nnx.Variable) -> tuple | None:
    meta = var.get_metadata()
    axes = meta.get("out_sharding") or meta.get("sharding_names")
    return tuple(axes) if axes else None


def variable_spec(var: nnx.Variable, rules: ShardingRules, axis_sizes, *, what: str = "", notes=None) -> PartitionSpec:
    """PartitionSpec of one Variable from its logical ``out_sharding`` metadata."""
    value = var.get_value()
    shape = tuple(getattr(value, "shape", ()))
    axes = logical_axes_of(var)
    if axes is None or not shape:
        return PartitionSpec()
    if len(axes) != len(shape):
        if notes is not None:
            notes.append(f"{what} has logical axes {axes} for shape {shape}: replicated")
        return PartitionSpec()
    return rules.spec(axes, shape, axis_sizes, what=what, notes=notes)


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def tree_specs(tree, rules: ShardingRules, mesh, *, notes: list | None = None):
    """Same tree with every Variable's value replaced by its PartitionSpec.

    Variables get the spec their logical axes and ``rules`` give; any other leaf
    (optimizer counts, RNG keys) is replicated, ``PartitionSpec()``.
    """
    sizes = axis_sizes_of(mesh)

    def spec(path, x):
        if _is_variable(x):
            return x.replace(variable_spec(x, rules, sizes, what=jax.tree_util.keystr(path, simple=True, separator="."), notes=notes))
        return PartitionSpec()

    return jax.tree_util.tree_map_with_path(spec, tree, is_leaf=_is_variable)


def tree_shardings(tree, mesh: Mesh, rules: ShardingRules, *, notes: list | None = None):
    """Same tree with NamedShardings on ``mesh`` (a valid jit in/out_shardings)."""
    specs = tree_specs(tree, rules, mesh, notes=notes)
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, PartitionSpec))


def batch_spec(ndim: int = 2) -> PartitionSpec:
    """Leading (batch) dimension over the data axes, the rest replicated."""
    return PartitionSpec(BATCH_AXES, *([None] * (ndim - 1)))


def microbatch_spec(ndim: int) -> PartitionSpec:
    """(M, B/M, ...) microbatched arrays: the per-microbatch batch dim is split."""
    return PartitionSpec(None, BATCH_AXES, *([None] * (ndim - 2)))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


# ---------------------------------------------------------------------------
# Activation constraints


@contextlib.contextmanager
def activation_sharding(mesh: Mesh | None, rules: ShardingRules | None) -> Iterator[None]:
    """Make the models' ``constrain`` calls pin activations while tracing (the train/eval steps enter this)."""
    fn = None if mesh is None or rules is None else functools.partial(constrain_activation, mesh=mesh, rules=rules)
    with activation_constraint(fn):
        yield


def constrain_activation(x: jax.Array, logical_axes: tuple[str | None, ...], *, mesh: Mesh, rules: ShardingRules) -> jax.Array:
    """Pin ``x`` to the sharding its logical activation names get under ``rules``.

    Logical activation names: ``"batch"`` (split over data axes), the tensor
    parallel names ``heads``/``qkv``/``mlp``/``vocab`` (follow the rules), anything
    else (``"length"``, ``"embed"``) replicated.
    """
    sizes = axis_sizes_of(mesh)
    entries, used = [], set()
    for logical, size in zip(logical_axes, x.shape):
        axes = tuple(a for a in rules.activation_axes(logical) if a not in used)
        if axes and size % math.prod(sizes[a] for a in axes):
            axes = ()
        used.update(axes)
        entries.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, PartitionSpec(*entries)))
