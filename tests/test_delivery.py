"""Dispatch delivery promises on MockClock: pending while offline, TTL, supersede, order, wait."""

from __future__ import annotations

import pytest
import trio

from der_actors.actors.context import HeadendConfig
from der_actors.actors.headend import run_headend
from der_actors.clock import WallClock
from der_actors.dispatching import DispatchRequest
from der_actors.inventory import load_inventory
from der_actors.lifecycle import DispatchState as S
from der_actors.messages import AckState, AssetInfo, Register, RegisterAck, Setpoint, SetpointAck
from der_actors.storage.memory import MemoryStorage
from der_actors.transport.link import MemoryNetwork

EPOCH = 1_800_000_000.0
INV = load_inventory("assets.yaml")
HARBOUR = "7e3a446b-8390-41f8-ba6c-946169ccf1e8"
BESS1, BESS2, BESS3 = (a.id for a in INV.assets_of(HARBOUR))


@pytest.fixture
async def book_and_network(nursery):
    h = await nursery.start(run_headend, HeadendConfig(dispatch_ttl_s=300), INV, MemoryStorage(), WallClock.pinned(EPOCH))
    return h.ctx.dispatches, MemoryNetwork(accept_channel=h.accept.clone())


async def connect(edge, *asset_ids, gateway=True):
    infos = tuple(AssetInfo(a, HARBOUR, INV.asset(a).type, INV.asset(a).max_mw, INV.asset(a).min_mw) for a in asset_ids)
    await edge.outbound.send(Register("gw", "gw" if gateway else "", HARBOUR, "" if gateway else asset_ids[0], infos))
    assert isinstance(await edge.inbound.receive(), RegisterAck)


async def answer(edge, state=AckState.APPLIED) -> Setpoint:
    sp = await edge.inbound.receive()
    assert isinstance(sp, Setpoint), sp
    await edge.outbound.send(SetpointAck(sp.setpoint_id, AckState.RECEIVED))
    await edge.outbound.send(SetpointAck(sp.setpoint_id, state, "done"))
    return sp


def states(view):
    return [(t.state, t.at - EPOCH) for t in view.lifecycle.history]


async def test_offline_dispatch_waits_and_is_delivered_on_connect(book_and_network, autojump_clock):
    book, net = book_and_network
    view = await book.submit(DispatchRequest(mw=1.0, asset_id=BESS1))
    assert view.lifecycle.state is S.PENDING and view.expires_at == EPOCH + 300
    await trio.sleep(100)
    async with net.dial("late") as edge:
        await connect(edge, BESS1)
        sp = await answer(edge)
        assert (sp.setpoint_id, sp.mw, sp.issued_at) == (view.dispatch_id, 1.0, EPOCH + 100)
        done = await book.wait_terminal(view.dispatch_id, 5)
    assert states(done) == [(S.SUBMITTED, 0), (S.PENDING, 0), (S.SENT, 100), (S.RECEIVED, 100), (S.APPLIED, 100)]


async def test_pending_dispatch_expires_at_its_ttl_and_is_never_delivered(book_and_network, autojump_clock):
    book, net = book_and_network
    view = await book.submit(DispatchRequest(mw=1.0, asset_id=BESS1, ttl_s=60))
    done = await book.wait_terminal(view.dispatch_id, 120)
    assert states(done)[-1] == (S.EXPIRED, 60)
    async with net.dial("late") as edge:
        await connect(edge, BESS1)
        with trio.move_on_after(30):
            msg = await edge.inbound.receive()
            assert not isinstance(msg, Setpoint)


async def test_newer_dispatch_supersedes_an_undelivered_one(book_and_network, autojump_clock):
    book, net = book_and_network
    first = await book.submit(DispatchRequest(mw=1.0, asset_id=BESS1))
    await trio.sleep(5)
    second = await book.submit(DispatchRequest(mw=2.0, asset_id=BESS1))
    old = await book.wait_terminal(first.dispatch_id, 1)
    assert states(old)[-1] == (S.SUPERSEDED, 5) and second.dispatch_id in old.message
    async with net.dial("late") as edge:
        await connect(edge, BESS1)
        sp = await answer(edge)
        assert sp.setpoint_id == second.dispatch_id and sp.mw == 2.0
        assert (await book.wait_terminal(second.dispatch_id, 5)).lifecycle.state is S.APPLIED


