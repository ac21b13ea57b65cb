"""Batches of padded numpy arrays with a few fixed lengths, deterministic order and exact resume.

Each batch pads to the smallest *bucket* length that fits its longest sequence, so XLA
compiles one program per bucket (a handful), not one per batch. The order of epoch ``e``
is a permutation drawn from ``(seed, e)`` alone, so any batch can be rebuilt from
``(epoch, index)``: that pair is the loader's whole state, saved with each checkpoint.

Length grouping (``group_by_length=k``, as ``transformers``' ``group_by_length``): the
shuffled order is cut into windows of ``k`` batches, each window is sorted by length
(longest first) and cut into batches, and the batches of the epoch are shuffled again,
all from ``(seed, e)``. A batch then holds sentences of similar length and pads far less,
while every example is still seen once per epoch in an order that varies by epoch. Without
shuffling (eval, test) it sorts the whole split once: the order of rows does not change
any metric, only how much padding is computed.

Multi-host: every process holds the same features and builds the same *global* batch;
process ``p`` of ``P`` keeps rows ``[p * B/P, (p + 1) * B/P)``. Bucket choice uses the
global batch, so all processes agree on shapes, and the global batches do not depend
on ``P`` (a run can resume on a different number of hosts).

Example::

    loader = DataLoader(features, batch_size=32, seed=0)
    for batch in loader:                 # the rest of the current epoch
        ...                              # batch["input_ids"]: int32 (32, bucket)
        state = loader.state_dict()      # {"epoch": 0, "index": 1, ...}: the *next* batch
    loader.load_state_dict(state)        # continue exactly there
"""

from __future__ import annotations

import numpy as np

from jaxkernel.data.encode import Features
from jaxkernel.data.labels import IGNORE_INDEX
from jaxkernel.data.readers import DataError

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # batch keys the model takes
TARGETS = ("labels", "start_positions", "end_positions")  # batch keys the loss takes
_PAD_VALUES = {"input_ids": None, "token_type_ids": 0, "labels": IGNORE_INDEX}  # None = Features.pad_id


