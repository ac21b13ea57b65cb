"""The pure, jitted train and eval steps, on one device or any mesh.

``init_train_state`` calls ``nnx.split`` once: the static graph definitions go in
a :class:`ModelDef` that the steps close over, the arrays in a :class:`TrainState`
pytree that ``jax.jit`` takes and returns. Nothing walks the NNX object graph per
step. Trainable parameters are chosen by any NNX filter (``nnx.Param`` = full
fine-tune; ``jaxkernel.peft``'s ``LoraParam`` for LoRA); every other variable
(frozen weights, int8 tensors, buffers) is carried untouched in ``frozen``.

Randomness is a pure function of ``(state.rng, state.step)``: before each step
every dropout stream of the model is re-seeded with
``fold_in(fold_in(key(rng), step), stream_index)`` (and microbatch ``m`` folds in
``m`` once more). No RNG counters live in the state, so a resumed run draws the
same dropout masks, and with JAX's partitionable threefry the masks do not
depend on the mesh.

Gradient accumulation: ``microbatches=M`` splits the batch into M strided
microbatches (examples m, m+M, m+2M, ... so every device keeps its share),
runs them through ``lax.scan`` and combines them weighted by each loss's
``aux["weight"]`` (valid tokens or examples): the update equals the one a full
batch gives. Gradient clipping, schedules and weight decay belong in the optax
chain (``optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(...))``).

Example::

    model_def, state = init_train_state(model, optax.adamw(1e-4), mesh=mesh, rules="fsdp")
    train_step = make_train_step(model_def, optax.adamw(1e-4), microbatches=2)
    eval_step = make_eval_step(model_def)
    state, metrics = train_step(state, batch)   # metrics: loss, accuracy, weight, grad_norm
    metrics, logits = eval_step(state, batch)
    model = model_from_state(model_def, state)  # an nnx model again (eval mode)
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Mapping

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxkernel.sharding import rules as sharding_rules
from jaxkernel.train.losses import LossFn, loss_for_task

Batch = Mapping[str, jax.Array]
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training, as one pytree.

    Attributes:
      step: int32 scalar, number of updates applied.
      params: ``nnx.State`` of the trainable variables.
      frozen: ``nnx.State`` of every other (non-RNG) variable, never updated.
      opt_state: the optax state of ``params``.
      rng: uint32 raw key data (``jax.random.key_data``); dropout keys derive
        from it and ``step``.
    """

    step: jax.Array
    params: nnx.State
    frozen: nnx.State
    opt_state: Any
    rng: jax.Array


@dataclasses.dataclass(frozen=True, eq=False)
class ModelDef:
    """The static half of a split model, closed over by the jitted steps.

    Attributes:
      train_graphdef / eval_graphdef: the graph with dropout on / off.
      rng_template: abstract ``nnx.State`` of the model's RNG streams.
      task: the model's ``task`` (selects the loss).
      inputs: batch keys passed to the model's ``__call__``.
      mesh / rules: set for a sharded run, else None.
      state_sharding: TrainState of NamedShardings (sharded runs), else None.
    """

    train_graphdef: Any
    eval_graphdef: Any
    rng_template: Any
    task: str
    inputs: tuple[str, ...]
    mesh: Mesh | None = None
    rules: sharding_rules.ShardingRules | None = None
    state_sharding: TrainState | None = None

    def batch_sharding(self) -> NamedSharding | None:
        return None if self.mesh is None else NamedSharding(self.mesh, sharding_rules.batch_spec(1))


