"""RELAY_LOG_FORMAT=json: every line ``relay serve`` prints is one JSON object."""

from __future__ import annotations

import datetime
import json
import logging
import signal
import sys
from typing import Any

import httpx
import pytest
import socketio

from relay.logjson import JsonFormatter
from relay.server import log_config
from tests.conftest import start_relay_process, wait_for

FIELDS = {"ts", "level", "logger", "message"}


def parsed(lines: list[str]) -> list[dict[str, Any]]:
    out = []
    for line in lines:
        record = json.loads(line)  # (fails the test on any line that is not JSON)
        assert isinstance(record, dict) and set(record) >= FIELDS, line
        ts = datetime.datetime.fromisoformat(record["ts"].replace("Z", "+00:00"))
        assert ts.utcoffset() == datetime.timedelta(0)
        out.append(record)
    return out


@pytest.mark.parametrize("how", ["env", "flag"])
async def test_relay_serve_logs_one_json_object_a_line(how: str) -> None:
    env = {"RELAY_LOG_FORMAT": "json"} if how == "env" else {}
    args = ["--log-format", "json"] if how == "flag" else []
    rp = start_relay_process(env=env, args=args)
    try:
        async with httpx.AsyncClient() as http:
            assert (await http.get(rp.url + "/healthz?probe=1")).status_code == 200
        client = socketio.AsyncClient(reconnection=False)
        await client.connect(rp.url, transports=["polling"], wait_timeout=5)
        await client.disconnect()
        await wait_for(lambda: any("/healthz?probe=1" in line for line in rp.lines))
    finally:
        assert rp.stop(signal.SIGTERM) == 0
    records = parsed(rp.lines)
    access = [r for r in records if r["logger"] == "uvicorn.access"]
    (probe,) = [r for r in access if r["path"] == "/healthz?probe=1"]
    assert probe["method"] == "GET" and probe["status"] == 200
    assert probe["client"].startswith("127.0.0.1:")
    assert any(r["path"].startswith("/socket.io/") for r in access)  # the polling connect
    assert any(r["logger"] == "relay" and "ready" in r["message"] for r in records)
    assert any(r["logger"] == "uvicorn.error" for r in records)
    assert {r["level"] for r in records} <= {"INFO", "WARNING"}


def test_an_exception_is_one_string_field() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord(
            "relay", logging.ERROR, __file__, 1, "failed %s", ("here",), sys.exc_info()
        )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    out = json.loads(line)
    assert out["message"] == "failed here" and out["level"] == "ERROR"
    assert out["exc"].startswith("Traceback") and "ValueError: boom" in out["exc"]


def test_text_stays_uvicorns() -> None:
    config = log_config("info")
    assert config["formatters"]["default"]["()"] == "uvicorn.logging.DefaultFormatter"
    assert "root" not in config
    assert log_config("info", "json")["formatters"]["access"]["()"] is JsonFormatter
