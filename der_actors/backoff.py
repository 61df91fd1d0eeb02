"""Reconnect delays: exponential backoff with full jitter (pure; the caller sleeps).

Full jitter (a uniform draw in [0, cap_n]) spreads a reconnect storm of many agents evenly over
the window instead of having them all retry in lock-step.
"""

from __future__ import annotations

import random

import attrs


@attrs.define
class Backoff:
    initial_s: float = 0.5
    cap_s: float = 30.0
    rng: random.Random = attrs.field(factory=random.Random)
    attempt: int = 0

    def ceiling(self) -> float:
        """The upper bound of the next delay: initial doubling per attempt, capped."""
        return min(self.cap_s, self.initial_s * (2 ** min(self.attempt, 62)))

    def next_delay(self) -> float:
        delay = self.rng.uniform(0.0, self.ceiling())
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
