"""The uplink actor: spool every point, dial the headend, register, deliver telemetry, answer setpoints.

It works over any `Dial`: a callable returning an async context manager that yields an
`EdgeConnection` (gRPC via `grpc_dialer`, or `MemoryNetwork.dial` in tests), so the behaviour below
is the same on both.

Telemetry is at-least-once: every point the site produces is appended to the spool first (linked or
not), then handed to the session if one is registered. The session's `Delivery` sends live points,
backfills the spool at EDGE_BACKFILL_RATE and resends what stays unacknowledged; a TelemetryAck
from the headend marks points done in the spool. The headend stores a point once per (asset_id,
seq), so replays are harmless. Points of an asset the RegisterAck rejects by name (while accepting
others) are discarded from the spool, then and as they come while that holds: they could never be
stored. A session refused as a whole (nothing accepted) discards nothing. When the spool's bound
drops points, each later point of that asset says so in its status: "<status>; spool dropped N
points" (N: that asset's points dropped since the spool directory was created).

One session = one dial:
- Register goes up first; the RegisterAck must come within `headend_timeout_s` (else the session ends
  with reason "no register ack"). Telemetry is sent only for accepted assets; rejected ones are logged.
- Staleness: every message from the headend pushes the session's deadline to now + headend_timeout_s;
  when it passes, the stream is closed ("stale stream") and redialed. The same deadline bounds the dial
  itself ("connect timed out").
- Heartbeats go up every `heartbeat_interval_s` once registered.

Reconnect forever: exponential backoff with full jitter, 0.5 s doubling to a 30 s cap (5 s after a
refused dial: see der_actors.backoff). The backoff resets after a healthy session: one that was
registered and then stayed up at least `HEALTHY_SESSION_S` (30 s) after its RegisterAck. A session
that dies sooner keeps growing the delay, so a headend that accepts and then drops us is not hammered.

Setpoints: see `edge.setpoint_handler` (at most once per setpoint_id, across restarts too).
"""

from __future__ import annotations

import importlib.metadata
import os
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager

import attrs
import structlog
import trio

from der_actors.actors.channels import send_or_wait
from der_actors.backoff import Backoff
from der_actors.clock import WallClock
from der_actors.messages import (
    PROTOCOL_VERSION,
    AgentMessage,
    AssetInfo,
    Heartbeat,
    Register,
    RegisterAck,
    Setpoint,
    Telemetry,
    TelemetryAck,
)
from der_actors.transport.link import EdgeConnection
from edge.asset import AssetHandle
from edge.config import EdgeConfig
from edge.delivery import Delivery
from edge.outcomes import OutcomeStore
from edge.replay import Span
from edge.setpoint_handler import APPLY_TIMEOUT_S, SetpointHandler
from edge.spool import Spool
from edge.stats import LinkStats

__all__ = ["Dial", "LinkStats", "Uplink", "agent_version", "build_register", "with_drop_note",
           "APPLY_TIMEOUT_S", "HEALTHY_SESSION_S", "MAX_BATCH"]

log = structlog.get_logger("der.edge")

Dial = Callable[[], AbstractAsyncContextManager[EdgeConnection]]

HEALTHY_SESSION_S = 30.0  # registered and up this long after the RegisterAck -> backoff resets
MAX_BATCH = 1000  # points past which queued ticks are not merged further (one spool write, one live batch)

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


def with_drop_note(point: Telemetry, dropped: int) -> Telemetry:
    """The point, its status noting how many of the asset's points the spool has dropped (if any)."""
    if not dropped:
        return point
    note = f"spool dropped {dropped} points"
    return attrs.evolve(point, status=f"{point.status}; {note}" if point.status else note)


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


def _unlink_all(paths: Sequence[str]) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