def _model_inputs(model: nnx.Module) -> tuple[str, ...]:
    params = inspect.signature(type(model).__call__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return MODEL_INPUTS
    return tuple(name for name in MODEL_INPUTS if name in params)


def forward(model: nnx.Module, batch: Batch, inputs: tuple[str, ...]):
    """Call the model on the batch keys it accepts; drop GPT-2's empty KV cache."""
    outputs = model(**{name: batch[name] for name in inputs if name in batch})
    if isinstance(outputs, tuple) and len(outputs) == 2 and outputs[1] is None:
        return outputs[0]  # causal LM: (logits, cache=None)
    return outputs


@nnx.jit(static_argnames="inputs")
def _compiled_forward(model: nnx.Module, batch: Batch, inputs: tuple[str, ...]):
    return forward(model, batch, inputs)


def compiled_forward(model: nnx.Module, batch: Batch):
    """``forward`` as one compiled program (cached per model structure and batch shape).

    Run eagerly, a model compiles each of its ops on its own: 3x slower for a MiniLM's first call.
    """
    inputs = _model_inputs(model)
    return _compiled_forward(model, {name: batch[name] for name in inputs if name in batch}, inputs)


def _reseed(rng_template, key: jax.Array):
    """A fresh RNG state: stream i gets ``fold_in(key, i)``, counters start at 0."""
    leaves, treedef = jax.tree.flatten(rng_template)
    fresh = [
        jax.random.fold_in(key, i) if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key) else jnp.zeros(leaf.shape, leaf.dtype)
        for i, leaf in enumerate(leaves)
    ]
    return jax.tree.unflatten(treedef, fresh)


def _step_key(state: TrainState) -> jax.Array:
    return jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)


def init_train_state(
    model: nnx.Module,
    tx: optax.GradientTransformation,
    *,
    trainable: Any = nnx.Param,
    seed: int = 0,
    mesh: Mesh | None = None,
    rules: "str | sharding_rules.ShardingRules | None" = None,
) -> tuple[ModelDef, TrainState]:
    """Split ``model`` once into a static ModelDef and a TrainState.

    Args:
      model: any jaxkernel model (BERT/GPT-2, LoRA-wrapped, int8...).
      tx: the optax optimizer; its state is created here.
      trainable: NNX filter of the variables to train (``nnx.Param``, a
        ``LoraParam`` type, a path regex, ``nnx.Any(...)``...).
      seed: the dropout RNG seed stored in ``state.rng``.
      mesh, rules: shard the state on ``mesh`` with a preset name or
        ShardingRules (default ``"fsdp"`` when only a mesh is given). Parameters
        already placed (a model born sharded) are not copied.

    Returns:
      (model_def, state).
    """
    train_view = nnx.view(model, deterministic=False, raise_if_not_found=False)
    eval_view = nnx.view(model, deterministic=True, raise_if_not_found=False)
    train_graphdef, rng_state, params, frozen = nnx.split(train_view, nnx.RngState, trainable, ...)
    eval_graphdef = nnx.split(eval_view, nnx.RngState, trainable, ...)[0]
    if not jax.tree.leaves(params):
        raise ValueError(
            f"the trainable filter {trainable!r} matches no variable of {type(model).__name__}: "
            "nothing would be trained (did you apply LoRA before building the train state?)"
        )
    rng_template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), rng_state)
    rng = jax.random.key_data(jax.random.key(seed))

    def build(params, frozen):
        return TrainState(jnp.zeros((), jnp.int32), params, frozen, tx.init(params), jnp.asarray(rng))

    state_sharding = None
    if mesh is not None:
        rules = sharding_rules.get_rules(rules or "fsdp")
        sharding_rules.check_model(getattr(model, "config", None), rules, mesh)
        state_sharding = sharding_rules.tree_shardings(jax.eval_shape(build, params, frozen), mesh, rules)
        params = jax.device_put(params, state_sharding.params)  # no copy when already in place
        frozen = jax.device_put(frozen, state_sharding.frozen)
        state = jax.jit(build, out_shardings=state_sharding)(params, frozen)
        state = state.replace(params=params, frozen=frozen)
    else:
        state = jax.jit(build)(params, frozen)
    model_def = ModelDef(
        train_graphdef, eval_graphdef, rng_template, getattr(model, "task", "feature-extraction"),
        _model_inputs(model), mesh, None if mesh is None else rules, state_sharding,
    )
    return model_def, state


