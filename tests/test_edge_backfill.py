"""Spooled telemetry on MockClock: a real site against a scripted headend that acknowledges points.

The headend is the test: it accepts MemoryNetwork connections, answers Register, and sends a
TelemetryAck for what it chooses to "store". Every time asserted is an exact virtual time.
"""

from __future__ import annotations

import functools
import random
from collections import Counter
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from der_actors.acks import PendingAcks, seqs_by_asset
from der_actors.clock import WallClock
from der_actors.inventory import load_inventory
from der_actors.messages import (
    Register,
    RegisterAck,
    Rejection,
    Setpoint,
    Telemetry,
    TelemetryAck,
    TelemetryBatch,
)
from der_actors.transport.link import AgentConnection, MemoryNetwork
from edge.config import EdgeConfig, load_config
from edge.delivery import RESEND_AFTER_S
from edge.site import SiteHandle, run_site

ASSETS = str(Path(__file__).resolve().parent.parent / "assets.yaml")
INVENTORY = load_inventory(ASSETS)
RIDGEWAY = "f91f3035-50e0-4460-81ba-4fe29ad09222"
HARBOUR = "7e3a446b-8390-41f8-ba6c-946169ccf1e8"
B1, B2, B3 = (a.id for a in INVENTORY.assets_of(HARBOUR))
EPOCH = 1_780_315_200.0


def config_for(site_id: str, spool: Path, **changes: object) -> EdgeConfig:
    config = load_config(["--gateway-site-id", site_id, "--assets-path", ASSETS,
                          "--edge-spool-dir", str(spool)], {})
    return attrs.evolve(config, **changes)


@attrs.define
class Headend:
    """The scripted headend: a MemoryNetwork it can open and close, and what it was sent."""

    network: MemoryNetwork
    accept_send: trio.MemorySendChannel[AgentConnection]
    accepted: trio.MemoryReceiveChannel[AgentConnection]

    def listen(self, on: bool = True) -> None:
        self.network.accept_channel = self.accept_send if on else None

    async def register(self, at: float | None = None, reject: tuple[str, ...] = ()) -> AgentConnection:
        """Accept the next dial; answer its Register at virtual time `at` (default: at once)."""
        conn = await self.accepted.receive()
        reg = await conn.inbound.receive()
        assert isinstance(reg, Register)
        if at is not None:
            await trio.sleep_until(at)
        ok = tuple(a.asset_id for a in reg.assets if a.asset_id not in reject)
        await conn.outbound.send(RegisterAck("s", ok, tuple(Rejection(a, "unknown") for a in reject)))
        return conn


def start_site(nursery: trio.Nursery, config: EdgeConfig, headend: Headend):
    return nursery.start(functools.partial(run_site, config, lambda: headend.network.dial("edge"),
                                           clock=WallClock.pinned(EPOCH), rng=random.Random(7)))


def new_headend() -> Headend:
    send, recv = trio.open_memory_channel[AgentConnection](16)
    return Headend(MemoryNetwork(), send, recv)


async def ack(conn: AgentConnection, points: tuple[Telemetry, ...]) -> None:
    pending = PendingAcks()
    for asset_id, seqs in seqs_by_asset((p.asset_id, p.seq) for p in points).items():
        pending.add(asset_id, seqs)
    await conn.outbound.send(TelemetryAck(tuple(pending.take())))


async def batches_until(conn: AgentConnection, until: float, *, acking: bool = True) -> list[tuple[float, TelemetryBatch]]:
    """Every TelemetryBatch until virtual time `until`, with its arrival time; acked as it comes."""
    out = []
    with trio.move_on_at(until):
        while True:
            msg = await conn.inbound.receive()
            if isinstance(msg, TelemetryBatch):
                out.append((trio.current_time(), msg))
                if acking:
                    await ack(conn, msg.points)
    return out


def keys(points) -> list[tuple[str, int]]:
    return [(p.asset_id, p.seq) for p in points]


