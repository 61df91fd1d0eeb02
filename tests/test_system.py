"""The whole system in one trio run on MockClock: a headend and edge sites over the in-memory link.

Real actors on both sides, real simulators, real split; only the network is simulated, so these
tests live through minutes of telemetry, dispatches and link drops in milliseconds, exactly.
"""

from __future__ import annotations

import pathlib
import random

import attrs
import pytest
import trio

from der_actors.actors.context import HeadendConfig
from der_actors.actors.headend import run_headend
from der_actors.backoff import Backoff
from der_actors.clock import WallClock
from der_actors.dispatching import DispatchRequest
from der_actors.inventory import load_inventory
from der_actors.lifecycle import DispatchState
from der_actors.storage.memory import MemoryStorage
from der_actors.transport.link import MemoryNetwork
from edge.config import load_config
from edge.site import run_site

EPOCH = 1_800_000_000.0  # 2027-01-15T08:00:00Z: daylight, so PV produces
INV = load_inventory("assets.yaml")
HARBOUR = "7e3a446b-8390-41f8-ba6c-946169ccf1e8"  # 3 bess
WHEATFIELD = "39177186-ddbe-4574-80ef-a2055fea0232"
RIDGEWAY = "f91f3035-50e0-4460-81ba-4fe29ad09222"  # 13 assets of all four types
INTERVAL = 4.0


@attrs.frozen
class System:
    ctx: object
    network: MemoryNetwork
    storage: MemoryStorage
    nursery: trio.Nursery
    spool_root: pathlib.Path  # each agent's EDGE_SPOOL_DIR goes under it

    async def gateway(self, site_id: str, seed: int = 1, **env):
        config = load_config([], {"GATEWAY_SITE_ID": site_id, "ASSETS_PATH": "assets.yaml",
                                  "EDGE_SPOOL_DIR": str(self.spool_root / site_id),
                                  "TELEMETRY_INTERVAL_S": str(INTERVAL), **env})
        return await self._site(config, f"gw-{site_id[:8]}", seed)

    async def legacy(self, asset_id: str, seed: int = 2):
        a = INV.asset(asset_id)
        config = load_config([], {
            "ASSET_ID": a.id, "SITE_ID": a.site_id, "ASSET_NAME": a.name, "MAX_MW": str(a.max_mw),
            "MIN_MW": str(a.min_mw), "CAPACITY_MWHR": str(a.capacity_mwhr), "EFFICIENCY": str(a.efficiency),
            "RAMP_RATE_MW_PER_MIN": str(a.ramp_rate_mw_per_min), "TELEMETRY_INTERVAL_S": str(INTERVAL),
            "EDGE_SPOOL_DIR": str(self.spool_root / asset_id),
        })
        return await self._site(config, f"legacy-{asset_id[:8]}", seed)

    async def _site(self, config, peer, seed):
        return await self.nursery.start(
            lambda task_status: run_site(config, lambda: self.network.dial(peer), clock=WallClock.pinned(EPOCH),
                                         rng=random.Random(seed), task_status=task_status)
        )

    def view(self, asset_id):
        return self.ctx.assets[asset_id].view

    async def settle(self, predicate, limit_s: float = 600):
        with trio.fail_after(limit_s):
            while not predicate():
                await trio.sleep(0.5)


@pytest.fixture
async def system(nursery, tmp_path):
    storage = MemoryStorage()
    h = await nursery.start(run_headend, HeadendConfig(), INV, storage, WallClock.pinned(EPOCH))
    return System(h.ctx, MemoryNetwork(accept_channel=h.accept.clone()), storage, nursery, tmp_path)


async def test_a_13_asset_gateway_reports_every_asset_every_interval(system, autojump_clock):
    await system.gateway(RIDGEWAY)
    ids = [a.id for a in INV.assets_of(RIDGEWAY)]
    assert len(ids) == 13
    await trio.sleep(10 * INTERVAL + 0.5)  # ticks at 4, 8, ..., 40 s
    for asset_id in ids:
        view = system.view(asset_id)
        assert view.connected and view.session.gateway_id == RIDGEWAY
        assert (view.latest.seq, view.latest.timestamp) == (10, EPOCH + 40.0)
    await system.ctx.store.flushed()
    for asset_id in ids:
        rows = system.storage.telemetry_history(asset_id, None, None, 100)
        assert [r.point.timestamp - EPOCH for r in rows] == [4.0 * k for k in range(10, 0, -1)]


async def test_asset_dispatch_moves_only_that_asset(system, autojump_clock):
    await system.gateway(HARBOUR)
    b1, b2, b3 = (a.id for a in INV.assets_of(HARBOUR))
    await system.settle(lambda: system.view(b1).connected)
    view = await system.ctx.dispatches.submit(DispatchRequest(mw=2.0, asset_id=b1))
    await system.settle(lambda: system.ctx.dispatches.recent[view.dispatch_id].lifecycle.state.terminal)
    done = system.ctx.dispatches.recent[view.dispatch_id]
    assert done.lifecycle.state is DispatchState.APPLIED
    assert [t.state.value for t in done.lifecycle.history] == ["submitted", "sent", "received", "applied"]
    # ramp 2 MW/min (assets.yaml): 2 MW is reached within a minute, then held
    await trio.sleep(90)
    assert system.view(b1).latest.mw == pytest.approx(2.0)
    assert system.view(b1).setpoint_mw == 2.0
    assert system.view(b2).latest.mw == 0.0 and system.view(b3).latest.mw == 0.0


