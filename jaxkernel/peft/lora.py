"""LoRA by explicit graph surgery: ``y = base(x) + scale * dropout(x) @ A @ B``.

``apply_lora`` replaces every targeted linear layer with a ``LoraLinear`` that
keeps the original as ``base_layer`` (PEFT's naming, so the PEFT key mapping is a
rename) and adds ``lora_A`` (in, r) and ``lora_B`` (r, out) as ``LoraParam``.
``scale = alpha / r`` (``alpha / sqrt(r)`` with rsLoRA); ``lora_B`` starts at zero
so a fresh adapter leaves the model's outputs unchanged. ``lora_A`` starts like
PEFT's (Kaiming-uniform, bound ``1/sqrt(in)``).

The base layer is called as ``base_layer(x)``: anything linear-like with
``in_features`` / ``out_features`` works (``Linear``, an int8 linear...). Merging
needs a float ``kernel`` (in, out).

Logical axes: ``lora_A`` is (base input axis, ``"lora_rank"``), ``lora_B`` is
(``"lora_rank"``, base output axis), where the base axes are those of the wrapped
kernel (e.g. ``("embed", "lora_rank")`` / ``("lora_rank", "heads")`` for a
query). ``"lora_rank"`` is meant to stay unmapped (replicated).

Example::

    apply_lora(model, LoraConfig(r=8, alpha=16, target_modules=["query", "value"]))
    logits = model(input_ids, attention_mask)     # LoRA active
    merge_lora(model)                             # fold into kernels (same outputs)
    unmerge_lora(model)                           # and back
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxkernel.models.dropout import Dropout
from jaxkernel.models.layers import Linear
from jaxkernel.models.registry import family_of
from jaxkernel.peft.targets import Targets, check_targets, get_module, match_modules, module_paths, set_module
from jaxkernel.peft.trainable import TrainableParam, mark_modules_to_save, method_config, unmark_trainable

# Tasks whose head is trained by default, like PEFT's SEQ_CLS / TOKEN_CLS / QUESTION_ANS.
HEAD_TRAINING_TASKS = ("sequence-classification", "token-classification", "question-answering")


class LoraParam(TrainableParam):
    """LoRA low-rank factors ``lora_A`` / ``lora_B``."""


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """LoRA hyper-parameters, named and matched like ``peft.LoraConfig``.

    Attributes:
      r: rank (> 0).
      alpha: scale numerator (PEFT's ``lora_alpha``); scale = alpha / r.
      dropout: dropout on the LoRA input (active after ``model.train()``).
      target_modules: regex (full match) or list of names / dotted suffixes.
      modules_to_save: modules trained in full and saved with the adapter. None:
        the task head for sequence/token classification and QA (PEFT's default
        for those task types), nothing otherwise. ``()``: nothing.
      use_rslora: scale = alpha / sqrt(r).
      use_dora: weight-decomposed LoRA (``jaxkernel.peft.dora``): a learned magnitude per
        output channel; needs float base weights.
    """

    r: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    target_modules: Targets | None = None  # None: the family's default (PEFT's), e.g. BERT query/value
    modules_to_save: tuple[str, ...] | None = None
    use_rslora: bool = False
    use_dora: bool = False

    def __post_init__(self):
        if not isinstance(self.r, int) or isinstance(self.r, bool) or self.r <= 0:
            raise ValueError(f"LoRA rank r={self.r!r} must be a positive integer (e.g. r=8)")
        if not self.alpha > 0:
            raise ValueError(f"LoRA alpha={self.alpha!r} must be positive (PEFT's lora_alpha, often 2*r)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout={self.dropout!r} must be in [0, 1)")
        if self.target_modules is not None:
            object.__setattr__(self, "target_modules", check_targets(self.target_modules, "target_modules"))
        if self.modules_to_save is not None:
            if isinstance(self.modules_to_save, str):
                raise ValueError(f"modules_to_save must be a list of module names, got the string {self.modules_to_save!r}")
            object.__setattr__(self, "modules_to_save", tuple(self.modules_to_save))

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)


def _kernel_axes(base: nnx.Module) -> tuple[str | None, str | None]:
    kernel = getattr(base, "kernel", None)
    axes = kernel.get_metadata().get("out_sharding") if isinstance(kernel, nnx.Variable) else None
    return tuple(axes) if axes is not None and len(axes) == 2 else (None, None)


def is_linear_like(module) -> bool:
    return isinstance(module, Linear) or (
        isinstance(module, nnx.Module)
        and not isinstance(module, LoraLinear)
        and isinstance(getattr(module, "in_features", None), int)
        and isinstance(getattr(module, "out_features", None), int)
    )


class LoraLinear(nnx.Module):
    """A linear layer plus a low-rank update; ``base_layer`` stays frozen."""

    def __init__(
        self,
        base_layer: nnx.Module,
        *,
        r: int,
        scale: float,
        dropout: float = 0.0,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.base_layer = base_layer
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        self.r = r
        self.scale = scale
        self.merged = False
        in_axis, out_axis = _kernel_axes(base_layer)
        bound = 1.0 / math.sqrt(self.in_features)  # PEFT: kaiming_uniform_(a=sqrt(5)) on (r, in)
        a = jax.random.uniform(rngs.params(), (self.in_features, r), param_dtype, -bound, bound)
        self.lora_A = LoraParam(a, out_sharding=(in_axis, "lora_rank"), eager_sharding=False)
        self.lora_B = LoraParam(
            jnp.zeros((r, self.out_features), param_dtype), out_sharding=("lora_rank", out_axis), eager_sharding=False
        )
        self.dropout = nnx.data(Dropout(dropout, deterministic=True, rngs=rngs) if dropout > 0 else None)

    def delta_kernel(self) -> jax.Array:
        """The (in, out) update ``scale * A @ B`` that merging adds to the base kernel."""
        return self.scale * jnp.einsum("ir,ro->io", self.lora_A[...], self.lora_B[...])

    def merge_into(self, kernel: nnx.Variable) -> None:
        """Fold this layer's update into the base ``kernel`` (a float (in, out) variable)."""
        kernel[...] = (kernel[...] + self.delta_kernel()).astype(kernel.dtype)

    def unmerge_from(self, kernel: nnx.Variable) -> None:
        kernel[...] = (kernel[...] - self.delta_kernel()).astype(kernel.dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.base_layer(x)
        if self.merged:
            return y
        h = self.dropout(x) if self.dropout is not None else x
        a, b = self.lora_A[...], self.lora_B[...]
        dtype = getattr(self.base_layer, "dtype", None)
        if dtype is not None:  # mixed precision: compute like the base layer
            h, a, b = h.astype(dtype), a.astype(dtype), b.astype(dtype)
        low = jnp.einsum("...i,ir->...r", h, a)
        delta = jnp.einsum("...r,ro->...o", low, b)
        return y + (self.scale * delta).astype(y.dtype)


def lora_layers(model: nnx.Module) -> dict[str, LoraLinear]:
    """Path -> LoraLinear for every LoRA layer in ``model``."""
    return {path: node for path, node in module_paths(model).items() if isinstance(node, LoraLinear)}


def resolve_modules_to_save(model: nnx.Module, names: tuple[str, ...] | None) -> list[str]:
    """Paths of the modules ``names`` selects (PEFT list rule); None -> the task head where PEFT trains it."""
    if names is None:
        names = tuple(getattr(model, "head_modules", ())) if getattr(model, "task", None) in HEAD_TRAINING_TASKS else ()
    if not names:
        return []
    # Like PEFT, names that exist in no module are tolerated (["classifier", "score"] fits BERT and GPT-2).
    paths = [path for path in module_paths(model) if any(path == n or path.endswith("." + n) for n in names)]
    # Keep only outermost matches: a saved module's children are saved with it.
    return [p for p in paths if not any(p != q and p.startswith(q + ".") for q in paths)]


def check_no_adapter(model: nnx.Module, adding: str) -> None:
    existing = getattr(model, "peft_config", None)
    if existing is not None:
        raise ValueError(
            f"{type(model).__name__} already has a {type(existing).__name__} adapter; jaxkernel (like PEFT) applies "
            f"one adapter per model: load the base model again to add a {adding}"
        )


def low_rank_targets(model: nnx.Module, target_modules: Targets, modules_to_save, kind: str) -> tuple[list[str], list[str]]:
    """(paths to wrap, modules_to_save paths) of a LoRA-style method (LoRA, DoRA, AdaLoRA), checked.

    Raises:
      ValueError: nothing matches, a match is not a linear layer, or it lies inside modules_to_save.
    """
    saved = resolve_modules_to_save(model, modules_to_save)
    linear_paths = [path for path, node in module_paths(model).items() if is_linear_like(node)]
    targets = match_modules(model, target_modules, kind=f"{kind} target_modules", candidates=linear_paths)
    for path in targets:
        node = get_module(model, path)
        if not is_linear_like(node):
            raise ValueError(
                f"{kind} target {path!r} is a {type(node).__name__}, not a linear layer; target its linear "
                f"children instead (linear layers: {', '.join(p for p in linear_paths if p.startswith(path + '.'))})"
            )
        if any(path == s or path.startswith(s + ".") for s in saved):
            raise ValueError(
                f"{kind} target {path!r} lies inside modules_to_save {saved}: a module is either {kind}-adapted or "
                "trained in full; remove it from one of target_modules / modules_to_save"
            )
    return targets, saved


def apply_lora(model: nnx.Module, config, *, seed: int = 0) -> nnx.Module:
    """Wrap the targeted linear layers of ``model`` with LoRA, in place.

    Args:
      model: a jaxkernel model (any head).
      config: a ``LoraConfig`` (or the run config's ``peft`` section): which layers
        (None: the family's default targets), rank, scale, dropout, modules_to_save.
      seed: initialises ``lora_A`` and the LoRA dropout stream.

    Returns:
      ``model`` (modified in place); ``model.peft_config`` holds ``config``.

    Raises:
      ValueError: no module matches ``target_modules`` (the message lists
        candidates), a match is not a linear layer, or an adapter is present.
    """
    check_no_adapter(model, "LoRA adapter")
    config = method_config(LoraConfig, config)
    if config.target_modules is None:
        config = dataclasses.replace(config, target_modules=family_of(model).lora_targets)
    targets, saved = low_rank_targets(model, config.target_modules, config.modules_to_save, "LoRA")
    layer_class = LoraLinear
    if config.use_dora:
        from jaxkernel.peft.dora import DoraLinear, float_kernel_or_error

        for path in targets:
            float_kernel_or_error(get_module(model, path), path)
        layer_class = DoraLinear
    rngs = nnx.Rngs(params=seed, dropout=seed + 1)
    for path in targets:
        base = get_module(model, path)
        param_dtype = base.kernel.dtype if isinstance(getattr(base, "kernel", None), nnx.Variable) else jnp.float32
        if not jnp.issubdtype(param_dtype, jnp.floating):
            param_dtype = jnp.float32
        set_module(
            model, path,
            layer_class(base, r=config.r, scale=config.scale, dropout=config.dropout, param_dtype=param_dtype, rngs=rngs),
        )
    mark_modules_to_save(model, saved)
    model.peft_config = config
    return model


def _mergeable(path: str, layer: LoraLinear) -> nnx.Variable:
    kernel = getattr(layer.base_layer, "kernel", None)
    if not isinstance(kernel, nnx.Variable) or not jnp.issubdtype(kernel.dtype, jnp.floating):
        raise TypeError(
            f"cannot merge LoRA into {path}: its base layer {type(layer.base_layer).__name__} has no float kernel "
            "(e.g. int8 weights); keep the adapter unmerged, or merge before quantizing"
        )
    return kernel


def merge_lora(model: nnx.Module) -> nnx.Module:
    """Fold every LoRA update into its base kernel, in place; outputs stay the same."""
    for path, layer in lora_layers(model).items():
        if not layer.merged:
            layer.merge_into(_mergeable(path, layer))
            layer.merged = True
    return model


def unmerge_lora(model: nnx.Module) -> nnx.Module:
    """Undo ``merge_lora``: subtract each update from its base kernel, in place."""
    for path, layer in lora_layers(model).items():
        if layer.merged:
            layer.unmerge_from(_mergeable(path, layer))
            layer.merged = False
    return model


def merge_and_unload(model: nnx.Module) -> nnx.Module:
    """Fold LoRA / DoRA / IA3 in and drop the wrappers, in place: a plain jaxkernel model again.

    ``modules_to_save`` parameters become plain ``nnx.Param`` and
    ``model.peft_config`` is removed, so ``jaxkernel.save_pretrained`` writes an
    ordinary Hugging Face directory.

    Raises:
      ValueError: the model carries a prefix-tuning or bottleneck adapter, which
        no plain checkpoint can hold.
    """
    from jaxkernel.peft.bottleneck import BottleneckConfig
    from jaxkernel.peft.ia3 import ia3_layers, merge_ia3
    from jaxkernel.peft.prefix import PrefixConfig

    if isinstance(getattr(model, "peft_config", None), PrefixConfig):
        raise ValueError(
            "a prefix-tuning adapter cannot be folded into the model's weights; export it with "
            "jaxkernel.save_adapter (PEFT format) instead"
        )
    if isinstance(getattr(model, "peft_config", None), BottleneckConfig):
        raise ValueError(
            "a bottleneck adapter cannot be merged into the model's weights (it adds a non-linear MLP to the "
            "residual stream); export it with jaxkernel.save_adapter (AdapterHub format: adapter_config.json + "
            "adapter.safetensors) and load it with adapters' model.load_adapter"
        )
    merge_lora(model)
    merge_ia3(model)
    for path, layer in {**lora_layers(model), **ia3_layers(model)}.items():
        set_module(model, path, layer.base_layer)
    unmark_trainable(model)
    if hasattr(model, "peft_config"):
        del model.peft_config
    return model
