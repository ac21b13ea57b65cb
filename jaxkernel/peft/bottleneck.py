"""Bottleneck adapters (Houlsby, Pfeiffer) exactly as AdapterHub's ``adapters`` library runs them on BERT.

An adapter is a small MLP, ``scaling * up(act(down(h)))`` with ``down`` (D, D / reduction_factor),
placed where a BERT sub-layer adds its residual and normalises: after the attention output
(``mh_adapter``) and after the FFN output (``output_adapter``). The model exposes that spot as a hook:
``BertSelfOutput`` / ``BertOutput`` call ``self.adapters(h, residual, LayerNorm)`` instead of
``LayerNorm(h + residual)`` when an adapter is set. Residual and layer-norm placement follow the
library's options (``Adapter.pre_forward`` / ``forward`` / ``post_forward``), with ``h`` the
sub-layer output, ``x`` its residual input and ``LN`` the layer's own LayerNorm::

    r   = h                          residual_before_ln=True
    h   = LN(h + x)                  original_ln_before      (r = h + x first with "post_add")
    r   = h                          residual_before_ln=False
    out = dropout(scaling * up(act(down(h)))) + r
    out = LN(out + x)                original_ln_after

``houlsby`` (the library's ``double_seq_bn``): after attention and after the FFN, swish,
original_ln_before=False. ``pfeiffer`` (``seq_bn``): after the FFN only, relu,
original_ln_before=True. Both keep ``original_ln_after`` and ``residual_before_ln`` True.

A bottleneck adapter has a non-linearity in the residual stream, so it cannot be merged into the
base weights: ``merge_and_unload`` refuses it. AdapterHub's directory format (``adapter_config.json``
+ ``adapter.safetensors``) lives in ``jaxkernel.hf.adapterhub_format``.

Example::

    apply_bottleneck(model, BottleneckConfig.preset("houlsby", reduction_factor=16))
    optimizer = nnx.Optimizer(model, optax.adamw(1e-3), wrt=trainable_filter(model))  # AdapterParam + head
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Union

import jax
import jax.numpy as jnp
from flax import nnx

from jaxkernel.models.dropout import Dropout
from jaxkernel.models.layers import ACTIVATIONS, Linear
from jaxkernel.peft.lora import check_no_adapter, resolve_modules_to_save
from jaxkernel.peft.targets import module_paths
from jaxkernel.peft.trainable import TrainableParam, mark_modules_to_save


class AdapterParam(TrainableParam):
    """Weights of a bottleneck adapter (``adapter_down`` / ``adapter_up``)."""


# The library's named configurations (adapters.configuration: SeqBnConfig, DoubleSeqBnConfig), by
# their current names and their paper names.
PRESETS = {
    "seq_bn": dict(mh_adapter=False, output_adapter=True, non_linearity="relu", original_ln_before=True),
    "double_seq_bn": dict(mh_adapter=True, output_adapter=True, non_linearity="swish", original_ln_before=False),
}
PRESETS["pfeiffer"], PRESETS["houlsby"] = PRESETS["seq_bn"], PRESETS["double_seq_bn"]

# transformers.activations.get_activation names the library uses, plus its own "leakyrelu".
NON_LINEARITIES = {**ACTIVATIONS, "leakyrelu": lambda x: jax.nn.leaky_relu(x, 0.01), "sigmoid": jax.nn.sigmoid}


@dataclasses.dataclass(frozen=True)
class BottleneckConfig:
    """A sequential bottleneck adapter, fields named and defaulted like ``adapters.BnConfig``.

    Attributes:
      mh_adapter: an adapter after the attention output (Houlsby).
      output_adapter: an adapter after the FFN output.
      reduction_factor: bottleneck width = int(hidden_size // reduction_factor); a mapping gives
        per-layer factors ({"0": 8, "default": 16}) as the library allows.
      non_linearity: activation between down and up (``relu``, ``swish``, ``gelu``, ``tanh``...).
      original_ln_before / original_ln_after / residual_before_ln / adapter_residual_before_ln:
        where the residuals and the layer's LayerNorm go (module docstring).
      scaling: constant factor on the adapter output.
      dropout: dropout on the adapter output (active after ``model.train()``).
      leave_out: layer indices that get no adapter.
      init_weights: ``bert`` (normal(0.02), zero biases: the library's default),
        ``mam_adapter`` (Kaiming-uniform down, zero up: starts as the identity) or ``houlsby``.
      modules_to_save: modules trained in full; None = the task head for classification / QA.
      name: the adapter's name inside AdapterHub files (``...adapters.<name>.adapter_down.0.weight``).
    """

    mh_adapter: bool = False
    output_adapter: bool = True
    reduction_factor: Union[float, Mapping[str, float]] = 16
    non_linearity: str = "relu"
    original_ln_before: bool = True
    original_ln_after: bool = True
    residual_before_ln: Union[bool, str] = True
    adapter_residual_before_ln: bool = False
    scaling: float = 1.0
    dropout: float = 0.0
    leave_out: tuple[int, ...] = ()
    init_weights: str = "bert"
    modules_to_save: tuple[str, ...] | None = None
    name: str = "adapter"

    def __post_init__(self):
        if not (self.mh_adapter or self.output_adapter):
            raise ValueError("a bottleneck adapter needs mh_adapter=True or output_adapter=True (or both)")
        if self.non_linearity.lower() not in NON_LINEARITIES:
            raise ValueError(
                f"adapter non_linearity={self.non_linearity!r} is not supported; use one of {sorted(NON_LINEARITIES)}"
            )
        factors = self.reduction_factor.values() if isinstance(self.reduction_factor, Mapping) else [self.reduction_factor]
        if not all(isinstance(f, (int, float)) and not isinstance(f, bool) and f > 0 for f in factors):
            raise ValueError(f"adapter reduction_factor={self.reduction_factor!r} must be positive (e.g. 16)")
        if self.residual_before_ln not in (True, False, "post_add"):
            raise ValueError(f"residual_before_ln={self.residual_before_ln!r} must be true, false or 'post_add'")
        if not isinstance(self.scaling, (int, float)) or isinstance(self.scaling, bool):
            raise ValueError(
                f"adapter scaling={self.scaling!r} is not supported: jaxkernel implements a constant float "
                "(the library's 'learned' / 'channel' scalings are not)"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"adapter dropout={self.dropout!r} must be in [0, 1)")
        if self.init_weights not in ("bert", "mam_adapter", "houlsby"):
            raise ValueError(f"adapter init_weights={self.init_weights!r}: use 'bert', 'mam_adapter' or 'houlsby'")
        object.__setattr__(self, "leave_out", tuple(int(i) for i in self.leave_out))
        if self.modules_to_save is not None:
            object.__setattr__(self, "modules_to_save", tuple(self.modules_to_save))

    @classmethod
    def preset(cls, architecture: str, **overrides) -> "BottleneckConfig":
        """``houlsby`` / ``double_seq_bn`` or ``pfeiffer`` / ``seq_bn``, then ``overrides`` (None = keep)."""
        if architecture not in PRESETS:
            raise ValueError(f"adapter architecture {architecture!r} is unknown; use one of {sorted(PRESETS)}")
        values = {**PRESETS[architecture], **{k: v for k, v in overrides.items() if v is not None}}
        return cls(**values)

    def bottleneck_size(self, hidden_size: int, layer: int) -> int:
        factor = self.reduction_factor
        if isinstance(factor, Mapping):
            if str(layer) not in factor and "default" not in factor:
                raise ValueError(f"reduction_factor {dict(factor)} names neither layer {layer} nor 'default'")
            factor = factor.get(str(layer), factor.get("default"))
        return max(int(hidden_size // factor), 1)


def _retyped(linear: Linear) -> Linear:
    for name in ("kernel", "bias"):
        var = getattr(linear, name)
        setattr(linear, name, AdapterParam(var.get_value(), **var.get_metadata()))
    return linear


class BottleneckAdapter(nnx.Module):
    """One adapter at one hook point: ``__call__(h, residual, layer_norm)`` replaces ``LN(h + residual)``."""

    def __init__(self, width: int, bottleneck: int, config: BottleneckConfig, *, dtype=None, rngs: nnx.Rngs):
        self.adapter_down = _retyped(Linear(width, bottleneck, axes=("embed", "adapter"), dtype=dtype, rngs=rngs))
        self.adapter_up = _retyped(Linear(bottleneck, width, axes=("adapter", "embed"), dtype=dtype, rngs=rngs))
        self.non_linearity = config.non_linearity.lower()
        self.scaling = float(config.scaling)
        self.original_ln_before = config.original_ln_before
        self.original_ln_after = config.original_ln_after
        self.residual_before_ln = config.residual_before_ln
        self.adapter_residual_before_ln = config.adapter_residual_before_ln
        self.dropout = nnx.data(Dropout(config.dropout, deterministic=True, rngs=rngs) if config.dropout > 0 else None)
        self._init(config.init_weights, rngs)

    def _init(self, scheme: str, rngs: nnx.Rngs) -> None:
        down, up = self.adapter_down.kernel, self.adapter_up.kernel
        if scheme == "mam_adapter":  # Kaiming-uniform(a=sqrt(5)) down, zero up: the identity at first
            bound = 1.0 / math.sqrt(down.shape[0])
            down[...] = jax.random.uniform(rngs.params(), down.shape, down.dtype, -bound, bound)
            up[...] = jnp.zeros(up.shape, up.dtype)
        elif scheme == "houlsby":  # truncated normal(0, 1e-2) within +-2e-2
            for var in (down, up):
                var[...] = 1e-2 * jax.random.truncated_normal(rngs.params(), -2.0, 2.0, var.shape, var.dtype)
        # "bert": normal(0.02) kernels and zero biases, which is how Linear starts.

    def bottleneck(self, h: jax.Array) -> jax.Array:
        """``dropout(scaling * up(act(down(h))))``: the adapter's own output, (B, T, D)."""
        up = self.adapter_up(NON_LINEARITIES[self.non_linearity](self.adapter_down(h))) * self.scaling
        return self.dropout(up) if self.dropout is not None else up

    def __call__(self, h: jax.Array, residual: jax.Array, layer_norm) -> jax.Array:
        adapter_residual = h if self.residual_before_ln is True else None
        if self.original_ln_before:
            h = h + residual
            if self.residual_before_ln == "post_add":
                adapter_residual = h
            h = layer_norm(h)
        if self.residual_before_ln is False:
            adapter_residual = h
        out = self.bottleneck(h) + adapter_residual
        if self.original_ln_after:
            out = layer_norm(out + residual)
        return out


def _hook_points(model: nnx.Module) -> list[tuple[int, str, nnx.Module]]:
    """(layer index, location, module with an ``adapters`` hook) for every BERT-style hook in ``model``."""
    from jaxkernel.models.registry import family_of

    family = family_of(model)
    points = []
    for i, layer in enumerate(family.layers(model)):
        attention_out = getattr(getattr(layer, "attention", None), "output", None)
        ffn_out = getattr(layer, "output", None)
        for location, block in (("mh_adapter", attention_out), ("output_adapter", ffn_out)):
            if block is not None and hasattr(block, "adapters"):
                points.append((i, location, block))
    if not points:
        raise ValueError(
            f"{type(model).__name__} ({family.model_type}) has no bottleneck-adapter hook: jaxkernel implements "
            "AdapterHub bottleneck adapters for BERT; use peft.method=lora or ia3 for this model"
        )
    return points


def adapter_layers(model: nnx.Module) -> dict[str, BottleneckAdapter]:
    """Path -> BottleneckAdapter for every bottleneck adapter in ``model``."""
    return {path: node for path, node in module_paths(model).items() if isinstance(node, BottleneckAdapter)}


def apply_bottleneck(model: nnx.Module, config, *, seed: int = 0) -> nnx.Module:
    """Insert bottleneck adapters into ``model``, in place.

    Args:
      model: a jaxkernel BERT (any head).
      config: a ``BottleneckConfig``, or the run config's ``peft`` section (``adapter_config``
        names the preset; ``reduction_factor``, ``non_linearity``, ``dropout``,
        ``modules_to_save`` override it).
      seed: initialises the adapter weights and the adapter dropout stream.

    Returns:
      ``model``; ``model.peft_config`` holds the ``BottleneckConfig``.

    Raises:
      ValueError: the model has no adapter hook (not BERT), ``leave_out`` leaves no layer,
        or an adapter is already applied.
    """
    check_no_adapter(model, "bottleneck adapter")
    if not isinstance(config, BottleneckConfig):
        config = BottleneckConfig.preset(
            config.adapter_config, reduction_factor=config.reduction_factor, non_linearity=config.non_linearity,
            dropout=config.dropout, modules_to_save=config.modules_to_save,
        )
    saved = resolve_modules_to_save(model, config.modules_to_save)
    points = [(i, block) for i, location, block in _hook_points(model)
              if getattr(config, location) and i not in config.leave_out]
    if not points:
        raise ValueError(f"leave_out={list(config.leave_out)} leaves no layer for the bottleneck adapter")
    rngs = nnx.Rngs(params=seed, dropout=seed + 1)
    width = model.config.hidden_size
    for i, block in points:
        block.adapters = BottleneckAdapter(
            width, config.bottleneck_size(width, i), config, dtype=model.config.compute_dtype, rngs=rngs
        )
    mark_modules_to_save(model, saved)
    model.peft_config = config
    return model
