"""Per-type simulators: exact BESS numbers, profile bounds, setpoints, determinism (pure, sync)."""

from __future__ import annotations

import math
from datetime import datetime, timezone

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from der_actors import physics
from der_actors.messages import BessDetails, EvDetails, PvDetails, WindDetails
from der_actors.model import Asset, AssetType
from der_actors.physics import apply_setpoint, clamp_setpoint, initial_state, step

SITE = "7e3a446b-8390-41f8-ba6c-946169ccf1e8"
MIDNIGHT = datetime(2026, 6, 1, tzinfo=timezone.utc).timestamp()
NOON = MIDNIGHT + 12 * 3600

BESS = Asset(
    id="c85e9759-8fac-40b8-ae8e-e9f6c796f8bb",
    name="BESS 1",
    site_id=SITE,
    type=AssetType.BESS,
    capacity_mwhr=4.0,
    max_mw=2.0,
    min_mw=-2.0,
    ramp_rate_mw_per_min=1.0,
    efficiency=0.81,
)
PV = Asset(
    id="c4a3b185-95b5-46cd-a458-5f6ebc4dc32d",
    name="PV",
    site_id=SITE,
    type=AssetType.PV,
    max_mw=3.0,
)
WIND = Asset(
    id="0d1f6a59-3c1e-4d0e-9d59-0c1b5d0a7f11",
    name="W",
    site_id=SITE,
    type=AssetType.WIND,
    max_mw=5.0,
)
EV = Asset(
    id="5b1c2f0e-8f6e-4a7e-b7a4-2d6f3f0e9c21",
    name="EV",
    site_id=SITE,
    type=AssetType.EV_CHARGER,
    max_mw=0.0,
    min_mw=-0.6,
)
ALL = [BESS, PV, WIND, EV]

times = st.floats(min_value=MIDNIGHT - 30 * 86400, max_value=MIDNIGHT + 30 * 86400)


# --- BESS ------------------------------------------------------------------------------------


def test_bess_initial_state_is_half_full_holding_zero() -> None:
    s = initial_state(BESS, MIDNIGHT)
    assert (s.mw, s.setpoint_mw, s.setpoint_until) == (0.0, 0.0, None)
    assert (s.energy_mwh, s.status) == (2.0, "ok")
    assert s.details == BessDetails(soc_pct=50.0, energy_mwh=2.0)


def test_bess_ramps_at_most_ramp_rate_per_step() -> None:
    s, applied, clamped = apply_setpoint(BESS, initial_state(BESS, 0.0), 1.5, 0, 0.0)
    assert (applied, clamped) == (1.5, False)
    s = step(BESS, s, 4.0, 4.0)
    assert s.mw == 1.0 * 4.0 / 60.0
    s = step(BESS, s, 64.0, 60.0)
    assert s.mw == pytest.approx(1.0 * 64.0 / 60.0)
    s = step(BESS, s, 124.0, 60.0)
    assert s.mw == 1.5  # reaches the target exactly, no overshoot
    s, _, _ = apply_setpoint(BESS, s, -2.0, 0, 124.0)
    s = step(BESS, s, 154.0, 30.0)
    assert s.mw == 1.0


def test_bess_setpoint_clamped_to_limits() -> None:
    s, applied, clamped = apply_setpoint(BESS, initial_state(BESS, 0.0), 5.0, 0, 0.0)
    assert (applied, clamped, s.setpoint_mw) == (2.0, True, 2.0)
    s = step(BESS, s, 600.0, 600.0)
    assert s.mw == 2.0
    assert apply_setpoint(BESS, s, -7.0, 0, 0.0)[1:] == (-2.0, True)
    assert clamp_setpoint(BESS, 2.5) == (2.0, True)
    assert clamp_setpoint(BESS, -1.0) == (-1.0, False)


