"""Many simulated gateways in one process, each on its own TCP connection and gRPC stream.

A gateway registers its site's assets (one `Register`, encoded once), then sends telemetry as
pre-encoded `TelemetryBatch` messages (one point per asset; only seq and timestamp vary, see
`bench.wire`), and drains everything the headend sends:

- `TelemetryAck`: the highest acknowledged seq opens the gateway's send window (flood mode);
- `Setpoint`: answered at once with `SetpointAck` RECEIVED then APPLIED in one write; a site
  setpoint (no asset_id) carries allocations from `der_actors.split.split_site`, as a real gateway
  splits it;
- `Heartbeat`: ignored (telemetry keeps the session alive).

Telemetry modes:
- flood: `ticks` ticks (or until `flood_until`) as fast as acks allow, at most `window` ticks
  unacknowledged per gateway
  (the headend acks what its store committed, so this is "as fast as the headend stores it"; when
  the window opens for several ticks they go out in one socket write, `ticks_per_message` ticks to
  a TelemetryBatch: 1 is the live shape, more is how a real agent that is behind merges them).
  An ack that never comes (the headend skips acks when a session's inbox is full) would stall a
  gateway: after `ack_stall_s` it counts a stall and carries on (stored rows are counted in the
  database anyway).
- paced: one batch every `interval_s` (`ticks_per_message` ticks in it), gateways spread evenly
  over the interval, timestamps = now
  (so the headend's telemetry lag is meaningful); sent right after each (re-)registration too, as a
  real agent backfills at once. `gated=True`: nobody sends until `fleet.go` is set (a scenario that
  wants every gateway registered before the load starts).

Reconnects (`reconnect=True`) follow the real agent's policy (edge/link.py): `der_actors.backoff.Backoff`
(full jitter, 0.5 s doubling to a 30 s cap, 5 s after a refused dial), reset only after a healthy
session (registered and up >= 30 s). The first dial of each gateway is not delayed, as an agent's first dial is not.
"""

from __future__ import annotations

import random
import time

import attrs
import trio

from bench import wire
from bench.h2lite import GrpcStream, open_stream
from bench.procs import ASSET_MAX_MW, ASSET_MIN_MW, GenSite
from der_actors.backoff import Backoff
from der_actors.messages import PROTOCOL_VERSION
from der_actors.split import SplitMember, split_site
from der_actors.transport.pb import agent_pb2 as pb

PATH = "/der.agent.v1.AgentLink/Stream"
HEALTHY_SESSION_S = 30.0  # edge/link.py: registered and up this long -> the backoff resets
REGISTER_TIMEOUT_S = 30.0


@attrs.define
class FleetStats:
    dials: int = 0
    dial_failures: int = 0
    registrations: int = 0
    registration_failures: int = 0
    rejected_assets: int = 0
    sessions_lost: int = 0
    batches_sent: int = 0
    points_sent: int = 0
    acks: int = 0
    ack_stalls: int = 0
    setpoints: int = 0
    max_send_lateness_s: float = 0.0  # paced: how late the generator was against its own schedule


