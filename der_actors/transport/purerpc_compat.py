"""purerpc 0.8.0 made fit for production on h2 4.x (DESIGN.md section 5).

We use purerpc's HTTP/2 + gRPC framing (GRPCProtoSocket) and replace its server and client wrappers,
which is where its defects live:

- h2 4.x renamed `PingAcknowledged` to `PingAckReceived`: aliased before purerpc is imported.
- a killed peer was never noticed: when a socket's reader ends, every stream on it is ended, so a
  pending `receive_message` returns None instead of blocking forever;
- RST_STREAM was ignored: it now ends the stream the same way;
- sockets were never closed: `serve_grpc` and `dial_grpc` close what they open;
- `Server` bound all interfaces with `reuse_port`: `serve_grpc` binds the configured host itself;
- a bare `except:` swallowed cancellation: our handlers catch `Exception` only;
- no peer address in handlers: `serve_grpc` passes it to the handler.

And the per-message costs, measured under the ingest benchmark (bench/): purerpc woke its socket
writer task after every received chunk and every received message, nearly always to find nothing
to send, and to send anything (now sent from the caller's step when the socket takes it all); it
yielded to the scheduler when queueing each received event into a stream's unbounded buffer, and
again when taking one that was already there (an anyio memory stream, which on trio also waits
through an anyio event); and a message went through three coroutines to its reader.
Each is cut here without changing what goes on the wire: the transport sink (bench/sink.py) decodes
twice the points a second it did.

Two ways to serve a stream: `serve_grpc` runs a handler task per stream that reads it
(`receive_message`), as purerpc does; `serve_grpc_consumers` hands a stream's messages straight from
its connection's reader to a `StreamConsumer`, with no task or queue of the stream's own. The
consumer's waits hold the connection's reader, so what it cannot take yet waits in TCP, not in memory.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

import anyio
import anyio.abc
import h2.connection
import h2.events
import hyperframe.frame
import trio

if not hasattr(h2.events, "PingAcknowledged"):  # h2 >= 4: renamed
    h2.events.PingAcknowledged = h2.events.PingAckReceived  # type: ignore[attr-defined]

from purerpc.grpc_proto import GRPCProtoSocket, GRPCProtoStream  # noqa: E402
from purerpc.grpc_socket import SocketWrapper  # noqa: E402
from purerpc.grpclib.config import GRPCConfiguration  # noqa: E402
from purerpc.grpclib.connection import GRPCConnection  # noqa: E402
from purerpc.grpclib.events import (  # noqa: E402
    MessageReceived,
    RequestEnded,
    RequestReceived,
    ResponseEnded,
    WindowUpdated,
)
from purerpc.grpclib.status import Status, StatusCode  # noqa: E402

from der_actors.actors.channels import receive_or_wait  # noqa: E402

log = logging.getLogger(__name__)

__all__ = ["GRPCProtoStream", "Status", "StatusCode", "serve_grpc", "serve_grpc_consumers", "dial_grpc",
           "StreamHandler", "StreamConsumer", "StreamOpener"]


def _stream_reset(self: GRPCConnection, event: h2.events.StreamReset) -> list:
    # The peer abandoned the stream: end it for our reader instead of ignoring the frame. Only a
    # stream still open for reading gets an end event (purerpc drops events for unknown streams badly).
    if self.message_read_buffers.pop(event.stream_id, None) is None:
        return []
    if self.config.client_side:
        return [ResponseEnded(event.stream_id, Status(StatusCode.CANCELLED, "stream reset by peer"))]
    return [RequestEnded(event.stream_id)]


GRPCConnection._stream_reset = _stream_reset  # type: ignore[method-assign]


def _frame_as_logged(frame: hyperframe.frame.Frame) -> hyperframe.frame.Frame:
    return frame  # a logger's "%s" makes its repr, only if it logs


# h2 formats `repr(frame)` of every frame it receives for a trace log (`_receive_frame`, its only
# `repr`), whether or not anything logs: ~2 % of the headend's intake under live telemetry (a DATA
# frame's repr hexlifies its payload). The same name in h2's module hands the logger the frame
# instead, which formats the same text when it logs.
h2.connection.repr = _frame_as_logged  # type: ignore[attr-defined]


class _SocketWriter(SocketWrapper):
    """purerpc's socket writer, which sends what h2 holds at once, from the caller's step, when the
    socket takes it all. Its task sends only what the socket did not take (a full send buffer),
    and everything after that until it has caught up, so bytes go out in order. purerpc woke the
    task for every flush: two task steps for each message sent, a fifth of all the headend's."""

    def __init__(self, grpc_connection: GRPCConnection, stream: anyio.abc.SocketStream) -> None:
        super().__init__(grpc_connection, stream)
        self._sock = stream.extra(anyio.abc.SocketAttribute.raw_socket)  # non-blocking (trio's)
        self._unsent = b""  # what the socket did not take: the task sends it before anything else
        self._task_sending = False
        self._flush_event = trio.Event()  # cheaper to make than anyio's, and we only run on trio

    async def _writer_thread(self) -> None:
        while True:
            data = self._unsent or self._grpc_connection.data_to_send()
            self._unsent = b""
            if data:
                self._task_sending = True
                try:
                    await self._stream.send(data)
                finally:
                    self._task_sending = False
            elif self._running:
                await self._flush_event.wait()
                self._flush_event = trio.Event()
            else:
                return

    async def flush(self) -> None:
        self.wake()

    def recv_nowait(self, size: int) -> bytes:
        """What the socket holds now (b"" at its end); BlockingIOError when nothing is there."""
        return self._sock.recv(size)

    def wake(self) -> None:
        """Send what h2 holds: now if the socket takes it, else by the task."""
        if self._task_sending or self._unsent:
            self._flush_event.set()  # the task is behind: it takes this too, in order
            return
        data = self._grpc_connection.data_to_send()
        if not data:
            return
        try:
            sent = self._sock.send(data)
        except OSError:  # full (BlockingIOError) or broken: the task's send waits, or raises where that is handled
            sent = 0
        if sent < len(data):
            self._unsent = data[sent:]
            self._flush_event.set()


