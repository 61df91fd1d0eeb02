"""Run a whole headend: actors, the agent gRPC server and the REST server, in one trio nursery."""

from __future__ import annotations

import functools

import attrs
import structlog
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as serve_http

from der_actors.actors.context import HeadendConfig
from der_actors.actors.headend import Headend, run_headend
from der_actors.actors.lag_monitor import run_lag_monitor
from der_actors.clock import WallClock
from der_actors.config import HeadendSettings
from der_actors.model import Inventory
from der_actors.storage.base import Storage
from der_actors.transport.grpc_server import IntakeTurns, serve_agents
from der_actors.transport.rest import create_app

log = structlog.get_logger("der.headend")


@attrs.frozen
class RunningHeadend:
    headend: Headend
    http_url: str
    grpc_port: int


async def run_server(
    settings: HeadendSettings,
    inventory: Inventory,
    storage: Storage,
    *,
    shutdown: trio.Event | None = None,
    task_status: trio.TaskStatus[RunningHeadend] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until `shutdown` is set (then stop accepting, flush history for up to 5 s, and return)."""
    shutdown = shutdown if shutdown is not None else trio.Event()
    config = HeadendConfig(
        heartbeat_timeout_s=settings.heartbeat_timeout_s,
        dispatch_ack_timeout_s=settings.dispatch_ack_timeout_s,
        dispatch_ttl_s=settings.dispatch_ttl_s,
    )
    async with trio.open_nursery() as nursery:
        headend = await nursery.start(
            functools.partial(run_headend, retention_days=settings.telemetry_retention_days),
            config, inventory, storage, WallClock.calibrated(),
        )
        nursery.start_soon(run_lag_monitor, headend.ctx.loop_lag)
        async with trio.open_nursery() as front:  # the doors: closed on shutdown once the sessions have ended
            intake = IntakeTurns()
            stop_accepting = trio.Event()  # set first on shutdown: the agent port is closed
            grpc_port = await front.start(functools.partial(
                serve_agents, settings.grpc_host, settings.grpc_port, headend.accept.clone(), headend.ctx.clock,
                intake=intake, stop_accepting=stop_accepting))
            http = HypercornConfig()
            http.bind = [f"{settings.http_host}:{settings.http_port}"]
            http.accesslog = None
            http.errorlog = None
            binds = await front.start(serve_http, create_app(headend, intake), http)
            running = RunningHeadend(headend, binds[0], grpc_port)
            log.info("headend_started", http=running.http_url, grpc=f"{settings.grpc_host}:{grpc_port}",
                     assets=len(inventory.assets), sites=len(inventory.sites), dispatch_ttl_s=config.dispatch_ttl_s)
            task_status.started(running)
            await shutdown.wait()
            log.info("headend_stopping")
            stopping_at = trio.current_time()
            # The agent port closes first (a dial is refused: the agents back off), then the sessions
            # end while their streams are up, so each record says why and each agent sees its stream
            # end cleanly; then the doors close. (Cutting the streams first recorded "stream closed",
            # or no end at all.)
            stop_accepting.set()
            open_sessions = await _close_sessions(headend, deadline_s=2)
            sessions_closed_at = trio.current_time()
            front.cancel_scope.cancel()
        with trio.move_on_after(5):
            await headend.ctx.store.flushed()
        log.info("headend_stopped", sessions_open=open_sessions, close_sessions_s=round(sessions_closed_at - stopping_at, 3),
                 flush_s=round(trio.current_time() - sessions_closed_at, 3),
                 unflushed_points=headend.ctx.store.buffered_points)
        for asset in headend.ctx.assets.values():
            asset.close()  # they end on their own before the cancel below reaches them
        nursery.cancel_scope.cancel()


async def _close_sessions(headend: Headend, deadline_s: float) -> int:
    """End every session with a reason, so their records say why (before the last history flush).
    Returns how many there were."""
    directory = headend.ctx.directory
    sessions = list(directory.sessions.values())
    for session in sessions:
        session.close("headend shutting down")
    with trio.move_on_after(deadline_s):
        while directory.sessions:
            await trio.sleep(0.01)
    return len(sessions)
