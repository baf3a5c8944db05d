"""A connect-hook backend for the tests: a real HTTP server in a thread that records each
request and answers what the test's ``decide`` function says (its signature is checked with
tests.hooks.receiver's own verifier, written from the contract)."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.hooks.receiver import serving

#: what ``decide`` returns: (status, body bytes), or "hang" (no answer until released)
Answer = tuple[int, bytes] | str


def allow(user: str | None = None, rooms: list[str] | None = None) -> Answer:
    return 200, json.dumps({"allow": True, "user": user, "rooms": rooms}).encode()


@dataclass
class Seen:
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


@dataclass
class Backend:
    decide: Callable[[dict[str, Any]], Answer]
    requests: list[Seen] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def seen(self) -> list[Seen]:
        with self.lock:
            return list(self.requests)


@contextlib.contextmanager
def backend(decide: Callable[[dict[str, Any]], Answer]) -> Iterator[Backend]:
    """A :class:`Backend` on a free port until the block ends."""
    state = Backend(decide)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with state.lock:
                state.requests.append(Seen(dict(self.headers), body))
            answer = state.decide(json.loads(body))
            if answer == "hang":
                state.release.wait(30)
                self.close_connection = True
                return
            assert isinstance(answer, tuple)
            status, payload = answer
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    with serving(Handler, "hook-backend", state.release) as port:
        state.url = f"http://127.0.0.1:{port}/connect"
        yield state
