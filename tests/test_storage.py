"""The storage interface, one suite for every engine: SQLite (tmp_path), PostgreSQL (a schema of its
own; see storage_engines.py) and, where behaviour must match, the in-memory store."""

from __future__ import annotations

import contextlib
import gc
import sqlite3

import psycopg
import pytest

from der_actors.inventory import load_inventory
from der_actors.lifecycle import DispatchState, Lifecycle
from der_actors.messages import Allocation, BessDetails, EvDetails, PvDetails, Telemetry, WindDetails
from der_actors.storage import DEFAULT_SQLITE_PATH, StorageConfigError, open_storage
from der_actors.storage.base import HeartbeatRow, SchemaTooNew, StoredPoint, WriteBatch
from der_actors.storage.memory import MemoryStorage
from der_actors.storage.rows import point_row
from der_actors.storage.schema import SCHEMA_VERSION
from der_actors.storage.sqlite import SqliteStorage
from der_actors.views import DispatchView, Leg, SessionSummary
from storage_engines import any_engine, engine, engine_for  # noqa: F401  (fixtures)

INV = load_inventory("assets.yaml")
HARBOUR = "7e3a446b-8390-41f8-ba6c-946169ccf1e8"
BESS1, BESS2, BESS3 = (a.id for a in INV.assets_of(HARBOUR))
OTHER_SITE = next(s.id for s in INV.sites if s.id != HARBOUR)
OTHER_ASSET = INV.assets_of(OTHER_SITE)[0].id
T0 = 1_800_000_000.0


def point(asset_id: str, seq: int, ts: float | None = None, *, details=None, site_id: str = HARBOUR) -> StoredPoint:
    ts = T0 + 4 * seq if ts is None else ts
    return StoredPoint(
        Telemetry(asset_id, site_id, seq, ts, 0.25 * seq, 1.0 / 3, seq % 5 != 0, "ok", "F1" if seq % 7 == 0 else "", details),
        ts + 0.125,
    )


def batch(points=(), **records) -> WriteBatch:
    """A write of these points (as the store buffers them) and records."""
    return WriteBatch(points=[point_row(sp.point, sp.received_at) for sp in points], **records)


def dispatch(dispatch_id: str, at: float, *, asset_id: str | None = BESS1, site_id: str = HARBOUR,
             allocations=(), legs=(), state: DispatchState = DispatchState.SENT) -> DispatchView:
    lifecycle = Lifecycle.start(at).to(DispatchState.SENT, at + 0.001)
    if state is not DispatchState.SENT:
        lifecycle = lifecycle.to(state, at + 1.5, "the agent said so")
    return DispatchView(
        dispatch_id=dispatch_id, target="asset" if asset_id else "site", asset_id=asset_id, site_id=site_id,
        requested_mw=2.0 / 3, applied_mw=0.5, clamped=True, duration_s=900.0,
        mode="asset" if asset_id else "headend_split", lifecycle=lifecycle, legs=tuple(legs),
        allocations=tuple(allocations), shortfall_mw=0.1, message="clamped to 0.5 MW",
    )


def session(session_id: str, at: float, *asset_ids: str, closed: float | None = None) -> SessionSummary:
    return SessionSummary(
        session_id=session_id, agent_id="agent-" + session_id, gateway_id="gw-" + session_id, site_id=HARBOUR,
        peer="10.0.0.7:40000", connected_at=at, asset_ids=asset_ids, disconnected_at=closed,
        reason="stream closed by agent" if closed else "",
    )


@pytest.fixture
def store(any_engine):
    s = any_engine.open()
    s.save_inventory(INV)
    yield s
    s.close()


# --- telemetry -------------------------------------------------------------------------------


def test_telemetry_round_trips_every_details_kind(store):
    kinds = [BessDetails(55.5, 2.25), PvDetails(812.0, 3.75), WindDetails(9.5, 1.0), EvDetails(3, "charging"), None]
    points = [point(BESS1, i + 1, details=d) for i, d in enumerate(kinds)]
    assert store.write(batch(points)) == 5
    assert store.telemetry_history(BESS1, None, None, 100) == points[::-1]


def test_a_buffered_point_is_a_tuple_the_collector_stops_tracking():
    # what keeps hundreds of thousands of buffered points out of every GC pass (see PointRow)
    row = point_row(Telemetry(BESS1, HARBOUR, 1, T0, 0.5, 0.0, details=BessDetails(55.5, 2.25)), T0)
    gc.collect()
    assert type(row) is tuple and not gc.is_tracked(row)