def test_bess_energy_integrates_with_one_way_efficiency() -> None:
    # 2 MW discharge for 1 h at round-trip 0.81 drains 2 / sqrt(0.81) = 2/0.9 MWh
    s = attrs.evolve(initial_state(BESS, 0.0), mw=2.0, setpoint_mw=2.0, energy_mwh=4.0)
    s = step(BESS, s, 7200.0, 3600.0)
    assert (s.mw, s.status) == (2.0, "ok")
    assert s.energy_mwh == pytest.approx(4.0 - 2.0 / 0.9, abs=1e-12)
    assert s.details == BessDetails(soc_pct=100.0 * s.energy_mwh / 4.0, energy_mwh=s.energy_mwh)
    # charging 1 MW for 1 h stores 1 * 0.9 MWh
    s = attrs.evolve(s, mw=-1.0, setpoint_mw=-1.0, energy_mwh=1.0)
    s = step(BESS, s, 10800.0, 3600.0)
    assert (s.mw, s.energy_mwh) == (-1.0, pytest.approx(1.9, abs=1e-12))


def test_bess_soc_empty_cuts_power_with_status() -> None:
    s = attrs.evolve(initial_state(BESS, 0.0), mw=2.0, setpoint_mw=2.0, energy_mwh=0.1)
    s = step(BESS, s, 3600.0, 3600.0)
    assert (s.mw, s.energy_mwh, s.status) == (0.0, 0.0, "soc_empty: discharge stopped")
    assert s.details == BessDetails(soc_pct=0.0, energy_mwh=0.0)
    s = step(BESS, s, 3604.0, 4.0)  # still asked to discharge: stays stopped
    assert (s.mw, s.energy_mwh, s.status) == (0.0, 0.0, "soc_empty: discharge stopped")
    s, _, _ = apply_setpoint(BESS, s, -0.5, 0, 3604.0)
    s = step(BESS, s, 3664.0, 60.0)
    assert (s.mw, s.status) == (-0.5, "ok")
    assert s.energy_mwh > 0


def test_bess_soc_full_cuts_power_with_status() -> None:
    s = attrs.evolve(initial_state(BESS, 0.0), mw=-2.0, setpoint_mw=-2.0, energy_mwh=3.99)
    s = step(BESS, s, 60.0, 60.0)
    assert (s.mw, s.energy_mwh, s.status) == (0.0, 4.0, "soc_full: charge stopped")
    assert s.details == BessDetails(soc_pct=100.0, energy_mwh=4.0)


@given(
    st.lists(
        st.tuples(
            st.floats(min_value=-3.0, max_value=3.0),
            st.floats(min_value=0.0, max_value=7200.0),
            st.floats(min_value=0.0, max_value=900.0),
        ),
        max_size=30,
    ),
    st.floats(min_value=0.05, max_value=1.0),
)
def test_bess_energy_never_leaves_bounds(
    moves: list[tuple[float, float, float]], efficiency: float
) -> None:
    asset = attrs.evolve(BESS, efficiency=efficiency, ramp_rate_mw_per_min=5.0)
    now = MIDNIGHT
    s = initial_state(asset, now)
    for setpoint, dt, duration in moves:
        s, applied, _ = apply_setpoint(asset, s, setpoint, duration, now)
        assert asset.min_mw <= applied <= asset.max_mw
        now += dt
        s = step(asset, s, now, dt)
        assert 0.0 <= s.energy_mwh <= 4.0
        assert asset.min_mw <= s.mw <= asset.max_mw
        if s.status.startswith("soc_"):
            assert s.mw == 0.0
            assert s.energy_mwh in (0.0, 4.0)
        assert isinstance(s.details, BessDetails)
        assert 0.0 <= s.details.soc_pct <= 100.0


# --- timed setpoints -------------------------------------------------------------------------


def test_timed_setpoint_reverts_at_exactly_until() -> None:
    s = attrs.evolve(initial_state(BESS, 1000.0), mw=1.0)
    s, _, _ = apply_setpoint(BESS, s, 1.0, 60.0, 1000.0)
    assert (s.setpoint_mw, s.setpoint_until) == (1.0, 1060.0)
    s = step(BESS, s, 1059.5, 59.5)
    assert (s.setpoint_mw, s.mw) == (1.0, 1.0)
    s = step(BESS, s, 1060.0, 0.5)
    assert (s.setpoint_mw, s.setpoint_until) == (0.0, None)
    assert s.mw == pytest.approx(1.0 - 0.5 / 60.0)

    p, _, _ = apply_setpoint(PV, initial_state(PV, NOON), 0.5, 10.0, NOON)
    assert step(PV, p, NOON + 9.999, 9.999).setpoint_mw == 0.5
    p = step(PV, p, NOON + 10.0, 10.0)
    assert (p.setpoint_mw, p.setpoint_until, p.status) == (None, None, "ok")


