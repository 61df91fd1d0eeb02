"""The agent stream over gRPC (purerpc): each stream becomes an `AgentConnection` for a session actor.

Per stream, a reader (`_AgentReader`, run by the connection's reader: no task of its own) decodes
agent messages into the connection's inbound channel (telemetry waits for one of the intake's
turns, below), and a writer task encodes what the session sends. The stream ends when either side
ends: the agent closing or vanishing closes inbound (the session then ends); the session closing
outbound closes the stream.
A message that does not decode is logged and skipped; it never ends the stream or the process.
"""

from __future__ import annotations

import collections
import contextlib
import math
from collections.abc import Callable, Iterator

import structlog
import trio
from google.protobuf.message import DecodeError

from der_actors.actors.channels import send_or_wait
from der_actors.clock import WallClock
from der_actors.messages import AckState, Setpoint, SetpointAck
from der_actors.transport import codec
from der_actors.transport.link import LINK_BUFFER, AgentConnection
from der_actors.transport.pb import agent_pb2 as pb
from der_actors.transport.purerpc_compat import (
    GRPCProtoStream,
    Status,
    StatusCode,
    StreamConsumer,
    StreamOpener,
    serve_grpc_consumers,
)

log = structlog.get_logger("der.grpc")

SERVICE = "der.agent.v1.AgentLink"
METHOD = "Stream"


# Telemetry intake takes turns. At most INTAKE_TURNS streams hold one at once; a turn hands on the
# message that asked for it and those read with it (up to TURN_MESSAGES) in one step, and is held
# across one checkpoint, so a scheduler round does at most 2 x 8 messages of intake. The other
# streams wait in line with their connection's reader, so their bytes wait in TCP and hold their
# agents back (the edge spools), and their messages pile up: the next read takes more of them at
# once. A turn blocked on a full session inbox keeps its turn meanwhile (a session drains its inbox
# without waiting on anything else, so that is one round).
# Measured (`bench --only ingest`, 1,000 streams, SQLite): live 38k -> 66-74k points/s stored, merged
# 115k -> 148-164k. Without turns a round was 1,000 streams' decodes, which every hop of a dispatch
# waited for. Messages that are not telemetry never wait in line.
# Why 2 and not 16: a dispatch is ~18 rounds of the loop end to end (hypercorn's and Quart's six
# before the handler has the body among them), and under live load a round is what intake did in
# it. Interleaved at 20,000 points/s live (`bench --only dispatch`, three pairs): dispatch p99 107 /
# 132 / 184 ms against 424 / 425 / 325, as much stored (16.4k-18.5k against 17.3k-17.9k points/s);
# flood ingest no lower (two pairs: live 60k / 63k against 63k / 58k, merged 157k / 149k against
# 145k / 139k): a round's own cost is small beside the messages in it.
INTAKE_TURNS = 2
TURN_MESSAGES = 8
# One turn while a dispatch request is served (`IntakeTurns.giving_way`). One turn throughout halved
# the tail again in a slow hour (p99 45 / 69 / 75 ms against 128 / 146 / 118) but stored 14k-16k
# points/s against 17k-19k: intake under overload. Only while a dispatch waits, telemetry waits
# instead (its agents spool it; nothing is lost) and floods without dispatches keep both turns.
# Interleaved in a fast hour (`bench --only dispatch --no-postgres`): p99 28 / 25 ms against 35 / 47,
# as much stored (19.9k / 19.7k against 19.7k / 19.7k points/s).
DISPATCHING_TURNS = 1
# A stream owed the outcome of a setpoint leaves the line (its reply is queued behind its own
# telemetry: a stream is in order), so an operator's dispatch does not wait for the whole fleet's
# backlog. For at most this long after the last setpoint sent (an agent that never answers).
REPLY_PRIORITY_S = 10.0
_TELEMETRY = frozenset({"telemetry_batch", "telemetry"})


