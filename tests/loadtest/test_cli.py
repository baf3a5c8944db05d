"""``relay loadtest`` as a user runs it: JSON, report files, SLO exit codes, errors, Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from relay.limits import Rate
from relay.settings import Settings
from tests.conftest import ROOT, free_port, serve_in_thread
from tests.loadtest.faulty_server import Faults, serve_faulty

BASE = ["--clients", "20", "--rooms", "2", "--rate", "20", "--duration", "1", "--workers", "1",
        "--drain", "3"]  # fmt: skip


def loadtest(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", "loadtest", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_json_report_and_html(live_relay: Any, tmp_path: Path) -> None:
    out, page = tmp_path / "r.json", tmp_path / "r.html"
    p = loadtest("--url", live_relay.url, *BASE, "--json", "--report", str(out),
                 "--html", str(page), "--max-p99-ms", "5000", "--max-loss", "0")  # fmt: skip
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert report == json.loads(out.read_text())
    assert report["lost"] == 0 and report["received"] == report["expected"] == 200
    assert report["slo"]["passed"] is True and report["slo"]["failures"] == []
    assert len(report["slo"]["checks"]) == 2
    html = page.read_text()
    assert "<svg" in html and "http" not in html.replace(live_relay.url, "").replace(
        "http://www.w3.org/2000/svg", ""
    )


def test_missed_slo_exits_1_naming_it(live_relay: Any) -> None:
    p = loadtest("--url", live_relay.url, *BASE, "--max-p99-ms", "0.001", "--min-rate", "1e9")
    assert p.returncode == 1
    assert "--max-p99-ms" in p.stdout and "--min-rate" in p.stdout
    assert "lost" in p.stdout  # the final table is still printed


def test_ramp_reports_steps_and_highest_sustained_rate(live_relay: Any) -> None:
    p = loadtest("--url", live_relay.url, *BASE, "--ramp", "--ramp-steps", "2", "--json",
                 "--max-p99-ms", "5000")  # fmt: skip
    assert p.returncode == 0, p.stderr
    ramp = json.loads(p.stdout)["ramp"]
    assert [s["rate"] for s in ramp["steps"]] == [20, 30]
    assert ramp["max_sustained_rate"] == 30
    assert all(s["lost"] == 0 for s in ramp["steps"])
    assert all(s["loadgen_cpu_us_per_delivery"] > 0 for s in ramp["steps"])


def test_refused_connection_is_one_line_error() -> None:
    p = loadtest("--url", f"http://127.0.0.1:{free_port()}", *BASE, "--json")
    assert p.returncode == 1
    assert p.stdout == ""
    assert "Traceback" not in p.stderr and "could connect" in p.stderr


def test_bad_option_is_rejected(tmp_path: Path) -> None:
    scenario = tmp_path / "s.toml"
    scenario.write_text('mode = "multicast"\n')
    p = loadtest("--scenario", str(scenario))
    assert p.returncode == 2 and "multicast" in p.stderr


def test_scenario_file_drives_the_run(live_relay: Any, tmp_path: Path) -> None:
    scenario = tmp_path / "s.toml"
    scenario.write_text(
        f'[loadtest]\nurl = "{live_relay.url}"\nclients = 10\nrooms = 1\nrate = 10\n'
        'duration = 1\nworkers = 1\ndrain = 3\nmode = "unicast"\n'
    )
    p = loadtest("--scenario", str(scenario), "--json")
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert (report["mode"], report["clients"], report["expected"]) == ("unicast", 10, 10)


def test_ctrl_c_stops_cleanly_and_still_reports() -> None:
    faults = Faults(drop_every=10**9, dup_every=10**9, hold_every=10**9)
    with serve_faulty(faults) as url:
        proc = subprocess.Popen(
            [sys.executable, "-m", "relay", "loadtest", "--url", url, "--clients", "10",
             "--rooms", "1", "--rate", "20", "--duration", "60", "--workers", "1", "--json"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while faults.publishes < 5:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    report = json.loads(out)
    assert report["interrupted"] is True
    assert 5 <= report["published"] < 1200
    keys = ("published", "acked", "expected", "received", "lost", "late", "stop_reason")
    assert report["received"] > 0 and report["lost"] == 0, ({k: report[k] for k in keys}, faults)


def test_host_port_url_and_plain_progress_lines_for_ci(live_relay: Any) -> None:
    """``--url host:port`` as ``send`` and ``listen`` take it; stderr is not a terminal here,
    so progress comes as plain lines while it runs, and the table ends with the verdict."""
    p = loadtest("--url", f"127.0.0.1:{live_relay.port}", *BASE, "--max-loss", "0")
    assert p.returncode == 0, p.stderr
    lines = p.stderr.splitlines()
    assert re.fullmatch(
        r"\[0:0\d\] connecting 0% · 0:0\d left at most · connected \d+/20", lines[0]
    )
    publishing = [line for line in lines if "] publishing " in line]
    assert publishing and all(" · in flight " in line for line in publishing), lines
    assert "missing" not in p.stderr and "Traceback" not in p.stderr
    assert p.stdout.rstrip().splitlines()[-1] == "SLOs passed: loss ratio 0 <= --max-loss 0"


def test_a_ramp_cut_by_the_time_cap_says_so(live_relay: Any) -> None:
    p = loadtest("--url", live_relay.url, "--clients", "10", "--rooms", "1", "--rate", "10",
                 "--duration", "30", "--workers", "1", "--ramp", "--max-time", "4",
                 "--json")  # fmt: skip
    report = json.loads(p.stdout)
    ramp = report["ramp"]
    assert ramp["stop_reason"] == "hard time cap of 4s reached during the 10 msgs/s step"
    assert ramp["steps"][0]["result"] == "cut short (hard time cap of 4s reached)"
    assert "could not publish" not in p.stdout
    assert p.returncode == 1  # no step was sustained


@contextlib.contextmanager
def refusing_server(status: str) -> Iterator[str]:
    """Answers every request with ``status`` and closes, as a relay at its limits does."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    conn.recv(65536)
                    conn.sendall(f"HTTP/1.1 {status}\r\ncontent-length: 0\r\n"
                                 "connection: close\r\n\r\n".encode())  # fmt: skip

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def test_connections_refused_with_429_name_the_settings() -> None:
    with refusing_server("429 Too Many Requests") as url:
        p = loadtest("--url", url, *BASE)
    assert p.returncode == 1 and p.stdout == ""
    error = [line for line in p.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1, p.stderr
    assert "429 Too Many Requests" in error[0]
    assert "RELAY_MAX_CONNECTIONS_PER_IP" in error[0] and "RELAY_CONNECT_RATE" in error[0]


def test_publishes_refused_as_rate_limited_name_the_setting() -> None:
    with serve_in_thread(Settings(publish_rate=Rate(2.0, 2.0))) as live:
        p = loadtest("--url", live.url, "--clients", "4", "--rooms", "1", "--rate", "40",
                     "--duration", "1", "--workers", "1", "--drain", "2", "--json")  # fmt: skip
    report = json.loads(p.stdout)
    assert report["ack_errors"]["rate_limited"] > 0
    note = report["server_refusals"][0]
    assert note.startswith(f"the server refused {report['ack_errors']['rate_limited']:,} ")
    assert "rate_limited" in note and "RELAY_PUBLISH_RATE" in note
    assert note in p.stderr.splitlines()  # next to --json: on stderr, one line
