"""Reconnect delays: exponential backoff with full jitter (pure; the caller sleeps).

Full jitter (a uniform draw in [0, cap_n]) spreads a reconnect storm of many agents evenly over
the window instead of having them all retry in lock-step.

A refused dial (nothing listening: the headend is restarting) has a lower ceiling, `refused_cap_s`:
a refused connect costs the headend nothing (the kernel answers it), and once it listens again the
agents should be back within seconds, not after a delay that grew while it was down. Anything that
reached the headend (a session that failed, a register that timed out) keeps the full ceiling.
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
    refused_cap_s: float = 5.0

    def ceiling(self, *, refused: bool = False) -> float:
        """The upper bound of the next delay: initial doubling per attempt, capped."""
        cap = min(self.cap_s, self.refused_cap_s) if refused else self.cap_s
        return min(cap, self.initial_s * (2 ** min(self.attempt, 62)))

    def next_delay(self, *, refused: bool = False) -> float:
        """The delay before the next dial; `refused`: the last dial found nothing listening."""
        delay = self.rng.uniform(0.0, self.ceiling(refused=refused))
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