async def test_an_hour_offline_backfills_at_the_rate_after_the_newest_points_and_every_point_once(
    autojump_clock: object, tmp_path: Path
) -> None:
    config = config_for(RIDGEWAY, tmp_path / "spool")
    config = attrs.evolve(config, assets=config.assets[:12])  # 12 assets at 4 s, 2000 points/s backfill
    ids = [a.id for a in config.assets]
    headend = new_headend()
    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        site: SiteHandle = await start_site(nursery, config, headend)
        await trio.sleep(3570)
        headend.listen()  # the agent's next dial comes within its 30 s backoff cap
        reg_at = t0 + 3600.3
        conn = await headend.register(at=reg_at)
        assert site.spool.pending() == 12 * 900 and site.stats.points_dropped == 0
        got = await batches_until(conn, t0 + 3619)
        rel = [(round(t - t0, 6), b) for t, b in got]

        # First, at registration: the newest point of every asset (what the operator sees as "now").
        assert rel[0][0] == 3600.3
        assert keys(rel[0][1].points) == [(a, 900) for a in ids]
        live = [(t, b) for t, b in rel[1:] if b.points[0].seq > 900]
        backfill = [(t, b) for t, b in rel[1:] if b.points[0].seq < 900]
        # Live ticks go out on their grid, never behind the backfill.
        assert [t for t, _ in live] == [3604.0, 3608.0, 3612.0, 3616.0]
        assert [sorted(keys(b.points)) for _, b in live] == [sorted((a, s) for a in ids) for s in (901, 902, 903, 904)]
        assert [b.points[0].timestamp for _, b in live] == [EPOCH + t for t, _ in live]
        # Backfill: 500 points every 0.25 s from registration, oldest first, original seqs and timestamps.
        assert [t for t, _ in backfill] == pytest.approx([3600.3 + 0.25 * k for k in range(22)], abs=1e-6)
        assert [len(b.points) for _, b in backfill] == [500] * 21 + [12 * 899 - 21 * 500]
        replayed = [p for _, b in backfill for p in b.points]
        assert [p.seq for p in replayed] == [s for s in range(1, 900) for _ in ids]  # in the order produced
        assert set(keys(replayed)) == {(a, s) for s in range(1, 900) for a in ids}
        assert all(p.timestamp == EPOCH + 4.0 * p.seq for p in replayed)
        # Every point reached the headend exactly once: 12 * 900 spooled + 4 live ticks.
        sent = Counter(k for _, b in rel for k in keys(b.points))
        assert sum(sent.values()) == 12 * 900 + 12 * 4
        assert set(sent.values()) == {1}
        assert set(sent) == {(a, s) for a in ids for s in range(1, 905)}
        await trio.testing.wait_all_tasks_blocked()
        assert site.spool.pending() == 0
        assert (site.stats.points_backfilled, site.stats.points_resent) == (12 * 899, 0)
        assert len(site.spool.segment_ids()) == 1  # acknowledged segments are gone
        nursery.cancel_scope.cancel()


async def test_points_a_dropped_session_sent_without_ack_are_replayed_after_reconnect(
    autojump_clock: object, tmp_path: Path
) -> None:
    headend = new_headend()
    headend.listen()
    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        site = await start_site(nursery, config_for(HARBOUR, tmp_path), headend)
        conn = await headend.register()
        first = await batches_until(conn, t0 + 4.5)  # acked
        rest = await batches_until(conn, t0 + 13, acking=False)  # ticks 2 and 3: never acked
        assert [[p.seq for p in b.points] for _, b in first + rest] == [[1] * 3, [2] * 3, [3] * 3]
        headend.network.cut_all()
        conn = await headend.register()
        back_at = trio.current_time()
        assert back_at - t0 < 16  # reconnected before the next tick
        got = await batches_until(conn, t0 + 17)
        assert [(t - back_at, sorted(keys(b.points))) for t, b in got] == [
            (0.0, sorted([(B1, 3), (B2, 3), (B3, 3)])),  # the newest first
            (0.0, sorted([(B1, 2), (B2, 2), (B3, 2)])),  # then the backlog
            (16.0 - (back_at - t0), sorted([(B1, 4), (B2, 4), (B3, 4)])),  # live
        ]
        assert site.stats.points_backfilled == 3
        # All acknowledged: nothing is sent again, however long the session lasts.
        later = await batches_until(conn, t0 + 17 + 2 * RESEND_AFTER_S)
        assert all(b.points[0].seq > 4 for _, b in later)
        assert site.stats.points_resent == 0 and site.spool.pending() <= 3
        nursery.cancel_scope.cancel()