class Uplink:
    """Construct once per site; `run` is one incarnation (it may be restarted by `supervise`)."""

    def __init__(
        self,
        config: EdgeConfig,
        dial: Dial,
        assets: Mapping[str, AssetHandle],
        telemetry: trio.MemoryReceiveChannel[list[Telemetry]],
        *,
        spool: Spool,
        outcomes: OutcomeStore,
        clock: WallClock,
        rng: random.Random,
        stats: LinkStats,
    ) -> None:
        self.config = config
        self._dial = dial
        self._assets = assets
        self._telemetry = telemetry  # owned by the site
        self._spool = spool  # owned by the site
        self._clock = clock
        self._backoff = Backoff(rng=rng)
        self.stats = stats
        self.setpoints = SetpointHandler(config, assets, outcomes, stats)
        self._register = build_register(config, agent_version())
        self._session: _Session | None = None
        self._refused: frozenset[str] = frozenset()  # assets the last RegisterAck rejected by name
        self._dead = trio.Event()  # set when the spool has segments to unlink

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._spool_loop)
            nursery.start_soon(self._janitor_loop)
            while True:
                healthy, refused = await self._session_once()
                if healthy:
                    self._backoff.reset()
                delay = self._backoff.next_delay(refused=refused)
                log.info("link_retry", delay_s=round(delay, 3), attempt=self._backoff.attempt)
                await trio.sleep(delay)

    # --- telemetry into the spool ----------------------------------------------------------------

    async def _spool_loop(self) -> None:
        channel = self._telemetry
        spool = self._spool
        while True:
            try:
                points = await channel.receive()  # one tick of the site's metronome
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return  # the site is shutting down
            while len(points) < MAX_BATCH:  # ticks that queued up behind a slow write: one write
                try:
                    points += channel.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    break
            points = [with_drop_note(p, spool.dropped(p.asset_id)) for p in points]
            try:
                appended = spool.append(points)  # one small write per tick: inline (see edge.spool)
            except OSError as exc:
                # Disk full or failing: these points go out live only (at most once) rather than not at all.
                self.stats.spool_write_errors += 1
                log.error("spool_write_failed", points=len(points), error=str(exc))
                if self._session is not None:
                    self._session.offer_live(points, Span(spool.end, spool.end))
                continue
            self.stats.points_dropped += appended.dropped
            refused = self._refused.intersection(p.asset_id for p in points)
            if refused:
                self.stats.points_discarded += spool.discard(refused)
            if spool.has_dead:
                self._dead.set()
            if self._session is not None:
                self._session.offer_live(points, Span(appended.start, appended.end))

    async def _janitor_loop(self) -> None:
        """Unlink segments the spool no longer needs, in a worker thread (file deletion can be slow)."""
        while True:
            await self._dead.wait()
            self._dead = trio.Event()
            dead = self._spool.take_dead()
            if dead:
                await trio.to_thread.run_sync(_unlink_all, dead)

    def _on_telemetry_ack(self, ack: TelemetryAck) -> None:
        served = self._assets
        n = self._spool.mark_done((r.asset_id, r.first_seq, r.last_seq) for r in ack.ranges if r.asset_id in served)
        self.stats.points_acked += n
        if self._spool.has_dead:
            self._dead.set()

    def _on_registered(self, accepted: frozenset[str], refused: frozenset[str],
                       send: Callable[[AgentMessage], Awaitable[bool]]) -> Delivery:
        self._refused = refused
        if self._refused:
            discarded = self._spool.discard(self._refused)
            self.stats.points_discarded += discarded
            if self._spool.has_dead:
                self._dead.set()
            if discarded:
                log.warning("telemetry_discarded", reason="asset refused by the headend", points=discarded,
                            asset_ids=sorted(self._refused))
        if self.stats.points_dropped:
            log.warning("telemetry_dropped", total=self.stats.points_dropped,
                        spool_dropped_total=self._spool.dropped_total)
        return Delivery(self._spool, [a for a in self._assets if a in accepted], rate=self.config.backfill_rate,
                        stats=self.stats, send=send)

    # --- one dial ------------------------------------------------------------------------------

    async def _session_once(self) -> tuple[bool, bool]:
        """Dial, run one session until it ends; (it was healthy, the dial was refused)."""
        self.stats.dial_attempts += 1
        timeout = self.config.headend_timeout_s
        session: _Session | None = None
        reason: str | None = None
        refused = False
        with trio.CancelScope(deadline=trio.current_time() + timeout) as watchdog:
            try:
                async with self._dial() as conn:
                    session = self._session = _Session(self, conn, watchdog)
                    await session.run()
            except Exception as exc:
                if session is None:  # the dial itself failed
                    refused = isinstance(exc, ConnectionRefusedError)
                    reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                else:
                    reason = _transport_failure(exc)
                    if reason is None:
                        raise  # our bug: let the supervisor see it
            finally:
                self._session = None
        if session is None:
            if watchdog.cancelled_caught:
                reason = f"connect timed out after {timeout:g} s"
            self.stats.connect_failures += 1
            self.stats.last_disconnect_reason = reason or "connect failed"
            log.warning("link_connect_failed", headend=self.config.headend, reason=reason)
            return False, refused
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
        return healthy, False


