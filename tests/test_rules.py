"""Pure rules of the headend: lifecycle, routing, registration, dispatch planning, restart, backoff."""

from __future__ import annotations

import math
import random

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from der_actors.backoff import Backoff
from der_actors.dispatching import DispatchRequest, Refused, apply_ack, fail_unanswered, plan_dispatch
from der_actors.inventory import load_inventory
from der_actors.lifecycle import DispatchState as S
from der_actors.lifecycle import IllegalTransition, Lifecycle
from der_actors.messages import AckState, Allocation, AssetInfo, Register, SetpointAck
from der_actors.model import AssetType
from der_actors.registration import review_register
from der_actors.restart import RestartIntensity, RestartLimitExceeded
from der_actors.routing import Routing, Takeover

INV = load_inventory("assets.yaml")
HARBOUR = "7e3a446b-8390-41f8-ba6c-946169ccf1e8"
RIDGEWAY = "f91f3035-50e0-4460-81ba-4fe29ad09222"
BESS1 = "c85e9759-8fac-40b8-ae8e-e9f6c796f8bb"  # Harbourside, +-5 MW


# --- lifecycle ---------------------------------------------------------------------------------


def test_lifecycle_records_every_transition_with_its_time():
    lc = Lifecycle.start(10.0).to(S.SENT, 11.0).to(S.RECEIVED, 12.0).to(S.APPLIED, 13.0)
    assert [(t.state, t.at) for t in lc.history] == [(S.SUBMITTED, 10.0), (S.SENT, 11.0), (S.RECEIVED, 12.0), (S.APPLIED, 13.0)]
    assert lc.state.terminal


@pytest.mark.parametrize(
    "path, illegal",
    [((), S.APPLIED), ((S.SENT, S.APPLIED), S.FAILED), ((S.SENT, S.APPLIED), S.PENDING), ((S.EXPIRED,), S.SENT)],
)
def test_illegal_transitions_raise_and_change_nothing(path, illegal):
    lc = Lifecycle.start(0.0)
    for state in path:
        lc = lc.to(state, 1.0)
    with pytest.raises(IllegalTransition):
        lc.to(illegal, 2.0)
    assert lc.state == (path[-1] if path else S.SUBMITTED)


# --- routing -----------------------------------------------------------------------------------


def test_newer_session_takes_over_and_old_release_keeps_new_claim():
    r = Routing()
    assert r.claim("s1", ["a", "b"]) == []
    assert r.claim("s2", ["b"]) == [Takeover("b", "s1", "s2")]
    assert r.release("s1", ["a", "b"]) == ["a"]  # b belongs to s2 now
    assert dict(r.owners) == {"b": "s2"}


# --- registration ------------------------------------------------------------------------------


def _info(asset_id, site_id):
    return AssetInfo(asset_id, site_id, AssetType.BESS, 1.0, -1.0)


def test_register_accepts_configured_assets_of_its_site_and_rejects_the_rest_with_reasons():
    ridgeway_asset = INV.assets_of(RIDGEWAY)[0].id
    unknown = "00000000-0000-4000-8000-000000000000"
    reg = Register("gw", "gw", HARBOUR, "", (_info(BESS1, HARBOUR), _info(ridgeway_asset, HARBOUR), _info(unknown, HARBOUR), _info(BESS1, HARBOUR)))
    review = review_register(reg, INV)
    assert review.accepted == (BESS1,)
    assert review.is_gateway
    reasons = {r.asset_id: r.reason for r in review.rejected}
    assert reasons[ridgeway_asset] == f"asset belongs to site {RIDGEWAY}, not {HARBOUR}"
    assert reasons[unknown].startswith("unknown asset")
    assert [r.reason for r in review.rejected if r.asset_id == BESS1] == ["listed twice"]


def test_legacy_register_with_only_asset_id_claims_it():
    review = review_register(Register("agent-1", "", HARBOUR, BESS1, ()), INV)
    assert review.accepted == (BESS1,) and not review.is_gateway and not review.refusal


@pytest.mark.parametrize(
    "reg, refusal",
    [
        (Register("a", "", HARBOUR, "", ()), "register lists no assets"),
        (Register("a", "", HARBOUR, BESS1, (), protocol_version=3), "protocol_version 3 is newer"),
        (Register("a", "", HARBOUR, BESS1, (), protocol_version=0), "protocol_version 0 is older"),
    ],
)
def test_register_refusals(reg, refusal):
    assert review_register(reg, INV).refusal.startswith(refusal)


# --- dispatch planning -------------------------------------------------------------------------


def _ids():
    counter = iter(range(1000))
    return lambda: f"id-{next(counter)}"


def test_asset_dispatch_is_clamped_to_limits_and_refused_when_offline():
    plan = plan_dispatch(DispatchRequest(mw=9.0, asset_id=BESS1), INV, {BESS1: "s1"}, set(), 5.0, _ids())
    assert (plan.view.applied_mw, plan.view.clamped, plan.view.mode) == (5.0, True, "asset")
    [(session_id, sp)] = plan.setpoints
    assert (session_id, sp.asset_id, sp.site_id, sp.mw, sp.setpoint_id) == ("s1", BESS1, HARBOUR, 5.0, plan.view.dispatch_id)
    with pytest.raises(Refused, match="is not connected"):
        plan_dispatch(DispatchRequest(mw=1.0, asset_id=BESS1), INV, {}, set(), 5.0, _ids())


