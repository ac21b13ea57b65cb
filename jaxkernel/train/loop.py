"""The training run: ``Trainer(config).fit()`` is what ``jaxkernel train`` executes.

It builds data, model (+ int8, + PEFT), optimizer and mesh from the config, then
loops over the pure jitted train step with periodic evaluation, early stopping,
JSONL/TensorBoard metrics, a progress bar, and Orbax checkpoints. Starting a
trainer on a run directory that holds checkpoints *resumes* it: parameters,
optimizer state, step, RNG and the data position are restored, so the rest of
the run is bit-identical to an uninterrupted one (on the same devices).

``train.run_dir`` may be a URL (``gs://bucket/runs/x``): the trainer then reads and
writes it through ``etils.epath`` (the path library Orbax uses), and since object
stores cannot append, ``metrics.jsonl`` is rewritten whole at each checkpoint and at
the end instead of appended line by line. Only process 0 writes files other than
checkpoints (which every process writes together through Orbax).

Example (notebook)::

    config = load_config("configs/bert_ner_lora.yaml", ["train.steps=100"])
    trainer = Trainer(config)
    results = trainer.fit()          # {"eval": {...}, "test": {"f1": ...}}
    trainer.export("out/", merged=True)
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxkernel.checkpoint import Checkpointer, abstract_like, saved_steps
from jaxkernel.config import Config, ConfigError, RESOLVED_NAME, config_to_dict, higher_is_better, save_resolved
from jaxkernel.data import build_loader, build_task_data
from jaxkernel.data.loader import DataLoader
from jaxkernel.train.build import build_mesh, build_model, build_optimizer
from jaxkernel.train.compile_cache import CompileTimed, enable_compilation_cache
from jaxkernel.train.host_memory import keep_host_memory
from jaxkernel.train.evaluate import evaluate_split
from jaxkernel.train.step import (
    accumulate_train_metrics, init_train_state, make_eval_step, make_train_step, model_from_state,
)

log = logging.getLogger(__name__)
# Fields that must match for a run directory to be resumed by this config.
IDENTITY_FIELDS = ("model", "peft", "quant", "data.source", "data.max_length", "train.batch_size", "train.seed",
                   "sparsity", "distill")
# Test hook: JAXKERNEL_FAULT="<point>:<step>" SIGKILLs the process at that point of that step (see FAULT_POINTS).
FAULT_ENV = "JAXKERNEL_FAULT"
FAULT_POINTS = {
    "kill_in_step": "right after train step N was dispatched (it may still be computing), before its logging",
    "kill_in_eval": "during the evaluation at step N, after its first batch",
    "kill_during_save": "while checkpoint N is being written (async)",
    "kill_before_flush": "checkpoint N finished, metrics not yet flushed",
    "kill_after_save": "checkpoint N finished and metrics flushed",
}


def _fault(point: str, step: int, wait=None) -> None:
    """SIGKILL this process when ``JAXKERNEL_FAULT`` names ``point`` at ``step`` (after ``wait()``)."""
    if os.environ.get(FAULT_ENV) == f"{point}:{step}":
        if wait is not None:
            wait()
        os.kill(os.getpid(), signal.SIGKILL)


def _record_step(line: str) -> tuple[int, str] | None:
    try:
        record = json.loads(line)
        return int(record["step"]), str(record.get("split"))
    except (ValueError, KeyError, TypeError):
        return None  # a line cut short by a kill


def _is_url(path) -> bool:
    return "://" in str(path)


def run_path(run_dir: str | os.PathLike):
    """``run_dir`` as a path object: ``pathlib.Path`` locally, ``etils.epath.Path`` for URLs.

    ``pathlib`` collapses ``gs://bucket`` to ``gs:/bucket``; epath keeps the scheme and
    talks to the object store (the same library Orbax uses for checkpoints).
    """
    if _is_url(run_dir):
        from etils import epath

        return epath.Path(str(run_dir))
    return Path(run_dir)


class TrainingDiverged(RuntimeError):
    """Loss became NaN/inf; the last good checkpoint is left untouched."""


class NoCheckpoint(FileNotFoundError):
    """``eval`` / ``predict`` / ``export`` asked for a trained model, and the run directory holds none."""


UNREADABLE_DIR = "unreadable_checkpoints"  # damaged steps are moved here (never deleted) when training resumes


def _identity(config: Config) -> dict:
    plain = json.loads(json.dumps(config_to_dict(config), default=str))
    out = {}
    for field in IDENTITY_FIELDS:
        value = plain
        for part in field.split("."):
            value = value[part]
        out[field] = value
    return out


class Trainer:
    """One training run described by a ``Config``; see the module docstring."""

    def __init__(self, config: Config, *, roles=("train", "eval", "test"), require_checkpoint: bool = False):
        """Build data, model, optimizer and restore the latest readable checkpoint, if any.

        Args:
          config: the run.
          roles: which splits to load (train is always read: it fixes the label set).
          require_checkpoint: refuse (``NoCheckpoint``) a run directory without a checkpoint
            instead of using the untrained model: for eval, predict and export.
        """
        self.config = config
        keep_host_memory(config.train.keep_host_memory)  # before JAX's threads first allocate
        self.compile_cache = enable_compilation_cache(config.train.compilation_cache)  # before the first compile
        self.run_dir = run_path(config.train.run_dir)
        self.is_main = jax.process_index() == 0
        if require_checkpoint:
            self._require_checkpoint()
        self._check_run_dir()
        self.data = build_task_data(config, roles=roles)
        self.mesh, self.rules = build_mesh(config)
        self.model = build_model(config, labels=self.data.labels, mesh=self.mesh, rules=self.rules)
        k = config.optimizer.grad_accum_steps
        self.train_loader = DataLoader(
            self.data.features["train"], config.train.batch_size * k, shuffle=True, seed=config.train.seed,
            drop_remainder=True, buckets=self.data.buckets, group_by_length=config.data.group_by_length,
            process_index=jax.process_index(), process_count=jax.process_count(),
        ) if "train" in self.data.features and "train" in roles else None
        steps_per_epoch = len(self.train_loader) if self.train_loader else 1
        self.total_steps = config.train.steps or config.train.epochs * steps_per_epoch
        self.tx, self.schedule = build_optimizer(config, self.total_steps, self.model)
        from jaxkernel.peft import trainable_filter

        self.model_def, self.state = init_train_state(
            self.model, self.tx, trainable=trainable_filter(self.model), seed=config.train.seed,
            mesh=self.mesh, rules=self.rules,
        )
        self.compile_times: list[dict] = []  # one entry per compiled (program, batch shape)
        self.train_step = CompileTimed(
            make_train_step(self.model_def, self.tx, microbatches=k, loss_fn=self._loss_fn()), "train", self._compiled
        )
        self.eval_step = CompileTimed(make_eval_step(self.model_def), "eval", self._compiled)
        self._eval_cache: dict[str, tuple] = {}  # role -> (state evaluated, metrics)
        self.checkpointer = Checkpointer(
            self.run_dir / "checkpoints", keep_last=config.checkpoint.keep_last,
            best_metric=config.checkpoint.keep_best_metric, async_save=config.checkpoint.async_save,
            create=False,  # fit() makes the directories: a trainer that never trains leaves no trace on disk
        )
        self.best: float | None = None
        self.evals_without_improvement = 0
        self._metrics_lines: list[str] | None = None  # buffered metrics.jsonl lines when run_dir is a URL
        self._restored_step = self._maybe_restore()

    # -- run directory ---------------------------------------------------------------------
    def _require_checkpoint(self) -> None:
        checkpoints = self.run_dir / "checkpoints"
        if saved_steps(checkpoints):
            return
        if not self.run_dir.exists():
            what = "does not exist"
        elif not checkpoints.exists():
            what = "has no checkpoints/ folder (it was never trained, or its checkpoints were moved)"
        else:
            what = f"holds no finished checkpoint in {checkpoints}"
        raise NoCheckpoint(
            f"run directory {str(self.run_dir)!r} {what}: there is no trained model to use, and the untrained one "
            f"would give meaningless results. Train it first (jaxkernel train {self.run_dir}), or give the "
            "directory the run's checkpoints are in now"
        )

    def _check_run_dir(self) -> None:
        """Refuse a run directory holding another, incompatible run (nothing is overwritten).

        A directory without a finished checkpoint is not a run (a failed start leaves one):
        its ``config.yaml`` is replaced when training starts.
        """
        resolved = self.run_dir / RESOLVED_NAME
        if not resolved.exists() or not saved_steps(self.run_dir / "checkpoints"):
            return
        from jaxkernel.config import config_from_dict, load_config

        try:
            if _is_url(resolved):  # load_config reads local files only
                import yaml

                previous = _identity(config_from_dict(yaml.safe_load(resolved.read_text()), source=str(resolved)))
            else:
                previous = _identity(load_config(resolved))
        except Exception as err:
            raise ConfigError(f"{resolved} exists but is not a readable jaxkernel config ({err}); "
                              "use a new train.run_dir") from err
        differ = {k: (previous[k], v) for k, v in _identity(self.config).items() if previous.get(k) != v}
        if differ:
            detail = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in differ.items())
            raise ConfigError(
                f"train.run_dir={str(self.run_dir)!r} holds another run whose checkpoints do not fit this config "
                f"({detail}). Choose a new train.run_dir, or delete that directory to start over"
            )

    def _checkpoint_items(self) -> dict:
        s = self.state
        return {"step": s.step, "params": s.params, "opt_state": s.opt_state, "rng": s.rng}

    def _maybe_restore(self) -> int:
        found = self.checkpointer.restore_latest(abstract_like(self._checkpoint_items()))
        if found is None:
            return 0
        step, items, meta = found
        self.state = self.state.replace(**items)
        if self.train_loader is not None and "data" in meta:
            self.train_loader.load_state_dict(meta["data"])
        self.best = meta.get("best")
        self.evals_without_improvement = int(meta.get("evals_without_improvement", 0))
        log.info("resumed %s from step %d", self.run_dir, step)
        return step

    # -- helpers ---------------------------------------------------------------------------
    def to_device(self, batch: dict) -> dict:
        batch = {k: v for k, v in batch.items() if k != "index"}
        if self.mesh is None:
            return {k: jnp.asarray(v) for k, v in batch.items()}
        sharding = self.model_def.batch_sharding()
        return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}

    def _next_batch(self) -> dict:
        while True:
            for batch in self.train_loader:
                return batch

    def _save(self, step: int, metrics: dict | None = None) -> None:
        meta = {
            "step": step, "data": self.train_loader.state_dict() if self.train_loader else {},
            "best": self.best, "evals_without_improvement": self.evals_without_improvement,
        }
        self.checkpointer.save(step, self._checkpoint_items(), meta=meta, metrics=metrics)
        _fault("kill_during_save", step)
        _fault("kill_before_flush", step, self.checkpointer.wait)
        self._flush_metrics()
        _fault("kill_after_save", step, self.checkpointer.wait)

    def _log(self, record: dict) -> None:
        if not self.is_main:
            return
        if self.config.logging.jsonl and self._metrics_lines is not None:
            self._metrics_lines.append(json.dumps(record) + "\n")  # a URL run dir: written by _flush_metrics
        elif self.config.logging.jsonl:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in record.items():
                if key not in ("step", "split") and isinstance(value, (int, float)):
                    self._tb.add_scalar(f"{record.get('split', 'train')}/{key}", value, record["step"])

    def _flush_metrics(self) -> None:
        """Rewrite ``metrics.jsonl`` whole (URL run dirs only: object stores cannot append)."""
        if self.is_main and self._metrics_lines is not None and self.config.logging.jsonl:
            (self.run_dir / "metrics.jsonl").write_text("".join(self._metrics_lines))

    def model_for_inference(self):
        """The trained model as an nnx module (eval mode)."""
        from jaxkernel.peft.adalora_budget import attach_rank_pattern  # AdaLoRA: its rank pattern is optimizer state

        return attach_rank_pattern(model_from_state(self.model_def, self.state), self.state.opt_state)

    # -- public API ------------------------------------------------------------------------
    def evaluate_loader(self, role: str = "eval") -> DataLoader:
        """The in-order loader of a split (this process's share of each batch)."""
        return build_loader(self.data, self.config, role, process_index=jax.process_index(),
                            process_count=jax.process_count())

    def evaluate(self, role: str = "eval") -> dict:
        """The task's metrics on ``role`` ("eval" or "test") with the current state.

        The same state is never evaluated twice: asked again before the state changed (the
        same step), it returns the metrics it already computed.
        """
        cached = self._eval_cache.get(role)
        if cached is not None and cached[0] is self.state:
            return cached[1]
        eval_step = self.eval_step
        if os.environ.get(FAULT_ENV, "").startswith("kill_in_eval:"):  # test hook: die after the first batch
            at = int(jax.device_get(self.state.step))

            def eval_step(*args, _step=self.eval_step):
                out = _step(*args)
                _fault("kill_in_eval", at)
                return out
        metrics = evaluate_split(eval_step, self.state, self.evaluate_loader(role), self.data, role,
                                 self.to_device)
        self._eval_cache[role] = (self.state, metrics)
        return metrics

    def _compiled(self, info: dict) -> None:
        self.compile_times.append(info)
        log.info("compiled the %s step for length %s in %.2f s%s", info["program"], info["length"], info["seconds"],
                 " (from the persistent compilation cache)" if info["cache_hits"] else "")

    def fit(self) -> dict:
        """Train to ``total_steps`` (resuming if checkpoints exist); returns final metrics."""
        c = self.config
        if self.train_loader is None:
            raise ConfigError("this trainer was built without a train split")
        self._tb = None
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if _is_url(self.run_dir):
                from jaxkernel.config import to_yaml

                (self.run_dir / RESOLVED_NAME).write_text(
                    "# Resolved jaxkernel config: every key, defaults included.\n" + to_yaml(c))
                previous = self.run_dir / "metrics.jsonl"
                self._metrics_lines = self._replayed_away(previous.read_text()) if previous.exists() else []
            else:
                save_resolved(c, self.run_dir)
                self._trim_metrics()
            (self.run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
            if c.logging.tensorboard:
                try:
                    from tensorboardX import SummaryWriter

                    self._tb = SummaryWriter(str(self.run_dir / "tb"))
                except ImportError:
                    log.warning("tensorboardX is not installed: no TensorBoard event files")
        self._set_aside_unreadable()
        eval_every = c.train.eval_every or len(self.train_loader)  # loader batches are optimizer steps
        has_eval = "eval" in self.data.features
        metric = c.primary_metric
        results: dict = {}
        bar = None
        if self.is_main and c.logging.progress_bar:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.total_steps, initial=self._restored_step, desc="train", dynamic_ncols=True)
        tokens, t0 = 0, time.perf_counter()
        # Loss sum, step count and "all finite" stay on the device: fetched at logging boundaries only.
        window = {"loss_sum": jnp.float32(0), "steps": jnp.int32(0), "finite": jnp.bool_(True)}
        compiles_logged = len(self.compile_times)
        step = self._restored_step
        last_good = self.checkpointer.latest_step()
        stop = False
        logged_step = step

        def log_window():
            nonlocal window, compiles_logged, logged_step, tokens, t0
            fetched = jax.device_get(window)
            self._check_finite(fetched["finite"], step, last_good)
            window = {**window, "loss_sum": jnp.float32(0), "steps": jnp.int32(0)}
            elapsed = time.perf_counter() - t0
            record = {"step": step, "split": "train", "loss": float(fetched["loss_sum"] / fetched["steps"]),
                      "learning_rate": float(self.schedule(step - 1)), "tokens_per_s": tokens / max(elapsed, 1e-9)}
            for info in self.compile_times[compiles_logged:]:
                self._log({"step": step, "split": "compile", **info})
            compiles_logged = len(self.compile_times)
            self._log(record)
            logged_step = step
            if bar is not None:
                bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}")
            tokens, t0 = 0, time.perf_counter()

        while step < self.total_steps and not stop:
            batch = self._next_batch()
            tokens += int(batch["attention_mask"].sum()) * jax.process_count()
            self.state, metrics = self.train_step(self.state, self.to_device(batch))
            window = accumulate_train_metrics(window, metrics)
            step += 1
            _fault("kill_in_step", step)
            every = c.checkpoint.every
            saving = bool(every and step % every == 0) or step == self.total_steps
            # A checkpoint closes the logging window: the window lives on the device and is not
            # saved, so a run resumed from this step logs the same means as one that never stopped.
            if step % c.logging.every == 0 or saving:
                log_window()
            if bar is not None:
                bar.update(1)
            eval_metrics = None
            if has_eval and (step % eval_every == 0 or step == self.total_steps):
                eval_metrics = self.evaluate("eval")
                self._log({"step": step, "split": "eval", **eval_metrics})
                results["eval"] = eval_metrics
                stop = self._early_stop(eval_metrics.get(metric))
            if saving or stop:
                if logged_step != step:  # an early stop between logging steps closes the window too
                    log_window()
                self._check_finite(window["finite"], step, last_good)
                self._save(step, eval_metrics)
                last_good = step
        if bar is not None:
            bar.close()
        self.checkpointer.wait()
        if c.eval.test_at_end and "test" in self.data.features:
            results["test"] = self.evaluate("test")
            self._log({"step": step, "split": "test", **results["test"]})
        for info in self.compile_times[compiles_logged:]:
            self._log({"step": step, "split": "compile", **info})
        self._flush_metrics()
        if self.is_main:
            (self.run_dir / "results.json").write_text(json.dumps(results, indent=2))
        if self._tb is not None:
            self._tb.close()
        return results

    def _replayed_away(self, text: str) -> list[str]:
        """The metrics lines a resumed run keeps: those of steps up to the restored checkpoint.

        A killed run logged steps after its last checkpoint (and maybe the final test) that the
        resumed run does again; dropping them keeps ``metrics.jsonl`` equal to an uninterrupted run's.
        """
        keep = []
        for line in text.splitlines(keepends=True):
            found = _record_step(line)
            if found is not None and found[0] <= self._restored_step and found[1] != "test" and line.endswith("\n"):
                keep.append(line)
        return keep

    def _trim_metrics(self) -> None:
        path = self.run_dir / "metrics.jsonl"
        if not path.exists():
            return
        text = path.read_text()
        keep = self._replayed_away(text)
        if "".join(keep) != text:  # written aside, then renamed: a kill here leaves the old or the new file
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text("".join(keep))
            os.replace(tmp, path)

    def _set_aside_unreadable(self) -> None:
        """Move damaged steps newer than the restored one out of ``checkpoints/`` before training.

        Training will save those step numbers again, and keep-last-N retention would count the
        damaged copies and delete them: moved to ``<run_dir>/unreadable_checkpoints/`` they are
        kept for inspection and out of the way.
        """
        if not self.checkpointer.unreadable:
            return
        if self.is_main:
            for step, why in self.checkpointer.unreadable:
                dest, n = self.run_dir / UNREADABLE_DIR / str(step), 1
                while dest.exists():
                    dest, n = self.run_dir / UNREADABLE_DIR / f"{step}.{n}", n + 1
                self.checkpointer.set_aside(step, dest)
                log.warning("moved unreadable checkpoint step %d (%s) to %s; training resumes from step %d",
                            step, why, dest, self._restored_step)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("jaxkernel_set_aside_unreadable")
            self.checkpointer.manager.reload()
        self.checkpointer.unreadable = []

    def _check_finite(self, finite, step: int, last_good: int | None) -> None:
        if not bool(jax.device_get(finite)):
            self.checkpointer.wait()
            where = f"step {last_good}" if last_good is not None else "none saved yet"
            raise TrainingDiverged(
                f"loss became NaN/inf by step {step}; training stopped. Last good checkpoint: {where} in "
                f"{self.run_dir / 'checkpoints'}. Lower optimizer.learning_rate, keep optimizer.max_grad_norm "
                "set, or use float32 (model.dtype)"
            )

    def _early_stop(self, value) -> bool:
        if value is None:
            return False
        value = float(value)
        metric = self.config.primary_metric
        better = self.best is None or (value > self.best if higher_is_better(metric) else value < self.best)
        if better:
            self.best, self.evals_without_improvement = value, 0
            return False
        self.evals_without_improvement += 1
        patience = self.config.train.early_stopping_patience
        return patience is not None and self.evals_without_improvement >= patience

    def _loss_fn(self):
        """The task loss (None), or distillation's when the config has a ``distill.teacher``."""
        if self.config.distill.teacher is None:
            return None
        from jaxkernel.compress.distill import loss_from_config

        return loss_from_config(self.config)

    def export(self, directory: str | os.PathLike, *, merged: bool = True) -> Path:
        """Write a ``transformers`` directory (merged) or a PEFT adapter directory.

        In a multi-process job every process calls this (it gathers the sharded weights
        together); only process 0 writes, after a barrier, and every process returns
        ``directory`` once the files are complete.
        """
        from jaxkernel.hf.peft_format import save_adapter, save_merged
        from jaxkernel.hf.pretrained import save_pretrained
        from jaxkernel.config import resolve_path
        from jaxkernel.peft.trainable import has_trainable_params
        from jaxkernel.quant.transform import dequantize_model, quantized_paths

        from jaxkernel.compress.distill import unwrap_student

        model = unwrap_student(self.model_for_inference())  # a distillation run exports its student
        directory = Path(directory)
        multi = jax.process_count() > 1
        if multi:
            from jax.experimental import multihost_utils

            model = _gathered(model)  # a collective: every process takes part
            multihost_utils.sync_global_devices("jaxkernel_export_start")
        if self.is_main:
            if has_trainable_params(model) and not merged:
                save_adapter(model, directory, base_model_name_or_path=resolve_path(self.config.model.path))
            elif has_trainable_params(model):
                if quantized_paths(model):
                    model = dequantize_model(model)
                save_merged(model, directory)
            else:
                if quantized_paths(model):
                    model = dequantize_model(model)
                save_pretrained(model, directory)
            self.data.tokenizer.save_pretrained(str(directory))
            if self.config.sparsity.method != "none":  # dense tensors with zeros + where the zeros are
                from jaxkernel.compress.sparsity import write_sparsity_report

                write_sparsity_report(model, directory, self.config.sparsity.targets)
        if multi:
            multihost_utils.sync_global_devices("jaxkernel_export_done")  # the others return once it is written
        return directory


def _gathered(model):
    """``model`` with every array whole in this process's memory (a collective across processes)."""
    from flax import nnx
    from jax.experimental import multihost_utils

    graphdef, state = nnx.split(model)

    def whole(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable:
            return x
        if x.is_fully_replicated:
            return x.addressable_data(0)
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(multihost_utils.process_allgather(jax.random.key_data(x), tiled=True),
                                            impl=jax.random.key_impl(x))
        return multihost_utils.process_allgather(x, tiled=True)

    return nnx.merge(graphdef, jax.tree.map(whole, state))
