"""The link between an edge agent and the headend, as an interface of two channel pairs.

The headend's session actor sees an `AgentConnection` (agent messages in, headend messages out);
the edge agent sees an `EdgeConnection` (the mirror image). Whoever produces a connection (the gRPC
server, a gRPC dial, or `MemoryNetwork`) pumps bytes or objects between those channels and the
peer; the actors above never know which transport they are on.

Ending: the transport closes the inbound side when the peer goes away (the reader then sees
`trio.EndOfChannel`); the owner closes its outbound side to end the stream from its end.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator

import attrs
import trio

from der_actors.messages import AgentMessage, HeadendMessage
from der_actors.storage.base import PointRow

# A link carries whole batches, so a few dozen in flight is plenty; a full buffer applies
# backpressure to the producer rather than growing memory without bound.
LINK_BUFFER = 64


@attrs.frozen
class ReceivedPoints:
    """Telemetry as the gRPC transport hands it to a session: each point already the row the store
    buffers (`PointRow`, received_at stamped at decode; `codec.received_from_pb`).

    Decoding straight into rows makes no object per point, where a `Telemetry` and its details were
    two tracked ones: CPU, and the cyclic GC walking them (see `PointRow`). In-memory links carry
    the agent's `TelemetryBatch` as it is; a session takes both.
    """

    rows: list[PointRow]


@attrs.frozen
class AgentConnection:
    """The headend's end of one agent stream."""

    peer: str  # "ip:port" of the agent, or a name for in-memory links
    inbound: trio.MemoryReceiveChannel[AgentMessage | ReceivedPoints]
    outbound: trio.MemorySendChannel[HeadendMessage]


@attrs.frozen
class EdgeConnection:
    """The agent's end of its stream."""

    outbound: trio.MemorySendChannel[AgentMessage]
    inbound: trio.MemoryReceiveChannel[HeadendMessage]


def memory_link_pair(peer: str) -> tuple[AgentConnection, EdgeConnection]:
    """Two connected ends with no transport in between (for whole-system tests on MockClock)."""
    up_send, up_recv = trio.open_memory_channel[AgentMessage](LINK_BUFFER)
    down_send, down_recv = trio.open_memory_channel[HeadendMessage](LINK_BUFFER)
    return AgentConnection(peer, up_recv, down_send), EdgeConnection(up_send, down_recv)


class LinkRefused(ConnectionRefusedError):
    """Dialing failed (nothing listening, network down)."""


@attrs.define
class MemoryNetwork:
    """An in-memory 'network': agents dial, the headend accepts, tests can cut links.

    `accept_channel` is where the headend's session manager receives new connections; it is None
    while no headend is up (a dial is refused, as a closed port would be).
    """

    accept_channel: trio.MemorySendChannel[AgentConnection] | None = None
    _live: dict[int, tuple[AgentConnection, EdgeConnection]] = attrs.field(factory=dict)
    _ids: itertools.count = attrs.field(factory=itertools.count)
    dial_count: int = 0

    @contextlib.asynccontextmanager
    async def dial(self, peer: str) -> AsyncIterator[EdgeConnection]:
        self.dial_count += 1
        if self.accept_channel is None:
            raise LinkRefused("no headend listening")
        head, edge = memory_link_pair(peer)
        key = next(self._ids)
        self._live[key] = (head, edge)  # before the hand-over, so a cut right after accept reaches it
        try:
            try:
                await self.accept_channel.send(head)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                raise LinkRefused("headend not accepting") from None
            yield edge
        finally:
            self._live.pop(key, None)
            _close_pair(head, edge)

    def cut_all(self) -> int:
        """Drop every live link, as a network outage would. Returns how many were cut."""
        pairs = list(self._live.values())
        self._live.clear()
        for head, edge in pairs:
            _close_pair(head, edge)
        return len(pairs)


def _close_pair(head: AgentConnection, edge: EdgeConnection) -> None:
    # The simulated wire closes both send ends: each reader sees end-of-channel and each later send
    # raises ClosedResourceError, so both sides notice the drop as they would over a socket.
    edge.outbound.close()
    head.outbound.close()
