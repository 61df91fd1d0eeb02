"""`purerpc_compat`: what it patches outside purerpc keeps its outward behaviour, and its own server
and socket writer, over real sockets on ephemeral ports (real time, bounded by fail_after; the waits
are for a condition, nothing asserts on timing)."""

from __future__ import annotations

import trio
import trio.testing
from hyperframe.frame import DataFrame

from der_actors.transport.pb import agent_pb2 as pb
from der_actors.transport.purerpc_compat import dial_grpc, receive_message, serve_grpc, serve_grpc_consumers


def test_a_data_frames_repr_is_the_text_hyperframe_gave():
    # h2 formats it for every received frame; the patch only stops hexlifying the whole payload
    assert repr(DataFrame(3, data=bytes(range(200)))) == "DataFrame(stream_id=3, flags=[]): <hex:00010203040506070809...>"
    assert repr(DataFrame(3, data=b"\x0a\x0b")) == "DataFrame(stream_id=3, flags=[]): <hex:0a0b>"
    assert repr(DataFrame(1, data=bytes(10))) == "DataFrame(stream_id=1, flags=[]): <hex:00000000000000000000>"
    assert repr(DataFrame(1)) == "DataFrame(stream_id=1, flags=[]): None"


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