class IntakeTurns:
    """The telemetry intake's turns (`limiter`, taken by the agent streams' readers): INTAKE_TURNS,
    and DISPATCHING_TURNS while any dispatch request is being served (`giving_way`, around the REST
    handler: from its body read to the outcome it waits for)."""

    def __init__(self, turns: int = INTAKE_TURNS, dispatching_turns: int = DISPATCHING_TURNS) -> None:
        self.limiter = trio.CapacityLimiter(turns)
        self._turns = turns
        self._dispatching_turns = min(dispatching_turns, turns)
        self._dispatching = 0

    @contextlib.contextmanager
    def giving_way(self) -> Iterator[None]:
        self._dispatching += 1
        self.limiter.total_tokens = self._dispatching_turns  # turns held now run to their end
        try:
            yield
        finally:
            self._dispatching -= 1
            if not self._dispatching:
                self.limiter.total_tokens = self._turns  # wakes the streams waiting in line


class _Replies:
    """Setpoints sent on one stream whose outcome (applied or rejected) has not come back yet."""

    def __init__(self) -> None:
        self.owed = 0
        self._until = -math.inf
        self.waiting: trio.CancelScope | None = None  # the reader's wait in line for a turn

    def sent(self, msg: object) -> None:
        if isinstance(msg, Setpoint):
            self.owed += 1
            self._until = trio.current_time() + REPLY_PRIORITY_S
            if self.waiting is not None:
                self.waiting.cancel()  # the reader leaves the line: its stream now goes first

    def received(self, msg: object) -> None:
        if isinstance(msg, SetpointAck) and msg.state is not AckState.RECEIVED and self.owed:
            self.owed -= 1

    @property
    def urgent(self) -> bool:
        return self.owed > 0 and trio.current_time() < self._until


def agent_streams(accept: trio.MemorySendChannel[AgentConnection], clock: WallClock,
                  intake: trio.CapacityLimiter) -> StreamOpener:
    """Opens each AgentLink.Stream: its reader (`_AgentReader`, run by the connection's reader) and
    its writer task, which first hands the session manager its `AgentConnection`."""

    def open_stream(stream: GRPCProtoStream, request, peer: str, nursery: trio.Nursery) -> StreamConsumer:
        if request.service_name != SERVICE or request.method_name != METHOD:
            nursery.start_soon(_refuse, stream, f"{request.service_name}/{request.method_name}")
            return _Discard()
        inbound_send, inbound_recv = trio.open_memory_channel(LINK_BUFFER)
        outbound_send, outbound_recv = trio.open_memory_channel(LINK_BUFFER)
        replies = _Replies()
        reader = _AgentReader(inbound_send, peer, clock, intake, replies)
        conn = AgentConnection(peer, inbound_recv, outbound_send)
        nursery.start_soon(_serve_outbound, stream, accept, conn, outbound_recv, replies, reader)
        return reader

    return open_stream


class _Discard:
    """The consumer of a stream we refused: its messages go nowhere."""

    async def received(self, payloads: list[bytes], read_ahead: Callable[[], list[bytes]]) -> None:
        pass

    def ended(self) -> None:
        pass


async def _refuse(stream: GRPCProtoStream, what: str) -> None:
    with contextlib.suppress(Exception):
        await stream.start_response()
        await stream.close(Status(StatusCode.UNIMPLEMENTED, what))


