"""Supervision, named and in one place (DESIGN.md section 3, rule 7).

Policies:
- `supervise` (one-for-one, transient): the child is restarted after an `Exception`, with a growing
  delay, until it crashes more than the intensity allows within the window; then the error
  propagates and the parent's nursery decides (for the headend and the edge site: the process stops,
  because a crash loop there is our bug and hiding it would be worse). A child that returns normally
  is not restarted. Cancellation is never caught.
- Asset actors (headend and edge) run under `supervise`: one crashing asset never takes down its
  siblings. Sessions and dispatches are not restarted: a session's failure ends that stream (the agent
  reconnects) and a dispatch's failure is recorded as its outcome; both log and never propagate.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog
import trio

from der_actors.restart import RestartIntensity

log = structlog.get_logger("der.supervise")


async def supervise(
    name: str,
    child: Callable[[], Awaitable[None]],
    intensity: RestartIntensity | None = None,
) -> None:
    """Run `child()` and restart it after a crash, within the restart intensity."""
    intensity = intensity or RestartIntensity()
    while True:
        try:
            await child()
            return
        except Exception as exc:
            delay = intensity.record_crash(trio.current_time())  # raises when over the limit
            log.error("actor_crashed", actor=name, error=repr(exc), restart_in_s=round(delay, 3))
        await trio.sleep(delay)
        log.info("actor_restarted", actor=name)
