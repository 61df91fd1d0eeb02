"""Seven simulated days of the whole system on MockClock (issue 4's proof of the delivery promises).

3 sites: a 12-asset gateway and two legacy agents; telemetry every 4 s; the link dropped at seeded
random moments (short flaps and hour-long outages); one headend restart and one agent restart in the
middle; dispatches submitted throughout, some while the target is offline and some expiring. At the
end every point generated at the edge is stored exactly once, no dispatch is left unfinished, none
was delivered after its TTL, and every asset holds the setpoint of the last dispatch applied to it.
"""

from __future__ import annotations

import functools
import random
import time

import pytest
import trio
import yaml

from der_actors.actors.context import HeadendConfig
from der_actors.actors.headend import run_headend
from der_actors.clock import WallClock
from der_actors.dispatching import DispatchRequest
from der_actors.inventory import load_inventory
from der_actors.lifecycle import DispatchState as S
from der_actors.storage.memory import MemoryStorage
from der_actors.transport.link import MemoryNetwork
from edge.config import load_config
from edge.site import run_site

EPOCH = 1_800_000_000.0
DAY = 86_400.0
RIDGEWAY = "f91f3035-50e0-4460-81ba-4fe29ad09222"
LEGACY = ("c85e9759-8fac-40b8-ae8e-e9f6c796f8bb", "88b56ef0-1947-4551-8f8e-3584a1465a63")  # two BESS


async def _scoped(starter, *, task_status):
    """Run `starter` in its own cancel scope; report (scope, what it started)."""
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            value = await nursery.start(starter)
            task_status.started((scope, value))