async def test_site_dispatch_is_split_by_the_gateway_and_the_sum_holds(system, autojump_clock):
    await system.gateway(HARBOUR)
    assets = INV.assets_of(HARBOUR)
    await system.settle(lambda: all(system.view(a.id).connected for a in assets))
    view = await system.ctx.dispatches.submit(DispatchRequest(mw=-7.5, site_id=HARBOUR))
    assert view.mode == "gateway_split"
    await system.settle(lambda: system.ctx.dispatches.recent[view.dispatch_id].lifecycle.state.terminal)
    done = system.ctx.dispatches.recent[view.dispatch_id]
    assert done.lifecycle.state is DispatchState.APPLIED
    assert sum(round(a.mw * 1000) for a in done.allocations) == -7500
    assert {a.asset_id for a in done.allocations} == {a.id for a in assets}
    await trio.sleep(300)
    assert sum(system.view(a.id).latest.mw for a in assets) == pytest.approx(-7.5)


async def test_site_dispatch_split_by_the_headend_across_legacy_agents(system, autojump_clock):
    assets = INV.assets_of(HARBOUR)
    for i, a in enumerate(assets):
        await system.legacy(a.id, seed=10 + i)
    await system.settle(lambda: all(system.view(a.id).connected for a in assets))
    view = await system.ctx.dispatches.submit(DispatchRequest(mw=6.0, site_id=HARBOUR))
    assert view.mode == "headend_split" and len(view.legs) == 3
    await system.settle(lambda: system.ctx.dispatches.recent[view.dispatch_id].lifecycle.state.terminal)
    done = system.ctx.dispatches.recent[view.dispatch_id]
    assert done.lifecycle.state is DispatchState.APPLIED
    assert sum(round(a.mw * 1000) for a in done.allocations) == 6000
    await trio.sleep(300)
    assert sum(system.view(a.id).latest.mw for a in assets) == pytest.approx(6.0)


async def test_legacy_agent_works_beside_a_gateway(system, autojump_clock):
    await system.gateway(RIDGEWAY)
    wheat_bess = next(a for a in INV.assets_of(WHEATFIELD) if a.type.value == "bess")
    await system.legacy(wheat_bess.id)
    await trio.sleep(INTERVAL * 3 + 0.5)
    assert system.view(wheat_bess.id).latest.seq == 3
    assert system.view(wheat_bess.id).session.gateway_id == f"agent-{wheat_bess.id}"
    assert all(system.view(a.id).latest.seq == 3 for a in INV.assets_of(RIDGEWAY))
    view = await system.ctx.dispatches.submit(DispatchRequest(mw=-1.0, asset_id=wheat_bess.id))
    await system.settle(lambda: system.ctx.dispatches.recent[view.dispatch_id].lifecycle.state.terminal)
    assert system.ctx.dispatches.recent[view.dispatch_id].lifecycle.state is DispatchState.APPLIED


async def test_a_dropped_link_reconnects_on_the_backoff_schedule(system, autojump_clock):
    seed = 42
    site = await system.gateway(HARBOUR, seed=seed)
    asset_id = INV.assets_of(HARBOUR)[0].id
    await system.settle(lambda: system.view(asset_id).connected)
    expected = Backoff(0.5, 30.0, random.Random(seed))

    # An outage: the link is cut and no headend accepts for 20 s. Dials fail on the schedule.
    await trio.sleep(100)  # a healthy session (>= 30 s): the backoff starts from the bottom
    accept, system.network.accept_channel = system.network.accept_channel, None
    cut_at = trio.current_time()
    assert system.network.cut_all() == 1
    dial_times = [cut_at + expected.next_delay()]  # the session ended: the full ceiling
    while dial_times[-1] < cut_at + 20:
        dial_times.append(dial_times[-1] + expected.next_delay(refused=True))  # nothing listening
    await trio.sleep(20)
    system.network.accept_channel = accept
    await system.settle(lambda: system.view(asset_id).connected)
    reconnected = system.view(asset_id).session.connected_at - EPOCH
    assert reconnected == pytest.approx(dial_times[-1])
    assert site.stats.connect_failures == len(dial_times) - 1


async def test_stale_agent_is_dropped_and_reconnects(system, autojump_clock):
    # HEADEND_TIMEOUT_S on the agent is longer than the headend's: the headend notices first.
    await system.gateway(HARBOUR, HEARTBEAT_INTERVAL_S="1000", TELEMETRY_INTERVAL_S="1000", HEADEND_TIMEOUT_S="1000")
    asset_id = INV.assets_of(HARBOUR)[0].id
    await system.settle(lambda: system.view(asset_id).connected)
    first = system.view(asset_id).session
    await system.settle(lambda: system.view(asset_id).session is not None and system.view(asset_id).session.session_id != first.session_id)
    old = next(s for s in system.view(asset_id).sessions if s.session_id == first.session_id)
    assert old.reason == "stale: no message for 90 s"
    assert old.disconnected_at - first.connected_at == 90.0
