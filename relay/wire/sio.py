"""relay's python-socketio server: its Engine.IO layer, a fast event path, an O(1) disconnect.

:class:`RelaySocketIO` decodes a plain EVENT packet on "/" with one ``orjson.loads``, runs
the handler inline (as ``async_handlers=False`` does) and pushes the ack, encoded once, straight
to the connection; python-socketio's generic path walks every payload looking for binary
attachments on the way in and on the way out. relay's own events have plain (not async)
handlers (``fast_handlers``), run with no coroutine, task or packet object at all; and
:meth:`RelaySocketIO.handle_message_now` offers that path to an Engine.IO layer that wants to
handle a message without awaiting (straight from its protocol's ``data_received``).

python-socketio's ``BaseManager.basic_disconnect`` copies and walks every room of the namespace
to find the ones a client was in, and every client has a room of its own, so 10,000 clients
closing at once cost 10,000² steps. :class:`RelayManager` keeps the reverse index (sid -> the
rooms it entered) and walks only those.

What a client sends is bounded here too: relay's contract has no binary events, so a binary
packet may announce at most :data:`MAX_ATTACHMENTS` attachments and they may add up to the
transport limit at most (python-socketio holds them without a bound); an event whose JSON
does not parse is answered ``bad_request`` through its ack (python-socketio drops it without a
word); a session that is closing accepts no CONNECT; and a session left without a namespace
(a DISCONNECT from either side) is handed to the Engine.IO layer's connect timeout.

A CONNECT on "/" is admitted by a gate (relay.handlers), without awaiting on relay's websocket
path; an admission that must first look for its session in other processes, or register its
new sid where they look (``waits``: cluster mode, relay.backends), is finished in a task, and
the CONNECT is answered then.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson
import socketio
from bidict import bidict
from engineio import packet as eio_packet
from socketio import packet as sio_packet

from relay.errors import BadRequest, Internal, RelayError
from relay.wire.engine import RelayEngine, RelaySocket
from relay.wire.frames import text_frame
from relay.wire.websocket import FastWebSocketProtocol

log = logging.getLogger("relay.wire.sio")

#: a plain event handler: (sid, the event's arguments) -> the ack's argument (RelaySocketIO)
FastHandler = Callable[[str, list[Any]], Any]

#: binary attachments one packet may announce (relay's events carry none; a few are answered
#: bad_request by the handlers, more are refused before python-socketio holds them)
MAX_ATTACHMENTS = 8

#: the longest ack id python-socketio takes
_MAX_ACK_DIGITS = 100


class Admission(Protocol):
    """A connection on "/" that was let in (connection state recovery, relay.handlers)."""

    #: the sid of the dropped connection it takes over, or None for a new sid
    sid: str | None
    #: whether ``settle`` must be awaited before the CONNECT is answered
    waits: bool

    async def settle(self) -> None:
        """What must be done before the CONNECT is answered (it may set ``sid``)."""
        ...

    def cancel(self) -> None:
        """The Engine.IO session went while ``settle`` was awaited, or the CONNECT was refused
        after it."""
        ...

    def before_connect(self, sid: str, eio_sid: str) -> dict[str, Any]:
        """Register ``sid`` (the CONNECT answer follows); returns that answer's data."""
        ...

    def after_connect(self) -> None:
        """The CONNECT answer is out: deliver what a recovered connection missed."""
        ...


