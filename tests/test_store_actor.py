"""The store actor on trio's MockClock over real engines: batching, the outage policy (bounded buffer,
drop oldest telemetry, never drop records, reconnect, drain), retention, and a headend restart.

Worker threads and MockClock: the autojump clock jumps to the next deadline whenever trio is idle,
also while a storage call runs in a thread. So times are asserted exactly only around non-blocking
(memory) storage, waits across thread calls are bounded in real time (`eventually`), and a
`metronome` keeps the next deadline near so that no far timeout fires during a thread call.
"""

from __future__ import annotations

import contextlib
import time

import attrs
import pytest
import trio
import trio.testing

from der_actors.actors.context import HeadendConfig
from der_actors.actors.headend import run_headend
from der_actors.actors.store import StoreActor
from der_actors.clock import WallClock
from der_actors.dispatching import DispatchRequest
from der_actors.inventory import load_inventory
from der_actors.lifecycle import DispatchState, Lifecycle
from der_actors.messages import (
    AckState, AssetInfo, Heartbeat, Register, RegisterAck, Setpoint, SetpointAck, Telemetry, TelemetryAck, TelemetryBatch,
)
from der_actors.storage.base import PointRow, StorageUnavailable, WriteBatch
from der_actors.storage.memory import MemoryStorage
from der_actors.storage.postgres import PostgresStorage
from der_actors.storage.rows import point_row
from der_actors.storage.sqlite import SqliteStorage
from der_actors.transport.link import MemoryNetwork
from der_actors.views import DispatchView
from storage_engines import PG_SKIP, PG_URL, SqliteLock, engine, postgres_behind_proxy, postgres_schema  # noqa: F401

EPOCH = 1_800_000_000.0
INV = load_inventory("assets.yaml")
HARBOUR = "7e3a446b-8390-41f8-ba6c-946169ccf1e8"
BESS1, BESS2, BESS3 = (a.id for a in INV.assets_of(HARBOUR))
# No heartbeats or stale sessions in the way of clock jumps; these tests are about the store.
QUIET = HeadendConfig(heartbeat_timeout_s=1e9, heartbeat_interval_s=1e9, dispatch_ack_timeout_s=1e9)


async def eventually(predicate, real_s: float = 20.0) -> None:
    """Wait for `predicate()`, bounded in real time (the virtual clock may jump during thread calls).
    Between polls the trio thread also sleeps 1 ms of real time: a store write in a worker thread
    needs the GIL back after each SQLite call, and against a poll that never blocks it got it once
    per switch interval, so writing 40 dispatches sometimes outlasted the bound (1 run in 10)."""
    deadline = time.monotonic() + real_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.001)  # the GIL to the worker (not a wait for anything: no timing depends on it)
        await trio.sleep(0.01)


def pt(asset_id: str, seq: int) -> PointRow:
    return point_row(Telemetry(asset_id, HARBOUR, seq, EPOCH + 4 * seq, 0.5, 0.0), EPOCH + 4 * seq + 0.1)


def dview(dispatch_id: str) -> DispatchView:
    return DispatchView(dispatch_id, "asset", BESS1, HARBOUR, 1.0, 1.0, False, 0.0, "asset", Lifecycle.start(EPOCH))


# --- the batching policy (memory storage: exact virtual times) -------------------------------


async def test_a_batch_closes_on_size_at_once_or_after_the_short_deadline(nursery, autojump_clock):
    store = await nursery.start(StoreActor(MemoryStorage(), batch_rows=10, batch_delay_s=0.05).run)
    store.record_points([pt(BESS1, s) for s in range(1, 4)])
    await trio.sleep(0.049)
    assert store.counters.batches == 0
    await trio.sleep(0.002)
    assert (store.counters.batches, store.counters.stored_points) == (1, 3)
    t = trio.current_time()
    store.record_points([pt(BESS1, s) for s in range(4, 14)])  # a full batch does not wait
    await trio.testing.wait_all_tasks_blocked()
    assert (store.counters.batches, store.counters.stored_points, trio.current_time()) == (2, 13, t)
    store.record_points([pt(BESS1, s) for s in range(14, 17)])
    await trio.sleep(0.01)
    store.record_points([pt(BESS1, s) for s in range(17, 24)])  # completes the waiting batch: written now
    await trio.testing.wait_all_tasks_blocked()
    assert (store.counters.batches, store.counters.stored_points, trio.current_time()) == (3, 23, t + 0.01)


