"""Site split: share one site setpoint across the site's online assets (pure, deterministic).

The rule: the site total is shared in proportion to each online asset's power rating in the
requested direction (`max_mw` for +, `-min_mw` for -). An asset whose share exceeds its limit is
clamped and the remainder is shared again among the others, until everything is placed or every
asset is at its limit; what cannot be placed is the shortfall.

Resolution is 0.001 MW (1 kW) and all bookkeeping is in integer kW, so sums are exact:

1. the request is rounded to whole kW (`requested_mw` is that rounded value);
2. each limit becomes the largest whole kW whose float value does not exceed the limit;
3. the placeable total is min(|request|, sum of limits); the exact proportional shares (rational
   arithmetic, with clamping and redistribution) are then rounded with largest remainder, ties
   broken by `asset_id`. A share is never rounded past its limit, because a limit is a whole
   number of kW and only shares with a fractional part are rounded up.

"Equal shares when all ratings are zero": an asset with zero rating is also at its limit (0), so
equal shares of nothing place nothing; the whole request is then shortfall. More generally a
rating below 1 kW rounds to a limit of 0 kW and the asset takes no share.

Members are sorted by `asset_id` first, so the result does not depend on their input order.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from fractions import Fraction

import attrs

from der_actors.messages import Allocation


@attrs.frozen
class SplitMember:
    asset_id: str
    max_mw: float  # >= 0
    min_mw: float  # <= 0
    online: bool = True


@attrs.frozen
class SplitResult:
    requested_mw: float  # the request, rounded to 0.001 MW
    allocations: tuple[Allocation, ...]  # one per ONLINE member, sorted by asset_id
    placed_mw: float  # sum of allocations (exact in kW)
    shortfall_mw: float  # requested - placed (exact in kW; 0.0 when fully placed)


def split_site(total_mw: float, members: Iterable[SplitMember]) -> SplitResult:
    """Share `total_mw` across the online `members`; see the module docstring for the rule.

    Raises ValueError for a non-finite total, invalid limits or duplicate asset ids.
    """
    if not math.isfinite(total_mw) or not math.isfinite(total_mw * 1000):
        raise ValueError(f"total_mw must be a finite number, got {total_mw!r}")
    ordered = sorted(members, key=lambda m: m.asset_id)
    _validate(ordered)
    online = [m for m in ordered if m.online]

    target_kw = int(round(total_mw * 1000))
    sign = 1 if target_kw >= 0 else -1
    ratings = [Fraction(m.max_mw if sign > 0 else -m.min_mw) for m in online]
    caps_kw = [_limit_kw(float(r)) for r in ratings]

    placed_kw = min(abs(target_kw), sum(caps_kw))
    shares = _water_fill(placed_kw, ratings, caps_kw)
    alloc_kw = _largest_remainder(placed_kw, shares, [m.asset_id for m in online])

    return SplitResult(
        requested_mw=_mw(target_kw),
        allocations=tuple(
            Allocation(asset_id=m.asset_id, mw=_mw(sign * k)) for m, k in zip(online, alloc_kw)
        ),
        placed_mw=_mw(sign * placed_kw),
        shortfall_mw=_mw(target_kw - sign * placed_kw),
    )


def _validate(members: list[SplitMember]) -> None:
    seen: set[str] = set()
    for m in members:
        if m.asset_id in seen:
            raise ValueError(f"duplicate asset_id {m.asset_id!r} in split")
        seen.add(m.asset_id)
        if not (math.isfinite(m.max_mw) and m.max_mw >= 0):
            raise ValueError(f"{m.asset_id}: max_mw must be finite and >= 0, got {m.max_mw!r}")
        if not (math.isfinite(m.min_mw) and m.min_mw <= 0):
            raise ValueError(f"{m.asset_id}: min_mw must be finite and <= 0, got {m.min_mw!r}")


def _limit_kw(limit_mw: float) -> int:
    """The largest whole kW k with k/1000 <= limit_mw as floats: a share never rounds past it."""
    k = int(round(limit_mw * 1000))
    while k > 0 and k / 1000 > limit_mw:
        k -= 1
    while (k + 1) / 1000 <= limit_mw:
        k += 1
    return k


def _water_fill(total_kw: int, ratings: list[Fraction], caps_kw: list[int]) -> list[Fraction]:
    """Exact shares: proportional to rating, clamped at caps, remainder re-shared. Sum == total_kw.

    Requires total_kw <= sum(caps_kw). Clamping every over-limit asset at once per round gives the
    same result as clamping them one by one (the water-filling solution is unique).
    """
    shares = [Fraction(0)] * len(ratings)
    active = [i for i, (r, c) in enumerate(zip(ratings, caps_kw)) if r > 0 and c > 0]
    remaining = Fraction(total_kw)
    while remaining > 0 and active:
        rating_sum = sum(ratings[i] for i in active)
        over = [i for i in active if remaining * ratings[i] / rating_sum >= caps_kw[i]]
        if not over:
            for i in active:
                shares[i] = remaining * ratings[i] / rating_sum
            break
        for i in over:
            shares[i] = Fraction(caps_kw[i])
            remaining -= caps_kw[i]
        active = [i for i in active if i not in over]
    return shares


def _largest_remainder(total_kw: int, shares: list[Fraction], ids: list[str]) -> list[int]:
    """Round exact shares to whole kW summing to total_kw; bigger remainder first, then asset_id."""
    floors = [math.floor(s) for s in shares]
    leftover = total_kw - sum(floors)
    order = sorted(range(len(shares)), key=lambda i: (-(shares[i] - floors[i]), ids[i]))
    for i in order[:leftover]:
        floors[i] += 1
    return floors


def _mw(kw: int) -> float:
    return kw / 1000 if kw else 0.0