def model_from_state(model_def: ModelDef, state: TrainState, *, train: bool = False) -> nnx.Module:
    """Rebuild an ``nnx`` model from a state (eval mode unless ``train``)."""
    graphdef = model_def.train_graphdef if train else model_def.eval_graphdef
    rng_state = _reseed(model_def.rng_template, _step_key(state))
    return nnx.merge(graphdef, rng_state, state.params, state.frozen)


def split_microbatches(batch: Batch, microbatches: int) -> dict[str, jax.Array]:
    """(B, ...) -> (M, B/M, ...): microbatch m holds examples m, m+M, m+2M, ...

    Strided, not contiguous, so that when B is split over devices each device
    keeps feeding its own examples to every microbatch (no data movement).
    """

    def split(x):
        if x.shape[0] % microbatches:
            raise ValueError(f"batch size {x.shape[0]} is not divisible by microbatches={microbatches}")
        x = x.reshape((x.shape[0] // microbatches, microbatches) + x.shape[1:])
        return jnp.swapaxes(x, 0, 1)

    return {k: split(v) for k, v in batch.items()}


def _weighted_means(aux: dict, weight) -> dict:
    return {k: v * weight for k, v in aux.items() if k != "weight"}


def make_train_step(
    model_def: ModelDef,
    tx: optax.GradientTransformation,
    *,
    loss_fn: LossFn | None = None,
    microbatches: int = 1,
    donate: bool = True,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
    """A jitted ``(state, batch) -> (state, metrics)``.

    Args:
      model_def: from :func:`init_train_state` (sharded if it was given a mesh:
        the step then has explicit in/out shardings, batch split over the data
        axes, parameters/optimizer state as the rules say).
      tx: the same optax transformation the state was built with.
      loss_fn: ``(outputs, batch) -> (loss, aux)``; default from the model task
        (``jaxkernel.train.losses``). ``aux["weight"]`` weights microbatches.
      microbatches: gradient accumulation; the global batch must divide by it.
      donate: let XLA reuse the input state's buffers (the old state is invalid
        after the call).

    Returns:
      The step; metrics are float32 scalars: ``loss``, the loss's aux means,
      ``weight`` (items counted) and ``grad_norm`` (before the optax chain).
    """
    loss_fn = loss_fn or loss_for_task(model_def.task)
    mesh, rules = model_def.mesh, model_def.rules
    if microbatches < 1:
        raise ValueError(f"microbatches must be >= 1, got {microbatches}")

    def loss_of(params, frozen, key, batch, scale_by_weight):
        # RNG variables are created here, inside the grad trace, because dropout mutates them.
        rng_state = _reseed(model_def.rng_template, key)
        model = nnx.merge(model_def.train_graphdef, rng_state, params, frozen)
        loss, aux = loss_fn(forward(model, batch, model_def.inputs), batch)
        objective = loss * aux["weight"] if scale_by_weight else loss
        return objective, (loss, aux)

    grad_fn = jax.grad(loss_of, has_aux=True)

    def constrain_grads(grads):
        if model_def.state_sharding is None:
            return grads
        return jax.lax.with_sharding_constraint(grads, model_def.state_sharding.params)

    def step(state: TrainState, batch: Batch):
        with sharding_rules.activation_sharding(mesh, rules):
            key = _step_key(state)
            if microbatches == 1:
                grads, (loss, aux) = grad_fn(state.params, state.frozen, key, batch, False)
                grads = constrain_grads(grads)
                metrics = {"loss": loss, **aux}
            else:
                micro = split_microbatches(batch, microbatches)
                if mesh is not None:
                    micro = {
                        k: jax.lax.with_sharding_constraint(v, NamedSharding(mesh, sharding_rules.microbatch_spec(v.ndim)))
                        for k, v in micro.items()
                    }

                def accumulate(carry, inputs):
                    grad_sum, loss_sum, aux_sum, weight_sum = carry
                    index, mb = inputs
                    g, (loss, aux) = grad_fn(state.params, state.frozen, jax.random.fold_in(key, index), mb, True)
                    w = aux["weight"]
                    grad_sum = constrain_grads(jax.tree.map(jnp.add, grad_sum, g))
                    aux_sum = jax.tree.map(jnp.add, aux_sum, _weighted_means(aux, w))
                    return (grad_sum, loss_sum + loss * w, aux_sum, weight_sum + w), None

                zeros = constrain_grads(jax.tree.map(jnp.zeros_like, state.params))
                first = jax.tree.map(lambda v: v[0], micro)
                _, (_, aux_shape) = jax.eval_shape(lambda: loss_of(state.params, state.frozen, key, first, True))
                aux_zeros = {k: jnp.zeros((), jnp.float32) for k in aux_shape if k != "weight"}
                carry = (zeros, jnp.float32(0), aux_zeros, jnp.float32(0))
                (grad_sum, loss_sum, aux_sum, weight), _ = jax.lax.scan(
                    accumulate, carry, (jnp.arange(microbatches), micro)
                )
                denom = jnp.maximum(weight, 1.0)
                grads = jax.tree.map(lambda g: g / denom, grad_sum)
                metrics = {"loss": loss_sum / denom, **{k: v / denom for k, v in aux_sum.items()}, "weight": weight}
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            metrics["grad_norm"] = optax.global_norm(grads)
            metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
            new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
            return new_state, metrics

    donate_argnums = (0,) if donate else ()
    if mesh is None:
        return jax.jit(step, donate_argnums=donate_argnums)
    return jax.jit(
        step,
        in_shardings=(model_def.state_sharding, model_def.batch_sharding()),
        out_shardings=(model_def.state_sharding, sharding_rules.replicated(mesh)),
        donate_argnums=donate_argnums,
    )


@jax.jit
def accumulate_train_metrics(window: dict, metrics: dict) -> dict:
    """Add one step's ``metrics`` to ``window`` = ``{"loss_sum", "steps", "finite"}``, on the device.

    The train loop keeps its running loss and "every loss was finite" here and fetches them
    (``jax.device_get``) at logging boundaries only: no host sync per step.
    """
    loss = metrics["loss"]
    return {"loss_sum": window["loss_sum"] + loss, "steps": window["steps"] + 1,
            "finite": window["finite"] & jnp.isfinite(loss)}


def make_eval_step(
    model_def: ModelDef, *, loss_fn: LossFn | None = None
) -> Callable[[TrainState, Batch], tuple[dict, Any]]:
    """A jitted ``(state, batch) -> (metrics, outputs)`` with dropout off.

    ``outputs`` are the model's (logits, or QA's (start, end)), split over the
    batch like the inputs; metrics are the loss and its aux (with ``weight``, so
    the caller averages batches as ``sum(m * weight) / sum(weight)``). Batches
    without labels can use ``loss_fn=lambda outputs, batch: (0.0, {"weight": 0.0})``.
    """
    loss_fn = loss_fn or loss_for_task(model_def.task)
    mesh, rules = model_def.mesh, model_def.rules

    def step(state: TrainState, batch: Batch):
        with sharding_rules.activation_sharding(mesh, rules):
            model = nnx.merge(model_def.eval_graphdef, _reseed(model_def.rng_template, _step_key(state)),
                              state.params, state.frozen)
            outputs = forward(model, batch, model_def.inputs)
            loss, aux = loss_fn(outputs, batch)
            metrics = {k: jnp.asarray(v, jnp.float32) for k, v in {"loss": loss, **aux}.items()}
            if mesh is not None:
                metrics = jax.lax.with_sharding_constraint(metrics, sharding_rules.replicated(mesh))
            return metrics, outputs

    if mesh is None:
        return jax.jit(step)
    return jax.jit(step, in_shardings=(model_def.state_sharding, model_def.batch_sharding()))
