"""The uplink actor: dial the headend, register, stream telemetry and heartbeats, answer setpoints.

It works over any `Dial`: a callable returning an async context manager that yields an
`EdgeConnection` (gRPC via `grpc_dialer`, or `MemoryNetwork.dial` in tests), so the behaviour below
is the same on both.

One session = one dial:
- Register goes up first; the RegisterAck must come within `headend_timeout_s` (else the session ends
  with reason "no register ack"). Telemetry is sent only for accepted assets; rejected ones are logged.
- Staleness: every message from the headend pushes the session's deadline to now + headend_timeout_s;
  when it passes, the stream is closed ("stale stream") and redialed. The same deadline bounds the dial
  itself ("connect timed out").
- Heartbeats go up every `heartbeat_interval_s` once registered.
- Telemetry: the uplink takes one point from the site's telemetry channel, drains whatever else is
  ready, and sends one TelemetryBatch. Points that arrive while the link is down or not yet
  registered are dropped and counted (`LinkStats.points_dropped`; logged on the next registration).

Reconnect forever: exponential backoff with full jitter, 0.5 s doubling to a 30 s cap. The backoff
resets after a healthy session: one that was registered and then stayed up at least
`HEALTHY_SESSION_S` (30 s) after its RegisterAck. A session that dies sooner keeps growing the delay,
so a headend that accepts and then drops us is not hammered.

Setpoints: RECEIVED at once, then APPLIED or REJECTED (see `edge.setpoints` for the rules). A site
setpoint is split across the assets that are online (actor running) and accepted in this session's
RegisterAck. Setpoints are handled one at a time, in arrival order. Outcomes are remembered by
setpoint_id across sessions, so a resent setpoint is applied at most once.
"""

from __future__ import annotations

import importlib.metadata
import random
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager

import attrs
import structlog
import trio

from der_actors.backoff import Backoff
from der_actors.clock import WallClock
from der_actors.messages import (
    PROTOCOL_VERSION,
    AckState,
    AgentMessage,
    Allocation,
    AssetInfo,
    Heartbeat,
    Register,
    RegisterAck,
    Setpoint,
    SetpointAck,
    Telemetry,
    TelemetryBatch,
)
from der_actors.split import SplitMember
from der_actors.transport.link import EdgeConnection
from edge.asset import AssetHandle, AssetUnavailable
from edge.config import EdgeConfig
from edge.setpoints import (
    ApplySplit,
    ApplyToAsset,
    OutcomeCache,
    Reject,
    applied_message,
    route_setpoint,
    split_message,
)

log = structlog.get_logger("der.edge")

Dial = Callable[[], AbstractAsyncContextManager[EdgeConnection]]

HEALTHY_SESSION_S = 30.0  # registered and up this long after the RegisterAck -> backoff resets
APPLY_TIMEOUT_S = 10.0  # an asset actor restarting after a crash answers well within this
MAX_BATCH = 1000  # points per TelemetryBatch; a bigger backlog goes in several batches

# What a dropped link looks like from the session's side. Transports raise OSError subclasses
# (ConnectionError, LinkRefused, the gRPC dialer's LinkLost); channel errors mean the peer closed.
_TRANSPORT_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)


def agent_version() -> str:
    try:
        return importlib.metadata.version("der-actors")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def build_register(config: EdgeConfig, version: str) -> Register:
    return Register(
        agent_id=config.agent_id,
        gateway_id=config.gateway_id,
        site_id=config.site_id,
        asset_id=config.primary_asset_id or "",
        assets=tuple(
            AssetInfo(
                asset_id=a.id,
                site_id=a.site_id,
                type=a.type,
                max_mw=a.max_mw,
                min_mw=a.min_mw,
                capacity_mwhr=a.capacity_mwhr,
                ramp_rate_mw_per_min=a.ramp_rate_mw_per_min,
                efficiency=a.efficiency,
                name=a.name,
            )
            for a in config.assets
        ),
        protocol_version=PROTOCOL_VERSION,
        agent_version=version,
    )


