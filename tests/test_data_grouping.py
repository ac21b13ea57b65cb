"""Length-grouped batches and fine buckets: deterministic, exact resume, every example once, less padding."""

import numpy as np
import pytest

from jaxkernel.config import load_config
from jaxkernel.data import DataError, DataLoader, Features, bucket_for, default_buckets
from jaxkernel.data.pipeline import run_buckets


def make_features(n=203, seed=0):
    lengths = np.random.default_rng(seed).integers(3, 120, size=n)
    ids = [np.arange(1, k + 1, dtype=np.int32) + 1000 * i for i, k in enumerate(lengths)]
    sequences = {"input_ids": ids, "token_type_ids": [np.zeros(k, np.int32) for k in lengths],
                 "labels": [np.full(k, i % 3, np.int32) for i, k in enumerate(lengths)]}
    return Features("token-classification", sequences, {}, pad_id=0, example_index=np.arange(n, dtype=np.int32))


BUCKETS = default_buckets(128, 8, 8)


def padded_positions(loader, epoch):
    return sum(loader.batch(epoch, i)["input_ids"].size for i in range(len(loader)))


def test_multiple_buckets():
    assert default_buckets(128, 16, 16) == (16, 32, 48, 64, 80, 96, 112, 128)
    assert default_buckets(128, 8, 8)[:4] == (8, 16, 24, 32) and default_buckets(128, 8, 8)[-1] == 128
    assert default_buckets(100, 10, 16) == (16, 32, 48, 64, 80, 96, 100)  # min rounds up; max_length closes
    assert default_buckets(128, 16) == (16, 32, 64, 128)  # multiple=None: powers of two as before


def test_config_default_buckets_are_multiples_of_bucket_multiple():
    config = load_config(None, ["data.max_length=64", "data.min_bucket=16", "data.bucket_multiple=16"])
    assert run_buckets(config) == (16, 32, 48, 64)
    assert run_buckets(load_config(None, ["data.max_length=64", "data.bucket_multiple=null",
                                          "data.min_bucket=16"])) == (16, 32, 64)


@pytest.mark.parametrize("drop_remainder", [True, False])
def test_grouped_epoch_sees_every_example_once(drop_remainder):
    features = make_features()
    loader = DataLoader(features, 8, seed=3, buckets=BUCKETS, group_by_length=4, drop_remainder=drop_remainder)
    for epoch in range(3):
        rows = np.concatenate([loader.global_indices(epoch, i) for i in range(len(loader))])
        real = rows[rows >= 0]
        assert len(set(real.tolist())) == len(real)
        if drop_remainder:
            assert len(real) == len(loader) * 8 == 200
        else:
            assert sorted(real.tolist()) == list(range(203))


def test_grouped_order_is_a_function_of_seed_and_epoch():
    features = make_features()
    a = DataLoader(features, 8, seed=3, buckets=BUCKETS, group_by_length=4)
    b = DataLoader(features, 8, seed=3, buckets=BUCKETS, group_by_length=4)
    assert np.array_equal(a.order(1), b.order(1)) and np.array_equal(a.order(0), b.order(0))
    assert not np.array_equal(a.order(0), a.order(1))
    assert not np.array_equal(a.order(0), DataLoader(features, 8, seed=4, group_by_length=4).order(0))
    # grouping off keeps the exact order the loader always had (old runs resume unchanged)
    plain = DataLoader(features, 8, seed=3)
    assert np.array_equal(plain.order(2), np.random.default_rng([3, 2]).permutation(203))


def test_grouped_batches_pad_less_and_use_their_bucket():
    features = make_features()
    grouped = DataLoader(features, 8, seed=3, buckets=BUCKETS, group_by_length=4)
    plain = DataLoader(features, 8, seed=3, buckets=BUCKETS)
    for index in range(len(grouped)):
        batch = grouped.batch(0, index)
        longest = int(features.lengths[batch["index"]].max())
        assert batch["input_ids"].shape == (8, bucket_for(longest, BUCKETS))
        assert batch["input_ids"].shape[1] in BUCKETS
        assert batch["attention_mask"].sum() == features.lengths[batch["index"]].sum()
    assert padded_positions(grouped, 0) < 0.8 * padded_positions(plain, 0)
    # within a batch lengths are close: each batch comes from one sorted window
    def spread(loader):
        return np.median([np.ptp(features.lengths[loader.global_indices(0, i)]) for i in range(len(loader))])

    assert spread(grouped) < 0.5 * spread(plain)


def test_grouped_resume_is_exact():
    features = make_features()
    straight = DataLoader(features, 8, seed=1, buckets=BUCKETS, group_by_length=3)
    reference = [b for _ in range(2) for b in straight]
    first = DataLoader(features, 8, seed=1, buckets=BUCKETS, group_by_length=3)
    got = []
    for batch in first:
        got.append(batch)
        if len(got) == 11:
            break
    saved = first.state_dict()
    assert (saved["epoch"], saved["index"], saved["group_by_length"]) == (0, 11, 3)
    resumed = DataLoader(features, 8, seed=1, buckets=BUCKETS, group_by_length=3)
    resumed.load_state_dict(saved)
    while len(got) < len(reference):
        got += list(resumed)
    assert len(got) == len(reference)
    for x, y in zip(got, reference):
        assert all(np.array_equal(x[k], y[k]) for k in x)
    with pytest.raises(DataError, match="group_by_length 3 -> 0"):
        DataLoader(features, 8, seed=1, buckets=BUCKETS).load_state_dict(saved)


def test_grouped_batches_do_not_depend_on_the_process_count():
    features = make_features(n=256)
    single = DataLoader(features, 16, seed=5, buckets=BUCKETS, group_by_length=2)
    parts = [DataLoader(features, 16, seed=5, buckets=BUCKETS, group_by_length=2, process_index=p, process_count=4)
             for p in range(4)]
    for index in range(len(single)):
        whole = single.batch(1, index)
        for key in whole:
            assert np.array_equal(np.concatenate([p.batch(1, index)[key] for p in parts]), whole[key])


def test_unshuffled_grouping_sorts_the_whole_split():
    features = make_features()
    loader = DataLoader(features, 8, shuffle=False, drop_remainder=False, buckets=BUCKETS, group_by_length=1)
    rows = np.concatenate([loader.global_indices(0, i) for i in range(len(loader))])
    real = rows[rows >= 0]
    assert sorted(real.tolist()) == list(range(203))
    assert (np.diff(features.lengths[real]) <= 0).all()
    assert padded_positions(loader, 0) < padded_positions(
        DataLoader(features, 8, shuffle=False, drop_remainder=False, buckets=BUCKETS), 0)


def test_bad_grouping_is_refused():
    with pytest.raises(DataError, match="group_by_length=-1 must be >= 0"):
        DataLoader(make_features(), 8, group_by_length=-1)