class RelayManager(socketio.AsyncManager):  # type: ignore[misc]
    """``AsyncManager`` with a sid -> rooms index."""

    def __init__(self) -> None:
        super().__init__()
        self._entered: dict[tuple[str, str], set[Any]] = {}

    def basic_enter_room(
        self, sid: str, namespace: str, room: Any, eio_sid: str | None = None
    ) -> None:
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        self._entered.setdefault((namespace, sid), set()).add(room)

    def basic_leave_room(self, sid: str, namespace: str, room: Any) -> None:
        super().basic_leave_room(sid, namespace, room)
        rooms = self._entered.get((namespace, sid))
        if rooms is not None:
            rooms.discard(room)
            if not rooms:
                del self._entered[(namespace, sid)]

    def pre_connect_as(self, sid: str, eio_sid: str, namespace: str) -> str | None:
        """``pre_connect`` with a given ``sid`` (a recovered one); None when it is in use."""
        ns_rooms = self.rooms.get(namespace)
        if ns_rooms is not None and None in ns_rooms:
            clients = ns_rooms[None]
            if sid in clients or eio_sid in clients.inverse:
                return None
        self.basic_enter_room(sid, namespace, None, eio_sid=eio_sid)
        self.basic_enter_room(sid, namespace, sid, eio_sid=eio_sid)
        self.pending_connect.setdefault(namespace, []).append(sid)
        return sid

    def pre_connect_now(self, eio_sid: str, namespace: str) -> str | None:
        """``pre_connect`` without awaiting (``AsyncManager``'s only wraps ``BaseManager``'s),
        and with the two rooms it enters (all its clients, and the sid's own) written
        directly: None when ``eio_sid`` is connected to ``namespace`` already."""
        sid: str = self.server.eio.generate_id()
        ns_rooms = self.rooms.get(namespace)
        if ns_rooms is None:
            ns_rooms = self.rooms[namespace] = {}
        clients = ns_rooms.get(None)
        if clients is None:
            clients = ns_rooms[None] = bidict()
        if not _put_new(clients, sid, eio_sid):
            return None  # (this eio_sid is connected already: a fresh sid never clashes)
        own = ns_rooms.get(sid)
        if own is None:
            own = ns_rooms[sid] = bidict()
        _put_new(own, sid, eio_sid)
        self._entered[(namespace, sid)] = {None, sid}
        self.pending_connect.setdefault(namespace, []).append(sid)
        return sid

    def connect_now(self, sid: str, namespace: str) -> None:
        """``connect`` of a pre-connected ``sid``, without awaiting: it is no longer pending."""
        waiting = self.pending_connect.get(namespace)
        if waiting is None or sid not in waiting:
            socketio.base_manager.BaseManager.connect(self, sid, namespace)
            return
        waiting.remove(sid)
        if not waiting:
            del self.pending_connect[namespace]

    def basic_disconnect(self, sid: str, namespace: str, **kwargs: Any) -> None:
        rooms = self._entered.pop((namespace, sid), None)
        ns_rooms = self.rooms.get(namespace)
        if rooms and ns_rooms is not None:
            # BaseManager.basic_leave_room for each, written out (a close storm runs this 10,000
            # times); the catch-all room (None) last, as python-socketio leaves it
            for room in rooms:
                if room is not None:
                    _leave(ns_rooms, room, sid)
            if None in rooms:
                _leave(ns_rooms, None, sid)
            if not ns_rooms:
                del self.rooms[namespace]
        self.callbacks.pop(sid, None)
        for pending in (self.pending_connect, self.pending_disconnect):
            waiting = pending.get(namespace)
            if waiting and sid in waiting:
                waiting.remove(sid)
                if not waiting:
                    del pending[namespace]


