"""The edge site on MockClock: a real site (asset actors + uplink) against a small headend in the test.

The "headend" here is the test itself: it receives AgentConnections from a MemoryNetwork and answers
with our own message types. Every time asserted is an exact virtual time.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from der_actors import physics
from der_actors.backoff import Backoff
from der_actors.clock import WallClock
from der_actors.inventory import load_inventory
from der_actors.messages import (
    PROTOCOL_VERSION,
    AckState,
    Allocation,
    AssetInfo,
    Heartbeat,
    Register,
    RegisterAck,
    Rejection,
    Setpoint,
    SetpointAck,
    TelemetryBatch,
)
from der_actors.transport.link import AgentConnection, MemoryNetwork
from edge.asset import AssetUnavailable
from edge.config import EdgeConfig, load_config
from edge.link import agent_version
from edge.site import SiteHandle, run_site

ASSETS = str(Path(__file__).resolve().parent.parent / "assets.yaml")
INVENTORY = load_inventory(ASSETS)
RIDGEWAY = "f91f3035-50e0-4460-81ba-4fe29ad09222"  # 13 assets, mixed types
HARBOUR = "7e3a446b-8390-41f8-ba6c-946169ccf1e8"  # 3 BESS: 5/5/2.5 MW, ramps 10/10/5 MW/min
B1, B2, B3 = (a.id for a in INVENTORY.assets_of(HARBOUR))
EPOCH = 1_780_315_200.0  # 2026-06-01 12:00 UTC: the sun is up
SEED = 7


def gateway_config(site_id: str, **changes: object) -> EdgeConfig:
    config = load_config(["--gateway-site-id", site_id, "--assets-path", ASSETS], {})
    return attrs.evolve(config, **changes)


def legacy_config() -> EdgeConfig:
    env = {"ASSET_ID": B1, "SITE_ID": HARBOUR, "MAX_MW": "2", "MIN_MW": "-2", "RAMP_RATE_MW_PER_MIN": "6"}
    return load_config([], env)


@attrs.define
class Rig:
    """The test's side: the network, the connections the 'headend' accepted, the dial times."""

    network: MemoryNetwork
    accept_send: trio.MemorySendChannel[AgentConnection]
    accepted: trio.MemoryReceiveChannel[AgentConnection]
    dials: list[float]
    site: SiteHandle

    async def accept(self) -> AgentConnection:
        return await self.accepted.receive()

    async def accept_and_register(
        self, reject: tuple[str, ...] = (), session_id: str = "s1"
    ) -> tuple[AgentConnection, Register]:
        conn = await self.accept()
        reg = await conn.inbound.receive()
        assert isinstance(reg, Register)
        ok = tuple(a.asset_id for a in reg.assets if a.asset_id not in reject)
        rejected = tuple(Rejection(a, "not in the headend's inventory") for a in reject)
        await conn.outbound.send(RegisterAck(session_id, ok, rejected))
        return conn, reg


async def start(nursery: trio.Nursery, config: EdgeConfig, *, listening: bool = True) -> Rig:
    network = MemoryNetwork()
    accept_send, accept_recv = trio.open_memory_channel[AgentConnection](16)
    if listening:
        network.accept_channel = accept_send
    dials: list[float] = []

    def dial():  # records when the uplink dials, then dials the in-memory network
        dials.append(trio.current_time())
        return network.dial("edge")

    site = await nursery.start(
        functools.partial(run_site, config, dial, clock=WallClock.pinned(EPOCH), rng=random.Random(SEED))
    )
    return Rig(network, accept_send, accept_recv, dials, site)


async def next_of(conn: AgentConnection, kind: type, skip: Callable[[object], bool] | None = None):
    """The next message of `kind` from the agent, skipping others."""
    while True:
        msg = await conn.inbound.receive()
        if isinstance(msg, kind) and not (skip and skip(msg)):
            return msg


async def acks_for(conn: AgentConnection, n: int) -> list[SetpointAck]:
    return [await next_of(conn, SetpointAck) for _ in range(n)]


def expected_delays(n: int, resets_before: tuple[int, ...] = (), *, refused: bool = False) -> list[float]:
    backoff = Backoff(rng=random.Random(SEED))
    out = []
    for i in range(n):
        if i in resets_before:
            backoff.reset()
        out.append(backoff.next_delay(refused=refused))
    return out


@pytest.fixture(autouse=True)
def _spool_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EDGE_SPOOL_DIR defaults to spool/<agent id> under the working directory: keep each test's apart."""
    monkeypatch.chdir(tmp_path)


