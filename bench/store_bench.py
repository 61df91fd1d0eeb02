"""Store benchmark: rows/s the store actor sustains into SQLite and PostgreSQL, end to end, and the
headend's memory with 10,000 assets' history buffered. A script that prints figures, not a test.

    .venv/bin/python -m bench.store_bench                 # everything (PostgreSQL from DER_TEST_POSTGRES
                                                          #   or postgresql://postgres@127.0.0.1:5432/test)
    .venv/bin/python -m bench.store_bench --quick         # smaller runs
    .venv/bin/python -m bench.store_bench --only ingest   # or: ceiling, layouts, memory

Ingest: a headend (the real actors, real clock) in this process, one scripted gateway on an in-memory
link registering `--assets` assets and sending `--ticks` TelemetryBatch messages of one point per
asset as fast as the link takes them. Timed from the first message sent to the session actor until
the store actor has committed every row; the rows are then counted in the database.
Ceiling: the same rows written straight into the same storage class (same schema, same batch size),
no actors. Layouts: the SQLite table layouts DESIGN.md section 5 compares, on the same rows.
Memory: 10,000 assets (100 gateways x 100) with the database down (a port that refuses), RSS
(/proc/self/statm) before and after `--buffered-ticks` ticks of every asset are buffered.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import random
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator

import psycopg
import structlog
import trio
from psycopg import sql

from der_actors.actors.context import HeadendConfig
from der_actors.actors.headend import run_headend
from der_actors.clock import WallClock
from der_actors.messages import AssetInfo, BessDetails, Register, RegisterAck, Telemetry, TelemetryBatch
from der_actors.model import Asset, AssetType, Inventory, Site
from der_actors.storage.base import Storage, WriteBatch
from der_actors.storage.postgres import PostgresStorage
from der_actors.storage.rows import point_row
from der_actors.storage.sqlite import SqliteStorage
from der_actors.transport.link import MemoryNetwork

PG_DEFAULT = "postgresql://postgres@127.0.0.1:5432/test"
EPOCH = 1_800_000_000.0
CONFIG = HeadendConfig(heartbeat_timeout_s=3600, heartbeat_interval_s=3600, dispatch_ack_timeout_s=10)


def inventory(sites: int, assets_per_site: int) -> Inventory:
    rng = random.Random(7)
    uid = lambda: str(uuid.UUID(int=rng.getrandbits(128), version=4))  # noqa: E731
    site_list = [Site(uid(), f"site {i}") for i in range(sites)]
    assets = [
        Asset(uid(), f"bess {s}-{j}", site.id, AssetType.BESS, capacity_mwhr=4.0, max_mw=2.0, min_mw=-2.0)
        for s, site in enumerate(site_list) for j in range(assets_per_site)
    ]
    return Inventory(tuple(site_list), tuple(assets))


def fresh(s: str) -> str:
    """A new str object, as the protobuf decoder makes one per field per message."""
    return s.encode().decode()


def tick_batch(assets: tuple[Asset, ...], seq: int) -> TelemetryBatch:
    ts = EPOCH + 4 * seq
    return TelemetryBatch(tuple(
        Telemetry(fresh(a.id), fresh(a.site_id), seq, ts, 0.5 + (seq % 7) * 0.01, 0.5, True, "", "",
                  BessDetails(50.0 + (seq % 50) * 0.1, 2.0))
        for a in assets
    ))


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# --- engines -----------------------------------------------------------------------------------


@contextlib.contextmanager
def engine(name: str, pg_url: str, **kw) -> Iterator[Storage]:
    if name == "sqlite":
        with tempfile.TemporaryDirectory() as d:
            s = SqliteStorage(os.path.join(d, "bench.sqlite3"), **kw)
            s.open()
            try:
                yield s
            finally:
                s.close()
        return
    schema = f"der_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        s = PostgresStorage(f"{pg_url}{'&' if '?' in pg_url else '?'}options=-csearch_path%3D{schema}", **kw)
        s.open()
        try:
            yield s
        finally:
            s.close()
    finally:
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def pg_reachable(url: str) -> str:
    try:
        psycopg.connect(url, connect_timeout=3).close()
        return ""
    except psycopg.Error as exc:
        return str(exc).splitlines()[0]


# --- ingest, end to end ------------------------------------------------------------------------


async def ingest(storage: Storage, n_assets: int, ticks: int, batch_rows: int) -> dict:
    inv = inventory(1, n_assets)
    site = inv.sites[0]
    total = n_assets * ticks
    async with trio.open_nursery() as nursery:
        h = await nursery.start(run_headend, CONFIG, inv, storage, WallClock.calibrated())
        store = h.ctx.store
        store.batch_rows = batch_rows
        net = MemoryNetwork(accept_channel=h.accept.clone())
        batches = [tick_batch(inv.assets, seq) for seq in range(1, ticks + 1)]  # made before the clock runs
        async with net.dial("bench-gw") as edge:
            infos = tuple(AssetInfo(a.id, a.site_id, a.type, a.max_mw, a.min_mw) for a in inv.assets)
            await edge.outbound.send(Register("bench", "bench-gw", site.id, "", infos))
            assert isinstance(await edge.inbound.receive(), RegisterAck)
            t0 = time.perf_counter()
            for b in batches:
                await edge.outbound.send(b)
            while store.counters.received_points < total:
                await trio.sleep(0.001)
            t_intake = time.perf_counter() - t0
            while store.counters.stored_points < total:
                await trio.sleep(0.001)
            t_stored = time.perf_counter() - t0
        counted = await store.query(storage.count_telemetry)
        out = {"rows": total, "in_db": counted, "batches": store.counters.batches,
               "intake_s": t_intake, "stored_s": t_stored, "rows_per_s": total / t_stored}
        nursery.cancel_scope.cancel()
    return out


def ceiling(storage: Storage, n_assets: int, ticks: int, batch_rows: int) -> dict:
    inv = inventory(1, n_assets)
    storage.save_inventory(inv)
    points = [point_row(p, p.timestamp + 0.1) for seq in range(1, ticks + 1) for p in tick_batch(inv.assets, seq).points]
    t0 = time.perf_counter()
    for i in range(0, len(points), batch_rows):
        storage.write(WriteBatch(points=points[i:i + batch_rows]))
    dt = time.perf_counter() - t0
    assert storage.count_telemetry() == len(points)
    return {"rows": len(points), "s": dt, "rows_per_s": len(points) / dt}


def sqlite_layouts(n_assets: int, ticks: int, batch_rows: int) -> list[tuple[str, float]]:
    """Raw sqlite3, same rows and transactions: what the key layout costs (DESIGN.md section 5)."""
    inv = inventory(1, n_assets)
    keys = {a.id: i + 1 for i, a in enumerate(inv.assets)}
    rows_text = [
        (a.id, seq, EPOCH + 4 * seq, EPOCH + 4 * seq + 0.1, a.site_id, 0.5, 0.5, 1, "", "", '{"kind":"bess","soc_pct":50.0,"energy_mwh":2.0}')
        for seq in range(1, ticks + 1) for a in inv.assets
    ]
    rows_int = [(keys[r[0]],) + r[1:] for r in rows_text]
    cols = "seq INTEGER NOT NULL, ts REAL NOT NULL, received_at REAL NOT NULL, site_id TEXT NOT NULL, mw REAL, mw_setpoint REAL, online INTEGER, status TEXT, fault_code TEXT, details TEXT"
    layouts = [
        ("text asset_id key, rowid table + (asset_id, ts) index",
         f"CREATE TABLE t (asset_id TEXT NOT NULL, {cols}, PRIMARY KEY (asset_id, seq))", "(asset_id, ts)", rows_text),
        ("text asset_id key, WITHOUT ROWID + (asset_id, ts) index",
         f"CREATE TABLE t (asset_id TEXT NOT NULL, {cols}, PRIMARY KEY (asset_id, seq)) WITHOUT ROWID", "(asset_id, ts)", rows_text),
        ("integer asset_key, WITHOUT ROWID + (asset_key, ts) index  [chosen]",
         f"CREATE TABLE t (asset_key INTEGER NOT NULL, {cols}, PRIMARY KEY (asset_key, seq)) WITHOUT ROWID", "(asset_key, ts)", rows_int),
        ("integer asset_key, WITHOUT ROWID, no ts index",
         f"CREATE TABLE t (asset_key INTEGER NOT NULL, {cols}, PRIMARY KEY (asset_key, seq)) WITHOUT ROWID", None, rows_int),
    ]
    out = []
    for label, ddl, index, rows in layouts:
        with tempfile.TemporaryDirectory() as d:
            conn = sqlite3.connect(os.path.join(d, "l.sqlite3"), isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA cache_size=-65536")
            conn.execute(ddl)
            if index:
                conn.execute(f"CREATE INDEX t_ts ON t {index}")
            insert = f"INSERT INTO t VALUES ({', '.join('?' * 11)}) ON CONFLICT DO NOTHING"
            t0 = time.perf_counter()
            for i in range(0, len(rows), batch_rows):
                conn.execute("BEGIN")
                conn.executemany(insert, rows[i:i + batch_rows])
                conn.execute("COMMIT")
            dt = time.perf_counter() - t0
            size = os.path.getsize(os.path.join(d, "l.sqlite3")) + os.path.getsize(os.path.join(d, "l.sqlite3-wal"))
            conn.close()
        out.append((label, len(rows) / dt, size / len(rows)))
    return out


# --- memory with history buffered --------------------------------------------------------------


async def memory(gateways: int, per_gateway: int, buffered_ticks: int) -> dict:
    inv = inventory(gateways, per_gateway)
    down = PostgresStorage("postgresql://postgres@127.0.0.1:1/none")  # nothing listens on port 1
    async with trio.open_nursery() as nursery:
        h = await nursery.start(run_headend, CONFIG, inv, down, WallClock.calibrated())
        store = h.ctx.store
        store.retry_initial_s = store.retry_cap_s = 3600  # fail once, then wait: we only want the buffer
        net = MemoryNetwork(accept_channel=h.accept.clone())
        async with contextlib.AsyncExitStack() as stack:
            edges = []
            for site in inv.sites:
                edge = await stack.enter_async_context(net.dial(f"gw-{site.id[:8]}"))
                assets = inv.assets_of(site.id)
                infos = tuple(AssetInfo(a.id, a.site_id, a.type, a.max_mw, a.min_mw) for a in assets)
                await edge.outbound.send(Register("bench", f"gw-{site.id[:8]}", site.id, "", infos))
                assert isinstance(await edge.inbound.receive(), RegisterAck)
                edges.append((edge, assets))
            await trio.sleep(0.2)
            gc.collect()
            before = rss_mb()
            total = 0
            for seq in range(1, buffered_ticks + 1):
                for edge, assets in edges:
                    await edge.outbound.send(tick_batch(assets, seq))
                    total += len(assets)
            while store.counters.received_points < total:
                await trio.sleep(0.01)
            gc.collect()
            after = rss_mb()
            out = {"assets": len(inv.assets), "points_buffered": store.buffered_points,
                   "dropped": store.counters.dropped_points, "rss_before_mb": before, "rss_after_mb": after,
                   "bytes_per_point": (after - before) * 2**20 / max(1, store.buffered_points)}
        nursery.cancel_scope.cancel()
    down.close()
    return out


# --- main --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="store_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--assets", type=int, default=100)
    parser.add_argument("--ticks", type=int, default=2000)
    parser.add_argument("--batch-rows", type=int, default=5000)
    parser.add_argument("--buffered-ticks", type=int, default=10, help="memory: points buffered per asset")
    parser.add_argument("--postgres", default=os.environ.get("DER_TEST_POSTGRES", PG_DEFAULT))
    parser.add_argument("--only", choices=["ingest", "ceiling", "layouts", "memory"], action="append")
    parser.add_argument("--quick", action="store_true", help="a tenth of the rows")
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # errors only
    if args.quick:
        args.ticks = max(10, args.ticks // 10)
    parts = args.only or ["ingest", "ceiling", "layouts", "memory"]
    pg_problem = pg_reachable(args.postgres)
    engines = ["sqlite"] + (["postgres"] if not pg_problem else [])
    print(f"python {sys.version.split()[0]}, sqlite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs; "
          f"{args.assets} assets x {args.ticks} ticks = {args.assets * args.ticks:,} rows, batches of {args.batch_rows:,}")
    if pg_problem:
        print(f"PostgreSQL skipped: {args.postgres}: {pg_problem}")

    if "ingest" in parts:
        print("\nIngest, end to end (gateway -> session actor -> store actor -> database):")
        for name in engines:
            variants = [("", {})] if name == "sqlite" else [(" (COPY)", {}), (" (executemany)", {"telemetry_path": "executemany"})]
            for label, kw in variants:
                with engine(name, args.postgres, **kw) as s:
                    r = trio.run(ingest, s, args.assets, args.ticks, args.batch_rows)
                assert r["in_db"] == r["rows"], r
                print(f"  {name + label:<26} {r['rows_per_s']:>10,.0f} rows/s stored   ({r['rows']:,} rows in "
                      f"{r['stored_s']:.2f} s, {r['batches']} batches; actors took them in {r['intake_s']:.2f} s; "
                      f"{r['in_db']:,} rows counted in the database)")
    if "ceiling" in parts:
        print("\nStorage ceiling (same storage class and batches, no actors):")
        for name in engines:
            variants = [("", {})] if name == "sqlite" else [(" (COPY)", {}), (" (executemany)", {"telemetry_path": "executemany"})]
            for label, kw in variants:
                with engine(name, args.postgres, **kw) as s:
                    r = ceiling(s, args.assets, args.ticks, args.batch_rows)
                print(f"  {name + label:<26} {r['rows_per_s']:>10,.0f} rows/s   ({r['rows']:,} rows in {r['s']:.2f} s)")
    if "layouts" in parts:
        print("\nSQLite layouts (raw sqlite3, same rows, WAL, synchronous=NORMAL, 64 MB cache):")
        for label, rate, per_row in sqlite_layouts(args.assets, args.ticks, args.batch_rows):
            print(f"  {rate:>10,.0f} rows/s  {per_row:>6.0f} B/row on disk   {label}")
    if "memory" in parts:
        print(f"\nMemory, 10,000 assets (100 gateways x 100), database down, {args.buffered_ticks} ticks buffered per asset:")
        r = trio.run(memory, 100, 100, args.buffered_ticks)
        print(f"  {r['points_buffered']:,} points buffered ({r['dropped']} dropped): RSS {r['rss_before_mb']:.0f} MB -> "
              f"{r['rss_after_mb']:.0f} MB, +{r['rss_after_mb'] - r['rss_before_mb']:.0f} MB, "
              f"{r['bytes_per_point']:.0f} bytes per buffered point")


if __name__ == "__main__":
    main()