class RelaySocketIO(socketio.AsyncServer):  # type: ignore[misc]
    """python-socketio's ASGI server on :class:`relay.wire.engine.RelayEngine`."""

    manager_initialized: bool

    #: admits connections on "/" when connection state recovery is on (relay.handlers)
    gate: Callable[[Any], Admission] | None = None
    #: admits connections on "/" by awaiting (relay.connecthook), when ``gate`` is None:
    #: given the auth and the Engine.IO sid; raises ConnectionRefusedError to refuse
    async_gate: Callable[[Any, str], Awaitable[Admission]] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: plain (not async) handlers of events on "/", run straight from the packet: given
        #: the sid and the event's arguments (a list), they return the ack's one argument, a
        #: JSON-able dict. They take precedence over ``on()``'s handlers.
        self.fast_handlers: dict[str, FastHandler] = {}
        #: (the coroutine registered with ``on("disconnect")`` on "/", the same as a plain
        #: function of (sid, reason)): while that coroutine is the handler, a disconnect runs
        #: the plain one, with no task or coroutine (relay.handlers)
        self.disconnect_now: tuple[Callable[..., Any], Callable[[str, Any], Any]] | None = None
        #: CONNECTs waiting for a session looked for in other processes (``_connect_later``)
        self._connecting: set[asyncio.Task[None]] = set()
        #: called when a shutdown starts closing every session (relay.app.drain), and then
        #: awaited before it closes them (the answers still on their way go out first)
        self.before_drain: Callable[[], None] | None = None
        self.finish_answers: Callable[[], Awaitable[None]] | None = None
        eio = self.eio
        if isinstance(eio, RelayEngine):
            # python-socketio's Engine.IO "connect" handler, and the same without awaiting
            eio.connect_now = (eio.handlers.get("connect"), self._eio_connect_now)
            eio.has_namespace = self._has_namespace

    def _eio_connect_now(self, eio_sid: str, environ: dict[str, Any]) -> None:
        """``_handle_eio_connect`` (a new Engine.IO session), without awaiting."""
        if not self.manager_initialized:
            self.manager_initialized = True
            self.manager.initialize()
        self.environ[eio_sid] = environ

    def _engineio_server_class(self) -> type[RelayEngine]:
        return RelayEngine

    def _has_namespace(self, eio_sid: str) -> bool:
        """Engine.IO session ``eio_sid`` is connected (or connecting) to some namespace."""
        manager = self.manager
        return any(
            manager.sid_from_eio_sid(eio_sid, namespace) is not None
            for namespace in manager.get_namespaces()
        )

    def _session_open(self, eio_sid: str) -> bool:
        """The Engine.IO session exists and is not closing (a closed one accepts nothing)."""
        sock = self.eio.sockets.get(eio_sid)
        return sock is not None and not (sock.closing or sock.closed)

    # -- connecting and disconnecting (connection state recovery) ------------------------------

    async def _handle_connect(self, eio_sid: str, namespace: str | None, data: Any) -> None:
        # python-socketio's own, for "/" with a gate: the gate may hand back a dropped
        # connection's sid (pre_connect always makes a new one), and the CONNECT answer carries
        # the gate's data ({"sid", "pid"}), after which a recovered connection gets what it
        # missed. The gate raising ConnectionRefusedError is a connect_error, as for a handler.
        if not self._session_open(eio_sid):
            return  # (python-socketio would connect a closing session: a connection never freed)
        gate = self.gate
        async_gate = self.async_gate
        if (namespace or "/") != "/" or (gate is None and async_gate is None):
            await super()._handle_connect(eio_sid, namespace, data)
            return
        try:
            if gate is not None:
                admission = gate(data)
            else:
                assert async_gate is not None
                admission = await async_gate(data, eio_sid)
                if not self._session_open(eio_sid):
                    return  # (it went while its admission was awaited)
        except socketio.exceptions.ConnectionRefusedError as exc:
            refused = self.packet_class(sio_packet.CONNECT_ERROR, data=exc.error_args)
            await self._send_packet(eio_sid, refused)
            return
        if admission.waits:
            await admission.settle()
            if not self._session_open(eio_sid):
                admission.cancel()
                return
        await self._admit(eio_sid, admission)

    async def _connect_later(self, eio_sid: str, admission: Admission) -> None:
        """The rest of ``_connect_now`` for an admission that ``waits`` (its CONNECT is
        answered once it is settled)."""
        await admission.settle()
        if not self._session_open(eio_sid):
            admission.cancel()
            return
        sock = self.eio.sockets.get(eio_sid)
        fast = sock.fast if isinstance(sock, RelaySocket) else None
        if fast is not None and isinstance(self.manager, RelayManager):
            self._admit_now(self.manager, fast, eio_sid, admission)
            return
        await self._admit(eio_sid, admission)

    def _connect_done(self, task: asyncio.Task[None]) -> None:
        self._connecting.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("admitting a connection failed", exc_info=exc)

    async def _admit(self, eio_sid: str, admission: Admission) -> None:
        manager = self.manager
        sid = None
        if admission.sid is not None:
            sid = manager.pre_connect_as(admission.sid, eio_sid, "/")
        if sid is None:
            sid = await manager.pre_connect(eio_sid, "/")
        if sid is None:  # this Engine.IO session is already connected to "/"
            admission.cancel()
            bad = self.packet_class(sio_packet.CONNECT_ERROR, data="Unable to connect")
            await self._send_packet(eio_sid, bad)
            return
        answer = admission.before_connect(sid, eio_sid)
        await self._send_packet(eio_sid, self.packet_class(sio_packet.CONNECT, answer))
        await manager.connect(sid, "/")
        admission.after_connect()

    async def _handle_eio_disconnect(self, eio_sid: str, reason: Any) -> None:
        # An Engine.IO session that ends while still connected to a namespace ended without a
        # Socket.IO DISCONNECT (a client leaving on purpose sends one first): whatever
        # Engine.IO calls it (a polling client's CLOSE packet is "client disconnect"), for
        # Socket.IO it is a transport close, as in Node's server, and so recoverable.
        if reason == self.reason.CLIENT_DISCONNECT:
            reason = self.reason.TRANSPORT_CLOSE
        await super()._handle_eio_disconnect(eio_sid, reason)
        self._binary_packet.pop(eio_sid, None)

    async def _handle_disconnect(
        self, eio_sid: str, namespace: str | None, reason: Any = None
    ) -> None:
        await super()._handle_disconnect(eio_sid, namespace, reason)
        self.eio.expect_connect(eio_sid)  # (nothing, when the session is ending)

    async def disconnect(
        self, sid: str, namespace: str | None = None, ignore_queue: bool = False
    ) -> None:
        """python-socketio's (the server disconnects ``sid`` from a namespace); the Engine.IO
        session it leaves without a namespace is then closed after the connect timeout."""
        eio_sid = self.manager.eio_sid_from_sid(sid, namespace or "/")
        await super().disconnect(sid, namespace=namespace, ignore_queue=ignore_queue)
        if eio_sid is not None:
            self.eio.expect_connect(eio_sid)

    # -- the hot path: Socket.IO EVENT packets on "/" ------------------------------------------

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        # "2[...]" or "2<id>[...]" on the default namespace: decoded once with orjson, the
        # handler run inline (as ``async_handlers=False`` does) and the ack encoded once and
        # pushed without a task. Everything else (binary, other namespaces, CONNECT, ...) goes
        # the python-socketio way.
        binary = self._binary_packet
        if type(data) is str and data[:1] == "2" and eio_sid not in binary:
            parsed = _parse_event(data)
            if parsed is not None:
                if not self._run_fast(eio_sid, parsed[0], parsed[1]):
                    await self._fast_event(eio_sid, parsed[0], parsed[1])
                return
            if self._answer_unparsable(eio_sid, data):
                return
        held = binary.get(eio_sid)
        if held is not None:  # an attachment: within the bound, or the packet goes
            held.relay_bytes += len(data)
            if held.relay_bytes > self.eio.max_http_buffer_size:
                limit = self.eio.max_http_buffer_size
                self._refuse_binary(eio_sid, f"binary attachments over {limit} bytes in all")
                return
        elif type(data) is not str:
            return  # a binary message no packet announced: there is nothing to attach it to
        await super()._handle_eio_message(eio_sid, data)
        if held is None and eio_sid in binary:  # a binary packet announced its attachments
            held = binary[eio_sid]
            held.relay_bytes = len(data)
            if held.attachment_count > MAX_ATTACHMENTS:
                self._refuse_binary(
                    eio_sid,
                    f"a packet may carry at most {MAX_ATTACHMENTS} binary attachments,"
                    f" not {held.attachment_count}",
                )

    def _refuse_binary(self, eio_sid: str, why: str) -> None:
        """Drop the binary packet ``eio_sid`` is sending (and what it held), answering its
        ack, if it asked for one, with bad_request."""
        held = self._binary_packet.pop(eio_sid)
        log.info("%s sent a binary packet over the bound: %s", eio_sid, why)
        if held.packet_type == sio_packet.BINARY_EVENT and held.id is not None:
            self._ack_now(eio_sid, held.id, {"ok": False, "error": BadRequest(why).to_dict()})

    def _answer_unparsable(self, eio_sid: str, data: str) -> bool:
        """An EVENT on "/" with an ack id whose JSON does not parse: answered bad_request
        through the ack (True); False when ``data`` is not that (JSON too deep to decode is
        answered by the handlers: see relay.app.OrjsonModule)."""
        end = 1
        stop = min(len(data), 1 + _MAX_ACK_DIGITS)
        while end < stop and data[end].isascii() and data[end].isdigit():
            end += 1
        if end == 1 or data[end : end + 1].isdigit() or data[end : end + 1] == "/":
            return False  # no ack id (or one python-socketio refuses), or another namespace
        try:
            orjson.loads(data[end:])
        except orjson.JSONDecodeError as exc:
            if "depth" in str(exc):
                return False
            why = f"the event's JSON could not be parsed: {exc}"
        else:
            return False  # (JSON, but not an event's shape: python-socketio's way)
        manager = self.manager
        sid = manager.sid_from_eio_sid(eio_sid, "/")
        if sid is not None and manager.is_connected(sid, "/"):
            self._ack_now(
                eio_sid, int(data[1:end]), {"ok": False, "error": BadRequest(why).to_dict()}
            )
        return True

    def _ack_now(self, eio_sid: str, ack_id: int, result: dict[str, Any]) -> None:
        """Answer EVENT ``ack_id`` of ``eio_sid`` with ``result``, without awaiting."""
        sock = self.eio.sockets.get(eio_sid)
        if isinstance(sock, RelaySocket):
            text = b"3%d" % ack_id + orjson.dumps([result])
            sock.push(eio_packet.Packet(eio_packet.MESSAGE, text.decode()))

    def handle_message_now(self, eio_sid: str, data: Any) -> bool:
        """Handle one Socket.IO packet from ``eio_sid`` at once, if that needs no await.

        True: it was handled (the event's fast handler ran and its ack is pushed, or it was
        dropped as python-socketio drops an event from a session not connected to "/").
        False: nothing happened, and the caller must ``await`` the Engine.IO "message"
        handler with it (binary packets, other namespaces, CONNECT, DISCONNECT, ACK, events
        without a fast handler, sessions that are not relay's own). An Engine.IO layer can
        call this straight from its protocol's ``data_received``: it never awaits.
        """
        if type(data) is str and data[:1] == "2" and eio_sid not in self._binary_packet:
            parsed = _parse_event(data)
            if parsed is not None:
                return self._run_fast(eio_sid, parsed[0], parsed[1])
            return self._answer_unparsable(eio_sid, data)
        return False

    def handle_packet_now(self, eio_sid: str, data: Any) -> bool:
        """:meth:`handle_message_now`, plus CONNECT and DISCONNECT on "/" when they need no
        await (relay's gate and disconnect handler, on relay's websocket path): what
        :class:`relay.wire.engine.RelayEngine` calls for a websocket's messages."""
        if type(data) is str:
            kind = data[:1]
            if kind == "2":  # an EVENT, the commonest by far
                return self.handle_message_now(eio_sid, data)
            if data == "1":  # DISCONNECT from "/": the client leaves on purpose
                return self._disconnect_now(eio_sid, self.reason.CLIENT_DISCONNECT)
            if kind == "0" and (len(data) == 1 or data[1] == "{"):  # CONNECT to "/"
                return self._connect_now(eio_sid, data)
        return self.handle_message_now(eio_sid, data)

    # -- connecting without awaiting -----------------------------------------------------------

    def _connect_now(self, eio_sid: str, data: str) -> bool:
        """``_handle_connect`` on "/" with a gate, without awaiting, on relay's websocket path;
        False, having done nothing, when it cannot (no gate, not a RelayManager, ...)."""
        gate = self.gate
        manager = self.manager
        if gate is None or not isinstance(manager, RelayManager):
            return False
        sock = self.eio.sockets.get(eio_sid)
        if not isinstance(sock, RelaySocket) or sock.fast is None:
            return False
        if sock.closing or sock.closed:
            return True  # a closed session accepts nothing (its connection would never end)
        if len(data) > 1:
            try:
                auth = orjson.loads(data[1:])
            except orjson.JSONDecodeError:
                return False  # (python-socketio's way says what is wrong)
        else:
            auth = None
        fast = sock.fast
        try:
            admission = gate(auth)
        except socketio.exceptions.ConnectionRefusedError as exc:
            fast.write_frame(text_frame(b"44" + orjson.dumps(exc.error_args)))
            return True
        if admission.waits:  # (a cluster node asks Redis first: awaited)
            task = asyncio.get_running_loop().create_task(self._connect_later(eio_sid, admission))
            self._connecting.add(task)
            task.add_done_callback(self._connect_done)
            return True
        self._admit_now(manager, fast, eio_sid, admission)
        return True

    def _admit_now(
        self,
        manager: RelayManager,
        fast: FastWebSocketProtocol,
        eio_sid: str,
        admission: Admission,
    ) -> None:
        """``_admit`` without awaiting, on relay's websocket path (``fast``)."""
        sid = None
        if admission.sid is not None:
            sid = manager.pre_connect_as(admission.sid, eio_sid, "/")
        if sid is None:
            sid = manager.pre_connect_now(eio_sid, "/")
        if sid is None:  # this Engine.IO session is already connected to "/"
            admission.cancel()
            fast.write_frame(text_frame(b'44"Unable to connect"'))
            return
        answer = admission.before_connect(sid, eio_sid)
        reply = text_frame(b"40" + orjson.dumps(answer))
        fast.write_now(reply)  # (at once when nothing is queued before it; within the bound)
        manager.connect_now(sid, "/")
        admission.after_connect()

    # -- disconnecting without awaiting --------------------------------------------------------

    def _plain_disconnect(self) -> Callable[[str, Any], Any] | None:
        """The plain twin of the "disconnect" handler on "/", while that one is registered."""
        pair = self.disconnect_now
        if pair is None or not isinstance(self.manager, RelayManager):
            return None
        if self.handlers.get("/", {}).get("disconnect") is not pair[0]:
            return None
        return pair[1]

    def _disconnect_now(self, eio_sid: str, reason: Any) -> bool:
        """python-socketio's ``_handle_disconnect`` on "/", without awaiting (see
        ``disconnect_now``); False, having done nothing, when it needs the awaiting way."""
        manager = self.manager
        sid = manager.sid_from_eio_sid(eio_sid, "/")
        if sid is None or not manager.is_connected(sid, "/"):
            return True  # python-socketio ignores it too (a CLIENT DISCONNECT came first)
        handler = self._plain_disconnect()
        if handler is None:
            return False
        manager.pre_disconnect(sid, namespace="/")
        self._binary_packet.pop(eio_sid, None)
        try:
            handler(sid, reason)
        finally:
            manager.basic_disconnect(sid, "/", ignore_queue=True)
        self.eio.expect_connect(eio_sid)  # (nothing, when the session is ending)
        return True

    def handle_eio_disconnect_now(self, eio_sid: str, reason: Any) -> bool:
        """``_handle_eio_disconnect`` (the Engine.IO session ended) without awaiting, when the
        session is connected to no namespace but "/" and relay's handler is a plain function;
        False, having done nothing, otherwise (then await the Engine.IO "disconnect" handler).
        """
        manager = self.manager
        for namespace in manager.get_namespaces():
            if namespace != "/" and manager.sid_from_eio_sid(eio_sid, namespace) is not None:
                return False
        if reason == self.reason.CLIENT_DISCONNECT:  # (see _handle_eio_disconnect)
            reason = self.reason.TRANSPORT_CLOSE
        if not self._disconnect_now(eio_sid, reason):
            return False
        self.environ.pop(eio_sid, None)
        return True

    def _run_fast(self, eio_sid: str, ack_id: int | None, args: list[Any]) -> bool:
        """An event with a fast handler, run and acked without awaiting; False for others.

        No _trigger_event, no handler coroutine, no packet object; on a websocket the ack is a
        frame made from orjson's bytes, on long-polling one packet on the session's queue.
        """
        handler = self.fast_handlers.get(args[0])
        if handler is None:
            return False
        sock = self.eio.sockets.get(eio_sid)
        if not isinstance(sock, RelaySocket):
            return False  # (no such session, or not relay's: its ack would need an await)
        manager = self.manager
        sid = manager.sid_from_eio_sid(eio_sid, "/")
        if sid is None or not manager.is_connected(sid, "/"):
            return True  # python-socketio ignores it too
        result = handler(sid, args[1:])
        if ack_id is None or sock.closed:
            return True
        # python-socketio's ack rules: None is no argument, a tuple several, else one
        if type(result) is dict:
            body = b"43%d" % ack_id + orjson.dumps([result])
        elif result is None:
            body = b"43%d[]" % ack_id
        elif isinstance(result, asyncio.Future):  # answered later (relay.core.deferred)
            result.add_done_callback(functools.partial(self._ack_when_done, eio_sid, ack_id))
            return True
        else:
            ack = list(result) if isinstance(result, tuple) else [result]
            body = b"43%d" % ack_id + orjson.dumps(ack)
        fast = sock.fast
        if fast is not None:
            fast.write_frame(text_frame(body))
        else:
            sock.push(eio_packet.Packet(eio_packet.MESSAGE, body[1:].decode()))
        return True

    def _ack_when_done(self, eio_sid: str, ack_id: int, task: asyncio.Future[Any]) -> None:
        """Answer EVENT ``ack_id`` with a deferred handler's result (relay.core.deferred): its ack,
        or the error ack of the RelayError it raised (its owner logs any other exception)."""
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            result = task.result()
        else:
            error = exc if isinstance(exc, RelayError) else Internal()
            result = {"ok": False, "error": error.to_dict()}
        sock = self.eio.sockets.get(eio_sid)
        if not isinstance(sock, RelaySocket) or sock.closed:
            return
        body = b"43%d" % ack_id + orjson.dumps([result])
        fast = sock.fast
        if fast is not None:
            fast.write_frame(text_frame(body))
        else:
            sock.push(eio_packet.Packet(eio_packet.MESSAGE, body[1:].decode()))

    async def _fast_event(self, eio_sid: str, ack_id: int | None, args: list[Any]) -> None:
        manager = self.manager
        sid = manager.sid_from_eio_sid(eio_sid, "/")
        if not manager.is_connected(sid, "/"):
            return
        result = await self._trigger_event(args[0], "/", sid, *args[1:])
        if ack_id is None or result is self.not_handled:
            return
        await self._send_ack(eio_sid, ack_id, result)

    async def _send_ack(self, eio_sid: str, ack_id: int, result: Any) -> None:
        """Answer EVENT ``ack_id`` with a handler's ``result`` (python-socketio's rules)."""
        if result is None:
            ack: list[Any] = []
        elif isinstance(result, tuple):
            ack = list(result)
        else:
            ack = [result]
        try:
            text = f"3{ack_id}" + orjson.dumps(ack).decode()
        except TypeError:  # binary or exotic data: python-socketio knows how
            pkt = self.packet_class(sio_packet.ACK, namespace="/", id=ack_id, data=ack)
            await self._send_packet(eio_sid, pkt)
            return
        sock = self.eio.sockets.get(eio_sid)
        if isinstance(sock, RelaySocket):
            sock.push(eio_packet.Packet(eio_packet.MESSAGE, text))
        else:
            await self.eio.send(eio_sid, text)


