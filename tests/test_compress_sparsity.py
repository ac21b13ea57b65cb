"""Magnitude sparsity: the cubic schedule, 2:4 masks, masks in the train state across a resume, export."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxkernel.compress.sparsity import magnitude_pruning, n_m_mask, sparsity_at
from jaxkernel.config import load_config
from compress_fixtures import ner_config, ner_overrides, tiny_bert_dir

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _run(tx, params, steps):
    state = tx.init(params)
    history = []
    for _ in range(steps):
        updates = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), params)
        updates, state = tx.update(updates, state, params)
        params = optax.apply_updates(params, updates)
        history.append(float((params["a"]["kernel"] == 0).mean()))
    return params, state, history


def test_cubic_schedule_prunes_smallest_weights_on_its_steps():
    params = {"a": {"kernel": jax.random.normal(jax.random.key(0), (16, 8))}, "b": {"kernel": jnp.ones((8, 4))}}
    tx = magnitude_pruning(["a.kernel"], initial_sparsity=0.0, final_sparsity=0.75, begin_step=2, end_step=6,
                           frequency=2)
    _, state, history = _run(tx, params, 8)
    expected = [0.0] + [float(np.floor(sparsity_at(t, initial=0.0, final=0.75, begin=2, end=6) * 128) / 128)
                        if t in (2, 4, 6) else None for t in range(2, 9)]
    for t, (got, want) in enumerate(zip(history, expected), start=1):
        if want is not None:
            assert got == pytest.approx(want), (t, history)
    assert history[2] == history[1] and history[-1] == history[5] == 0.75  # fixed between/after updates
    assert np.asarray(state.masks[0]).mean() == 0.25
    # the survivors are the largest-magnitude weights of the starting kernel (+ equal updates)
    kept = np.asarray(state.masks[0]).ravel()
    order = np.argsort(np.abs(np.asarray(params["a"]["kernel"])).ravel())
    assert not kept[order[:96]].any() and kept[order[96:]].all()


def test_global_scope_uses_one_threshold():
    params = {"a": {"kernel": jnp.arange(1.0, 17.0).reshape(4, 4)}, "b": {"kernel": 100 + jnp.arange(16.0).reshape(4, 4)}}
    tx = magnitude_pruning(["a.kernel", "b.kernel"], final_sparsity=0.5, begin_step=1, end_step=1, scope="global")
    state = tx.init(params)
    updates, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
    assert not np.asarray(state.masks[0]).any() and np.asarray(state.masks[1]).all()


def test_two_four_mask_keeps_two_of_every_four_inputs():
    w = jax.random.normal(jax.random.key(1), (12, 5))
    mask = np.asarray(n_m_mask(w))
    groups = mask.reshape(3, 4, 5)
    assert (groups.sum(1) == 2).all()
    a = np.abs(np.asarray(w)).reshape(3, 4, 5)
    assert (np.where(groups, a, np.inf).min(1) >= np.where(groups, -np.inf, a).max(1)).all()
    with pytest.raises(ValueError, match="divisible by 4"):
        magnitude_pruning(["k"], pattern="2:4").init({"k": jnp.ones((6, 4))})


def test_sparse_training_resumes_exactly_and_exports_zeros(tmp_path, shared_data, minilm_dir):
    from jaxkernel.train.loop import Trainer

    model_dir = tiny_bert_dir(tmp_path, minilm_dir)
    extra = ["sparsity.method=magnitude", "sparsity.final_sparsity=0.6", "sparsity.begin_step=1",
             "sparsity.end_step=5", "sparsity.frequency=2",
             "schedule.kind=constant"]  # the 3-step run must see the 6-step run's learning rates
    straight = Trainer(ner_config(model_dir, shared_data, tmp_path / "straight", *extra))
    straight.fit()
    interrupted = Trainer(ner_config(model_dir, shared_data, tmp_path / "resumed", *extra, steps=3))
    interrupted.fit()
    resumed = Trainer(ner_config(model_dir, shared_data, tmp_path / "resumed", *extra))
    assert int(resumed.state.step) == 3
    assert any(not np.asarray(m).all() for m in resumed.state.opt_state[-1].masks)  # masks came back
    resumed.fit()
    for a, b in zip(jax.tree.leaves(straight.state.params), jax.tree.leaves(resumed.state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(straight.state.opt_state[-1].masks, resumed.state.opt_state[-1].masks):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    out = resumed.export(tmp_path / "export")
    report = json.loads((out / "sparsity_report.json").read_text())
    assert report["total"]["sparsity"] == pytest.approx(0.6, abs=0.01)
    assert len(report["layers"]) == 3 * 6  # q, k, v, attention out, intermediate, output per layer
    assert all(r["sparsity"] == pytest.approx(0.6, abs=0.02) for r in report["layers"].values())


def test_sparse24_preset_trains_a_two_four_model(tmp_path, shared_data, minilm_dir):
    from jaxkernel.train.loop import Trainer

    model_dir = tiny_bert_dir(tmp_path, minilm_dir)
    preset = load_config(CONFIGS / "bert_ner_sparse24.yaml")
    assert preset.sparsity.pattern == "2:4" and preset.peft.method == "none"
    config = load_config(CONFIGS / "bert_ner_sparse24.yaml", ner_overrides(model_dir, shared_data, tmp_path / "run", 2)
                         + ["sparsity.end_step=2", "sparsity.frequency=1"])
    trainer = Trainer(config)
    trainer.fit()
    report = json.loads((trainer.export(tmp_path / "out") / "sparsity_report.json").read_text())
    assert all(r["is_2_4"] for r in report["layers"].values())
    assert report["total"]["sparsity"] == pytest.approx(0.5)
