"""Telemetry acknowledgements (pure): which agent sessions to tell which seqs are stored."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from der_actors.messages import SeqRange


def seq_ranges(keys: Iterable[tuple[str, int]]) -> dict[str, list[SeqRange]]:
    """(asset_id, seq) pairs -> per asset, the fewest inclusive ranges covering them, ascending."""
    by_asset: dict[str, list[int]] = defaultdict(list)
    for asset_id, seq in keys:
        by_asset[asset_id].append(seq)
    out: dict[str, list[SeqRange]] = {}
    for asset_id, seqs in by_asset.items():
        seqs.sort()
        ranges = []
        first = last = seqs[0]
        for seq in seqs[1:]:
            if seq <= last + 1:
                last = max(last, seq)
                continue
            ranges.append(SeqRange(asset_id, first, last))
            first = last = seq
        ranges.append(SeqRange(asset_id, first, last))
        out[asset_id] = ranges
    return out


def merge_ranges(ranges: Iterable[SeqRange]) -> tuple[SeqRange, ...]:
    """Ranges -> the fewest covering the same seqs, by asset in first-seen order, each ascending."""
    by_asset: dict[str, list[SeqRange]] = {}
    for r in ranges:
        by_asset.setdefault(r.asset_id, []).append(r)
    out: list[SeqRange] = []
    for asset_id, rs in by_asset.items():
        rs.sort(key=lambda r: r.first_seq)
        first, last = rs[0].first_seq, rs[0].last_seq
        for r in rs[1:]:
            if r.first_seq <= last + 1:
                last = max(last, r.last_seq)
                continue
            out.append(SeqRange(asset_id, first, last))
            first, last = r.first_seq, r.last_seq
        out.append(SeqRange(asset_id, first, last))
    return tuple(out)
