"""Orbax checkpoints of a training run: trainable state, optimizer, step, RNG, data position.

What is saved is the :class:`~jaxkernel.train.step.TrainState` *without* its
``frozen`` part: the frozen base is rebuilt from the pretrained checkpoint named
in the run's config, so a LoRA checkpoint holds only the adapter, its optimizer
state and a few counters (small), while a full fine-tune holds every weight.

Saves are atomic (Orbax writes a temporary directory and renames it when
complete), optionally asynchronous, keep the last N and optionally the best by a
metric. Restore takes an *abstract* target (shapes + shardings), so a checkpoint
written on one mesh restores onto another (resharding) or onto one device.

Example::

    ckpt = Checkpointer(run_dir / "checkpoints", keep_last=2, best_metric="f1")
    ckpt.save(step, {"step": ..., "params": ..., "opt_state": ..., "rng": ...},
              meta={"data": loader.state_dict()}, metrics={"f1": 0.81})
    items, meta = ckpt.restore(ckpt.latest_step(), abstract_items)
    step, items, meta = ckpt.restore_latest(abstract_items)   # newest *readable* step

A damaged step (a truncated file, a failed disk) is never deleted: ``restore_latest``
falls back to the newest step that reads, remembers the damaged ones in
``ckpt.unreadable``, and ``set_aside`` moves one out of the checkpoint directory so
that a resumed run can save that step number again and retention cannot remove it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import AnyPreservationPolicy, BestN, LatestN

from jaxkernel.config import higher_is_better

log = logging.getLogger(__name__)


class CheckpointUnreadable(ValueError):
    """No checkpoint of a run can be read; the message names each step and why."""


def _path(directory: str | os.PathLike):
    if "://" in str(directory):
        from etils import epath

        return epath.Path(str(directory))
    return Path(os.path.abspath(directory))


def saved_steps(directory: str | os.PathLike) -> list[int]:
    """Steps with a finished checkpoint directory under ``directory`` (none if it is missing).

    Reads the listing only (no Orbax manager, nothing created): Orbax names a finished step
    ``<step>`` and an unfinished one ``<step>.orbax-checkpoint-tmp-...``.
    """
    path = _path(directory)
    if not path.exists():
        return []
    return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit() and p.is_dir())


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300] if text else ''}"


class Checkpointer:
    """A thin, opinionated wrapper around ``ocp.CheckpointManager``.

    Args:
      directory: where step directories go (local path or ``gs://...``).
      keep_last: how many of the most recent checkpoints to keep.
      best_metric: also keep the best checkpoint by this metric (None = do not).
      async_save: write in a background thread; call :meth:`wait` before exit.
      create: make ``directory`` now if it is missing (False: the first save makes it).
    """

    def __init__(self, directory: str | os.PathLike, *, keep_last: int = 2, best_metric: str | None = None,
                 async_save: bool = True, create: bool = True):
        if keep_last < 1:
            raise ValueError(f"checkpoint.keep_last must be >= 1, got {keep_last}")
        policies = [LatestN(keep_last)]
        if best_metric:
            lower = not higher_is_better(best_metric)
            policies.append(BestN(get_metric_fn=lambda m: m[best_metric], reverse=lower, n=1,
                                  keep_checkpoints_without_metrics=False))
        self.best_metric = best_metric
        self.unreadable: list[tuple[int, str]] = []  # (step, why) found by restore_latest
        directory = str(directory)
        self.directory = _path(directory)
        self.manager = ocp.CheckpointManager(
            directory if "://" in directory else os.path.abspath(directory),
            options=ocp.CheckpointManagerOptions(
                preservation_policy=AnyPreservationPolicy(policies),
                enable_async_checkpointing=async_save,
                create=create,
                cleanup_tmp_directories=True,
            ),
            item_names=("state", "meta"),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        """The kept step with the best ``best_metric`` (None without a metric or checkpoints)."""
        if not self.best_metric:
            return None
        scored = []
        for step in self.manager.all_steps():
            meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
            value = (meta.get("_metrics") or {}).get(self.best_metric)
            if value is not None:
                scored.append((float(value), step))
        if not scored:
            return None
        pick = max if higher_is_better(self.best_metric) else min
        return pick(scored)[1]

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, *, meta: dict, metrics: dict | None = None, force: bool = True) -> None:
        """Start saving ``state`` (a pytree of arrays) and JSON ``meta`` under ``step``."""
        if metrics is not None and self.best_metric and self.best_metric not in metrics:
            metrics = None  # an eval without the ranking metric does not rank this checkpoint
        if metrics is not None:
            meta = {**meta, "_metrics": {k: float(v) for k, v in metrics.items()}}
        self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            metrics=None if metrics is None else {k: float(v) for k, v in metrics.items()},
            force=force,
        )

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """Restore ``step`` into the shapes/dtypes/shardings of ``abstract_state``."""
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()),
        )
        return restored["state"], dict(restored["meta"])

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict] | None:
        """``(step, state, meta)`` of the newest step that reads; None when there is no checkpoint.

        A step that fails to read is skipped (with a warning naming it and the step used
        instead) and recorded in ``self.unreadable``; it is left on disk untouched.

        Raises:
          CheckpointUnreadable: there are checkpoints, but none of them reads.
        """
        self.unreadable = []
        for step in sorted(self.all_steps(), reverse=True):
            try:
                state, meta = self.restore(step, abstract_state)
            except Exception as err:  # noqa: BLE001 - any read failure: try the previous step
                self.unreadable.append((step, _first_line(err)))
                log.warning("checkpoint step %d in %s is unreadable (%s); trying an earlier step",
                            step, self.directory, _first_line(err))
                continue
            if self.unreadable:
                damaged = ", ".join(str(s) for s, _ in self.unreadable)
                log.warning("restored step %d from %s instead of the newest, unreadable step %s "
                            "(left on disk, not deleted)", step, self.directory, damaged)
            return step, state, meta
        if self.unreadable:
            detail = "; ".join(f"step {s}: {why}" for s, why in self.unreadable)
            raise CheckpointUnreadable(
                f"no checkpoint in {self.directory} can be read ({detail}). They are left as they are. "
                "Restore the directory from a backup, or train into a new train.run_dir"
            )
        return None

    def set_aside(self, step: int, destination: str | os.PathLike) -> Any:
        """Move step ``step``'s directory to ``destination`` (kept, no longer a checkpoint of this run).

        A resumed run will save that step number again, and retention would otherwise count
        and delete the damaged copy. Returns where it went.
        """
        self.wait()
        source = self.directory / str(step)
        target = _path(destination)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            raise FileExistsError(f"cannot move unreadable checkpoint {source} aside: {target} already exists")
        source.rename(target)
        self.manager.reload()
        return target

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of a pytree of arrays: a restore target."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)