def default_buckets(max_length: int, min_bucket: int = 16, multiple: int | None = None) -> tuple[int, ...]:
    """Bucket lengths below ``max_length``, then ``max_length`` itself.

    ``multiple=None``: powers of two from ``min_bucket`` (16, 32, 64, 128). ``multiple=m``:
    ``min_bucket`` rounded up to a multiple of m, then every multiple of m (m=16: 16, 32, 48,
    ..., 128), which pads less at the price of more (but still few) compiled programs.
    """
    buckets, size = [], max(1, min_bucket)
    if multiple:
        size = -(-size // multiple) * multiple
    while size < max_length:
        buckets.append(size)
        size = size + multiple if multiple else size * 2
    return tuple(buckets) + (max_length,)


def bucket_for(length: int, buckets: tuple[int, ...]) -> int:
    for bucket in buckets:
        if length <= bucket:
            return bucket
    raise DataError(f"a sequence of {length} tokens is longer than the largest bucket {buckets[-1]}")


class DataLoader:
    """Deterministic, resumable, bucketed batches over ``Features``.

    Args:
      features: the tokenized split.
      batch_size: the *global* batch size (all processes together).
      shuffle: permute each epoch by ``(seed, epoch)``; False keeps feature order (eval, predict).
      seed: shuffling seed.
      drop_remainder: True drops the last partial batch (training: every batch full). False
        pads it to ``batch_size`` with rows whose ``index`` is -1 and whose labels are all -100.
      buckets: allowed padded lengths, increasing; default ``default_buckets(longest feature)``.
      group_by_length: 0 = off; k > 0 = draw each batch from a window of k batches sorted by
        length (see the module docstring); without ``shuffle`` any k > 0 sorts the whole split.
      process_index / process_count: this process's share of each global batch
        (``jax.process_index()`` / ``jax.process_count()``).

    Each batch is a dict of numpy arrays, first dimension ``batch_size // process_count``:
    ``input_ids``, ``attention_mask`` (1 = real token), ``token_type_ids`` (BERT) (B, L)
    int32; ``labels`` (B, L) for NER/LM or (B,) for classification; ``start_positions`` and
    ``end_positions`` (B,) for QA (targets only when the features are labelled); and
    ``index`` (B,): the feature row, -1 for padding rows.
    """

    def __init__(
        self,
        features: Features,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_remainder: bool = True,
        buckets: tuple[int, ...] | None = None,
        group_by_length: int = 0,
        process_index: int = 0,
        process_count: int = 1,
    ):
        if batch_size < 1 or batch_size % process_count:
            raise DataError(
                f"batch size {batch_size} must be a positive multiple of the process count {process_count}"
            )
        if not 0 <= process_index < process_count:
            raise DataError(f"process_index {process_index} is outside process_count {process_count}")
        if len(features) == 0:
            raise DataError("cannot batch an empty split")
        if group_by_length < 0:
            raise DataError(f"group_by_length={group_by_length} must be >= 0 (0 = off, k = windows of k batches)")
        self.features = features
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_remainder = drop_remainder
        self.group_by_length = group_by_length
        self.process_index = process_index
        self.process_count = process_count
        self._lengths = features.lengths
        self.buckets = tuple(buckets) if buckets else default_buckets(int(self._lengths.max()))
        bucket_for(int(self._lengths.max()), self.buckets)  # fail now if a feature cannot fit
        n = len(features)
        self.num_batches = n // batch_size if drop_remainder else -(-n // batch_size)
        if self.num_batches == 0:
            raise DataError(
                f"the split has {n} examples, fewer than one batch of {batch_size}; lower the batch size"
            )
        self.epoch = 0
        self.index = 0
        self._order_cache: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        """Batches per epoch."""
        return self.num_batches

    def order(self, epoch: int) -> np.ndarray:
        """Feature indices of ``epoch`` in batch order (a pure function of seed, epoch and settings)."""
        if self._order_cache is None or self._order_cache[0] != epoch:
            self._order_cache = (epoch, self._compute_order(epoch))
        return self._order_cache[1]

    def _compute_order(self, epoch: int) -> np.ndarray:
        n = len(self.features)
        if not self.shuffle:
            order = np.arange(n)
            if self.group_by_length:  # in order of decreasing length; ties keep feature order
                order = order[np.argsort(-self._lengths, kind="stable")]
            return order
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(n)
        if not self.group_by_length:
            return order
        window = self.group_by_length * self.batch_size
        order = np.concatenate([
            chunk[np.argsort(-self._lengths[chunk], kind="stable")]
            for chunk in np.split(order, range(window, n, window))
        ])
        # Shuffle the full batches among themselves so that long and short batches alternate
        # over the epoch instead of following the windows' sorted runs.
        full = n // self.batch_size
        batches = order[:full * self.batch_size].reshape(full, self.batch_size)[rng.permutation(full)]
        return np.concatenate([batches.reshape(-1), order[full * self.batch_size:]])

    def global_indices(self, epoch: int, index: int) -> np.ndarray:
        """Feature rows of global batch ``index`` of ``epoch``; -1 marks padding rows."""
        if not 0 <= index < self.num_batches:
            raise IndexError(f"batch {index} is outside the {self.num_batches} batches of an epoch")
        rows = self.order(epoch)[index * self.batch_size:(index + 1) * self.batch_size]
        if len(rows) < self.batch_size:
            rows = np.concatenate([rows, np.full(self.batch_size - len(rows), -1, dtype=rows.dtype)])
        return rows

    def batch(self, epoch: int, index: int) -> dict[str, np.ndarray]:
        """This process's part of global batch ``index`` of ``epoch``; a pure function of its arguments."""
        rows = self.global_indices(epoch, index)
        real = rows[rows >= 0]
        length = bucket_for(int(self._lengths[real].max()), self.buckets)
        local = self.batch_size // self.process_count
        mine = rows[self.process_index * local:(self.process_index + 1) * local]
        return collate(self.features, mine, length)

    def __iter__(self):
        """The batches left in the current epoch; the state then moves to the next epoch."""
        epoch = self.epoch
        while self.epoch == epoch:
            index = self.index
            batch = self.batch(epoch, index)
            # Advance before handing the batch out: the state names the next batch to produce.
            self.epoch, self.index = (epoch + 1, 0) if index + 1 >= self.num_batches else (epoch, index + 1)
            yield batch

    def _fingerprint(self) -> dict:
        return {"num_examples": len(self.features), "batch_size": self.batch_size, "seed": self.seed,
                "shuffle": self.shuffle, "group_by_length": self.group_by_length}

    def state_dict(self) -> dict[str, int | bool]:
        """``{"epoch", "index"}`` of the next batch, plus what they mean only for (the fingerprint)."""
        return {"epoch": self.epoch, "index": self.index, **self._fingerprint()}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved ``state_dict()``; an incompatible state (other data, batch size, seed) is an error."""
        mine = self._fingerprint()
        differ = {k: (state.get(k), v) for k, v in mine.items() if k in state and state[k] != v}
        if differ:
            detail = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in differ.items())
            raise DataError(
                f"the saved data position belongs to another data setup ({detail}); resume with the same data, "
                "batch size, seed and data.group_by_length, or start a new run directory"
            )
        epoch, index = int(state["epoch"]), int(state["index"])
        if epoch < 0 or not 0 <= index <= self.num_batches:
            raise DataError(f"saved data position epoch={epoch} index={index} is out of range")
        self.epoch, self.index = (epoch + 1, 0) if index == self.num_batches else (epoch, index)


def collate(features: Features, rows: np.ndarray, length: int) -> dict[str, np.ndarray]:
    """Pad the features at ``rows`` (-1 = an all-padding row) to ``length`` and stack them."""
    n = len(rows)
    batch = {}
    for name, seqs in features.sequences.items():
        pad = features.pad_id if _PAD_VALUES.get(name, 0) is None else _PAD_VALUES.get(name, 0)
        out = np.full((n, length), pad, dtype=np.int32)
        for i, row in enumerate(rows):
            if row >= 0:
                seq = seqs[row]
                out[i, :len(seq)] = seq
        batch[name] = out
    mask = np.zeros((n, length), dtype=np.int32)
    for i, row in enumerate(rows):
        if row >= 0:
            mask[i, :len(features.sequences["input_ids"][row])] = 1
    batch["attention_mask"] = mask
    for name, values in features.scalars.items():
        batch[name] = np.where(rows >= 0, values[np.maximum(rows, 0)], IGNORE_INDEX).astype(np.int32)
    batch["index"] = rows.astype(np.int32)
    return batch
