"""AdaLoRA's training-time half: PEFT's orthogonality regulariser and ``RankAllocator``, as optax.

PEFT trains AdaLoRA with ``loss + orth_reg_weight * R`` and, after every ``optimizer.step()``,
``model.base_model.update_and_allocate(global_step)``. Here both are optax transformations, so
the train step stays generic and the allocator's state (importance EMAs, the current rank
pattern, the step) is optimizer state: checkpointed with it, resumed exactly, jit-friendly::

    tx = optax.chain(orthogonal_regularization(weight), clip, rank_allocation(adamw, config, total_step))

``orthogonal_regularization`` adds the gradient of PEFT's term (which is what adding it to the
loss does) before clipping::

    R = mean over every lora_A and lora_B of ||P^T P - I||_F        (P: A (in, r) or B^T (out, r))

The logged loss is the task loss alone. ``rank_allocation`` wraps the optimizer: with the
updated parameters ``p`` and the (regularised, clipped) gradients ``g`` of step ``t`` (PEFT's
``global_step``, counted from 0) it does what ``AdaLoraModel.update_and_allocate(t)`` does:

- ``t < total_step - tfinal``: ``I = |p * g|``; ``Ī = β1 Ī + (1-β1) I``; ``Ū = β2 Ū + (1-β2) |I - Ī|``
  for every A, E, B entry; on a budgeting step (``t > tinit`` and ``t % deltaT == 0``) the
  budget ``b(t) = int((B0 - BT) (1 - (t - tinit) / (total_step - tfinal - tinit))^3 + BT)``
  (``B0`` = sum of ranks, ``BT`` = target_r * layers) keeps the ``b(t)`` triplets with the
  highest score ``S_E + mean_in S_A + mean_out S_B`` (``S = Ī * Ū``); the others' E entries
  become 0 (they may grow back until the next allocation, as in PEFT);
- ``t == total_step - tfinal``: a last allocation to ``BT`` and the EMAs are reset;
- later: the last pattern's zeros are imposed on E every step.

The reference is PEFT 0.21's ``peft/tuners/adalora/layer.py::RankAllocator`` and
``model.py::AdaLoraModel.update_and_allocate`` (tests/test_adalora.py runs both on the same inputs).

Both find the AdaLoRA layers in the parameter tree by variable type (``AdaLoraParam``), so they
need no model. Example::

    tx = adalora_optimizer(optax.adamw(1e-3), config=model.peft_config, total_step=1000,
                           clip=optax.clip_by_global_norm(1.0))
    ...
    model = attach_rank_pattern(model_from_state(model_def, state), state.opt_state)   # for save_adapter
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxkernel.peft.adalora import AdaLoraConfig, AdaLoraParam, adalora_layers, compose_pattern

PARTS = ("lora_A", "lora_E", "lora_B")


class AdaLoraState(NamedTuple):
    count: jax.Array  # updates applied so far = PEFT's global_step of the next update
    inner: Any  # the wrapped optimizer's state
    exp_avg_ipt: tuple  # per layer (A, E, B): EMA of |p * g|
    exp_avg_unc: tuple  # per layer (A, E, B): EMA of |I - EMA|
    masks: tuple  # per layer (r,) bool: the last allocation, True = kept
    total_step: jax.Array  # the schedule's length (PEFT saves it with the adapter)


def budget_schedule(step: int, *, init_bgt: int, target_bgt: int, tinit: int, tfinal: int, total_step: int,
                    deltaT: int) -> tuple[int, bool]:
    """PEFT's ``RankAllocator.budget_schedule``: (budget, whether to allocate) at ``step``."""
    if step <= tinit:
        return init_bgt, False
    if step > total_step - tfinal:
        return target_bgt, True
    mul_coeff = 1 - (step - tinit) / (total_step - tfinal - tinit)
    return int((init_bgt - target_bgt) * (mul_coeff**3) + target_bgt), step % deltaT == 0


def update_importance(ipt_avg, unc_avg, param, grad, beta1: float, beta2: float):
    """One EMA update of sensitivity and uncertainty for one tensor (PEFT's ``update_ipt``)."""
    ipt = jnp.abs(param * grad)
    ipt_avg = beta1 * ipt_avg + (1 - beta1) * ipt
    unc_avg = beta2 * unc_avg + (1 - beta2) * jnp.abs(ipt - ipt_avg)
    return ipt_avg, unc_avg


def triplet_scores(ipt_avg, unc_avg) -> jax.Array:
    """(r,) score of each triplet of one layer from its (A, E, B) EMAs: ``S_E + (mean_in S_A + mean_out S_B)``."""
    s_a, s_e, s_b = (i * u for i, u in zip(ipt_avg, unc_avg))
    return s_e + (jnp.mean(s_a, axis=0) + jnp.mean(s_b, axis=1))