async def test_seven_days_every_promise_holds(tmp_path, nursery, autojump_clock):
    began = time.perf_counter()
    doc = yaml.safe_load(open("assets.yaml"))
    ridgeway = [a for a in doc["assets"] if a["site_id"] == RIDGEWAY]
    doc["assets"] = [a for a in doc["assets"] if a is not ridgeway[-1]]  # 12 assets at the gateway
    (tmp_path / "assets.yaml").write_text(yaml.safe_dump(doc))
    inv = load_inventory(tmp_path / "assets.yaml")
    rng = random.Random(2026)
    storage = MemoryStorage(points_per_asset=200_000, max_records=100_000)
    clock = WallClock.pinned(EPOCH)
    network = MemoryNetwork()

    async def start_headend():
        scope, h = await nursery.start(_scoped, functools.partial(run_headend, HeadendConfig(), inv, storage, clock))
        network.accept_channel = h.accept.clone()
        return scope, h

    def site_config(env):
        return load_config([], {"TELEMETRY_INTERVAL_S": "4", "ASSETS_PATH": str(tmp_path / "assets.yaml"), **env})

    gateway_env = {"GATEWAY_SITE_ID": RIDGEWAY, "EDGE_SPOOL_DIR": str(tmp_path / "spool-gw")}
    configs = {"gw": site_config(gateway_env)}
    for asset_id in LEGACY:
        a = inv.asset(asset_id)
        configs[asset_id] = site_config({
            "ASSET_ID": a.id, "SITE_ID": a.site_id, "MAX_MW": str(a.max_mw), "MIN_MW": str(a.min_mw),
            "CAPACITY_MWHR": str(a.capacity_mwhr), "EFFICIENCY": str(a.efficiency),
            "RAMP_RATE_MW_PER_MIN": str(a.ramp_rate_mw_per_min), "EDGE_SPOOL_DIR": str(tmp_path / f"spool-{a.id}"),
        } | {"ASSETS_PATH": ""})

    async def start_site(name, seed):
        start = functools.partial(run_site, configs[name], lambda: network.dial(name), clock=clock, rng=random.Random(seed))
        return await nursery.start(_scoped, start)

    headend_scope, headend = await start_headend()
    sites = {name: await start_site(name, i) for i, name in enumerate(configs)}
    assets_by_agent = {name: [a.id for a in cfg.assets] for name, cfg in configs.items()}
    all_assets = [a for ids in assets_by_agent.values() for a in ids]

    # The week's events, seeded: 40 short flaps, 3 hour-long outages, dispatches every ~2 h.
    events = [(rng.uniform(0, 7 * DAY), "flap") for _ in range(40)]
    outages = [rng.uniform(0.2 * DAY, 6.8 * DAY) for _ in range(3)]
    events += [(t, "outage") for t in outages] + [(t + 3600, "outage_end") for t in outages]
    events += [(t + 60, "offline_dispatches") for t in outages]  # these must expire or be superseded
    events += [(3.5 * DAY, "restart_headend"), (5.0 * DAY, "restart_agent")]
    events += [(t, "dispatch") for t in range(3600, int(7 * DAY), 7200)]
    submitted = []

    async def submit(req):
        submitted.append((await headend.ctx.dispatches.submit(req)).dispatch_id)

    for at, kind in sorted(events):
        await trio.sleep_until(at)
        if kind == "flap":
            network.cut_all()
        elif kind == "outage":
            network.accept_channel = None  # nothing can connect for an hour
            network.cut_all()
        elif kind == "outage_end":
            network.accept_channel = headend.accept.clone()
        elif kind == "offline_dispatches":
            bess = LEGACY[0]
            await submit(DispatchRequest(mw=1.0, asset_id=bess, ttl_s=60))  # expires offline
            await submit(DispatchRequest(mw=2.0, asset_id=LEGACY[1], ttl_s=7200))  # superseded ...
            await submit(DispatchRequest(mw=-1.5, asset_id=LEGACY[1], ttl_s=7200))  # ... by this, delivered later
        elif kind == "restart_headend":
            await headend.ctx.store.flushed()  # an orderly restart: history written, then stop
            network.accept_channel = None
            headend_scope.cancel()
            network.cut_all()
            await trio.sleep(60)
            headend_scope, headend = await start_headend()
        elif kind == "restart_agent":
            scope, _ = sites["gw"]
            scope.cancel()
            await trio.sleep(30)
            sites["gw"] = await start_site("gw", 99)
        else:
            asset_id = rng.choice(all_assets + [None])
            if asset_id is None:
                req = DispatchRequest(mw=round(rng.uniform(-10, 10), 3), site_id=RIDGEWAY, ttl_s=rng.choice([60, 600, 3600]))
            else:
                a = inv.asset(asset_id)
                req = DispatchRequest(mw=round(rng.uniform(a.min_mw, a.max_mw), 3), asset_id=asset_id,
                                      ttl_s=rng.choice([60, 600, 3600]))
            await submit(req)
    await trio.sleep_until(7 * DAY + 1800)  # the links are up: backfill and acks settle
    produced = {a: site.snapshot(a).seq for name, (_, site) in sites.items() for a in assets_by_agent[name]}
    await trio.sleep(60)  # points produced up to `produced` are all stored by now
    await headend.ctx.store.flushed()

    # 1. Every point generated at the edge is stored exactly once.
    for asset_id, last_seq in produced.items():
        seqs = sorted(storage.seqs(asset_id))  # the store keys points by (asset, seq): none is there twice
        assert seqs[:last_seq] == list(range(1, last_seq + 1)), f"{asset_id}: gaps below seq {last_seq}"
        assert last_seq >= 7 * DAY / 4  # it really produced a week of points
    assert headend.ctx.store.counters.dropped_points == 0
    # 2-3. No dispatch is unfinished; none was delivered after its TTL.
    views = [storage.dispatch(d) for d in submitted]
    assert all(v is not None and v.lifecycle.state.terminal for v in views)
    for v in views:
        for t in v.lifecycle.history:
            if t.state is S.SENT:
                assert t.at < v.expires_at, v.dispatch_id
    outcomes = {st: sum(v.lifecycle.state is st for v in views) for st in S}
    assert outcomes[S.APPLIED] > 20 and outcomes[S.EXPIRED] >= 3 and outcomes[S.SUPERSEDED] >= 3, outcomes
    # 4. Each asset holds the setpoint of the last dispatch applied to it.
    last_applied: dict[str, float] = {}
    for v in sorted((v for v in views if v.lifecycle.state is S.APPLIED), key=lambda v: v.lifecycle.history[-1].at):
        for alloc in v.allocations or ():
            last_applied[alloc.asset_id] = alloc.mw
        if v.mode == "asset":
            last_applied[v.asset_id] = v.applied_mw
    assert len(last_applied) > 5
    for name, (_, site) in sites.items():
        for asset_id in assets_by_agent[name]:
            if asset_id in last_applied:
                assert site.snapshot(asset_id).state.setpoint_mw == pytest.approx(last_applied[asset_id]), asset_id
    print(f"seven simulated days in {time.perf_counter() - began:.1f} s real time; outcomes "
          + ", ".join(f"{st.value}={n}" for st, n in outcomes.items() if n))
