"""Run a benchmark and keep its raw output: every README figure must point at one of these files.

Writes ``benchmarks/results/NAME-YYYY-MM-DD.txt`` with the command, the commit, the UTC start and
end, the machine (cores, load average before and after) and everything the command printed
(stdout and stderr, in order), and exits with the command's status::

    python benchmarks/record.py load -- python benchmarks/bench_load.py
    python benchmarks/record.py ner_e2e -- python benchmarks/bench_ner_e2e.py --max-train-examples 3200
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def _commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout
        return head.strip() + (" (with uncommitted changes)" if dirty.strip() else "")
    except OSError:
        return "unknown"


def main(argv: list[str]) -> int:
    if "--" not in argv or argv.index("--") != 1 or len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    name, command = argv[0], argv[2:]
    start = datetime.datetime.now(datetime.timezone.utc)
    out = ROOT / "benchmarks" / "results" / f"{name}-{start:%Y-%m-%d}.txt"
    header = [
        f"# {name}",
        f"command: {shlex.join(command)}",
        f"commit: {_commit()}",
        f"machine: {platform.platform()}, {os.cpu_count()} CPU cores, python {platform.python_version()}",
        f"start: {start:%Y-%m-%d %H:%M:%S} UTC, load average {_load()}",
    ]
    proc = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    end = datetime.datetime.now(datetime.timezone.utc)
    header.append(f"end: {end:%Y-%m-%d %H:%M:%S} UTC, load average {_load()}, exit status {proc.returncode}")
    out.write_text("\n".join(header) + "\n\n" + proc.stdout)
    sys.stdout.write(proc.stdout)
    print(f"raw output: {out}", file=sys.stderr)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
