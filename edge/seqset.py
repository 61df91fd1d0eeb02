"""A set of ints kept as sorted, disjoint, inclusive ranges (pure).

Telemetry seqs come in long consecutive runs, so the seqs of a spool segment, the seqs the headend
has acknowledged or the seqs in flight are each a handful of ranges however many points they hold.
Adjacent ranges are always merged, so a consecutive run is exactly one range.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator

__all__ = ["SeqSet"]


class SeqSet:
    __slots__ = ("_firsts", "_lasts")

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self._firsts: list[int] = []
        self._lasts: list[int] = []
        for first, last in ranges:
            self.add(first, last)

    # --- changes ---------------------------------------------------------------------------------

    def add(self, first: int, last: int | None = None) -> int:
        """Add first..last (inclusive); returns how many of them were not in the set yet."""
        last = first if last is None else last
        if last < first:
            return 0
        firsts, lasts = self._firsts, self._lasts
        if not lasts or first > lasts[-1] + 1:  # past the end, with a gap
            firsts.append(first)
            lasts.append(last)
            return last - first + 1
        if first == lasts[-1] + 1:  # the common case: the next seqs of the last run
            lasts[-1] = last
            return last - first + 1
        i = bisect_left(lasts, first - 1)  # first range that touches or follows `first`
        j = bisect_right(firsts, last + 1)  # ranges before j start at or before `last + 1`
        if i == j:
            firsts.insert(i, first)
            lasts.insert(i, last)
            return last - first + 1
        covered = sum(max(0, min(lasts[k], last) - max(firsts[k], first) + 1) for k in range(i, j))
        merged_first, merged_last = min(firsts[i], first), max(lasts[j - 1], last)
        firsts[i:j] = [merged_first]
        lasts[i:j] = [merged_last]
        return (last - first + 1) - covered

    def update(self, other: SeqSet) -> int:
        return sum(self.add(f, l) for f, l in other.ranges())

    def remove(self, first: int, last: int | None = None) -> None:
        """Remove first..last (inclusive); seqs not in the set are ignored."""
        last = first if last is None else last
        if last < first:
            return
        firsts, lasts = self._firsts, self._lasts
        i = bisect_left(lasts, first)  # first range that ends at or after `first`
        j = bisect_right(firsts, last)  # ranges before j start at or before `last`
        if i >= j:
            return
        new_firsts, new_lasts = [], []
        if firsts[i] < first:
            new_firsts.append(firsts[i])
            new_lasts.append(first - 1)
        if lasts[j - 1] > last:
            new_firsts.append(last + 1)
            new_lasts.append(lasts[j - 1])
        firsts[i:j] = new_firsts
        lasts[i:j] = new_lasts

    def discard_below(self, floor: int) -> None:
        """Forget every seq < floor."""
        if self._firsts and self._firsts[0] < floor:
            self.remove(self._firsts[0], floor - 1)

    # --- queries ---------------------------------------------------------------------------------

    def __contains__(self, seq: object) -> bool:
        if not isinstance(seq, int):
            return False
        i = bisect_right(self._firsts, seq) - 1
        return i >= 0 and self._lasts[i] >= seq

    def covers(self, first: int, last: int) -> bool:
        """Is every seq of first..last in the set? (An empty range is covered.)"""
        if last < first:
            return True
        i = bisect_right(self._firsts, first) - 1
        return i >= 0 and self._lasts[i] >= last

    def issubset(self, other: SeqSet) -> bool:
        return all(other.covers(f, l) for f, l in self.ranges())

    def count_missing_from(self, other: SeqSet) -> int:
        """How many seqs of this set are not in `other`."""
        missing = 0
        of, ol = other._firsts, other._lasts
        for first, last in self.ranges():
            inside = 0
            k = bisect_left(ol, first)
            while k < len(of) and of[k] <= last:
                inside += min(ol[k], last) - max(of[k], first) + 1
                k += 1
            missing += last - first + 1 - inside
        return missing

    def difference(self, other: SeqSet) -> SeqSet:
        out = self.copy()
        for first, last in other.ranges():
            out.remove(first, last)
        return out

    def ranges(self) -> Iterator[tuple[int, int]]:
        return zip(self._firsts, self._lasts)

    def copy(self) -> SeqSet:
        out = SeqSet()
        out._firsts = self._firsts.copy()
        out._lasts = self._lasts.copy()
        return out

    @property
    def min(self) -> int | None:
        return self._firsts[0] if self._firsts else None

    @property
    def max(self) -> int | None:
        return self._lasts[-1] if self._lasts else None

    def __len__(self) -> int:
        return sum(l - f + 1 for f, l in self.ranges())

    def __bool__(self) -> bool:
        return bool(self._firsts)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SeqSet):
            return NotImplemented
        return self._firsts == other._firsts and self._lasts == other._lasts

    def __repr__(self) -> str:
        return "SeqSet(" + repr(list(self.ranges())) + ")"