async def test_a_due_batch_waits_while_the_pruner_holds_the_write_lock(nursery, autojump_clock):
    store = await nursery.start(StoreActor(MemoryStorage(), batch_rows=10, batch_delay_s=0.05).run)
    async with store._write_lock:  # as a retention pass does
        store.record_points([pt(BESS1, s) for s in range(1, 4)])
        await trio.sleep(1)
        assert (store.counters.batches, store.buffered_points) == (0, 3)
    await trio.testing.wait_all_tasks_blocked()
    assert (store.counters.batches, store.counters.stored_points, trio.current_time()) == (1, 3, 1.0)


async def test_a_writer_that_fell_behind_takes_up_to_max_batch_rows_in_one_transaction(nursery, autojump_clock):
    @attrs.define
    class Recovering(MemoryStorage):
        down: bool = True
        sizes: list[int] = attrs.field(factory=list)  # points per transaction written

        def write(self, batch: WriteBatch) -> int:
            if self.down:
                raise StorageUnavailable("down")
            self.sizes.append(len(batch.points))
            return super().write(batch)

    storage = Recovering()
    store = await nursery.start(StoreActor(storage, batch_rows=10, max_batch_rows=25, retry_initial_s=1, retry_cap_s=1).run)
    store.record_points([pt(BESS1, s) for s in range(1, 61)])
    await trio.sleep(0.5)
    assert (store.counters.write_errors, store.buffered_points) == (1, 60)
    storage.down = False
    await trio.sleep(1)
    assert storage.sizes == [25, 25, 10] and store.counters.stored_points == 60


async def test_listeners_get_a_big_commit_in_slices_and_other_tasks_run_between_them(nursery, autojump_clock):
    events: list[object] = []
    store = StoreActor(MemoryStorage(), batch_rows=12, settle_slice=5)
    store.stored_listeners.append(lambda points: events.append([p[1] for p in points]))
    await nursery.start(store.run)

    async def another_actor() -> None:
        for _ in range(20):  # more turns than the writer yields before its last slice
            events.append("other")
            await trio.lowlevel.checkpoint()

    store.record_points([pt(BESS1, s) for s in range(1, 13)])  # a full batch: written at once
    nursery.start_soon(another_actor)
    await store.flushed()  # written, and every listener told
    slices = [e for e in events if e != "other"]
    assert slices == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [11, 12]]
    first, last = events.index(slices[0]), events.index(slices[-1])
    assert "other" in events[first:last]  # the loop ran between the slices
    assert store.counters.stored_points == 12 and trio.current_time() == 0


# --- drop policy and accounting on a real engine ---------------------------------------------


async def test_a_full_buffer_drops_the_oldest_telemetry_and_never_a_record(nursery, autojump_clock, tmp_path):
    path = str(tmp_path / "h.sqlite3")
    storage = SqliteStorage(path, busy_timeout_s=0.01)
    storage.open()
    lock = SqliteLock(path)
    lock.down()
    store = await nursery.start(StoreActor(storage, batch_rows=10, buffer_rows=30, retry_initial_s=1, retry_cap_s=1).run)
    for chunk in range(20):
        store.record_points([pt(BESS1, s) for s in range(1 + 5 * chunk, 6 + 5 * chunk)])
    for i in range(40):
        store.record_dispatch(dview(f"d-{i}"))
    await eventually(lambda: store.counters.write_errors >= 2)
    c = store.counters
    assert (c.received_points, c.stored_points, store.buffered_points, c.dropped_points) == (100, 0, 30, 70)
    assert store.buffered_records == 40 and not store.healthy
    lock.up()
    await eventually(lambda: store.buffered_points == 0 and store.buffered_records == 0)
    assert store.healthy and (c.stored_points, c.dropped_points, c.stored_records) == (30, 70, 40)
    assert [r.point.seq for r in storage.telemetry_history(BESS1, None, None, 1000)] == list(range(100, 70, -1))
    assert len(storage.dispatch_history(None, None, 1000)) == 40
    storage.close()


