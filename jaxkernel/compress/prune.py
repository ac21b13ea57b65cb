"""Structured pruning: remove whole attention heads and FFN units, physically.

Importance is first-order (Michel et al., 2019, "Are Sixteen Heads Really Better than One?"):
a gate ``xi`` on a unit's output, at ``xi = 1``, has gradient ``dL/dxi = sum(W * dL/dW)`` over
the rows of the projection that reads that unit (a head's ``head_dim`` rows of the attention
output kernel, an FFN unit's row of the down projection). ``|dL/dxi|`` is summed over the dev
batches; head scores are L2-normalised per layer (as Michel et al. do) so a global ranking
compares layers fairly.

Pruned units are *removed*: q/k/v get fewer columns and the attention output fewer rows, FFN
kernels lose columns/rows; the model's config records it (``pruned_heads``, a smaller
intermediate size) so ``save_pretrained`` writes an ordinary HF directory. Which parameters
belong to heads or FFN units is read from their logical axis names (``"heads"``, ``"mlp"``),
never from a family's module names. Heads can be pruned only for families whose config carries
HF's ``pruned_heads`` (BERT, RoBERTa); GPT-2 fuses q/k/v and HF has no per-layer head counts
for it, so only its FFN is pruned. HF configs hold one ``intermediate_size``: FFN pruning
removes the same number of units from every layer.

Example::

    batches = [dict(input_ids=..., attention_mask=..., labels=...), ...]   # a dev set
    scores = compute_importance(model, batches)
    report = prune_model(model, scores, heads=0.5, ffn=0.3)   # in place
    save_pretrained(model, "out/pruned")                        # pruned_heads + intermediate_size
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Literal, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxkernel.models.layers import Linear
from jaxkernel.models.registry import family_of

Amount = float | int | None
Scope = Literal["layer", "global"]


@dataclasses.dataclass
class Importance:
    """Per-layer scores (higher = more important), indexed by the layer's *current* units.

    Attributes:
      heads: one (heads in that layer,) array per layer, L2-normalised per layer.
      ffn: one (intermediate units,) array per layer.
      batches: how many batches were scored.
    """

    heads: list[np.ndarray]
    ffn: list[np.ndarray]
    batches: int


def _path(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def _axes(var: nnx.Variable) -> tuple:
    return tuple(var.get_metadata().get("out_sharding") or ())


def _check_plain(model: nnx.Module) -> None:
    """Pruning slices plain float parameters: refuse adapters and int8 with the fix."""
    from jaxkernel.peft.trainable import TrainableParam

    for path, var in nnx.iter_graph(model):
        if not isinstance(var, nnx.Variable) or isinstance(var, nnx.RngState):
            continue
        if isinstance(var, TrainableParam) or not isinstance(var, nnx.Param):
            raise TypeError(
                f"{_path(path)} is a {type(var).__name__}: prune a plain float model (merge adapters with "
                "merge_lora / save_merged, or dequantize_model an int8 model, first)"
            )


def _layer_params(model: nnx.Module) -> list[dict[str, nnx.Variable]]:
    """For each transformer layer: path inside the layer -> Param."""
    return [
        {_path(p): v for p, v in nnx.iter_graph(layer) if isinstance(v, nnx.Param)}
        for layer in family_of(model).layers(model)
    ]


def _unit_readers(model: nnx.Module, axis: str, first: str) -> list[str]:
    """Per layer, the path of the kernel that *reads* the units: axes (axis, ...) = rows per unit."""
    found = []
    for i, params in enumerate(_layer_params(model)):
        readers = [p for p, v in params.items() if _axes(v)[:1] == (axis,) and v.ndim == 2]
        if len(readers) != 1:
            raise ValueError(
                f"layer {i} of {type(model).__name__} has {len(readers)} kernels with logical axes "
                f"({axis!r}, ...) ({readers}); {first} pruning needs exactly one output projection per layer"
            )
        found.append(readers[0])
    return found


def _layer_prefix(model: nnx.Module) -> str:
    first = family_of(model).layers(model)[0]
    for path, node in nnx.iter_graph(model):
        if node is first:
            return _path(path[:-1])
    raise ValueError("layer stack not found in the model graph")


def compute_importance(
    model: nnx.Module,
    batches: Iterable[Mapping[str, np.ndarray]],
    *,
    loss_fn: Callable | None = None,
    heads: bool = True,
) -> Importance:
    """Score attention heads and FFN units on labelled ``batches`` (Michel et al. 2019).

    Args:
      model: a float jaxkernel model with a task head (its loss scores the units).
      batches: dicts with the model inputs and the task's label keys (``labels``...).
      loss_fn: ``(outputs, batch) -> (loss, aux)``; default: the task loss.
      heads: also score heads (False for families whose heads cannot be pruned).

    Returns:
      ``Importance``; an empty ``heads`` list when ``heads`` is False.
    """
    from jaxkernel.train.losses import loss_for_task
    from jaxkernel.train.step import _model_inputs, forward

    _check_plain(model)
    loss_fn = loss_fn or loss_for_task(model.task)
    prefix = _layer_prefix(model)
    ffn_readers = _unit_readers(model, "mlp", "FFN")
    head_readers = _unit_readers(model, "heads", "head") if heads else []
    targets = {f"{prefix}.{i}.{p}" for i, p in enumerate(ffn_readers)}
    targets |= {f"{prefix}.{i}.{p}" for i, p in enumerate(head_readers)}
    inputs = _model_inputs(model)
    view = nnx.view(model, deterministic=True, raise_if_not_found=False)
    graphdef, target_state, rest = nnx.split(view, lambda path, _: _path(path) in targets, ...)

    @jax.jit
    def gate_grads(target_state, rest, batch):
        def loss(target_state):
            out = forward(nnx.merge(graphdef, target_state, rest), batch, inputs)
            return loss_fn(out, batch)[0]

        grads = jax.grad(loss)(target_state)
        # d loss / d gate of each unit = sum over its kernel row of W * dW  (row r = unit r).
        return jax.tree.map(lambda w, g: jnp.sum(w * g, axis=-1), target_state, grads)

    head_dim = family_of(model).dims(model.config).head_dim
    n = len(ffn_readers)
    ffn = [None] * n
    head_scores = [None] * len(head_readers)
    count = 0
    for batch in batches:
        batch = {k: jnp.asarray(v) for k, v in batch.items() if k != "index"}
        flat = {_path(p): np.asarray(v) for p, v in nnx.to_flat_state(gate_grads(target_state, rest, batch))}
        for i, p in enumerate(ffn_readers):
            s = np.abs(flat[f"{prefix}.{i}.{p}"])
            ffn[i] = s if ffn[i] is None else ffn[i] + s
        for i, p in enumerate(head_readers):
            s = np.abs(flat[f"{prefix}.{i}.{p}"].reshape(-1, head_dim).sum(-1))
            head_scores[i] = s if head_scores[i] is None else head_scores[i] + s
        count += 1
    if not count:
        raise ValueError("compute_importance got no batches: give a few labelled dev batches")
    head_scores = [s / max(np.linalg.norm(s), 1e-20) for s in head_scores]
    return Importance(heads=head_scores, ffn=ffn, batches=count)


def _count(amount: Amount, total: int, what: str) -> int:
    """A fraction in (0, 1) of ``total``, or an absolute count (int >= 1)."""
    if amount is None or amount == 0:
        return 0
    if isinstance(amount, float) and 0 < amount < 1:
        return int(round(amount * total))
    if float(amount).is_integer() and amount >= 1:
        return int(amount)
    raise ValueError(f"{what}={amount!r}: give a fraction in (0, 1) or a count >= 1")


def kept_heads(config, layer: int) -> list[int]:
    """Original head numbers layer ``layer`` still has."""
    from jaxkernel.models.registry import family_of_config

    removed = set(dict(getattr(config, "pruned_heads", ())).get(layer, ()))
    return [h for h in range(family_of_config(config).dims(config).heads) if h not in removed]


def select_heads(model: nnx.Module, importance: Importance, amount: Amount, scope: Scope = "layer") -> dict[int, list[int]]:
    """Heads to remove, ``{layer: [original head numbers]}``: the least important ones.

    ``amount``: a fraction in (0, 1) or a count, per layer (``scope="layer"``) or over all
    layers (``"global"``). Every layer keeps at least one head.
    """
    config = model.config
    kept = [kept_heads(config, i) for i in range(len(importance.heads))]
    chosen: dict[int, list[int]] = {}
    if scope == "layer":
        for i, scores in enumerate(importance.heads):
            k = min(_count(amount, len(kept[i]), "heads"), len(kept[i]) - 1)
            order = np.argsort(scores, kind="stable")[:k]
            if k:
                chosen[i] = sorted(kept[i][j] for j in order)
    elif scope == "global":
        total = sum(len(k) for k in kept)
        k = _count(amount, total, "heads")
        ranked = sorted((float(s), i, j) for i, scores in enumerate(importance.heads) for j, s in enumerate(scores))
        left = [len(x) for x in kept]
        for _, i, j in ranked:
            if k == 0:
                break
            if left[i] > 1:
                chosen.setdefault(i, []).append(kept[i][j])
                left[i] -= 1
                k -= 1
        chosen = {i: sorted(h) for i, h in sorted(chosen.items())}
    else:
        raise ValueError(f"scope={scope!r}: use 'layer' or 'global'")
    return chosen


def select_ffn(importance: Importance, amount: Amount) -> dict[int, list[int]]:
    """FFN units to remove per layer: the same number in every layer (HF configs have one
    ``intermediate_size``), the least important of each layer."""
    width = len(importance.ffn[0])
    k = min(_count(amount, width, "ffn"), width - 1)
    if not k:
        return {}
    return {i: sorted(np.argsort(s, kind="stable")[:k].tolist()) for i, s in enumerate(importance.ffn)}


def _slice_axis(layer: nnx.Module, axis_name: str, keep: np.ndarray, unit: int) -> None:
    """Keep units ``keep`` along every parameter axis named ``axis_name`` (``unit`` elements each)."""
    index = (keep[:, None] * unit + np.arange(unit)[None, :]).reshape(-1)
    for path, var in list(nnx.iter_graph(layer)):
        if not isinstance(var, nnx.Param) or axis_name not in _axes(var):
            continue
        value = var[...]
        for a, name in enumerate(_axes(var)):
            if name == axis_name:
                value = jnp.take(value, jnp.asarray(index), axis=a)
        owner = layer
        for key in path[:-1]:
            owner = owner[key] if isinstance(key, int) else getattr(owner, key)
        setattr(owner, path[-1], var.replace(value=value))
    for _, node in nnx.iter_graph(layer):
        if isinstance(node, Linear):
            node.in_features, node.out_features = node.kernel.shape


def _set_config(model: nnx.Module, config) -> None:
    old = model.config
    for _, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Module) and getattr(node, "config", None) is old:
            node.config = config


def _config_field(config, dims_name: str, value: int) -> str:
    """The config field that sets ``dims(config).<dims_name>`` (asked of the registry's dims,
    not of field names: BERT's ``intermediate_size`` and GPT-2's ``n_inner`` alike)."""
    from jaxkernel.models.registry import family_of_config

    family = family_of_config(config)
    probe = value + 7919
    for f in dataclasses.fields(config):
        current = getattr(config, f.name)
        if not (current is None or (isinstance(current, int) and not isinstance(current, bool))):
            continue
        try:
            if getattr(family.dims(dataclasses.replace(config, **{f.name: probe})), dims_name) == probe:
                return f.name
        except (TypeError, ValueError):
            continue
    raise ValueError(f"{type(config).__name__} has no field that sets its {dims_name} size")


def prune_heads(model: nnx.Module, heads: Mapping[int, Iterable[int]]) -> nnx.Module:
    """Remove attention heads in place: ``{layer: [original head numbers]}``.

    Raises:
      ValueError: the family has no per-layer head counts in HF (``pruned_heads``), e.g. GPT-2;
        a head is unknown or already removed, or a layer would lose every head.
    """
    config = model.config
    family = family_of(model)
    if "pruned_heads" not in {f.name for f in dataclasses.fields(config)}:
        raise ValueError(
            f"{family.model_type} models cannot lose attention heads: Hugging Face has no pruned_heads for "
            f"{family.model_type} (q/k/v may be fused), so the result would not load; prune FFN units only (ffn=...)"
        )
    _check_plain(model)
    heads = {int(i): sorted(set(int(h) for h in hs)) for i, hs in heads.items() if list(hs)}
    layers = family.layers(model)
    merged = dict(config.pruned_heads)
    head_dim = family.dims(config).head_dim
    plans = []
    for i, remove in heads.items():
        if not 0 <= i < len(layers):
            raise ValueError(f"layer {i} does not exist (the model has {len(layers)})")
        kept = kept_heads(config, i)
        unknown = [h for h in remove if h not in kept]
        if unknown:
            raise ValueError(f"layer {i}: heads {unknown} are not present (kept heads: {kept})")
        keep = np.array([j for j, h in enumerate(kept) if h not in remove])
        if not len(keep):
            raise ValueError(f"layer {i}: removing heads {remove} leaves none; keep at least one")
        plans.append((i, keep))
        merged[i] = tuple(sorted(set(merged.get(i, ())) | set(remove)))
    for i, keep in plans:
        _slice_axis(layers[i], "heads", keep, head_dim)
        for _, node in nnx.iter_graph(layers[i]):
            if isinstance(node, nnx.Module) and isinstance(getattr(node, "num_heads", None), int):
                node.num_heads = len(keep)
    _set_config(model, dataclasses.replace(config, pruned_heads=tuple(sorted(merged.items()))))
    return model


def prune_ffn(model: nnx.Module, units: Mapping[int, Iterable[int]]) -> nnx.Module:
    """Remove intermediate (FFN) units in place, ``{layer: [unit indices]}``, the same count in
    every layer (HF configs carry a single intermediate size)."""
    _check_plain(model)
    family = family_of(model)
    layers = family.layers(model)
    units = {int(i): sorted(set(int(u) for u in us)) for i, us in units.items()}
    counts = {len(units.get(i, ())) for i in range(len(layers))}
    if len(counts) != 1:
        raise ValueError(
            f"FFN pruning must remove the same number of units from every layer (HF configs have one "
            f"intermediate size); got counts {sorted(counts)}"
        )
    width = family.dims(model.config).intermediate
    removed = counts.pop()
    if not removed:
        return model
    if removed >= width:
        raise ValueError(f"cannot remove {removed} of {width} FFN units: keep at least one")
    for i, layer in enumerate(layers):
        keep = np.array([u for u in range(width) if u not in set(units[i])])
        _slice_axis(layer, "mlp", keep, 1)
    field = _config_field(model.config, "intermediate", width - removed)
    _set_config(model, dataclasses.replace(model.config, **{field: width - removed}))
    return model


def can_prune_heads(model: nnx.Module) -> bool:
    return "pruned_heads" in {f.name for f in dataclasses.fields(model.config)}


def prune_model(
    model: nnx.Module, importance: Importance, *, heads: Amount = None, ffn: Amount = None, scope: Scope = "layer"
) -> dict:
    """Select and remove the least important heads and FFN units, in place.

    Returns:
      ``{"heads": {layer: [removed heads]}, "ffn": units removed per layer}``.
    """
    report: dict = {"heads": {}, "ffn": 0}
    if heads:
        if not can_prune_heads(model):
            prune_heads(model, {0: [0]})  # raises the family's explanation
        report["heads"] = select_heads(model, importance, heads, scope)
    chosen_ffn = select_ffn(importance, ffn) if ffn else {}
    if report["heads"]:
        prune_heads(model, report["heads"])
    if chosen_ffn:
        prune_ffn(model, chosen_ffn)
        report["ffn"] = len(chosen_ffn[0])
    return report


def pad_pruned_heads(model: nnx.Module) -> nnx.Module:
    """A copy with every pruned head put back as zeros (full-size tensors, ``pruned_heads`` empty).

    Same outputs (a head whose value projection is zero adds nothing); for ``transformers`` >= 5,
    which dropped ``pruned_heads``: the attention is full size again, the FFN stays pruned.
    """
    config = model.config
    if not getattr(config, "pruned_heads", ()):
        return nnx.clone(model)
    family = family_of(model)
    full = dataclasses.replace(config, pruned_heads=())
    copy = family.build(model.task, full)
    head_dim = family.dims(config).head_dim
    src = {_path(p): v for p, v in nnx.iter_graph(model) if isinstance(v, nnx.Param)}
    layer_prefix = _layer_prefix(model) + "."
    for path, var in nnx.iter_graph(copy):
        if not isinstance(var, nnx.Param):
            continue
        name = _path(path)
        value = src[name][...]
        if "heads" in _axes(var) and name.startswith(layer_prefix):
            layer = int(name[len(layer_prefix):].split(".")[0])
            kept = kept_heads(config, layer)
            index = (np.array(kept)[:, None] * head_dim + np.arange(head_dim)).reshape(-1)
            for a, axis in enumerate(_axes(var)):
                if axis == "heads":
                    shape = list(value.shape)
                    shape[a] = var.shape[a]
                    full_value = jnp.zeros(shape, value.dtype)
                    value = jnp.moveaxis(jnp.moveaxis(full_value, a, 0).at[index].set(jnp.moveaxis(value, a, 0)), 0, a)
        var[...] = value
    return copy


__all__ = [
    "Importance", "can_prune_heads", "compute_importance", "kept_heads", "pad_pruned_heads", "prune_ffn",
    "prune_heads", "prune_model", "select_ffn", "select_heads",
]