def _nothing_ahead() -> list[bytes]:
    return []


class StreamConsumer(Protocol):
    """Takes one stream's messages from its connection's reader (`serve_grpc_consumers`)."""

    async def received(self, payloads: list[bytes], read_ahead: Callable[[], list[bytes]]) -> None:
        """The stream's next messages in order, as their gRPC payloads (already acknowledged to
        HTTP/2 flow control). Must not raise: it runs in the connection's reader.

        `read_ahead()` returns the stream's messages that have arrived since (read without waiting;
        what else was read is kept for the connection's reader): a consumer that waited can take
        what piled up meanwhile in the same step."""

    def ended(self) -> None:
        """No more messages: the peer ended or reset the stream, or the connection is gone."""


class _Stream(GRPCProtoStream):
    """Received events queue in a trio channel (purerpc's anyio memory stream costs more per item
    on trio), and `receive_message` takes, acknowledges and parses a message in one coroutine.
    A stream with a `consumer` gets its messages from the connection's reader instead."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._incoming_events = trio.open_memory_channel(math.inf)  # (send, receive), as purerpc's
        self.consumer: StreamConsumer | None = None

    def _take(self, event):
        """Book an event taken from the queue: a message's bytes are acknowledged (HTTP/2 flow control)."""
        if isinstance(event, MessageReceived):
            self._grpc_connection.acknowledge_received_data(self._stream_id, event.flow_controlled_length)
            self._socket.wake()
        elif isinstance(event, (RequestEnded, ResponseEnded)):
            assert self._end_stream_event is None
            self._end_stream_event = event
        else:
            assert self._start_stream_event is None
            self._start_stream_event = event

    async def _receive(self):
        event = await receive_or_wait(self._incoming_events[1])  # one queued: no scheduler trip
        self._take(event)
        return event

    async def receive_message(self):
        """purerpc's receive_message, receive_event and _receive in one coroutine (this runs for
        every message): the next message parsed, or None once the stream has ended."""
        while True:
            event = await receive_or_wait(self._incoming_events[1])
            self._take(event)
            if isinstance(event, MessageReceived):
                message = self._incoming_message_type()
                message.ParseFromString(event.data)
                return message
            if isinstance(event, (RequestEnded, ResponseEnded)):
                return None


