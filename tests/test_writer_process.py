"""The writer process (`storage/writer_process.py`) where it differs from a writer thread (its
death, signals to the process group), and the headend starting it while it parses its inventory
(`cli.load`). The storage suites run every engine through it too
(`storage_engines.py`: `sqlite+process`, `postgres+process`). Real SQLite, a real child process;
the waits are for a condition, bounded, and nothing asserts on timing."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time

import pytest

from der_actors import cli
from der_actors.config import ConfigError, load_settings
from der_actors.inventory import InventoryError, load_inventory
from der_actors.messages import Telemetry
from der_actors.storage import StorageConfigError, open_storage
from der_actors.storage.base import StorageUnavailable, WriteBatch
from der_actors.storage.rows import point_row
from der_actors.storage.writer_process import WriterProcess

INV = load_inventory("assets.yaml")
ASSET = INV.assets[0]


def rows(*seqs: int) -> list[tuple]:
    return [point_row(Telemetry(ASSET.id, ASSET.site_id, s, 1_800_000_000.0 + s, 0.5, 0.0), 1_800_000_000.5 + s)
            for s in seqs]


@pytest.fixture
def storage(tmp_path):
    s = open_storage(f"sqlite:///{tmp_path / 'h.sqlite3'}", reset=True, writer="process")
    assert isinstance(s, WriterProcess)
    s.save_inventory(INV)
    yield s
    s.close()


def stored_seqs(s: WriterProcess) -> list[int]:
    return sorted(sp.point.seq for sp in s.telemetry_history(ASSET.id, None, None, 100))


def test_a_writer_that_dies_mid_write_fails_that_write_as_unavailable_and_the_next_one_starts_another(storage, tmp_path):
    assert storage.write(WriteBatch(rows(1, 2))) == 2
    first = storage.pid
    # the database locked by another writer: the child waits in its busy timeout, mid-write
    blocker = sqlite3.connect(tmp_path / "h.sqlite3", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    outcome: list[BaseException | int] = []
    writing = threading.Thread(target=lambda: outcome.append(_call(storage.write, WriteBatch(rows(3)))))
    writing.start()
    _wait_in_sqlites_busy_handler(first)
    os.kill(first, signal.SIGKILL)
    writing.join(timeout=10)
    blocker.execute("ROLLBACK")
    blocker.close()

    assert isinstance(outcome[0], StorageUnavailable)
    assert "writer process ended (exit code -9)" in str(outcome[0])
    # the store retries the rows: a new child, the inventory re-applied, the reset not done again
    assert storage.write(WriteBatch(rows(3, 4))) == 2
    assert storage.pid not in (None, first)
    assert stored_seqs(storage) == [1, 2, 3, 4]


def test_a_ctrl_c_to_the_process_group_leaves_the_writer_to_the_headends_last_flush(storage):
    storage.write(WriteBatch(rows(1)))
    pid = storage.pid
    os.kill(pid, signal.SIGINT)
    assert storage.write(WriteBatch(rows(2))) == 1
    assert storage.pid == pid
    assert stored_seqs(storage) == [1, 2]


def test_a_row_that_cannot_cross_to_the_writer_is_refused_and_the_writer_goes_on(storage):
    with pytest.raises(ValueError, match="unmarshallable"):
        storage.write(WriteBatch([point_row(Telemetry(ASSET.id, ASSET.site_id, 1, object(), 0.5, 0.0), 0.0)]))
    pid = storage.pid
    assert storage.write(WriteBatch(rows(1))) == 1
    assert storage.pid == pid


def test_closing_the_storage_ends_its_writer(storage):
    storage.write(WriteBatch(rows(1)))
    pid = storage.pid
    storage.close()
    assert storage.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped
    with pytest.raises(StorageUnavailable, match="closed"):
        storage.write(WriteBatch(rows(2)))


def _wait_in_sqlites_busy_handler(pid: int) -> None:
    """Until the process sleeps between SQLite's tries for the lock: only a write request gets there."""
    deadline = time.monotonic() + 10
    while _wchan(pid) != "hrtimer_nanosleep":
        assert time.monotonic() < deadline, f"the writer never waited for the lock (in {_wchan(pid)!r})"
        time.sleep(0.005)


def _wchan(pid: int) -> str:
    with open(f"/proc/{pid}/wchan") as f:
        return f.read()


def _call(fn, *args):
    try:
        return fn(*args)
    except BaseException as exc:
        return exc


def test_an_unreachable_postgresql_does_not_stop_a_writer_process_from_starting() -> None:
    s = open_storage("postgresql://postgres@127.0.0.1:1/none", writer="process")  # nothing listens on port 1
    try:
        assert isinstance(s, WriterProcess) and s.pid is not None  # its open failed as "unavailable"
        with pytest.raises(StorageUnavailable, match="PostgreSQL 127.0.0.1:1/none"):
            s.write(WriteBatch(rows(1)))  # the store would keep the rows and retry
    finally:
        s.close()


def test_storage_writer_is_checked_and_named_in_the_error() -> None:
    assert load_settings([], env={}).storage_writer == "process"
    assert load_settings(["--storage-writer", "thread"], env={}).storage_writer == "thread"
    with pytest.raises(ConfigError, match="STORAGE_WRITER: must be one of process, thread, got 'fork'"):
        load_settings([], env={"STORAGE_WRITER": "fork"})
    with pytest.raises(StorageConfigError, match="STORAGE_WRITER: must be one of process, thread, got 'fork'"):
        open_storage("memory://", writer="fork")


def _children() -> list[int]:
    pids = []
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as f:
            pids += [int(p) for p in f.read().split()]
    return pids


def test_the_headend_loads_its_inventory_while_its_writer_process_starts(tmp_path):
    db = f"sqlite:///{tmp_path / 'h.sqlite3'}"
    inventory, storage = cli.load(load_settings([], {"ASSETS_PATH": "assets.yaml", "DATABASE_URL": db}))
    try:
        assert inventory == INV and isinstance(storage, WriterProcess) and storage.pid in _children()
        storage.save_inventory(inventory)
        assert storage.write(WriteBatch(rows(1))) == 1
    finally:
        storage.close()


@pytest.mark.parametrize("reset", ["", "1"])
def test_a_bad_inventory_stops_the_start_leaves_history_alone_and_no_writer_process(tmp_path, reset):
    db = f"sqlite:///{tmp_path / 'h.sqlite3'}"
    kept = open_storage(db, writer="thread")
    kept.save_inventory(INV)
    kept.write(WriteBatch(rows(1, 2)))
    kept.close()
    bad = tmp_path / "assets.yaml"
    bad.write_text("sites: [{id: s1}]\nassets: [{id: a1, site_id: nowhere}]\n")
    settings = load_settings([], {"ASSETS_PATH": str(bad), "DATABASE_URL": db, "RESET_DB": reset})
    before = set(_children())
    with pytest.raises(InventoryError):
        cli.load(settings)
    assert set(_children()) <= before  # the writer started beside the inventory's parse is reaped
    again = open_storage(db, writer="thread")
    try:
        assert again.count_telemetry() == 2  # RESET_DB empties history only once the inventory is good
    finally:
        again.close()
