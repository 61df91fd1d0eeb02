"""SQLite storage: the embedded default (`der_headend.sqlite3`, or `sqlite:///path`).

WAL journal, `synchronous=NORMAL` (a power cut may lose the last batches, never corrupts), one
transaction per batch, `BEGIN IMMEDIATE` so a writer never deadlocks with another. Readers use
their own connections (read-only) and run beside the writer.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import sqlite3
from collections.abc import Iterator, Mapping, Sequence

from der_actors.storage.base import PointRow
from der_actors.storage.rows import TELEMETRY_COLUMNS
from der_actors.storage.schema import SQLITE_TYPES
from der_actors.storage.sql import SqlStorage

# Telemetry goes in as multi-row INSERTs of up to this many rows, not executemany: executemany
# steps SQLite once per row and hands the GIL between this thread and the trio thread twice a row.
# One statement binds its rows in C, then releases the GIL for one long step that runs beside the
# trio thread (ack-paced flood ingest +35%, bench/). Side effect under overload: those handoffs had
# throttled intake, so without them the trio thread takes more of the GIL and the buffer grows
# (README, Performance). Capped by SQLite's bound-parameter limit.
ROWS_PER_INSERT = 1_000


@functools.lru_cache(maxsize=8)
def _insert_telemetry_sql(rows: int) -> str:
    one = f"({', '.join('?' * len(TELEMETRY_COLUMNS))})"
    return f"INSERT INTO telemetry ({', '.join(TELEMETRY_COLUMNS)}) VALUES {', '.join([one] * rows)} ON CONFLICT DO NOTHING"


class SqliteStorage(SqlStorage):
    types = SQLITE_TYPES
    # locked past the busy timeout, disk full or failing, file gone: the write is retried
    unavailable = (sqlite3.OperationalError,)

    def __init__(self, path: str, *, busy_timeout_s: float = 5.0, cache_mb: int = 64, readers: int = 4) -> None:
        super().__init__(readers)
        self.path = str(path)
        self.describe = f"SQLite {self.path}"
        self.busy_timeout_s = busy_timeout_s
        self.cache_mb = cache_mb

    def _open(self) -> sqlite3.Connection:
        # check_same_thread=False: a connection moves between the store actor's worker threads, but
        # is used by one at a time (the writer mutex; the reader pool).
        return sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False)

    def _connect(self) -> sqlite3.Connection:
        conn = self._open()
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA cache_size=-{self.cache_mb * 1024}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _connect_reader(self) -> sqlite3.Connection:
        conn = self._open()
        conn.execute("PRAGMA query_only=1")
        return conn

    @contextlib.contextmanager
    def _transaction(self, conn: sqlite3.Connection, *, migrating: bool = False) -> Iterator[None]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            raise
        conn.execute("COMMIT")

    def _executemany(self, conn: sqlite3.Connection, sql: str, params: list[tuple]) -> int:
        if not params:
            return 0
        return conn.executemany(sql, params).rowcount

    def _insert_telemetry(self, conn: sqlite3.Connection, points: Sequence[PointRow], keys: Mapping[str, int]) -> int:
        width = len(TELEMETRY_COLUMNS)
        per = min(ROWS_PER_INSERT, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width)
        new = 0
        for i in range(0, len(points), per):
            chunk = points[i:i + per]
            params = list(itertools.chain.from_iterable(chunk))
            # each row's asset_id becomes its key in one slice assignment: no tuple made a row (this
            # thread holds the GIL meanwhile, which the trio thread waits for)
            params[0::width] = list(map(keys.__getitem__, params[0::width]))
            new += conn.execute(_insert_telemetry_sql(len(chunk)), params).rowcount
        return new