class _AgentReader:
    """The agent stream's inbound half. Its connection's reader hands it the messages it read, in
    order: each is decoded (`codec.received_from_pb`) into the session's inbound channel, telemetry
    in one of the intake's turns. No task of its own: its waits (for a turn, for room in the
    session's inbox) hold the connection's reader, so the agent's bytes wait in TCP meanwhile.
    A message that does not decode is logged and skipped."""

    def __init__(self, inbound: trio.MemorySendChannel, peer: str, clock: WallClock,
                 intake: trio.CapacityLimiter, replies: _Replies) -> None:
        self._inbound = inbound
        self._peer = peer
        self._clock = clock
        self._intake = intake
        self._replies = replies
        self._closed = False

    async def received(self, payloads: list[bytes], read_ahead: Callable[[], list[bytes]]) -> None:
        if self._closed:
            return
        pending = collections.deque(payloads)
        try:
            while pending:
                await self._turn(pending, read_ahead)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.close()  # the session is gone

    def ended(self) -> None:
        self.close()

    def close(self) -> None:
        """No more messages to the session: its inbound channel ends. A wait in progress ends too
        (no cancel scope a message, which cost ~5 % of intake): a send waiting for room in the
        inbox raises ClosedResourceError at once, and a wait for a turn is cut short."""
        self._closed = True
        self._inbound.close()
        if self._replies.waiting is not None:
            self._replies.waiting.cancel()

    async def _turn(self, pending: collections.deque[bytes], read_ahead: Callable[[], list[bytes]]) -> None:
        """Up to TURN_MESSAGES of `pending` in one step; if the first is telemetry (and no setpoint's
        outcome is owed), in a turn, held across one checkpoint after. A stream that waited in line
        for its turn takes in it what its agent sent meanwhile (`read_ahead`), as a turn took what
        its stream's queue held when each stream had a queue (and a reader task) of its own."""
        raws = self._parsed(pending, TURN_MESSAGES)
        if not raws:
            return
        replies = self._replies
        took = False
        if raws[0].WhichOneof("body") in _TELEMETRY and not replies.urgent:
            try:
                self._intake.acquire_nowait()  # `async with` would spend a scheduler round on it
                took = True
            except trio.WouldBlock:
                pass
            if not took:  # wait in line (not inside the `except`: see actors/channels.py)
                took = await _wait_for_turn(self._intake, replies)
                pending.extend(read_ahead())
                raws += self._parsed(pending, TURN_MESSAGES - len(raws))
        try:
            for raw in raws:
                try:
                    msg = codec.received_from_pb(raw, self._clock.now())
                except codec.ProtocolError as exc:
                    log.warning("protocol_error", peer=self._peer, reason=str(exc))
                    continue
                replies.received(msg)
                await send_or_wait(self._inbound, msg)
            if took:
                await trio.lowlevel.checkpoint()
        finally:
            if took:
                self._intake.release()

    def _parsed(self, pending: collections.deque[bytes], n: int) -> list[pb.AgentMessage]:
        """The next `n` of `pending` parsed; one that does not parse is logged and skipped."""
        raws = []
        for _ in range(min(n, len(pending))):
            payload = pending.popleft()
            try:
                raws.append(pb.AgentMessage.FromString(payload))
            except DecodeError as exc:
                log.warning("protocol_error", peer=self._peer, reason=f"undecodable message: {exc}")
        return raws


async def _serve_outbound(stream: GRPCProtoStream, accept: trio.MemorySendChannel[AgentConnection],
                          conn: AgentConnection, outbound: trio.MemoryReceiveChannel, replies: _Replies,
                          reader: _AgentReader) -> None:
    """The stream's writer task: hand the session manager the connection, then send what the
    session sends until it closes its end (or the link breaks); then the reader stops too."""
    try:
        async with outbound:
            await stream.start_response()
            await accept.send(conn)
            await _write(stream, outbound, replies)
    except Exception as exc:  # the stream broke before the session had it, or the headend is stopping
        log.info("grpc_stream_ended", peer=conn.peer, error=repr(exc))
    finally:
        reader.close()


async def _wait_for_turn(intake: trio.CapacityLimiter, replies: _Replies) -> bool:
    """Wait in line for a turn. False when the wait was cut short: a setpoint went out on this
    stream, or the stream's reader closed."""
    with trio.CancelScope() as replies.waiting:
        await intake.acquire()
        return True  # no checkpoint after the acquire: a cancel now cannot undo it
    return False


async def _write(stream: GRPCProtoStream, outbound: trio.MemoryReceiveChannel, replies: _Replies) -> None:
    try:
        async for msg in outbound:
            replies.sent(msg)
            await stream.send_message(codec.headend_to_pb(msg))
    except Exception as exc:  # the socket or stream broke under us: the link is down
        log.info("grpc_write_ended", error=repr(exc))
        return
    with contextlib.suppress(Exception):
        await stream.close(Status(StatusCode.OK))


async def serve_agents(
    host: str,
    port: int,
    accept: trio.MemorySendChannel[AgentConnection],
    clock: WallClock,
    *,
    intake: IntakeTurns | None = None,
    stop_accepting: trio.Event | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve AgentLink.Stream on host:port; reports the bound port. `clock` stamps received telemetry;
    `intake`: the telemetry turns (default INTAKE_TURNS of them); once `stop_accepting` is set, dials
    are refused and the streams carry on (`serve_grpc_consumers`)."""
    intake = intake or IntakeTurns()
    async with accept:
        await serve_grpc_consumers(host, port, agent_streams(accept, clock, intake.limiter),
                                   stop_accepting=stop_accepting, task_status=task_status)
