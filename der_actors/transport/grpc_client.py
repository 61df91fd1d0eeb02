"""The edge's gRPC dial: one purerpc bidirectional stream presented as an `EdgeConnection`.

`grpc_dialer(host, port)` returns a `Dial` (a callable giving an async context manager), so the edge's
uplink runs over gRPC exactly as it runs over `MemoryNetwork`. Inside, two pumps:

- up: `EdgeConnection.outbound` -> `codec.agent_to_pb` -> `stream.send_message`; when the uplink closes
  its outbound side, the stream is half-closed cleanly (`stream.close()`);
- down: stream -> `codec.headend_from_pb` -> inbound. A malformed headend message is logged and
  skipped (the headend's fault, not a reason to drop the link); the end of the stream (or of the
  connection) closes the inbound send side, so the uplink sees `trio.EndOfChannel`.

A refused connection raises `ConnectionRefusedError` (from `dial_grpc`); transport failures while the
stream is up come out as `LinkLost`. Both are `OSError`s, which the uplink treats as a dropped link.
The context manager yields from inside its nursery (allowed by DESIGN.md rule 10: it is not an async
generator iterated by others).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import anyio
import h2.exceptions
import structlog
import trio

from der_actors.messages import AgentMessage, HeadendMessage
from der_actors.transport import codec
from der_actors.transport.link import LINK_BUFFER, EdgeConnection
from der_actors.transport.pb import agent_pb2 as pb
from der_actors.transport.purerpc_compat import GRPCProtoStream, dial_grpc, receive_message

__all__ = ["LinkLost", "grpc_dialer", "SERVICE", "METHOD"]

log = structlog.get_logger("der.edge.grpc")

SERVICE = "der.agent.v1.AgentLink"
METHOD = "Stream"
CLOSE_GRACE_S = 1.0  # time to flush what is queued and half-close the stream when leaving

# What a broken connection raises inside purerpc / anyio / h2.
_WIRE_ERRORS = (
    OSError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
    h2.exceptions.H2Error,
)


class LinkLost(ConnectionError):
    """The gRPC connection failed while the stream was up."""


def grpc_dialer(host: str, port: int) -> Callable[[], AbstractAsyncContextManager[EdgeConnection]]:
    """A `Dial` for the uplink: each call opens a fresh stream to host:port."""

    def dial() -> AbstractAsyncContextManager[EdgeConnection]:
        return _open(host, port)

    return dial


@contextlib.asynccontextmanager
async def _open(host: str, port: int) -> AsyncIterator[EdgeConnection]:
    body_failed = False
    try:
        async with dial_grpc(host, port, SERVICE, METHOD, pb.AgentMessage, pb.HeadendMessage) as stream:
            up_send, up_recv = trio.open_memory_channel[AgentMessage](LINK_BUFFER)
            down_send, down_recv = trio.open_memory_channel[HeadendMessage](LINK_BUFFER)
            with up_send, up_recv, down_recv:
                up_done = trio.Event()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_pump_up, up_recv, stream, up_done)
                    nursery.start_soon(_pump_down, stream, down_send)
                    try:
                        yield EdgeConnection(up_send, down_recv)
                    except BaseException:
                        body_failed = True
                        raise
                    finally:
                        up_send.close()  # the pump sends what is queued, then half-closes
                        with trio.move_on_after(CLOSE_GRACE_S) as grace:
                            grace.shield = True
                            await up_done.wait()
                        nursery.cancel_scope.cancel()
    except* _WIRE_ERRORS as group:
        if body_failed:
            raise  # the uplink's own exception passes through untouched
        first = group.exceptions[0]
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        if isinstance(first, ConnectionRefusedError):
            raise first from None  # a refused dial stays a refused dial
        raise LinkLost(f"gRPC link to {host}:{port} lost: {type(first).__name__}: {first}") from group


async def _pump_up(
    outbound: trio.MemoryReceiveChannel[AgentMessage], stream: GRPCProtoStream, done: trio.Event
) -> None:
    try:
        async for msg in outbound:
            await stream.send_message(codec.agent_to_pb(msg))
        with contextlib.suppress(*_WIRE_ERRORS, TypeError):  # TypeError: stream already closed
            await stream.close()
    except _WIRE_ERRORS as exc:
        log.info("grpc_send_failed", error=repr(exc))
    finally:
        done.set()


async def _pump_down(stream: GRPCProtoStream, inbound: trio.MemorySendChannel[HeadendMessage]) -> None:
    async with inbound:  # closing it tells the uplink the stream ended
        while True:
            try:
                raw = await receive_message(stream)
            except _WIRE_ERRORS as exc:
                log.info("grpc_receive_failed", error=repr(exc))
                return
            if raw is None:
                return
            try:
                msg = codec.headend_from_pb(raw)
            except codec.ProtocolError as exc:
                log.warning("grpc_bad_message", error=str(exc))
                continue
            try:
                await inbound.send(msg)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # the uplink is gone
