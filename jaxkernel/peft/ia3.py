"""IA3 by graph surgery: learned vectors that rescale activations, as ``peft.IA3Config`` does.

Each targeted linear layer is wrapped in an ``Ia3Linear`` holding one ``ia3_l`` vector (ones at
first, so a fresh adapter changes nothing). A *feed-forward* target scales its input,
``base(x * l)`` with ``l`` (in,); any other target scales its output, bias included,
``base(x) * l`` with ``l`` (out,). Merging folds ``l`` into the kernel rows (input) or
columns and bias (output), exactly PEFT's merge. Which modules are targets / feed-forward
follows PEFT's rules: ``target_modules`` like LoRA's; a ``feedforward_modules`` list entry
matches every path that *ends with* it (PEFT's plain ``endswith``), a string is a full regex.

Example::

    apply_ia3(model, Ia3Config())   # BERT: key, value, output.dense (feed-forward: output.dense)
    merge_ia3(model)                # same outputs, vectors folded into the kernels
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
from flax import nnx

from jaxkernel.peft.lora import _kernel_axes, check_no_adapter, is_linear_like, resolve_modules_to_save
from jaxkernel.peft.targets import Targets, check_targets, get_module, match_modules, module_paths, set_module
from jaxkernel.peft.trainable import TrainableParam, mark_modules_to_save

class Ia3Param(TrainableParam):
    """IA3 scaling vectors ``ia3_l``."""


@dataclasses.dataclass(frozen=True)
class Ia3Config:
    """IA3 options, named and matched like ``peft.IA3Config``.

    Attributes:
      target_modules: regex (full match) or names / dotted suffixes; None = the family default.
      feedforward_modules: targets that scale their input (regex, or suffixes matched with
        ``endswith``); None = the family default. A list must be a subset of a list of targets.
      modules_to_save: as for LoRA (None: the task head for classification / QA).
    """

    target_modules: Targets | None = None
    feedforward_modules: Targets | None = None
    modules_to_save: tuple[str, ...] | None = None

    def __post_init__(self):
        for field in ("target_modules", "feedforward_modules"):
            if getattr(self, field) is not None:
                object.__setattr__(self, field, check_targets(getattr(self, field), field))
        targets, feedforward = self.target_modules, self.feedforward_modules
        if isinstance(targets, tuple) and isinstance(feedforward, tuple) and not set(feedforward) <= set(targets):
            raise ValueError(
                f"IA3 feedforward_modules {list(feedforward)} must be a subset of target_modules {list(targets)} "
                "(PEFT's rule): add them to target_modules"
            )
        if self.modules_to_save is not None:
            if isinstance(self.modules_to_save, str):
                raise ValueError(f"modules_to_save must be a list of module names, got the string {self.modules_to_save!r}")
            object.__setattr__(self, "modules_to_save", tuple(self.modules_to_save))


def ia3_defaults(model: nnx.Module) -> tuple[Targets, Targets]:
    """(target_modules, feedforward_modules) PEFT uses for the model's family."""
    from jaxkernel.models.registry import family_of

    family = family_of(model)  # PEFT's IA3 target / feed-forward mappings, declared per family in the registry
    targets, feedforward = family.extra.get("ia3_targets"), family.extra.get("ia3_feedforward")
    if targets is None or feedforward is None:
        raise ValueError(f"IA3 has no default targets for {family.model_type}: set target_modules and feedforward_modules")
    return tuple(targets), tuple(feedforward)


def is_feedforward(path: str, feedforward: Targets) -> bool:
    """PEFT's IA3 rule: regex -> fullmatch; list -> ``path.endswith(name)`` (no dot required)."""
    if isinstance(feedforward, str):
        return re.fullmatch(feedforward, path) is not None
    return any(path.endswith(name) for name in feedforward)