def test_site_dispatch_goes_whole_to_a_gateway_serving_every_asset():
    owners = {a.id: "gw" for a in INV.assets_of(RIDGEWAY)}
    plan = plan_dispatch(DispatchRequest(mw=6.0, site_id=RIDGEWAY), INV, owners, {"gw"}, 0.0, _ids())
    [(session_id, sp)] = plan.setpoints
    assert plan.view.mode == "gateway_split" and session_id == "gw"
    assert (sp.asset_id, sp.site_id, sp.mw) == ("", RIDGEWAY, 6.0)


def test_site_dispatch_split_by_headend_when_sessions_differ():
    a, b, c = (x.id for x in INV.assets_of(HARBOUR))
    plan = plan_dispatch(DispatchRequest(mw=6.0, site_id=HARBOUR), INV, {a: "s1", b: "s2"}, set(), 0.0, _ids())
    assert plan.view.mode == "headend_split"
    sent = {sp.asset_id: (sid, sp.mw) for sid, sp in plan.setpoints}
    assert set(sent) == {a, b}  # c is offline: nothing sent to it
    assert sent[a][0] == "s1" and sent[b][0] == "s2"
    assert round(sum(mw for _, mw in sent.values()), 3) == plan.view.applied_mw == 6.0


def test_acks_decide_the_outcome_only_when_every_leg_answered():
    a, b, _ = (x.id for x in INV.assets_of(HARBOUR))
    plan = plan_dispatch(DispatchRequest(mw=2.0, site_id=HARBOUR), INV, {a: "s1", b: "s2"}, set(), 0.0, _ids())
    view = attrs.evolve(plan.view, lifecycle=plan.view.lifecycle.to(S.SENT, 1.0))
    leg_a, leg_b = view.legs
    view = apply_ack(view, SetpointAck(leg_a.setpoint_id, AckState.APPLIED), 2.0)
    assert view.lifecycle.state is S.SENT
    view = apply_ack(view, SetpointAck(leg_b.setpoint_id, AckState.REJECTED, "soc_full"), 3.0)
    assert view.lifecycle.state is S.REJECTED and "soc_full" in view.message
    assert fail_unanswered(view, 9.0, 10.0) is view  # terminal: untouched


def test_unanswered_dispatch_fails_with_reason():
    plan = plan_dispatch(DispatchRequest(mw=1.0, asset_id=BESS1), INV, {BESS1: "s1"}, set(), 0.0, _ids())
    view = attrs.evolve(plan.view, lifecycle=plan.view.lifecycle.to(S.SENT, 0.0))
    failed = fail_unanswered(view, 10.0, 10.0)
    assert failed.lifecycle.state is S.FAILED and failed.message == "no outcome from the agent within 10 s"


def test_gateway_ack_allocations_are_recorded():
    owners = {a.id: "gw" for a in INV.assets_of(RIDGEWAY)}
    plan = plan_dispatch(DispatchRequest(mw=1.0, site_id=RIDGEWAY), INV, owners, {"gw"}, 0.0, _ids())
    view = attrs.evolve(plan.view, lifecycle=plan.view.lifecycle.to(S.SENT, 0.0))
    allocs = (Allocation("x", 0.6), Allocation("y", 0.4))
    view = apply_ack(view, SetpointAck(plan.view.dispatch_id, AckState.APPLIED, "", allocs), 1.0)
    assert view.allocations == allocs and view.lifecycle.state is S.APPLIED


# --- restart intensity and backoff --------------------------------------------------------------


def test_restart_intensity_backs_off_then_gives_up_within_the_window():
    ri = RestartIntensity(max_restarts=3, window_s=60, backoff_initial_s=0.1, backoff_cap_s=5)
    assert [ri.record_crash(t) for t in (0, 1, 2)] == [0.1, 0.2, 0.4]
    with pytest.raises(RestartLimitExceeded):
        ri.record_crash(3)


def test_restart_window_forgets_old_crashes():
    ri = RestartIntensity(max_restarts=1, window_s=10)
    ri.record_crash(0)
    assert ri.record_crash(10.5) == ri.backoff_initial_s  # the first crash left the window


def test_backoff_full_jitter_doubles_to_cap_and_resets():
    b = Backoff(0.5, 30.0, random.Random(7))
    ceilings = []
    for _ in range(8):
        ceilings.append(b.ceiling())
        assert 0 <= b.next_delay() <= ceilings[-1]
    assert ceilings == [0.5, 1, 2, 4, 8, 16, 30, 30]
    b.reset()
    assert b.ceiling() == 0.5


