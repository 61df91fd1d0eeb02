"""The store actor: the one owner of the storage's write side; writes history in batches.

Policy (the decision the issue asks for, tested in tests/test_store_actor.py):

- Intake never blocks control. `record_*` are plain method calls that append to buffers and return;
  telemetry "now", presence and dispatch never wait for the database.
- A writer task takes a batch when it has `batch_rows` points, or `batch_delay_s` after the first row
  arrived, and writes it in one transaction (in a worker thread for a blocking engine). When more
  is waiting (the writer fell behind), one transaction takes up to `max_batch_rows`: group commit.
  Why it pays on SQLite with many assets: a batch holds about one point per asset, so each row
  dirties its own B-tree pages (both are clustered by asset), and a commit writes them whole to the
  WAL. Measured with `storage.write`, 10,000 assets, 600,000 rows: 50,000 rows per commit took them
  at about twice the rows/s of 5,000 (and the gap grows with the table).
- Telemetry waits in a bounded buffer (`buffer_rows`, the store's inbox bound). Measured
  (bench/store_bench.py): ~480 bytes of RSS per buffered point (a `PointRow`), so the default
  500,000 is ~240 MB, 200 s of 10,000 assets at one point per 4 s, hours for a site of 100. Past
  it the OLDEST telemetry is dropped and counted (an agent that spools unacknowledged points sends
  them again). Dispatch, session and heartbeat records are never dropped: they are few (a
  heartbeat per session per 30 s), and an audit trail with holes is worse than memory use.
- A write the database cannot take now (`StorageUnavailable`: down, unreachable, locked, disk full)
  puts its batch back at the front of the buffers (then applies the bound, so a long outage keeps
  the newest telemetry) and is retried after a backoff (`retry_initial_s` doubling to
  `retry_cap_s`). The storage reconnects by itself on the next attempt; writes are idempotent (keys
  and upserts), so a batch whose commit was not acknowledged can be written twice safely.
  The first failure and the recovery are logged once each, not every retry.
- A batch the database refuses for what is in it (any other error: a value it rejects, or our bug)
  is split in halves until the refused rows are alone; those are logged and counted as rejected,
  everything else is written. One bad row never holds up history.
- Accounting is exact at every instant: received = stored + buffered + dropped + rejected (points),
  where buffered counts the batch being written. `stored` counts points the database accepted,
  replays of a stored `(asset_id, seq)` included (`duplicate_points` says how many were replays).
- Retention: when `retention_s` is set, `prune_first_s` after start and then every `prune_every_s`
  the actor deletes telemetry and heartbeats older than that (by the point's own timestamp and the
  heartbeat's arrival), `prune_rows` rows per transaction, taking turns with the writer.
  Dispatches and sessions are kept (the audit trail).
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import attrs
import structlog
import trio

from der_actors.actors.channels import send_or_wait
from der_actors.storage.base import HeartbeatRow, PointRow, Storage, StorageUnavailable, WriteBatch
from der_actors.views import DispatchView, SessionSummary

log = structlog.get_logger("der.store")

# Committed batches waiting for the settler. It takes a point in ~1 us, far faster than the database
# writes one, so this fills only when the loop is starved; then the writer waits: acks are what let
# agents unspool, and history should not run further ahead of them than this many commits.
SETTLE_BACKLOG = 8

T = TypeVar("T")


@contextlib.asynccontextmanager
async def _held(lock: trio.Lock) -> AsyncIterator[None]:
    """`async with lock`, without the scheduler trip when the lock is free (the writer's usual case:
    only the pruner takes it too), which was one round of the loop per batch."""
    if lock.locked():
        await lock.acquire()
    else:
        lock.acquire_nowait()  # a free trio Lock is taken at once (a released one goes to its next waiter)
    try:
        yield
    finally:
        lock.release()


@attrs.define
class StoreCounters:
    received_points: int = 0
    stored_points: int = 0  # accepted by the database (replays included)
    duplicate_points: int = 0  # of stored_points, replays of a stored (asset_id, seq)
    dropped_points: int = 0  # oldest telemetry dropped because the buffer was full
    rejected_points: int = 0  # refused by the database for their content
    stored_records: int = 0  # dispatch, session and heartbeat rows written
    rejected_records: int = 0
    write_errors: int = 0
    batches: int = 0
    pruned_rows: int = 0


@attrs.define
class StoreActor:
    storage: Storage
    batch_rows: int = 5_000  # a batch is due at this many points
    max_batch_rows: int = 50_000  # what one transaction takes when more is waiting
    batch_delay_s: float = 0.05
    buffer_rows: int = 500_000  # see the module docstring for what it costs
    retry_initial_s: float = 0.5
    retry_cap_s: float = 30.0
    retention_s: float | None = None  # None: keep telemetry forever
    prune_every_s: float = 3600.0
    prune_first_s: float = 60.0  # first pass soon after start, so frequent restarts still prune
    prune_rows: int = 5_000
    now: Callable[[], float] = time.time  # wall clock for the retention cutoff
    # Called (on the trio thread) with the points of each committed batch, replays included, and with
    # points the database refused: the hook that tells agents what they may unspool. Dropped points
    # are not passed (the agent resends them). A settler task (not the writer) calls them, in slices
    # of `settle_slice` points with a scheduling point between: a 50,000-point group commit took ~60
    # ms of the trio thread in one go (the ack ranges), a stall every dispatch and read behind it
    # waited out (bench profile); and under overload each scheduling point waits a whole round of
    # the loop, which would hold the writer back from its next batch (measured: stored 10k -> 6k/s).
    stored_listeners: list[Callable[[list[PointRow]], None]] = attrs.field(factory=list)
    settle_slice: int = 5_000
    counters: StoreCounters = attrs.field(factory=StoreCounters)
    last_error: str = ""  # non-empty while writes are failing
    _points: deque[PointRow] = attrs.field(factory=deque)
    _records: WriteBatch = attrs.field(factory=WriteBatch)  # never dropped
    _in_flight: list[WriteBatch] = attrs.field(factory=list)  # taken, not yet written (or halves of it)
    _first_at: float = 0.0
    _due: trio.CancelScope | None = None  # the writer's sleep until its batch is due (see _gather)
    _idle: trio.Event = attrs.field(factory=trio.Event)
    _write_lock: trio.Lock = attrs.field(factory=trio.Lock)  # the writer and the pruner take turns
    _settle: trio.MemorySendChannel[list[PointRow]] | None = None  # writer -> settler (set by run)
    _unsettled: int = 0  # point lists sent to the settler and not yet passed to the listeners

    # --- intake (called from other actors; never waits) ---------------------------------------

    def record_points(self, points: list[PointRow]) -> None:
        self._arriving()
        self.counters.received_points += len(points)
        self._points.extend(points)
        if len(self._points) >= self.batch_rows and self._due is not None:
            self._due.cancel()  # a full batch is due now, not at its deadline
        self._enforce_bound()

    def record_dispatch(self, view: DispatchView) -> None:
        self._arriving()
        self._records.dispatches.append(view)

    def record_session(self, summary: SessionSummary) -> None:
        self._arriving()
        self._records.sessions.append(summary)

    def record_heartbeat(self, row: HeartbeatRow) -> None:
        self._arriving()
        self._records.heartbeats.append(row)

    def _arriving(self) -> None:
        # A first row sets the batch's deadline (it runs from that row) on the writer's sleep, and a full
        # batch (above) ends the sleep: the writer wakes once a batch, when it is due, not per arrival.
        if not self._points and not len(self._records):
            self._first_at = trio.current_time()
            if self._due is not None:
                self._due.deadline = self._first_at + self.batch_delay_s

    def _enforce_bound(self) -> None:
        overflow = len(self._points) - self.buffer_rows
        if overflow > 0:
            for _ in range(overflow):
                self._points.popleft()
            self.counters.dropped_points += overflow

    @property
    def buffered_points(self) -> int:
        """Points received and not yet stored or dropped (the batch being written included)."""
        return len(self._points) + sum(len(b.points) for b in self._in_flight)

    @property
    def buffered_records(self) -> int:
        return self._records.records + sum(b.records for b in self._in_flight)

    @property
    def healthy(self) -> bool:
        return not self.last_error

    def status(self) -> dict:
        """For health endpoints and logs."""
        return {
            **attrs.asdict(self.counters),
            "buffered_points": self.buffered_points,
            "buffered_records": self.buffered_records,
            "healthy": self.healthy,
            "last_error": self.last_error or None,
        }

    # --- reads ---------------------------------------------------------------------------------

    async def query(self, fn: Callable[..., T], *args) -> T:
        """Run a read method of the storage (e.g. `storage.telemetry_history`) off the trio thread.
        Raises `StorageUnavailable` when the database cannot be reached."""
        return await self._call(fn, *args)

    async def _call(self, fn: Callable[..., T], *args) -> T:
        if self.storage.blocking:
            return await trio.to_thread.run_sync(functools.partial(fn, *args))
        return fn(*args)

    async def flushed(self) -> None:
        """Wait until everything recorded so far has been written and the listeners told (tests,
        shutdown)."""
        while self._points or len(self._records) or self._in_flight or self._unsettled:
            self._idle = trio.Event()  # set by the writer finding nothing to write, or by the settler
            await self._idle.wait()

    # --- start-up ------------------------------------------------------------------------------

    async def startup_sessions(self, inventory, per_asset: int) -> dict[str, list[SessionSummary]]:
        """Save the inventory and read each asset's recent sessions (one worker-thread call).
        A database that is down costs only this: assets start with no session history."""

        def work() -> dict[str, list[SessionSummary]]:
            self.storage.save_inventory(inventory)
            return {a.id: self.storage.sessions(a.id, per_asset) for a in inventory.assets}

        try:
            async with self._write_lock:
                return await self._call(work)
        except Exception as exc:
            log.warning("store_startup_read_failed", error=str(exc), consequence="no session history until restart")
            return {}

    # --- the actor -----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[StoreActor] = trio.TASK_STATUS_IGNORED) -> None:
        settle_send, settle_recv = trio.open_memory_channel[list[PointRow]](SETTLE_BACKLOG)
        self._settle = settle_send
        async with settle_send, settle_recv, trio.open_nursery() as nursery:
            nursery.start_soon(self._settler, settle_recv)
            nursery.start_soon(self._writer)
            if self.retention_s is not None:
                nursery.start_soon(self._retention)
            task_status.started(self)

    async def _writer(self) -> None:
        failures = 0
        while True:
            await self._gather()
            self._in_flight = [self._take_batch()]
            try:
                await self._write_in_flight()
            except StorageUnavailable as exc:
                self._requeue()
                failures += 1
                delay = min(self.retry_cap_s, self.retry_initial_s * 2 ** min(failures - 1, 30))
                if not self.last_error:
                    log.warning("store_write_failed", error=str(exc), retry_in_s=delay,
                                consequence="history is buffered; oldest telemetry dropped past the bound")
                self.last_error = str(exc) or type(exc).__name__
                await trio.sleep(delay)
                continue
            except BaseException:
                self._requeue()  # cancelled: keep the accounting exact
                raise
            if self.last_error:
                log.info("store_write_recovered", after_failures=failures, buffered_points=self.buffered_points,
                         dropped_points=self.counters.dropped_points)
                self.last_error = ""
            failures = 0

    async def _write_in_flight(self) -> None:
        """Write `_in_flight` front to front; split a refused batch until the refused rows are alone."""
        while self._in_flight:
            batch = self._in_flight[0]
            try:
                async with _held(self._write_lock):
                    new = await self._call(self.storage.write, batch)
            except StorageUnavailable:
                self.counters.write_errors += 1
                raise
            except Exception as exc:
                self.counters.write_errors += 1
                self._in_flight.pop(0)
                if len(batch) > 1:
                    self._in_flight[0:0] = [b for b in batch.halves() if len(b)]
                else:
                    await self._reject(batch, exc)
                continue
            self._in_flight.pop(0)
            c = self.counters
            c.stored_points += len(batch.points)
            c.duplicate_points += len(batch.points) - (new if isinstance(new, int) else len(batch.points))
            c.stored_records += batch.records
            c.batches += 1
            await self._settled(batch.points)

    async def _settled(self, points: list[PointRow]) -> None:
        """These points need no resending: stored, or refused for their content (a replay would be
        refused again and keep an agent's spool from ever draining). The settler tells the listeners."""
        if points and self._settle is not None:
            self._unsettled += 1
            await send_or_wait(self._settle, points)  # the writer waits for its next batch anyway

    async def _settler(self, committed: trio.MemoryReceiveChannel[list[PointRow]]) -> None:
        async for points in committed:
            for start in range(0, len(points), self.settle_slice):
                if start:
                    await trio.lowlevel.checkpoint()
                part = points[start:start + self.settle_slice]
                for listener in self.stored_listeners:
                    try:
                        listener(part)
                    except Exception:  # a listener's bug must not stop history
                        log.exception("store_listener_failed", listener=repr(listener))
            self._unsettled -= 1
            if not self._unsettled:
                self._idle.set()

    async def _reject(self, batch: WriteBatch, exc: Exception) -> None:
        self.counters.rejected_points += len(batch.points)  # counted before the await: exact if cancelled
        self.counters.rejected_records += batch.records
        row = batch.points or batch.dispatches or batch.sessions or batch.heartbeats
        log.error("store_row_rejected", row=repr(row[0])[:500], error=repr(exc)[:500],
                  consequence="this row is not stored; the rest of its batch is")
        await self._settled(batch.points)

    async def _gather(self) -> None:
        """Return when a batch is due: `batch_rows` points waiting, or `batch_delay_s` after the first
        row arrived (rows left over from the last batch, or put back after a failure, are due now)."""
        if len(self._points) >= self.batch_rows:
            return
        with trio.CancelScope() as self._due:
            if self._points or len(self._records):
                self._due.deadline = self._first_at + self.batch_delay_s
            else:
                self._idle.set()  # the deadline comes with the first row (`_arriving`)
            await trio.sleep_forever()
        self._due = None

    def _take_batch(self) -> WriteBatch:
        batch, self._records = self._records, WriteBatch()
        n = min(self.max_batch_rows, len(self._points))
        batch.points = [self._points.popleft() for _ in range(n)]
        return batch

    def _requeue(self) -> None:
        """Put what was not written back in front of what arrived since, then apply the bound."""
        taken, self._in_flight = self._in_flight, []
        points = [p for b in taken for p in b.points]
        self._points.extendleft(reversed(points))
        self._records = WriteBatch(
            dispatches=[d for b in taken for d in b.dispatches] + self._records.dispatches,
            sessions=[s for b in taken for s in b.sessions] + self._records.sessions,
            heartbeats=[h for b in taken for h in b.heartbeats] + self._records.heartbeats,
        )
        self._enforce_bound()

    async def _retention(self) -> None:
        await trio.sleep(self.prune_first_s)
        while True:
            cutoff = self.now() - self.retention_s
            while True:
                try:
                    async with self._write_lock:
                        gone = await self._call(self.storage.prune, cutoff, self.prune_rows)
                except Exception as exc:
                    log.warning("store_prune_failed", error=str(exc), retry_in_s=self.prune_every_s)
                    break
                self.counters.pruned_rows += gone
                if gone:
                    log.info("store_pruned", rows=gone, before=cutoff)
                if gone < self.prune_rows:
                    break
                await trio.sleep(0)  # the writer's turn (trio.Lock is fair)
            await trio.sleep(self.prune_every_s)