def test_zero_duration_holds_until_replaced() -> None:
    s, _, _ = apply_setpoint(WIND, initial_state(WIND, 0.0), 1.0, 0.0, 0.0)
    assert s.setpoint_until is None
    assert step(WIND, s, 10 * 86400.0, 4.0).setpoint_mw == 1.0


def test_bad_duration_and_dt_rejected() -> None:
    s = initial_state(BESS, 0.0)
    with pytest.raises(ValueError, match="duration_s"):
        apply_setpoint(BESS, s, 1.0, -1.0, 0.0)
    with pytest.raises(ValueError, match="dt_s"):
        step(BESS, s, 0.0, -4.0)
    with pytest.raises(ValueError, match="nan"):
        apply_setpoint(BESS, s, math.nan, 0.0, 0.0)
    with pytest.raises(ValueError, match="capacity_mwhr"):
        initial_state(attrs.evolve(BESS, capacity_mwhr=None), 0.0)


# --- per-type setpoint ranges ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("asset", "mw", "expected"),
    [
        (PV, -1.0, (0.0, True)),
        (PV, 4.0, (3.0, True)),
        (PV, 1.0, (1.0, False)),
        (WIND, -0.1, (0.0, True)),
        (WIND, 9.0, (5.0, True)),
        (EV, 1.0, (0.0, True)),
        (EV, -1.0, (-0.6, True)),
        (EV, -0.2, (-0.2, False)),
        (BESS, -2.0, (-2.0, False)),
    ],
)
def test_apply_setpoint_clamps_per_type(
    asset: Asset, mw: float, expected: tuple[float, bool]
) -> None:
    s, applied, clamped = apply_setpoint(asset, initial_state(asset, NOON), mw, 0.0, NOON)
    assert (applied, clamped) == expected
    assert s.setpoint_mw == applied


# --- PV --------------------------------------------------------------------------------------


@pytest.mark.parametrize("hour", [0.0, 3.0, 5.99, 6.0, 18.0, 21.0, 23.99])
def test_pv_is_zero_at_night(hour: float) -> None:
    s = initial_state(PV, MIDNIGHT + hour * 3600)
    assert (s.mw, s.status) == (0.0, "night")
    assert s.details == PvDetails(irradiance_wm2=0.0, available_mw=0.0)


@given(times)
def test_pv_within_limits_and_follows_daylight(now: float) -> None:
    s = initial_state(PV, now)
    assert isinstance(s.details, PvDetails)
    clear_sky = PV.max_mw * physics.daylight(now)
    assert (1 - physics.CLOUD_MAX_DIP) * clear_sky - 1e-12 <= s.mw <= clear_sky
    assert s.mw == s.details.available_mw
    assert s.details.irradiance_wm2 == pytest.approx(1000.0 * s.mw / PV.max_mw)


def test_pv_curtailed_by_setpoint() -> None:
    free = initial_state(PV, NOON)
    assert free.mw >= 0.7 * PV.max_mw
    s, _, _ = apply_setpoint(PV, free, 0.5, 0.0, NOON)
    s = step(PV, s, NOON + 4.0, 4.0)
    assert (s.mw, s.status) == (0.5, "curtailed")
    assert isinstance(s.details, PvDetails)
    assert s.details.available_mw > 0.5
    s, _, _ = apply_setpoint(PV, s, 3.0, 0.0, NOON + 4.0)  # a cap above available does not bite
    s = step(PV, s, NOON + 8.0, 4.0)
    assert s.status == "ok"
    assert isinstance(s.details, PvDetails)
    assert s.mw == s.details.available_mw


# --- wind ------------------------------------------------------------------------------------


def test_wind_power_curve() -> None:
    assert physics.wind_power(0.0, 5.0) == 0.0
    assert physics.wind_power(2.99, 5.0) == 0.0
    assert physics.wind_power(3.0, 5.0) == 0.0
    assert 0.0 < physics.wind_power(8.0, 5.0) < 5.0
    assert physics.wind_power(12.0, 5.0) == 5.0
    assert physics.wind_power(24.9, 5.0) == 5.0
    assert physics.wind_power(25.0, 5.0) == 0.0


