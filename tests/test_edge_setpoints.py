"""Setpoint routing, wording and the outcome cache at the edge (pure, sync)."""

from __future__ import annotations

import math

import pytest

from der_actors.messages import AckState, Allocation, PvDetails, Setpoint, SetpointAck
from der_actors.model import Asset, AssetType
from der_actors.physics import SimState
from der_actors.split import SplitMember
from edge.asset import telemetry_setpoint
from edge.setpoints import (
    ApplySplit,
    ApplyToAsset,
    OutcomeCache,
    Reject,
    applied_message,
    route_setpoint,
    split_message,
)

SITE = "site-1"
MEMBERS = (
    SplitMember("a", 2.0, -2.0),
    SplitMember("b", 1.0, -1.0),
    SplitMember("c", 4.0, -4.0, online=False),
)


def route(sp: Setpoint, primary: str | None = None):
    return route_setpoint(sp, site_id=SITE, primary_asset_id=primary, members=MEMBERS)


def sp(asset_id: str = "", site_id: str = "", mw: float = 1.0, duration_s: float = 0.0, sid: str = "x"):
    return Setpoint(sid, asset_id=asset_id, site_id=site_id, mw=mw, duration_s=duration_s)


def test_asset_id_wins_over_site_id() -> None:
    assert route(sp("b", SITE, 0.5, 30)) == ApplyToAsset("b", 0.5, 30)
    assert route(sp("b", "another-site", 0.5)) == ApplyToAsset("b", 0.5, 0.0)
    assert route(sp("c")) == ApplyToAsset("c", 1.0, 0.0)  # offline only matters for a split


def test_unknown_asset_and_site_are_rejected() -> None:
    assert route(sp("z")) == Reject("unknown asset z")
    assert route(sp("", "other")) == Reject("unknown site other: this agent serves site site-1")


def test_site_setpoint_splits_across_online_members_only() -> None:
    result = route(sp("", SITE, 3.0, 60))
    assert isinstance(result, ApplySplit)
    assert result.duration_s == 60
    assert result.split.allocations == (Allocation("a", 2.0), Allocation("b", 1.0))
    assert result.split.shortfall_mw == 0.0
    nobody = route_setpoint(sp("", SITE), site_id=SITE, primary_asset_id=None,
                            members=[SplitMember("c", 1.0, -1.0, online=False)])
    assert nobody == Reject("site site-1 has no online assets")


def test_unaddressed_setpoint_goes_to_the_legacy_primary_or_is_refused_by_a_gateway() -> None:
    assert route(sp(), primary="a") == ApplyToAsset("a", 1.0, 0.0)
    assert route(sp()) == Reject("setpoint names neither asset_id nor site_id; a gateway needs one of them")


@pytest.mark.parametrize(
    ("setpoint", "reason"),
    [
        (sp("a", mw=math.nan), "mw must be a finite number, got nan"),
        (sp("a", mw=math.inf), "mw must be a finite number, got inf"),
        (sp("a", duration_s=-1.0), "duration_s must be finite and >= 0, got -1.0"),
        (sp("a", duration_s=math.nan), "duration_s must be finite and >= 0, got nan"),
        (sp("a", sid=""), "setpoint_id is required"),
    ],
)
def test_invalid_setpoints_are_rejected_before_routing(setpoint: Setpoint, reason: str) -> None:
    assert route(setpoint) == Reject(reason)


def test_messages() -> None:
    assert applied_message(3.0, 2.0, True) == "applied 2.000 MW (clamped from 3.000)"
    assert applied_message(-1.25, -1.25, False) == "applied -1.250 MW"
    result = route(sp("", SITE, 5.0))
    assert isinstance(result, ApplySplit)
    applied = result.split.allocations
    assert split_message(result.split, applied, ()) == (
        "applied 3.000 MW across 2 assets (shortfall 2.000 MW of 5.000)"
    )
    assert split_message(result.split, applied[:1], ("asset b failed",)) == (
        "applied 2.000 MW across 1 asset (shortfall 2.000 MW of 5.000); failed: asset b failed"
    )


def test_outcome_cache_is_a_bounded_lru_of_final_outcomes() -> None:
    cache = OutcomeCache(capacity=2)
    acks = [SetpointAck(f"s{i}", AckState.APPLIED, f"m{i}") for i in range(3)]
    cache.put(acks[0])
    cache.put(acks[1])
    assert cache.get("s0") == acks[0]  # s0 is now the most recent
    cache.put(acks[2])  # evicts s1, the least recently used
    assert (cache.get("s0"), cache.get("s1"), cache.get("s2")) == (acks[0], None, acks[2])
    assert len(cache) == 2
    with pytest.raises(ValueError):
        cache.put(SetpointAck("s3", AckState.RECEIVED))


def test_telemetry_setpoint_reports_the_effective_target() -> None:
    pv = Asset(id="p", name="pv", site_id=SITE, type=AssetType.PV, max_mw=3.0)
    free = SimState(mw=1.5, details=PvDetails(irradiance_wm2=500.0, available_mw=1.5))
    assert telemetry_setpoint(pv, free) == 1.5  # running free: the available power
    capped = SimState(mw=1.0, setpoint_mw=1.0, details=PvDetails(irradiance_wm2=500.0, available_mw=1.5))
    assert telemetry_setpoint(pv, capped) == 1.0
    ev = Asset(id="e", name="ev", site_id=SITE, type=AssetType.EV_CHARGER, min_mw=-0.4)
    assert telemetry_setpoint(ev, SimState(mw=-0.2)) == -0.2  # running free: the demand
