"""A webhook receiver for the tests: a real HTTP server in a thread, with its own verifier.

Its signature check is written here from the contract, not imported from relay, so a relay
that signs the wrong bytes fails the tests instead of agreeing with itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SECRET = "test-webhook-secret"


def verify(secret: str, headers: Any, body: bytes, now: float | None = None) -> bool:
    """The contract's check: HMAC-SHA256 of ``timestamp.body``, and at most 5 minutes old."""
    timestamp = headers.get("X-Relay-Timestamp")
    signature = headers.get("X-Relay-Signature")
    if not timestamp or not signature or not timestamp.isdigit():
        return False
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    fresh = abs((now or time.time()) - int(timestamp)) <= 300
    return fresh and hmac.compare_digest("sha256=" + mac.hexdigest(), signature)


@dataclass
class Request:
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def events(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = json.loads(self.body)["events"]
        return events


@dataclass
class Receiver:
    """What arrived; ``script`` is the answers to give in turn (then 200): a status, or
    ``"hang"`` (answer nothing until :attr:`release` is set)."""

    secret: str = SECRET
    script: list[int | str] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    @property
    def accepted(self) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.status == 200]

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every event of every request answered 200, in arrival order."""
        return [e for r in self.accepted for e in r.events]

    def named(self, *names: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["name"] in names]

    def answer(self, headers: Any, body: bytes) -> int | str:
        with self.lock:
            if not verify(self.secret, headers, body):
                status: int | str = 401
            else:
                status = self.script.pop(0) if self.script else 200
            self.requests.append(
                Request(dict(headers), body, status if isinstance(status, int) else 0)
            )
            return status


@contextlib.contextmanager
def receiving(script: list[int | str] | None = None, secret: str = SECRET) -> Iterator[Receiver]:
    """A :class:`Receiver` on a free port until the block ends."""
    receiver = Receiver(secret=secret, script=list(script or []))

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            status = receiver.answer(self.headers, body)
            if status == "hang":
                receiver.release.wait(30)
                self.close_connection = True
                return
            assert isinstance(status, int)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    with serving(Handler, "webhook-receiver", receiver.release) as port:
        receiver.url = f"http://127.0.0.1:{port}/hooks"
        yield receiver


@contextlib.contextmanager
def serving(
    handler: type[BaseHTTPRequestHandler], name: str, release: threading.Event
) -> Iterator[int]:
    """``handler`` served on a free 127.0.0.1 port (yielded) by a thread; at the end ``release``
    is set (for a handler holding a request until it is), and the server is shut down."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
