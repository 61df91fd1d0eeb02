"""Telemetry acknowledgements (pure): which agent sessions to tell which seqs are stored."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from der_actors.messages import SeqRange


def seq_ranges(keys: Iterable[tuple[str, int]]) -> dict[str, list[SeqRange]]:
    """(asset_id, seq) pairs -> per asset, the fewest inclusive ranges covering them, ascending."""
    out: dict[str, list[SeqRange]] = defaultdict(list)
    for asset_id, first, last in _merged((a, s, s) for a, s in keys):
        out[asset_id].append(SeqRange(asset_id, first, last))
    return dict(out)


def merge_ranges(ranges: Iterable[SeqRange]) -> tuple[SeqRange, ...]:
    """Ranges -> the fewest covering the same seqs, by asset in first-seen order, each ascending."""
    return tuple(SeqRange(*r) for r in _merged((r.asset_id, r.first_seq, r.last_seq) for r in ranges))


def _merged(triples: Iterable[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    """(asset_id, first, last) -> overlapping and adjacent ones joined, by asset in first-seen order."""
    by_asset: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for asset_id, first, last in triples:
        by_asset[asset_id].append((first, last))
    out = []
    for asset_id, spans in by_asset.items():
        spans.sort()
        first, last = spans[0]
        for f, l in spans[1:]:
            if f <= last + 1:
                last = max(last, l)
                continue
            out.append((asset_id, first, last))
            first, last = f, l
        out.append((asset_id, first, last))
    return out