def mask_to_budget(scores: Sequence[jax.Array], budget) -> tuple[jax.Array, ...]:
    """Keep the ``budget`` best triplets over all layers: PEFT masks ``score <= kthvalue(all, B0 - budget)``."""
    flat = jnp.concatenate([s.reshape(-1) for s in scores])
    k = flat.shape[0] - budget
    threshold = jnp.where(k > 0, jnp.sort(flat)[jnp.maximum(k - 1, 0)], -jnp.inf)
    return tuple(s > threshold for s in scores)


def _path(keys) -> str:
    parts = []
    for key in keys:
        if isinstance(key, jax.tree_util.DictKey):
            parts.append(str(key.key))
        elif isinstance(key, jax.tree_util.SequenceKey):
            parts.append(str(key.idx))
        elif isinstance(key, jax.tree_util.GetAttrKey) and key.name not in ("value", "raw_value"):
            parts.append(key.name)
    return ".".join(parts)


def find_layers(params) -> tuple[tuple[str, int], ...]:
    """(layer path, rank) of every AdaLoRA layer in a parameter tree, by variable type, sorted by path."""
    flat, _ = jax.tree_util.tree_flatten_with_path(params, is_leaf=lambda x: isinstance(x, nnx.Variable))
    ranks = {}
    for keys, leaf in flat:
        path = _path(keys)
        if isinstance(leaf, AdaLoraParam) and path.endswith(".lora_E"):
            ranks[path[: -len(".lora_E")]] = int(leaf.shape[0])
    if not ranks:
        raise ValueError("the trained parameters hold no AdaLoRA layer (AdaLoraParam lora_E): apply_adalora first")
    return tuple(sorted(ranks.items()))


def _locate(tree, layer_paths: Sequence[str]):
    """(leaves, treedef, per layer (A, E, B) leaf indices) of a params-shaped tree."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    index = {_path(p): i for i, (p, _) in enumerate(flat)}
    where = []
    for layer in layer_paths:
        missing = [f"{layer}.{part}" for part in PARTS if f"{layer}.{part}" not in index]
        if missing:
            raise ValueError(f"AdaLoRA parameters {missing} are not among the trained parameters")
        where.append(tuple(index[f"{layer}.{part}"] for part in PARTS))
    return [leaf for _, leaf in flat], treedef, where


def orthogonality_penalty(factors: Sequence[tuple[jax.Array, jax.Array]]) -> jax.Array:
    """PEFT's R: mean over all A (in, r) and B (r, out) of ``||cov - I||_F`` (cov r x r)."""
    terms = []
    for a, b in factors:
        for cov in (a.T @ a, b @ b.T):
            terms.append(jnp.linalg.norm(cov - jnp.eye(cov.shape[0], dtype=cov.dtype)))
    return sum(terms) / max(len(terms), 1)


def orthogonal_regularization(weight: float) -> optax.GradientTransformation:
    """Add ``weight * dR/dθ`` to the gradients of every AdaLoRA A and B (put it first in the chain)."""

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("orthogonal_regularization needs the parameters (optax passes them from the train step)")
        if weight == 0:
            return updates, state
        paths = [path for path, _ in find_layers(params)]
        p_leaves, _, where = _locate(params, paths)
        u_leaves, treedef, _ = _locate(updates, paths)
        grads = jax.grad(orthogonality_penalty)([(p_leaves[ia], p_leaves[ib]) for ia, _, ib in where])
        u_leaves = list(u_leaves)
        for (ia, _, ib), (ga, gb) in zip(where, grads):
            u_leaves[ia] = u_leaves[ia] + weight * ga
            u_leaves[ib] = u_leaves[ib] + weight * gb
        return jax.tree_util.tree_unflatten(treedef, u_leaves), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _schedule_tables(ranks: Sequence[int], c: AdaLoraConfig, total_step: int) -> tuple[np.ndarray, np.ndarray]:
    """PEFT's budget and allocate-or-not for steps 0 .. total_step - tfinal, as constants."""
    init_bgt, target_bgt = sum(ranks), c.target_r * len(ranks)
    table = [budget_schedule(t, init_bgt=init_bgt, target_bgt=target_bgt, tinit=c.tinit, tfinal=c.tfinal,
                             total_step=total_step, deltaT=c.deltaT) for t in range(total_step - c.tfinal + 1)]
    return np.asarray([b for b, _ in table], np.int32), np.asarray([d for _, d in table], bool)


