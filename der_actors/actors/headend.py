"""The root supervisor: wires the headend's actors together and hands transports a way in.

Start order is dependency order, each with `nursery.start` so nothing is used before it is ready:
store (which saves the inventory and reads each asset's recent sessions), directory, dispatch
supervisor, one actor per configured asset (seeded with those sessions), then the session manager.
Asset actors are the exception: their handles work before their loops run (the inbox queues), so
they are created synchronously and started with `start_soon`, not one `nursery.start` round each.
Transports (gRPC, in-memory) get a clone of `accept` and send it one `AgentConnection` per stream.
"""

from __future__ import annotations

import attrs
import structlog
import trio

from der_actors.actors.asset import SESSIONS_KEPT, open_asset
from der_actors.actors.context import HeadendConfig, HeadendContext
from der_actors.actors.directory import run_directory
from der_actors.actors.dispatch import DispatchBook, run_dispatch_supervisor
from der_actors.actors.session import acknowledge_stored, run_session_manager
from der_actors.actors.store import StoreActor
from der_actors.clock import WallClock
from der_actors.loop_lag import LagWindow
from der_actors.model import Inventory
from der_actors.storage.base import Storage
from der_actors.transport.link import AgentConnection
from der_actors.views import SessionSummary

log = structlog.get_logger("der.headend")

# New streams waiting for a session actor; sessions start in microseconds, so this only absorbs a
# reconnect storm's burst.
ACCEPT_BACKLOG = 256


@attrs.frozen
class Headend:
    ctx: HeadendContext
    accept: trio.MemorySendChannel[AgentConnection]


async def run_headend(
    config: HeadendConfig,
    inventory: Inventory,
    storage: Storage,
    clock: WallClock,
    *,
    retention_days: float | None = None,
    task_status: trio.TaskStatus[Headend] = trio.TASK_STATUS_IGNORED,
) -> None:
    """`retention_days`: prune telemetry older than this (None: keep it)."""
    accept_send, accept_recv = trio.open_memory_channel[AgentConnection](ACCEPT_BACKLOG)
    async with accept_send, trio.open_nursery() as nursery:
        retention_s = retention_days * 86_400 if retention_days else None
        store = await nursery.start(StoreActor(storage, retention_s=retention_s, now=clock.now).run)
        recent = await store.startup_sessions(inventory, SESSIONS_KEPT)
        recent, unclosed = ended_by_restart(recent, clock.now())
        for summary in unclosed:
            store.record_session(summary)
        directory = await nursery.start(run_directory)
        dispatches = await nursery.start(run_dispatch_supervisor)
        assets = {}
        for asset in inventory.assets:
            assets[asset.id], run_asset = open_asset(asset, recent.get(asset.id, ()))
            nursery.start_soon(run_asset)
        # measured by the process (server.py) on the real clock; a monitor waking ten times a second
        # would only slow a MockClock run down
        ctx = HeadendContext(config, inventory, clock, assets, directory, store, dispatches, LagWindow())
        dispatches.ctx = ctx
        store.stored_listeners.append(lambda points: acknowledge_stored(ctx, points))
        await resume_dispatches(store, dispatches)
        await nursery.start(run_session_manager, ctx, accept_recv)
        task_status.started(Headend(ctx, accept_send))


async def resume_dispatches(store: StoreActor, dispatches: DispatchBook) -> None:
    """Take up what a previous run left unfinished, before any agent connects, in submission order."""
    try:
        unfinished = await store.query(store.storage.open_dispatches)
    except Exception as exc:
        log.warning("dispatch_resume_failed", error=str(exc), consequence="unfinished dispatches stay as stored")
        return
    for view in unfinished:
        await dispatches.resume(view)
    if unfinished:
        log.info("dispatches_resumed", count=len(unfinished))


def ended_by_restart(
    recent: dict[str, list[SessionSummary]], now: float
) -> tuple[dict[str, tuple[SessionSummary, ...]], list[SessionSummary]]:
    """Sessions a previous run left open in the store ended with it; we record when we noticed."""
    closed: dict[str, SessionSummary] = {}
    seeded = {
        asset_id: tuple(
            s if s.disconnected_at is not None
            else closed.setdefault(s.session_id, attrs.evolve(s, disconnected_at=now, reason="headend restarted"))
            for s in sessions
        )
        for asset_id, sessions in recent.items()
    }
    return seeded, list(closed.values())
