"""The loop-lag monitor: wakes every `period_s` and records how late it woke (`der_actors.loop_lag`).

A stall (`LagWindow.stall_s` late or more) is logged with the collections in the period it fell
in, and the milliseconds they took: those say whether the garbage collector was the stall. Under
sustained overload every wake-up is a stall: one line per STALL_LOG_EVERY_S, counting the rest.
"""

from __future__ import annotations

import math

import structlog
import trio

from der_actors.gc_times import timing_gc
from der_actors.loop_lag import LagWindow

log = structlog.get_logger("der.loop")

PERIOD_S = 0.1  # ten wake-ups a second: nothing next to a loaded loop, fine enough to see a stall
STALL_LOG_EVERY_S = 10.0


async def run_lag_monitor(lag: LagWindow, period_s: float = PERIOD_S) -> None:
    with timing_gc() as gc_times:
        before = gc_times.snapshot()
        log_after = -math.inf
        unlogged = 0
        while True:
            due = trio.current_time() + period_s
            await trio.sleep_until(due)
            now = trio.current_time()
            after = gc_times.snapshot()
            stall = lag.add(now, now - due, after - before)
            before = after
            if stall is None:
                continue
            unlogged += 1
            if now >= log_after:
                log.warning("event_loop_stalled", late_ms=round(stall.late_s * 1e3, 1),
                            gc_collections=list(stall.gc.collections),
                            gc_ms=[round(s * 1e3, 1) for s in stall.gc.seconds], stalls=unlogged)
                log_after, unlogged = now + STALL_LOG_EVERY_S, 0
