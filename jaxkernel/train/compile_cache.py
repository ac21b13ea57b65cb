"""Persistent XLA compilation cache, and how long each compiled program took.

Every bucket length compiles a train and an eval program: tens of seconds for a BERT on CPU.
JAX can keep compiled executables on disk, so that a second identical run in a fresh process
loads them instead of compiling. ``enable_compilation_cache`` turns that on (the trainer calls
it first thing, before any program is compiled) in ``$JAXKERNEL_CACHE_DIR``, else
``$XDG_CACHE_HOME/jaxkernel/xla``, else ``~/.cache/jaxkernel/xla``. It stays off with
``train.compilation_cache=false`` or ``JAXKERNEL_CACHE_DIR=off``, and a directory already
chosen through JAX's own ``jax_compilation_cache_dir`` is left as it is.

``CompileTimed`` wraps a jitted step and reports, once per batch shape, the seconds spent
tracing, lowering and compiling (or loading from the cache) on its first call. It reads
JAX's own monitoring events, so it needs no host sync and times nothing but compilation.

Example::

    enable_compilation_cache(True)                  # before the first jax.jit call
    step = CompileTimed(train_step, "train", lambda info: print(info))
    state, metrics = step(state, batch)             # {'program': 'train', 'length': 48, 'seconds': 7.9,
                                                    #  'cache_hits': 0}
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Callable

import jax

log = logging.getLogger(__name__)

CACHE_ENV = "JAXKERNEL_CACHE_DIR"
_OFF = ("", "0", "off", "false", "none", "no")
_MAX_BYTES = 4 << 30  # least recently used entries are deleted beyond this (when filelock is installed)
_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",  # includes reading the persistent cache on a hit
)
_HIT_EVENT = "/jax/compilation_cache/cache_hits"


def cache_dir() -> Path | None:
    """Where the cache lives: ``$JAXKERNEL_CACHE_DIR`` (None when it says off), else the user cache dir."""
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        return None if value.strip().lower() in _OFF else Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "jaxkernel" / "xla"


def enable_compilation_cache(enabled: bool = True) -> Path | None:
    """Switch JAX's persistent compilation cache on; returns its directory (None = off).

    Every program is cached, however fast it compiled (JAX's default skips those under a
    second), so that an identical second run compiles nothing.
    """
    current = jax.config.jax_compilation_cache_dir
    if current:  # the user configured JAX's cache directly: respect it
        return Path(current)
    directory = cache_dir() if enabled else None
    if directory is None:
        return None
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        log.warning("compilation cache disabled: cannot create %s (%s); set %s to a writable folder",
                    directory, err, CACHE_ENV)
        return None
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    if jax.config.jax_compilation_cache_max_size == -1:
        try:
            import filelock  # noqa: F401  (JAX needs it to bound the cache size)

            jax.config.update("jax_compilation_cache_max_size", _MAX_BYTES)
        except ImportError:
            pass
    return directory


class _Totals:
    """Process-wide running totals of compile seconds and cache hits (one listener, registered once)."""

    lock = threading.Lock()
    seconds = 0.0
    hits = 0
    registered = False

    @classmethod
    def register(cls) -> None:
        with cls.lock:
            if cls.registered:
                return
            cls.registered = True

        def on_duration(event: str, duration: float, **kwargs) -> None:
            if event in _COMPILE_EVENTS:
                with cls.lock:
                    cls.seconds += duration

        def on_event(event: str, **kwargs) -> None:
            if event == _HIT_EVENT:
                with cls.lock:
                    cls.hits += 1

        jax.monitoring.register_event_duration_secs_listener(on_duration)
        jax.monitoring.register_event_listener(on_event)

    @classmethod
    def read(cls) -> tuple[float, int]:
        with cls.lock:
            return cls.seconds, cls.hits


class CompileTimed:
    """A jitted ``(state, batch) -> ...`` step that reports its compile time once per batch shape.

    Args:
      fn: the jitted step.
      program: a name for the report ("train", "eval").
      report: called with ``{"program", "length", "seconds", "cache_hits"}`` after the first
        call with each new batch shape; ``length`` is the padded sequence length.
    """

    def __init__(self, fn: Callable, program: str, report: Callable[[dict], None]):
        _Totals.register()
        self.fn, self.program, self.report = fn, program, report
        self.seen: set = set()

    def __call__(self, state, batch):
        shapes = tuple(sorted((k, tuple(v.shape)) for k, v in batch.items()))
        if shapes in self.seen:
            return self.fn(state, batch)
        seconds, hits = _Totals.read()
        out = self.fn(state, batch)
        seconds_after, hits_after = _Totals.read()
        self.seen.add(shapes)
        length = batch["input_ids"].shape[-1] if "input_ids" in batch else None
        self.report({"program": self.program, "length": length, "seconds": round(seconds_after - seconds, 3),
                     "cache_hits": hits_after - hits})
        return out