def test_backoff_after_refused_dials_stays_under_the_refused_cap():
    b = Backoff(0.5, 30.0, random.Random(7), refused_cap_s=5.0)
    ceilings = []
    for _ in range(6):
        ceilings.append(b.ceiling(refused=True))
        assert 0 <= b.next_delay(refused=True) <= ceilings[-1]
    assert ceilings == [0.5, 1, 2, 4, 5, 5]
    assert b.ceiling() == 30  # a dial that reached the headend keeps the full ceiling


# --- telemetry acks ----------------------------------------------------------------------------


def test_pending_acks_join_overlapping_and_adjacent_seqs_per_asset():
    from der_actors.acks import PendingAcks
    from der_actors.messages import SeqRange

    pending = PendingAcks()
    pending.add("a", [4, 5, 6])
    pending.add("b", [1])
    pending.add("a", [1, 2, 3])
    pending.add("a", [5, 6, 7, 8, 9, 11, 12])
    pending.add("b", [3])
    assert pending.take() == [SeqRange("a", 1, 9), SeqRange("a", 11, 12), SeqRange("b", 1, 1), SeqRange("b", 3, 3)]
    assert pending.take() == []


def test_pending_acks_of_an_agent_that_never_reads_stay_one_span_per_gap():
    from der_actors.acks import SPANS_JOINED_AT, PendingAcks
    from der_actors.messages import SeqRange

    pending = PendingAcks()
    n = 10 * SPANS_JOINED_AT
    for seq in range(n, 0, -1):  # newest first: no span grows in place
        pending.add("a", [seq])
        assert len(pending._older.get("a", ())) + 1 <= SPANS_JOINED_AT  # the older spans and the newest
    pending.add("a", [n + 2])  # one gap
    assert pending.take() == [SeqRange("a", 1, n), SeqRange("a", n + 2, n + 2)]


def test_ack_slots_of_many_gateways_spread_over_the_interval_and_each_keeps_its_own_grid():
    from der_actors.acks import AckSlots

    phases = [AckSlots(f"gw-{i:04d}", 1.0).phase_s for i in range(1000)]
    tenths = [sum(1 for p in phases if k / 10 <= p < (k + 1) / 10) for k in range(10)]
    assert min(tenths) >= 70 and max(tenths) <= 130, tenths  # ~100 of 1,000 in each tenth of a second

    slots = AckSlots("gw-0001", 1.0)
    p = slots.phase_s
    assert slots.next(now=0.0, last_ack_at=-math.inf) == pytest.approx(p)  # the first slot from now
    assert slots.next(now=p, last_ack_at=-math.inf) == pytest.approx(p)  # a slot that is now: this one
    assert slots.next(now=p, last_ack_at=p) == pytest.approx(p + 1)  # one ack a slot
    assert slots.next(now=p + 1, last_ack_at=p) == pytest.approx(p + 1)  # float error does not skip one
    assert slots.next(now=p + 1.2, last_ack_at=p) == pytest.approx(p + 2)
    assert slots.next(now=p + 0.3, last_ack_at=p + 0.2) == pytest.approx(p + 2)  # an ack sent late in its slot


def test_committed_rows_become_each_sessions_fewest_ranges():
    from der_actors.acks import PendingAcks, seqs_by_asset
    from der_actors.messages import SeqRange

    # (asset_id, seq) pairs, or the store's rows (asset_id, seq, ...) read in place
    keys = [("a", 3), ("b", 1), ("a", 1), ("a", 2, 0.0, "x"), ("a", 7), ("a", 7), ("a", 5), ("a", 6)]
    assert seqs_by_asset(keys) == {"a": [3, 1, 2, 7, 7, 5, 6], "b": [1]}
    pending = PendingAcks()
    for asset_id, seqs in seqs_by_asset(keys).items():
        pending.add(asset_id, seqs)
    assert pending.take() == [SeqRange("a", 1, 3), SeqRange("a", 5, 7), SeqRange("b", 1, 1)]


_seq_runs = st.one_of(
    st.builds(lambda start, n: list(range(start, start + n)), st.integers(1, 30), st.integers(0, 150)),  # in order
    st.builds(lambda n: list(range(n, 0, -1)), st.integers(2, 200)),  # newest first: past SPANS_JOINED_AT
    st.lists(st.integers(1, 40), max_size=8),  # scattered, with repeats
)


@given(st.lists(st.tuples(st.sampled_from("abc"), _seq_runs), max_size=12))
def test_pending_acks_match_a_plain_set_model(adds):
    """Any adds, in any order, with repeats and gaps: `take` gives each asset's seqs as the fewest
    ascending ranges, assets in the order their first seq came, and leaves nothing pending."""
    from der_actors.acks import PendingAcks
    from der_actors.messages import SeqRange

    pending, model = PendingAcks(), {}
    for asset_id, seqs in adds:
        pending.add(asset_id, seqs)
        if seqs:
            model.setdefault(asset_id, set()).update(seqs)
    want = []
    for asset_id, seqs in model.items():
        ordered = sorted(seqs)
        first = last = ordered[0]
        for seq in ordered[1:]:
            if seq != last + 1:
                want.append(SeqRange(asset_id, first, last))
                first = seq
            last = seq
        want.append(SeqRange(asset_id, first, last))
    assert pending.take() == want
    assert pending.take() == []
