"""A lean gRPC bidirectional-stream client for the load generator: HTTP/2 framed by hand.

Why not `dial_grpc` (purerpc) or grpcio: measured on this machine against `bench.sink`
(`./dev bench --only client`), both cost over 100 us of client CPU per 10-point message (purerpc
runs every frame through h2 + hyperframe + anyio; grpc.aio through its asyncio/Cython layers), so a
generator simulating 1,000 gateways needed a whole core for ~86,000 points/s and was the
bottleneck on this 2-core box, not the headend. The bytes on the wire here are the same HTTP/2 and
gRPC framing (one stream per TCP connection, like a real gateway; HPACK for the request headers via
the `hpack` package h2 uses), without the per-frame state machine.

What it does, and only that: client preface and SETTINGS (our receive windows at 16 MB, so the
server is never blocked on us), one HEADERS for the request, DATA frames for messages (split at the
peer's MAX_FRAME_SIZE), the peer's send windows honoured (SETTINGS INITIAL_WINDOW_SIZE and
WINDOW_UPDATE), SETTINGS and PING acknowledged, our windows replenished as data is read. The
response's HEADERS blocks are not decoded (END_STREAM on HEADERS or DATA, RST_STREAM, GOAWAY or EOF
end the stream). One reader (`receive`), any number of senders.

The socket is a plain non-blocking one: a write or read that can complete at once does (no trio
wrapper, which cost ~19 us of CPU per `send_all` here); only when it would block does the task wait
with `trio.lowlevel.wait_writable` / `wait_readable`. Writes are never interleaved: while one
waits for room, later writes queue behind it in order.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import AsyncIterator

import hpack
import trio

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7, 0x8
END_STREAM, ACK, END_HEADERS, PADDED = 0x1, 0x1, 0x4, 0x8
S_INITIAL_WINDOW_SIZE, S_MAX_FRAME_SIZE, S_ENABLE_PUSH = 0x4, 0x5, 0x2
STREAM = 1  # the only stream on each connection
OUR_WINDOW = 1 << 24
REPLENISH_AT = 1 << 22

_U32 = struct.Struct(">I")
_SETTING = struct.Struct(">HI")


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return _U32.pack(len(payload))[1:] + bytes((kind, flags)) + _U32.pack(stream_id) + payload


def grpc_message(msg: bytes) -> bytes:
    return b"\x00" + _U32.pack(len(msg)) + msg


class StreamEnded(ConnectionError):
    pass


class GrpcStream:
    """One bidirectional gRPC stream on its own TCP connection."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._wbuf = bytearray()  # written while another write waits for room
        self._writing = False
        self._rbuf = bytearray()
        self._msgbuf = bytearray()
        self._messages: list[bytes] = []
        self._ended = False
        self._conn_window = 65_535  # the peer's windows for what we send
        self._stream_window = 65_535
        self._peer_initial = 65_535
        self._max_frame = 16_384
        self._window_opened = trio.Event()
        self._received = 0  # bytes since we last replenished our windows
        self.bytes_sent = 0

    # --- sending -------------------------------------------------------------------------------

    async def _write(self, data: bytes) -> None:
        self.bytes_sent += len(data)
        if self._writing:  # another task waits for room: queue behind it, in order
            self._wbuf += data
            return
        try:
            n = self._sock.send(data)
        except BlockingIOError:
            n = 0
        if n == len(data):
            return
        self._wbuf += data[n:]
        self._writing = True
        try:
            while self._wbuf:
                await trio.lowlevel.wait_writable(self._sock)
                try:
                    n = self._sock.send(self._wbuf)
                except BlockingIOError:
                    continue
                del self._wbuf[:n]
        finally:
            self._writing = False

    async def send(self, msg: bytes) -> None:
        """Send one gRPC message (already serialised)."""
        data = grpc_message(msg)
        if len(data) <= self._max_frame and len(data) <= self._conn_window and len(data) <= self._stream_window:
            self._conn_window -= len(data)
            self._stream_window -= len(data)
            await self._write(frame(DATA, 0, STREAM, data))
            return
        view = memoryview(data)
        while view:
            if self._ended:
                raise StreamEnded("stream ended")
            room = min(self._max_frame, self._conn_window, self._stream_window)
            if room <= 0:
                self._window_opened = trio.Event()
                await self._window_opened.wait()
                continue
            chunk, view = bytes(view[:room]), view[room:]
            self._conn_window -= len(chunk)
            self._stream_window -= len(chunk)
            await self._write(frame(DATA, 0, STREAM, chunk))

    async def send_many(self, msgs: list[bytes]) -> None:
        """Send several messages in one socket write (each its own DATA frame) when the windows allow."""
        data = [grpc_message(m) for m in msgs]
        total = sum(map(len, data))
        if (len(data) > 1 and total <= self._conn_window and total <= self._stream_window
                and max(map(len, data)) <= self._max_frame):
            self._conn_window -= total
            self._stream_window -= total
            await self._write(b"".join(frame(DATA, 0, STREAM, d) for d in data))
            return
        for m in msgs:
            await self.send(m)

    async def close_send(self) -> None:
        with contextlib.suppress(OSError):
            await self._write(frame(DATA, END_STREAM, STREAM))

    # --- receiving -----------------------------------------------------------------------------

    async def receive(self) -> bytes | None:
        """The next gRPC message from the server, or None once the stream has ended."""
        while not self._messages:
            if self._ended:
                return None
            try:
                data = await self._recv()
            except OSError:
                data = b""
            if not data:
                self._end()
                return None
            self._rbuf += data
            await self._frames()
        return self._messages.pop(0)

    async def _recv(self) -> bytes:
        try:
            data = self._sock.recv(262_144)
        except BlockingIOError:
            pass
        else:
            await trio.lowlevel.checkpoint()  # data was there at once: still let others run
            return data
        while True:
            await trio.lowlevel.wait_readable(self._sock)
            try:
                return self._sock.recv(262_144)
            except BlockingIOError:
                continue

    def _end(self) -> None:
        self._ended = True
        self._window_opened.set()

    async def _frames(self) -> None:
        buf = self._rbuf
        replies: list[bytes] = []
        while len(buf) >= 9:
            length = int.from_bytes(buf[0:3], "big")
            if len(buf) < 9 + length:
                break
            kind, flags = buf[3], buf[4]
            stream_id = _U32.unpack_from(buf, 5)[0] & 0x7FFF_FFFF
            payload = bytes(buf[9:9 + length])
            del buf[:9 + length]
            if kind == DATA:
                self._received += length
                if flags & PADDED:
                    payload = payload[1:len(payload) - payload[0]]
                if stream_id == STREAM:
                    self._msgbuf += payload
                    self._split_messages()
                if flags & END_STREAM:
                    self._end()
            elif kind == HEADERS:
                if flags & END_STREAM:
                    self._end()
            elif kind == SETTINGS:
                if not flags & ACK:
                    for i in range(0, len(payload) - 5, 6):
                        ident, value = _SETTING.unpack_from(payload, i)
                        if ident == S_INITIAL_WINDOW_SIZE:
                            self._stream_window += value - self._peer_initial
                            self._peer_initial = value
                        elif ident == S_MAX_FRAME_SIZE:
                            self._max_frame = value
                    replies.append(frame(SETTINGS, ACK, 0))
                    self._window_opened.set()
            elif kind == WINDOW_UPDATE:
                inc = _U32.unpack_from(payload)[0] & 0x7FFF_FFFF
                if stream_id == 0:
                    self._conn_window += inc
                elif stream_id == STREAM:
                    self._stream_window += inc
                self._window_opened.set()
            elif kind == PING:
                if not flags & ACK:
                    replies.append(frame(PING, ACK, 0, payload))
            elif kind in (RST_STREAM, GOAWAY):
                self._end()
            # PRIORITY, PUSH_PROMISE (disabled), CONTINUATION: nothing to do
        if self._received >= REPLENISH_AT:
            inc = _U32.pack(self._received)
            replies.append(frame(WINDOW_UPDATE, 0, 0, inc) + frame(WINDOW_UPDATE, 0, STREAM, inc))
            self._received = 0
        if replies and not self._ended:
            with contextlib.suppress(OSError):
                await self._write(b"".join(replies))

    def _split_messages(self) -> None:
        buf = self._msgbuf
        while len(buf) >= 5:
            n = _U32.unpack_from(buf, 1)[0]
            if len(buf) < 5 + n:
                return
            self._messages.append(bytes(buf[5:5 + n]))
            del buf[:5 + n]


@contextlib.asynccontextmanager
async def open_stream(host: str, port: int, path: str) -> AsyncIterator[GrpcStream]:
    """Connect and open the stream (`path` like "/der.agent.v1.AgentLink/Stream"); closed on exit.
    A refused connection raises OSError."""
    tsock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        await tsock.connect((host, port))
    except BaseException:
        tsock.close()
        raise
    sock = socket.socket(fileno=tsock.detach())
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        stream = GrpcStream(sock)
        headers = hpack.Encoder().encode([
            (":method", "POST"), (":scheme", "http"), (":path", path), (":authority", f"{host}:{port}"),
            ("content-type", "application/grpc+proto"), ("te", "trailers"),
        ])
        settings = _SETTING.pack(S_ENABLE_PUSH, 0) + _SETTING.pack(S_INITIAL_WINDOW_SIZE, OUR_WINDOW)
        await stream._write(
            PREFACE + frame(SETTINGS, 0, 0, settings) + frame(WINDOW_UPDATE, 0, 0, _U32.pack(OUR_WINDOW - 65_535))
            + frame(HEADERS, END_HEADERS, STREAM, headers)
        )
        yield stream
    finally:
        trio.lowlevel.notify_closing(sock)
        sock.close()
