"""``keep_host_memory``: a large block freed by a worker thread is reused without new page faults.

That is what XLA's CPU runtime does every step (one large scratch buffer per execution, allocated
from its worker threads); the step-level effect is measured in ``benchmarks/bench_host_memory.py``.
Each case runs in a fresh process: the settings are process-wide and must precede the threads.
"""

import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="glibc's mallopt only exists on Linux with glibc")

PROBE = textwrap.dedent("""
    import ctypes, json, resource, sys, threading
    from jaxkernel.train.host_memory import keep_host_memory

    applied = keep_host_memory(sys.argv[1] == "on")
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    size, faults = 256 << 20, []

    def worker():  # as an XLA worker thread: allocate, touch, free; then again
        for _ in range(3):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            block = libc.malloc(size)
            libc.memset(block, 1, size)
            libc.free(block)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    print("RESULT " + json.dumps({"applied": applied, "faults": faults}))
""")


def _probe(mode, **env):
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120,
                         env={**os.environ, **env}, check=True).stdout
    return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])


def test_kept_memory_is_reused_without_page_faults():
    pages = (256 << 20) // 4096
    off, on = _probe("off"), _probe("on")
    assert not off["applied"] and on["applied"]
    assert min(off["faults"][1:]) > pages // 2, off  # glibc's default: a fresh mmap every time
    assert max(on["faults"][1:]) < pages // 100, on  # kept: the second and third blocks are already mapped


def test_the_environment_variable_turns_it_off():
    assert not _probe("on", JAXKERNEL_KEEP_HOST_MEMORY="0")["applied"]


def test_after_jax_started_it_changes_nothing():
    code = ("import jax, jax.numpy as jnp; jnp.ones(3).block_until_ready()\n"
            "from jaxkernel.train.host_memory import keep_host_memory\n"
            "print('RESULT', keep_host_memory())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert "RESULT False" in out
