"""The spool on a real directory: append, acknowledge, read back, drop when full, reopen after a crash."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from der_actors.messages import AckState, Allocation, BessDetails, SetpointAck, Telemetry
from edge import spool as spool_module
from edge.outcomes import OutcomeStore
from edge.seqset import SeqSet
from edge.spool import Spool, SpoolLocked

ASSETS = ("a1", "a2", "a3")


def point(asset: str, seq: int, status: str = "idle") -> Telemetry:
    return Telemetry(asset, "site", seq, 1_780_000_000.0 + 4 * seq, 0.5, 1.0, status=status,
                     details=BessDetails(soc_pct=50.0, energy_mwh=2.0))


def ticks(first: int, last: int, assets: tuple[str, ...] = ASSETS) -> list[list[Telemetry]]:
    """One batch per tick, every asset once per tick, as the uplink appends them."""
    return [[point(a, seq) for a in assets] for seq in range(first, last + 1)]


def fill(spool: Spool, first: int, last: int, assets: tuple[str, ...] = ASSETS) -> None:
    for batch in ticks(first, last, assets):
        spool.append(batch)


def read_all(spool: Spool, **kw) -> list[tuple[str, int]]:
    points, pos = spool.read(spool.start, spool.end, 10**9, **kw)
    assert pos == spool.end
    return [(p.asset_id, p.seq) for p in points]


def crash(spool: Spool) -> None:
    """What SIGKILL leaves: no snapshot, descriptors (and the lock) gone."""
    spool._release()


def unlink_dead(spool: Spool) -> None:
    for path in spool.take_dead():
        os.unlink(path)


def segment_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("seg-*.spool"))


def test_points_read_back_in_append_order_with_their_fields(tmp_path: Path) -> None:
    spool = Spool.open(str(tmp_path))
    fill(spool, 1, 5)
    assert read_all(spool) == [(a, s) for s in range(1, 6) for a in ASSETS]
    points, _ = spool.read(spool.start, spool.end, 1)
    assert points == [point("a1", 1)]  # timestamps, details, status: all as produced
    # Reading in slices continues where the last one stopped.
    got, pos = [], spool.start
    while pos != spool.end:
        chunk, pos = spool.read(pos, spool.end, 4)
        assert len(chunk) <= 4
        got.extend((p.asset_id, p.seq) for p in chunk)
    assert got == read_all(spool)
    assert spool.pending() == 15 and spool.high_seq("a2") == 5 and spool.high_seq("zz") == 0
    spool.close()


def test_done_points_in_flight_points_and_other_assets_are_skipped(tmp_path: Path) -> None:
    spool = Spool.open(str(tmp_path))
    fill(spool, 1, 4)
    assert spool.mark_done([("a1", 1, 3), ("a2", 2, 2)]) == 4
    assert spool.mark_done([("a1", 2, 3)]) == 0  # already done
    assert read_all(spool) == [("a2", 1), ("a3", 1), ("a3", 2), ("a2", 3), ("a3", 3), ("a1", 4), ("a2", 4), ("a3", 4)]
    assert read_all(spool, skip={"a3": SeqSet([(1, 3)])}, assets={"a2", "a3"}) == [("a2", 1), ("a2", 3), ("a2", 4), ("a3", 4)]
    assert spool.pending() == 8 and spool.pending({"a1"}) == 1
    latest = spool.read_latest(["a1", "a2"])
    assert [(p.asset_id, p.seq) for p, _, _ in latest] == [("a1", 4), ("a2", 4)]
    spool.mark_done([("a1", 4, 4)])
    assert [p.asset_id for p, _, _ in spool.read_latest(["a1", "a2"])] == ["a2"]
    spool.close()


def test_a_segment_is_deleted_once_all_its_points_are_acknowledged(tmp_path: Path) -> None:
    spool = Spool.open(str(tmp_path), max_bytes=1024 * 1024, segment_bytes=4096)
    fill(spool, 1, 100)
    segments = spool.segment_ids()
    assert len(segments) > 3
    assert len(segment_files(tmp_path)) == len(segments)
    spool.mark_done([(a, 1, 50) for a in ASSETS])
    deleted = spool.take_dead()
    assert deleted and all(not Path(p).name.endswith(f"{segments[-1]:08d}.spool") for p in deleted)
    for p in deleted:
        os.unlink(p)
    assert read_all(spool) == [(a, s) for s in range(51, 101) for a in ASSETS]  # what is left, nothing more
    spool.mark_done([(a, 1, 100) for a in ASSETS])
    unlink_dead(spool)
    assert spool.segment_ids() == [segments[-1]]  # only the active segment stays
    assert spool.pending() == 0 and read_all(spool) == []
    spool.close()
    assert len(segment_files(tmp_path)) == 1


def test_full_spool_drops_the_oldest_points_and_counts_them_exactly(tmp_path: Path) -> None:
    max_bytes = 64 * 1024
    spool = Spool.open(str(tmp_path), max_bytes=max_bytes)
    assert spool.segment_bytes == 4096
    spool.mark_done([("a1", 1, 10)])  # acknowledged points are not counted as dropped
    fill(spool, 1, 2000)
    assert spool.bytes <= max_bytes
    left = read_all(spool)
    assert left  # the newest are kept ...
    firsts = {a: min(s for x, s in left if x == a) for a in ASSETS}
    assert left == [(a, s) for s in range(firsts["a1"], 2001) for a in ASSETS]  # ... as a contiguous tail
    for a in ASSETS:
        acked_before = 10 if a == "a1" else 0
        assert spool.dropped(a) == firsts[a] - 1 - acked_before
    assert spool.dropped_total == 3 * 2000 - 10 - len(left)
    unlink_dead(spool)
    assert sum(p.stat().st_size for p in tmp_path.glob("seg-*.spool")) == spool.bytes
    # The count survives a crash.
    total = spool.dropped_total
    crash(spool)
    spool = Spool.open(str(tmp_path), max_bytes=max_bytes)
    assert spool.dropped_total == total and read_all(spool) == left
    spool.close()


def test_append_reports_what_the_bound_dropped(tmp_path: Path) -> None:
    spool = Spool.open(str(tmp_path), max_bytes=64 * 1024)
    dropped = sum(spool.append(batch).dropped for batch in ticks(1, 2000))
    assert dropped == spool.dropped_total > 0
    spool.close()


def test_reopen_after_a_crash_keeps_unacked_points_acks_and_seq(tmp_path: Path) -> None:
    spool = Spool.open(str(tmp_path), segment_bytes=4096)
    fill(spool, 1, 60)
    spool.mark_done([(a, 1, 40) for a in ASSETS])
    crash(spool)  # no snapshot: the acks are in acks.log only, some dead segments not unlinked
    spool = Spool.open(str(tmp_path), segment_bytes=4096)
    assert read_all(spool) == [(a, s) for s in range(41, 61) for a in ASSETS]
    assert {a: spool.high_seq(a) for a in ASSETS} == dict.fromkeys(ASSETS, 60)
    assert len(segment_files(tmp_path)) == len(spool.segment_ids())  # leftovers deleted at open
    fill(spool, 61, 62)  # seq goes on
    spool.close()
    spool = Spool.open(str(tmp_path), segment_bytes=4096)
    assert read_all(spool)[-3:] == [(a, 62) for a in ASSETS]
    spool.close()


def test_seq_goes_on_when_every_point_was_acknowledged_and_deleted(tmp_path: Path) -> None:
    spool = Spool.open(str(tmp_path), segment_bytes=4096)
    fill(spool, 1, 80)
    spool.mark_done([(a, 1, 80) for a in ASSETS])
    unlink_dead(spool)
    crash(spool)
    spool = Spool.open(str(tmp_path))
    assert segment_files(tmp_path) == [f"seg-{spool.segment_ids()[0]:08d}.spool"]  # a fresh, empty one
    assert spool.high_seq("a1") == 80 and spool.pending() == 0
    spool.close()
    spool = Spool.open(str(tmp_path))  # after a clean close too (from state.json alone)
    assert spool.high_seq("a3") == 80
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["done"] == {}  # trimmed: nothing left in the segments to refer to
    spool.close()


def test_a_torn_tail_is_cut_at_the_last_whole_point(tmp_path: Path) -> None:
    spool = Spool.open(str(tmp_path))
    fill(spool, 1, 3)
    segment = tmp_path / segment_files(tmp_path)[-1]
    crash(spool)
    whole = segment.stat().st_size
    with open(segment, "ab") as f:
        f.write(b"\x40\x00\x00\x00\x01\x02")  # half a header and a bit: a write cut short
    spool = Spool.open(str(tmp_path))
    assert segment.stat().st_size == whole
    assert read_all(spool) == [(a, s) for s in (1, 2, 3) for a in ASSETS]
    spool.close()


def test_a_second_agent_cannot_open_the_same_directory(tmp_path: Path) -> None:
    spool = Spool.open(str(tmp_path))
    with pytest.raises(SpoolLocked):
        Spool.open(str(tmp_path))
    spool.close()
    Spool.open(str(tmp_path)).close()


def test_the_ack_log_is_folded_into_the_snapshot_when_it_grows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool_module, "ACK_LOG_COMPACT_BYTES", 2000)
    spool = Spool.open(str(tmp_path))
    fill(spool, 1, 200)
    for seq in range(1, 151):
        spool.mark_done([(a, seq, seq) for a in ASSETS])  # one ack record per tick, as live
    assert (tmp_path / "acks.log").stat().st_size <= 2000
    crash(spool)
    spool = Spool.open(str(tmp_path))
    assert read_all(spool) == [(a, s) for s in range(151, 201) for a in ASSETS]
    spool.close()


# --- setpoint outcomes ------------------------------------------------------------------------------


def test_outcomes_survive_a_reopen_and_a_torn_last_line(tmp_path: Path) -> None:
    path = str(tmp_path / "setpoints.log")
    store = OutcomeStore.open(path, capacity=3)
    acks = [SetpointAck(f"sp-{i}", AckState.APPLIED, f"applied {i}.000 MW", (Allocation("a1", float(i)),))
            for i in range(10)]
    for ack in acks:
        store.put(ack)
    store.put(SetpointAck("sp-r", AckState.REJECTED, "unknown asset x"))
    store.close()
    assert len(Path(path).read_text().splitlines()) <= 2 * 3 + 1  # rewritten as it grew
    with open(path, "a") as f:
        f.write('{"id": "sp-torn", "sta')  # a crash in the middle of a write
    store = OutcomeStore.open(path, capacity=3)
    assert store.get("sp-9") == acks[9]
    assert store.get("sp-r") == SetpointAck("sp-r", AckState.REJECTED, "unknown asset x")
    assert store.get("sp-0") is None and store.get("sp-torn") is None  # beyond capacity / torn
    store.put(SetpointAck("sp-next", AckState.APPLIED, "applied 1.000 MW"))
    store.close()
    store = OutcomeStore.open(path, capacity=3)
    assert store.get("sp-next") is not None
    store.close()


def test_a_failed_write_leaves_the_segment_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool.open(str(tmp_path))
    fill(spool, 1, 1)
    real_write = os.write

    def full_disk(fd: int, data: bytes) -> int:
        if fd == spool._fd:
            real_write(fd, bytes(data)[:7])  # a part goes down, then the disk is full
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(spool_module.os, "write", full_disk)
    with pytest.raises(OSError):
        spool.append(ticks(2, 2)[0])
    monkeypatch.setattr(spool_module.os, "write", real_write)
    fill(spool, 3, 3)
    assert read_all(spool) == [(a, s) for s in (1, 3) for a in ASSETS]
    spool.close()
    spool = Spool.open(str(tmp_path))
    assert read_all(spool) == [(a, s) for s in (1, 3) for a in ASSETS]
    spool.close()
