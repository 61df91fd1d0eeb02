"""What SQLite and PostgreSQL storage share: the queries, the writer connection and its reconnects,
the reader pool. `sqlite.py` and `postgres.py` add connecting, transactions and the telemetry fast path.

Connections. One writer connection, used by one caller at a time (the store actor serialises
writes; a mutex here makes that a guarantee). It is opened lazily; after an error that broke it, it
is dropped and the next write opens a new one, migrates (a no-op normally), re-applies the
inventory and reloads the asset keys: reconnecting is just "the next write". Reads run in the
store actor's worker threads on a small pool of reader connections (WAL lets SQLite readers run
beside the writer). Errors that mean "the database is not there now" become `StorageUnavailable`.

Statements are written once with `?` placeholders; PostgreSQL swaps them for `%s`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import structlog

from der_actors.lifecycle import TERMINAL_STATES
from der_actors.model import Inventory
from der_actors.storage import rows as R
from der_actors.storage.base import (
    HeartbeatRow,
    PointRow,
    SchemaTooNew,
    StorageConfigError,
    StorageUnavailable,
    StoredPoint,
    WriteBatch,
    dispatch_asset_ids,
)
from der_actors.storage.schema import HISTORY_TABLES, META, SCHEMA_VERSION, statements, too_new_message
from der_actors.views import DispatchView, SessionSummary

log = structlog.get_logger("der.storage")

_DISPATCH_UPSERT = (
    f"INSERT INTO dispatches ({', '.join(R.DISPATCH_COLUMNS)}) VALUES ({', '.join('?' * len(R.DISPATCH_COLUMNS))}) "
    "ON CONFLICT (dispatch_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in R.DISPATCH_COLUMNS if c not in ("dispatch_id", "created_at"))
    + " RETURNING rec, created_at"
)
_SESSION_UPSERT = (
    f"INSERT INTO agent_sessions ({', '.join(R.SESSION_COLUMNS)}) VALUES ({', '.join('?' * len(R.SESSION_COLUMNS))}) "
    "ON CONFLICT (session_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in R.SESSION_COLUMNS if c not in ("session_id", "connected_at"))
    + " RETURNING rec, connected_at"
)
_HEARTBEAT_INSERT = (
    f"INSERT INTO heartbeats ({', '.join(R.HEARTBEAT_COLUMNS)}) VALUES ({', '.join('?' * len(R.HEARTBEAT_COLUMNS))}) "
    "ON CONFLICT DO NOTHING RETURNING rec"
)
_ASSET_COLUMNS = (
    "asset_id", "site_id", "site_name", "name", "type", "location", "capacity_mwhr", "max_mw", "min_mw",
    "ramp_rate_mw_per_min", "efficiency", "in_inventory", "loaded_at",
)
_ASSET_UPSERT = (
    f"INSERT INTO assets ({', '.join(_ASSET_COLUMNS)}) VALUES ({', '.join('?' * len(_ASSET_COLUMNS))}) "
    "ON CONFLICT (asset_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _ASSET_COLUMNS if c != "asset_id")
)
_ASSET_KEY = "(SELECT asset_key FROM assets WHERE asset_id = ?)"
_D_COLS = "d.view"
_S_COLS = ", ".join(f"s.{c}" for c in R.SESSION_COLUMNS)
_H_COLS = ", ".join(f"h.{c}" for c in R.HEARTBEAT_COLUMNS)


class ReaderPool:
    """Up to `size` reader connections, made on demand, each used by one thread at a time."""

    def __init__(self, connect: Callable[[], Any], healthy: Callable[[Any], bool], size: int) -> None:
        self._connect = connect
        self._healthy = healthy
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(size)
        self._closed = False

    @contextlib.contextmanager
    def connection(self) -> Iterator[Any]:
        if not self._slots.acquire(timeout=30):
            raise StorageUnavailable("every reader connection is busy")
        try:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                conn = self._connect()
            try:
                yield conn
            finally:
                with self._lock:
                    keep = not self._closed and self._healthy(conn)
                    if keep:
                        self._idle.append(conn)
                if not keep:
                    _close_quietly(conn)
        finally:
            self._slots.release()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            _close_quietly(conn)


def _close_quietly(conn: Any) -> None:
    try:
        conn.close()
    except Exception:
        pass


class SqlStorage:
    """The shared engine. Subclasses set `types`, `describe` and the hooks below."""

    blocking = True
    types: dict[str, str]
    describe: str  # for messages: "SQLite der_headend.sqlite3"
    unavailable: tuple[type[BaseException], ...] = ()  # engine errors that mean "not reachable now"

    def __init__(self, readers: int = 4) -> None:
        self._writer: Any = None
        self._write_mutex = threading.Lock()
        self._keys: dict[str, int] = {}  # asset_id -> asset_key, as committed
        self._inventory: Inventory | None = None  # re-applied on every (re)connect
        self._reset_pending = False
        self._prune_after_key = 0
        self._readers = ReaderPool(self._connect_reader, self._healthy, readers)

    # --- engine hooks --------------------------------------------------------------------------

    def _connect(self) -> Any:
        raise NotImplementedError

    def _connect_reader(self) -> Any:
        return self._connect()

    def _healthy(self, conn: Any) -> bool:
        return True

    def _transaction(self, conn: Any, *, migrating: bool = False) -> contextlib.AbstractContextManager:
        raise NotImplementedError

    def _q(self, sql: str) -> str:
        return sql

    def _executemany(self, conn: Any, sql: str, params: list[tuple]) -> int:
        raise NotImplementedError

    def _insert_telemetry(self, conn: Any, points: Sequence[PointRow], keys: Mapping[str, int]) -> int:
        """Insert the points as rows in `TELEMETRY_COLUMNS` order (each asset_id swapped for its key
        in `keys`), skipping stored `(asset_key, seq)`; returns how many were new."""
        raise NotImplementedError

    def _prepare_writer(self, conn: Any) -> None:
        pass

    def _empty_tables(self, conn: Any) -> None:
        for table in HISTORY_TABLES:
            conn.execute(f"DELETE FROM {table}")

    # --- plumbing ------------------------------------------------------------------------------

    def _x(self, conn: Any, sql: str, params: tuple = ()) -> Any:
        return conn.execute(self._q(sql), params)

    def restore(self, inventory: Inventory | None, *, reset: bool = False) -> None:
        """What a new instance needs to carry on from another (a writer process started again):
        the inventory to re-apply on connecting, and a reset not done yet. Connects later."""
        self._inventory = inventory
        self._reset_pending = reset

    def open(self, *, reset: bool = False) -> None:
        """Connect and migrate now (start-up). `reset` empties every history table (RESET_DB).
        A newer schema raises `SchemaTooNew`; an unreachable database raises `StorageUnavailable`."""
        self._reset_pending = reset
        with self._write_mutex:
            self._writer_conn()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Any]:
        """The writer connection, (re)connected as needed; dropped after an error that broke it.
        Every "cannot write now" (unreachable, or migrated meanwhile by a newer headend) is
        `StorageUnavailable`: the store actor keeps the rows and retries. Anything else means the
        rows themselves were refused."""
        with self._write_mutex:
            try:
                conn = self._writer_conn()
            except StorageConfigError as exc:
                raise StorageUnavailable(str(exc)) from exc
            try:
                yield conn
            except self.unavailable as exc:
                self._drop_writer()
                raise StorageUnavailable(f"{self.describe}: {_first_line(exc)}") from exc
            except Exception:
                if not self._healthy(conn):
                    self._drop_writer()
                raise

    def _writer_conn(self) -> Any:
        if self._writer is not None:
            return self._writer
        try:
            conn = self._connect()
        except self.unavailable as exc:
            raise StorageUnavailable(f"{self.describe}: {_first_line(exc)}") from exc
        try:
            self._migrate(conn)
            with self._transaction(conn):
                if self._reset_pending:
                    self._empty_tables(conn)
                    log.warning("history_emptied", database=self.describe, reason="RESET_DB")
                if self._inventory is not None:
                    self._apply_inventory(conn, self._inventory)
            self._reset_pending = False
            self._keys = dict(self._x(conn, "SELECT asset_id, asset_key FROM assets").fetchall())
            self._prepare_writer(conn)
        except self.unavailable as exc:
            _close_quietly(conn)
            raise StorageUnavailable(f"{self.describe}: {_first_line(exc)}") from exc
        except BaseException:
            _close_quietly(conn)
            raise
        self._writer = conn
        return conn

    def _drop_writer(self) -> None:
        conn, self._writer = self._writer, None
        if conn is not None:
            _close_quietly(conn)

    def _migrate(self, conn: Any) -> None:
        with self._transaction(conn, migrating=True):
            self._x(conn, META.format(**self.types))
            found = self._x(conn, "SELECT COALESCE(MAX(version), 0) FROM der_schema").fetchone()[0]
            if found > SCHEMA_VERSION:
                raise SchemaTooNew(too_new_message(found, self.describe))
            for version in range(found + 1, SCHEMA_VERSION + 1):
                for stmt in statements(version, self.types):
                    self._x(conn, stmt)
                self._x(conn, "INSERT INTO der_schema (version, applied_at) VALUES (?, ?)", (version, time.time()))
                log.info("schema_migrated", database=self.describe, version=version)

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Any]:
        try:
            with self._readers.connection() as conn:
                yield conn
        except self.unavailable as exc:
            raise StorageUnavailable(f"{self.describe}: {_first_line(exc)}") from exc

    def close(self) -> None:
        with self._write_mutex:
            self._drop_writer()
        self._readers.close()

    # --- writes --------------------------------------------------------------------------------

    def save_inventory(self, inventory: Inventory) -> None:
        self._inventory = inventory
        with self._writing() as conn:
            with self._transaction(conn):
                self._apply_inventory(conn, inventory)
            self._keys = dict(self._x(conn, "SELECT asset_id, asset_key FROM assets").fetchall())

    def _apply_inventory(self, conn: Any, inventory: Inventory) -> None:
        now = time.time()
        self._x(conn, "UPDATE assets SET in_inventory = ?", (False,))
        self._executemany(conn, _ASSET_UPSERT, [
            (a.id, a.site_id, inventory.site(a.site_id).name if inventory.site(a.site_id) else "", a.name,
             a.type.value, a.location, a.capacity_mwhr, a.max_mw, a.min_mw, a.ramp_rate_mw_per_min, a.efficiency,
             True, now)
            for a in inventory.assets
        ])

    def reset(self) -> None:
        with self._writing() as conn:
            with self._transaction(conn):
                self._empty_tables(conn)
                if self._inventory is not None:
                    self._apply_inventory(conn, self._inventory)
            self._keys = dict(self._x(conn, "SELECT asset_id, asset_key FROM assets").fetchall())

    def write(self, batch: WriteBatch) -> int:
        with self._writing() as conn:
            new_keys: dict[str, int] = {}
            with self._transaction(conn):
                inserted = self._write(conn, batch, new_keys)
            self._keys.update(new_keys)  # only once committed
            return inserted

    def _key(self, conn: Any, asset_id: str, site_id: str, new_keys: dict[str, int]) -> int:
        key = self._keys.get(asset_id) or new_keys.get(asset_id)
        if key is None:  # not in the inventory as saved (tests, or an asset removed since)
            self._x(conn, "INSERT INTO assets (asset_id, site_id) VALUES (?, ?) ON CONFLICT DO NOTHING", (asset_id, site_id))
            key = self._x(conn, "SELECT asset_key FROM assets WHERE asset_id = ?", (asset_id,)).fetchone()[0]
            new_keys[asset_id] = key
        return key

    def _write(self, conn: Any, batch: WriteBatch, new_keys: dict[str, int]) -> int:
        inserted = 0
        if batch.points:
            keys = self._keys
            # PointRow: asset_id first, site_id fifth; an asset not saved yet gets its key first
            for asset_id, site_id in {row[0]: row[4] for row in batch.points if row[0] not in keys}.items():
                self._key(conn, asset_id, site_id, new_keys)
            inserted = self._insert_telemetry(conn, batch.points, {**keys, **new_keys} if new_keys else keys)
        for v in batch.dispatches:
            rec, created_at = self._x(conn, _DISPATCH_UPSERT, R.dispatch_row(v)).fetchone()
            self._executemany(
                conn, "INSERT INTO dispatch_assets (asset_id, created_at, dispatch_rec) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                [(a, created_at, rec) for a in sorted(dispatch_asset_ids(v))],
            )
        for s in batch.sessions:
            rec, connected_at = self._x(conn, _SESSION_UPSERT, R.session_row(s)).fetchone()
            self._executemany(
                conn, "INSERT INTO session_assets (asset_id, connected_at, session_rec) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                [(a, connected_at, rec) for a in s.asset_ids],
            )
        for h in batch.heartbeats:
            row = self._x(conn, _HEARTBEAT_INSERT, R.heartbeat_row(h)).fetchone()
            if row is None:
                continue  # written before (a retried batch whose commit was not acknowledged)
            self._executemany(
                conn, "INSERT INTO heartbeat_assets (asset_key, received_at, heartbeat_rec) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                [(self._key(conn, a, h.site_id, new_keys), h.received_at, row[0]) for a in h.asset_ids],
            )
        return inserted

    def prune(self, before: float, max_rows: int) -> int:
        """Per asset (one short index range each), round-robin from where the last call stopped."""
        gone = 0
        with self._writing() as conn, self._transaction(conn):
            keys = [k for (k,) in self._x(conn, "SELECT asset_key FROM assets ORDER BY asset_key").fetchall()]
            start = next((i for i, k in enumerate(keys) if k > self._prune_after_key), 0)
            for key in keys[start:] + keys[:start]:
                gone += self._x(
                    conn, "DELETE FROM telemetry WHERE asset_key = ? AND seq IN "
                    "(SELECT seq FROM telemetry WHERE asset_key = ? AND ts < ? LIMIT ?)",
                    (key, key, before, max_rows - gone),
                ).rowcount
                if gone < max_rows:
                    gone += self._x(
                        conn, "DELETE FROM heartbeat_assets WHERE asset_key = ? AND received_at IN "
                        "(SELECT received_at FROM heartbeat_assets WHERE asset_key = ? AND received_at < ? LIMIT ?)",
                        (key, key, before, max_rows - gone),
                    ).rowcount
                if gone >= max_rows:
                    self._prune_after_key = key
                    return gone
            self._prune_after_key = 0
            gone += self._x(
                conn, "DELETE FROM heartbeats WHERE rec IN (SELECT rec FROM heartbeats WHERE received_at < ? LIMIT ?)",
                (before, max_rows - gone),
            ).rowcount
        return gone

    # --- reads ---------------------------------------------------------------------------------

    def telemetry_history(self, asset_id: str, since: float | None, until: float | None, limit: int) -> list[StoredPoint]:
        sql = f"SELECT {R.TELEMETRY_READ} FROM telemetry WHERE asset_key = {_ASSET_KEY}"
        params: list = [asset_id]
        if since is not None:
            sql += " AND ts >= ?"
            params.append(since)
        if until is not None:
            sql += " AND ts <= ?"
            params.append(until)
        sql += " ORDER BY ts DESC, seq DESC LIMIT ?"
        params.append(limit)
        with self._reading() as conn:
            return [R.stored_point(asset_id, row) for row in self._x(conn, sql, tuple(params)).fetchall()]

    def dispatch(self, dispatch_id: str) -> DispatchView | None:
        with self._reading() as conn:
            row = self._x(conn, f"SELECT {_D_COLS} FROM dispatches d WHERE d.dispatch_id = ?", (dispatch_id,)).fetchone()
        return R.dispatch_view(row[0]) if row else None

    def dispatch_history(self, asset_id: str | None, site_id: str | None, limit: int) -> list[DispatchView]:
        if asset_id is not None:
            sql = (f"SELECT {_D_COLS} FROM dispatch_assets da JOIN dispatches d ON d.rec = da.dispatch_rec "
                   "WHERE da.asset_id = ?")
            params: list = [asset_id]
            if site_id is not None:
                sql += " AND d.site_id = ?"
                params.append(site_id)
            sql += " ORDER BY da.created_at DESC, da.dispatch_rec DESC LIMIT ?"
        elif site_id is not None:
            sql = f"SELECT {_D_COLS} FROM dispatches d WHERE d.site_id = ? ORDER BY d.created_at DESC, d.rec DESC LIMIT ?"
            params = [site_id]
        else:
            sql = f"SELECT {_D_COLS} FROM dispatches d ORDER BY d.created_at DESC, d.rec DESC LIMIT ?"
            params = []
        params.append(limit)
        with self._reading() as conn:
            return [R.dispatch_view(view) for (view,) in self._x(conn, sql, tuple(params)).fetchall()]

    def open_dispatches(self) -> list[DispatchView]:
        terminal = ", ".join(f"'{st}'" for st in TERMINAL_STATES)
        sql = f"SELECT {_D_COLS} FROM dispatches d WHERE d.state NOT IN ({terminal}) ORDER BY d.created_at, d.rec"
        with self._reading() as conn:
            return [R.dispatch_view(view) for (view,) in self._x(conn, sql, ()).fetchall()]

    def sessions(self, asset_id: str, limit: int) -> list[SessionSummary]:
        sql = (f"SELECT {_S_COLS} FROM session_assets sa JOIN agent_sessions s ON s.rec = sa.session_rec "
               "WHERE sa.asset_id = ? ORDER BY sa.connected_at DESC, sa.session_rec DESC LIMIT ?")
        with self._reading() as conn:
            return [R.session_summary(row) for row in self._x(conn, sql, (asset_id, limit)).fetchall()]

    def heartbeats(self, asset_id: str, limit: int) -> list[HeartbeatRow]:
        sql = (f"SELECT {_H_COLS} FROM heartbeat_assets ha JOIN heartbeats h ON h.rec = ha.heartbeat_rec "
               f"WHERE ha.asset_key = {_ASSET_KEY} ORDER BY ha.received_at DESC, ha.heartbeat_rec DESC LIMIT ?")
        with self._reading() as conn:
            return [R.heartbeat(row) for row in self._x(conn, sql, (asset_id, limit)).fetchall()]

    def count_telemetry(self) -> int:
        """Rows in the telemetry table (tests and the benchmark)."""
        with self._reading() as conn:
            return self._x(conn, "SELECT COUNT(*) FROM telemetry").fetchone()[0]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