async def test_pending_dispatches_go_out_in_submission_order(book_and_network, autojump_clock):
    book, net = book_and_network
    order = [BESS3, BESS1, BESS2]
    ids = []
    for i, asset_id in enumerate(order):
        ids.append((await book.submit(DispatchRequest(mw=float(i + 1), asset_id=asset_id))).dispatch_id)
        await trio.sleep(1)
    async with net.dial("gw") as edge:
        await connect(edge, BESS1, BESS2, BESS3)
        received = [(await answer(edge)).setpoint_id for _ in order]
    assert received == ids


async def test_wait_returns_the_outcome_or_the_state_at_the_timeout(book_and_network, autojump_clock):
    book, net = book_and_network
    async with net.dial("gw") as edge:
        await connect(edge, BESS1)
        view = await book.submit(DispatchRequest(mw=1.0, asset_id=BESS1))
        start = trio.current_time()
        waited = await book.wait_terminal(view.dispatch_id, 2)  # nobody answers yet
        assert waited.lifecycle.state is S.SENT and trio.current_time() - start == 2
        async with trio.open_nursery() as nursery:
            nursery.start_soon(answer, edge)
            done = await book.wait_terminal(view.dispatch_id, 5)
        assert done.lifecycle.state is S.APPLIED


async def test_offline_site_dispatch_waits_whole_for_its_gateway(book_and_network, autojump_clock):
    book, net = book_and_network
    view = await book.submit(DispatchRequest(mw=6.0, site_id=HARBOUR))
    assert view.lifecycle.state is S.PENDING and view.applied_mw == 6.0
    async with net.dial("gw") as edge:
        await connect(edge, BESS1, BESS2, BESS3)
        sp = await answer(edge)
        assert (sp.asset_id, sp.site_id, sp.mw) == ("", HARBOUR, 6.0)
        done = await book.wait_terminal(view.dispatch_id, 5)
    assert done.mode == "gateway_split" and done.lifecycle.state is S.APPLIED


async def test_unfinished_dispatches_resume_after_a_headend_restart(autojump_clock):
    storage = MemoryStorage()
    async with trio.open_nursery() as first_run:
        h = await first_run.start(run_headend, HeadendConfig(), INV, storage, WallClock.pinned(EPOCH))
        net = MemoryNetwork(accept_channel=h.accept.clone())
        waiting = await h.ctx.dispatches.submit(DispatchRequest(mw=1.0, asset_id=BESS2, ttl_s=600))
        short = await h.ctx.dispatches.submit(DispatchRequest(mw=1.0, asset_id=BESS3, ttl_s=20))
        async with net.dial("gw") as edge:
            await connect(edge, BESS1)
            in_flight = await h.ctx.dispatches.submit(DispatchRequest(mw=2.0, asset_id=BESS1, ttl_s=600))
            first_sp = await edge.inbound.receive()  # the agent gets it, then the headend stops
            await h.ctx.store.flushed()
            first_run.cancel_scope.cancel()
    await trio.sleep(30)  # down for 30 s: `short` is past its TTL by the restart

    async with trio.open_nursery() as second_run:
        h = await second_run.start(run_headend, HeadendConfig(), INV, storage, WallClock.pinned(EPOCH))
        book = h.ctx.dispatches
        assert (await book.view(waiting.dispatch_id)).lifecycle.state is S.PENDING
        resumed = await book.view(in_flight.dispatch_id)
        assert resumed.lifecycle.state is S.PENDING and "outcome unknown" in resumed.lifecycle.history[-1].reason
        expired = await book.wait_terminal(short.dispatch_id, 1)
        assert expired.lifecycle.state is S.EXPIRED
        net = MemoryNetwork(accept_channel=h.accept.clone())
        async with net.dial("gw") as edge:
            await connect(edge, BESS1, BESS2)
            again = [await answer(edge), await answer(edge)]
        assert [sp.setpoint_id for sp in again] == [waiting.dispatch_id, in_flight.dispatch_id]  # submission order
        assert again[1].setpoint_id == first_sp.setpoint_id  # same id: the agent deduplicates
        for d in (waiting, in_flight):
            assert (await book.wait_terminal(d.dispatch_id, 5)).lifecycle.state is S.APPLIED
        second_run.cancel_scope.cancel()
