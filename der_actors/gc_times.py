"""Time the cyclic garbage collector spends, per generation (`gc.callbacks`).

A collection runs inside whatever task step allocated past the threshold, and the whole loop waits
for it: when the loop-lag monitor sees a stall, what the collector took meanwhile says whether it
was the stall (`actors/lag_monitor.py` logs both).
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Iterator

import attrs


@attrs.define
class GcTimes:
    """Collections and seconds spent in them, per generation, while `timing_gc` runs."""

    collections: list[int] = attrs.field(factory=lambda: [0, 0, 0])
    seconds: list[float] = attrs.field(factory=lambda: [0.0, 0.0, 0.0])
    _started: float = 0.0

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            generation = info["generation"]
            self.collections[generation] += 1
            self.seconds[generation] += time.perf_counter() - self._started

    def snapshot(self) -> GcSnapshot:
        return GcSnapshot(tuple(self.collections), tuple(self.seconds))


@attrs.frozen
class GcSnapshot:
    collections: tuple[int, ...]  # per generation
    seconds: tuple[float, ...]

    def __sub__(self, earlier: GcSnapshot) -> GcSnapshot:
        """What the collector did between `earlier` and this one."""
        return GcSnapshot(tuple(a - b for a, b in zip(self.collections, earlier.collections)),
                          tuple(a - b for a, b in zip(self.seconds, earlier.seconds)))


@contextlib.contextmanager
def timing_gc() -> Iterator[GcTimes]:
    """Time every collection while the block runs."""
    times = GcTimes()
    gc.callbacks.append(times._callback)
    try:
        yield times
    finally:
        gc.callbacks.remove(times._callback)
