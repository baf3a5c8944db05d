"""The WebSocket frame codec's encoding side (RFC 6455 §5.2) and the unmasking it reads with.

Server-to-client frames are unmasked and final: :func:`text_frame` makes one from a packet, once
for all of a broadcast's recipients (relay.wire.transport queues the same bytes object on each).
The reading side, an incremental parser of the client's masked frames with its bounds, lives
in :class:`relay.wire.websocket.FastWebSocketProtocol` (its per-connection state is the
protocol's); it unmasks with :func:`apply_mask` (websockets' C speedup when built).
"""

from __future__ import annotations

import struct

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover  (a websockets built without its C extension)
    # the same XOR in pure Python: linear too (one big-integer XOR), about 10x slower
    from websockets.utils import apply_mask

#: fragments one message may arrive in: official clients send every message in one frame, so
#: this only stops a flood of tiny fragments (each also counts its header toward ``max_size``)
MAX_FRAGMENTS = 1024

_U16 = struct.Struct("!BBH")
_U64 = struct.Struct("!BBQ")


def frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked, final server-to-client WebSocket frame (RFC 6455 §5.2)."""
    n = len(payload)
    first = 0x80 | opcode
    if n < 126:
        return bytes((first, n)) + payload
    if n < 65536:
        return _U16.pack(first, 126, n) + payload
    return _U64.pack(first, 127, n) + payload


def text_frame(text: str | bytes) -> bytes:
    return frame(0x1, text.encode() if isinstance(text, str) else text)


def binary_frame(data: bytes) -> bytes:
    return frame(0x2, data)


def close_frame(code: int, reason: str = "") -> bytes:
    return frame(0x8, code.to_bytes(2, "big") + reason.encode()[:123])


__all__ = ["MAX_FRAGMENTS", "apply_mask", "binary_frame", "close_frame", "frame", "text_frame"]
