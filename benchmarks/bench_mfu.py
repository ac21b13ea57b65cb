"""Model FLOPs utilisation of jaxkernel's train step on the devices present (GPU/TPU; CPU in smoke mode).

Cases (``--cases``, default all): BERT-base token classification at 128 and 512 tokens,
GPT-2 124M causal LM at 1024, SmolLM2-135M (Llama family) at 2048 and Llama-3-8B at 2048 with
FSDP across every device present and per-layer remat. Each runs full fine-tuning and LoRA
(r=16 on the family's default targets; ``--methods``), bf16 compute with float32 master
weights (``--dtype``), dropout off, attention through ``jax.nn.dot_product_attention``
(cuDNN's fused kernel on NVIDIA GPUs), ``make_train_step`` exactly as ``jaxkernel train`` runs it.

Per case: step time (median of ``--steps`` after two warm-up steps), tokens/s, and MFU =
analytic FLOPs per step / step time / (peak x devices). Analytic FLOPs (PaLM's accounting):

* matmul weights N = every ``Linear`` kernel in the model plus the tied LM head;
  full fine-tuning costs 6*N per token (forward, input and weight gradients); LoRA 4*N
  (frozen weights get no weight gradient; the adapters' own FLOPs are negligible);
* attention 12 * layers * heads * head_dim * sequence per token (QK^T and PV, forward and
  backward, counted in full as PaLM does, also for causal masks).

``xla/analytic`` compares with XLA's own count (``compiled.cost_analysis()``, summed over
devices): close to 1 means the analytic model describes what runs; above 1 is the element-wise
work (norms, softmax, optimizer) the analytic count leaves out.

Peaks are dense bf16 TFLOP/s per chip (``PEAK_TFLOPS``); an unknown device needs ``--peak-tflops``.

    python benchmarks/bench_mfu.py                                  # every case, the devices present
    python benchmarks/bench_mfu.py --cases gpt2-1024 --methods full --steps 20
    python benchmarks/bench_mfu.py --smoke                          # tiny shapes on CPU (CI)
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

PEAK_TFLOPS = {  # dense bf16 per chip, from the vendors' data sheets (SXM parts for GPUs)
    "H100": 989.0,
    "H200": 989.0,
    "A100": 312.0,
    "TPU v4": 275.0,
    "TPU v5e": 197.0,
    "TPU v5p": 459.0,
    "TPU v6e": 918.0,
}
_DEVICE_KIND_NAMES = (  # substrings of jax's device_kind (lower-case) -> PEAK_TFLOPS key, most specific first
    ("h200", "H200"), ("h100", "H100"), ("a100", "A100"),
    ("v6 lite", "TPU v6e"), ("v6e", "TPU v6e"), ("v5 lite", "TPU v5e"), ("v5e", "TPU v5e"),
    ("v5p", "TPU v5p"), ("tpu v5", "TPU v5p"), ("tpu v4", "TPU v4"),
)


@dataclasses.dataclass(frozen=True)
class Case:
    size: str  # a known size of the registry
    task: str
    seq: int
    batch_per_device: int
    fsdp: bool = False  # shard parameters over every device (else data parallel when several)
    remat: bool = False
    smoke: dict = dataclasses.field(default_factory=dict)  # tiny-shape overrides (HF field names)


_TINY_BERT = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=512)
_TINY_LLAMA = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   intermediate_size=128, vocab_size=512, head_dim=16)
CASES = {
    "bert-base-128": Case("bert-base", "token-classification", 128, 32, smoke=_TINY_BERT),
    "bert-base-512": Case("bert-base", "token-classification", 512, 8, smoke=_TINY_BERT),
    "gpt2-1024": Case("gpt2", "causal-lm", 1024, 8, smoke=dict(n_embd=64, n_layer=2, n_head=4, vocab_size=512)),
    "smollm2-135m-2048": Case("smollm2-135m", "causal-lm", 2048, 4, smoke=_TINY_LLAMA),
    "llama-3-8b-fsdp": Case("llama-3-8b", "causal-lm", 2048, 1, fsdp=True, remat=True, smoke=_TINY_LLAMA),
}
SMOKE_SEQ, SMOKE_BATCH = 32, 2


def device_peak_tflops(kind: str) -> float | None:
    lower = kind.lower()
    for fragment, name in _DEVICE_KIND_NAMES:
        if fragment in lower:
            return PEAK_TFLOPS[name]
    return None


def matmul_params(model: nnx.Module, family, config) -> int:
    """Weights that multiply activations: every Linear kernel, plus the embedding when it is the LM head."""
    from jaxkernel.models.layers import Linear

    total = sum(math.prod(m.kernel.shape) for _, m in nnx.iter_modules(model) if isinstance(m, Linear))
    if family.causal and not any(isinstance(m, Linear) and path[-1:] == ("lm_head",)
                                 for path, m in nnx.iter_modules(model)):
        dims = family.dims(config)
        total += dims.vocab * dims.width  # tied head: the embedding table multiplies the last hidden states
    return total


def analytic_flops(n_matmul: int, dims, tokens: int, seq: int, method: str) -> float:
    dense = (6 if method == "full" else 4) * n_matmul * tokens
    attention = 12 * dims.layers * dims.heads * dims.head_dim * seq * tokens
    return float(dense + attention)


def xla_flops(compiled) -> float | None:
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    if not analysis or "flops" not in analysis:
        return None
    return float(analysis["flops"])


def make_batch(task: str, batch: int, seq: int, vocab: int, labels: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {"input_ids": rng.integers(1, vocab, size=(batch, seq)).astype(np.int32),
           "attention_mask": np.ones((batch, seq), np.int32)}
    if task == "token-classification":
        out["labels"] = rng.integers(0, labels, size=(batch, seq)).astype(np.int32)
        out["token_type_ids"] = np.zeros((batch, seq), np.int32)
    return out


def run_case(name: str, case: Case, method: str, args) -> dict:
    from jaxkernel.models.registry import config_for_size
    from jaxkernel.peft import apply_lora, trainable_filter
    from jaxkernel.peft.lora import LoraConfig
    from jaxkernel.sharding.mesh import MeshConfig, make_mesh
    from jaxkernel.sharding.placement import create_sharded, shard_batch
    from jaxkernel.train.build import set_remat
    from jaxkernel.train.step import init_train_state, make_train_step

    seq = SMOKE_SEQ if args.smoke else case.seq
    devices = jax.devices()
    per_device = SMOKE_BATCH if args.smoke else case.batch_per_device
    batch = per_device * len(devices)
    overrides = dict(case.smoke) if args.smoke else {}
    overrides["dtype"] = None if args.dtype == "float32" else args.dtype
    if case.task == "token-classification":
        overrides["num_labels"] = 9
    family, config = config_for_size(case.size, **overrides)
    dims = family.dims(config)
    if seq > dims.positions:
        raise SystemExit(f"{name}: sequence {seq} exceeds the model's {dims.positions} positions")

    mesh = make_mesh(MeshConfig(preset="fsdp" if case.fsdp else "dp")) if len(devices) > 1 or case.fsdp else None
    rules = ("fsdp" if case.fsdp else "dp") if mesh is not None else None

    def build():
        model = family.build(case.task, config, seed=0)
        for _, module in nnx.iter_modules(model):  # dropout off: MFU measures the math
            if isinstance(module, nnx.Dropout):
                module.rate = 0.0
        return model

    model = create_sharded(build, mesh, rules) if mesh is not None else build()
    n_matmul = matmul_params(model, family, config)
    if case.remat:
        set_remat(model, True)
    if method == "lora":
        apply_lora(model, LoraConfig(r=16, alpha=32.0), seed=0)
    tx = optax.adamw(1e-5, weight_decay=0.01)
    model_def, state = init_train_state(model, tx, trainable=trainable_filter(model), mesh=mesh, rules=rules)
    step = make_train_step(model_def, tx)

    host_batch = make_batch(case.task, batch, seq, dims.vocab, 9)
    data = shard_batch(host_batch, mesh) if mesh is not None else jax.tree.map(jnp.asarray, host_batch)
    t0 = time.perf_counter()
    compiled = step.lower(state, data).compile()  # run the compiled program itself: one compile
    compile_s = time.perf_counter() - t0
    measured = xla_flops(compiled)
    if measured is not None and mesh is not None:
        measured *= len(devices)  # cost analysis describes one device's partitioned program

    for _ in range(2):
        state, metrics = compiled(state, data)
    jax.block_until_ready(metrics["loss"])
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        state, metrics = compiled(state, data)
        jax.block_until_ready(metrics["loss"])
        times.append(time.perf_counter() - t)
    loss = float(metrics["loss"])
    if not math.isfinite(loss):
        raise SystemExit(f"{name} {method}: the loss is {loss}; the benchmark measures a broken step")

    step_s = statistics.median(times)
    tokens = batch * seq
    flops = analytic_flops(n_matmul, dims, tokens, seq, method)
    peak = args.peak_tflops
    mfu = None if peak is None else flops / step_s / (peak * 1e12 * len(devices))
    return dict(case=name, method=method, devices=len(devices), batch=batch, seq=seq, params_matmul=n_matmul,
                step_ms=step_s * 1e3, tokens_per_s=tokens / step_s, tflops_per_device=flops / step_s / 1e12 / len(devices),
                mfu=mfu, xla_ratio=None if measured is None else measured / flops, compile_s=compile_s, loss=loss)


def format_table(rows: list[dict], device: str, peak: float | None) -> str:
    head = f"device: {device} x {rows[0]['devices'] if rows else 0}; peak {peak if peak else 'unknown'} TFLOP/s per device"
    lines = [head, "",
             "| case | method | batch x seq | matmul params | step ms | tokens/s | TFLOP/s/device | MFU | xla/analytic | compile s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        ratio = "n/a" if r["xla_ratio"] is None else f"{r['xla_ratio']:.2f}"
        lines.append(
            f"| {r['case']} | {r['method']} | {r['batch']} x {r['seq']} | {r['params_matmul'] / 1e6:.1f}M | "
            f"{r['step_ms']:.1f} | {r['tokens_per_s']:.0f} | {r['tflops_per_device']:.2f} | {mfu} | {ratio} | "
            f"{r['compile_s']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--methods", nargs="+", choices=["full", "lora"], default=["full", "lora"])
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="dense bf16 peak of one device, for a device not in the table")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, 2 steps: checks the script runs (CI)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps = min(args.steps, 2)

    device = jax.devices()[0]
    kind = getattr(device, "device_kind", device.platform)
    if args.peak_tflops is None:
        args.peak_tflops = device_peak_tflops(kind)
    if args.peak_tflops is None and not args.smoke:
        print(f"bench_mfu: no peak FLOP/s known for device {kind!r}; pass --peak-tflops "
              f"(known: {', '.join(PEAK_TFLOPS)})", file=sys.stderr)
        return 2

    rows = []
    for name in args.cases:
        for method in args.methods:
            rows.append(run_case(name, CASES[name], method, args))
            print(f"  {name} {method}: {rows[-1]['step_ms']:.1f} ms/step", file=sys.stderr, flush=True)
    print(format_table(rows, kind, args.peak_tflops))
    return 0


if __name__ == "__main__":
    sys.exit(main())
