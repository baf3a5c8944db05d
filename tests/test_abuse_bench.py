"""benchmarks/abuse.py runs: two cheap attacks at tiny sizes, against this checkout's relay.

What the attacks cost is the benchmark's to report, not this test's to bound (the relay's own
tests bound each finding); this checks that the harness starts a relay and its monitor, runs
the attacks, prints its table and JSON, cleans up, and exits 0.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "abuse.py"


def run(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_two_cheap_attacks_print_their_rows_and_exit_0(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    done = run("--only", "fragments,rooms-flood", "--scale", "0.01", "--json", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| attack"))
    rows = [line for line in lines[header + 2 :] if line.startswith("| ")]
    assert [r.split("|")[1].strip() for r in rows] == ["fragments", "rooms-flood"]
    assert "200 fragments" in rows[0]
    assert "1,000 joins" in rows[1]
    data = json.loads(out.read_text())
    assert [r["attack"] for r in data["rows"]] == ["fragments", "rooms-flood"]
    for row in data["rows"]:
        assert row["cpu_s"] >= 0
        assert row["bystander"]["sent"] > 0  # the bystander published during the attack
        assert row["healthz"]["probes"] > 0
        assert "harness error" not in row["outcome"]


def test_an_unknown_attack_is_a_usage_error() -> None:
    done = run("--only", "fragments,nonsense", timeout=30)
    assert done.returncode == 2
    assert "unknown attack 'nonsense'" in done.stderr
