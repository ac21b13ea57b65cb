"""Where the default run's train step spends its time, by ablation, side by side in one process.

The default recipe (``configs/bert_ner_lora.yaml``: MiniLM-L6, LoRA r8 on query/value, dropout 0.1,
AdamW, batch 32) at one bucket length. Each variant is compiled first, then all are timed round-robin
(``--rounds`` x ``--steps``; medians), so load changes hit every variant alike:

* ``step``: ``make_train_step`` as the trainer runs it (the whole thing);
* ``step, no dropout``: the same with every dropout rate 0 -> the random bits' share;
* ``step, nnx.Dropout masks``: the same with flax's ``nnx.Dropout`` (one 32-bit uniform, i.e. one
  threefry hash, per element) instead of jaxkernel's packed 16-bit masks (one hash per 4 elements);
* ``loss + grads``: value-and-grad of the loss without the optimizer -> the optimizer's share;
* ``forward (train mode)``: the loss alone -> backward's share;
* ``matmuls only``: the step's dense and attention matmuls (forward, and backward for activations,
  as LoRA needs) with no norms, softmax, GELU or dropout -> what remains is element-wise work;
* ``host: next batch``: the trainer's loader producing one batch (tokenized, bucketed, padded);
* ``compile``: seconds to trace, lower and compile the step (once per bucket length).

    python benchmarks/profile_step.py --length 32
    python benchmarks/record.py profile_step -- python benchmarks/profile_step.py --length 32 --length 64
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

B, D, N, F, LAYERS, LABELS = 32, 384, 12, 1536, 6, 7


def batch_of(length: int) -> dict:
    rng = np.random.default_rng(0)
    return {"input_ids": jnp.asarray(rng.integers(1000, 30000, (B, length)), jnp.int32),
            "attention_mask": jnp.ones((B, length), jnp.int32),
            "token_type_ids": jnp.zeros((B, length), jnp.int32),
            "labels": jnp.asarray(rng.integers(0, LABELS, (B, length)), jnp.int32)}


def build(dropout: bool, flax_masks: bool = False):
    from jaxkernel.config import load_config
    from jaxkernel.peft import trainable_filter
    from jaxkernel.train.build import build_model, build_optimizer

    # LoRA dropout 0.1 as measured on 2026-11-29 (the preset has none since): "dropout on" keeps its meaning
    overrides = ["peft.dropout=0.1", "optimizer.learning_rate=1e-3"] if dropout else ["peft.dropout=0.0"]
    config = load_config("configs/bert_ner_lora.yaml", overrides)
    labels = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC")
    model = build_model(config, labels=labels)
    if not dropout:
        for _, module in nnx.iter_modules(model):
            if isinstance(module, nnx.Dropout):
                module.rate = 0.0
    if flax_masks:
        for _, module in nnx.iter_modules(model):
            if isinstance(module, nnx.Dropout):
                module.__class__ = nnx.Dropout  # same state, flax's bernoulli masks
    tx, _ = build_optimizer(config, 10_000, model)
    return model, tx, trainable_filter(model)


def variants(length: int) -> dict:
    from jaxkernel.train.losses import loss_for_task
    from jaxkernel.train.step import _reseed, forward, init_train_state, make_train_step

    out = {}
    for name, dropout, flax_masks in (("step", True, False), ("step, no dropout", False, False),
                                      ("step, nnx.Dropout masks", True, True)):
        model, tx, trainable = build(dropout, flax_masks)
        model_def, state = init_train_state(model, tx, trainable=trainable, seed=0)
        step = make_train_step(model_def, tx, donate=False)
        out[name] = (step, (state,))
        if name == "step":
            loss_fn = loss_for_task(model_def.task)

            def loss(params, batch, frozen=state.frozen, model_def=model_def):
                rng_state = _reseed(model_def.rng_template, jax.random.key(0))  # as the step draws its streams
                m = nnx.merge(model_def.train_graphdef, rng_state, params, frozen)
                value, _ = loss_fn(forward(m, batch, model_def.inputs), batch)
                return value

            out["loss + grads"] = (jax.jit(jax.value_and_grad(loss)), (state.params,))
            out["forward (train mode)"] = (jax.jit(loss), (state.params,))
    out["matmuls only"] = (jax.jit(matmul_chain), (matmul_weights(), ))
    return out


def matmul_weights():
    k = iter(jax.random.split(jax.random.key(0), 8 * LAYERS))
    return [{name: 0.02 * jax.random.normal(next(k), shape) for name, shape in
             (("q", (D, D)), ("k", (D, D)), ("v", (D, D)), ("o", (D, D)), ("i", (D, F)), ("out", (F, D)))}
            for _ in range(LAYERS)]


def matmul_chain(weights, batch):
    """The step's matmuls: forward, and the activation gradients LoRA's backward needs (no weight grads)."""
    length = batch["input_ids"].shape[1]
    x0 = jnp.ones((B, length, D), jnp.float32)

    def fwd(x):
        for w in weights:
            q, kk, v = (t.reshape(B, length, N, D // N) for t in (x @ w["q"], x @ w["k"], x @ w["v"]))
            scores = jnp.einsum("BTNH,BSNH->BNTS", q, kk)
            a = jnp.einsum("BNTS,BSNH->BTNH", scores, v).reshape(B, length, D)
            x = x + a @ w["o"]
            x = x + (x @ w["i"]) @ w["out"]
        return jnp.sum(x)

    return jax.grad(fwd)(x0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, action="append", default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    for length in args.length or [32]:
        batch = batch_of(length)
        table, compile_s = {}, {}
        runs = variants(length)
        for name, (fn, state_args) in runs.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*state_args, batch))
            compile_s[name] = time.perf_counter() - t0
            table[name] = []
        for _ in range(args.rounds):
            for name, (fn, state_args) in runs.items():
                for _ in range(args.steps):
                    t0 = time.perf_counter()
                    jax.block_until_ready(fn(*state_args, batch))
                    table[name].append(time.perf_counter() - t0)

        from jaxkernel.config import load_config
        from jaxkernel.train.loop import Trainer

        config = load_config("configs/bert_ner_lora.yaml", ["data.max_train_examples=2048", "train.run_dir=/tmp/profile-step-run"])
        trainer = Trainer(config, roles=("train",))
        batches = iter(trainer.train_loader)
        next(batches)
        t0 = time.perf_counter()
        count = 0
        for _ in range(20):
            next(batches)
            count += 1
        host = (time.perf_counter() - t0) / count

        med = {name: statistics.median(v) * 1e3 for name, v in table.items()}
        whole = med["step"]
        print(f"\n## batch {B} x {length}, medians of {args.rounds * args.steps} steps (ms)\n")
        print("| part | how measured | ms | share of the step |\n|---|---|---|---|")
        parts = [
            ("whole step", "step", whole),
            ("dropout random bits + masking", "step - step, no dropout", whole - med["step, no dropout"]),
            ("nnx.Dropout's masks instead (one hash per element)", "step, nnx.Dropout masks - step",
             med["step, nnx.Dropout masks"] - whole),
            ("optimizer update (+ clip)", "step - loss + grads", whole - med["loss + grads"]),
            ("backward", "loss + grads - forward", med["loss + grads"] - med["forward (train mode)"]),
            ("matmuls (forward + activation grads)", "matmuls only", med["matmuls only"]),
            ("element-wise (norms, softmax, GELU, loss)", "step, no dropout - matmuls - optimizer",
             med["step, no dropout"] - med["matmuls only"] - (whole - med["loss + grads"])),
            ("host: next batch", "loader, 20 batches", host * 1e3),
        ]
        for label, how, ms in parts:
            print(f"| {label} | {how} | {ms:.1f} | {ms / whole:.0%} |")
        print(f"| compile (once per bucket) | first call | {compile_s['step'] * 1e3:.0f} | - |")


if __name__ == "__main__":
    main()
