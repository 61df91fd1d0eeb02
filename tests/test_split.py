"""Site split: worked examples and properties (pure, sync)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from der_actors.messages import Allocation
from der_actors.split import SplitMember, SplitResult, split_site


def kw(x: float) -> int:
    return round(x * 1000)


def allocs(result: SplitResult) -> dict[str, float]:
    return {a.asset_id: a.mw for a in result.allocations}


# --- worked examples -------------------------------------------------------------------------


def test_proportional_to_rating_in_positive_direction() -> None:
    members = [SplitMember("a", 2.0, -2.0), SplitMember("b", 1.0, -4.0), SplitMember("c", 1.0, 0.0)]
    result = split_site(2.0, members)
    assert result == SplitResult(
        requested_mw=2.0,
        allocations=(Allocation("a", 1.0), Allocation("b", 0.5), Allocation("c", 0.5)),
        placed_mw=2.0,
        shortfall_mw=0.0,
    )


def test_negative_direction_uses_min_mw_as_rating() -> None:
    members = [SplitMember("a", 2.0, -2.0), SplitMember("b", 1.0, -4.0), SplitMember("c", 1.0, 0.0)]
    result = split_site(-3.0, members)
    assert allocs(result) == {"a": -1.0, "b": -2.0, "c": 0.0}
    assert result.placed_mw == -3.0
    assert result.shortfall_mw == 0.0


def test_over_capacity_clamps_every_asset_and_reports_shortfall() -> None:
    members = [SplitMember("a", 2.0, -2.0), SplitMember("b", 1.0, -1.0)]
    result = split_site(5.0, members)
    assert allocs(result) == {"a": 2.0, "b": 1.0}
    assert result.placed_mw == 3.0
    assert result.shortfall_mw == 2.0
    result = split_site(-3.5, members)
    assert allocs(result) == {"a": -2.0, "b": -1.0}
    assert (result.placed_mw, result.shortfall_mw) == (-3.0, -0.5)


def test_clamped_asset_remainder_is_shared_again() -> None:
    # "a" has a 1.5 kW rating but only 1 whole kW of limit: its proportional share (~1.4978 kW)
    # is clamped to 1 kW and the rest goes to "b".
    members = [SplitMember("a", 0.0015, 0.0), SplitMember("b", 1.0, 0.0)]
    result = split_site(1.0, members)
    assert allocs(result) == {"a": 0.001, "b": 0.999}
    assert result.shortfall_mw == 0.0


def test_offline_member_gets_no_allocation_and_no_share() -> None:
    members = [
        SplitMember("a", 1.0, -1.0),
        SplitMember("b", 5.0, -5.0, online=False),
        SplitMember("c", 1.0, -1.0),
    ]
    result = split_site(1.5, members)
    assert [a.asset_id for a in result.allocations] == ["a", "c"]
    assert allocs(result) == {"a": 0.75, "c": 0.75}


def test_largest_remainder_ties_broken_by_asset_id() -> None:
    members = [SplitMember(i, 1.0, -1.0) for i in ("c", "a", "b")]
    result = split_site(0.001, members)
    assert allocs(result) == {"a": 0.001, "b": 0.0, "c": 0.0}
    result = split_site(-0.002, members)
    assert allocs(result) == {"a": -0.001, "b": -0.001, "c": 0.0}
    result = split_site(1.0, members)
    assert allocs(result) == {"a": 0.334, "b": 0.333, "c": 0.333}


def test_largest_remainder_prefers_the_bigger_remainder() -> None:
    # shares 0.6 kW and 0.4 kW of a 1 kW request: the bigger remainder wins despite its id
    members = [SplitMember("a", 2.0, 0.0), SplitMember("z", 3.0, 0.0)]
    assert allocs(split_site(0.001, members)) == {"a": 0.0, "z": 0.001}


def test_zero_total_gives_all_zeros() -> None:
    members = [SplitMember("a", 1.0, -1.0), SplitMember("b", 0.0, 0.0)]
    result = split_site(0.0, members)
    assert result == SplitResult(0.0, (Allocation("a", 0.0), Allocation("b", 0.0)), 0.0, 0.0)
    assert all(math.copysign(1, a.mw) == 1 for a in split_site(-0.0, members).allocations)


def test_all_ratings_zero_places_nothing() -> None:
    members = [SplitMember("a", 0.0, 0.0), SplitMember("b", 0.0, -1.0)]
    result = split_site(2.0, members)
    assert allocs(result) == {"a": 0.0, "b": 0.0}
    assert (result.placed_mw, result.shortfall_mw) == (0.0, 2.0)


def test_no_online_members_everything_is_shortfall() -> None:
    result = split_site(-1.25, [SplitMember("a", 1.0, -1.0, online=False)])
    assert result == SplitResult(-1.25, (), 0.0, -1.25)
    assert split_site(1.0, []) == SplitResult(1.0, (), 0.0, 1.0)


def test_request_rounded_to_kw_and_floats_clean() -> None:
    members = [SplitMember("a", 1.0, -1.0), SplitMember("b", 2.0, -2.0)]
    result = split_site(0.1 + 0.2, members)  # 0.30000000000000004
    assert result.requested_mw == 0.3
    assert allocs(result) == {"a": 0.1, "b": 0.2}
    assert result.placed_mw == 0.3


def test_limit_with_sub_kw_part_is_never_exceeded() -> None:
    result = split_site(10.0, [SplitMember("a", 1.2345, 0.0)])
    assert allocs(result) == {"a": 1.234}
    assert result.allocations[0].mw <= 1.2345
    # a limit whose float is just below its decimal value (4.35 -> 4.3499999...) still gives 4.35
    assert allocs(split_site(4.35, [SplitMember("a", 4.35, 0.0)])) == {"a": 4.35}


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 1e308])
def test_non_finite_total_rejected(bad: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        split_site(bad, [SplitMember("a", 1.0, -1.0)])


@pytest.mark.parametrize(
    "member",
    [SplitMember("a", -1.0, 0.0), SplitMember("a", 1.0, 0.5), SplitMember("a", math.nan, 0.0)],
)
def test_invalid_limits_rejected(member: SplitMember) -> None:
    with pytest.raises(ValueError, match="a: m"):
        split_site(1.0, [member])


def test_duplicate_asset_ids_rejected() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        split_site(1.0, [SplitMember("a", 1.0, -1.0), SplitMember("a", 1.0, -1.0)])


# --- properties ------------------------------------------------------------------------------

limits = st.floats(min_value=0.0, max_value=50.0, allow_nan=False)
kw_limits = st.integers(min_value=0, max_value=50_000).map(lambda k: k / 1000)


@st.composite
def member_lists(draw: st.DrawFn, limit: st.SearchStrategy[float] = limits) -> list[SplitMember]:
    ids = draw(st.lists(st.text("abcdef0123", min_size=1, max_size=4), max_size=8, unique=True))
    return [
        SplitMember(i, draw(limit), -draw(limit), draw(st.booleans() | st.just(True))) for i in ids
    ]


totals = st.floats(min_value=-300.0, max_value=300.0, allow_nan=False)


def capacity(members: list[SplitMember], total: float) -> float:
    return sum(m.max_mw if total >= 0 else -m.min_mw for m in members if m.online)


@given(member_lists(), totals)
def test_accounting_is_exact_in_kw(members: list[SplitMember], total: float) -> None:
    result = split_site(total, members)
    assert sum(kw(a.mw) for a in result.allocations) == kw(result.placed_mw)
    assert kw(result.placed_mw) + kw(result.shortfall_mw) == kw(result.requested_mw)
    assert abs(result.requested_mw - total) <= 0.0005 + 1e-12
    for x in (result.requested_mw, result.placed_mw, result.shortfall_mw, *allocs(result).values()):
        assert x == round(x, 3)
    if all(a.mw == 0 for a in result.allocations):
        assert result.placed_mw == 0.0


@given(member_lists(), totals)
def test_allocations_within_limits_and_with_the_sign_of_the_request(
    members: list[SplitMember], total: float
) -> None:
    result = split_site(total, members)
    by_id = {m.asset_id: m for m in members}
    online_ids = sorted(m.asset_id for m in members if m.online)
    assert [a.asset_id for a in result.allocations] == online_ids
    for a in result.allocations:
        assert by_id[a.asset_id].min_mw <= a.mw <= by_id[a.asset_id].max_mw
        assert a.mw == 0 or (a.mw > 0) == (result.requested_mw > 0)
    assert result.shortfall_mw == 0 or (result.shortfall_mw > 0) == (result.requested_mw > 0)


@given(member_lists(), totals, st.randoms(use_true_random=False))
def test_deterministic_and_independent_of_member_order(
    members: list[SplitMember], total: float, rnd: object
) -> None:
    shuffled = list(members)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert split_site(total, members) == split_site(total, members) == split_site(total, shuffled)


@given(member_lists(kw_limits), totals)
def test_proportional_when_nothing_clamps(members: list[SplitMember], total: float) -> None:
    result = split_site(total, members)
    ratings = {m.asset_id: (m.max_mw if total >= 0 else -m.min_mw) for m in members if m.online}
    rating_sum = sum(ratings.values())
    if rating_sum == 0 or abs(result.requested_mw) > rating_sum:
        return  # every asset is at its limit
    for a in result.allocations:
        assert abs(a.mw - result.requested_mw * ratings[a.asset_id] / rating_sum) < 0.001 + 1e-9


@given(member_lists(kw_limits), totals)
def test_no_shortfall_within_capacity_on_the_kw_grid(
    members: list[SplitMember], total: float
) -> None:
    result = split_site(total, members)
    if abs(result.requested_mw) <= capacity(members, total) + 1e-9:
        assert result.shortfall_mw == 0.0
        assert result.placed_mw == result.requested_mw
    else:
        assert abs(result.placed_mw) == pytest.approx(capacity(members, total), abs=1e-9)


@settings(max_examples=200)
@given(member_lists(), totals)
def test_shortfall_within_capacity_is_only_sub_kw_rounding(
    members: list[SplitMember], total: float
) -> None:
    # Off the kW grid, each limit loses its sub-kW part and the request may round up by 0.5 kW.
    result = split_site(total, members)
    if abs(total) <= capacity(members, total):
        online = sum(m.online for m in members)
        assert abs(kw(result.shortfall_mw)) <= online + 1
