"""PostgreSQL storage (psycopg 3): `DATABASE_URL=postgresql://user@host:5432/db`.

A schema other than `public` is chosen the PostgreSQL way, in the URL:
`postgresql://user@host/db?options=-csearch_path%3Dder` (the schema must exist).

Connections are autocommit with explicit transactions; TCP keepalives and a connect timeout make a
dead server noticed within seconds instead of a TCP timeout. Telemetry goes in by binary COPY
straight into the table, in a savepoint. A batch that holds a point stored before (an agent
replaying what it was not told was stored) makes that COPY fail on the key; the batch then goes the
replay-safe way, COPY into a per-connection temporary table and one `INSERT ... SELECT ... ON
CONFLICT DO NOTHING`, and so do the next STAGED_AFTER_REPLAY batches (replays come in runs, a
reconnected agent's backfill). Straight in, the server writes each row once instead of twice: the
storage ceiling (bench/scenarios.py `ceiling`, 400,000 rows, 10,000 assets) went from 107k-118k to
153k-206k rows/s, three rounds interleaved. `telemetry_path="executemany"` is the plain alternative,
kept to measure.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import psycopg
import psycopg.errors
from psycopg.conninfo import conninfo_to_dict

from der_actors.storage.base import PointRow, StorageConfigError
from der_actors.storage.rows import TELEMETRY_COLUMNS, telemetry_row
from der_actors.storage.schema import HISTORY_TABLES, POSTGRES_TYPES
from der_actors.storage.sql import SqlStorage

_COLS = ", ".join(TELEMETRY_COLUMNS)
_COPY_TYPES = ["int4", "int8", "float8", "float8", "text", "float8", "float8", "bool", "text", "text", "text"]
_INSERT_TELEMETRY = (
    f"INSERT INTO telemetry ({_COLS}) VALUES ({', '.join(['%s'] * len(TELEMETRY_COLUMNS))}) ON CONFLICT DO NOTHING"
)
# batches that go the replay-safe way (staged) after one held a point stored before
STAGED_AFTER_REPLAY = 16
# defaults a DATABASE_URL may override
_DEFAULTS = {
    "connect_timeout": "5",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "3",
    "keepalives_count": "3",
    "tcp_user_timeout": "20000",  # ms unacknowledged before the kernel gives up on the connection
    "application_name": "der-headend",
}


class PostgresStorage(SqlStorage):
    types = POSTGRES_TYPES
    # server down or restarting, connection refused, reset or terminated, or not migrated yet (it was
    # down when we started): the write is retried and the reconnect migrates
    unavailable = (psycopg.OperationalError, psycopg.InterfaceError, psycopg.errors.UndefinedTable)

    def __init__(self, url: str, *, readers: int = 4, telemetry_path: str = "copy") -> None:
        super().__init__(readers)
        try:
            self._params = {**_DEFAULTS, **conninfo_to_dict(url)}
        except psycopg.ProgrammingError as exc:
            raise StorageConfigError(f"DATABASE_URL: not a PostgreSQL URL: {exc}") from None
        p = self._params
        self.describe = f"PostgreSQL {p.get('host', 'localhost')}:{p.get('port', 5432)}/{p.get('dbname', '')}"
        if telemetry_path not in ("copy", "executemany"):
            raise ValueError(f"telemetry_path must be copy or executemany, got {telemetry_path!r}")
        self.telemetry_path = telemetry_path
        self._staged_left = 0  # batches still to go the replay-safe way

    def _connect(self) -> psycopg.Connection:
        return psycopg.connect(**self._params, autocommit=True)

    def _healthy(self, conn: psycopg.Connection) -> bool:
        return not conn.closed and not conn.broken

    def _q(self, sql: str) -> str:
        return sql.replace("?", "%s")

    @contextlib.contextmanager
    def _transaction(self, conn: psycopg.Connection, *, migrating: bool = False) -> Iterator[None]:
        with conn.transaction():
            if migrating:  # two headends starting at once migrate one after the other
                conn.execute("SELECT pg_advisory_xact_lock(hashtext('der_schema:' || current_schema()))")
            yield

    def _executemany(self, conn: psycopg.Connection, sql: str, params: list[tuple]) -> int:
        if not params:
            return 0
        with conn.cursor() as cur:
            cur.executemany(self._q(sql), params)
            return cur.rowcount

    def _prepare_writer(self, conn: psycopg.Connection) -> None:
        if self.telemetry_path == "copy":
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS telemetry_stage (LIKE telemetry) ON COMMIT DELETE ROWS")

    def _insert_telemetry(self, conn: psycopg.Connection, points: Sequence[PointRow], keys: Mapping[str, int]) -> int:
        rows = [telemetry_row(keys[p[0]], p) for p in points]
        with conn.cursor() as cur:
            if self.telemetry_path == "executemany":
                cur.executemany(_INSERT_TELEMETRY, rows)
                return cur.rowcount
            if self._staged_left:
                self._staged_left -= 1
            else:
                try:
                    with conn.transaction():  # a savepoint: a replayed point undoes this COPY only
                        _copy(cur, "telemetry", rows)
                    return len(rows)
                except psycopg.errors.UniqueViolation:
                    self._staged_left = STAGED_AFTER_REPLAY
            _copy(cur, "telemetry_stage", rows)
            cur.execute(f"INSERT INTO telemetry ({_COLS}) SELECT {_COLS} FROM telemetry_stage ON CONFLICT DO NOTHING")
            return cur.rowcount

    def _empty_tables(self, conn: psycopg.Connection) -> None:
        conn.execute(f"TRUNCATE {', '.join(HISTORY_TABLES)} RESTART IDENTITY")


def _copy(cur: psycopg.Cursor, table: str, rows: list[tuple]) -> None:
    with cur.copy(f"COPY {table} ({_COLS}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(_COPY_TYPES)
        for row in rows:
            copy.write_row(row)
