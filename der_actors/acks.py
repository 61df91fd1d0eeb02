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