@attrs.define
class LinkStats:
    """Counters, written by the uplink (and by asset actors for overflow drops); read them freely."""

    dial_attempts: int = 0
    connect_failures: int = 0
    sessions_started: int = 0  # dials that connected
    sessions_registered: int = 0
    batches_sent: int = 0
    points_sent: int = 0
    points_dropped: int = 0  # produced while the link was down / unregistered, or on overflow
    setpoints_received: int = 0
    setpoints_applied: int = 0
    setpoints_rejected: int = 0
    setpoints_duplicate: int = 0
    last_disconnect_reason: str = ""

    def drop(self, n: int) -> None:
        self.points_dropped += n


def _transport_failure(exc: BaseException) -> str | None:
    """A description if `exc` (or every exception in the group) is a dropped link, else None."""
    if isinstance(exc, BaseExceptionGroup):
        matched, rest = exc.split(_TRANSPORT_ERRORS)
        if rest is not None or matched is None:
            return None
        while isinstance(matched, BaseExceptionGroup):
            matched = matched.exceptions[0]
        exc = matched
    if isinstance(exc, _TRANSPORT_ERRORS):
        return f"transport error: {exc}" if str(exc) else f"transport error: {type(exc).__name__}"
    return None


class Uplink:
    """Construct once per site; `run` is one incarnation (it may be restarted by `supervise`)."""

    def __init__(
        self,
        config: EdgeConfig,
        dial: Dial,
        assets: Mapping[str, AssetHandle],
        telemetry: trio.MemoryReceiveChannel[Telemetry],
        *,
        clock: WallClock,
        rng: random.Random,
        stats: LinkStats,
    ) -> None:
        self.config = config
        self._dial = dial
        self._assets = assets
        self._telemetry = telemetry  # owned by the site
        self._clock = clock
        self._backoff = Backoff(rng=rng)
        self.stats = stats
        self._outcomes = OutcomeCache()
        self._register = build_register(config, agent_version())
        self._dropped_reported = 0

    async def run(self) -> None:
        while True:
            healthy = await self._session()
            if healthy:
                self._backoff.reset()
            delay = self._backoff.next_delay()
            log.info("link_retry", delay_s=round(delay, 3), attempt=self._backoff.attempt)
            await self._drop_telemetry_for(delay)

    # --- one dial ------------------------------------------------------------------------------

    async def _session(self) -> bool:
        """Dial, run one session until it ends; True if it was healthy."""
        self.stats.dial_attempts += 1
        timeout = self.config.headend_timeout_s
        session: _Session | None = None
        reason: str | None = None
        with trio.CancelScope(deadline=trio.current_time() + timeout) as watchdog:
            try:
                async with self._dial() as conn:
                    session = _Session(self, conn, watchdog)
                    await session.run()
            except Exception as exc:
                if session is None:  # the dial itself failed
                    reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                else:
                    reason = _transport_failure(exc)
                    if reason is None:
                        raise  # our bug: let the supervisor see it
        if session is None:
            if watchdog.cancelled_caught:
                reason = f"connect timed out after {timeout:g} s"
            self.stats.connect_failures += 1
            self.stats.last_disconnect_reason = reason or "connect failed"
            log.warning("link_connect_failed", headend=self.config.headend, reason=reason)
            return False
        if session.reason is not None:
            reason = session.reason
        elif watchdog.cancelled_caught:
            reason = (
                f"stale stream: no message from the headend for {timeout:g} s"
                if session.registered_at is not None
                else "no register ack"
            )
        reason = reason or "session ended"
        healthy = session.healthy()
        self.stats.last_disconnect_reason = reason
        log.warning(
            "link_disconnected",
            reason=reason,
            up_s=round(trio.current_time() - session.started_at, 3),
            healthy=healthy,
        )
        return healthy

    async def _drop_telemetry_for(self, delay: float) -> None:
        with trio.move_on_after(delay):
            while True:
                try:
                    await self._telemetry.receive()
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    await trio.sleep_forever()
                self.stats.points_dropped += 1

    def _on_registered(self) -> None:
        dropped = self.stats.points_dropped - self._dropped_reported
        if dropped:
            log.warning("telemetry_dropped", points=dropped, total=self.stats.points_dropped)
        self._dropped_reported = self.stats.points_dropped

    # --- setpoints -----------------------------------------------------------------------------

    async def _handle_setpoint(self, sp: Setpoint, session: _Session) -> bool:
        """Ack, apply, ack; returns False if the link dropped while answering."""
        self.stats.setpoints_received += 1
        earlier = self._outcomes.get(sp.setpoint_id) if sp.setpoint_id else None
        if earlier is not None:
            self.stats.setpoints_duplicate += 1
            log.info("setpoint_duplicate", setpoint_id=sp.setpoint_id, outcome=earlier.state.value)
            return await session.send(earlier)
        log.info("setpoint_received", setpoint_id=sp.setpoint_id, asset_id=sp.asset_id,
                 site_id=sp.site_id, mw=sp.mw, duration_s=sp.duration_s)
        if not await session.send(SetpointAck(sp.setpoint_id, AckState.RECEIVED)):
            return False
        # Shielded: once started, an application finishes and its outcome is remembered even if the
        # session drops meanwhile, so a resend is answered from the cache rather than applied twice.
        with trio.CancelScope(deadline=trio.current_time() + APPLY_TIMEOUT_S, shield=True) as scope:
            ack = await self._carry_out(sp, session.accepted)
        if scope.cancelled_caught:
            ack = SetpointAck(sp.setpoint_id, AckState.REJECTED,
                              f"not applied within {APPLY_TIMEOUT_S:g} s (asset actor unavailable)")
        if ack.state is AckState.APPLIED:
            self.stats.setpoints_applied += 1
        else:
            self.stats.setpoints_rejected += 1
            log.warning("setpoint_rejected", setpoint_id=sp.setpoint_id, reason=ack.message)
        if sp.setpoint_id:
            self._outcomes.put(ack)
        return await session.send(ack)

    async def _carry_out(self, sp: Setpoint, accepted: frozenset[str]) -> SetpointAck:
        members = [
            SplitMember(
                asset_id=h.asset.id,
                max_mw=h.asset.max_mw,
                min_mw=h.asset.min_mw,
                online=h.snapshot.online and h.asset.id in accepted,
            )
            for h in self._assets.values()
        ]
        route = route_setpoint(
            sp,
            site_id=self.config.site_id,
            primary_asset_id=self.config.primary_asset_id,
            members=members,
        )
        if isinstance(route, Reject):
            return SetpointAck(sp.setpoint_id, AckState.REJECTED, route.reason)
        if isinstance(route, ApplyToAsset):
            try:
                applied = await self._assets[route.asset_id].apply_setpoint(route.mw, route.duration_s)
            except AssetUnavailable as exc:
                return SetpointAck(sp.setpoint_id, AckState.REJECTED, str(exc))
            log.info("setpoint_applied", setpoint_id=sp.setpoint_id, asset_id=route.asset_id,
                     requested_mw=route.mw, applied_mw=applied.mw, clamped=applied.clamped)
            return SetpointAck(
                sp.setpoint_id,
                AckState.APPLIED,
                applied_message(route.mw, applied.mw, applied.clamped),
                (Allocation(route.asset_id, applied.mw),),
            )
        assert isinstance(route, ApplySplit)
        return await self._apply_split(sp, route)

    async def _apply_split(self, sp: Setpoint, route: ApplySplit) -> SetpointAck:
        split = route.split
        log.info("setpoint_split", setpoint_id=sp.setpoint_id, requested_mw=split.requested_mw,
                 placed_mw=split.placed_mw, shortfall_mw=split.shortfall_mw,
                 allocations={a.asset_id: a.mw for a in split.allocations})
        applied: list[Allocation] = []
        failures: list[str] = []
        for alloc in split.allocations:
            try:
                result = await self._assets[alloc.asset_id].apply_setpoint(alloc.mw, route.duration_s)
            except AssetUnavailable as exc:
                failures.append(str(exc))
                continue
            applied.append(Allocation(alloc.asset_id, result.mw))
            log.info("setpoint_applied", setpoint_id=sp.setpoint_id, asset_id=alloc.asset_id,
                     requested_mw=alloc.mw, applied_mw=result.mw, clamped=result.clamped)
        state = AckState.APPLIED if applied else AckState.REJECTED
        message = split_message(split, tuple(applied), tuple(failures))
        return SetpointAck(sp.setpoint_id, state, message, tuple(applied))


