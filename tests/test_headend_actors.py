"""Headend actors on trio's MockClock, driven by a scripted agent over the in-memory link."""

from __future__ import annotations

import attrs
import pytest
import trio

from der_actors.acks import AckSlots
from der_actors.actors.asset import SetpointSet, open_asset
from der_actors.actors.context import HeadendConfig
from der_actors.actors.headend import run_headend
from der_actors.actors.session import ACK_AT_ONCE_POINTS, ACK_INTERVAL_S
from der_actors.clock import WallClock
from der_actors.dispatching import DispatchRequest
from der_actors.inventory import load_inventory
from der_actors.lifecycle import DispatchState
from der_actors.messages import (
    AckState, AssetInfo, Heartbeat, Register, RegisterAck, SeqRange, Setpoint, SetpointAck, Telemetry,
    TelemetryAck, TelemetryBatch,
)
from der_actors.storage.memory import MemoryStorage
from der_actors.storage.rows import point_row
from der_actors.transport.link import MemoryNetwork

EPOCH = 1_800_000_000.0
INV = load_inventory("assets.yaml")
HARBOUR = "7e3a446b-8390-41f8-ba6c-946169ccf1e8"
GW_ACK_PHASE_S = AckSlots("gw", ACK_INTERVAL_S).phase_s  # where gateway "gw"'s ack slots fall: 0.666 s
BESS1, BESS2, BESS3 = (a.id for a in INV.assets_of(HARBOUR))


@attrs.frozen
class Harness:
    ctx: object
    network: MemoryNetwork


@pytest.fixture
async def headend(nursery):
    h = await nursery.start(
        run_headend, HeadendConfig(heartbeat_timeout_s=90, heartbeat_interval_s=30, dispatch_ack_timeout_s=10),
        INV, MemoryStorage(), WallClock.pinned(EPOCH),
    )
    return Harness(h.ctx, MemoryNetwork(accept_channel=h.accept.clone()))


async def register(edge, *asset_ids, primary=""):
    infos = tuple(AssetInfo(a, HARBOUR, INV.asset(a).type, INV.asset(a).max_mw, INV.asset(a).min_mw) for a in asset_ids)
    await edge.outbound.send(Register("agent", "gw", HARBOUR, primary, infos))
    ack = await edge.inbound.receive()
    assert isinstance(ack, RegisterAck)
    return ack


async def wait_until(predicate):
    while not predicate():
        await trio.sleep(0.001)


async def test_stale_session_is_closed_after_exactly_the_heartbeat_timeout(headend, autojump_clock):
    async with headend.network.dial("agent-1") as edge:
        await register(edge, BESS1)
        await trio.sleep(60)
        await edge.outbound.send(Heartbeat(EPOCH + 60))  # resets the deadline: now 60 + 90
        with pytest.raises(trio.EndOfChannel):
            while True:  # the headend's own heartbeats arrive every 30 s until it closes the stream
                assert isinstance(await edge.inbound.receive(), Heartbeat)
        assert trio.current_time() == 150.0
    await wait_until(lambda: not headend.ctx.assets[BESS1].view.connected)
    view = headend.ctx.assets[BESS1].view
    assert view.sessions[0].reason == "stale: no message for 90 s"
    assert view.sessions[0].disconnected_at == EPOCH + 150


async def test_no_register_closes_the_stream(headend, autojump_clock):
    async with headend.network.dial("mute") as edge:
        with pytest.raises(trio.EndOfChannel):
            await edge.inbound.receive()
        assert trio.current_time() == 90.0


async def test_newer_session_takes_over_and_the_old_stream_closes(headend, autojump_clock):
    async with headend.network.dial("old") as old, headend.network.dial("new") as new:
        first = await register(old, BESS1, primary=BESS1)
        second = await register(new, BESS1, primary=BESS1)
        with pytest.raises(trio.EndOfChannel):
            await old.inbound.receive()
        view = headend.ctx.assets[BESS1].view
        assert view.session.session_id == second.session_id
        old_summary = next(s for s in view.sessions if s.session_id == first.session_id)
        assert "taken over by session " + second.session_id in old_summary.reason
        assert headend.ctx.directory.owners[BESS1] == second.session_id


