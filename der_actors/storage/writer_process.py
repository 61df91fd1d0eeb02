"""An SQL engine whose writes run in a process of its own (`STORAGE_WRITER=process`, the default).

Why a process: under live telemetry the headend's Python is one core (the GIL), and an engine's
writer thread holds that core while it binds each row's parameters (SQLite, in C, in one stretch
per 1,000-row statement) or builds COPY rows (PostgreSQL). With no telemetry insert at all the
headend took in the live flood ~30 % faster (`bench --only ingest`, two interleaved rounds): that
share was the writer's, paid by the trio thread. In a child process the writer has an interpreter
of its own; the headend only `marshal`s a batch's rows (~0.2 us a row, in C) into a pipe and waits
in a worker thread, without the GIL, for the answer.

The child owns the engine's writer connection and does every write: `open`, `write`,
`save_inventory`, `reset`, `prune`, one request at a time (the engine's mutex, here as there).
Reads stay in this process, on the engine's reader connections, as before. The engine's errors
come back as they are raised (`StorageUnavailable`: retried by the store; anything else: the rows
refused), so the store actor cannot tell the difference.

If the child dies (killed, out of memory), the request in flight raises `StorageUnavailable`: the
store keeps its rows and retries, and the next request starts a new child, which connects,
migrates and re-applies the inventory as a reconnect does. A batch the dead child committed before
it could answer is written again and changes nothing (telemetry by its (asset, seq) key, records by
their ids, heartbeats by their key). The child ignores SIGINT (a Ctrl-C reaches the whole process
group, and the headend's last flush still needs it); it ends when the headend closes the pipe, or
dies. A SIGTERM to the group ends it: the next request starts another.
"""

from __future__ import annotations

import marshal
import pickle
import signal
import subprocess
import sys
import threading
from multiprocessing.connection import Connection, Pipe
from typing import Any

import structlog

from der_actors import logs
from der_actors.model import Inventory
from der_actors.storage.base import HeartbeatRow, StoredPoint, StorageUnavailable, WriteBatch
from der_actors.storage.sql import SqlStorage
from der_actors.views import DispatchView, SessionSummary

log = structlog.get_logger("der.storage")


