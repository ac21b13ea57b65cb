"""Magnitude sparsity during training: gradual unstructured pruning and 2:4 masks.

``magnitude_pruning(...)`` is an optax transformation put *last* in the optimizer chain. Its
state holds one boolean mask per pruned kernel, so masks live in the train state's
``opt_state``: checkpointed with it and resumed exactly, sharded like any optimizer state.
Each update it returns ``where(mask, update, -param)``: kept weights get the optimizer's
update unchanged, pruned ones land on exactly 0.

Schedule (Zhu & Gupta 2017, "To prune, or not to prune"): after optimizer step ``t`` in
``[begin, end]``, every ``frequency`` steps (and at ``end``), the masks are recomputed from the
weights' magnitudes to reach sparsity

    s_t = s_f + (s_i - s_f) * (1 - (t - begin) / (end - begin)) ** 3

per kernel (``scope="layer"``) or with one threshold over all pruned kernels (``"global"``).
Pruned weights are 0, the smallest magnitudes, so masks only ever grow. ``pattern="2:4"``
instead keeps the 2 largest of every 4 consecutive *input* weights of each output (NVIDIA's
semi-structured sparsity; in the exported torch ``(out, in)`` weight, 4 adjacent columns).

Example::

    tx = optax.chain(optax.adamw(1e-4), magnitude_pruning(
        sparsity_targets(model), final_sparsity=0.8, begin_step=0, end_step=1000, frequency=100))
    ...
    print(sparsity_report(model)["total"]["sparsity"])
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxkernel.models.registry import family_of
from jaxkernel.peft.targets import path_matches

Pattern = Literal["unstructured", "2:4"]


def _keystr(path) -> str:
    parts = []
    for key in path:
        if isinstance(key, jax.tree_util.DictKey):
            parts.append(str(key.key))
        elif isinstance(key, jax.tree_util.SequenceKey):
            parts.append(str(key.idx))
        elif isinstance(key, jax.tree_util.GetAttrKey) and key.name not in ("value", "raw_value"):
            parts.append(key.name)
    return ".".join(parts)


def sparsity_targets(model: nnx.Module, targets: str | Sequence[str] | None = None) -> tuple[str, ...]:
    """Dotted paths of the kernels to sparsify: 2-D ``kernel`` parameters of the modules that
    ``targets`` names (PEFT's rule: names or a full-path regex); default every Linear in the layer
    stack (the registry's ``layers_path``), as int8 does."""
    pattern = family_of(model).int8_targets if targets is None else targets
    found = []
    for path, var in nnx.iter_graph(model):
        if isinstance(var, nnx.Param) and path and path[-1] == "kernel" and var.ndim == 2:
            module = ".".join(str(p) for p in path[:-1])
            if path_matches(module, pattern):
                found.append(".".join(str(p) for p in path))
    if not found:
        raise ValueError(f"sparsity targets {targets!r} match no Linear kernel of {type(model).__name__}")
    return tuple(found)


class SparsityState(NamedTuple):
    count: jax.Array  # optimizer steps seen
    masks: tuple  # one bool array per target kernel, True = kept


def sparsity_at(step, *, initial: float, final: float, begin: int, end: int):
    """Zhu & Gupta's cubic schedule: target sparsity after optimizer step ``step``."""
    if end <= begin:  # one-shot: the final sparsity at ``begin``
        return jnp.where(step >= begin, final, initial)
    progress = jnp.clip((step - begin) / (end - begin), 0.0, 1.0)
    return final + (initial - final) * (1.0 - progress) ** 3


def _unstructured(weights: list[jax.Array], sparsity, scope: str) -> list[jax.Array]:
    def keep_largest(a):  # a: flat magnitudes; exactly floor(s * n) smallest are dropped (ties: first)
        k = jnp.floor(sparsity * a.size).astype(jnp.int32)
        order = jnp.argsort(a, stable=True)
        return jnp.zeros(a.shape, bool).at[order].set(jnp.arange(a.size) >= k)

    if scope == "layer":
        return [keep_largest(jnp.abs(w).ravel()).reshape(w.shape) for w in weights]
    flat = keep_largest(jnp.concatenate([jnp.abs(w).ravel() for w in weights]))
    out, start = [], 0
    for w in weights:
        out.append(flat[start:start + w.size].reshape(w.shape))
        start += w.size
    return out


def n_m_mask(w: jax.Array, n: int = 2, m: int = 4) -> jax.Array:
    """Keep the ``n`` largest of every ``m`` consecutive input weights: kernel (in, out), groups along ``in``."""
    d_in, d_out = w.shape
    groups = jnp.abs(w).reshape(d_in // m, m, d_out)
    rank = jnp.argsort(jnp.argsort(-groups, axis=1, stable=True), axis=1)  # 0 = largest in its group
    return (rank < n).reshape(w.shape)


def magnitude_pruning(
    targets: Sequence[str],
    *,
    pattern: Pattern = "unstructured",
    initial_sparsity: float = 0.0,
    final_sparsity: float = 0.5,
    begin_step: int = 0,
    end_step: int = 1000,
    frequency: int = 100,
    scope: Literal["layer", "global"] = "layer",
) -> optax.GradientTransformation:
    """The optax transformation that prunes ``targets`` (param paths) by magnitude; put it last.

    Args:
      targets: dotted parameter paths (``sparsity_targets(model)``).
      pattern: ``"unstructured"`` (the cubic schedule) or ``"2:4"`` (2 of every 4 input weights;
        the sparsity fractions are then ignored).
      initial_sparsity / final_sparsity: s_i and s_f of the schedule.
      begin_step / end_step / frequency: masks are recomputed after optimizer steps
        begin, begin + frequency, ... and end; they stay fixed after ``end``.
      scope: one threshold per kernel (``"layer"``) or across all targets (``"global"``).
    """
    targets = tuple(targets)
    if not 0.0 <= initial_sparsity <= final_sparsity < 1.0:
        raise ValueError(f"need 0 <= initial_sparsity ({initial_sparsity}) <= final_sparsity ({final_sparsity}) < 1")
    if end_step < begin_step or frequency < 1:
        raise ValueError(f"need begin_step ({begin_step}) <= end_step ({end_step}) and frequency ({frequency}) >= 1")
    wanted = set(targets)

    def select(tree):
        leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
        index = {_keystr(p): i for i, (p, _) in enumerate(leaves)}
        missing = wanted - set(index)
        if missing:
            raise ValueError(f"sparsity targets are not trainable parameters: {sorted(missing)[:3]} (LoRA/int8 "
                             "freeze the base weights: sparsity needs peft.method=none)")
        return [leaf for _, leaf in leaves], treedef, [index[t] for t in targets]

    def init(params):
        leaves, _, where = select(params)
        for t, i in zip(targets, where):
            if pattern == "2:4" and leaves[i].shape[0] % 4:
                raise ValueError(f"2:4 sparsity needs in_features divisible by 4; {t} has {leaves[i].shape[0]}")
        return SparsityState(jnp.zeros((), jnp.int32), tuple(jnp.ones(leaves[i].shape, bool) for i in where))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("magnitude_pruning needs the parameters (optax passes them from apply_updates' caller)")
        u_leaves, treedef, where = select(updates)
        p_leaves, _, _ = select(params)
        step = state.count + 1
        new_weights = [p_leaves[i] + u_leaves[i] for i in where]

        def recompute(_):
            if pattern == "2:4":
                return tuple(n_m_mask(w) for w in new_weights)
            s = sparsity_at(step, initial=initial_sparsity, final=final_sparsity, begin=begin_step, end=end_step)
            return tuple(_unstructured(new_weights, s, scope))

        due = (step >= begin_step) & (step <= end_step) & (((step - begin_step) % frequency == 0) | (step == end_step))
        masks = jax.lax.cond(due, recompute, lambda _: state.masks, None)
        u_leaves = list(u_leaves)
        for i, mask in zip(where, masks):
            u_leaves[i] = jnp.where(mask, u_leaves[i], -p_leaves[i]).astype(u_leaves[i].dtype)
        return jax.tree_util.tree_unflatten(treedef, u_leaves), SparsityState(step, masks)

    return optax.GradientTransformation(init, update)


def from_config(model: nnx.Module, section, total_steps: int) -> optax.GradientTransformation:
    """``magnitude_pruning`` from the run config's ``sparsity`` section."""
    return magnitude_pruning(
        sparsity_targets(model, section.targets), pattern=section.pattern,
        initial_sparsity=section.initial_sparsity, final_sparsity=section.final_sparsity,
        begin_step=section.begin_step, end_step=total_steps if section.end_step is None else section.end_step,
        frequency=section.frequency, scope=section.scope,
    )


def sparsity_report(model: nnx.Module, targets: str | Sequence[str] | None = None) -> dict:
    """Zeros per pruned kernel: ``{"layers": {path: {shape, zeros, sparsity, is_2_4}}, "total": {...}}``."""
    params = {".".join(str(p) for p in path): v for path, v in nnx.iter_graph(model) if isinstance(v, nnx.Param)}
    layers, zeros, size = {}, 0, 0
    for path in sparsity_targets(model, targets):
        w = np.asarray(params[path][...])
        z = int((w == 0).sum())
        groups_ok = w.shape[0] % 4 == 0 and bool(((w.reshape(-1, 4, w.shape[1]) != 0).sum(1) <= 2).all())
        layers[path] = {"shape": list(w.shape), "zeros": z, "sparsity": z / w.size, "is_2_4": groups_ok}
        zeros, size = zeros + z, size + w.size
    return {"layers": layers, "total": {"zeros": zeros, "parameters": size, "sparsity": zeros / max(size, 1)}}


def write_sparsity_report(model: nnx.Module, directory: str | os.PathLike, targets=None) -> Path:
    """``<directory>/sparsity_report.json`` beside an exported model (dense tensors with zeros)."""
    path = Path(directory) / "sparsity_report.json"
    path.write_text(json.dumps(sparsity_report(model, targets), indent=2))
    return path


__all__ = ["SparsityState", "magnitude_pruning", "n_m_mask", "sparsity_at", "sparsity_report", "sparsity_targets",
           "write_sparsity_report"]
