"""AdaLoRA (Zhang et al. 2023), as ``peft.AdaLoraConfig``: LoRA in SVD form whose ranks are pruned by importance.

Each targeted linear layer becomes an ``AdaLoraLinear`` holding the update in SVD form,
``P diag(Λ) Q`` = ``lora_A`` (in, r) · ``lora_E`` (r,) · ``lora_B`` (r, out), and computes::

    y = base(x) + (dropout(x) @ (A * E) @ B) * alpha / (ranknum + 1e-5)

with PEFT's constants: ``ranknum`` is ``init_r`` (also after a saved rank pattern shrank the
layer), the initialisation is ``E = 0``, ``A, B ~ N(0, 0.02)``. During training the optimizer
(``jaxkernel.peft.adalora_budget``) adds PEFT's orthogonality regulariser and runs its
``RankAllocator``: importance EMAs, a cubic budget schedule from ``init_r`` to ``target_r`` per
layer on average, and masking of the least important singular values (their ``E`` entries set
to 0). Its state is optimizer state, so checkpoints hold it and resumption is exact.

A layer's ``rank_pattern`` (None, or one bool per initial triplet, True = kept) is what PEFT
calls ``rank_pattern``: set from the optimizer state by ``attach_rank_pattern`` after training,
or read from a PEFT directory, whose tensors then hold the kept triplets only.

Example::

    apply_adalora(model, AdaLoraConfig(init_r=12, target_r=4, total_step=1000, target_modules=["query", "value"]))
    # train with peft.method=adalora (the trainer builds the rank allocator), then
    save_adapter(model_with_pattern, "out/")        # peft_type ADALORA, rank_pattern in adapter_config.json
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxkernel.models.dropout import Dropout
from jaxkernel.models.registry import family_of
from jaxkernel.peft.lora import LoraLinear, LoraParam, _kernel_axes, check_no_adapter, low_rank_targets
from jaxkernel.peft.targets import Targets, check_targets, get_module, module_paths, set_module
from jaxkernel.peft.trainable import mark_modules_to_save, method_config


class AdaLoraParam(LoraParam):
    """AdaLoRA's ``lora_A`` (right singular vectors), ``lora_E`` (singular values), ``lora_B`` (left)."""


