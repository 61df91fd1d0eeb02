"""The store actor: the one owner of the storage connection; writes history in batches.

Intake never blocks control: `record_*` put rows in a bounded buffer without waiting. A writer task
takes a batch when it has `batch_rows` rows or `batch_delay_s` after the first row arrived, and writes
it (in a worker thread for a blocking engine). When the engine is slow or down the buffer fills; past
`buffer_rows` the OLDEST telemetry is dropped and counted. Dispatch, session and heartbeat records
are never dropped (they are few, and an audit trail with holes is worse than memory use).
A failed write is retried after `retry_s`, the batch kept whole.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable
from typing import TypeVar

import attrs
import structlog
import trio

from der_actors.storage.base import HeartbeatRow, Storage, StoredPoint, WriteBatch
from der_actors.views import DispatchView, SessionSummary

log = structlog.get_logger("der.store")
T = TypeVar("T")


@attrs.define
class StoreCounters:
    stored_points: int = 0
    dropped_points: int = 0
    write_errors: int = 0
    batches: int = 0


@attrs.define
class StoreActor:
    storage: Storage
    batch_rows: int = 5_000
    batch_delay_s: float = 0.05
    buffer_rows: int = 1_000_000
    retry_s: float = 1.0
    counters: StoreCounters = attrs.field(factory=StoreCounters)
    _points: deque[StoredPoint] = attrs.field(factory=deque)
    _records: WriteBatch = attrs.field(factory=WriteBatch)  # never dropped
    _wakeup: trio.Event = attrs.field(factory=trio.Event)
    _idle: trio.Event = attrs.field(factory=trio.Event)

    # --- intake (called from other actors; never waits) ---------------------------------------

    def record_points(self, points: list[StoredPoint]) -> None:
        self._points.extend(points)
        overflow = len(self._points) - self.buffer_rows
        if overflow > 0:
            for _ in range(overflow):
                self._points.popleft()
            self.counters.dropped_points += overflow
        self._wakeup.set()

    def record_dispatch(self, view: DispatchView) -> None:
        self._records.dispatches.append(view)
        self._wakeup.set()

    def record_session(self, summary: SessionSummary) -> None:
        self._records.sessions.append(summary)
        self._wakeup.set()

    def record_heartbeat(self, row: HeartbeatRow) -> None:
        self._records.heartbeats.append(row)
        self._wakeup.set()

    @property
    def buffered_points(self) -> int:
        return len(self._points)

    # --- reads ---------------------------------------------------------------------------------

    async def query(self, fn: Callable[..., T], *args) -> T:
        """Run a read method of the storage (e.g. `storage.telemetry_history`) off the trio thread."""
        if self.storage.blocking:
            return await trio.to_thread.run_sync(functools.partial(fn, *args))
        return fn(*args)

    async def flushed(self) -> None:
        """Wait until everything recorded so far has been written (tests, shutdown)."""
        while self._points or len(self._records):
            self._idle = trio.Event()
            self._wakeup.set()
            await self._idle.wait()

    # --- the writer ----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[StoreActor] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started(self)
        while True:
            if not self._points and not len(self._records):
                self._idle.set()
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                if len(self._points) < self.batch_rows:
                    await trio.sleep(self.batch_delay_s)  # let a batch gather
            batch = self._take_batch()
            while True:
                try:
                    await self._write(batch)
                    break
                except Exception as exc:
                    self.counters.write_errors += 1
                    log.warning("store_write_failed", error=repr(exc), rows=len(batch), retry_in_s=self.retry_s)
                    await trio.sleep(self.retry_s)
            self.counters.stored_points += len(batch.points)
            self.counters.batches += 1

    def _take_batch(self) -> WriteBatch:
        batch, self._records = self._records, WriteBatch()
        n = min(self.batch_rows, len(self._points))
        batch.points = [self._points.popleft() for _ in range(n)]
        return batch

    async def _write(self, batch: WriteBatch) -> None:
        if self.storage.blocking:
            await trio.to_thread.run_sync(self.storage.write, batch)
        else:
            self.storage.write(batch)