class _Socket(GRPCProtoSocket):
    """A GRPCProtoSocket whose streams end when the connection's reader ends (and the cheaper
    per-message path of `_SocketWriter` and `_Stream`)."""

    StreamClass = _Stream

    def __init__(self, config: GRPCConfiguration, sock: anyio.abc.SocketStream) -> None:
        super().__init__(config, sock)
        self._socket = _SocketWriter(self._grpc_connection, sock)  # replaces purerpc's, before first use
        self._read_ahead: list = []  # events a consumer's read-ahead read that were not its own

    def end_all_streams(self) -> None:
        for stream in list(self._streams.values()):
            if stream.consumer is not None:
                stream.consumer.ended()
            stream._incoming_events[0].close()

    async def _listen(self):
        """purerpc's reader loop, queueing events without a checkpoint each (the buffers are
        unbounded, so the send never waits; the socket read is where this task yields), or handing
        a consumer's messages to it: those of one stream in a row go together."""
        connection = self._grpc_connection
        while True:
            if self._read_ahead:  # what a consumer's read-ahead read besides its own messages
                events, self._read_ahead = self._read_ahead, []
            else:
                try:
                    data = await self._socket.recv(self._receive_buffer_size)
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return
                events = connection.receive_data(data)
                self._socket.wake()  # h2's replies to what was read: settings and ping acks
            held: list[bytes] = []  # messages for `holder`, handed on when its run ends
            holder = None
            for event in events:
                stream = self._streams.get(event.stream_id)
                if held and (stream is not holder or not isinstance(event, MessageReceived)):
                    await holder.consumer.received(held, _nothing_ahead)  # others' events follow: keep order
                    held = []
                if stream is not None and stream.consumer is not None:
                    if isinstance(event, MessageReceived):
                        connection.acknowledge_received_data(event.stream_id, event.flow_controlled_length)
                        held.append(event.data)
                        holder = stream
                        continue
                    if isinstance(event, (RequestEnded, ResponseEnded)):
                        stream.consumer.ended()
                        stream._close_remote()
                        continue
                if isinstance(event, WindowUpdated):
                    if event.stream_id == 0:
                        for stream in self._streams.values():
                            await stream._set_flow_control_update()
                    elif event.stream_id in self._streams:
                        await self._streams[event.stream_id]._set_flow_control_update()
                    continue
                if isinstance(event, RequestReceived):
                    self._allocate_stream(event.stream_id)
                self._streams[event.stream_id]._incoming_events[0].send_nowait(event)
                if isinstance(event, RequestReceived):
                    yield self._streams[event.stream_id]
                elif isinstance(event, (ResponseEnded, RequestEnded)):
                    self._streams[event.stream_id]._close_remote()
            if held:
                await holder.consumer.received(held, lambda: self._read_ahead_for(holder))
            self._socket.wake()  # the window updates for what the consumers took

    def _read_ahead_for(self, stream: _Stream) -> list[bytes]:
        """The messages of `stream` the socket holds now, read without waiting, up to the first
        event that is not one of them; the events from there on wait for `_listen`, in order."""
        if self._read_ahead:
            return []  # read ahead before: what follows in order is not this stream's message
        try:
            data = self._socket.recv_nowait(self._receive_buffer_size)
        except OSError:
            return []  # nothing there, or the socket is broken: `_listen`'s next read says which
        if not data:
            return []  # the peer closed: `_listen`'s next read sees it too
        events = self._grpc_connection.receive_data(data)
        self._socket.wake()
        taken = []
        for i, event in enumerate(events):
            if event.stream_id != stream._stream_id or not isinstance(event, MessageReceived):
                self._read_ahead = events[i:]
                break
            self._grpc_connection.acknowledge_received_data(event.stream_id, event.flow_controlled_length)
            taken.append(event.data)
        return taken

    async def _reader_thread(self) -> None:  # client side: purerpc's reader task
        try:
            async for _ in self._listen():
                log.warning("grpc: server opened a stream on a client connection; ignored")
        except Exception as exc:  # a broken socket is a dropped link, not our crash
            log.debug("grpc client reader ended: %r", exc)
        finally:
            self.end_all_streams()


async def receive_message(stream: GRPCProtoStream):
    """The next message, or None when the stream ended (peer closed, reset, or connection lost)."""
    try:
        return await stream.receive_message()
    except (anyio.EndOfStream, anyio.ClosedResourceError, trio.EndOfChannel, trio.ClosedResourceError):
        return None


