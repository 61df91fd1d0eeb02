"""Telemetry acknowledgements (pure): which seqs of which assets one agent session is told are stored.

This runs on the trio thread for every committed point, so seqs stay plain ints, per asset, until a
TelemetryAck is built: a `SeqRange` is made once per asset per ack, not per commit. (Measured under
ingest load: ranges made per commit and merged per ack were ~12 % of the headend's trio thread; the
generic tuple-merging version before that, 8 % more.)
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence

from der_actors.messages import SeqRange

# An asset's pending spans are joined once they pass this (an agent not reading its stream keeps
# getting points stored but no acks sent): what stays is one span per gap in its seqs.
SPANS_JOINED_AT = 64


class AckSlots:
    """When a session's next ack goes: in a slot of its own grid (every `interval_s`, at a phase
    from the gateway id, or the agent id of a single-asset agent: stable across reconnects and test
    runs), and not in the slot of the last ack.

    One commit acknowledges points of hundreds of gateways. Acked as soon as committed, their acks
    went in step: under live load at 20,000 points/s, scheduler rounds of 270 to 780 stream-writer
    steps (20 to 64 ms each) sent a commit's acks, and a dispatch in flight waited them out. On grids
    of spread phases they go a few at a time.
    """

    def __init__(self, gateway_id: str, interval_s: float) -> None:
        self.interval_s = interval_s
        digest = hashlib.blake2b(gateway_id.encode(), digest_size=8).digest()  # even for similar ids (CRC-32 is not)
        self.phase_s = int.from_bytes(digest, "big") / 2**64 * interval_s

    def next(self, now: float, last_ack_at: float) -> float:
        """The first slot at or after `now`, and at least `interval_s` after `last_ack_at`."""
        earliest = max(now, last_ack_at + self.interval_s)
        # the slot the last ack went in plus one interval is a slot itself, not the one after it
        k = math.ceil((earliest - self.phase_s) / self.interval_s - 1e-9)
        return self.phase_s + k * self.interval_s


def seqs_by_asset(keys: Iterable[Sequence]) -> dict[str, list[int]]:
    """(asset_id, seq) pairs, or any sequences that begin with them (the store's `PointRow`s: no pair
    is built per point) -> each asset's seqs, in the order given."""
    by_asset: dict[str, list[int]] = {}
    for key in keys:
        asset_id = key[0]
        seqs = by_asset.get(asset_id)
        if seqs is None:
            by_asset[asset_id] = [key[1]]
        else:
            seqs.append(key[1])
    return by_asset


class PendingAcks:
    """One session's stored seqs not yet acknowledged, per asset as (first, last) spans of ints.

    An asset's newest span, the one that grows in place, is two ints in two dicts; older spans (a
    gap before the newest: rare) are tuples in `_older`. Dicts of strs and ints are not objects the
    cyclic GC tracks, where the (first, last) tuple made for every point was one more young object
    for each collection to walk (10,000 of them, one an asset, in a gen-0 of the live dispatch
    pass)."""

    __slots__ = ("_first", "_last", "_older", "points")

    def __init__(self) -> None:
        self.points = 0  # seqs added since the last take (repeats counted)
        self._first: dict[str, int] = {}
        self._last: dict[str, int] = {}
        self._older: dict[str, list[tuple[int, int]]] = {}

    def add(self, asset_id: str, seqs: list[int]) -> None:
        """These seqs of the asset are stored (in any order; repeats are harmless)."""
        if not seqs:
            return
        self.points += len(seqs)
        first, last = self._first.get(asset_id), self._last.get(asset_id)
        for seq in seqs:
            if last is not None and last + 1 == seq:  # the common case: the next seq in order
                last = seq
                continue
            if last is not None:
                self._older.setdefault(asset_id, []).append((first, last))
            first = last = seq
        older = self._older.get(asset_id)
        if older is not None and len(older) >= SPANS_JOINED_AT:
            older.append((first, last))
            older[:] = _joined(sorted(older))
            first, last = older.pop()
            if not older:
                del self._older[asset_id]
        self._first[asset_id], self._last[asset_id] = first, last

    def take(self) -> list[SeqRange]:
        """The fewest ranges covering every pending seq (by asset in first-seen order, each
        ascending), and nothing pending after."""
        out: list[SeqRange] = []
        last_of, older = self._last, self._older
        for asset_id, first in self._first.items():
            spans = older.get(asset_id)
            if spans:
                spans.append((first, last_of[asset_id]))
                out.extend(SeqRange(asset_id, f, l) for f, l in _joined(sorted(spans)))
            else:
                out.append(SeqRange(asset_id, first, last_of[asset_id]))
        self._first, self._last, self._older = {}, {}, {}
        self.points = 0
        return out


def _joined(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted (first, last) spans -> overlapping and adjacent ones joined."""
    out = []
    first, last = spans[0]
    for f, l in spans[1:]:
        if f <= last + 1:
            if l > last:
                last = l
            continue
        out.append((first, last))
        first, last = f, l
    out.append((first, last))
    return out
