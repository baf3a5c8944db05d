"""An outsider's acceptance suite, written from CONTRACT.md and the README only.

The server is always ``relay serve`` as a separate process: the Procfile's ``web:`` line run with
``PORT`` set (open mode), and ``relay serve`` with ``RELAY_SECRET`` and ``RELAY_API_KEY`` set
(secured mode). Against them: Node's official ``socket.io-client`` over WebSocket and over
HTTP long-polling (``tests/js/acceptance.mjs`` holds those checks), the HTTP API with httpx,
python-socketio for what the HTTP API must reach, and the ``relay`` command line as a user
runs it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import socketio

from tests.conftest import ROOT, free_port, start_relay_process

JSON = {"content-type": "application/json"}

JS_DIR = ROOT / "tests" / "js"
ACCEPTANCE = JS_DIR / "acceptance.mjs"
TRANSPORTS = ["websocket", "polling"]
SECRET = "acceptance-secret-" + uuid.uuid4().hex
API_KEY = "acceptance-key-" + uuid.uuid4().hex
ENVELOPE_KEYS = {"id", "room", "event", "from", "data", "offset", "ts"}
KIB64 = 64 * 1024

OPEN_CHECKS = {
    "join_ack_shape",
    "join_offset_is_latest",
    "join_since_replays_before_the_ack",
    "join_since_ahead_of_the_room",
    "replay_keeps_event_names",
    "burst_order_from_two_publishers",
    "leave_ack_shape",
    "publish_ack_and_envelope",
    "publish_custom_event_and_allowed_chars",
    "exclude_self",
    "publish_without_membership",
    "offsets_are_per_room",
    "direct_shapes",
    "direct_counts_only_live_connections",
    "direct_is_never_a_room",
    "presence_ack_shape",
    "presence_events",
    "reserved_event_names",
    "room_name_limits",
    "event_name_limits",
    "user_name_limits",
    "payload_limits",
    "wrong_types_and_shapes",
    "unknown_events",
}
SECURED_CHECKS = {"no_or_bad_tokens_are_unauthorized", "valid_token_sets_the_user", "room_patterns"}


def uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_") and k != "REDIS_URL"}
    env["COLUMNS"] = "200"
    return {**env, **extra}


# ------------------------------------------------------------------------------------- servers


def procfile_web_command() -> str:
    for line in (ROOT / "Procfile").read_text().splitlines():
        kind, sep, command = line.partition(":")
        if sep and kind.strip() == "web":
            return command.strip()
    raise AssertionError("the Procfile has no web: line")


def wait_healthy(url: str, proc: subprocess.Popen[str], output: list[str]) -> None:
    deadline = time.monotonic() + 30
    with httpx.Client(timeout=2) as http:
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"server exited {proc.returncode}:\n{''.join(output)}")
            try:
                if http.get(f"{url}/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"/healthz not 200 within 30 s:\n{''.join(output)}")
            time.sleep(0.05)


@pytest.fixture(scope="module")
def open_url() -> Iterator[str]:
    """The Procfile's web: line, run by bash with PORT set and no RELAY_* variables."""
    if shutil.which("relay") is None:
        pytest.fail("the `relay` console script is not on PATH: run `pip install -e .[test]`")
    port = free_port()
    proc = subprocess.Popen(
        ["bash", "-c", procfile_web_command()],
        cwd=ROOT,
        env=clean_env(PORT=str(port)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output: list[str] = []
    drain = threading.Thread(target=lambda: output.extend(proc.stdout or []), daemon=True)
    drain.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, output)
        yield url
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, "".join(output)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        drain.join(timeout=5)
        if proc.stdout:
            proc.stdout.close()


@pytest.fixture(scope="module")
def secured_url() -> Iterator[str]:
    rp = start_relay_process(
        env={"RELAY_SECRET": SECRET, "RELAY_API_KEY": API_KEY, "RELAY_HISTORY_SIZE": "2000"}
    )
    try:
        yield rp.url
    finally:
        assert rp.stop() == 0, "".join(rp.lines)


@pytest.fixture
async def http_open(open_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=open_url, timeout=10) as client:
        yield client


@pytest.fixture
async def http_secured(secured_url: str) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(base_url=secured_url, timeout=10, headers=headers) as client:
        yield client


# ------------------------------------------------------------------------------- the JS client


@pytest.fixture(scope="module")
def node() -> str:
    exe = shutil.which("node")
    if exe is None:
        pytest.fail("node is not on PATH: install Node.js 18+")
    package = JS_DIR / "node_modules" / "socket.io-client" / "package.json"
    if not package.is_file():
        pytest.fail("tests/js/node_modules is missing: run `npm ci` in tests/js")
    assert json.loads(package.read_text())["version"].startswith("4.")
    return exe


def run_acceptance(node: str, url: str, transport: str, mode: str) -> dict[str, Any]:
    cmd = [node, str(ACCEPTANCE), url, transport, mode, *([SECRET] if mode == "secured" else [])]
    try:
        proc = subprocess.run(cmd, cwd=JS_DIR, capture_output=True, text=True, timeout=100)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"acceptance.mjs {transport} {mode} did not finish in 100 s: {exc.stderr!r}")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    report: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return report