@given(times)
def test_wind_output_within_limits(now: float) -> None:
    s = initial_state(WIND, now)
    assert isinstance(s.details, WindDetails)
    assert 0.0 <= s.mw <= WIND.max_mw
    assert physics.WIND_MIN_MS <= s.details.wind_speed_ms <= physics.WIND_MAX_MS
    assert s.mw == physics.wind_power(s.details.wind_speed_ms, WIND.max_mw)


def test_wind_zero_below_cut_in() -> None:
    calm = next(
        t
        for t in range(int(MIDNIGHT), int(MIDNIGHT) + 30 * 86400, 10)
        if physics.wind_speed(WIND.id, t) < physics.CUT_IN_MS
    )
    s = initial_state(WIND, calm)
    assert (s.mw, s.status) == (0.0, "calm: below cut-in")


def test_wind_is_smooth_and_varies() -> None:
    speeds = [physics.wind_speed(WIND.id, MIDNIGHT + t) for t in range(0, 3600, 1)]
    assert max(abs(a - b) for a, b in zip(speeds, speeds[1:])) < 1.0
    assert max(speeds) - min(speeds) > 2.0


@given(times, st.floats(min_value=0.0, max_value=5.0))
def test_wind_curtailed_by_setpoint(now: float, cap: float) -> None:
    s, _, _ = apply_setpoint(WIND, initial_state(WIND, now), cap, 0.0, now)
    s = step(WIND, s, now + 4.0, 4.0)
    assert isinstance(s.details, WindDetails)
    assert s.mw == min(cap, s.details.available_mw)
    assert (s.status == "curtailed") == (cap < s.details.available_mw)


# --- EV charger ------------------------------------------------------------------------------


@given(times)
def test_ev_demand_within_limits(now: float) -> None:
    s = initial_state(EV, now)
    assert isinstance(s.details, EvDetails)
    assert EV.min_mw <= s.mw <= 0.0
    assert 0 <= s.details.active_sessions <= physics.EV_PORTS
    assert s.mw == pytest.approx(EV.min_mw * s.details.active_sessions / physics.EV_PORTS)
    assert s.details.station_state == ("idle" if s.details.active_sessions == 0 else "charging")


@given(times, st.floats(min_value=-0.6, max_value=0.0))
def test_ev_load_limited_by_setpoint(now: float, limit: float) -> None:
    s, _, _ = apply_setpoint(EV, initial_state(EV, now), limit, 0.0, now)
    s = step(EV, s, now, 0.0)
    assert isinstance(s.details, EvDetails)
    demand = EV.min_mw * s.details.active_sessions / physics.EV_PORTS
    assert s.mw == max(demand, limit)
    assert limit <= s.mw <= 0.0
    if limit > demand:
        assert (s.status, s.details.station_state) == ("limited", "limited")


def test_ev_sessions_change_every_few_minutes() -> None:
    counts = [physics.ev_sessions(EV.id, MIDNIGHT + t) for t in range(0, 86400, 60)]
    assert set(counts) == {0, 1, 2, 3, 4}
    bucket = MIDNIGHT - MIDNIGHT % physics.EV_SESSION_PERIOD_S
    assert len({physics.ev_sessions(EV.id, bucket + t) for t in range(0, 300, 7)}) == 1


# --- determinism -----------------------------------------------------------------------------


@given(times, st.floats(min_value=0.0, max_value=60.0))
def test_same_inputs_same_outputs(now: float, dt: float) -> None:
    for asset in ALL:
        a = step(asset, initial_state(asset, now - dt), now, dt)
        b = step(asset, initial_state(asset, now - dt), now, dt)
        assert a == b


def test_profiles_depend_on_asset_id() -> None:
    other = attrs.evolve(WIND, id="another-wind-turbine")
    mine = [physics.wind_speed(WIND.id, MIDNIGHT + t) for t in range(0, 3600, 60)]
    theirs = [physics.wind_speed(other.id, MIDNIGHT + t) for t in range(0, 3600, 60)]
    assert mine != theirs
