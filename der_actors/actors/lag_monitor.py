"""The loop-lag monitor: wakes every `period_s` and records how late it woke (`der_actors.loop_lag`)."""

from __future__ import annotations

import trio

from der_actors.loop_lag import LagWindow

PERIOD_S = 0.1  # ten wake-ups a second: nothing next to a loaded loop, fine enough to see a stall


async def run_lag_monitor(lag: LagWindow, period_s: float = PERIOD_S) -> None:
    while True:
        due = trio.current_time() + period_s
        await trio.sleep_until(due)
        now = trio.current_time()
        lag.add(now, now - due)