@dataclasses.dataclass(frozen=True)
class AdaLoraConfig:
    """AdaLoRA hyper-parameters, named (and defaulted) like ``peft.AdaLoraConfig``.

    Attributes:
      init_r: initial rank of every adapted layer.
      target_r: average rank per layer once the budget schedule has shrunk it.
      tinit: warm-up steps before the budget starts shrinking.
      tfinal: final steps trained with the rank pattern fixed.
      deltaT: steps between two budget allocations.
      beta1 / beta2: EMA factors of the importance scores and of their uncertainty, in (0, 1).
      orth_reg_weight: weight of the orthogonality regulariser on ``lora_A`` / ``lora_B``.
      total_step: steps the schedule spans (PEFT requires it; the trainer fills in the run's
        steps when it is None).
      alpha: PEFT's ``lora_alpha``; the update is scaled by ``alpha / (ranknum + 1e-5)``.
      dropout: dropout on the adapter input (PEFT's ``lora_dropout``).
      target_modules: as for LoRA; None = the family default (``extra["adalora_targets"]``,
        else its LoRA targets).
      modules_to_save: as for LoRA (None: the task head for classification / QA).
    """

    init_r: int = 12
    target_r: int = 8
    tinit: int = 0
    tfinal: int = 0
    deltaT: int = 1
    beta1: float = 0.85
    beta2: float = 0.85
    orth_reg_weight: float = 0.5
    total_step: int | None = None
    alpha: float = 8.0
    dropout: float = 0.0
    target_modules: Targets | None = None
    modules_to_save: tuple[str, ...] | None = None

    def __post_init__(self):
        for name in ("init_r", "target_r", "deltaT"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"AdaLoRA {name}={value!r} must be a positive integer")
        if self.target_r > self.init_r:
            raise ValueError(f"AdaLoRA target_r={self.target_r} exceeds init_r={self.init_r}: the budget only shrinks")
        if self.tinit < 0 or self.tfinal < 0:
            raise ValueError(f"AdaLoRA tinit={self.tinit} and tfinal={self.tfinal} must be >= 0")
        if not (0 < self.beta1 < 1 and 0 < self.beta2 < 1):
            raise ValueError(f"AdaLoRA beta1={self.beta1} and beta2={self.beta2} must lie in (0, 1)")
        if self.orth_reg_weight < 0:
            raise ValueError(f"AdaLoRA orth_reg_weight={self.orth_reg_weight} must be >= 0")
        if self.total_step is not None and self.tinit >= self.total_step - self.tfinal:
            raise ValueError(
                f"AdaLoRA tinit={self.tinit}, tfinal={self.tfinal} and total_step={self.total_step} leave no budgeting "
                "phase (PEFT's rule: tinit < total_step - tfinal): lower tinit / tfinal or raise total_step"
            )
        if not self.alpha > 0:
            raise ValueError(f"AdaLoRA alpha={self.alpha!r} must be positive (PEFT's lora_alpha)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"AdaLoRA dropout={self.dropout!r} must be in [0, 1)")
        if self.target_modules is not None:
            object.__setattr__(self, "target_modules", check_targets(self.target_modules, "target_modules"))
        if self.modules_to_save is not None:
            if isinstance(self.modules_to_save, str):
                raise ValueError(f"modules_to_save must be a list of module names, got the string {self.modules_to_save!r}")
            object.__setattr__(self, "modules_to_save", tuple(self.modules_to_save))


class AdaLoraLinear(LoraLinear):
    """A linear layer plus an SVD-form update ``(A * E) @ B``; a ``LoraLinear`` for merging and export code."""

    def __init__(self, base_layer: nnx.Module, *, r: int, alpha: float, ranknum: float | None = None,
                 dropout: float = 0.0, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.base_layer = base_layer
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        self.r = r
        self.alpha = float(alpha)
        self.set_ranknum(r if ranknum is None else ranknum)
        self.merged = False
        self.rank_pattern = None  # tuple of bools per initial triplet once allocated / loaded
        in_axis, out_axis = _kernel_axes(base_layer)
        a = 0.02 * jax.random.normal(rngs.params(), (self.in_features, r), param_dtype)
        b = 0.02 * jax.random.normal(rngs.params(), (r, self.out_features), param_dtype)
        self.lora_A = AdaLoraParam(a, out_sharding=(in_axis, "lora_rank"), eager_sharding=False)
        self.lora_E = AdaLoraParam(jnp.zeros((r,), param_dtype), out_sharding=("lora_rank",), eager_sharding=False)
        self.lora_B = AdaLoraParam(b, out_sharding=("lora_rank", out_axis), eager_sharding=False)
        self.dropout = nnx.data(Dropout(dropout, deterministic=True, rngs=rngs) if dropout > 0 else None)

    def set_ranknum(self, ranknum: float) -> None:
        """PEFT's ``ranknum``: the update is ``* alpha / (ranknum + 1e-5)`` (a float32 tensor there)."""
        self.ranknum = float(ranknum)
        self.scale = float(np.float32(self.alpha) / (np.float32(self.ranknum) + np.float32(1e-5)))

    def delta_kernel(self) -> jax.Array:
        """The (in, out) update ``scale * (A * E) @ B`` that merging adds to the base kernel."""
        return self.scale * jnp.einsum("ir,ro->io", self.lora_A[...] * self.lora_E[...], self.lora_B[...])

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.base_layer(x)
        if self.merged:
            return y
        h = self.dropout(x) if self.dropout is not None else x
        a, e, b = self.lora_A[...], self.lora_E[...], self.lora_B[...]
        dtype = getattr(self.base_layer, "dtype", None)
        if dtype is not None:  # mixed precision: compute like the base layer
            h, a, e, b = h.astype(dtype), a.astype(dtype), e.astype(dtype), b.astype(dtype)
        low = jnp.einsum("...i,ir->...r", h, a * e)
        delta = jnp.einsum("...r,ro->...o", low, b)
        return y + (delta * self.scale).astype(y.dtype)


def adalora_layers(model: nnx.Module) -> dict[str, AdaLoraLinear]:
    """Path -> AdaLoraLinear for every AdaLoRA layer in ``model``, sorted by path."""
    found = {path: node for path, node in module_paths(model).items() if isinstance(node, AdaLoraLinear)}
    return dict(sorted(found.items()))


def default_targets(model: nnx.Module) -> Targets:
    """PEFT's AdaLoRA default targets for the model's family (``extra["adalora_targets"]``, else its LoRA ones)."""
    family = family_of(model)
    return tuple(family.extra.get("adalora_targets", family.lora_targets))


def apply_adalora(model: nnx.Module, config, *, seed: int = 0) -> nnx.Module:
    """Wrap the targeted linear layers of ``model`` with AdaLoRA at rank ``init_r``, in place.

    Args:
      model: a jaxkernel model (any head).
      config: an ``AdaLoraConfig`` or the run config's ``peft`` section (same field names).
      seed: initialises ``lora_A`` / ``lora_B`` and the dropout stream.

    Returns:
      ``model``; ``model.peft_config`` holds the config with default targets filled in.

    Raises:
      ValueError: no module matches, a match is not a linear layer or lies inside
        ``modules_to_save``, or an adapter is already applied.
    """
    check_no_adapter(model, "AdaLoRA adapter")
    config = method_config(AdaLoraConfig, config)
    if config.target_modules is None:
        config = dataclasses.replace(config, target_modules=default_targets(model))
    targets, saved = low_rank_targets(model, config.target_modules, config.modules_to_save, "AdaLoRA")
    rngs = nnx.Rngs(params=seed, dropout=seed + 1)
    for path in targets:
        base = get_module(model, path)
        dtype = base.kernel.dtype if isinstance(getattr(base, "kernel", None), nnx.Variable) else jnp.float32
        dtype = dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.float32
        set_module(model, path, AdaLoraLinear(base, r=config.init_r, alpha=config.alpha, dropout=config.dropout,
                                              param_dtype=dtype, rngs=rngs))
    mark_modules_to_save(model, saved)
    model.peft_config = config
    return model


def resize_by_rank_pattern(model: nnx.Module, pattern: dict[str, list[bool]]) -> None:
    """Keep only the triplets ``pattern`` marks (path -> one bool per ``init_r`` triplet), as PEFT's
    ``resize_modules_by_rank_pattern`` does on load; ``ranknum`` (hence the scale) stays ``init_r``."""
    layers = adalora_layers(model)
    for path, kept in pattern.items():
        layer = layers[path]
        kept = tuple(bool(k) for k in kept)
        if len(kept) != layer.r:
            raise ValueError(f"rank_pattern for {path} has {len(kept)} entries; the layer has rank {layer.r}")
        index = np.flatnonzero(np.asarray(kept, bool))
        for name, axis in (("lora_A", 1), ("lora_E", 0), ("lora_B", 0)):
            var = getattr(layer, name)
            setattr(layer, name, AdaLoraParam(jnp.take(var[...], index, axis=axis), **var.get_metadata()))
        layer.r = len(index)
        layer.rank_pattern = kept


def kept_triplets(layer: AdaLoraLinear) -> np.ndarray:
    """Indices of the layer's current triplets its rank pattern keeps (all when none is set)."""
    pattern = layer.rank_pattern
    if pattern is None or len(pattern) != layer.r:  # no pattern, or the layer holds the kept ones only
        return np.arange(layer.r)
    return np.flatnonzero(np.asarray(pattern, bool))


def compose_pattern(previous: tuple[bool, ...] | None, mask) -> tuple[bool, ...]:
    """A pattern over the initial triplets from a mask over the layer's current ones."""
    mask = [bool(m) for m in np.asarray(mask).reshape(-1)]
    if previous is None or len(previous) == len(mask):
        return tuple(mask)
    it = iter(mask)
    return tuple(next(it) if kept else False for kept in previous)
