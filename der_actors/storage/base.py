"""The store's one small interface, and the rows it keeps.

A `Storage` is synchronous: the store actor calls it from a worker thread when `blocking` is True
(SQLite, PostgreSQL), directly otherwise (memory). Writes come in batches; reads are plain queries.
"""

from __future__ import annotations

from typing import Protocol

import attrs

from der_actors.messages import Telemetry
from der_actors.views import DispatchView, SessionSummary


@attrs.frozen
class StoredPoint:
    point: Telemetry
    received_at: float


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
    points: list[StoredPoint] = attrs.field(factory=list)
    dispatches: list[DispatchView] = attrs.field(factory=list)  # upserts by dispatch_id
    sessions: list[SessionSummary] = attrs.field(factory=list)  # upserts by session_id
    heartbeats: list[HeartbeatRow] = attrs.field(factory=list)

    def __len__(self) -> int:
        return len(self.points) + len(self.dispatches) + len(self.sessions) + len(self.heartbeats)


class Storage(Protocol):
    blocking: bool  # True: call from a worker thread

    def write(self, batch: WriteBatch) -> None: ...

    def telemetry_history(
        self, asset_id: str, since: float | None, until: float | None, limit: int
    ) -> list[StoredPoint]:
        """Newest first."""

    def dispatch(self, dispatch_id: str) -> DispatchView | None: ...

    def dispatch_history(self, asset_id: str | None, site_id: str | None, limit: int) -> list[DispatchView]:
        """Newest first."""

    def heartbeats(self, asset_id: str, limit: int) -> list[HeartbeatRow]:
        """Newest first: heartbeats of the sessions that served the asset."""

    def sessions(self, asset_id: str, limit: int) -> list[SessionSummary]:
        """Newest first."""

    def close(self) -> None: ...
