"""Model surgery: swap float ``Linear``/``Embed`` modules for int8 ones and back.

``quantize_model`` replaces matching modules *in place* (the float kernels are
released, which is the point) and returns the model; ``dequantize_model``
returns a float *copy* for export, leaving the int8 model untouched.

Targets follow PEFT's ``target_modules`` convention: a list of names matches a
module whose dotted path equals the name or ends with ``.name``; a single string
is a regex that must match the whole path. By default every ``Linear`` inside
the layer stack is quantized (the registry's ``layers_path``: BERT ``encoder.layer.*``, GPT-2 ``h.*``);
LayerNorms, biases, embeddings, the pooler and task heads stay float unless a
target names them (task heads additionally need ``include_heads=True``).

Quantize the base model *before* applying LoRA (QLoRA order): LoRA then wraps
the ``Int8Linear`` modules, whose ``__call__`` matches ``Linear``'s.

Example::

    model = jaxkernel.from_pretrained(path)
    quantize_model(model)                                   # weight-only, block linears
    quantize_model(other, targets=["query", "value"], mode="w8a8")
    float_copy = dequantize_model(model)                    # for save_pretrained

The config section is ``jaxkernel.config.QuantConfig`` (``quant.mode=w8a8`` ...):
``quantize_model(model, **config.quant.as_kwargs())``.
"""

from __future__ import annotations

import difflib
from typing import Iterator, Sequence

from flax import nnx

from jaxkernel.models.layers import Embed, Linear
from jaxkernel.models.registry import family_of
from jaxkernel.peft.targets import path_matches
from jaxkernel.quant.int8 import MODES, Int8Embed, Int8Linear, Mode, _check_mode

Targets = str | Sequence[str] | None



def _path_str(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def _modules(model: nnx.Module, types: tuple[type, ...]) -> Iterator[tuple[tuple, nnx.Module]]:
    for path, node in nnx.iter_graph(model):
        if isinstance(node, types) and path:
            yield path, node


def _matches(path: str, pattern: Targets) -> bool:
    return pattern is not None and path_matches(path, pattern)  # PEFT's rule, shared with LoRA


def _check_known(pattern: Targets, paths: list[str], what: str) -> None:
    """Every listed name (or the regex) must match some quantizable module."""
    if pattern is None:
        return
    entries = [pattern] if isinstance(pattern, str) else list(pattern)
    names = sorted({p.rsplit(".", 1)[-1] for p in paths})
    for entry in entries:
        if not any(_matches(p, entry if isinstance(pattern, str) else [entry]) for p in paths):
            close = difflib.get_close_matches(entry, names + paths, n=3)
            hint = f" (closest: {', '.join(close)})" if close else ""
            raise ValueError(
                f"{what} {entry!r} matches no Linear/Embed module{hint}; module names here are "
                f"{', '.join(names)} (paths like {paths[0]!r})"
            )


def _replace(model: nnx.Module, path: tuple, new: nnx.Module) -> None:
    parent = model
    for key in path[:-1]:
        parent = parent[key] if isinstance(key, int) else getattr(parent, key)
    if isinstance(path[-1], int):
        parent[path[-1]] = new
    else:
        setattr(parent, path[-1], new)


def quantized_paths(model: nnx.Module) -> list[str]:
    """Dotted paths of the int8 modules in ``model`` (empty for a float model)."""
    return [_path_str(path) for path, _ in _modules(model, (Int8Linear, Int8Embed))]


def quantize_model(
    model: nnx.Module,
    targets: Targets = None,
    *,
    skip: Targets = None,
    mode: Mode = "weight_only",
    group_size: int | None = None,
    include_heads: bool = False,
) -> nnx.Module:
    """Replace float linears (and, if named, embeddings) by int8 modules, in place.

    Args:
      model: a float jaxkernel model (BERT, GPT-2, any task head).
      targets: which modules; None = every Linear in the transformer blocks. A list
        of names (``["query", "value", "dense"]``) or a full-path regex.
      skip: modules to leave float even if targeted (same forms as ``targets``).
      mode: ``"weight_only"`` (dequantize in the matmul) or ``"w8a8"`` (int8 matmul
        with per-token dynamic activation quantization). Embeddings are always
        weight-only.
      group_size: one scale per this many input features instead of per channel.
      include_heads: also quantize modules under the task head (``model.head_modules``).

    Returns:
      ``model`` itself, now holding ``Int8Linear``/``Int8Embed`` modules.

    Raises:
      ValueError: the model is already quantized, a target or skip name matches
        nothing, nothing is selected, or ``mode``/``group_size`` is invalid.
      TypeError: a selected module's weights are not floating point.
    """
    _check_mode(mode)
    already = quantized_paths(model)
    if already:
        raise ValueError(
            f"model is already quantized ({len(already)} int8 modules, e.g. {already[0]}); quantize the float "
            "model, or call dequantize_model(model) first to re-quantize with other settings"
        )
    candidates = [(path, node) for path, node in _modules(model, (Linear, Embed))]
    paths = [_path_str(path) for path, _ in candidates]
    if not paths:
        raise ValueError(f"{type(model).__name__} has no Linear or Embed modules to quantize")
    _check_known(targets, paths, "target")
    _check_known(skip, paths, "skip")
    heads = tuple(getattr(model, "head_modules", ()))
    default_targets = family_of(model).int8_targets  # every Linear inside the layer stack
    chosen = []
    for (path, node), name in zip(candidates, paths):
        if targets is None:
            selected = isinstance(node, Linear) and _matches(name, default_targets)
        else:
            selected = _matches(name, targets)
        in_head = any(name == h or name.startswith(h + ".") for h in heads)
        if selected and not _matches(name, skip) and (include_heads or not in_head):
            chosen.append((path, node))
    if not chosen:
        raise ValueError(
            f"targets={targets!r} skip={skip!r} select no module of {type(model).__name__} "
            f"(task-head modules {heads} need include_heads=True)"
        )
    replacements = []  # built first, so an error leaves the model untouched
    for path, node in chosen:
        if isinstance(node, Linear):
            if group_size is not None and (group_size <= 0 or node.in_features % group_size):
                raise ValueError(
                    f"group_size={group_size} does not divide in_features={node.in_features} of "
                    f"{_path_str(path)}; choose a divisor, or skip that module"
                )
            replacements.append((path, Int8Linear.from_linear(node, mode=mode, group_size=group_size)))
        else:
            replacements.append((path, Int8Embed.from_embed(node)))
    for path, new in replacements:
        _replace(model, path, new)
    return model


def dequantize_model(model: nnx.Module) -> nnx.Module:
    """A float copy of an int8 model: ``Int8Linear -> Linear``, ``Int8Embed -> Embed``.

    Use it to export: ``save_pretrained(dequantize_model(model), out)`` writes
    ordinary float32 HF weights equal to ``q * scale`` (plain ``transformers``
    loads them; the int8 rounding error is baked in, the memory saving is not).

    Raises:
      ValueError: ``model`` has no int8 modules.
    """
    if not quantized_paths(model):
        raise ValueError(f"{type(model).__name__} has no int8 modules; it is already a float model")
    copy = nnx.clone(model)
    for path, node in list(_modules(copy, (Int8Linear, Int8Embed))):
        _replace(copy, path, node.to_linear() if isinstance(node, Int8Linear) else node.to_embed())
    return copy


__all__ = ["MODES", "dequantize_model", "quantize_model", "quantized_paths"]