class _Session:
    """One connected stream: its tasks, what the headend accepted, and why it ended."""

    def __init__(self, uplink: Uplink, conn: EdgeConnection, watchdog: trio.CancelScope) -> None:
        self._uplink = uplink
        self._conn = conn
        self._watchdog = watchdog
        self._nursery: trio.Nursery | None = None
        self._delivery: Delivery | None = None
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
        finally:
            self._conn.outbound.close()  # we own our side: closing it ends the stream from our end

    def end(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def send(self, msg: AgentMessage) -> bool:
        try:
            await send_or_wait(self._conn.outbound, msg)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self.end("stream closed by the transport")
            return False
        return True

    def offer_live(self, points: Sequence[Telemetry], span: Span) -> None:
        if self._delivery is not None:
            self._delivery.offer_live(points, span)

    async def _receive_loop(self) -> None:
        timeout = self._uplink.config.headend_timeout_s
        while True:
            try:
                msg = await self._conn.inbound.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                self.end("headend closed the stream")
                return
            self._watchdog.deadline = trio.current_time() + timeout
            if isinstance(msg, TelemetryAck):
                self._uplink._on_telemetry_ack(msg)
                if self._delivery is not None:
                    self._delivery.acked()
            elif isinstance(msg, RegisterAck):
                self._on_register_ack(msg)
            elif isinstance(msg, Setpoint):
                if not await self._uplink.setpoints.handle(msg, self.accepted, self.send):
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
        log.info("link_registered", session_id=ack.session_id, accepted=len(accepted),
                 rejected=len(ack.rejected), again=not first)
        for r in ack.rejected:
            log.warning("asset_rejected", asset_id=r.asset_id, reason=r.reason)
        if unknown:
            log.warning("register_ack_unknown_assets", asset_ids=unknown)
        self.accepted = accepted  # setpoints follow the latest ack
        if not first:
            return  # the session's delivery keeps the assets it started with; the next session adopts changes
        self.registered_at = trio.current_time()
        self._uplink.stats.sessions_registered += 1
        # Discard only what the headend named as rejected while accepting others: a session refused as a
        # whole (protocol version: nothing accepted) says nothing about the points, so they are kept.
        refused = frozenset(r.asset_id for r in ack.rejected if r.asset_id in served) if accepted else frozenset()
        self._delivery = self._uplink._on_registered(accepted, refused, self.send)
        assert self._nursery is not None
        self._nursery.start_soon(self._heartbeat_loop)
        self._nursery.start_soon(self._delivery.run)

    async def _heartbeat_loop(self) -> None:
        interval = self._uplink.config.heartbeat_interval_s
        while True:
            await trio.sleep(interval)
            if not await self.send(Heartbeat(self._uplink._clock.now())):
                return
