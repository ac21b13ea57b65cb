"""Bucketed batches, deterministic shuffling, exact resume from the state dict, per-process sharding."""

import numpy as np
import pytest

from jaxkernel.data import DataError, DataLoader, Features, bucket_for, default_buckets


def make_features(n=50, labelled_tokens=True, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 60, size=n)
    ids = [np.arange(1, k + 1, dtype=np.int32) + 100 * i for i, k in enumerate(lengths)]
    sequences = {"input_ids": ids, "token_type_ids": [np.zeros(k, np.int32) for k in lengths]}
    scalars = {}
    if labelled_tokens:
        sequences["labels"] = [np.full(k, i % 3, np.int32) for i, k in enumerate(lengths)]
    else:
        scalars["labels"] = (np.arange(n) % 2).astype(np.int32)
    return Features("token-classification", sequences, scalars, pad_id=0, example_index=np.arange(n, dtype=np.int32))


def test_default_buckets():
    assert default_buckets(128) == (16, 32, 64, 128)
    assert default_buckets(100, 16) == (16, 32, 64, 100)
    assert default_buckets(8, 16) == (8,)
    assert bucket_for(33, (16, 32, 64)) == 64
    with pytest.raises(DataError, match="longer than the largest bucket 64"):
        bucket_for(65, (16, 32, 64))


def test_batches_pad_to_buckets_with_correct_values():
    features = make_features()
    loader = DataLoader(features, 8, seed=1, buckets=(16, 32, 64))
    lengths = features.lengths
    shapes = set()
    for index in range(len(loader)):
        batch = loader.batch(0, index)
        assert set(batch) == {"input_ids", "token_type_ids", "labels", "attention_mask", "index"}
        assert all(v.dtype == np.int32 for v in batch.values())
        length = batch["input_ids"].shape[1]
        shapes.add(length)
        assert length == bucket_for(int(lengths[batch["index"]].max()), (16, 32, 64))
        for row, feature in enumerate(batch["index"]):
            k = lengths[feature]
            assert np.array_equal(batch["input_ids"][row, :k], features.sequences["input_ids"][feature])
            assert (batch["input_ids"][row, k:] == 0).all()
            assert batch["attention_mask"][row].tolist() == [1] * k + [0] * (length - k)
            assert (batch["labels"][row, k:] == -100).all()
    assert shapes <= {16, 32, 64} and len(loader) == 50 // 8


def test_shuffle_is_a_function_of_seed_and_epoch():
    features = make_features()
    a = DataLoader(features, 10, seed=3, drop_remainder=False)
    b = DataLoader(features, 10, seed=3, drop_remainder=False)
    c = DataLoader(features, 10, seed=4, drop_remainder=False)
    assert np.array_equal(a.order(0), b.order(0))
    assert not np.array_equal(a.order(0), a.order(1))
    assert not np.array_equal(a.order(0), c.order(0))
    seen = np.concatenate([a.batch(2, i)["index"] for i in range(len(a))])
    assert sorted(seen.tolist()) == list(range(50))  # every example once per epoch
    ordered = DataLoader(features, 10, shuffle=False, drop_remainder=False)
    assert ordered.batch(0, 0)["index"].tolist() == list(range(10))


def test_iteration_advances_state_and_resume_is_exact():
    features = make_features(n=45)
    straight = DataLoader(features, 8, seed=7)
    reference = []
    for _ in range(3):  # three epochs straight through
        reference += list(straight)
    assert len(reference) == 3 * 5 and straight.state_dict()["epoch"] == 3

    first = DataLoader(features, 8, seed=7)
    got, saved = [], None
    for _ in range(2):
        for batch in first:
            got.append(batch)
            if len(got) == 7:  # "checkpoint" in the middle of epoch 1
                saved = first.state_dict()
                break
        if saved:
            break
    assert saved["epoch"] == 1 and saved["index"] == 2
    resumed = DataLoader(features, 8, seed=7)
    resumed.load_state_dict(saved)
    while len(got) < len(reference):
        got += list(resumed)
    for x, y in zip(got, reference):
        assert all(np.array_equal(x[k], y[k]) for k in x)


def test_last_batch_of_epoch_moves_state_to_next_epoch():
    loader = DataLoader(make_features(n=16), 8, seed=0)
    it = iter(loader)
    next(it)
    assert (loader.epoch, loader.index) == (0, 1)
    next(it)
    assert (loader.epoch, loader.index) == (1, 0)
    with pytest.raises(StopIteration):
        next(it)


def test_state_from_another_setup_is_refused():
    loader = DataLoader(make_features(n=40), 8, seed=0)
    state = loader.state_dict()
    other = DataLoader(make_features(n=41), 8, seed=0)
    with pytest.raises(DataError, match="num_examples 40 -> 41"):
        other.load_state_dict(state)
    with pytest.raises(DataError, match="batch_size 8 -> 4"):
        DataLoader(make_features(n=40), 4, seed=0).load_state_dict(state)


def test_eval_remainder_is_padded_with_masked_rows():
    features = make_features(n=10, labelled_tokens=False)
    loader = DataLoader(features, 4, shuffle=False, drop_remainder=False)
    assert len(loader) == 3
    last = loader.batch(0, 2)
    assert last["index"].tolist() == [8, 9, -1, -1]
    assert last["labels"].tolist() == [0, 1, -100, -100]
    assert (last["attention_mask"][2:] == 0).all() and last["input_ids"].shape[0] == 4


def test_processes_split_each_global_batch():
    features = make_features(n=64)
    single = DataLoader(features, 16, seed=5)
    parts = [DataLoader(features, 16, seed=5, process_index=p, process_count=4) for p in range(4)]
    for index in range(len(single)):
        whole = single.batch(1, index)
        pieces = [part.batch(1, index) for part in parts]
        assert {p["input_ids"].shape for p in pieces} == {(4, whole["input_ids"].shape[1])}  # same shapes everywhere
        for key in whole:
            assert np.array_equal(np.concatenate([p[key] for p in pieces]), whole[key])
    # the saved position of a 4-process run resumes a 1-process run at the same global batch
    for part in parts:
        next(iter(part))
    single.load_state_dict(parts[0].state_dict())
    assert single.index == 1


def test_bad_sizes_are_clear_errors():
    features = make_features(n=5)
    with pytest.raises(DataError, match="5 examples, fewer than one batch of 8"):
        DataLoader(features, 8)
    with pytest.raises(DataError, match="multiple of the process count 3"):
        DataLoader(features, 4, process_count=3)
    with pytest.raises(DataError, match="longer than the largest bucket"):
        DataLoader(make_features(n=10), 2, buckets=(8,))