# --- registration and telemetry ------------------------------------------------------------------


async def test_gateway_registers_every_asset_and_sends_one_batch_per_tick(autojump_clock: object) -> None:
    config = gateway_config(RIDGEWAY)
    assets = INVENTORY.assets_of(RIDGEWAY)
    assert len(assets) == 13
    rejected = assets[-1].id
    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        rig = await start(nursery, config)
        conn, reg = await rig.accept_and_register(reject=(rejected,))
        assert reg == Register(
            agent_id=RIDGEWAY,
            gateway_id=RIDGEWAY,
            site_id=RIDGEWAY,
            asset_id="",
            assets=tuple(
                AssetInfo(a.id, a.site_id, a.type, a.max_mw, a.min_mw, a.capacity_mwhr,
                          a.ramp_rate_mw_per_min, a.efficiency, a.name)
                for a in assets
            ),
            protocol_version=PROTOCOL_VERSION,
            agent_version=agent_version(),
        )
        accepted = {a.id for a in assets[:-1]}
        for tick in (1, 2, 3):
            batch = await conn.inbound.receive()
            assert trio.current_time() - t0 == 4.0 * tick
            assert isinstance(batch, TelemetryBatch)
            assert len(batch.points) == 12
            assert {p.asset_id for p in batch.points} == accepted
            assert {p.seq for p in batch.points} == {tick}
            assert {p.timestamp for p in batch.points} == {EPOCH + 4.0 * tick}
            assert all(p.online and p.site_id == RIDGEWAY and math.isfinite(p.mw_setpoint) for p in batch.points)
        await trio.testing.wait_all_tasks_blocked()
        assert rig.site.stats.batches_sent == 3
        assert rig.site.stats.points_sent == 36
        assert rig.site.snapshot(rejected).seq == 3  # it still runs; its points are just not sent
        # A site setpoint only uses accepted assets.
        await conn.outbound.send(Setpoint("sp-site", asset_id="", site_id=RIDGEWAY, mw=1.0))
        received, applied = await acks_for(conn, 2)
        assert applied.state is AckState.APPLIED
        assert rejected not in {a.asset_id for a in applied.allocations}
        nursery.cancel_scope.cancel()


# --- setpoints -----------------------------------------------------------------------------------


