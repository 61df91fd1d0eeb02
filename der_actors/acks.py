"""Telemetry acknowledgements (pure): which agent sessions to tell which seqs are stored.

Both functions run on the trio thread for every committed batch and every ack sent, so they keep
plain ints per asset and build `SeqRange`s only for the result (measured under ingest load: the
generic tuple-merging version was 8% of the headend's trio thread).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from der_actors.messages import SeqRange


def seq_ranges(keys: Iterable[Sequence]) -> dict[str, list[SeqRange]]:
    """(asset_id, seq) pairs, or any sequences that begin with them (the store's `PointRow`s: no pair
    is built per point) -> per asset, the fewest inclusive ranges covering them, ascending."""
    by_asset: dict[str, list[int]] = {}
    for key in keys:
        asset_id = key[0]
        seq = key[1]
        seqs = by_asset.get(asset_id)
        if seqs is None:
            by_asset[asset_id] = [seq]
        else:
            seqs.append(seq)
    out = {}
    for asset_id, seqs in by_asset.items():
        if len(seqs) == 1:
            out[asset_id] = [SeqRange(asset_id, seqs[0], seqs[0])]
            continue
        seqs.sort()
        out[asset_id] = [SeqRange(asset_id, f, l) for f, l in _joined([(s, s) for s in seqs])]
    return out


def merge_ranges(ranges: Iterable[SeqRange]) -> tuple[SeqRange, ...]:
    """Ranges -> the fewest covering the same seqs, by asset in first-seen order, each ascending."""
    by_asset: dict[str, list[SeqRange]] = {}
    repeated = False
    for r in ranges:
        same = by_asset.get(r.asset_id)
        if same is None:
            by_asset[r.asset_id] = [r]
        else:
            same.append(r)
            repeated = True
    if not repeated:  # the common case: one range per asset, nothing to join
        return tuple(rs[0] for rs in by_asset.values())
    out: list[SeqRange] = []
    for asset_id, rs in by_asset.items():
        if len(rs) == 1:
            out.append(rs[0])
            continue
        spans = sorted((r.first_seq, r.last_seq) for r in rs)
        out.extend(SeqRange(asset_id, f, l) for f, l in _joined(spans))
    return tuple(out)


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