def assert_all_passed(report: dict[str, Any], expected: set[str]) -> None:
    ran = {r["name"] for r in report["results"]}
    assert ran == expected, f"checks that did not run: {expected - ran}; unknown: {ran - expected}"
    failures = [f"{r['name']}: {r['error']}" for r in report["results"] if not r["ok"]]
    assert not failures, "\n\n".join(failures)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_js_client_open_mode(node: str, open_url: str, transport: str) -> None:
    report = run_acceptance(node, open_url, transport, "open")
    assert_all_passed(report, OPEN_CHECKS)
    observed = report["observed"]
    # Judgement calls the contract leaves open, pinned to what relay answers.
    assert observed["publish_without_data"]["error"]["code"] == "bad_request"
    assert observed["publish_data_null"]["ok"] is True
    for refusal in observed["bad_user_connect"].values():
        assert refusal["code"] == "bad_request", observed["bad_user_connect"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_js_client_secured_mode(node: str, secured_url: str, transport: str) -> None:
    report = run_acceptance(node, secured_url, transport, "secured")
    assert_all_passed(report, SECURED_CHECKS)
    assert report["observed"]["token_without_sub"]["code"] == "unauthorized"


# ------------------------------------------------------------------------------------ HTTP API


async def sio_client(
    url: str, auth: dict[str, Any] | None = None
) -> tuple[socketio.AsyncClient, asyncio.Queue[tuple[str, Any]]]:
    client = socketio.AsyncClient(reconnection=False)
    got: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    async def any_event(event: str, sid_or_data: Any, data: Any = None) -> None:
        await got.put((event, sid_or_data if data is None else data))

    client.on("*", any_event)
    await client.connect(url, auth=auth, transports=["websocket"])
    return client, got


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body


async def test_http_publish_reaches_clients_and_shares_offsets(
    open_url: str, http_open: httpx.AsyncClient
) -> None:
    room = uniq("http") + ":a/b"  # "/" is a legal room character: the API must address it
    client, got = await sio_client(open_url, {"user": "watcher"})
    try:
        assert (await client.call("join", {"room": room}, timeout=5))["offset"] == 0
        first = await client.call("publish", {"room": room, "data": "socket"}, timeout=5)
        path = f"/api/v1/rooms/{room.replace('/', '%2F')}/events"
        r = await http_open.post(path, json={"event": "note", "data": {"k": [1, None]}})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/json")
        ack = r.json()
        assert set(ack) == {"id", "offset"} and ack["offset"] == first["offset"] + 1, ack
        event, env = await asyncio.wait_for(got.get(), 5)
        assert (event, env["offset"]) == ("message", 1)
        event, env = await asyncio.wait_for(got.get(), 5)
        assert event == "note"
        assert set(env) == ENVELOPE_KEYS
        assert env["from"] == {"sid": None, "user": None}
        assert (env["id"], env["room"], env["event"], env["data"]) == (
            ack["id"],
            room,
            "note",
            {"k": [1, None]},
        )
        assert abs(env["ts"] - time.time() * 1000) < 10_000
        # The literal "/" form addresses the same room.
        r = await http_open.post(f"/api/v1/rooms/{room}/events", json={"data": 3})
        assert r.json()["offset"] == 3, r.text
        members = (await http_open.get(f"/api/v1/rooms/{room}/members")).json()
        assert members == {"room": room, "members": [{"sid": client.get_sid(), "user": "watcher"}]}
        history = (await http_open.get(f"/api/v1/rooms/{room}/history")).json()
        assert history["room"] == room
        assert [m["offset"] for m in history["messages"]] == [1, 2, 3]
        assert history["messages"][1] == env
    finally:
        await client.disconnect()


async def test_http_direct_to_users_and_connections(
    open_url: str, http_open: httpx.AsyncClient
) -> None:
    user = uniq("ops") + "/eu@x"
    a, got_a = await sio_client(open_url, {"user": user})
    b, got_b = await sio_client(open_url, {"user": user})
    try:
        r = await http_open.post(
            f"/api/v1/users/{user.replace('/', '%2F')}/events", json={"data": 1}
        )
        assert r.status_code == 200 and set(r.json()) == {"id", "delivered"}, r.text
        assert r.json()["delivered"] == 2
        for got in (got_a, got_b):
            event, env = await asyncio.wait_for(got.get(), 5)
            assert (event, env["room"], env["offset"], env["from"]) == (
                "message",
                None,
                None,
                {"sid": None, "user": None},
            )
        r = await http_open.post(
            f"/api/v1/connections/{a.get_sid()}/events", json={"event": "ping", "data": None}
        )
        assert r.json()["delivered"] == 1, r.text
        event, env = await asyncio.wait_for(got_a.get(), 5)
        assert (event, env["data"], env["id"]) == ("ping", None, r.json()["id"])
        for path in (f"/api/v1/users/{uniq('nobody')}/events", "/api/v1/connections/nosid/events"):
            r = await http_open.post(path, json={"data": 1})
            assert r.status_code == 200 and r.json()["delivered"] == 0, r.text
    finally:
        await a.disconnect()
        await b.disconnect()


async def test_http_errors_follow_the_contract(http_open: httpx.AsyncClient) -> None:
    room = uniq("errs")
    events = f"/api/v1/rooms/{room}/events"
    post = http_open.post
    assert_error(await post(events, json={}), 400, "bad_request")
    assert_error(await post(events, json={"event": "x"}), 400, "bad_request")
    assert_error(await post(events, content=b"{oops", headers=JSON), 400, "bad_request")
    assert_error(await post(events, content=b"", headers=JSON), 400, "bad_request")
    # only application/json bodies are accepted (a cross-site form or text/plain is not)
    for media in (None, "text/plain", "application/x-www-form-urlencoded"):
        headers = {"content-type": media} if media else {}
        r = await post(events, content=b'{"data": 1}', headers=headers)
        assert r.status_code in (400, 415) and r.json()["error"]["code"] == "bad_request"
    assert_error(await post(events, json={"data": 1, "evnet": "x"}), 400, "bad_request")
    assert_error(await post(events, json=[1]), 400, "bad_request")
    assert_error(await post(events, json={"event": "a b", "data": 1}), 400, "bad_request")
    assert_error(await post(events, json={"event": "e" * 65, "data": 1}), 400, "bad_request")
    for reserved in ("connect", "disconnect", "publish", "presence", "newListener"):
        assert_error(await post(events, json={"event": reserved, "data": 1}), 400, "bad_request")
    assert_error(await post("/api/v1/rooms/a%20b/events", json={"data": 1}), 400, "bad_request")
    assert_error(
        await post(f"/api/v1/rooms/{'r' * 129}/events", json={"data": 1}), 400, "bad_request"
    )
    r = await post(f"/api/v1/rooms/{'r' * 128}/events", json={"data": 1})
    assert r.status_code == 200, r.text
    assert_error(
        await post(f"/api/v1/users/{'u' * 65}/events", json={"data": 1}), 400, "bad_request"
    )
    assert (await post(f"/api/v1/users/{'u' * 64}/events", json={"data": 1})).status_code == 200
    # data at the limit as compact JSON (no spaces), and one byte over it.
    exact = "x" * (KIB64 - 2)
    r = await post(events, content=json.dumps({"data": exact, "event": None}), headers=JSON)
    assert r.status_code == 200, r.text
    obj = {"a": [1, 2], "pad": ""}
    obj["pad"] = "é" * ((KIB64 - len(json.dumps(obj, separators=(",", ":")).encode())) // 2)
    assert len(json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()) == KIB64
    r = await post(events, content=json.dumps({"data": obj}, indent=4), headers=JSON)
    assert r.status_code == 200, r.text
    assert_error(await post(events, json={"data": "x" * (KIB64 - 1)}), 413, "too_large")
    assert_error(
        await post(events, content=b'{"data": "' + b"x" * (1 << 20) + b'"}', headers=JSON),
        413,
        "too_large",
    )
    history = f"/api/v1/rooms/{room}/history"
    for query in ("limit=0", "limit=-1", "limit=x", "since=abc", "since=-1"):
        assert_error(await http_open.get(f"{history}?{query}"), 400, "bad_request")
    assert_error(await http_open.get("/api/v1/nothing/here"), 404, "not_found")
    assert_error(
        await http_open.post("/api/v1/connections/a/b/events", json={"data": 1}), 404, "not_found"
    )
    r = await http_open.get(events)  # wrong method: still the error body
    assert r.status_code in (404, 405) and set(r.json()) == {"error"}, r.text
    # A room that never had a message: no members, no history.
    never = uniq("never")
    assert (await http_open.get(f"/api/v1/rooms/{never}/members")).json() == {
        "room": never,
        "members": [],
    }
    assert (await http_open.get(f"/api/v1/rooms/{never}/history")).json() == {
        "room": never,
        "messages": [],
    }


async def test_http_history_pages_forward(http_secured: httpx.AsyncClient) -> None:
    room = uniq("paging")
    events = f"/api/v1/rooms/{room}/events"
    for i in range(1, 1006):
        r = await http_secured.post(events, json={"data": i})
        assert r.json()["offset"] == i, r.text
    history = f"/api/v1/rooms/{room}/history"
    default = (await http_secured.get(history)).json()["messages"]
    assert [m["offset"] for m in default] == list(range(1, 101))
    assert [m["data"] for m in default] == list(range(1, 101))
    page = (await http_secured.get(f"{history}?since=7&limit=3")).json()["messages"]
    assert [m["offset"] for m in page] == [8, 9, 10]
    full = (await http_secured.get(f"{history}?limit=1000")).json()["messages"]
    assert [m["offset"] for m in full] == list(range(1, 1001))
    over = await http_secured.get(f"{history}?limit=1001")
    # "at most 1,000": relay refuses a larger limit rather than clamping it.
    assert_error(over, 400, "bad_request")
    seen: list[int] = []
    since = 0
    while True:
        batch = (await http_secured.get(f"{history}?since={since}&limit=400")).json()["messages"]
        if not batch:
            break
        seen += [m["offset"] for m in batch]
        since = batch[-1]["offset"]
    assert seen == list(range(1, 1006))
    assert (await http_secured.get(f"{history}?since=5000")).json()["messages"] == []


async def test_http_api_key(secured_url: str) -> None:
    async with httpx.AsyncClient(base_url=secured_url, timeout=10) as http:
        path = f"/api/v1/rooms/{uniq('keyed')}/members"
        assert_error(await http.get(path), 401, "unauthorized")
        assert_error(
            await http.get(path, headers={"Authorization": "Bearer nope"}), 401, "unauthorized"
        )
        assert_error(await http.get(path, headers={"Authorization": API_KEY}), 401, "unauthorized")
        r = await http.post(f"/api/v1/rooms/{uniq('k')}/events", json={"data": 1})
        assert_error(r, 401, "unauthorized")
        ok = await http.get(path, headers={"Authorization": f"Bearer {API_KEY}"})
        assert ok.status_code == 200 and ok.json()["members"] == [], ok.text
        assert (await http.get("/healthz")).status_code == 200  # health needs no key


async def test_healthz_and_chat_page(http_open: httpx.AsyncClient) -> None:
    r = await http_open.get("/healthz")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    assert isinstance(r.json(), dict)
    page = await http_open.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "<html" in page.text.lower()


# ------------------------------------------------------------------------------- command line


def relay_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("relay")
    assert exe, "the `relay` console script is not on PATH"
    return subprocess.run(
        [exe, *args], env=env or clean_env(), capture_output=True, text=True, timeout=timeout
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0, (result.stdout, result.stderr)
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stdout.strip() == "", result.stdout
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("command", [[], ["serve"], ["send"], ["listen"], ["loadtest"], ["token"]])
def test_every_command_has_help(command: list[str]) -> None:
    result = relay_cli(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout and "--help" in result.stdout
    if command and command[0] in ("send", "listen", "loadtest"):
        assert "--url" in result.stdout and "RELAY_URL" in result.stdout


def test_cli_send_and_listen_use_relay_url(open_url: str) -> None:
    room = uniq("cli")
    env = clean_env(RELAY_URL=open_url)
    sends = [('{"hi": 1}', {"hi": 1}), ("3", 3), ("hello world", "hello world"), ("{oops", "{oops")]
    for offset, (arg, _) in enumerate(sends, start=1):
        result = relay_cli("send", "--room", room, "--json", arg, env=env)
        assert result.returncode == 0, result.stderr
        ack = json.loads(result.stdout)
        assert ack["ok"] is True and ack["offset"] == offset, ack
    listened = relay_cli(
        "listen", "--room", room, "--since", "0", "--json", "--count", "4", env=env
    )
    assert listened.returncode == 0, listened.stderr
    envelopes = [json.loads(line) for line in listened.stdout.splitlines() if line.strip()]
    assert [e["data"] for e in envelopes] == [data for _, data in sends]
    assert all(set(e) == ENVELOPE_KEYS for e in envelopes)
    assert relay_cli("send", "--room", room, "-q", "x", env=env).stdout == ""


def test_cli_refused_connection_is_one_line() -> None:
    env = clean_env(RELAY_URL=f"http://127.0.0.1:{free_port()}")
    assert_one_line_error(relay_cli("send", "--room", "r", "hi", env=env), "refused")
    assert_one_line_error(relay_cli("listen", "--room", "r", "--count", "1", env=env), "refused")


def test_cli_error_ack_is_one_line(open_url: str) -> None:
    env = clean_env(RELAY_URL=open_url)
    assert_one_line_error(relay_cli("send", "--room", "no spaces", "hi", env=env), "bad_request")
    big = "x" * (KIB64 + 10)
    assert_one_line_error(relay_cli("send", "--room", "r", big, env=env), "too_large")


def test_cli_against_a_secured_server(secured_url: str) -> None:
    env = clean_env(RELAY_URL=secured_url)
    bad = relay_cli("send", "--token", "bad", "--room", "x", "hi", env=env)
    assert_one_line_error(bad, "unauthorized")
    assert_one_line_error(relay_cli("send", "--room", "x", "hi", env=env), "unauthorized")
    assert_one_line_error(
        relay_cli("listen", "--token", "bad", "--room", "x", "--count", "1", env=env),
        "unauthorized",
    )
    team = uniq("team")
    made = relay_cli("token", "alice", "--room", f"{team}:*", "--secret", SECRET, "--ttl", "10m")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.count(".") == 2, made.stdout
    ok = relay_cli("send", "--token", token, "--room", f"{team}:a:b", "--json", "hi", env=env)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["offset"] == 1
    assert_one_line_error(
        relay_cli("send", "--token", token, "--room", "elsewhere", "hi", env=env), "forbidden"
    )
    with_env = relay_cli(
        "send", "--room", f"{team}:c", "-q", "hi", env={**env, "RELAY_TOKEN": token}
    )
    assert with_env.returncode == 0 and with_env.stdout == "", with_env.stderr