def _put_new(room: bidict[str, str], sid: str, eio_sid: str) -> bool:
    """``room[sid] = eio_sid`` when ``room`` holds neither (False, and nothing done, when it
    does), written to the bidict's two dicts (python-socketio reads its ``_invm`` itself):
    bidict's own ``__setitem__`` runs ~300 bytecodes of duplicate handling, twice a connect."""
    fwd, inv = room._fwdm, room._invm
    if sid in fwd or eio_sid in inv:
        return False
    fwd[sid] = eio_sid
    inv[eio_sid] = sid
    return True


def _leave(ns_rooms: dict[Any, bidict[str, str]], room: Any, sid: str) -> None:
    """``sid`` leaves ``room`` of a namespace's rooms, and an emptied room goes."""
    room_sids = ns_rooms.get(room)
    if room_sids is None:
        return
    if room == sid:  # its own room, whole: python-socketio lets nobody else enter it
        del ns_rooms[room]
    elif sid in room_sids:
        del room_sids[sid]
        if not room_sids:
            del ns_rooms[room]


def _parse_event(data: str) -> tuple[int | None, list[Any]] | None:
    """``2<id>?[event, ...]`` on "/" -> (id, args); None when not that simple shape."""
    i = data.find("[", 1)
    if i < 0:
        return None
    digits = data[1:i]
    if digits and not (digits.isascii() and digits.isdigit()):  # ("²" is a digit to isdigit)
        return None
    try:
        args = orjson.loads(data[i:])
    except orjson.JSONDecodeError:
        return None
    if type(args) is not list or not args or type(args[0]) is not str:
        return None
    return (int(digits) if digits else None), args


__all__ = ["Admission", "FastHandler", "RelayManager", "RelaySocketIO"]
