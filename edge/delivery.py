"""One session's telemetry sender: live points first, then the spool's backlog, then resends.

Created when the session registers, for the assets the headend accepted. Its work, by priority:

1. live: what the site produces from registration on (`offer_live`), sent as it comes. At
   registration the newest unacknowledged point of each asset goes first, so the headend shows "now"
   at once even after a long outage.
2. backlog: every other point that is not done, oldest first, from the start of the spool to where
   it ended at registration, with original seqs and timestamps, in batches paced by `Pacer`
   (EDGE_BACKFILL_RATE). A live batch that arrives meanwhile goes before the next backfill batch,
   so backfill delays a live tick by one batch's send at most.
3. resends: a batch not fully acknowledged RESEND_AFTER_S after it was sent (the headend may have
   shed it under load, or an ack was lost) goes back into the backlog, its acknowledged points
   skipped; after MAX_RESENDS resends in one session it is left for the next session.

Live batches queue in memory up to LIVE_QUEUE_BATCHES; beyond that (a link slower than the site)
the oldest queued batch joins the backlog instead: it is on disk already, so nothing is lost.
Points sent but never acknowledged before the session ended are simply not done: the next
session's backlog covers them.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

import structlog
import trio

from der_actors.messages import AgentMessage, Telemetry, TelemetryBatch
from edge.replay import InFlight, Pacer, Span
from edge.spool import Spool
from edge.stats import LinkStats

__all__ = ["Delivery", "RESEND_AFTER_S", "MAX_RESENDS", "BACKFILL_MAX_BATCH"]

log = structlog.get_logger("der.edge")

RESEND_AFTER_S = 60.0
MAX_RESENDS = 3
LIVE_QUEUE_BATCHES = 16  # a minute of ticks at 4 s; past it the link is not keeping up
BACKFILL_MAX_BATCH = 500  # points per backfill batch (~70 KB on the wire at ~140 bytes a point)

Send = Callable[[AgentMessage], Awaitable[bool]]


class Delivery:
    def __init__(self, spool: Spool, accepted: Sequence[str], *, rate: float, stats: LinkStats, send: Send) -> None:
        self._spool = spool
        self._order = tuple(accepted)  # inventory order: the first batch lists assets in it
        self._accepted = frozenset(accepted)
        self._send = send
        self._stats = stats
        self._live: deque[tuple[list[Telemetry], tuple[Span, ...]]] = deque()
        self._backlog: deque[tuple[Span, int]] = deque()  # (span, attempt)
        self._inflight = InFlight()
        self._pacer = Pacer(rate, BACKFILL_MAX_BATCH)
        self._wake = trio.Event()
        self._backfill_started: float | None = None
        self._backfilled = 0
        self._begin()  # now, before the site offers any live point: the backlog ends exactly here

    # --- called by the uplink (sync) -------------------------------------------------------------

    def offer_live(self, points: Sequence[Telemetry], span: Span) -> None:
        keep = [p for p in points if p.asset_id in self._accepted]
        if not keep:
            return
        if len(self._live) >= LIVE_QUEUE_BATCHES:
            _, spans = self._live.popleft()
            self._backlog.extend((s, 0) for s in spans)
        self._live.append((keep, (span,)))
        self._wake.set()

    def acked(self) -> None:
        self._inflight.retire_acked(self._spool.done_seqs)

    # --- the loop --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Send until the link fails (returns) or the session is cancelled."""
        while True:
            now = trio.current_time()
            self._requeue_due(now)
            if self._live:
                points, spans = self._live.popleft()
                if not await self._send_batch(points, spans, 0, backfill=False):
                    return
                continue
            if self._backlog and self._pacer.ready(now):
                points, spans, attempt = await self._read_batch()
                if points:
                    if not await self._send_batch(points, spans, attempt, backfill=True):
                        return
                    self._pacer.sent(len(points), now)
                if not self._backlog:
                    self._backfill_done()
                continue
            deadline = min(self._pacer.next_at if self._backlog else math.inf,
                           self._inflight.next_due(RESEND_AFTER_S))
            self._wake = trio.Event()  # no await since the checks above: nothing can be missed
            with trio.move_on_at(deadline):
                await self._wake.wait()

    def _begin(self) -> None:
        spool = self._spool
        latest = spool.read_latest(self._order)
        if latest:
            self._live.appendleft(([p for p, _, _ in latest], tuple(Span(s, e) for _, s, e in latest)))
        self._backlog.append((Span(spool.start, spool.end), 0))
        pending = spool.pending(self._accepted) - len(latest)
        if pending:
            self._backfill_started = trio.current_time()
            log.info("backfill_started", points=pending, rate=self._pacer.rate, batch=self._pacer.batch)

    def _backfill_done(self) -> None:
        if self._backfill_started is None:
            return
        took = trio.current_time() - self._backfill_started
        log.info("backfill_done", points=self._backfilled, seconds=round(took, 3),
                 points_per_s=round(self._backfilled / took) if took > 0 else None)
        self._backfill_started = None

    async def _read_batch(self) -> tuple[list[Telemetry], tuple[Span, ...], int]:
        """Up to one batch of points from the backlog (reads are bounded: see Spool.read)."""
        want = self._pacer.batch
        points: list[Telemetry] = []
        spans: list[Span] = []
        attempt = 0
        while len(points) < want and self._backlog:
            span, tries = self._backlog[0]
            chunk, pos = self._spool.read(span.start, span.end, want - len(points),
                                          skip=self._inflight.seqs, assets=self._accepted)
            points.extend(chunk)
            spans.append(Span(span.start, pos))
            attempt = max(attempt, tries)
            if pos >= span.end:
                self._backlog.popleft()
            else:
                self._backlog[0] = (Span(pos, span.end), tries)
            await trio.lowlevel.checkpoint()  # no time passes; lets the site's tasks run between reads
        return points, tuple(spans), attempt

    async def _send_batch(self, points: list[Telemetry], spans: tuple[Span, ...], attempt: int, *,
                          backfill: bool) -> bool:
        self._inflight.add(trio.current_time(), points, spans, attempt)
        if not await self._send(TelemetryBatch(tuple(points))):
            return False
        stats = self._stats
        stats.batches_sent += 1
        stats.points_sent += len(points)
        if backfill:
            stats.points_backfilled += len(points)
            self._backfilled += len(points)
        return True

    def _requeue_due(self, now: float) -> None:
        for sent in self._inflight.due(now, RESEND_AFTER_S):
            unacked = sent.unacked(self._spool.done_seqs)
            if not unacked:
                continue
            if sent.attempt >= MAX_RESENDS:
                log.warning("telemetry_unacked_left_for_next_session", points=unacked, sends=sent.attempt + 1)
                continue
            self._stats.points_resent += unacked
            self._backlog.extend((span, sent.attempt + 1) for span in sent.spans)
            log.info("telemetry_resend", points=unacked, unacked_for_s=round(now - sent.at, 3))
