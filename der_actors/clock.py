"""Wall-clock timestamps that follow trio's clock.

`WallClock.now()` is `offset + trio.current_time()`: calibrated once against `time.time()` in a real
process, or pinned to a fixed epoch under trio's MockClock so tests see exact, repeatable timestamps.
"""

from __future__ import annotations

import time

import attrs
import trio


@attrs.frozen
class WallClock:
    offset: float

    @classmethod
    def calibrated(cls) -> WallClock:
        return cls(time.time() - trio.current_time())

    @classmethod
    def pinned(cls, epoch: float) -> WallClock:
        """`now()` == epoch at trio time 0 (use inside a MockClock run)."""
        return cls(epoch)

    def now(self) -> float:
        return self.offset + trio.current_time()