def test_history_is_newest_first_with_inclusive_bounds_and_a_limit(store):
    store.write(batch([point(BESS1, s) for s in range(1, 21)] + [point(BESS2, s) for s in range(1, 4)]))
    store.write(batch([point(BESS1, 21, ts=T0 + 4 * 20)]))  # same ts as seq 20: seq breaks the tie
    seqs = [r.point.seq for r in store.telemetry_history(BESS1, T0 + 4 * 5, T0 + 4 * 10, 100)]
    assert seqs == [10, 9, 8, 7, 6, 5]
    assert [r.point.seq for r in store.telemetry_history(BESS1, None, None, 3)] == [21, 20, 19]
    assert [r.point.seq for r in store.telemetry_history(BESS1, T0 + 4 * 19, None, 100)] == [21, 20, 19]
    assert [r.point.seq for r in store.telemetry_history(BESS1, None, T0 + 8, 100)] == [2, 1]
    assert store.telemetry_history(BESS3, None, None, 10) == []
    assert store.telemetry_history("no-such-asset", None, None, 10) == []


def test_a_replayed_point_is_stored_once(store):
    first = point(BESS1, 7)
    assert store.write(batch([first, point(BESS1, 8)])) == 2
    replay = StoredPoint(first.point, first.received_at + 60)  # the agent sent it again after a reconnect
    assert store.write(batch([replay, point(BESS1, 9), point(BESS1, 9)])) == 1
    rows = store.telemetry_history(BESS1, None, None, 100)
    assert [r.point.seq for r in rows] == [9, 8, 7]
    assert rows[-1] == first  # the first copy wins


def test_a_batch_larger_than_one_insert_statement_counts_only_new_points(store):
    # SQLite writes 1,000 rows a statement: replays on both sides of a statement boundary
    store.write(batch([point(BESS1, s) for s in range(990, 1010)]))
    points = [point(BESS1, s) for s in range(1, 2501)] + [point(BESS2, 5), point(BESS2, 5)]
    assert store.write(batch(points)) == 2500 - 20 + 1
    assert [r.point.seq for r in store.telemetry_history(BESS1, None, None, 5000)] == list(range(2500, 0, -1))
    assert store.telemetry_history(BESS1, None, None, 5000)[-1000] == point(BESS1, 1000)


def test_postgres_copies_straight_in_until_a_replay_then_stages_a_run_of_batches(tmp_path):
    from der_actors.storage.postgres import STAGED_AFTER_REPLAY

    with engine_for("postgres", tmp_path) as e:
        store = e.open()
        try:
            store.save_inventory(INV)
            assert store.write(batch([point(BESS1, 1), point(BESS1, 2)])) == 2
            assert store._staged_left == 0  # straight in
            # a replay: the straight COPY fails on the key and is undone; staged, only the new one counts
            assert store.write(batch([point(BESS1, 2), point(BESS1, 3)])) == 1
            assert store._staged_left == STAGED_AFTER_REPLAY
            for seq in range(4, 4 + STAGED_AFTER_REPLAY):
                assert store.write(batch([point(BESS1, seq), point(BESS1, seq - 1)])) == 1
            assert store._staged_left == 0
            assert store.write(batch([point(BESS2, 1)])) == 1  # straight in again
            assert store._staged_left == 0
            seqs = [r.point.seq for r in store.telemetry_history(BESS1, None, None, 100)]
            assert seqs == list(range(3 + STAGED_AFTER_REPLAY, 0, -1))
        finally:
            store.close()


def test_telemetry_for_an_asset_not_in_the_inventory_is_kept(store):
    store.write(batch([point("retired-asset", 1)]))
    assert [r.point.seq for r in store.telemetry_history("retired-asset", None, None, 10)] == [1]


# --- dispatches, sessions, heartbeats --------------------------------------------------------


def test_a_dispatch_reads_back_equal_and_its_updates_replace_it(store):
    sent = dispatch("d-1", T0, legs=[Leg("d-1", "s-1", BESS1, 0.5)])
    applied = dispatch("d-1", T0, state=DispatchState.APPLIED, legs=[Leg("d-1", "s-1", BESS1, 0.5, "applied", "ok")])
    store.write(WriteBatch(dispatches=[sent]))
    assert store.dispatch("d-1") == sent
    store.write(WriteBatch(dispatches=[applied, applied]))
    assert store.dispatch("d-1") == applied
    assert store.dispatch_history(None, None, 10) == [applied]
    assert store.dispatch("d-2") is None


