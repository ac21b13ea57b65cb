"""Keep freed host memory in the process, so XLA's per-step scratch buffer on CPU stops page-faulting.

On the CPU backend every execution of a compiled step allocates one scratch buffer for all its
temporaries (~340 MB for a MiniLM full fine-tune at batch 32 x 32) from XLA's worker threads. glibc
serves an allocation that large from a fresh ``mmap`` and returns it with ``munmap`` when the step
ends, so the next step touches brand-new pages again: ~62,000 page faults per LoRA step and ~90,000
per full fine-tune step, measured with ``getrusage``. Three ``mallopt`` settings keep that memory
in the heap for reuse: one malloc arena (worker threads would otherwise use per-thread arenas,
whose large blocks always come from ``mmap``), no ``mmap`` for allocations, and no trimming of the
heap's free top. Measured side by side on the default recipe's step (2-core machine, one process per
setting): 0 faults per step; LoRA 0.73x / 0.87x / 0.86x / 0.96x the step time at 16 / 24 / 32 / 128 tokens, full
fine-tuning 0.77x / 0.82x at 32 / 128 (``benchmarks/bench_host_memory.py``, results of 2026-11-29).

The cost: the process keeps its peak host memory until it exits (a training step reaches that peak
every step anyway). glibc only (Linux); elsewhere it does nothing. It must run before JAX starts
its backend (its threads pick their arena on their first allocation); after that it does nothing
and says so in the log. The trainer calls it first thing; in a notebook call it before any JAX
computation. ``train.keep_host_memory=false`` or
``JAXKERNEL_KEEP_HOST_MEMORY=0`` leaves the allocator alone.

Example::

    from jaxkernel.train.host_memory import keep_host_memory
    keep_host_memory()          # True when applied
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger(__name__)

ENV = "JAXKERNEL_KEEP_HOST_MEMORY"
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc's malloc.h
_applied = False


def _backend_started() -> bool:
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):
        return False


def keep_host_memory(enabled: bool = True) -> bool:
    """Apply the three ``mallopt`` settings once per process; returns whether they are in effect."""
    global _applied
    if _applied:
        return True
    if not enabled or os.environ.get(ENV, "1").strip().lower() in ("0", "off", "false", "no"):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if _backend_started():  # its threads have their own arenas already: half the setting, all of its cost
        log.info("host memory is managed as glibc's defaults say: JAX had already started (call "
                 "jaxkernel.train.host_memory.keep_host_memory() before the first JAX computation)")
        return False
    libc = ctypes.CDLL(None)
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))
    if not all(libc.mallopt(option, value) == 1 for option, value in settings):
        log.debug("mallopt refused a setting: host memory is managed as glibc's defaults say")
        return False
    _applied = True
    return True
