"""Running the app under uvicorn, with relay's own graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import socket
from types import FrameType
from typing import Any

import uvicorn

from relay import gctune, logjson
from relay.app import create_app, drain
from relay.errors import ConfigError
from relay.settings import Settings
from relay.wire.http import HttpProtocol
from relay.wire.websocket import FastWebSocketProtocol

log = logging.getLogger("relay")


class RelayServer(uvicorn.Server):
    """uvicorn's server, plus: on SIGTERM, stop accepting, then close every session cleanly.

    Heroku sends SIGTERM 30 s before SIGKILL. Closing Engine.IO sessions with a CLOSE packet
    (rather than dropping sockets) ends long-polls at once and tells clients to reconnect.
    """

    #: tune the garbage collector once started (process-wide: ``relay serve`` only)
    tune_gc = False

    async def startup(self, sockets: list[Any] | None = None) -> None:
        await super().startup(sockets)
        if sockets and not self.should_exit:
            # uvicorn names the address only for sockets it bound itself; relay binds first
            # (see listen), so it says where it listens the way uvicorn would
            host, port = sockets[0].getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            logging.getLogger("uvicorn.error").info(
                "Uvicorn running on http://%s:%d (Press CTRL+C to quit)", shown, port
            )
        if self.tune_gc:
            gctune.tune()

    async def shutdown(self, sockets: list[Any] | None = None) -> None:
        for server in self.servers:
            server.close()
        app = self.config.loaded_app
        sio = getattr(getattr(getattr(app, "app", None), "state", None), "sio", None)
        if sio is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(drain(sio), timeout=self.config.timeout_graceful_shutdown)
        await super().shutdown(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        # uvicorn re-raises the signal once shut down, so the process would end killed by
        # SIGTERM (exit 143); after relay's drained shutdown a SIGTERM/SIGINT stop exits 0.
        self._captured_signals.clear()


def log_config(level: str, fmt: str = "text") -> dict[str, Any]:
    """uvicorn's logging setup, with relay's own logger printed the same way (``fmt``:
    ``text``, uvicorn's lines, or ``json``, one object a line: relay.logjson)."""
    config: dict[str, Any] = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["loggers"]["relay"] = {
        "handlers": ["default"],
        "level": "DEBUG" if level == "trace" else level.upper(),
        "propagate": False,
    }
    # each websocket's "connection open" / "[accepted]" lines: debug only (see relay.wire.websocket)
    config["loggers"]["relay.ws"] = {
        "handlers": ["default"],
        "level": "DEBUG" if level in ("debug", "trace") else "WARNING",
        "propagate": False,
    }
    return logjson.json_config(config) if fmt == "json" else config


#: seconds an idle keep-alive HTTP connection stays open between requests (uvicorn's timer;
#: until a request's headers and body are in, relay.wire.guard's header timeout applies instead)
KEEP_ALIVE = 5


def uvicorn_config(settings: Settings, **extra: Any) -> uvicorn.Config:
    app = create_app(settings)
    extra.setdefault("timeout_keep_alive", KEEP_ALIVE)
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        loop="auto",  # uvloop when installed
        http=HttpProtocol,  # uvicorn's httptools protocol, freed as soon as it upgrades
        ws=FastWebSocketProtocol,  # uvicorn's, plus relay's pre-encoded-frame fast path
        ws_max_size=settings.max_frame,
        ws_ping_interval=None,  # Engine.IO pings already; a second ping doubles idle wake-ups
        ws_ping_timeout=None,
        ws_per_message_deflate=False,  # 2-6x worse broadcast latency, off in socket.io too
        lifespan="on",
        log_config=log_config(settings.log_level, settings.log_format),
        timeout_graceful_shutdown=int(settings.shutdown_timeout),
        # one line per HTTP request at info, as uvicorn users expect (websocket frames are
        # not requests; their connections log at debug: relay.ws)
        access_log=settings.log_level in ("info", "debug", "trace"),
        backlog=4096,  # a connect storm queues in the kernel, not as refused connections
        **extra,
    )


def listen(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A listening socket on ``host``:``port``, or ConfigError saying why there cannot be one.

    relay binds before anything starts (uvicorn binds after the application's start-up, so a
    port in use logged "ready" and "startup complete" before failing).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        why = exc.strerror or str(exc)
        hint = " (another relay, or another program, is using it)" if exc.errno == 98 else ""
        raise ConfigError(f"cannot listen on {host}:{port}: {why}{hint}") from None
    sock.set_inheritable(True)
    return sock


def run(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM; returns normally after a clean shutdown.

    Raises ConfigError, before anything starts, when the address cannot be listened on.
    With more than one process (:meth:`Settings.processes`), workers share the socket.
    """
    processes = settings.processes()
    sock = listen(settings.host, settings.port, reuse_port=processes > 1)
    if processes > 1:
        code = supervise(settings, sock, processes)
        if code:
            raise SystemExit(code)
        return
    serve_on(settings, sock)


def serve_on(settings: Settings, sock: socket.socket) -> None:
    server = RelayServer(uvicorn_config(settings))
    server.tune_gc = True
    server.run(sockets=[sock])


#: a worker that dies this soon after it started is not restarted (it would only die again)
RESTART_AFTER_S = 5.0


def supervise(settings: Settings, sock: socket.socket, processes: int) -> int:
    """Run ``processes`` workers on ``sock``'s port until SIGTERM or SIGINT, which each worker
    gets to drain as a single relay does; a worker that dies is started again. Returns the exit
    status: 0 when every worker stopped cleanly.

    Each worker is forked, builds its own application and event loop, and listens on a socket
    of its own bound to the port with SO_REUSEPORT, so the kernel spreads new connections over
    the workers by a hash of each connection's addresses (one shared listening socket would
    give each connection to whichever worker woke first: under load, mostly the same one).
    ``sock`` (bound with SO_REUSEPORT, never listening) holds the port for the supervisor's
    lifetime, so a worker started again finds it free."""
    import logging.config
    import os
    import signal
    import time

    logging.config.dictConfig(log_config(settings.log_level, settings.log_format))
    workers: dict[int, tuple[int, float]] = {}  # pid -> (index, started)
    stopping = False

    def start(index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = 0
            try:
                serve_on(settings, listen(*_address(sock), reuse_port=True))
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                log.exception("worker %d failed", index)
                code = 1
            finally:
                logging.shutdown()
                os._exit(code)
        workers[pid] = (index, time.monotonic())

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(workers):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("relay %d workers on %s (pid %d supervises)", processes, _where(sock), os.getpid())
    for index in range(processes):
        start(index)
    status = 0
    while workers:
        try:
            pid, wait_status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:  # (PEP 475 retries; kept for clarity)
            continue
        if pid not in workers:
            continue
        index, started = workers.pop(pid)
        code = os.waitstatus_to_exitcode(wait_status)
        if stopping:
            status = status or (0 if code == 0 else 1)
            continue
        log.error("worker %d (pid %d) exited with %d", index, pid, code)
        if time.monotonic() - started < RESTART_AFTER_S:
            log.error("worker %d died within %.0f s of starting: stopping", index, RESTART_AFTER_S)
            status = 1
            stop(signal.SIGTERM, None)
            continue
        start(index)
    sock.close()
    return status


def _address(sock: socket.socket) -> tuple[str, int]:
    host, port = sock.getsockname()[:2]
    return (f"[{host}]" if ":" in host else host), port


def _where(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