class WriterProcess:
    """The `Storage` of `engine_type(**engine_args)` (an `SqlStorage`), its writes done by a child."""

    blocking = True

    def __init__(self, engine_type: type[SqlStorage], engine_args: dict[str, Any], *, log_format: str = "kv") -> None:
        self._engine = (engine_type, engine_args, log_format)
        self._reads = engine_type(**engine_args)  # its reader pool only: it never opens its writer
        self.describe = self._reads.describe
        self._lock = threading.Lock()
        self._child: subprocess.Popen | None = None
        self._pipe: Connection | None = None
        # what a new child must know to carry on from the last one (`SqlStorage.restore`)
        self._inventory: Inventory | None = None
        self._reset_pending = False
        self._closed = False

    @property
    def pid(self) -> int | None:
        """The writer process's, while one runs."""
        return self._child.pid if self._child is not None else None

    # --- writes: in the child ------------------------------------------------------------------

    def open(self, *, reset: bool = False) -> None:
        self._reset_pending = reset
        self._request("open", reset=reset)

    def write(self, batch: WriteBatch) -> int:
        return self._request("write", batch)

    def save_inventory(self, inventory: Inventory) -> None:
        self._inventory = inventory  # re-applied by every later child, even if this request fails
        self._request("save_inventory", inventory)

    def reset(self) -> None:
        self._request("reset")

    def prune(self, before: float, max_rows: int) -> int:
        return self._request("prune", before, max_rows)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._stop_child()
        self._reads.close()

    # --- reads: here, on the engine's reader connections ------------------------------------

    def telemetry_history(self, asset_id: str, since: float | None, until: float | None, limit: int) -> list[StoredPoint]:
        return self._reads.telemetry_history(asset_id, since, until, limit)

    def dispatch(self, dispatch_id: str) -> DispatchView | None:
        return self._reads.dispatch(dispatch_id)

    def dispatch_history(self, asset_id: str | None, site_id: str | None, limit: int) -> list[DispatchView]:
        return self._reads.dispatch_history(asset_id, site_id, limit)

    def open_dispatches(self) -> list[DispatchView]:
        return self._reads.open_dispatches()

    def sessions(self, asset_id: str, limit: int) -> list[SessionSummary]:
        return self._reads.sessions(asset_id, limit)

    def heartbeats(self, asset_id: str, limit: int) -> list[HeartbeatRow]:
        return self._reads.heartbeats(asset_id, limit)

    def count_telemetry(self) -> int:
        return self._reads.count_telemetry()

    # --- the pipe ------------------------------------------------------------------------------

    def _request(self, op: str, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            if self._closed:
                raise StorageUnavailable(f"{self.describe}: storage closed")
            if op == "write":  # the rows as marshal (C, ~0.2 us a row), the few records pickled
                batch = args[0]
                frames = [pickle.dumps((op, (batch.dispatches, batch.sessions, batch.heartbeats), {})),
                          marshal.dumps(batch.points)]  # a value marshal cannot take raises here: refused
            else:
                frames = [pickle.dumps((op, args, kwargs))]
            try:
                pipe = self._pipe if self._child is not None and self._child.poll() is None else self._start_child()
                for frame in frames:
                    pipe.send_bytes(frame)
                ok, result = pickle.loads(pipe.recv_bytes())
            except (EOFError, OSError) as exc:  # it died, or could not be started: the store retries
                code = self._stop_child()
                raise StorageUnavailable(f"{self.describe}: the writer process ended (exit code {code}): {exc!r}") from exc
            if not ok:
                raise result
            self._reset_pending = False  # the child connected (every request does first)
            return result

    def _start_child(self) -> Connection:
        """A new child (`python -m der_actors.storage.writer_process FD`: a fresh interpreter, ~0.3 s
        to start, not a fork of this multi-threaded process), told what the last one knew."""
        self._stop_child()
        ours, theirs = Pipe()
        try:
            child = subprocess.Popen([sys.executable, "-m", __name__, str(theirs.fileno())], pass_fds=[theirs.fileno()])
        finally:
            theirs.close()
        self._child, self._pipe = child, ours  # reaped by `_stop_child` even if the line below fails
        ours.send_bytes(pickle.dumps((*self._engine, self._inventory, self._reset_pending)))
        log.info("storage_writer_started", database=self.describe, pid=child.pid)
        return ours

    def _stop_child(self) -> int | None:
        """Close the pipe (the child ends after what it is doing) and reap it; its exit code."""
        child, pipe = self._child, self._pipe
        self._child = self._pipe = None
        if pipe is not None:
            pipe.close()
        if child is None:
            return None
        try:
            return child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            return child.wait()


def _serve(pipe: Connection) -> None:
    """The child: the engine's writes, one request at a time, until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    engine_type, engine_args, log_format, inventory, reset_pending = pickle.loads(pipe.recv_bytes())
    logs.configure(log_format)
    engine: SqlStorage = engine_type(**engine_args)
    engine.restore(inventory, reset=reset_pending)
    try:
        while True:
            try:
                op, args, kwargs = pickle.loads(pipe.recv_bytes())
                if op == "write":
                    dispatches, sessions, heartbeats = args
                    args = (WriteBatch(marshal.loads(pipe.recv_bytes()), dispatches, sessions, heartbeats),)
            except EOFError:
                return
            try:
                reply = (True, getattr(engine, op)(*args, **kwargs))
            except Exception as exc:
                reply = (False, exc)
            try:
                data = pickle.dumps(reply)
            except Exception:  # an error that does not pickle: its type and text
                data = pickle.dumps((False, RuntimeError(f"{type(reply[1]).__name__}: {reply[1]}")))
            pipe.send_bytes(data)
    finally:
        engine.close()


if __name__ == "__main__":
    _serve(Connection(int(sys.argv[1])))
