"""The site's metronome: one timer for every asset's telemetry tick.

All of a site's assets sample on one grid (first tick at start + interval). Rather than a timer per
asset actor (N wake-ups and N cancel scopes per tick, most of a site's CPU when it is idle otherwise),
one task wakes per grid instant, asks every online asset for its point (`AssetHandle.tick`: a
synchronous physics step) and sends the site's points to the uplink as one list, so a tick costs one
wake-up and one channel hop whatever the site's size.

A tick that raises crashes that asset's actor, not the metronome (see `AssetHandle.tick`); an asset
between a crash and its restart is skipped, so its seq simply goes on after the restart. When the
uplink's channel is full (its spool write is stuck: should not happen) the tick is dropped and counted.
A stalled process skips the ticks it missed rather than bursting them: the grid stays the grid.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import structlog
import trio

from der_actors.messages import Telemetry
from edge.asset import AssetHandle

__all__ = ["run_metronome"]

log = structlog.get_logger("der.edge")


def next_tick_after(tick_at: float, interval_s: float, now: float) -> float:
    """The first grid instant after `now`, on the grid through `tick_at`."""
    tick_at += interval_s
    while tick_at <= now:
        tick_at += interval_s
    return tick_at


async def run_metronome(
    assets: Sequence[AssetHandle],
    telemetry: trio.MemorySendChannel[list[Telemetry]],
    *,
    first_tick_at: float,
    interval_s: float,
    on_drop: Callable[[int], None],
) -> None:
    """Tick until cancelled (or until the uplink's end of `telemetry` is closed)."""
    tick_at = first_tick_at
    while True:
        await trio.sleep_until(tick_at)
        points = [p for p in (a.tick() for a in assets if a.snapshot.online) if p is not None]
        if points:
            try:
                telemetry.send_nowait(points)
            except trio.WouldBlock:
                on_drop(len(points))
                log.warning("telemetry_overflow", points=len(points), tick_at=tick_at)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # the uplink is gone: the site is shutting down
        tick_at = next_tick_after(tick_at, interval_s, trio.current_time())
