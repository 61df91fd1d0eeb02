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
    """`get` / `put` like OutcomeCache; `put` also appends to the file.

    It also keeps each asset's **held** setpoint (the last applied one with `duration_s` 0) in
    `held_setpoints.json`, so an agent restart puts the assets back where the operator left them: a
    real device keeps its setpoint when its gateway restarts, and so does our simulation. A timed
    setpoint is not restored (its remaining time is unknown; it reverts to no setpoint)."""

    def __init__(self, path: str, capacity: int = 1024) -> None:
        self.path = path
        self.held_path = os.path.join(os.path.dirname(path), "held_setpoints.json")
        self._cache = OutcomeCache(capacity)
        self._lines = 0
        self._fd = -1
        self.held: dict[str, float] = {}

    @classmethod
    def open(cls, path: str, capacity: int = 1024) -> OutcomeStore:
        """Load the file (blocking, small) and open it for appending."""
        store = cls(path, capacity)
        try:
            with open(store.held_path, "rb") as f:
                store.held = {str(k): float(v) for k, v in json.load(f).items()}
        except FileNotFoundError:
            pass
        except (ValueError, AttributeError):
            log.warning("held_setpoints_unreadable", path=store.held_path, consequence="assets start without a setpoint")
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

    def put(self, ack: SetpointAck, duration_s: float = 0.0) -> None:
        self._cache.put(ack)
        os.write(self._fd, _to_line(ack))
        self._lines += 1
        if self._lines > 2 * self._cache.capacity:
            self._rewrite()
        if ack.state is AckState.APPLIED and ack.allocations:
            for a in ack.allocations:
                if duration_s > 0:
                    self.held.pop(a.asset_id, None)
                else:
                    self.held[a.asset_id] = a.mw
            tmp = self.held_path + ".tmp"
            with open(tmp, "w") as f:  # a few dozen bytes per asset: inline, like the log line
                json.dump(self.held, f)
            os.replace(tmp, self.held_path)

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