def test_dispatch_history_filters_on_asset_and_site_newest_first(store):
    split = dispatch(
        "d-site", T0 + 20, asset_id=None,
        allocations=[Allocation(BESS1, 0.2), Allocation(BESS2, 0.3)],
        legs=[Leg("sp-1", "s-1", BESS1, 0.2), Leg("sp-2", "s-1", BESS2, 0.3), Leg("sp-3", "s-1", BESS3, 0.0)],
    )
    gateway = dispatch("d-gw", T0 + 30, asset_id=None, allocations=[Allocation(BESS3, 1.0)], legs=[Leg("sp-4", "s-2", "", 1.0)])
    only1 = dispatch("d-b1", T0 + 10)
    other = dispatch("d-other", T0 + 40, asset_id=OTHER_ASSET, site_id=OTHER_SITE)
    store.write(WriteBatch(dispatches=[only1, split]))
    store.write(WriteBatch(dispatches=[gateway, other]))
    ids = lambda rows: [d.dispatch_id for d in rows]  # noqa: E731
    assert ids(store.dispatch_history(None, None, 10)) == ["d-other", "d-gw", "d-site", "d-b1"]
    assert ids(store.dispatch_history(BESS1, None, 10)) == ["d-site", "d-b1"]
    assert ids(store.dispatch_history(BESS3, None, 10)) == ["d-gw", "d-site"]  # allocation, and a leg
    assert ids(store.dispatch_history(None, HARBOUR, 10)) == ["d-gw", "d-site", "d-b1"]
    assert ids(store.dispatch_history(BESS1, OTHER_SITE, 10)) == []
    assert ids(store.dispatch_history(OTHER_ASSET, OTHER_SITE, 10)) == ["d-other"]
    assert ids(store.dispatch_history(None, None, 2)) == ["d-other", "d-gw"]


def test_sessions_are_newest_first_per_asset_and_updated_in_place(store):
    old = session("s-1", T0, BESS1, BESS2)
    store.write(WriteBatch(sessions=[old]))
    closed = session("s-1", T0, BESS1, BESS2, closed=T0 + 100)
    new = session("s-2", T0 + 200, BESS1)
    store.write(WriteBatch(sessions=[closed, new]))
    assert store.sessions(BESS1, 5) == [new, closed]
    assert store.sessions(BESS2, 5) == [closed]
    assert store.sessions(BESS1, 1) == [new]
    assert store.sessions(BESS3, 5) == []


def test_heartbeats_are_those_of_sessions_serving_the_asset_newest_first(store):
    hb = lambda sid, t, *assets: HeartbeatRow(sid, "gw-" + sid, HARBOUR, assets, t - 0.5, t)  # noqa: E731
    rows = [hb("s-1", T0 + 30, BESS1, BESS2), hb("s-1", T0 + 60, BESS1, BESS2), hb("s-2", T0 + 90, BESS2)]
    store.write(WriteBatch(heartbeats=rows))
    assert store.heartbeats(BESS1, 10) == [rows[1], rows[0]]
    assert store.heartbeats(BESS2, 2) == [rows[2], rows[1]]
    assert store.heartbeats(BESS3, 10) == []


# --- durability, retention, schema (the SQL engines) -----------------------------------------


def test_history_survives_reopening_the_storage(engine):
    s = engine.open()
    s.save_inventory(INV)
    d = dispatch("d-1", T0, state=DispatchState.APPLIED)
    sess = session("s-1", T0, BESS1, closed=T0 + 5)
    hb = HeartbeatRow("s-1", "gw-s-1", HARBOUR, (BESS1,), T0 + 1, T0 + 2)
    s.write(batch([point(BESS1, 1), point(BESS1, 2)], dispatches=[d], sessions=[sess], heartbeats=[hb]))
    s.close()
    s = engine.open()
    try:
        assert [r.point.seq for r in s.telemetry_history(BESS1, None, None, 10)] == [2, 1]
        assert s.dispatch("d-1") == d
        assert s.sessions(BESS1, 5) == [sess]
        assert s.heartbeats(BESS1, 5) == [hb]
        assert s.write(batch([point(BESS1, 2), point(BESS1, 3)])) == 1  # keys survive too
    finally:
        s.close()


