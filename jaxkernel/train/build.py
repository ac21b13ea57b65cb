"""From a ``Config`` to the objects a run trains: model (+ int8, + PEFT), optimizer, mesh.

Everything here is deterministic in the config (and ``train.seed``), which is what
lets a resumed run rebuild the frozen base exactly and load only trainable state.

Example::

    model = build_model(config, labels=("O", "B-PER", "I-PER"))
    tx, schedule = build_optimizer(config, total_steps=1000)
    mesh, rules = build_mesh(config)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxkernel.config import Config, ConfigError, resolve_path
from jaxkernel.hf.pretrained import from_pretrained
from jaxkernel.models.registry import family_of
from jaxkernel.train.clipping import clip_by_global_norm


def build_model(config: Config, labels: tuple[str, ...] | None = None, *, mesh=None, rules=None) -> nnx.Module:
    """Pretrained model with the task head, then int8 (``quant``), then PEFT (``peft``).

    With a ``mesh`` (from :func:`build_mesh`) the model is born sharded: each process reads
    from the checkpoint only the slices its devices hold, the frozen base included.
    """
    m = config.model
    load = dict(
        task=m.task,
        labels=labels,
        num_labels=None if labels else m.num_labels,
        dtype=None if m.dtype == "float32" else m.dtype,
        seed=config.train.seed,
        revision=m.revision,
        strict=m.strict,
    )
    if mesh is not None:
        from jaxkernel.sharding.placement import from_pretrained_sharded

        model = from_pretrained_sharded(resolve_path(m.path), mesh, rules, **load)
    else:
        model = from_pretrained(resolve_path(m.path), **load)
    positions = family_of(model).dims(model.config).positions
    if config.data.max_length > positions:  # past the position table, JAX would clamp the lookups silently
        raise ConfigError(
            f"data.max_length={config.data.max_length} but the model at {m.path} has {positions} positions: "
            f"longer sequences cannot be encoded; set data.max_length={positions} or less"
        )
    if config.distill.student_layers is not None:  # jaxkernel.compress.distill: the cut student
        from jaxkernel.compress.distill import student_from_config

        model = student_from_config(model, config)  # without a teacher too: the no-distillation baseline
    if config.distill.teacher is not None:  # ... trained against the frozen teacher
        from jaxkernel.compress.distill import attach_teacher

        return attach_teacher(adapt_model(model, config), config, labels)
    return adapt_model(model, config)


def adapt_model(model: nnx.Module, config: Config) -> nnx.Module:
    """Apply the config's int8 quantization and PEFT method to ``model`` (in place)."""
    from jaxkernel.peft import apply_adalora, apply_bottleneck, apply_ia3, apply_lora, apply_prefix_tuning
    from jaxkernel.quant.transform import quantize_model

    if config.train.remat:
        set_remat(model, True)
    if config.quant.method == "int8":
        quantize_model(model, **config.quant.as_kwargs())
    p = config.peft
    if p.method == "lora":
        apply_lora(model, p, seed=config.train.seed)
    elif p.method == "prefix":
        apply_prefix_tuning(model, p, seed=config.train.seed)
    elif p.method == "ia3":
        apply_ia3(model, p)
    elif p.method == "adapter":
        apply_bottleneck(model, p, seed=config.train.seed)
    elif p.method == "adalora":
        apply_adalora(model, p, seed=config.train.seed)
    elif config.quant.method == "int8":
        raise ConfigError(
            "quant.method=int8 freezes the base model in int8: combine it with peft.method=lora, adalora, prefix, ia3 "
            "or adapter (full fine-tuning of int8 weights is not supported)"
        )
    return model


def set_remat(model: nnx.Module, enabled: bool = True) -> None:
    """Rematerialise every transformer layer of ``model`` (the layer stacks that hold a ``remat`` flag)."""
    stacks = [m for _, m in nnx.iter_modules(model) if hasattr(m, "remat") and isinstance(m.remat, bool)]
    if not stacks:
        raise ConfigError(f"train.remat: {type(model).__name__} has no layer stack to rematerialise")
    for stack in stacks:
        stack.remat = enabled


def build_schedule(config: Config, total_steps: int) -> optax.Schedule:
    s, peak = config.schedule, config.optimizer.learning_rate
    warmup = s.warmup_steps or int(round(s.warmup_ratio * total_steps))
    warmup = min(warmup, max(total_steps - 1, 0))
    decay_steps = max(total_steps - warmup, 1)
    end = peak * s.end_lr_ratio
    if s.kind == "constant":
        after = optax.constant_schedule(peak)
    elif s.kind == "linear":
        after = optax.linear_schedule(peak, end, decay_steps)
    else:
        after = optax.cosine_decay_schedule(peak, decay_steps, alpha=s.end_lr_ratio)
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def decay_mask(params):
    """Weight decay on matrices only: biases, LayerNorm scales and 1-D vectors are exempt."""
    return jax.tree.map(lambda x: jnp.ndim(x) >= 2, params)


def build_optimizer(
    config: Config, total_steps: int, model: nnx.Module | None = None
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW (decoupled decay, no-decay mask) after global-norm clipping; then, with a ``sparsity``
    section, magnitude pruning of ``model``'s kernels (its masks live in the optimizer state)."""
    o = config.optimizer
    schedule = build_schedule(config, total_steps)
    adamw = optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay, mask=decay_mask)
    chain = [clip_by_global_norm(o.max_grad_norm)] if o.max_grad_norm else []
    if config.peft.method == "adalora":  # orthogonality regulariser + PEFT's rank allocator around AdamW
        from jaxkernel.peft.adalora_budget import adalora_optimizer

        total = config.peft.total_step or total_steps
        return adalora_optimizer(adamw, config=config.peft, total_step=total, clip=chain[0] if chain else None), schedule
    if config.sparsity.method != "none":
        from jaxkernel.compress.sparsity import from_config

        if model is None or config.peft.method != "none" or config.quant.method != "none":
            raise ConfigError("sparsity prunes trained float weights: it needs the model, peft.method=none and "
                              "quant.method=none")
        return optax.chain(*chain, adamw, from_config(model, config.sparsity, total_steps)), schedule  # last
    return optax.chain(*chain, adamw), schedule


def build_mesh(config: Config):
    """(mesh, rules) over the visible devices, or (None, None) on a single device."""
    from jaxkernel.sharding.mesh import make_mesh
    from jaxkernel.sharding.rules import get_rules

    c = config.mesh
    devices = jax.devices()
    if c.shape is not None and -1 not in c.shape and math.prod(c.shape) < len(devices):
        devices = devices[: math.prod(c.shape)]  # an explicit smaller mesh uses the first devices
    if len(devices) == 1:
        return None, None
    return make_mesh(c, devices=devices), get_rules(c.preset, c.rules or None)
