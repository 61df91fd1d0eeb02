"""Bounded in-memory history (`DATABASE_URL=memory://`): for tests and demos, gone on restart."""

from __future__ import annotations

from collections import OrderedDict, deque

import attrs

from der_actors.model import Inventory
from der_actors.storage.base import HeartbeatRow, PointRow, WriteBatch, dispatch_asset_ids
from der_actors.storage.rows import stored_point_of
from der_actors.views import DispatchView, SessionSummary


@attrs.define
class MemoryStorage:
    points_per_asset: int = 10_000
    max_records: int = 10_000  # dispatches, sessions and heartbeats each
    blocking: bool = False
    # asset_id -> seq -> point, oldest first; keyed by seq so a replayed point is stored once
    _points: dict[str, OrderedDict[int, PointRow]] = attrs.field(factory=dict)
    _dispatches: OrderedDict[str, DispatchView] = attrs.field(factory=OrderedDict)
    _sessions: OrderedDict[str, SessionSummary] = attrs.field(factory=OrderedDict)
    _heartbeats: deque[HeartbeatRow] = attrs.field(init=False)
    inventory: Inventory | None = None

    def __attrs_post_init__(self) -> None:
        self._heartbeats = deque(maxlen=self.max_records)

    def write(self, batch: WriteBatch) -> int:
        new = 0
        for row in batch.points:
            asset_id, seq = row[0], row[1]
            series = self._points.setdefault(asset_id, OrderedDict())
            if seq in series:
                continue
            series[seq] = row
            new += 1
            if len(series) > self.points_per_asset:
                series.popitem(last=False)
        for d in batch.dispatches:
            self._dispatches[d.dispatch_id] = d
            if len(self._dispatches) > self.max_records:
                self._dispatches.popitem(last=False)
        for s in batch.sessions:
            self._sessions[s.session_id] = s
            if len(self._sessions) > self.max_records:
                self._sessions.popitem(last=False)
        self._heartbeats.extend(batch.heartbeats)
        return new

    def save_inventory(self, inventory: Inventory) -> None:
        self.inventory = inventory

    def reset(self) -> None:
        self._points.clear()
        self._dispatches.clear()
        self._sessions.clear()
        self._heartbeats.clear()

    def prune(self, before: float, max_rows: int) -> int:
        gone = 0
        for series in self._points.values():
            for seq in [seq for seq, row in series.items() if row[2] < before][: max_rows - gone]:  # row[2]: ts
                del series[seq]
                gone += 1
        while gone < max_rows and self._heartbeats and self._heartbeats[0].received_at < before:
            self._heartbeats.popleft()
            gone += 1
        return gone

    def telemetry_history(self, asset_id, since, until, limit):
        rows = sorted(self._points.get(asset_id, {}).values(), key=lambda r: (r[2], r[1]))  # (ts, seq)
        out = []
        for r in reversed(rows):
            if until is not None and r[2] > until:
                continue
            if since is not None and r[2] < since:
                break
            out.append(stored_point_of(r))
            if len(out) >= limit:
                break
        return out

    def seqs(self, asset_id: str) -> list[int]:
        """The seqs held for an asset, in the order first written: a check of a long run's history
        that does not turn a million rows back into points (`telemetry_history` does)."""
        return list(self._points.get(asset_id, ()))

    def dispatch(self, dispatch_id):
        return self._dispatches.get(dispatch_id)

    # Newest first as the SQL engines order: by time, then latest first write (sorts are stable).

    def dispatch_history(self, asset_id, site_id, limit):
        out = [
            d for d in reversed(self._dispatches.values())
            if (asset_id is None or asset_id in dispatch_asset_ids(d)) and (site_id is None or d.site_id == site_id)
        ]
        out.sort(key=lambda d: d.lifecycle.history[0].at, reverse=True)
        return out[:limit]

    def open_dispatches(self):
        return [d for d in self._dispatches.values() if not d.lifecycle.state.terminal]

    def heartbeats(self, asset_id, limit):
        out = [h for h in reversed(self._heartbeats) if asset_id in h.asset_ids]
        out.sort(key=lambda h: h.received_at, reverse=True)
        return out[:limit]

    def sessions(self, asset_id, limit):
        out = [s for s in reversed(self._sessions.values()) if asset_id in s.asset_ids]
        out.sort(key=lambda s: s.connected_at, reverse=True)
        return out[:limit]

    def close(self) -> None:
        pass