def test_reset_db_empties_history_and_keeps_the_inventory(engine):
    s = engine.open()
    s.save_inventory(INV)
    s.write(batch([point(BESS1, 1)], dispatches=[dispatch("d-1", T0)], sessions=[session("s", T0, BESS1)]))
    s.close()
    s = engine.open(reset=True)
    try:
        s.save_inventory(INV)
        assert s.telemetry_history(BESS1, None, None, 10) == []
        assert s.dispatch_history(None, None, 10) == [] and s.sessions(BESS1, 5) == []
        s.write(batch([point(BESS1, 1)]))
        assert len(s.telemetry_history(BESS1, None, None, 10)) == 1
    finally:
        s.close()


def test_prune_deletes_old_rows_in_small_batches(any_engine):
    s = any_engine.open()
    s.save_inventory(INV)
    s.write(batch(
        [point(a, seq) for a in (BESS1, BESS2, BESS3) for seq in range(1, 11)],
        heartbeats=[HeartbeatRow("s-1", "gw", HARBOUR, (BESS1,), T0 + t, T0 + t) for t in (4, 8, 40)],
    ))
    cutoff = T0 + 4 * 6  # seq 1..5 of each asset are older; so are two heartbeats (and their asset rows)
    batches = []
    while gone := s.prune(cutoff, 4):
        batches.append(gone)
    assert all(b <= 4 for b in batches)
    assert sum(batches) == 15 + (2 if any_engine.name == "memory" else 4)
    for a in (BESS1, BESS2, BESS3):
        assert [r.point.seq for r in s.telemetry_history(a, None, None, 100)] == [10, 9, 8, 7, 6]
    assert [h.received_at for h in s.heartbeats(BESS1, 10)] == [T0 + 40]
    s.close()


def test_the_inventory_is_saved_to_the_assets_table(engine):
    s = engine.open()
    s.save_inventory(INV)
    s.close()
    rows = _sql(engine, "SELECT asset_id, name, site_name, type, max_mw, in_inventory FROM assets ORDER BY asset_key")
    assert [r[0] for r in rows] == [a.id for a in INV.assets]
    first = INV.assets[0]
    assert rows[0][1:5] == (first.name, INV.site(first.site_id).name, first.type.value, first.max_mw)
    assert all(r[5] for r in rows)


def test_the_schema_version_is_recorded_and_a_newer_database_stops_start_up(engine):
    engine.open().close()
    assert _sql(engine, "SELECT version FROM der_schema") == [(SCHEMA_VERSION,)]
    _sql(engine, f"INSERT INTO der_schema (version, applied_at) VALUES ({SCHEMA_VERSION + 1}, 0)")
    with pytest.raises(SchemaTooNew, match=f"schema is version {SCHEMA_VERSION + 1}, newer than this headend"):
        engine.open()


# --- DATABASE_URL ----------------------------------------------------------------------------


def test_database_url_selects_the_engine(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    default = open_storage("")
    try:
        assert isinstance(default, SqliteStorage) and default.path == DEFAULT_SQLITE_PATH
        assert (tmp_path / DEFAULT_SQLITE_PATH).exists()
    finally:
        default.close()
    assert isinstance(open_storage("memory://"), MemoryStorage)
    with pytest.raises(StorageConfigError, match="unsupported scheme"):
        open_storage("mysql://x")
    with pytest.raises(StorageConfigError, match="cannot open"):
        open_storage(f"sqlite:///{tmp_path}/no/such/dir/h.sqlite3")


def test_an_unreachable_postgres_does_not_stop_start_up():
    s = open_storage("postgresql://postgres@127.0.0.1:1/test")  # nothing listens on port 1
    try:
        with pytest.raises(Exception, match="PostgreSQL 127.0.0.1:1/test"):
            s.write(batch([point(BESS1, 1)]))
    finally:
        s.close()


def _sql(engine, statement: str) -> list[tuple]:
    if engine.name == "sqlite":
        with contextlib.closing(sqlite3.connect(engine.url.removeprefix("sqlite:///"))) as conn, conn:
            return conn.execute(statement).fetchall()
    with psycopg.connect(engine.url, autocommit=True) as conn:
        cur = conn.execute(statement)
        return cur.fetchall() if cur.description else []