async def test_legacy_telemetry_without_asset_id_belongs_to_the_primary_asset(headend, autojump_clock):
    async with headend.network.dial("legacy") as edge:
        await register(edge, primary=BESS2)
        await edge.outbound.send(Telemetry("", "", 1, EPOCH + 1, 0.7, 0.0))
        await wait_until(lambda: headend.ctx.assets[BESS2].view.latest is not None)
        latest = headend.ctx.assets[BESS2].view.latest
        assert (latest.asset_id, latest.site_id, latest.mw) == (BESS2, HARBOUR, 0.7)


async def test_telemetry_for_an_asset_the_session_does_not_serve_is_ignored(headend, autojump_clock):
    async with headend.network.dial("gw") as edge:
        await register(edge, BESS1)
        await edge.outbound.send(TelemetryBatch((Telemetry(BESS1, HARBOUR, 1, EPOCH, 1.0, 0.0), Telemetry(BESS3, HARBOUR, 1, EPOCH, 1.0, 0.0))))
        await wait_until(lambda: headend.ctx.assets[BESS1].view.latest is not None)
        assert headend.ctx.assets[BESS3].view.latest is None
        session = headend.ctx.directory.session_for(BESS1)
        assert (session.points, session.ignored_points) == (1, 1)


async def test_dispatch_without_outcome_fails_at_the_ack_timeout(headend, autojump_clock):
    async with headend.network.dial("gw") as edge:
        await register(edge, BESS1)
        view = await headend.ctx.dispatches.submit(DispatchRequest(mw=1.0, asset_id=BESS1))
        assert view.lifecycle.state is DispatchState.SENT
        sp = await edge.inbound.receive()
        assert isinstance(sp, Setpoint) and sp.setpoint_id == view.dispatch_id
        await edge.outbound.send(SetpointAck(sp.setpoint_id, AckState.RECEIVED))
        await trio.sleep(10.001)
        final = await headend.ctx.dispatches.view(view.dispatch_id)
        assert [t.state for t in final.lifecycle.history] == [
            DispatchState.SUBMITTED, DispatchState.SENT, DispatchState.RECEIVED, DispatchState.FAILED
        ]
        assert final.lifecycle.history[-1].at == EPOCH + 10


async def test_crashed_asset_actor_is_restarted_and_keeps_its_view(headend, autojump_clock):
    handle = headend.ctx.assets[BESS1]
    async with headend.network.dial("gw") as edge:
        await register(edge, BESS1)
        await wait_until(lambda: handle.view.connected)
        t0 = trio.current_time()
        await handle.send("not a message")  # our bug: the actor raises TypeError and is restarted
        await handle.send(SetpointSet(1.5, "dispatch-1"))
        await wait_until(lambda: handle.view.setpoint_mw == 1.5)
        assert trio.current_time() - t0 == pytest.approx(0.1, abs=0.002)  # the first restart's backoff
        assert handle.view.connected  # what it had published survived the crash


async def test_non_finite_telemetry_is_rejected_and_the_rest_of_the_batch_kept(headend, autojump_clock):
    async with headend.network.dial("gw") as edge:
        await register(edge, BESS1, BESS2)
        await edge.outbound.send(TelemetryBatch((
            Telemetry(BESS1, HARBOUR, 1, EPOCH, float("nan"), 0.0),
            Telemetry(BESS2, HARBOUR, 1, EPOCH, 1.0, float("inf")),
            Telemetry(BESS2, HARBOUR, 2, EPOCH, 1.0, 0.5),
        )))
        await wait_until(lambda: headend.ctx.assets[BESS2].view.latest is not None)
        assert headend.ctx.assets[BESS2].view.latest.seq == 2
        assert headend.ctx.assets[BESS1].view.latest is None
        assert headend.ctx.directory.session_for(BESS1).ignored_points == 2