async def test_asset_setpoint_acks_received_then_applied_and_only_that_asset_moves(autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        rig = await start(nursery, gateway_config(HARBOUR))
        conn, _ = await rig.accept_and_register()
        await conn.outbound.send(Setpoint("sp-1", asset_id=B1, site_id=HARBOUR, mw=7.0))
        received, applied = await acks_for(conn, 2)
        assert received == SetpointAck("sp-1", AckState.RECEIVED)
        assert applied == SetpointAck(
            "sp-1", AckState.APPLIED, "applied 5.000 MW (clamped from 7.000)", (Allocation(B1, 5.0),)
        )
        assert trio.current_time() == t0  # acks come straight back
        assert rig.site.snapshot(B1).state.setpoint_mw == 5.0
        for tick in (1, 2):
            batch = await next_of(conn, TelemetryBatch)
            assert trio.current_time() - t0 == 4.0 * tick
            points = {p.asset_id: p for p in batch.points}
            # 10 MW/min ramp: 0.667 MW per 4 s tick toward 5 MW.
            assert points[B1].mw == pytest.approx(tick * 10.0 * 4 / 60)
            assert points[B1].mw_setpoint == 5.0
            assert points[B2].mw == points[B3].mw == 0.0
            assert points[B2].mw_setpoint == points[B3].mw_setpoint == 0.0
        nursery.cancel_scope.cancel()


async def test_site_setpoint_is_split_within_limits_and_assets_move(autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        rig = await start(nursery, gateway_config(HARBOUR))
        conn, _ = await rig.accept_and_register()
        await conn.outbound.send(Setpoint("sp-site", asset_id="", site_id=HARBOUR, mw=-6.0, duration_s=60))
        received, applied = await acks_for(conn, 2)
        assert received.state is AckState.RECEIVED
        assert applied.state is AckState.APPLIED
        assert applied.message == "applied -6.000 MW across 3 assets"
        alloc = {a.asset_id: a.mw for a in applied.allocations}
        assert alloc == {B1: -2.4, B2: -2.4, B3: -1.2}  # shared by rating 5 : 5 : 2.5
        assert sum(alloc.values()) == pytest.approx(-6.0)
        for a in INVENTORY.assets_of(HARBOUR):
            assert a.min_mw <= alloc[a.id] <= a.max_mw
            assert rig.site.snapshot(a.id).state.setpoint_mw == alloc[a.id]
        batch = await next_of(conn, TelemetryBatch)
        points = {p.asset_id: p for p in batch.points}
        assert points[B1].mw == points[B2].mw == pytest.approx(-10.0 * 4 / 60)
        assert points[B3].mw == pytest.approx(-5.0 * 4 / 60)
        nursery.cancel_scope.cancel()


async def test_duplicate_setpoint_id_is_answered_with_its_outcome_and_applied_once(autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        rig = await start(nursery, gateway_config(HARBOUR))
        conn, _ = await rig.accept_and_register()
        await conn.outbound.send(Setpoint("sp-1", asset_id=B2, site_id="", mw=3.0))
        first = (await acks_for(conn, 2))[1]
        assert first.message == "applied 3.000 MW"
        await conn.outbound.send(Setpoint("sp-1", asset_id=B2, site_id="", mw=1.0))
        assert await next_of(conn, SetpointAck) == first  # no RECEIVED, the earlier outcome
        assert rig.site.snapshot(B2).state.setpoint_mw == 3.0
        # A rejection is remembered too.
        await conn.outbound.send(Setpoint("sp-2", asset_id="nope", site_id="", mw=1.0))
        rejected = (await acks_for(conn, 2))[1]
        assert rejected == SetpointAck("sp-2", AckState.REJECTED, "unknown asset nope")
        await conn.outbound.send(Setpoint("sp-2", asset_id=B2, site_id="", mw=1.0))
        assert await next_of(conn, SetpointAck) == rejected
        # ... and across a reconnect.
        rig.network.cut_all()
        conn, _ = await rig.accept_and_register()
        await conn.outbound.send(Setpoint("sp-1", asset_id=B2, site_id="", mw=2.0))
        assert await next_of(conn, SetpointAck) == first
        stats = rig.site.stats
        assert (stats.setpoints_applied, stats.setpoints_rejected, stats.setpoints_duplicate) == (1, 1, 3)
        assert rig.site.snapshot(B2).state.setpoint_mw == 3.0
        nursery.cancel_scope.cancel()


async def test_gateway_refuses_bad_and_unaddressed_setpoints(autojump_clock: object) -> None:
    cases = [
        (Setpoint("a", asset_id="", site_id="", mw=1.0),
         "setpoint names neither asset_id nor site_id; a gateway needs one of them"),
        (Setpoint("b", asset_id="", site_id=RIDGEWAY, mw=1.0),
         f"unknown site {RIDGEWAY}: this agent serves site {HARBOUR}"),
        (Setpoint("c", asset_id=B1, site_id="", mw=math.nan), "mw must be a finite number, got nan"),
        (Setpoint("d", asset_id=B1, site_id="", mw=1.0, duration_s=-1.0),
         "duration_s must be finite and >= 0, got -1.0"),
    ]
    async with trio.open_nursery() as nursery:
        rig = await start(nursery, gateway_config(HARBOUR))
        conn, _ = await rig.accept_and_register()
        for sp, reason in cases:
            await conn.outbound.send(sp)
            assert await acks_for(conn, 2) == [
                SetpointAck(sp.setpoint_id, AckState.RECEIVED),
                SetpointAck(sp.setpoint_id, AckState.REJECTED, reason),
            ]
        assert {rig.site.snapshot(a).state.setpoint_mw for a in (B1, B2, B3)} == {0.0}
        nursery.cancel_scope.cancel()


async def test_legacy_single_asset_agent(autojump_clock: object) -> None:
    config = legacy_config()
    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        rig = await start(nursery, config)
        conn, reg = await rig.accept_and_register()
        assert (reg.agent_id, reg.gateway_id, reg.site_id, reg.asset_id) == (f"agent-{B1}", "", HARBOUR, B1)
        assert [a.asset_id for a in reg.assets] == [B1]
        await conn.outbound.send(Setpoint("legacy", asset_id="", site_id="", mw=-1.5))
        assert (await acks_for(conn, 2))[1].message == "applied -1.500 MW"
        await conn.outbound.send(Setpoint("site", asset_id="", site_id=HARBOUR, mw=3.0))
        ack = (await acks_for(conn, 2))[1]
        assert (ack.state, ack.allocations) == (AckState.APPLIED, (Allocation(B1, 2.0),))
        assert ack.message == "applied 2.000 MW across 1 asset (shortfall 1.000 MW of 3.000)"
        batch = await next_of(conn, TelemetryBatch)
        assert trio.current_time() - t0 == 4.0
        (point,) = batch.points
        assert (point.asset_id, point.seq, point.mw_setpoint) == (B1, 1, 2.0)
        assert point.mw == pytest.approx(6.0 * 4 / 60)  # 6 MW/min toward +2 MW
        nursery.cancel_scope.cancel()


# --- reconnects ------------------------------------------------------------------------------------


async def test_redials_after_a_cut_on_the_backoff_schedule(autojump_clock: object) -> None:
    d = expected_delays(5, resets_before=(4,))
    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        rig = await start(nursery, gateway_config(HARBOUR))
        await rig.accept_and_register()
        await trio.sleep(10)
        rig.network.cut_all()  # short sessions (< 30 s) keep growing the delay: 0.5, 1, 2, 4 s ceilings
        t = 10.0
        for i in range(3):
            conn = await rig.accept()
            t += d[i]
            assert trio.current_time() - t0 == pytest.approx(t, abs=1e-9)
            assert isinstance(await conn.inbound.receive(), Register)  # the dial has completed
            rig.network.cut_all()  # dropped before registering
        conn, _ = await rig.accept_and_register()
        t += d[3]
        assert trio.current_time() - t0 == pytest.approx(t, abs=1e-9)
        assert d[3] <= 4.0
        await trio.sleep(40)  # registered and up >= 30 s: healthy, so the backoff resets
        rig.network.cut_all()
        conn = await rig.accept()
        assert trio.current_time() - t0 == pytest.approx(t + 40 + d[4], abs=1e-9)
        assert isinstance(await conn.inbound.receive(), Register)
        assert d[4] <= 0.5
        assert rig.site.stats.sessions_started == 6
        assert rig.site.stats.last_disconnect_reason == "headend closed the stream"
        assert rig.dials == pytest.approx([t0 + x for x in (0, 10 + d[0], 10 + sum(d[:2]), 10 + sum(d[:3]),
                                                             10 + sum(d[:4]), t + 40 + d[4])], abs=1e-9)
        nursery.cancel_scope.cancel()


async def test_refused_dials_back_off_with_growing_ceilings_and_points_are_spooled(autojump_clock: object) -> None:
    config = legacy_config()
    d = expected_delays(12, refused=True)
    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        rig = await start(nursery, config, listening=False)
        await trio.sleep(sum(d[:11]) + 1e-3)  # eleven refused dials so far; the twelfth is due at sum(d)
        assert rig.dials == pytest.approx([t0 + sum(d[:i]) for i in range(12)], abs=1e-9)
        for i, delay in enumerate(d):
            assert delay <= min(5.0, 0.5 * 2**i)  # nothing listening: the refused-dial cap
        assert rig.site.stats.connect_failures == 12
        rig.network.accept_channel = rig.accept_send
        conn, _ = await rig.accept_and_register()
        assert trio.current_time() - t0 == pytest.approx(sum(d), abs=1e-9)
        ticks_missed = math.floor(sum(d) / 4.0)
        assert ticks_missed >= 3  # a newest point and a backlog of two
        assert rig.site.stats.points_dropped == 0  # spooled, not dropped
        # The newest spooled point goes first, then the backlog oldest first, then live.
        latest = await next_of(conn, TelemetryBatch)
        assert [p.seq for p in latest.points] == [ticks_missed]
        backfill = await next_of(conn, TelemetryBatch)
        assert [p.seq for p in backfill.points] == list(range(1, ticks_missed))
        assert trio.current_time() - t0 == pytest.approx(sum(d), abs=1e-9)
        batch = await next_of(conn, TelemetryBatch)
        assert batch.points[0].seq == ticks_missed + 1  # seq counts on through the outage
        nursery.cancel_scope.cancel()


async def test_stale_headend_stream_is_closed_and_redialed(autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        rig = await start(nursery, gateway_config(HARBOUR))
        conn, _ = await rig.accept_and_register()
        heartbeats: list[float] = []

        async def headend_heartbeat_at_50() -> None:
            await trio.sleep(50)
            await conn.outbound.send(Heartbeat(EPOCH + 50))

        nursery.start_soon(headend_heartbeat_at_50)
        with pytest.raises(trio.EndOfChannel):
            while True:
                msg = await conn.inbound.receive()
                if isinstance(msg, Heartbeat):
                    heartbeats.append(trio.current_time() - t0)
                    assert msg.timestamp == EPOCH + heartbeats[-1]
        # Silent since the heartbeat at 50 s: stale 90 s later.
        assert trio.current_time() - t0 == 140.0
        assert heartbeats == [30.0, 60.0, 90.0, 120.0]
        assert rig.site.stats.last_disconnect_reason == "stale stream: no message from the headend for 90 s"
        await rig.accept()
        assert trio.current_time() - t0 == pytest.approx(140.0 + expected_delays(1)[0], abs=1e-9)
        nursery.cancel_scope.cancel()


async def test_no_register_ack_ends_the_session_after_the_timeout(autojump_clock: object) -> None:
    config = gateway_config(HARBOUR, headend_timeout_s=18.0)
    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        rig = await start(nursery, config)
        conn = await rig.accept()
        assert isinstance(await conn.inbound.receive(), Register)
        with pytest.raises(trio.EndOfChannel):
            while True:
                msg = await conn.inbound.receive()
                assert not isinstance(msg, TelemetryBatch | Heartbeat)  # nothing before the ack
        assert trio.current_time() - t0 == 18.0
        await trio.testing.wait_all_tasks_blocked()
        assert rig.site.stats.last_disconnect_reason == "no register ack"
        assert rig.site.stats.points_dropped == 0
        assert rig.site.spool.pending() == 4 * 3  # ticks at 4..16 s, three assets: kept for the next session
        await rig.accept()
        assert trio.current_time() - t0 == pytest.approx(18.0 + expected_delays(1)[0], abs=1e-9)
        nursery.cancel_scope.cancel()


# --- supervision -----------------------------------------------------------------------------------


async def test_crashed_asset_actor_restarts_and_keeps_its_seq(autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        rig = await start(nursery, gateway_config(HARBOUR))
        conn, _ = await rig.accept_and_register()
        batch = await next_of(conn, TelemetryBatch)
        assert {p.seq for p in batch.points} == {1}
        await trio.sleep(1)
        with pytest.raises(AssetUnavailable):
            await rig.site.assets[B3].apply_setpoint(math.nan)  # physics refuses nan: the actor crashes
        assert not rig.site.snapshot(B3).online
        assert rig.site.snapshot(B3).seq == 1
        await trio.sleep(0.099)
        assert not rig.site.snapshot(B3).online
        await trio.sleep(0.002)  # supervise restarted it 0.1 s after the crash
        assert rig.site.snapshot(B3).online
        batch = await next_of(conn, TelemetryBatch)
        assert trio.current_time() - t0 == 8.0  # still on the tick grid
        assert {p.asset_id: p.seq for p in batch.points} == {B1: 2, B2: 2, B3: 2}
        applied = await rig.site.assets[B3].apply_setpoint(1.0)
        assert (applied.mw, applied.clamped) == (1.0, False)
        nursery.cancel_scope.cancel()


async def test_a_tick_that_raises_crashes_only_that_asset_and_it_comes_back_on_the_grid(
    autojump_clock: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_step = physics.step
    failures = [RuntimeError("simulated physics bug")]

    def step(asset, state, *args):  # B3's physics raises once, at its second tick
        if asset.id == B3 and state is not None and trio.current_time() >= t0 + 8.0 and failures:
            raise failures.pop()
        return real_step(asset, state, *args)

    monkeypatch.setattr(physics, "step", step)
    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        rig = await start(nursery, gateway_config(HARBOUR))
        conn, _ = await rig.accept_and_register()
        batch = await next_of(conn, TelemetryBatch)
        assert {p.asset_id: p.seq for p in batch.points} == {B1: 1, B2: 1, B3: 1}
        batch = await next_of(conn, TelemetryBatch)
        assert trio.current_time() - t0 == 8.0
        assert {p.asset_id: p.seq for p in batch.points} == {B1: 2, B2: 2}  # B3's tick crashed it
        assert not rig.site.snapshot(B3).online
        await trio.sleep(0.099)
        assert not rig.site.snapshot(B3).online
        await trio.sleep(0.002)  # supervise restarted it 0.1 s after the crash
        assert rig.site.snapshot(B3).online and rig.site.snapshot(B3).seq == 1
        batch = await next_of(conn, TelemetryBatch)
        assert trio.current_time() - t0 == 12.0  # the next tick of the same grid
        assert {p.asset_id: p.seq for p in batch.points} == {B1: 3, B2: 3, B3: 2}  # seq goes on, no gap
        applied = await rig.site.assets[B3].apply_setpoint(1.0)  # the new incarnation serves requests
        assert (applied.mw, applied.clamped) == (1.0, False)
        nursery.cancel_scope.cancel()