async def test_a_row_the_database_refuses_is_rejected_alone_and_the_rest_is_written(nursery, autojump_clock, engine):
    storage = engine.open()
    store = await nursery.start(StoreActor(storage, batch_rows=100).run)
    good = [pt(BESS1, s) for s in range(1, 21)]
    nan = point_row(Telemetry(BESS1, HARBOUR, 100, EPOCH, float("nan"), 0.0), EPOCH)  # SQLite: NULL
    nul = point_row(Telemetry(BESS1, HARBOUR, 101, EPOCH, 0.0, 0.0, status="x\x00"), EPOCH)  # PostgreSQL: no NUL
    store.record_points(good[:7] + [nan] + good[7:15] + [nul] + good[15:])
    store.record_dispatch(dview("d-1"))
    await eventually(lambda: store.buffered_points == 0 and store.buffered_records == 0)
    c = store.counters
    assert (c.received_points, c.stored_points, c.rejected_points, c.stored_records) == (22, 21, 1, 1)
    assert store.healthy
    stored = {r.point.seq for r in await store.query(storage.telemetry_history, BESS1, None, None, 100)}
    assert stored >= set(range(1, 21)) and len(stored) == 21
    assert await store.query(storage.dispatch, "d-1") == dview("d-1")
    storage.close()


# --- a headend through an outage -------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def outage(request, tmp_path):
    """(storage, outage control with down()/up(), whether reads fail while it is down)."""
    if request.param == "sqlite":
        path = str(tmp_path / "h.sqlite3")
        storage = SqliteStorage(path, busy_timeout_s=0.01)
        storage.open()
        lock = SqliteLock(path)
        try:
            yield storage, lock, False  # WAL: readers go on while the writer is locked out
        finally:
            lock.up()
            storage.close()
        return
    if not PG_URL:
        pytest.skip(PG_SKIP)
    with postgres_schema(PG_URL) as url, postgres_behind_proxy(url) as (proxied, proxy):
        storage = PostgresStorage(proxied)
        storage.open()
        try:
            yield storage, proxy, True
        finally:
            storage.close()


async def metronome() -> None:
    """Keeps a deadline within 1 s, so while a thread runs the autojump clock creeps instead of
    leaping to the next far deadline (a session's 1e9 s stale timeout)."""
    while True:
        await trio.sleep(1)


@contextlib.asynccontextmanager
async def headend(storage, **store_settings):
    async with trio.open_nursery() as nursery:
        nursery.start_soon(metronome)
        h = await nursery.start(run_headend, QUIET, INV, storage, WallClock.pinned(EPOCH))
        for name, value in store_settings.items():
            setattr(h.ctx.store, name, value)
        yield h, MemoryNetwork(accept_channel=h.accept.clone())
        nursery.cancel_scope.cancel()


class Agent:
    """A scripted gateway for Harbourside: one point per asset per tick."""

    def __init__(self, edge, *asset_ids: str) -> None:
        self.edge, self.asset_ids, self.seq, self.sent = edge, asset_ids, 0, 0

    async def register(self) -> RegisterAck:
        infos = tuple(AssetInfo(a, HARBOUR, INV.asset(a).type, INV.asset(a).max_mw, INV.asset(a).min_mw) for a in self.asset_ids)
        await self.edge.outbound.send(Register("agent", "gw", HARBOUR, "", infos))
        ack = await self.edge.inbound.receive()
        assert isinstance(ack, RegisterAck) and set(ack.accepted_asset_ids) == set(self.asset_ids)
        return ack

    async def tick(self, seq: int | None = None) -> None:
        if seq is None:
            self.seq += 1
            seq = self.seq
        await self.edge.outbound.send(TelemetryBatch(tuple(
            Telemetry(a, HARBOUR, seq, EPOCH + 4 * seq, 0.1 * seq, 0.0) for a in self.asset_ids
        )))
        self.sent += len(self.asset_ids)


