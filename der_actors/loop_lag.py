"""How late the headend's event loop runs (pure).

Every actor shares one trio thread, so when intake outgrows a core, every hop of a dispatch waits
behind it; the loop's lateness is the figure that says so, before anything else degrades. A
monitor task sleeps in short periods and reports how late it woke (`actors/lag_monitor.py`);
`/health` shows the last figure, the worst of the last minute and how many wake-ups were stalls
(`STALL_S` late or more); the monitor logs a stall with what the garbage collector did meanwhile.
"""

from __future__ import annotations

from collections import deque

import attrs

from der_actors.gc_times import GcSnapshot

STALL_S = 0.1  # a wake-up this late is a stall: five times a dispatch's p99 target, waited out by every hop


@attrs.frozen
class Stall:
    at: float  # trio time of the late wake-up
    late_s: float
    gc: GcSnapshot  # the collections in the period it fell in, and the seconds they took


_NO_GC = GcSnapshot((0, 0, 0), (0.0, 0.0, 0.0))


@attrs.define
class LagWindow:
    window_s: float = 60.0
    stall_s: float = STALL_S
    last_s: float = 0.0
    stalls: int = 0  # since start
    last_stall: Stall | None = None
    # (time, lateness), lateness strictly decreasing from the front: the front is the window's
    # worst, and a sample that a later, larger one outlives can never be the worst again
    _worst: deque[tuple[float, float]] = attrs.field(factory=deque)

    def add(self, now: float, late_s: float, gc: GcSnapshot = _NO_GC) -> Stall | None:
        """Record a wake-up `late_s` late; `gc`: what the collector did since the last one. The
        stall it was, if it was one."""
        self.last_s = late_s
        while self._worst and self._worst[-1][1] <= late_s:
            self._worst.pop()
        self._worst.append((now, late_s))
        self._expire(now)
        if late_s < self.stall_s:
            return None
        self.stalls += 1
        self.last_stall = Stall(now, late_s, gc)
        return self.last_stall

    def worst_s(self, now: float) -> float:
        """The largest lateness recorded in the last `window_s` (0 when none)."""
        self._expire(now)
        return self._worst[0][1] if self._worst else 0.0

    def _expire(self, now: float) -> None:
        while self._worst and self._worst[0][0] < now - self.window_s:
            self._worst.popleft()