class _Session:
    """One connected stream: its tasks, what the headend accepted, and why it ended."""

    def __init__(self, uplink: Uplink, conn: EdgeConnection, watchdog: trio.CancelScope) -> None:
        self._uplink = uplink
        self._conn = conn
        self._watchdog = watchdog
        self._nursery: trio.Nursery | None = None
        self.started_at = trio.current_time()
        self.registered_at: float | None = None
        self.accepted: frozenset[str] = frozenset()
        self.reason: str | None = None

    def healthy(self) -> bool:
        return (
            self.registered_at is not None
            and trio.current_time() - self.registered_at >= HEALTHY_SESSION_S
        )

    async def run(self) -> None:
        stats = self._uplink.stats
        stats.sessions_started += 1
        log.info("link_connected", headend=self._uplink.config.headend, attempt=stats.dial_attempts)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if not await self.send(self._uplink._register):
                    return
                nursery.start_soon(self._receive_loop)
                nursery.start_soon(self._telemetry_loop)
        finally:
            self._conn.outbound.close()  # we own our side: closing it ends the stream from our end

    def end(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def send(self, msg: AgentMessage) -> bool:
        try:
            await self._conn.outbound.send(msg)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self.end("stream closed by the transport")
            return False
        return True

    async def _receive_loop(self) -> None:
        timeout = self._uplink.config.headend_timeout_s
        while True:
            try:
                msg = await self._conn.inbound.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                self.end("headend closed the stream")
                return
            self._watchdog.deadline = trio.current_time() + timeout
            if isinstance(msg, RegisterAck):
                self._on_register_ack(msg)
            elif isinstance(msg, Setpoint):
                if not await self._uplink._handle_setpoint(msg, self):
                    return
            elif isinstance(msg, Heartbeat):
                pass  # its arrival already pushed the deadline
            else:
                log.warning("link_unexpected_message", kind=type(msg).__name__)

    def _on_register_ack(self, ack: RegisterAck) -> None:
        served = set(self._uplink._assets)
        accepted = frozenset(a for a in ack.accepted_asset_ids if a in served)
        unknown = [a for a in ack.accepted_asset_ids if a not in served]
        first = self.registered_at is None
        self.accepted = accepted
        if first:
            self.registered_at = trio.current_time()
            self._uplink.stats.sessions_registered += 1
        log.info("link_registered", session_id=ack.session_id, accepted=len(accepted),
                 rejected=len(ack.rejected), again=not first)
        for r in ack.rejected:
            log.warning("asset_rejected", asset_id=r.asset_id, reason=r.reason)
        if unknown:
            log.warning("register_ack_unknown_assets", asset_ids=unknown)
        if first:
            self._uplink._on_registered()
            assert self._nursery is not None
            self._nursery.start_soon(self._heartbeat_loop)

    async def _heartbeat_loop(self) -> None:
        interval = self._uplink.config.heartbeat_interval_s
        while True:
            await trio.sleep(interval)
            if not await self.send(Heartbeat(self._uplink._clock.now())):
                return

    async def _telemetry_loop(self) -> None:
        channel = self._uplink._telemetry
        stats = self._uplink.stats
        while True:
            try:
                points = [await channel.receive()]
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return  # the site is shutting down
            while len(points) < MAX_BATCH:
                try:
                    points.append(channel.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    break
            if self.registered_at is None:
                stats.drop(len(points))
                continue
            keep = tuple(p for p in points if p.asset_id in self.accepted)
            if not keep:
                continue
            if not await self.send(TelemetryBatch(keep)):
                stats.drop(len(keep))
                return
            stats.batches_sent += 1
            stats.points_sent += len(keep)