class Gateway:
    def __init__(self, fleet: Fleet, index: int, site: GenSite) -> None:
        self.fleet = fleet
        self.index = index
        self.site = site
        reg = pb.AgentMessage()
        r = reg.register
        r.agent_id = r.gateway_id = f"bench-gw-{index}"
        r.site_id = site.id
        r.protocol_version = PROTOCOL_VERSION
        r.agent_version = "bench"
        for a in site.asset_ids:
            r.assets.add(asset_id=a, site_id=site.id, type=pb.ASSET_TYPE_BESS, max_mw=ASSET_MAX_MW,
                         min_mw=ASSET_MIN_MW, capacity_mwhr=4.0, ramp_rate_mw_per_min=1.0, efficiency=0.9)
        self.register = reg.SerializeToString()
        rng = random.Random(index)
        self.encoder = wire.BatchEncoder([
            wire.point_prefix(a, site.id, round(rng.uniform(-2, 2), 3), 0.0, round(rng.uniform(5, 95), 1), 2.0)
            for a in site.asset_ids
        ])
        self.members = [SplitMember(a, ASSET_MAX_MW, ASSET_MIN_MW) for a in site.asset_ids]
        self.seq = 0  # last seq sent (per asset: every asset of the gateway moves together)
        self.acked = 0
        self._acked_event = trio.Event()
        self.registered = False
        self.registered_at: float | None = None  # perf_counter of the last RegisterAck
        self.streaming_at: float | None = None  # perf_counter of the first ack after the last RegisterAck
        self._session_registered_at = 0.0
        self.backoff = Backoff(rng=random.Random(fleet.seed * 100_003 + index))
        self.stream: GrpcStream | None = None
        self.dial_refused = False  # the last dial found nothing listening (the agent's shorter backoff)

    # --- the agent loop ----------------------------------------------------------------------

    async def run(self) -> None:
        fleet = self.fleet
        first = True
        while not fleet.stopping:
            if not first:
                await trio.sleep(self.backoff.next_delay(refused=self.dial_refused))
            first = False
            healthy = await self._session_once()
            if healthy:
                self.backoff.reset()
            if not fleet.reconnect:
                return

    async def _session_once(self) -> bool:
        fleet = self.fleet
        self.dial_refused = False
        fleet.stats.dials += 1
        try:
            async with fleet.dial_limit:
                cm = open_stream(fleet.host, fleet.port, PATH)
                stream = await cm.__aenter__()
        except OSError as exc:
            fleet.stats.dial_failures += 1
            self.dial_refused = isinstance(exc, ConnectionRefusedError)
            return False
        healthy = False
        try:
            self.stream = stream
            await stream.send(self.register)
            first = None
            with trio.move_on_after(REGISTER_TIMEOUT_S):
                first = await stream.receive()
            if not first or first[0] != wire.HM_REGISTER_ACK:
                fleet.stats.registration_failures += 1
                return False
            ack = pb.HeadendMessage.FromString(first).register_ack
            if len(ack.accepted_asset_ids) != len(self.site.asset_ids):
                fleet.stats.registration_failures += 1
                fleet.stats.rejected_assets += len(self.site.asset_ids) - len(ack.accepted_asset_ids)
                return False
            now = time.perf_counter()
            self._session_registered_at = now
            self.registered, self.registered_at, self.streaming_at = True, now, None
            fleet.stats.registrations += 1
            fleet.on_registered(self)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._receive_loop, stream, nursery.cancel_scope)
                if fleet.mode == "flood":
                    await self._flood(stream)
                else:
                    await self._paced(stream)
                await trio.sleep_forever()  # until the stream ends or the fleet stops
        except OSError:
            pass
        finally:
            if self.registered:
                self.registered = False
                if not fleet.stopping:
                    fleet.stats.sessions_lost += 1
                fleet.on_unregistered(self)
                healthy = time.perf_counter() - self._session_registered_at >= HEALTHY_SESSION_S
            self.stream = None
            with trio.CancelScope(shield=True):
                await cm.__aexit__(None, None, None)
        return healthy

    # --- inbound -------------------------------------------------------------------------------

    async def _receive_loop(self, stream: GrpcStream, session: trio.CancelScope) -> None:
        fleet = self.fleet
        while True:
            msg = await stream.receive()
            if msg is None:
                session.cancel()
                return
            kind = msg[0]
            if kind == wire.HM_TELEMETRY_ACK:
                fleet.stats.acks += 1
                seq = wire.max_acked_seq(msg)
                if seq > self.acked:
                    self.acked = seq
                    self._acked_event.set()
                if self.streaming_at is None:
                    self.streaming_at = time.perf_counter()
                    fleet.on_streaming(self)
            elif kind == wire.HM_SETPOINT:
                fleet.stats.setpoints += 1
                await stream.send_many(self._answer(pb.HeadendMessage.FromString(msg).setpoint))

    def _answer(self, sp: pb.Setpoint) -> list[bytes]:
        received = pb.AgentMessage()
        received.setpoint_ack.setpoint_id = sp.setpoint_id
        received.setpoint_ack.state = pb.SetpointAck.RECEIVED
        applied = pb.AgentMessage()
        applied.setpoint_ack.setpoint_id = sp.setpoint_id
        applied.setpoint_ack.state = pb.SetpointAck.APPLIED
        if not sp.asset_id:  # a site setpoint: this gateway splits it
            for a in split_site(sp.mw, self.members).allocations:
                applied.setpoint_ack.allocations.add(asset_id=a.asset_id, mw=a.mw)
        return [received.SerializeToString(), applied.SerializeToString()]

    # --- outbound ------------------------------------------------------------------------------

    async def _flood(self, stream: GrpcStream) -> None:
        fleet = self.fleet
        await fleet.go.wait()
        window, last = fleet.window, fleet.ticks
        stats = fleet.stats
        n_assets = len(self.site.asset_ids)
        while self.seq < last:
            if time.perf_counter() >= fleet.flood_until:  # time box: stop sending, collect the acks
                last = self.seq
                break
            if self.seq - self.acked >= window:
                self._acked_event = trio.Event()
                with trio.move_on_after(fleet.ack_stall_s) as stall:
                    await self._acked_event.wait()
                if stall.cancelled_caught:
                    stats.ack_stalls += 1
                    self.acked = self.seq
                continue
            k = min(window - (self.seq - self.acked), last - self.seq)
            now = time.time()
            first = self.seq + 1
            per = fleet.ticks_per_message
            batches = [self.encoder.encode(s, now, min(per, first + k - s)) for s in range(first, first + k, per)]
            await stream.send_many(batches)
            self.seq += k
            stats.batches_sent += len(batches)
            stats.points_sent += k * n_assets
        while self.acked < last:  # wait for the last acks (the stall rule again)
            self._acked_event = trio.Event()
            with trio.move_on_after(fleet.ack_stall_s) as stall:
                await self._acked_event.wait()
            if stall.cancelled_caught:
                stats.ack_stalls += 1
                break
        fleet.on_flood_done(self)

    async def _paced(self, stream: GrpcStream) -> None:
        """A batch now, then one per `fleet.interval_s` (re-read every time, so a scenario can change
        the rate); each gateway keeps its own phase, spread evenly over the first interval."""
        fleet = self.fleet
        await fleet.go.wait()
        stats = fleet.stats
        n_assets = len(self.site.asset_ids)
        offset = fleet.interval_s * (self.index % fleet.size) / fleet.size
        t_next = trio.current_time()
        first = True
        while True:
            now = trio.current_time()
            late = now - t_next
            if late > stats.max_send_lateness_s and fleet.measuring:
                stats.max_send_lateness_s = late
            k = fleet.ticks_per_message
            await stream.send(self.encoder.encode(self.seq + 1, time.time(), k))
            self.seq += k
            stats.batches_sent += 1
            stats.points_sent += k * n_assets
            t_next = (now + offset if offset else now + fleet.interval_s) if first else t_next + fleet.interval_s
            first = False
            if t_next < trio.current_time():  # behind schedule: skip ahead rather than burst
                t_next = trio.current_time()
            await trio.sleep_until(t_next)


