"""Pre-encoded protobuf for the load generator: build bytes once, vary only seq and timestamp per send.

Protobuf parsers accept a message's fields in any order and concatenated encodings of a message
merge, so a `Telemetry` point is encoded as a constant per-asset prefix (asset_id, site_id, mw,
mw_setpoint, online, details) followed by a per-send suffix (seq, timestamp). A whole
`AgentMessage{telemetry_batch}` is then one `b"".join` of cached pieces: no protobuf object is built
per send, which keeps the generator cheap next to the process it measures.

`tests`-style self check: `python -m bench.wire` decodes a few encodings with the generated classes
and compares them with what `der_actors.transport.codec` would produce.
"""

from __future__ import annotations

import struct

from der_actors.transport.pb import agent_pb2 as pb

_DOUBLE = struct.Struct("<d")


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def key(field: int, wire_type: int) -> bytes:
    return varint(field << 3 | wire_type)


def ld(field: int, payload: bytes) -> bytes:
    """A length-delimited field (string, bytes, sub-message)."""
    return key(field, 2) + varint(len(payload)) + payload


def f64(field: int, value: float) -> bytes:
    return key(field, 1) + _DOUBLE.pack(value) if value else b""


def u64(field: int, value: int) -> bytes:
    return key(field, 0) + varint(value) if value else b""


def text(field: int, value: str) -> bytes:
    return ld(field, value.encode()) if value else b""


# AgentMessage.body field numbers and Telemetry fields (proto/agent.proto)
_AM_TELEMETRY_BATCH = 3
_TB_POINTS = 1
_T_SEQ, _T_TIMESTAMP = 3, 4


def point_prefix(asset_id: str, site_id: str, mw: float, mw_setpoint: float, soc_pct: float, energy_mwh: float) -> bytes:
    """The constant part of one BESS point (everything but seq and timestamp)."""
    bess = f64(1, soc_pct) + f64(2, energy_mwh)
    return (text(1, asset_id) + text(2, site_id) + f64(5, mw) + f64(6, mw_setpoint) + key(7, 0) + b"\x01"
            + ld(20, bess))


def point_suffix(seq: int, timestamp: float) -> bytes:
    seconds = int(timestamp)
    nanos = int((timestamp - seconds) * 1e9)
    ts = u64(1, seconds) + u64(2, nanos)
    return u64(_T_SEQ, seq) + ld(_T_TIMESTAMP, ts)


class BatchEncoder:
    """One gateway's `AgentMessage{telemetry_batch}` with every asset's point at (seq, timestamp)."""

    def __init__(self, prefixes: list[bytes]) -> None:
        self._prefixes = prefixes
        self._framed: dict[int, list[bytes]] = {}  # suffix length -> [key + len + prefix] per asset

    def _heads(self, suffix_len: int) -> list[bytes]:
        heads = self._framed.get(suffix_len)
        if heads is None:
            heads = [key(_TB_POINTS, 2) + varint(len(p) + suffix_len) + p for p in self._prefixes]
            self._framed[suffix_len] = heads
        return heads

    def encode(self, seq: int, timestamp: float, ticks: int = 1) -> bytes:
        """Ticks `seq` .. `seq + ticks - 1`, every asset's point at each, in one message (a real agent
        merges ticks that queued behind a slow send the same way, edge/link.py)."""
        parts: list[bytes] = []
        for s in range(seq, seq + ticks):
            suffix = point_suffix(s, timestamp)
            for h in self._heads(len(suffix)):
                parts.append(h)
                parts.append(suffix)
        batch = b"".join(parts)
        return key(_AM_TELEMETRY_BATCH, 2) + varint(len(batch)) + batch


class Raw:
    """Pre-encoded bytes where purerpc wants a message: `send_message` calls `SerializeToString()`;
    as an expected response type, `ParseFromString` just keeps the bytes (decode only what matters)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes = b"") -> None:
        self.data = data

    def SerializeToString(self) -> bytes:  # noqa: N802 (protobuf's name)
        return self.data

    def ParseFromString(self, data: bytes) -> None:  # noqa: N802
        self.data = data

    class DESCRIPTOR:  # what dial_grpc reads from the request type
        full_name = pb.AgentMessage.DESCRIPTOR.full_name


# HeadendMessage.body: the first byte of an encoded HeadendMessage names the field that is set.
HM_REGISTER_ACK = key(1, 2)[0]
HM_SETPOINT = key(2, 2)[0]
HM_HEARTBEAT = key(3, 2)[0]
HM_TELEMETRY_ACK = key(4, 2)[0]


def max_acked_seq(data: bytes) -> int:
    """The highest last_seq of an encoded HeadendMessage{telemetry_ack}."""
    msg = pb.HeadendMessage.FromString(data)
    return max((r.last_seq for r in msg.telemetry_ack.ranges), default=0)


def _self_check() -> None:
    from der_actors.transport import codec

    prefixes = [point_prefix(f"a{i}", "s", 0.5 + i, -1.0, 50.0, 2.0) for i in range(3)]
    enc = BatchEncoder(prefixes)
    for seq, ts in ((1, 1_800_000_000.25), (200, 1_800_000_004.5), (70_000, 1_800_000_008.0)):
        msg = codec.agent_from_pb(pb.AgentMessage.FromString(enc.encode(seq, ts)))
        assert len(msg.points) == 3, msg
        for i, p in enumerate(msg.points):
            assert (p.asset_id, p.site_id, p.seq, p.mw, p.mw_setpoint, p.online) == (f"a{i}", "s", seq, 0.5 + i, -1.0, True), p
            assert abs(p.timestamp - ts) < 1e-6 and p.details.soc_pct == 50.0, p
    merged = codec.agent_from_pb(pb.AgentMessage.FromString(enc.encode(126, 1_800_000_000.0, ticks=3)))
    assert [(p.asset_id, p.seq) for p in merged.points] == [(f"a{i}", s) for s in (126, 127, 128) for i in range(3)]
    print("bench.wire: encodings decode as intended")


if __name__ == "__main__":
    _self_check()