async def test_a_batch_unacknowledged_for_a_minute_is_sent_again_in_the_same_session(
    autojump_clock: object, tmp_path: Path
) -> None:
    headend = new_headend()
    headend.listen()
    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        site = await start_site(nursery, config_for(HARBOUR, tmp_path, telemetry_interval_s=7.0), headend)
        conn = await headend.register()
        lost = await batches_until(conn, t0 + 7.5, acking=False)  # the headend shed this one
        assert [t - t0 for t, _ in lost] == [7.0]
        got = await batches_until(conn, t0 + 7 + RESEND_AFTER_S + 1)
        resent = [(t - t0, sorted(keys(b.points))) for t, b in got if b.points[0].seq == 1]
        assert resent == [(7.0 + RESEND_AFTER_S, sorted([(B1, 1), (B2, 1), (B3, 1)]))]
        assert site.stats.points_resent == 3
        await trio.testing.wait_all_tasks_blocked()
        assert site.spool.pending() == 0
        nursery.cancel_scope.cancel()


async def test_a_full_spool_drops_the_oldest_points_counts_them_and_says_so_in_status(
    autojump_clock: object, tmp_path: Path
) -> None:
    config = config_for(HARBOUR, tmp_path, spool_max_mb=0.1)  # ~100 KB: about 1,000 points
    headend = new_headend()
    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        site = await start_site(nursery, config, headend)
        await trio.sleep(2 * 3600 - 30)  # two hours offline: 5,400 points, far more than fit
        headend.listen()
        conn = await headend.register(at=t0 + 7200.5)
        got = await batches_until(conn, t0 + 7210)
        points = [p for _, b in got for p in b.points]
        assert Counter(keys(points)).most_common(1)[0][1] == 1
        produced = 7208 // 4
        dropped = {}
        for a in (B1, B2, B3):
            seqs = sorted(p.seq for p in points if p.asset_id == a)
            first = seqs[0]
            assert seqs == list(range(first, produced + 1))  # the newest survive, without a gap
            dropped[a] = first - 1
            assert site.spool.dropped(a) == dropped[a] > 0
            notes = [int(p.status.split("spool dropped ")[1].split()[0]) if "spool dropped" in p.status else 0
                     for p in sorted((p for p in points if p.asset_id == a), key=lambda p: p.seq)]
            assert notes == sorted(notes) and notes[-1] == dropped[a]  # the count as it was when produced
            last = max((p for p in points if p.asset_id == a), key=lambda p: p.seq)
            assert last.status.endswith(f"; spool dropped {dropped[a]} points")
        assert site.stats.points_dropped == site.spool.dropped_total == sum(dropped.values())
        assert len(points) == 3 * produced - sum(dropped.values())
        nursery.cancel_scope.cancel()


