"""The session actor: one per agent stream. Registration, routing, liveness.

It owns the stream's outbound channel. Inbound messages are routed to asset actors (latest value),
the store (history) and dispatch actors (acks); setpoints from dispatch actors arrive through its
command inbox and go out in order. A session ends when the agent closes the stream, the link drops,
nothing arrives for `heartbeat_timeout_s` (stale), or every asset it served was taken over; the reason
is logged, shown in `/agents` and stored.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence

import attrs
import structlog
import trio

from der_actors.acks import AckSlots, PendingAcks, seqs_by_asset
from der_actors.actors.asset import Connected, Disconnected
from der_actors.actors.channels import receive_or_wait, send_or_wait
from der_actors.actors.context import HeadendContext
from der_actors.messages import (
    Heartbeat,
    Register,
    RegisterAck,
    Rejection,
    Setpoint,
    SetpointAck,
    Telemetry,
    TelemetryAck,
    TelemetryBatch,
)
from der_actors.registration import review_register
from der_actors.storage.base import HeartbeatRow, PointRow
from der_actors.storage.rows import point_row
from der_actors.transport.link import AgentConnection, ReceivedPoints
from der_actors.views import SessionSummary

log = structlog.get_logger("der.session")

# Setpoints and takeover notices. On registration every pending dispatch for the session's assets
# arrives at once (at most one per asset and one per site: newer ones supersede older). Full means
# the agent is not draining its stream; a dispatch then fails fast instead of queueing behind it.
COMMAND_INBOX = 1024
# TelemetryAcks to one agent each cover everything stored since the last. They go in slots every
# ACK_INTERVAL_S, at a phase of the session's own (`acks.AckSlots`), so one commit's acks to hundreds
# of agents do not go out in one scheduler round; or at once when ACK_AT_ONCE_POINTS are pending, so
# an agent sending a backlog, or a flood, hears promptly (the bench's flood keeps 8 ticks, 80 points,
# a gateway unacknowledged: acks a second apart would halve it). Under load the store commits many
# small batches a second, and an ack message per commit cost as much as the telemetry it
# acknowledged. Live dispatch p99 (`bench --only dispatch --no-postgres`, interleaved): acked as
# soon as stored, at most every 0.25 s, 40 / 58 ms; in 1 s slots 24 / 16 / 28 / 18 ms, as much
# stored or more (1 s without slots 28 / 32; 0.25 s slots no better than none); with
# ACK_AT_ONCE_POINTS too, 17 / 25 against 37 / 37, and the flood as before. An agent ticking lightly
# hears that a point is stored up to 1 s later; it resends only after 60 s (`edge/delivery.py`).
ACK_INTERVAL_S = 1.0
ACK_AT_ONCE_POINTS = 32
LINK_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError)


@attrs.frozen
class _LostAsset:
    asset_id: str
    reason: str


@attrs.frozen
class _Close:
    reason: str


class SessionHandle:
    """Others' view of a session. Attributes are written by the session actor only, except the ack
    queue (`acks_pending`, `ack_due`, `ack_full`), which `ack_stored` fills for the session's ack loop."""

    def __init__(self, session_id: str, peer: str, commands: trio.MemorySendChannel) -> None:
        self.session_id = session_id
        self.peer = peer
        self._commands = commands
        self.summary: SessionSummary | None = None  # set once registered
        self.is_gateway = False
        self.last_seen = 0.0
        self.points = 0
        self.ignored_points = 0
        self.acks_pending = PendingAcks()  # stored, not yet acknowledged (see ACK_INTERVAL_S)
        self.ack_due = trio.Event()  # points are pending
        self.ack_full = trio.Event()  # ACK_AT_ONCE_POINTS are

    def send_setpoint(self, setpoint: Setpoint) -> bool:
        """Queue a setpoint for the agent; False when the session cannot take it (closing or stuck)."""
        try:
            self._commands.send_nowait(setpoint)
            return True
        except (trio.WouldBlock, *LINK_ERRORS):
            return False

    def ack_stored(self, asset_id: str, seqs: list[int]) -> None:
        """Tell the agent these points of the asset are stored (in the session's next TelemetryAck)."""
        pending = self.acks_pending
        pending.add(asset_id, seqs)
        self.ack_due.set()
        if pending.points >= ACK_AT_ONCE_POINTS:
            self.ack_full.set()

    def lost_asset(self, asset_id: str, reason: str) -> None:
        try:
            self._commands.send_nowait(_LostAsset(asset_id, reason))
        except (trio.WouldBlock, *LINK_ERRORS):
            pass  # the routing table is authoritative; this notice only closes the stream early

    def close(self, reason: str) -> None:
        try:
            self._commands.send_nowait(_Close(reason))
        except (trio.WouldBlock, *LINK_ERRORS):
            pass


