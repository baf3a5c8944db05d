"""benchmarks/redis_bus.py runs: it calls the cluster's publish script as ClusterRelay does.

The figures are the benchmark's to report; this checks that the script's keys and arguments
still match the publish script (a mismatch is a Redis error, and no figure), against a real
``redis-server`` the benchmark starts itself.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def test_the_bus_benchmark_publishes_and_prints_its_figures() -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "redis_bus.py"),
            "--count",
            "50",
            "--repeat",
            "1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(r"run 1: bus \d+ us, redis-py \d+ us CPU per publish", done.stdout), (
        done.stdout
    )