async def test_the_spool_and_setpoint_outcomes_survive_an_agent_restart(autojump_clock: object, tmp_path: Path) -> None:
    config = config_for(HARBOUR, tmp_path / "spool")
    headend = new_headend()
    headend.listen()
    async with trio.open_nursery() as nursery:  # the first run of the agent
        t0 = trio.current_time()
        site = await start_site(nursery, config, headend)
        conn = await headend.register()
        await conn.outbound.send(Setpoint("sp-1", asset_id=B1, site_id="", mw=2.0))
        first = await batches_until(conn, t0 + 8.5)  # ticks 1 and 2 stored and acked
        assert site.snapshot(B1).state.setpoint_mw == 2.0
        headend.listen(False)
        headend.network.cut_all()
        await trio.sleep_until(t0 + 100.5)  # 23 more ticks, spooled
        assert site.spool.pending() == 3 * 23
        nursery.cancel_scope.cancel()
    assert [[p.seq for p in b.points] for _, b in first] == [[1] * 3, [2] * 3]

    headend.listen()
    async with trio.open_nursery() as nursery:  # the agent starts again on the same directory
        t1 = trio.current_time()
        site = await start_site(nursery, config, headend)
        assert {a: site.snapshot(a).seq for a in (B1, B2, B3)} == dict.fromkeys((B1, B2, B3), 25)
        conn = await headend.register()
        await conn.outbound.send(Setpoint("sp-1", asset_id=B1, site_id="", mw=2.0))  # resent by the headend
        got = await batches_until(conn, t1 + 4.5)
        ack_msgs = []
        with trio.move_on_after(0):
            while True:
                ack_msgs.append(await conn.inbound.receive())
        seqs = [[p.seq for p in b.points] for _, b in got]
        assert seqs[0] == [25] * 3  # the first run's newest
        assert sorted(s for batch in seqs[1:-1] for s in batch) == sorted(list(range(3, 25)) * 3)
        assert seqs[-1] == [26] * 3  # this run's first tick: seq goes on
        assert all(p.timestamp == EPOCH + 4.0 * p.seq for _, b in got[:-1] for p in b.points)  # original times
        assert {p.timestamp for p in got[-1][1].points} == {EPOCH + t1 + 4.0}
        assert site.stats.setpoints_duplicate == 1 and site.stats.setpoints_applied == 0
        assert site.snapshot(B1).state.setpoint_mw == 2.0  # held across the restart, not applied again
        nursery.cancel_scope.cancel()


async def test_points_of_an_asset_the_headend_refuses_are_discarded_not_replayed(
    autojump_clock: object, tmp_path: Path
) -> None:
    headend = new_headend()
    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        site = await start_site(nursery, config_for(HARBOUR, tmp_path), headend)
        await trio.sleep(10)  # ticks 1 and 2 spooled for three assets
        headend.listen()
        conn = await headend.register(reject=(B3,))
        got = await batches_until(conn, t0 + 42.5)
        assert all(p.asset_id != B3 for _, b in got for p in b.points)
        assert Counter(keys(p for _, b in got for p in b.points)) == Counter(
            (a, s) for a in (B1, B2) for s in range(1, 11))
        assert site.stats.points_discarded == 10 * 1  # B3's ticks 1..10, discarded as they come
        await trio.testing.wait_all_tasks_blocked()
        assert site.spool.pending() == 0
        nursery.cancel_scope.cancel()


async def test_a_session_refused_as_a_whole_discards_nothing(autojump_clock: object, tmp_path: Path) -> None:
    headend = new_headend()
    headend.listen()
    async with trio.open_nursery() as nursery:
        site = await start_site(nursery, config_for(HARBOUR, tmp_path), headend)
        await trio.sleep(10)
        conn = await headend.accepted.receive()
        assert isinstance(await conn.inbound.receive(), Register)
        # What the headend answers an agent whose protocol version it refuses: nothing accepted.
        await conn.outbound.send(RegisterAck("s", (), tuple(Rejection(a, "protocol version 9 is too new")
                                                           for a in (B1, B2, B3))))
        conn.outbound.close()
        await trio.sleep(1)
        assert site.stats.points_discarded == 0 and site.spool.pending() == 3 * 2
        nursery.cancel_scope.cancel()
