"""The store's one small interface, and the rows it keeps.

A `Storage` is synchronous: the store actor calls it from a worker thread when `blocking` is True
(SQLite, PostgreSQL), directly otherwise (memory). Writes come in batches; reads are plain queries.

Threading contract for blocking engines: the write side (`write`, `save_inventory`, `reset`,
`prune`) is called by one caller at a time (the store actor serialises them); reads may run in any
number of threads beside it, each on its own connection.
"""

from __future__ import annotations

from typing import Protocol

import attrs

from der_actors.messages import Telemetry
from der_actors.model import Inventory
from der_actors.views import DispatchView, SessionSummary


class StorageConfigError(ValueError):
    """DATABASE_URL or the database itself cannot be used: start-up stops with this message."""


class SchemaTooNew(StorageConfigError):
    """The database was migrated by a newer headend than this one."""


class StorageUnavailable(RuntimeError):
    """The database cannot be reached now (reads fail fast with this; writes are retried)."""


@attrs.frozen
class StoredPoint:
    """A point as history reads return it."""

    point: Telemetry
    received_at: float


# A point as the store buffers and writes it: a plain tuple, made by `rows.point_row`,
#   (asset_id, seq, ts, received_at, site_id, mw, mw_setpoint, online, status, fault_code, details_json),
# the telemetry table's columns with the asset's id where the engines put its key. Not an object
# because of the cyclic GC: it stops tracking a tuple of atomics the first time it sees one, so
# hundreds of thousands of buffered points cost collections nothing after that. As StoredPoint
# (three tracked objects each, with the Telemetry and its details) they made gen-0 collections of
# 70-140 ms and gen-1 of 300-600 ms under load: the dispatch latency tail (dispatch bench).
PointRow = tuple


@attrs.frozen
class HeartbeatRow:
    session_id: str
    gateway_id: str
    site_id: str
    asset_ids: tuple[str, ...]
    timestamp: float  # the agent's clock
    received_at: float  # ours


@attrs.define
class WriteBatch:
    points: list[PointRow] = attrs.field(factory=list)
    dispatches: list[DispatchView] = attrs.field(factory=list)  # upserts by dispatch_id
    sessions: list[SessionSummary] = attrs.field(factory=list)  # upserts by session_id
    heartbeats: list[HeartbeatRow] = attrs.field(factory=list)

    def __len__(self) -> int:
        return len(self.points) + len(self.dispatches) + len(self.sessions) + len(self.heartbeats)

    @property
    def records(self) -> int:
        """Rows that are never dropped (everything but telemetry)."""
        return len(self.dispatches) + len(self.sessions) + len(self.heartbeats)

    def halves(self) -> tuple[WriteBatch, WriteBatch]:
        """Split in two, each kind keeping its order (to find the row a database refuses)."""
        kinds = ("points", "dispatches", "sessions", "heartbeats")
        items = [(k, x) for k in kinds for x in getattr(self, k)]
        mid = len(items) // 2
        parts = (WriteBatch(), WriteBatch())
        for i, (k, x) in enumerate(items):
            getattr(parts[i >= mid], k).append(x)
        return parts


class Storage(Protocol):
    blocking: bool  # True: call from a worker thread

    def write(self, batch: WriteBatch) -> int:
        """Write the batch in one transaction (all or nothing); idempotent, so a batch whose
        commit was not acknowledged can be written again. Returns how many telemetry points were
        new (the rest were replays of a stored `(asset_id, seq)`)."""

    def save_inventory(self, inventory: Inventory) -> None:
        """Record the inventory as loaded (the `assets` table)."""

    def reset(self) -> None:
        """Empty every history table (RESET_DB)."""

    def prune(self, before: float, max_rows: int) -> int:
        """Delete at most `max_rows` telemetry and heartbeat rows older than `before`; returns how
        many went (0: nothing older is left)."""

    def telemetry_history(
        self, asset_id: str, since: float | None, until: float | None, limit: int
    ) -> list[StoredPoint]:
        """Newest first (by the point's timestamp, then seq); since/until inclusive."""

    def dispatch(self, dispatch_id: str) -> DispatchView | None: ...

    def dispatch_history(self, asset_id: str | None, site_id: str | None, limit: int) -> list[DispatchView]:
        """Newest first. `asset_id` matches the target asset or any allocation or leg asset."""

    def open_dispatches(self) -> list[DispatchView]:
        """Dispatches not yet in a final state, oldest first (resumed after a restart)."""

    def heartbeats(self, asset_id: str, limit: int) -> list[HeartbeatRow]:
        """Newest first: heartbeats of the sessions that served the asset."""

    def sessions(self, asset_id: str, limit: int) -> list[SessionSummary]:
        """Newest first (by connected_at)."""

    def close(self) -> None: ...


def dispatch_asset_ids(view: DispatchView) -> set[str]:
    """The assets a dispatch concerns: its target, every allocation and every per-asset leg."""
    ids = {a.asset_id for a in view.allocations} | {leg.asset_id for leg in view.legs if leg.asset_id}
    if view.asset_id:
        ids.add(view.asset_id)
    return ids