async def test_an_outage_never_stops_telemetry_or_dispatch_and_history_drains_after(outage, autojump_clock):
    storage, outage, reads_fail = outage
    async with headend(storage, batch_rows=20, buffer_rows=60, retry_initial_s=0.5, retry_cap_s=2) as (h, net):
        ctx, store = h.ctx, h.ctx.store
        async with net.dial("gw") as edge:
            agent = Agent(edge, BESS1, BESS2, BESS3)
            await agent.register()
            for _ in range(5):
                await agent.tick()
            await store.flushed()
            assert storage.count_telemetry() == 15

            outage.down()
            for _ in range(40):  # 120 points, twice the buffer
                await agent.tick()
                await eventually(lambda: ctx.assets[BESS3].view.latest.seq == agent.seq)  # "now" goes on
                assert ctx.assets[BESS1].view.connected
            await eventually(lambda: store.counters.write_errors > 0)
            view = await ctx.dispatches.submit(DispatchRequest(mw=1.0, asset_id=BESS1))
            setpoint = await edge.inbound.receive()
            while isinstance(setpoint, TelemetryAck):  # acks for stored telemetry come first
                setpoint = await edge.inbound.receive()
            assert isinstance(setpoint, Setpoint) and setpoint.mw == 1.0
            await edge.outbound.send(SetpointAck(setpoint.setpoint_id, AckState.APPLIED))
            await eventually(lambda: ctx.dispatches.recent[view.dispatch_id].lifecycle.state is DispatchState.APPLIED)
            await eventually(lambda: store.buffered_records > 0)  # the dispatch's records wait too
            final = ctx.dispatches.recent[view.dispatch_id]
            await edge.outbound.send(Heartbeat(EPOCH + 500))
            await eventually(lambda: store.buffered_records >= 3)

            c = store.counters
            assert c.received_points == agent.sent == 135
            assert c.received_points == c.stored_points + store.buffered_points + c.dropped_points + c.rejected_points
            assert c.dropped_points > 0 and store.buffered_points <= 60 + 20
            assert not store.healthy
            if reads_fail:
                with pytest.raises(StorageUnavailable):
                    await store.query(storage.telemetry_history, BESS1, None, None, 10)
            else:
                assert len(await store.query(storage.telemetry_history, BESS1, None, None, 100)) >= 5

            outage.up()
            await eventually(lambda: store.buffered_points == 0 and store.buffered_records == 0)
            assert store.healthy
            assert c.received_points == c.stored_points + c.dropped_points and c.rejected_points == 0
            assert c.duplicate_points == 0
            assert storage.count_telemetry() == c.stored_points == 135 - c.dropped_points
            newest = await store.query(storage.telemetry_history, BESS3, None, None, 1)
            assert newest[0].point.seq == agent.seq
            assert await store.query(storage.dispatch, view.dispatch_id) == final
            heartbeats = await store.query(storage.heartbeats, BESS2, 10)
            assert [hb.timestamp for hb in heartbeats] == [EPOCH + 500]


async def test_a_replayed_point_is_stored_once_and_counted(tmp_path, autojump_clock):
    storage = SqliteStorage(str(tmp_path / "h.sqlite3"))
    storage.open()
    async with headend(storage) as (h, net), net.dial("gw") as edge:
        agent = Agent(edge, BESS1)
        await agent.register()
        await agent.tick(1)
        await agent.tick(2)
        await agent.tick(1)  # an agent re-sending after a reconnect
        await eventually(lambda: h.ctx.store.counters.stored_points == 3)
        assert h.ctx.store.counters.duplicate_points == 1
        assert [r.point.seq for r in storage.telemetry_history(BESS1, None, None, 10)] == [2, 1]
    storage.close()


