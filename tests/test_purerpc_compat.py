"""`purerpc_compat`: what it patches outside purerpc keeps its outward behaviour, and its own server
and socket writer, over real sockets on ephemeral ports (real time, bounded by fail_after; the waits
are for a condition, nothing asserts on timing)."""

from __future__ import annotations

import functools

import pytest
import trio
import trio.testing
import h2.config
import h2.connection
from hyperframe.frame import DataFrame, Frame

from der_actors.transport.pb import agent_pb2 as pb
from der_actors.transport.purerpc_compat import dial_grpc, receive_message, serve_grpc, serve_grpc_consumers


class _TraceLog:
    """An h2 logger that keeps what it is asked to log at trace level, formatted."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def debug(self, fmtstr: str, *args) -> None:
        pass

    def trace(self, fmtstr: str, *args) -> None:
        self.lines.append(fmtstr % args)


def _client_bytes() -> bytes:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.send_headers(1, [(":method", "POST"), (":path", "/x"), (":scheme", "http"), (":authority", "h")])
    client.send_data(1, bytes(range(200)))
    return client.data_to_send()


def test_h2_formats_no_frame_unless_its_logger_logs(monkeypatch) -> None:
    formatted = []
    real_repr = Frame.__repr__
    monkeypatch.setattr(Frame, "__repr__", lambda f: formatted.append(f) or real_repr(f))
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    events = server.receive_data(_client_bytes())
    assert [type(e).__name__ for e in events] == ["RemoteSettingsChanged", "RequestReceived", "DataReceived"]
    assert formatted == []


def test_h2s_trace_log_shows_each_frame_as_hyperframe_writes_it() -> None:
    log = _TraceLog()
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, logger=log))
    server.receive_data(_client_bytes())
    frames = [line for line in log.lines if line.startswith("Received frame: ")]
    assert frames[0].startswith("Received frame: SettingsFrame(stream_id=0, flags=[]): ")
    assert frames[-1] == "Received frame: " + repr(DataFrame(1, data=bytes(range(200))))
    assert frames[-1].endswith("<hex:00010203040506070809...>")


# --- a stream served through a consumer, and the socket writer, over a real socket --------------------


class Recorder:
    """A StreamConsumer keeping each hand-over (heartbeat timestamps); `hold` makes the next one wait."""

    def __init__(self) -> None:
        self.handovers: list[list[int]] = []
        self.done = trio.Event()
        self.hold: trio.Event | None = None

    async def received(self, payloads: list[bytes], read_ahead) -> None:
        self.handovers.append([pb.AgentMessage.FromString(p).heartbeat.timestamp.seconds for p in payloads])
        if self.hold is not None:
            await self.hold.wait()

    def ended(self) -> None:
        self.done.set()

    @property
    def seen(self) -> list[int]:
        return [t for handover in self.handovers for t in handover]


def heartbeat(t: int) -> pb.AgentMessage:
    msg = pb.AgentMessage()
    msg.heartbeat.timestamp.seconds = t
    return msg


async def consumer_server(nursery: trio.Nursery, recorder: Recorder) -> tuple[int, list]:
    opened: list = []

    def opener(stream, request, peer: str, nursery: trio.Nursery) -> Recorder:
        opened.append((request.service_name, request.method_name))
        nursery.start_soon(stream.start_response)
        return recorder

    return await nursery.start(serve_grpc_consumers, "127.0.0.1", 0, opener), opened


def dial(port: int):
    return dial_grpc("127.0.0.1", port, "test.Svc", "Stream", pb.AgentMessage, pb.HeadendMessage)


async def first_handed_over(stream, recorder: Recorder) -> None:
    await stream.send_message(heartbeat(1))
    while not recorder.handovers:
        await trio.sleep(0.001)


async def test_a_consumer_gets_its_streams_messages_in_order_then_the_end() -> None:
    recorder = Recorder()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port, opened = await consumer_server(nursery, recorder)
            async with dial(port) as stream:
                for t in range(1, 31):
                    await stream.send_message(heartbeat(t))
                await stream.close()
                await recorder.done.wait()
            nursery.cancel_scope.cancel()
    assert opened == [("test.Svc", "Stream")]
    assert recorder.seen == list(range(1, 31))


async def test_a_consumer_that_waits_holds_its_connections_reader() -> None:
    recorder = Recorder()
    recorder.hold = trio.Event()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port, _ = await consumer_server(nursery, recorder)
            async with dial(port) as stream:
                await first_handed_over(stream, recorder)
                for t in range(2, 11):
                    await stream.send_message(heartbeat(t))
                await trio.testing.wait_all_tasks_blocked(cushion=0.05)
                assert recorder.seen == [1]  # the rest waits unread (in TCP) while the consumer waits
                recorder.hold.set()
                recorder.hold = None
                while len(recorder.seen) < 10:
                    await trio.sleep(0.001)
            nursery.cancel_scope.cancel()
    assert recorder.seen == list(range(1, 11))
    assert len(recorder.handovers) < 10  # what waited was read, and handed over, together


async def test_a_consumer_is_told_the_end_when_its_connection_drops() -> None:
    recorder = Recorder()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port, _ = await consumer_server(nursery, recorder)
            async with dial(port) as stream:
                await first_handed_over(stream, recorder)
            # left without closing the stream: the connection is simply gone
            await recorder.done.wait()
            nursery.cancel_scope.cancel()


async def test_once_it_stops_accepting_a_dial_is_refused_and_open_streams_carry_on() -> None:
    recorder = Recorder()
    stop = trio.Event()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(functools.partial(
                serve_grpc_consumers, "127.0.0.1", 0, lambda *_: recorder, stop_accepting=stop))
            async with dial(port) as stream:
                await first_handed_over(stream, recorder)
                stop.set()
                await trio.testing.wait_all_tasks_blocked()
                with pytest.raises(ConnectionRefusedError):
                    async with dial(port):
                        pass
                await stream.send_message(heartbeat(2))  # the stream that was open is still served
                while len(recorder.seen) < 2:
                    await trio.sleep(0.001)
            await recorder.done.wait()
            nursery.cancel_scope.cancel()
    assert recorder.seen == [1, 2]


class ThrottledSocket:
    """A real socket that takes at most 7 bytes a send and, every third send, none (full)."""

    def __init__(self, sock) -> None:
        self.sock = sock
        self.sends = 0
        self.refused = 0

    def send(self, data: bytes) -> int:
        self.sends += 1
        if self.sends % 3 == 0:
            self.refused += 1
            raise BlockingIOError
        return self.sock.send(data[:7])


async def test_bytes_the_socket_does_not_take_at_once_go_out_after_in_order() -> None:
    got: list[int] = []

    async def handler(stream, request, peer: str) -> None:
        stream.expect_message_type(pb.AgentMessage)
        while (msg := await receive_message(stream)) is not None:
            got.append(msg.heartbeat.timestamp.seconds)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_grpc, "127.0.0.1", 0, handler)
            async with dial(port) as stream:
                throttled = stream._socket._sock = ThrottledSocket(stream._socket._sock)
                for t in range(1, 51):
                    await stream.send_message(heartbeat(t))
                    if t % 10:  # the writer task catches up: the next send is tried at once again
                        await trio.sleep(0)
                while len(got) < 50:
                    await trio.sleep(0.001)
            nursery.cancel_scope.cancel()
    assert got == list(range(1, 51))
    assert throttled.refused > 0 and throttled.sends > throttled.refused  # both paths were taken