StreamHandler = Callable[[GRPCProtoStream, RequestReceived, str], Awaitable[None]]
# Called by the connection's reader when a stream opens, before any of its messages is read; may
# start the stream's other tasks (its writer) in the nursery, which is the connection's.
StreamOpener = Callable[[GRPCProtoStream, RequestReceived, str, trio.Nursery], StreamConsumer]


def _peer_of(sock: anyio.abc.SocketStream) -> str:
    try:
        addr = sock.extra(anyio.abc.SocketAttribute.remote_address)
    except Exception:
        return "unknown"
    if isinstance(addr, tuple):
        host, port = addr[0], addr[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(addr)


async def _serve_connection(sock: anyio.abc.SocketStream, handler: StreamHandler | None,
                            opener: StreamOpener | None) -> None:
    peer = _peer_of(sock)
    async with sock:
        try:
            async with _Socket(GRPCConfiguration(client_side=False), sock) as grpc_socket:
                async with trio.open_nursery() as nursery:
                    async for stream in grpc_socket.listen():
                        if opener is None:
                            nursery.start_soon(_serve_stream, handler, stream, peer)
                            continue
                        # The reader waits here, so the consumer is in place before the stream's
                        # first message is read.
                        request = stream._incoming_events[1].receive_nowait()  # queued just now
                        stream._take(request)
                        stream.consumer = opener(stream, request, peer, nursery)
                    # The socket's reader ended: the peer is gone. End every stream so handlers
                    # reading them finish, rather than waiting forever.
                    grpc_socket.end_all_streams()
        except Exception as exc:
            log.info("grpc connection from %s ended: %r", peer, exc)


async def _serve_stream(handler: StreamHandler, stream: GRPCProtoStream, peer: str) -> None:
    try:
        await stream.start_response()
        event = await stream.receive_event()
        if not isinstance(event, RequestReceived):
            await stream.close(Status(StatusCode.INTERNAL, "expected request headers"))
            return
        await handler(stream, event, peer)
    except Exception as exc:
        log.info("grpc stream from %s ended with %r", peer, exc)
        with contextlib.suppress(Exception):
            await stream.close(Status(StatusCode.INTERNAL, "stream handler failed"))


async def serve_grpc(
    host: str,
    port: int,
    handler: StreamHandler,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on host:port (port 0 picks one) and run `handler(stream, request, peer)` per stream.

    `task_status.started(port)` reports the bound port once listening.
    """
    await _serve(host, port, handler, None, task_status)


async def serve_grpc_consumers(
    host: str,
    port: int,
    opener: StreamOpener,
    *,
    stop_accepting: trio.Event | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on host:port (port 0 picks one); for each stream `opener(stream, request, peer,
    nursery)` returns the `StreamConsumer` its messages go to. Reports the bound port. Once
    `stop_accepting` is set the port is closed (a dial is refused) and the connections carry on
    until they end or this is cancelled."""
    await _serve(host, port, None, opener, task_status, stop_accepting)


async def _serve(host: str, port: int, handler: StreamHandler | None, opener: StreamOpener | None,
                 task_status: trio.TaskStatus[int], stop_accepting: trio.Event | None = None) -> None:
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    async with anyio.create_task_group() as connections:  # outlives the listener
        async with listener:
            bound = listener.extra(anyio.abc.SocketAttribute.local_port)
            task_status.started(bound)
            with anyio.CancelScope() as accepting:
                if stop_accepting is not None:
                    connections.start_soon(_cancel_on, stop_accepting, accepting)
                await listener.serve(lambda sock: _serve_connection(sock, handler, opener), task_group=connections)


async def _cancel_on(event: trio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


@contextlib.asynccontextmanager
async def dial_grpc(
    host: str, port: int, service: str, method: str, request_type: type, response_type: type
) -> AsyncIterator[GRPCProtoStream]:
    """Open one bidirectional stream to host:port; the connection is closed on exit."""
    try:
        sock = await anyio.connect_tcp(host, port)
    except OSError as exc:
        raise ConnectionRefusedError(f"cannot connect to {host}:{port}: {exc}") from exc
    sock.extra(anyio.abc.SocketAttribute.raw_socket).setsockopt(
        socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
    )
    async with sock:
        async with _Socket(GRPCConfiguration(client_side=True), sock) as grpc_socket:
            stream = await grpc_socket.start_request(
                "http",
                service,
                method,
                request_type.DESCRIPTOR.full_name,
                f"{host}:{port}",
            )
            stream.expect_message_type(response_type)
            yield stream
