"""The site supervisor: one actor per asset, the metronome and the uplink, in one nursery.

Supervision (see der_actors/actors/supervise.py for the policy): every asset actor and the uplink run
under `supervise`, so one crashing asset never takes down its siblings or the link; a crash loop beyond
the restart intensity propagates and stops the process (that is our bug, and hiding it would be worse).

All assets tick on one grid (first tick at start + interval), driven by the site's metronome, so the
uplink spools and sends one TelemetryBatch per tick for the whole site. The metronome is not under
`supervise`: a tick's exception is the asset actor's (edge/metronome.py), and a restarted metronome
would tick off the grid; anything else failing in it is our bug and stops the site.

The site's persistent state (`EdgeState`: spool and setpoint outcomes, in EDGE_SPOOL_DIR) is opened
before the actors exist, because each asset's seq goes on from the spool's high-water mark.
"""

from __future__ import annotations

import contextlib
import functools
import random
from collections.abc import Mapping

import structlog
import trio

from der_actors.actors.supervise import supervise
from der_actors.clock import WallClock
from der_actors.messages import Telemetry
from edge.asset import AssetActor, AssetHandle, AssetSnapshot
from edge.config import EdgeConfig
from edge.link import Dial, LinkStats, Uplink
from edge.metronome import run_metronome
from edge.spool import Spool
from edge.state import EdgeState

__all__ = ["SiteHandle", "run_site"]

log = structlog.get_logger("der.edge")

# The site's telemetry channel holds a few ticks (one list of points each): the uplink only spools them
# (a small write), so this is slack for a slow disk, not for the link.
TELEMETRY_TICKS_BUFFERED = 4


class SiteHandle:
    """What a running site exposes: its config, its asset handles and the link's counters."""

    def __init__(self, config: EdgeConfig, assets: Mapping[str, AssetHandle], stats: LinkStats,
                 spool: Spool) -> None:
        self.config = config
        self.assets = assets  # asset_id -> AssetHandle, in inventory order
        self.stats = stats
        self.spool = spool  # read it freely (pending(), dropped(), ...); only the uplink changes it

    def snapshot(self, asset_id: str) -> AssetSnapshot:
        return self.assets[asset_id].snapshot


async def run_site(
    config: EdgeConfig,
    dial: Dial,
    *,
    clock: WallClock | None = None,
    rng: random.Random | None = None,
    state: EdgeState | None = None,
    task_status: trio.TaskStatus[SiteHandle] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the site until cancelled. `task_status.started(SiteHandle)` once the asset actors exist.

    `state`: the spool and outcomes, opened and closed by the caller (der-edge opens them in a worker
    thread). When None they are opened here, inline, and closed on the way out: under MockClock a
    worker thread would let the clock jump ahead while the scan runs, so tests open it this way.
    """
    clock = clock or WallClock.calibrated()
    rng = rng or random.Random()
    if state is not None:
        await _run(config, dial, clock, rng, state, task_status)
        return
    state = EdgeState.open(config)  # blocking, on purpose: see above
    try:
        await _run(config, dial, clock, rng, state, task_status)
    finally:
        state.close()


async def _run(config: EdgeConfig, dial: Dial, clock: WallClock, rng: random.Random, state: EdgeState,
               task_status: trio.TaskStatus[SiteHandle]) -> None:
    spool = state.spool
    stats = LinkStats()
    first_tick = trio.current_time() + config.telemetry_interval_s
    telemetry_send, telemetry_recv = trio.open_memory_channel[list[Telemetry]](TELEMETRY_TICKS_BUFFERED)

    with contextlib.ExitStack() as owned:
        owned.enter_context(telemetry_send)
        owned.enter_context(telemetry_recv)
        actors = [
            AssetActor(asset, clock=clock, last_seq=spool.high_seq(asset.id),
                       held_setpoint_mw=state.outcomes.held.get(asset.id))
            for asset in config.assets
        ]
        for actor in actors:
            owned.callback(actor.close)
        handles = {a.handle.asset.id: a.handle for a in actors}
        uplink = Uplink(config, dial, handles, telemetry_recv, spool=spool, outcomes=state.outcomes,
                        clock=clock, rng=rng, stats=stats)

        log.info("site_starting", site_id=config.site_id, site_name=config.site_name,
                 agent_id=config.agent_id, assets=len(actors), headend=config.headend, spool=config.spool_dir,
                 mode="gateway" if config.gateway_mode else "single-asset")
        async with trio.open_nursery() as nursery:
            for actor in actors:
                nursery.start_soon(supervise, f"asset:{actor.handle.asset.id}", actor.run)
            nursery.start_soon(functools.partial(
                run_metronome, list(handles.values()), telemetry_send, first_tick_at=first_tick,
                interval_s=config.telemetry_interval_s, on_drop=stats.drop))
            nursery.start_soon(supervise, "uplink", uplink.run)
            # The actors' mailboxes exist already, so requests sent now simply wait their turn.
            task_status.started(SiteHandle(config, handles, stats, spool))
