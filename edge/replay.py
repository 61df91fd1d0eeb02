"""Bookkeeping for sending spooled telemetry (pure): what is in flight, when backfill may go next.

- `InFlight`: batches sent in this session and not yet known to be acknowledged, oldest first, with
  the seqs of each (per asset, as SeqSets) and where its points lie in the spool. The union of their
  seqs is what a backfill read skips, so a point is on the wire at most once per session until its
  batch is given up on.
- `Pacer`: the backfill rate limit. A batch of n points at time t allows the next batch at
  max(t, previous allowance) + n / rate; live telemetry does not count. Batches are a quarter of a
  second of the rate (at most `max_batch` points), so at 2000 points/s: 500 points every 0.25 s.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable

import attrs

from der_actors.messages import Telemetry
from edge.seqset import SeqSet
from edge.spool import Position

__all__ = ["Span", "Sent", "InFlight", "Pacer", "BACKFILL_PERIOD_S"]

BACKFILL_PERIOD_S = 0.25


@attrs.frozen
class Span:
    """[start, end) of the spool."""

    start: Position
    end: Position


@attrs.define
class Sent:
    at: float
    seqs: dict[str, SeqSet]
    spans: tuple[Span, ...]
    attempt: int  # 0: first send in this session; n: the n-th resend

    def unacked(self, done: Callable[[str], SeqSet]) -> int:
        return sum(seqs.count_missing_from(done(a)) for a, seqs in self.seqs.items())


def seqs_of(points: Iterable[Telemetry]) -> dict[str, SeqSet]:
    out: dict[str, SeqSet] = {}
    for p in points:
        out.setdefault(p.asset_id, SeqSet()).add(p.seq)
    return out


class InFlight:
    def __init__(self) -> None:
        self._sent: deque[Sent] = deque()
        self.seqs: dict[str, SeqSet] = {}  # union of every batch's seqs

    def __len__(self) -> int:
        return len(self._sent)

    def add(self, at: float, points: Iterable[Telemetry], spans: tuple[Span, ...], attempt: int) -> Sent:
        sent = Sent(at, seqs_of(points), spans, attempt)
        for asset_id, seqs in sent.seqs.items():
            self.seqs.setdefault(asset_id, SeqSet()).update(seqs)
        self._sent.append(sent)
        return sent

    def retire_acked(self, done: Callable[[str], SeqSet]) -> None:
        """Forget the oldest batches while they are fully acknowledged (acks come roughly in order)."""
        while self._sent and self._sent[0].unacked(done) == 0:
            self._forget(self._sent.popleft())

    def due(self, now: float, after_s: float) -> list[Sent]:
        """Take out every batch sent at or before now - after_s (its seqs leave the union)."""
        out = []
        while self._sent and self._sent[0].at + after_s <= now:
            sent = self._sent.popleft()
            self._forget(sent)
            out.append(sent)
        return out

    def next_due(self, after_s: float) -> float:
        return self._sent[0].at + after_s if self._sent else math.inf

    def _forget(self, sent: Sent) -> None:
        for asset_id, seqs in sent.seqs.items():
            union = self.seqs[asset_id]
            for first, last in seqs.ranges():
                union.remove(first, last)


@attrs.define
class Pacer:
    rate: float  # points per second
    max_batch: int
    next_at: float = -math.inf

    @property
    def batch(self) -> int:
        return max(1, min(self.max_batch, int(self.rate * BACKFILL_PERIOD_S)))

    def ready(self, now: float) -> bool:
        return now >= self.next_at

    def sent(self, n: int, now: float) -> None:
        self.next_at = max(self.next_at, now) + n / self.rate
