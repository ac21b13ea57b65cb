"""Divergence stops a run without touching the last good checkpoint; keep-last / keep-best
retention; early stopping; TensorBoard and JSONL logs."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxkernel.checkpoint import Checkpointer
from jaxkernel.train.loop import Trainer, TrainingDiverged
from train_fixtures import lm_config, tiny_gpt2_dir


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, shared_data):
    model_dir = tiny_gpt2_dir(tmp_path, shared_data)
    config = lm_config(model_dir, shared_data, str(tmp_path / "run"), "peft.method=none",
                       "optimizer.learning_rate=1e12", "optimizer.max_grad_norm=null", "schedule.warmup_steps=0",
                       "schedule.kind=constant", "checkpoint.every=1", "checkpoint.async_save=false", steps=20)
    trainer = Trainer(config)
    with pytest.raises(TrainingDiverged, match=r"NaN/inf by step (\d+).*Last good checkpoint: step (\d+)"):
        trainer.fit()
    ckpt = Checkpointer(tmp_path / "run" / "checkpoints")
    last = ckpt.latest_step()
    assert last is not None and last < 20
    again = Trainer(config, roles=("train",))  # restores the last good checkpoint
    assert int(again.state.step) == last
    assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(again.state.params))


def test_checkpointer_keeps_last_n_and_best(tmp_path):
    ckpt = Checkpointer(tmp_path, keep_last=2, best_metric="f1", async_save=False)
    for step, f1 in [(1, 0.2), (2, 0.9), (3, 0.4), (4, 0.5), (5, 0.3)]:
        ckpt.save(step, {"w": jnp.full((3,), step, jnp.float32)}, meta={"step": step}, metrics={"f1": f1})
    ckpt.wait()
    assert ckpt.all_steps() == [2, 4, 5]  # best f1 (step 2) plus the last two
    assert ckpt.best_step() == 2
    state, meta = ckpt.restore(2, {"w": jax.ShapeDtypeStruct((3,), jnp.float32)})
    np.testing.assert_array_equal(np.asarray(state["w"]), [2, 2, 2])
    assert meta["step"] == 2 and meta["_metrics"] == {"f1": 0.9}

    lower = Checkpointer(tmp_path / "ppl", keep_last=1, best_metric="perplexity", async_save=False)
    for step, ppl in [(1, 9.0), (2, 3.0), (3, 5.0)]:
        lower.save(step, {"w": jnp.zeros(2)}, meta={}, metrics={"perplexity": ppl})
    lower.wait()
    assert lower.all_steps() == [2, 3]


def test_early_stopping_and_logs(tmp_path, shared_data):
    model_dir = tiny_gpt2_dir(tmp_path, shared_data)
    # A learning rate this small cannot move held-out perplexity by much: patience 1 stops early.
    config = lm_config(model_dir, shared_data, str(tmp_path / "run"), "optimizer.learning_rate=1e-9",
                       "train.eval_every=2", "train.early_stopping_patience=1", "logging.tensorboard=true",
                       "checkpoint.every=null", steps=12)
    trainer = Trainer(config)
    trainer._early_stop(1.0)  # a previous best that nothing here can beat
    trainer.fit()
    records = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")]
    evals = [r for r in records if r["split"] == "eval"]
    assert len(evals) == 1 and evals[0]["step"] == 2  # stopped at the first eval without improvement
    assert (tmp_path / "run" / "config.yaml").exists() and any((tmp_path / "run" / "tb").iterdir())
    assert Checkpointer(tmp_path / "run" / "checkpoints").latest_step() == 2  # saved where it stopped


def test_early_stopping_on_a_plateau_of_real_metric_values(tmp_path, shared_data):
    """The fit loop's early stopping fed eval metrics that improve, then plateau (an equal value
    is no improvement), then get worse: it stops after ``patience`` evaluations without a new best."""
    model_dir = tiny_gpt2_dir(tmp_path, shared_data)
    config = lm_config(model_dir, shared_data, str(tmp_path / "run"), "train.eval_every=1",
                       "train.early_stopping_patience=2", "checkpoint.every=null", "checkpoint.async_save=false",
                       steps=12)
    trainer = Trainer(config)
    # Held-out perplexity per evaluation (lower is better): best 7.9 at step 3, then 7.9 again and 8.2.
    perplexities = iter([10.0, 8.0, 7.9, 7.9, 8.2, 6.0, 5.0])
    trainer.evaluate = lambda split: {"perplexity": (p := next(perplexities)), "loss": float(np.log(p))}
    trainer.fit()
    evals = [r for r in map(json.loads, open(tmp_path / "run" / "metrics.jsonl")) if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [1, 2, 3, 4, 5]  # stopped at step 5, not 12
    assert trainer.best == 7.9 and trainer.evals_without_improvement == 2
    assert Checkpointer(tmp_path / "run" / "checkpoints").latest_step() == 5

    # The same rule on its own: a new best resets the count; with patience 2 only a second miss stops.
    trainer.best, trainer.evals_without_improvement = None, 0
    assert [trainer._early_stop(v) for v in (5.0, 5.0, 4.0, 4.5, 4.0, 4.0)] == [False, False, False, False, True, True]