def rank_allocation(inner: optax.GradientTransformation, config: AdaLoraConfig,
                    total_step: int) -> optax.GradientTransformation:
    """Wrap ``inner`` (the optimizer proper) with PEFT's rank allocator (module docstring)."""
    c = config
    if c.tinit >= total_step - c.tfinal:
        raise ValueError(f"AdaLoRA tinit={c.tinit} >= total_step ({total_step}) - tfinal ({c.tfinal}): "
                         "no budgeting phase; lower tinit / tfinal or train longer")
    final = total_step - c.tfinal

    def init(params):
        layers = find_layers(params)
        leaves, _, where = _locate(params, [path for path, _ in layers])
        zeros = tuple(tuple(jnp.zeros_like(leaves[i]) for i in idx) for idx in where)
        masks = tuple(jnp.ones((r,), bool) for _, r in layers)
        return AdaLoraState(jnp.zeros((), jnp.int32), inner.init(params), zeros, zeros, masks,
                            jnp.asarray(total_step, jnp.int32))

    def update(grads, state, params=None):
        if params is None:
            raise ValueError("rank_allocation needs the parameters (optax passes them from the train step)")
        layers = find_layers(params)
        budgets, due = _schedule_tables([r for _, r in layers], c, total_step)
        updates, inner_state = inner.update(grads, state.inner, params)
        paths = [path for path, _ in layers]
        p_leaves, _, where = _locate(params, paths)
        g_leaves, _, _ = _locate(grads, paths)
        u_leaves, treedef, _ = _locate(updates, paths)
        t = state.count
        budgeting, at_final = t < final, t == final
        ipt, unc = [], []
        for idx, old_i, old_u in zip(where, state.exp_avg_ipt, state.exp_avg_unc):
            pairs = [update_importance(oi, ou, p_leaves[i] + u_leaves[i], g_leaves[i], c.beta1, c.beta2)
                     for i, oi, ou in zip(idx, old_i, old_u)]
            ipt.append(tuple(jnp.where(budgeting, ni, oi) for (ni, _), oi in zip(pairs, old_i)))
            unc.append(tuple(jnp.where(budgeting, nu, ou) for (_, nu), ou in zip(pairs, old_u)))
        step = jnp.minimum(t, final)
        allocate = (budgeting & jnp.asarray(due)[step]) | at_final
        masks = jax.lax.cond(
            allocate,
            lambda: mask_to_budget([triplet_scores(i, u) for i, u in zip(ipt, unc)], jnp.asarray(budgets)[step]),
            lambda: tuple(state.masks),
        )
        impose = allocate | (t > final)
        u_leaves = list(u_leaves)
        for (_, ie, _), mask in zip(where, masks):
            u_leaves[ie] = jnp.where(impose & ~mask, -p_leaves[ie], u_leaves[ie]).astype(u_leaves[ie].dtype)

        def reset(tree):  # PEFT's reset_ipt after the final allocation
            return jax.tree.map(lambda x: jnp.where(at_final, jnp.zeros_like(x), x), tree)

        new_state = AdaLoraState(t + 1, inner_state, reset(tuple(ipt)), reset(tuple(unc)), tuple(masks),
                                 state.total_step)
        return jax.tree_util.tree_unflatten(treedef, u_leaves), new_state

    return optax.GradientTransformation(init, update)


def adalora_optimizer(optimizer: optax.GradientTransformation, *, config: AdaLoraConfig,
                      total_step: int | None = None,
                      clip: optax.GradientTransformation | None = None) -> optax.GradientTransformation:
    """``chain(orthogonal_regularization, clip, rank_allocation(optimizer))``: how AdaLoRA trains.

    Args:
      optimizer: the update rule (AdamW...).
      config: the model's ``AdaLoraConfig`` (or the run config's ``peft`` section).
      total_step: steps the schedule spans; default ``config.total_step``.
      clip: e.g. ``optax.clip_by_global_norm(1.0)``; importance scores use the clipped gradients,
        which is what PEFT reads from ``p.grad`` after ``clip_grad_norm_``.
    """
    from jaxkernel.peft.trainable import method_config

    config = method_config(AdaLoraConfig, config)
    total_step = total_step or config.total_step
    if total_step is None:
        raise ValueError("AdaLoRA needs total_step (PEFT's rule): set it in the AdaLoraConfig or pass total_step=")
    chain = [orthogonal_regularization(config.orth_reg_weight)] + ([clip] if clip is not None else [])
    chain.append(rank_allocation(optimizer, config, total_step))
    return optax.chain(*chain)


def allocator_state(opt_state) -> AdaLoraState | None:
    """The ``AdaLoraState`` inside an optimizer state, or None."""
    found = [x for x in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, AdaLoraState))
             if isinstance(x, AdaLoraState)]
    return found[0] if found else None


def attach_rank_pattern(model: nnx.Module, opt_state) -> nnx.Module:
    """Give ``model``'s AdaLoRA layers the allocator's rank pattern and its config the schedule's
    ``total_step``, from the optimizer state, in place: what ``save_adapter`` writes.

    A no-op for models without AdaLoRA. Before the first allocation (all triplets kept) no
    pattern is set: the adapter is then saved at full rank without ``rank_pattern``, as in PEFT.
    """
    state = allocator_state(opt_state)
    layers = adalora_layers(model)
    if state is None or not layers:
        return model
    config = getattr(model, "peft_config", None)
    if isinstance(config, AdaLoraConfig) and config.total_step is None:
        model.peft_config = dataclasses.replace(config, total_step=int(jax.device_get(state.total_step)))
    masks = [np.asarray(jax.device_get(m)) for m in state.masks]
    if all(m.all() for m in masks):
        return model
    for layer, mask in zip(layers.values(), masks):
        layer.rank_pattern = compose_pattern(layer.rank_pattern, mask)
    return model