class Ia3Linear(nnx.Module):
    """A linear layer whose input (feed-forward) or output is scaled by a learned vector."""

    def __init__(self, base_layer: nnx.Module, *, feedforward: bool, param_dtype=jnp.float32):
        self.base_layer = base_layer
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        self.is_feedforward = feedforward
        self.merged = False
        in_axis, out_axis = _kernel_axes(base_layer)
        size, axis = (self.in_features, in_axis) if feedforward else (self.out_features, out_axis)
        self.ia3_l = Ia3Param(jnp.ones((size,), param_dtype), out_sharding=(axis,), eager_sharding=False)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.merged:
            return self.base_layer(x)
        scale = self.ia3_l[...]
        if self.is_feedforward:
            return self.base_layer((x * scale).astype(x.dtype))
        y = self.base_layer(x)
        return (y * scale).astype(y.dtype)

    def _float_kernel(self, path: str) -> nnx.Variable:
        kernel = getattr(self.base_layer, "kernel", None)
        if not isinstance(kernel, nnx.Variable) or not jnp.issubdtype(kernel.dtype, jnp.floating):
            raise TypeError(
                f"cannot merge IA3 into {path}: its base layer {type(self.base_layer).__name__} has no float kernel "
                "(e.g. int8 weights); keep the adapter unmerged, or merge before quantizing"
            )
        return kernel

    def fold(self, path: str, inverse: bool = False) -> None:
        """Multiply (or divide, ``inverse``) the base kernel (in, out) and, for output scaling, the bias."""
        kernel = self._float_kernel(path)
        scale = self.ia3_l[...]
        scale = 1.0 / scale if inverse else scale
        kernel[...] = (kernel[...] * (scale[:, None] if self.is_feedforward else scale[None, :])).astype(kernel.dtype)
        bias = getattr(self.base_layer, "bias", None)
        if not self.is_feedforward and isinstance(bias, nnx.Variable):
            bias[...] = (bias[...] * scale).astype(bias.dtype)


def ia3_layers(model: nnx.Module) -> dict[str, Ia3Linear]:
    """Path -> Ia3Linear for every IA3 layer in ``model``."""
    return {path: node for path, node in module_paths(model).items() if isinstance(node, Ia3Linear)}


def apply_ia3(model: nnx.Module, config) -> nnx.Module:
    """Wrap the targeted linear layers of ``model`` with IA3 vectors, in place.

    Args:
      model: a jaxkernel model (any head; int8 base layers work unmerged).
      config: an ``Ia3Config`` or the run config's ``peft`` section (same field names).

    Returns:
      ``model``; ``model.peft_config`` holds the config with the defaults filled in.

    Raises:
      ValueError: no module matches, a match is not a linear layer, it lies inside
        ``modules_to_save``, or an adapter is already applied.
    """
    from jaxkernel.peft.trainable import method_config

    check_no_adapter(model, "IA3 adapter")
    config = method_config(Ia3Config, config)
    if config.target_modules is None or config.feedforward_modules is None:
        targets, feedforward = ia3_defaults(model)
        # Like PEFT, defaults are filled in after the subset check on what the user gave.
        filled = Ia3Config(modules_to_save=config.modules_to_save)
        object.__setattr__(filled, "target_modules", config.target_modules or targets)
        object.__setattr__(filled, "feedforward_modules", config.feedforward_modules or feedforward)
        config = filled
    saved = resolve_modules_to_save(model, config.modules_to_save)
    linear_paths = [path for path, node in module_paths(model).items() if is_linear_like(node)]
    targets = match_modules(model, config.target_modules, kind="IA3 target_modules", candidates=linear_paths)
    for path in targets:
        node = get_module(model, path)
        if not is_linear_like(node):
            raise ValueError(f"IA3 target {path!r} is a {type(node).__name__}, not a linear layer")
        if any(path == s or path.startswith(s + ".") for s in saved):
            raise ValueError(f"IA3 target {path!r} lies inside modules_to_save {saved}: remove it from one of them")
    for path in targets:
        base = get_module(model, path)
        dtype = base.kernel.dtype if isinstance(getattr(base, "kernel", None), nnx.Variable) else jnp.float32
        dtype = dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.float32
        set_module(model, path, Ia3Linear(base, feedforward=is_feedforward(path, config.feedforward_modules),
                                          param_dtype=dtype))
    mark_modules_to_save(model, saved)
    model.peft_config = config
    return model


def merge_ia3(model: nnx.Module) -> nnx.Module:
    """Fold every IA3 vector into its base layer, in place; outputs stay the same."""
    for path, layer in ia3_layers(model).items():
        if not layer.merged:
            layer.fold(path)
            layer.merged = True
    return model


def unmerge_ia3(model: nnx.Module) -> nnx.Module:
    """Undo ``merge_ia3`` (divides by the vectors: entries must be non-zero)."""
    for path, layer in ia3_layers(model).items():
        if layer.merged:
            layer.fold(path, inverse=True)
            layer.merged = False
    return model
