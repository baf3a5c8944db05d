"""relay.wire.websocket's frame reader: its one-whole-frame shortcut and its general loop agree.

``data_received`` takes a read holding exactly one whole, final, masked text frame under
64 KiB on a shortcut, and everything else through the general loop. The same frames fed as
whole reads (the shortcut), one byte per read and all in one read (the general loop) must give
the same messages, and the same close code for the same fault.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from relay.wire.websocket import FastWebSocketProtocol
from tests.conftest import masked_frame

MAX_SIZE = 1000


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def _protocol() -> tuple[FastWebSocketProtocol, list[Any], _Transport]:
    config = SimpleNamespace(loaded=True, loaded_app=None, ws_max_size=MAX_SIZE)
    proto = FastWebSocketProtocol(config, SimpleNamespace(), {}, asyncio.get_running_loop())
    transport = _Transport()
    proto.transport = transport  # type: ignore[assignment]
    proto.handshake_complete = True
    got: list[Any] = []
    proto.on_message = got.append
    proto.on_close = lambda: got.append("<closed>")
    return proto, got, transport


def _feed(frames: list[bytes], how: str) -> tuple[list[Any], int | None]:
    """Messages delivered and the close code sent (None: still open)."""
    proto, got, transport = _protocol()
    if how == "whole":
        chunks = frames
    elif how == "bytewise":
        joined = b"".join(frames)
        chunks = [joined[i : i + 1] for i in range(len(joined))]
    else:
        chunks = [b"".join(frames)]
    for chunk in chunks:
        proto.data_received(chunk)
    code = None
    for data in transport.written:
        if data[0] == 0x88:  # a close frame (ours: unmasked, short)
            code = int.from_bytes(data[2:4], "big")
    return got, code


HOW = ("whole", "bytewise", "joined")


@pytest.mark.parametrize("how", HOW)
async def test_every_length_class_and_kind_arrives_the_same(how: str) -> None:
    texts = ["40", "", "é" * 62 + "x", "x" * 125, "y" * 126, "ü" * 400]  # 7-bit, 16-bit
    frames = [masked_frame(0x1, t.encode()) for t in texts] + [masked_frame(0x2, b"\x00\xff")]
    frames.append(masked_frame(0x1, b"fra", fin=False) + masked_frame(0x0, b"gment"))
    got, code = _feed(frames, how)
    assert got == [*texts, b"\x00\xff", "fragment"]
    assert code is None


@pytest.mark.parametrize("how", HOW)
async def test_the_same_fault_gets_the_same_close_code(how: str) -> None:
    cases = [
        ([masked_frame(0x1, b"\xff\xfe")], 1007),  # not UTF-8
        ([masked_frame(0x1, b"z" * (MAX_SIZE + 1))], 1009),  # over the size limit, 16-bit length
        ([b"\x81\x02" + b"40"], 1002),  # unmasked
        ([masked_frame(0x1, b"ok"), masked_frame(0x1, b"\xc3")], 1007),  # after a good one
    ]
    for frames, expected in cases:
        got, code = _feed(frames, how)
        assert code == expected, (frames, how)
        assert got[-1] == "<closed>"
        assert got[:-1] == (["ok"] if len(frames) == 2 else [])
