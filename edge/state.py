"""What an agent keeps in its spool directory: the telemetry spool and the setpoint outcomes."""

from __future__ import annotations

import os

import attrs

from edge.config import EdgeConfig
from edge.outcomes import OutcomeStore
from edge.spool import Spool

__all__ = ["EdgeState"]


@attrs.frozen
class EdgeState:
    spool: Spool
    outcomes: OutcomeStore

    @classmethod
    def open(cls, config: EdgeConfig) -> EdgeState:
        """Blocking: scans the spool (seconds for a full 64 MB one). `Spool.open` locks the directory."""
        spool = Spool.open(config.spool_dir, max_bytes=config.spool_max_bytes)
        try:
            outcomes = OutcomeStore.open(os.path.join(config.spool_dir, "setpoints.log"))
        except BaseException:
            spool.close()
            raise
        return cls(spool, outcomes)

    def close(self) -> None:
        try:
            self.outcomes.close()
        finally:
            self.spool.close()
