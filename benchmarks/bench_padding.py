"""Padded positions per epoch and compiled shapes for each batching scheme (counted, not timed).

Tokenizes the default preset's data (WikiANN-en with the MiniLM tokenizer, max_length 128) and
counts, for one epoch of train batches (batch 32, drop_remainder, seed 0) and one pass over the
dev split, how many positions each scheme computes:

* ``pow2 16..128``: the old default, powers-of-two buckets 16/32/64/128, plain shuffle;
* ``mult16`` / ``mult8``: every multiple of 16 / 8 up to 128 (``data.bucket_multiple``, ``data.min_bucket``);
* ``+group50``: length-grouped batches (windows of 50 batches sorted by length, ``data.group_by_length``);
* ``longest``: pad to each batch's longest sequence (PyTorch's ``DataCollatorForTokenClassification``),
  i.e. one compiled program per distinct length.

Usage (from the repo root)::

    python benchmarks/bench_padding.py                 # prints a Markdown table
    python benchmarks/bench_padding.py --epochs 3      # average over epochs 0..2
"""

from __future__ import annotations

import argparse

import numpy as np

from jaxkernel.config import load_config
from jaxkernel.data.loader import DataLoader, default_buckets
from jaxkernel.data.pipeline import build_task_data

SCHEMES = {  # name -> (buckets or None for pad-to-longest, group_by_length)
    "pow2 16..128 (old default)": (default_buckets(128, 16), 0),
    "pow2 16..128 +group50": (default_buckets(128, 16), 50),
    "pow2 8..128 +group50": (default_buckets(128, 8), 50),
    "mult16 16..128": (default_buckets(128, 16, 16), 0),
    "mult16 16..128 +group50": (default_buckets(128, 16, 16), 50),
    "mult8 8..128": (default_buckets(128, 8, 8), 0),
    "mult8 8..128 +group50 (new default)": (default_buckets(128, 8, 8), 50),
    "longest (PyTorch)": (None, 0),
    "longest +group50": (None, 50),
}


def count(features, batch_size, buckets, group, *, shuffle, epochs):
    """(padded positions per epoch, distinct padded lengths, real tokens per epoch)."""
    loader = DataLoader(features, batch_size, shuffle=shuffle, drop_remainder=shuffle,
                        buckets=buckets or tuple(range(1, 129)), group_by_length=group)
    lengths = features.lengths
    positions, shapes, real = 0, set(), 0
    for epoch in range(epochs):
        for index in range(len(loader)):
            rows = loader.global_indices(epoch, index)
            longest = int(lengths[rows[rows >= 0]].max())
            padded = longest if buckets is None else next(b for b in buckets if b >= longest)
            positions += padded * batch_size
            real += int(lengths[rows[rows >= 0]].sum())
            shapes.add(padded)
    return positions / epochs, len(shapes), real / epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/bert_ner_lora.yaml")
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    config = load_config(args.config)
    data = build_task_data(config, roles=("train", "eval"))
    train, dev = data.features["train"], data.features["eval"]
    bs = config.train.batch_size
    print(f"train: {len(train)} features, dev: {len(dev)}; batch {bs}; epochs averaged: {args.epochs}\n")
    print("| scheme | train padded positions / epoch | vs longest | train programs | "
          "dev positions (sorted) | dev positions (file order) | dev programs (sorted) |")
    print("|---|---|---|---|---|---|---|")
    base, _, real = count(train, bs, None, 0, shuffle=True, epochs=args.epochs)
    for name, (buckets, group) in SCHEMES.items():
        pos, n_shapes, _ = count(train, bs, buckets, group, shuffle=True, epochs=args.epochs)
        dev_sorted, dev_shapes, _ = count(dev, bs, buckets, 1, shuffle=False, epochs=1)
        dev_plain, _, _ = count(dev, bs, buckets, 0, shuffle=False, epochs=1)
        print(f"| {name} | {pos:,.0f} | {pos / base:.3f} | {n_shapes} | {dev_sorted:,.0f} | {dev_plain:,.0f} | "
              f"{dev_shapes} |")
    print(f"\nreal (non-pad) train tokens per epoch: {real:,.0f}")


if __name__ == "__main__":
    main()
