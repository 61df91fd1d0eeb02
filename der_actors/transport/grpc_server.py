"""The agent stream over gRPC (purerpc): each stream becomes an `AgentConnection` for a session actor.

Per stream, a reader decodes agent messages into the connection's inbound channel, and a writer
encodes what the session sends. The stream ends when either side ends: the agent closing or
vanishing closes inbound (the session then ends); the session closing outbound closes the stream.
A message that does not decode is logged and skipped; it never ends the stream or the process.
"""

from __future__ import annotations

import contextlib

import structlog
import trio
from google.protobuf.message import DecodeError

from der_actors.clock import WallClock
from der_actors.transport import codec
from der_actors.transport.link import LINK_BUFFER, AgentConnection
from der_actors.transport.pb import agent_pb2 as pb
from der_actors.transport.purerpc_compat import GRPCProtoStream, Status, StatusCode, receive_message, serve_grpc

log = structlog.get_logger("der.grpc")

SERVICE = "der.agent.v1.AgentLink"
METHOD = "Stream"


def stream_handler(accept: trio.MemorySendChannel[AgentConnection], clock: WallClock):
    async def handle(stream: GRPCProtoStream, request, peer: str) -> None:
        if request.service_name != SERVICE or request.method_name != METHOD:
            await stream.close(Status(StatusCode.UNIMPLEMENTED, f"{request.service_name}/{request.method_name}"))
            return
        stream.expect_message_type(pb.AgentMessage)
        inbound_send, inbound_recv = trio.open_memory_channel(LINK_BUFFER)
        outbound_send, outbound_recv = trio.open_memory_channel(LINK_BUFFER)
        async with inbound_send, outbound_recv:
            await accept.send(AgentConnection(peer, inbound_recv, outbound_send))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_read, stream, inbound_send, peer, clock)
                await _write(stream, outbound_recv)
                nursery.cancel_scope.cancel()

    return handle


async def _read(stream: GRPCProtoStream, inbound: trio.MemorySendChannel, peer: str, clock: WallClock) -> None:
    async with inbound:
        while True:
            try:
                raw = await receive_message(stream)
            except DecodeError as exc:
                log.warning("protocol_error", peer=peer, reason=f"undecodable message: {exc}")
                continue
            if raw is None:
                return
            try:
                msg = codec.received_from_pb(raw, clock.now())
            except codec.ProtocolError as exc:
                log.warning("protocol_error", peer=peer, reason=str(exc))
                continue
            try:
                await inbound.send(msg)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # the session is gone


async def _write(stream: GRPCProtoStream, outbound: trio.MemoryReceiveChannel) -> None:
    try:
        async for msg in outbound:
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
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve AgentLink.Stream on host:port; reports the bound port. `clock` stamps received telemetry."""
    async with accept:
        await serve_grpc(host, port, stream_handler(accept, clock), task_status=task_status)
