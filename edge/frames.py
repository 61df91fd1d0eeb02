"""Length-prefixed, checksummed frames: the record format of every spool file (pure).

    frame := u32 little-endian payload length | u32 little-endian crc32(payload) | payload

A process killed in the middle of a write, or a power loss, can leave a torn or garbage tail; the
checksum finds it, so a reader keeps every whole frame before it and nothing after it.
"""

from __future__ import annotations

import enum
import struct
import zlib
from collections.abc import Iterable

import attrs

__all__ = ["HEADER", "MAX_PAYLOAD", "Tail", "Parsed", "frame", "frames", "parse"]

HEADER = struct.Struct("<II")
MAX_PAYLOAD = 1 << 20  # no record comes near this; a bigger length is garbage


def frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def frames(payloads: Iterable[bytes]) -> bytes:
    return b"".join(frame(p) for p in payloads)


class Tail(enum.Enum):
    CLEAN = "clean"  # the buffer ended exactly after a frame
    PARTIAL = "partial"  # the buffer ends inside a frame (read more, or a torn last write)
    CORRUPT = "corrupt"  # a header or checksum that cannot be right


@attrs.frozen
class Parsed:
    records: list[tuple[int, int, bytes]]  # (offset, end offset, payload), offsets include `base`
    end: int  # offset just after the last whole frame (== base if none)
    tail: Tail


def parse(buf: bytes | memoryview, base: int = 0) -> Parsed:
    """Every whole, valid frame of `buf` from its start; `base` is the file offset of buf[0]."""
    view = memoryview(buf)
    records: list[tuple[int, int, bytes]] = []
    pos = 0
    size = len(view)
    header = HEADER.size
    while pos < size:
        if size - pos < header:
            return Parsed(records, base + pos, Tail.PARTIAL)
        length, crc = HEADER.unpack_from(view, pos)
        if length > MAX_PAYLOAD:
            return Parsed(records, base + pos, Tail.CORRUPT)
        end = pos + header + length
        if end > size:
            return Parsed(records, base + pos, Tail.PARTIAL)
        payload = bytes(view[pos + header:end])
        if zlib.crc32(payload) != crc:
            return Parsed(records, base + pos, Tail.CORRUPT)
        records.append((base + pos, base + end, payload))
        pos = end
    return Parsed(records, base + pos, Tail.CLEAN)
