"""Setpoint outcomes that survive an agent restart: `OutcomeCache` plus an append-only file.

`setpoints.log` in the spool directory holds one JSON line per final outcome (applied or rejected).
Opening it replays the lines into the cache (the last `capacity` ids win; a torn last line from a
crash is skipped). An outcome is written before its ack is sent, so a setpoint the headend resends
after an agent restart is answered with the earlier outcome and not applied a second time. When
the file holds twice `capacity` lines it is rewritten with the cache's content (tmp + os.replace).

Writes are one short line each (setpoints are rare), done inline; rewriting happens once per
`capacity` setpoints and is a few hundred KB at most.
"""

from __future__ import annotations

import json
import os

import structlog

from der_actors.messages import AckState, Allocation, SetpointAck
from edge.setpoints import OutcomeCache

__all__ = ["OutcomeStore"]

log = structlog.get_logger("der.edge")


def _to_line(ack: SetpointAck) -> bytes:
    record = {
        "id": ack.setpoint_id,
        "state": ack.state.value,
        "message": ack.message,
        "allocations": [[a.asset_id, a.mw] for a in ack.allocations],
    }
    return (json.dumps(record, separators=(",", ":")) + "\n").encode()


def _from_line(line: bytes) -> SetpointAck:
    r = json.loads(line)
    return SetpointAck(r["id"], AckState(r["state"]), r["message"],
                       tuple(Allocation(a, float(mw)) for a, mw in r["allocations"]))


class OutcomeStore:
    """`get` / `put` like OutcomeCache; `put` also appends to the file."""

    def __init__(self, path: str, capacity: int = 1024) -> None:
        self.path = path
        self._cache = OutcomeCache(capacity)
        self._lines = 0
        self._fd = -1

    @classmethod
    def open(cls, path: str, capacity: int = 1024) -> OutcomeStore:
        """Load the file (blocking, small) and open it for appending."""
        store = cls(path, capacity)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            data = b""
        lines = data.splitlines()
        for i, line in enumerate(lines):
            try:
                store._cache.put(_from_line(line))
            except (ValueError, KeyError, TypeError):
                log.warning("setpoint_outcome_unreadable", path=path, line=i + 1)
        store._lines = len(lines)
        store._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        if data and not data.endswith(b"\n"):
            os.write(store._fd, b"\n")  # end a torn last line so the next record starts cleanly
        return store

    def get(self, setpoint_id: str) -> SetpointAck | None:
        return self._cache.get(setpoint_id)

    def put(self, ack: SetpointAck) -> None:
        self._cache.put(ack)
        os.write(self._fd, _to_line(ack))
        self._lines += 1
        if self._lines > 2 * self._cache.capacity:
            self._rewrite()

    def __len__(self) -> int:
        return len(self._cache)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _rewrite(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "wb") as f:
            for ack in self._cache.acks():
                f.write(_to_line(ack))
        os.replace(tmp, self.path)
        os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND, 0o644)
        self._lines = len(self._cache)
