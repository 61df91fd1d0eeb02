"""The uplink's counters: written by the uplink (and by the metronome for overflow drops); read freely."""

from __future__ import annotations

import attrs

__all__ = ["LinkStats"]


@attrs.define
class LinkStats:
    dial_attempts: int = 0
    connect_failures: int = 0
    sessions_started: int = 0  # dials that connected
    sessions_registered: int = 0
    batches_sent: int = 0
    points_sent: int = 0  # live, backfill and resends
    points_backfilled: int = 0  # of which read back from the spool (backfill and resends)
    points_resent: int = 0  # unacknowledged for too long in a session, queued again
    points_acked: int = 0  # newly acknowledged by the headend
    points_discarded: int = 0  # spooled for an asset the headend refused
    points_dropped: int = 0  # dropped by the spool when full, or by the metronome on overflow
    spool_write_errors: int = 0  # batches the spool could not write (sent live only, if linked)
    setpoints_received: int = 0
    setpoints_applied: int = 0
    setpoints_rejected: int = 0
    setpoints_duplicate: int = 0
    last_disconnect_reason: str = ""

    def drop(self, n: int) -> None:
        self.points_dropped += n
