"""Restart intensity, as in OTP supervisors (pure; the supervisor loop lives in actors/supervise.py).

A child may crash and be restarted; more than `max_restarts` crashes within `window_s` means the
fault is not transient, so the supervisor gives up and lets the failure propagate.
"""

from __future__ import annotations

from collections import deque

import attrs


class RestartLimitExceeded(RuntimeError):
    pass


@attrs.define
class RestartIntensity:
    max_restarts: int = 5
    window_s: float = 60.0
    backoff_initial_s: float = 0.1
    backoff_cap_s: float = 5.0
    _crashes: deque[float] = attrs.field(factory=deque)

    def record_crash(self, now: float) -> float:
        """Note a crash at `now`; return the delay before restarting, or raise when over the limit."""
        self._crashes.append(now)
        while self._crashes and self._crashes[0] <= now - self.window_s:
            self._crashes.popleft()
        if len(self._crashes) > self.max_restarts:
            raise RestartLimitExceeded(
                f"{len(self._crashes)} crashes within {self.window_s:g} s (limit {self.max_restarts})"
            )
        # Back off a little more for each recent crash, so a crash loop does not spin.
        return min(self.backoff_cap_s, self.backoff_initial_s * 2 ** (len(self._crashes) - 1))
