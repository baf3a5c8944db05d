"""``relay hooks``: a local webhook receiver for development, the way ``stripe listen`` is.

It listens on ``--host``:``--port``, checks each request's ``X-Relay-Signature`` and
``X-Relay-Timestamp`` against the secret (a bad or stale one: 401 and a warning line), prints
the events, and, with ``--forward-to``, passes each verified request on unchanged (same body,
same headers, so the application checks the very signature relay made) and answers relay with
the application's status: a 5xx there makes relay retry, as it would against the real endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, TextIO

import orjson
import typer
from rich.console import Console
from rich.text import Text

from relay.cli.console import fail, note, stdout_closed, stdout_console, warn
from relay.cli.help import Command
from relay.cli.render import clock_text, json_line
from relay.core.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, check_signature
from relay.errors import ConfigError
from relay.settings import parse_url

if TYPE_CHECKING:
    import aiohttp
    from aiohttp import web

app = typer.Typer()

DEFAULT_HOST = "127.0.0.1"
#: the port ``relay hooks`` listens on unless told (``RELAY_WEBHOOK_URL=http://127.0.0.1:8787/``)
DEFAULT_PORT = 8787
#: seconds a forwarded request may take (relay's own default timeout is 10 s)
FORWARD_TIMEOUT = 30.0
#: headers that describe one hop, not the request: not forwarded
HOP_HEADERS = frozenset(
    ("host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade")
)


def event_text(event: dict[str, Any]) -> Text:
    """``14:02:03.123 join lobby alice (sid AbC123)``; a publish adds its event and offset."""
    ts = event.get("ts")
    line = Text(clock_text(ts) if isinstance(ts, int | float) else "--:--:--.---", style="dim")
    line.append(" ")
    line.append(str(event.get("name")), style="bold yellow")
    if event.get("room") is not None:
        line.append(" ")
        line.append(str(event["room"]), style="bold cyan")
    if event.get("name") == "publish":
        line.append(f" {event.get('event')} #{event.get('offset')}")
    line.append(" ")
    user = event.get("user")
    line.append(str(user) if user else "anonymous", style="green")
    line.append(f" (sid {event.get('sid')})", style="dim")
    return line


class Printer:
    """Events as rich lines, or (``json``) one JSON object per line on ``stream``."""

    def __init__(self, console: Console | None, stream: TextIO | None = None) -> None:
        self.console = console
        self.stream = stream

    def event(self, event: dict[str, Any]) -> None:
        if self.stream is not None:
            self.stream.write(json_line(event) + "\n")
            self.stream.flush()
        elif self.console is not None:
            self.console.print(event_text(event))


class HookReceiver:
    """Verifies, prints and forwards webhook requests (the aiohttp handler is :meth:`handle`)."""

    def __init__(
        self,
        secret: str,
        printer: Printer,
        forward_to: str | None = None,
        alert: Callable[[str], None] = warn,
    ) -> None:
        self.secret = secret
        self.printer = printer
        self.forward_to = forward_to
        self.alert = alert
        self.session: aiohttp.ClientSession | None = None
        self.fatal: BaseException | None = None
        self.stop = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        from aiohttp import web

        body = await request.read()
        why = check_signature(
            self.secret,
            request.headers.get(TIMESTAMP_HEADER),
            request.headers.get(SIGNATURE_HEADER),
            body,
        )
        if why is not None:
            self.alert(f"rejected {request.method} {request.path} from {request.remote}: {why}")
            return web.json_response(
                {"error": {"code": "unauthorized", "message": why}}, status=401
            )
        try:
            events = orjson.loads(body)["events"]
            if not isinstance(events, list):
                raise TypeError("'events' is not a list")
        except (ValueError, TypeError, KeyError) as exc:
            message = f"not a relay webhook body ({type(exc).__name__}: {exc})"
            self.alert(f"rejected {request.method} {request.path}: {message}")
            return web.json_response(
                {"error": {"code": "bad_request", "message": message}}, status=400
            )
        try:
            for event in events:
                self.printer.event(event if isinstance(event, dict) else {"name": repr(event)})
        except BrokenPipeError as exc:
            self.fatal = exc
            self.stop.set()
        if self.forward_to is None:
            return web.json_response({"ok": True, "events": len(events)})
        return await self._forward(request, body)

    async def _forward(self, request: web.Request, body: bytes) -> web.Response:
        import aiohttp
        from aiohttp import web

        assert self.session is not None and self.forward_to is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        try:
            async with self.session.post(
                self.forward_to, data=body, headers=headers, allow_redirects=False
            ) as answer:
                content = await answer.read()
                status = answer.status
                kind = answer.headers.get("Content-Type")
        except (aiohttp.ClientError, TimeoutError) as exc:
            why = str(exc) or type(exc).__name__
            self.alert(f"forwarding to {self.forward_to} failed: {why}; answered 502")
            return web.json_response(
                {"error": {"code": "unavailable", "message": f"forward failed: {why}"}},
                status=502,
            )
        if status >= 300:
            self.alert(f"{self.forward_to} answered {status}; passed on to relay")
        return web.Response(body=content, status=status, headers={"Content-Type": kind or ""})


async def serve(receiver: HookReceiver, host: str, port: int, ready: Callable[[str], None]) -> None:
    """Listen until ``receiver.stop`` is set (Ctrl-C, SIGTERM)."""
    import aiohttp
    from aiohttp import web

    server = web.Application(client_max_size=8 * 1024 * 1024)
    server.router.add_route("POST", "/{tail:.*}", receiver.handle)
    runner = web.AppRunner(server, access_log=None, handle_signals=False)
    await runner.setup()
    if receiver.forward_to is not None:
        receiver.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT)
        )
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        addresses = runner.addresses
        bound = int(addresses[0][1]) if addresses else port
        shown = f"[{host}]" if ":" in host else host
        ready(f"http://{shown}:{bound}/")
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, receiver.stop.set)
        await receiver.stop.wait()
        if receiver.fatal is not None:
            raise receiver.fatal
    finally:
        if receiver.session is not None:
            await receiver.session.close()
        await runner.cleanup()


@app.command(cls=Command)
def hooks(
    secret: Annotated[
        str | None,
        typer.Option(
            envvar="RELAY_WEBHOOK_SECRET",
            metavar="SECRET",
            help="The relay's webhook secret: requests not signed with it are answered 401.",
        ),
    ] = None,
    forward_to: Annotated[
        str | None,
        typer.Option(
            "--forward-to",
            metavar="URL",
            help="Pass each verified request on, unchanged, to this URL and answer relay with"
            " its status.",
        ),
    ] = None,
    host: Annotated[str, typer.Option(metavar="HOST", help="Interface to listen on.")] = (
        DEFAULT_HOST
    ),
    port: Annotated[
        int, typer.Option(min=0, max=65535, metavar="PORT", help="Port to listen on (0: any).")
    ] = DEFAULT_PORT,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print each event as one JSON object per line.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No status line on stderr.")] = False,
) -> None:
    """Receive relay's webhooks locally: verify each signature, print the events, forward them.

    Point a relay at it (RELAY_WEBHOOK_URL=http://127.0.0.1:8787/, the same
    RELAY_WEBHOOK_SECRET). Ctrl-C exits 0.
    """
    if not secret:
        fail("no secret: pass --secret or set RELAY_WEBHOOK_SECRET to the relay's")
    try:
        target = parse_url("--forward-to", forward_to) if forward_to else None
    except ConfigError as exc:
        fail(str(exc))
    printer = Printer(None, sys.stdout) if json_out else Printer(stdout_console())
    receiver = HookReceiver(secret, printer, target)

    def ready(url: str) -> None:
        if not quiet and not json_out:
            where = f"; forwarding to {target}" if target else ""
            note(f"listening for webhooks on {url}{where}")

    try:
        asyncio.run(serve(receiver, host, port, ready))
    except BrokenPipeError:
        stdout_closed()
    except ConfigError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        pass