async def test_stored_telemetry_is_acknowledged_to_the_agent_after_the_commit(headend, autojump_clock):
    async with headend.network.dial("gw") as edge:
        await register(edge, BESS1, BESS2)
        points = [Telemetry(a, HARBOUR, seq, EPOCH + seq, 1.0, 0.0) for seq in (1, 2, 3, 5) for a in (BESS1, BESS2)]
        await edge.outbound.send(TelemetryBatch(tuple(points)))
        ack = await edge.inbound.receive()
        assert isinstance(ack, TelemetryAck)
        assert sorted(ack.ranges, key=lambda r: (r.asset_id, r.first_seq)) == sorted(
            [SeqRange(a, 1, 3) for a in (BESS1, BESS2)] + [SeqRange(a, 5, 5) for a in (BESS1, BESS2)],
            key=lambda r: (r.asset_id, r.first_seq),
        )
        # written after one batch delay (0.05 s), acked in the session's first slot after that
        assert trio.current_time() == pytest.approx(GW_ACK_PHASE_S)


async def test_a_backlog_is_acked_once_stored_not_in_the_sessions_slot(headend, autojump_clock):
    async with headend.network.dial("gw") as edge:
        await register(edge, BESS1)
        backlog = [Telemetry(BESS1, HARBOUR, seq, EPOCH + seq, 1.0, 0.0) for seq in range(1, ACK_AT_ONCE_POINTS + 1)]
        await edge.outbound.send(TelemetryBatch(tuple(backlog)))
        ack = await edge.inbound.receive()
        assert ack == TelemetryAck((SeqRange(BESS1, 1, ACK_AT_ONCE_POINTS),))
        assert trio.current_time() == pytest.approx(0.05)  # one batch delay, well before the slot at 0.666


async def test_acks_go_one_a_slot_each_covering_everything_stored_since_the_last(headend, autojump_clock):
    async with headend.network.dial("gw") as edge:
        await register(edge, BESS1)
        assert trio.current_time() == 0
        acks = []

        async def receive_acks():
            async for msg in edge.inbound:
                if isinstance(msg, TelemetryAck):
                    acks.append((round(trio.current_time(), 4), msg.ranges))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive_acks)
            for seq, at in enumerate((0.0, 0.2, 0.4, 0.8, 1.0), start=1):  # each stored 0.05 s later
                await trio.sleep_until(at)
                await edge.outbound.send(TelemetryBatch((Telemetry(BESS1, HARBOUR, seq, EPOCH + seq, 1.0, 0.0),)))
            await trio.sleep(3)
            nursery.cancel_scope.cancel()
        # slots at 0.666 + k s: seqs 1-3 (stored by 0.45) in the first, 4-5 (by 1.05) in the next
        assert acks == [
            (round(GW_ACK_PHASE_S, 4), (SeqRange(BESS1, 1, 3),)),
            (round(GW_ACK_PHASE_S + ACK_INTERVAL_S, 4), (SeqRange(BESS1, 4, 5),)),
        ]


async def test_a_closed_asset_actor_applies_what_is_queued_then_ends_without_being_cancelled(nursery, autojump_clock):
    handle, run = open_asset(INV.asset(BESS1))
    ended = []

    async def actor() -> None:
        await run()
        ended.append(trio.current_time())  # a cancelled actor would not get here

    nursery.start_soon(actor)
    await handle.send(SetpointSet(1.5, "d-1"))
    handle.close()
    await handle.send(SetpointSet(2.0, "d-2"))  # after close: dropped, not an error (shutdown)
    await trio.sleep(1)
    assert ended == [0.0]
    assert (handle.view.setpoint_mw, handle.view.setpoint_dispatch_id) == (1.5, "d-1")


def test_a_late_or_replayed_point_never_hides_a_newer_one():
    handle, _ = open_asset(INV.asset(BESS1))

    def offer(seq, ts, mw):
        handle.offer_telemetry(point_row(Telemetry(BESS1, HARBOUR, seq, EPOCH + ts, mw, 0.0), EPOCH + 100))

    offer(5, 20, 1.0)
    offer(3, 12, 2.0)  # a backfilled point: older, kept in history but not "now"
    assert (handle.view.latest.seq, handle.view.latest.mw) == (5, 1.0)
    offer(4, 20, 3.0)  # the same timestamp, a lower seq
    assert handle.view.latest.seq == 5
    offer(6, 20, 4.0)  # the same timestamp, a higher seq
    assert handle.view.latest.seq == 6
    offer(7, 24, 5.0)
    assert (handle.view.latest.seq, handle.view.latest.mw, handle.view.received_at) == (7, 5.0, EPOCH + 100)