@attrs.define
class Session:
    ctx: HeadendContext
    conn: AgentConnection
    handle: SessionHandle
    commands: trio.MemoryReceiveChannel
    primary_asset_id: str = ""
    site_id: str = ""
    owned: set[str] = attrs.field(factory=set)
    _warned: set[str] = attrs.field(factory=set)
    _end_reason: str = ""
    _stop: trio.CancelScope | None = None
    _heard_at: float = 0.0  # trio time of the last message from the agent

    # --- lifecycle -----------------------------------------------------------------------------

    async def run(self) -> None:
        reason = "closed by headend"
        try:
            reason = await self._serve()
        except LINK_ERRORS:
            reason = "stream closed"
        finally:
            with trio.CancelScope(shield=True):
                await self._cleanup(reason)

    async def _serve(self) -> str:
        ctx, conn = self.ctx, self.conn
        first = None
        with trio.move_on_after(ctx.config.heartbeat_timeout_s):
            try:
                first = await conn.inbound.receive()
            except trio.EndOfChannel:
                return "stream closed before register"
        if first is None:
            return f"no register within {ctx.config.heartbeat_timeout_s:g} s"
        return await self._registered(first)

    async def _registered(self, first: object) -> str:
        ctx, conn, handle = self.ctx, self.conn, self.handle
        if not isinstance(first, Register):
            log.warning("protocol_error", peer=handle.peer, reason="first message is not register", got=type(first).__name__)
            return "protocol error: first message must be register"
        review = review_register(first, ctx.inventory)
        if review.refusal:
            log.warning("session_refused", peer=handle.peer, gateway_id=first.gateway_id, reason=review.refusal)
            await conn.outbound.send(
                RegisterAck(handle.session_id, (), tuple(Rejection(a, review.refusal) for a in [first.asset_id] if a))
            )
            return f"refused: {review.refusal}"
        for r in review.rejected:
            log.warning(
                "claim_rejected", asset_id=r.asset_id, site_id=first.site_id, session_id=handle.session_id,
                peer=handle.peer, gateway_id=first.gateway_id, reason=r.reason,
            )
        now = ctx.clock.now()
        self.primary_asset_id = first.asset_id
        self.site_id = first.site_id
        self.owned = set(review.accepted)
        summary = SessionSummary(
            session_id=handle.session_id, agent_id=first.agent_id, gateway_id=first.gateway_id or first.agent_id,
            site_id=first.site_id, peer=handle.peer, connected_at=now, asset_ids=review.accepted,
        )
        handle.summary, handle.is_gateway, handle.last_seen = summary, review.is_gateway, now
        if review.accepted:
            await ctx.directory.claim(handle, review.accepted)
            for asset_id in review.accepted:
                await ctx.assets[asset_id].send(Connected(summary))
        ctx.store.record_session(summary)
        await conn.outbound.send(RegisterAck(handle.session_id, review.accepted, review.rejected))
        ctx.dispatches.targets_online(review.accepted)  # what waited for these assets goes out first
        log.info(
            "session_connected", session_id=handle.session_id, peer=handle.peer, gateway_id=summary.gateway_id,
            site_id=summary.site_id, accepted=len(review.accepted), rejected=len(review.rejected),
            agent_version=first.agent_version,
        )
        if not review.accepted:
            return "no asset accepted"
        reason = ""
        async with trio.open_nursery() as nursery:
            self._stop = nursery.cancel_scope
            nursery.start_soon(self._commands_loop)
            nursery.start_soon(self._ack_loop)
            nursery.start_soon(self._heartbeat_loop)
            self._heard_at = trio.current_time()
            nursery.start_soon(self._stale_watch)
            reason = await self._inbound_loop()
            nursery.cancel_scope.cancel()
        return self._end_reason or reason

    def _end(self, reason: str) -> None:
        """End the session from one of its loops (the first reason wins)."""
        self._end_reason = self._end_reason or reason
        self._stop.cancel()

    async def _cleanup(self, reason: str) -> None:
        ctx, handle = self.ctx, self.handle
        self.conn.outbound.close()
        if handle.summary is None:
            log.info("session_closed", session_id=handle.session_id, peer=handle.peer, reason=reason)
            return
        now = ctx.clock.now()
        asset_ids = handle.summary.asset_ids
        await ctx.directory.release(handle.session_id, asset_ids)
        for asset_id in asset_ids:
            await ctx.assets[asset_id].send(Disconnected(handle.session_id, now, reason))
        ctx.store.record_session(attrs.evolve(handle.summary, disconnected_at=now, reason=reason))
        log.info(
            "session_closed", session_id=handle.session_id, peer=handle.peer, gateway_id=handle.summary.gateway_id,
            site_id=handle.summary.site_id, reason=reason, points=handle.points,
        )

    # --- the loops -----------------------------------------------------------------------------

    async def _inbound_loop(self) -> str:
        while True:
            try:
                msg = await receive_or_wait(self.conn.inbound)
            except trio.EndOfChannel:
                return "stream closed by agent"
            self._heard_at = trio.current_time()
            self.handle.last_seen = self.ctx.clock.now()
            await self._on_message(msg)

    async def _stale_watch(self) -> None:
        """End the session once the agent has been silent for the heartbeat timeout. A timer of its
        own, re-armed only when it falls due: moving a cancel scope's deadline at every message
        was ~4 % of the headend's intake (trio re-sorts its deadlines for each move)."""
        timeout = self.ctx.config.heartbeat_timeout_s
        while (due := self._heard_at + timeout) > trio.current_time():
            await trio.sleep_until(due)
        self._end(f"stale: no message for {timeout:g} s")

    async def _on_message(self, msg: object) -> None:
        if isinstance(msg, ReceivedPoints):
            self._on_rows(msg.rows)
        elif isinstance(msg, TelemetryBatch):
            self._on_rows([point_row(p, self.handle.last_seen) for p in msg.points])
        elif isinstance(msg, Telemetry):
            self._on_rows([point_row(msg, self.handle.last_seen)])
        elif isinstance(msg, Heartbeat):
            s = self.handle.summary
            self.ctx.store.record_heartbeat(
                HeartbeatRow(s.session_id, s.gateway_id, s.site_id, tuple(sorted(self.owned)), msg.timestamp, self.handle.last_seen)
            )
        elif isinstance(msg, SetpointAck):
            self.ctx.dispatches.route_ack(msg, self.handle.session_id)
        else:
            log.warning("protocol_error", session_id=self.handle.session_id, peer=self.handle.peer,
                        reason="unexpected message after register", got=type(msg).__name__)

    def _on_rows(self, rows: list[PointRow]) -> None:
        """Points as the store's rows (`PointRow`: asset_id, seq, ts, received_at, site_id, mw,
        mw_setpoint, ...): checked, offered to their asset's "now", then recorded."""
        owners = self.ctx.directory.owners
        assets = self.ctx.assets
        session_id = self.handle.session_id
        stored: list[PointRow] = []
        for r in rows:
            if not (math.isfinite(r[5]) and math.isfinite(r[6])):
                self._reject_point(r, "mw and mw_setpoint must be finite numbers")
                continue
            if not r[0]:  # legacy: belongs to the session's primary asset
                r = (self.primary_asset_id, r[1], r[2], r[3], r[4] or self.site_id, *r[5:])
            if owners.get(r[0]) != session_id:
                self._ignore_point(r[0])
                continue
            assets[r[0]].offer_telemetry(r)
            stored.append(r)
        self.handle.points += len(stored)
        if stored:
            self.ctx.store.record_points(stored)

    def _ignore_point(self, asset_id: str) -> None:
        self.handle.ignored_points += 1
        if asset_id not in self._warned:
            self._warned.add(asset_id)
            log.warning("telemetry_ignored", asset_id=asset_id, session_id=self.handle.session_id,
                        peer=self.handle.peer, reason="asset not served by this session")

    def _reject_point(self, row: PointRow, reason: str) -> None:
        self.handle.ignored_points += 1
        log.warning("telemetry_rejected", asset_id=row[0] or self.primary_asset_id, seq=row[1],
                    session_id=self.handle.session_id, peer=self.handle.peer, reason=reason)

    async def _commands_loop(self) -> None:
        async for cmd in self.commands:
            if isinstance(cmd, Setpoint):
                await self._send(cmd)
            elif isinstance(cmd, _LostAsset):
                self.owned.discard(cmd.asset_id)
                await self.ctx.assets[cmd.asset_id].send(Disconnected(self.handle.session_id, self.ctx.clock.now(), cmd.reason))
                if not self.owned:
                    self._end("every asset taken over by a newer session")
            elif isinstance(cmd, _Close):
                self._end(cmd.reason)

    async def _ack_loop(self) -> None:
        handle = self.handle
        last_ack_at = -math.inf
        slots: AckSlots | None = None
        while True:
            await handle.ack_due.wait()
            if slots is None:  # points are stored (and acked) only once registered
                slots = AckSlots(handle.summary.gateway_id if handle.summary else handle.session_id, ACK_INTERVAL_S)
            # in the next slot, or once ACK_AT_ONCE_POINTS are pending; with it goes whatever else
            # is stored meanwhile
            with trio.move_on_at(slots.next(trio.current_time(), last_ack_at)):
                await handle.ack_full.wait()
            handle.ack_due, handle.ack_full = trio.Event(), trio.Event()
            await self._send(TelemetryAck(tuple(handle.acks_pending.take())))
            last_ack_at = trio.current_time()

    async def _heartbeat_loop(self) -> None:
        while True:
            await trio.sleep(self.ctx.config.heartbeat_interval_s)
            await self._send(Heartbeat(self.ctx.clock.now()))

    async def _send(self, msg: object) -> None:
        try:
            await send_or_wait(self.conn.outbound, msg)
        except LINK_ERRORS:
            self._end("stream closed")