# --- retention -------------------------------------------------------------------------------


async def test_retention_prunes_old_telemetry_in_small_batches(nursery, autojump_clock, tmp_path):
    storage = SqliteStorage(str(tmp_path / "h.sqlite3"))
    storage.open()
    storage.save_inventory(INV)
    # a point a day per asset for 10 days; at day 9 + 60 s a 7-day retention removes days 0, 1 and 2
    day = 86_400
    storage.write(WriteBatch(points=[
        point_row(Telemetry(a, HARBOUR, d, EPOCH + d * day, 0.0, 0.0), EPOCH + d * day) for a in (BESS1, BESS2) for d in range(10)
    ]))
    store = StoreActor(storage, retention_s=7 * day, prune_first_s=60, prune_every_s=3600, prune_rows=2,
                       now=lambda: EPOCH + 9 * day + trio.current_time())
    await nursery.start(store.run)
    await eventually(lambda: store.counters.pruned_rows >= 3 * 2)
    await trio.sleep(1)
    assert store.counters.pruned_rows == 3 * 2
    assert [r.point.seq for r in storage.telemetry_history(BESS1, None, None, 100)] == list(range(9, 2, -1))
    assert storage.count_telemetry() == 14
    storage.close()


# --- restart ---------------------------------------------------------------------------------


async def test_history_and_sessions_survive_a_headend_restart(engine, autojump_clock):
    storage = engine.open()
    async with contextlib.AsyncExitStack() as outlives_the_headend, headend(storage) as (h, net):
        async with net.dial("gw-1") as edge:
            agent = Agent(edge, BESS1, BESS2)
            first = await agent.register()
            for _ in range(5):
                await agent.tick()
            view = await h.ctx.dispatches.submit(DispatchRequest(mw=0.5, asset_id=BESS1))
            sp = await edge.inbound.receive()
            while isinstance(sp, TelemetryAck):
                sp = await edge.inbound.receive()
            await edge.outbound.send(SetpointAck(sp.setpoint_id, AckState.APPLIED))
            await eventually(lambda: h.ctx.dispatches.recent[view.dispatch_id].lifecycle.state.terminal)
            final = h.ctx.dispatches.recent[view.dispatch_id]
        await eventually(lambda: not h.ctx.assets[BESS1].view.connected)
        edge2 = await outlives_the_headend.enter_async_context(net.dial("gw-2"))  # connected when it stops
        second = await Agent(edge2, BESS3).register()
        await h.ctx.store.flushed()
    storage.close()

    storage = engine.open()
    async with headend(storage) as (h, net):
        ctx = h.ctx
        sessions1 = ctx.assets[BESS1].view.sessions
        assert [s.session_id for s in sessions1] == [first.session_id]
        assert sessions1[0].reason == "stream closed by agent" and not ctx.assets[BESS1].view.connected
        sessions3 = ctx.assets[BESS3].view.sessions
        assert [(s.session_id, s.reason) for s in sessions3] == [(second.session_id, "headend restarted")]
        assert sessions3[0].disconnected_at is not None
        points = await ctx.store.query(storage.telemetry_history, BESS2, None, None, 100)
        assert [p.point.seq for p in points] == [5, 4, 3, 2, 1]
        assert view.dispatch_id not in ctx.dispatches.recent
        assert await ctx.dispatches.view(view.dispatch_id) == final
        assert await ctx.store.query(storage.dispatch_history, BESS1, None, 10) == [final]
        await ctx.store.flushed()  # the restart's note on the session the last run left open
        assert (await ctx.store.query(storage.sessions, BESS3, 5))[0].reason == "headend restarted"
    storage.close()