class Fleet:
    """`sites` -> one gateway each. `await fleet.run()` inside a nursery; stop with `fleet.stop()`."""

    def __init__(self, sites: list[GenSite], host: str, port: int, *, mode: str = "paced", ticks: int = 0,
                 window: int = 8, interval_s: float = 4.0, reconnect: bool = False, ack_stall_s: float = 30.0,
                 dial_concurrency: int | None = 64, seed: int = 1, gated: bool = False,
                 ticks_per_message: int = 1) -> None:
        assert mode in ("flood", "paced")
        self.host, self.port = host, port
        self.mode, self.ticks, self.window, self.interval_s = mode, ticks, window, interval_s
        self.reconnect, self.ack_stall_s, self.seed = reconnect, ack_stall_s, seed
        self.ticks_per_message = ticks_per_message  # ticks merged into one TelemetryBatch
        self.dial_limit = trio.CapacityLimiter(dial_concurrency) if dial_concurrency else _NoLimit()
        self.gateways = [Gateway(self, i, s) for i, s in enumerate(sites)]
        self.size = len(self.gateways)
        self.stats = FleetStats()
        self.stopping = False
        self.measuring = False
        self.flood_until = float("inf")  # flood: no new batch after this perf_counter time
        self.go = trio.Event()  # flood, or paced when gated: start sending
        if mode == "paced" and not gated:
            self.go.set()
        self.n_registered = 0
        self.n_streaming = 0
        self.n_flood_done = 0
        self.all_registered = trio.Event()
        self.all_streaming = trio.Event()
        self.all_flood_done = trio.Event()
        self.last_ack_at = 0.0
        self._cancel: trio.CancelScope | None = None

    # callbacks from gateways
    def on_registered(self, gw: Gateway) -> None:
        self.n_registered += 1
        if self.n_registered == self.size:
            self.all_registered.set()

    def on_unregistered(self, gw: Gateway) -> None:
        self.n_registered -= 1
        if gw.streaming_at is not None:
            self.n_streaming -= 1
        if self.all_registered.is_set():
            self.all_registered = trio.Event()
        if self.all_streaming.is_set():
            self.all_streaming = trio.Event()

    def on_streaming(self, gw: Gateway) -> None:
        self.n_streaming += 1
        if self.n_streaming == self.size:
            self.all_streaming.set()

    def on_flood_done(self, gw: Gateway) -> None:
        self.n_flood_done += 1
        self.last_ack_at = time.perf_counter()
        if self.n_flood_done == self.size:
            self.all_flood_done.set()

    async def run(self, *, task_status: trio.TaskStatus[Fleet] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as self._cancel:
            async with trio.open_nursery() as nursery:
                for gw in self.gateways:
                    nursery.start_soon(gw.run)
                task_status.started(self)

    def stop(self) -> None:
        self.stopping = True
        if self._cancel is not None:
            self._cancel.cancel()

    @property
    def acked_seqs(self) -> int:
        return sum(g.acked for g in self.gateways)


class _NoLimit:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc) -> None:
        return None