def acknowledge_stored(ctx: HeadendContext, keys: Sequence[Sequence]) -> None:
    """The store committed these points (`PointRow`s, or (asset_id, seq) pairs): tell each asset's
    serving session (store hook)."""
    owners, sessions = ctx.directory.owners, ctx.directory.sessions
    for asset_id, seqs in seqs_by_asset(keys).items():
        session_id = owners.get(asset_id)
        session = sessions.get(session_id) if session_id is not None else None
        if session is not None:
            session.ack_stored(asset_id, seqs)


async def run_session(ctx: HeadendContext, conn: AgentConnection) -> None:
    """Serve one agent stream until it ends. Never raises: a session's failure ends only that stream."""
    commands_send, commands_recv = trio.open_memory_channel(COMMAND_INBOX)
    handle = SessionHandle(str(uuid.uuid4()), conn.peer, commands_send)
    try:
        async with commands_send, commands_recv:
            await Session(ctx, conn, handle, commands_recv).run()
    except Exception:  # our bug: log it loudly, keep the headend serving every other session
        log.exception("session_crashed", session_id=handle.session_id, peer=conn.peer)
        conn.outbound.close()


async def run_session_manager(
    ctx: HeadendContext,
    accept: trio.MemoryReceiveChannel[AgentConnection],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Start a session actor for every connection a transport accepts."""
    async with accept, trio.open_nursery() as nursery:
        task_status.started()
        async for conn in accept:
            nursery.start_soon(run_session, ctx, conn)
