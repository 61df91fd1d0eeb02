"""The edge's spool: every telemetry point stays on disk until it is done.

A point is *done* when the headend acknowledged it (TelemetryAck: durably stored), when the spool
dropped it to stay within its bound, or when the headend refused its asset (discarded: it can never
be stored). A segment whose points are all done is deleted.

Files in the spool directory (one agent per directory; `LOCK` keeps a second agent out):

    seg-00000001.spool  append-only segments of frames (edge.frames: u32 length, u32 crc32, payload);
                        a payload is one point as a protobuf `Telemetry` (the wire encoding). A segment
                        rolls at `segment_bytes` (1/16 of the bound, 4 KB to 1 MB); each open starts a
                        new one, so a segment is never appended to after a crash.
    acks.log            append-only frames of JSON, one per change: {"done": [[asset, first, last], ...],
                        "dropped": {asset: total}}. Replaying it is idempotent (unions and maxima).
    state.json          snapshot: done ranges (trimmed to what the segments still hold), per-asset
                        high-water seq and drop totals, the next segment id. Rewritten atomically
                        (tmp, fsync, os.replace) at open, at close and when acks.log passes 256 KB;
                        acks.log is emptied after each snapshot.

Crash safety (SIGKILL at any instant):
- a point is written (one os.write per batch) before it is sent, so whatever was sent is on disk;
- a done mark reaches acks.log before the segment it empties is unlinked, so a segment that survives
  a crash is found all done again at the next open and deleted, not replayed;
- the high-water seq of an asset is the max of state.json, acks.log and the segments, so seq never
  goes back after a restart;
- the window of replay: none beyond the in-memory ack being lost with the process (acks.log is
  written as each TelemetryAck arrives). Torn tails are cut at the last whole frame.
Writes are not fsync'ed (only snapshots are): this survives a process crash, not a power loss, which
may lose the last seconds the OS had not written back.

Blocking I/O: `open` scans every segment (run it in a thread, or where nothing else is waiting);
`append` and `mark_done` are one small os.write each; `read` reads at most `budget` records.
Deleting segments is left to the caller (`take_dead`), to run in a thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Container, Iterable, Mapping, Sequence

import attrs
import structlog
from google.protobuf.message import DecodeError

from der_actors.messages import Telemetry
from der_actors.transport import codec
from der_actors.transport.pb import agent_pb2 as pb
from edge.frames import HEADER, Tail, frame, parse
from edge.seqset import SeqSet

__all__ = ["Position", "Appended", "Spool", "SpoolError", "SpoolLocked", "segment_bytes_for", "MB"]

log = structlog.get_logger("der.edge.spool")

Position = tuple[int, int]  # (segment id, byte offset): orders points as they were appended
MB = 1024 * 1024
ACK_LOG_COMPACT_BYTES = 256 * 1024
READ_CHUNK = 64 * 1024
READ_BUDGET = 2000  # records decoded per `read` call: ~10 ms of blocking at most
STATE_VERSION = 1
_EMPTY = SeqSet()


class SpoolError(RuntimeError):
    """The spool directory cannot be used (unreadable state, another agent holds it)."""


class SpoolLocked(SpoolError):
    pass


def segment_bytes_for(max_bytes: int) -> int:
    """1/16 of the bound, so dropping the oldest segment frees at most ~6% of the spool."""
    return max(4096, min(MB, max_bytes // 16))


def encode(point: Telemetry) -> bytes:
    msg = pb.Telemetry()
    codec.telemetry_to_pb(point, msg)
    return msg.SerializeToString()


@attrs.define
class _Segment:
    id: int
    path: str
    size: int = 0
    seqs: dict[str, SeqSet] = attrs.Factory(dict)


@attrs.frozen
class Appended:
    start: Position
    end: Position
    dropped: int  # points the bound dropped to make room (0 almost always)


class Spool:
    """Open with `Spool.open(directory)`; close with `close()`. Not thread-safe: one owner."""

    def __init__(self, directory: str, max_bytes: int, segment_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.bytes = 0  # total size of the live segments
        self._segments: dict[int, _Segment] = {}  # live segments, oldest first
        self._active: _Segment | None = None
        self._fd = -1  # the active segment, append-only
        self._done: dict[str, SeqSet] = {}
        self._high: dict[str, int] = {}
        self._dropped: dict[str, int] = {}
        self._latest: dict[str, tuple[int, Position, Position]] = {}  # asset -> (seq, start, end)
        self._next_id = 1
        self._ack_fd = -1
        self._ack_log_bytes = 0
        self._lock_fd = -1
        self._dead: list[str] = []

    # --- opening and closing ---------------------------------------------------------------------

    @classmethod
    def open(cls, directory: str, *, max_bytes: int = 64 * MB, segment_bytes: int | None = None) -> Spool:
        """Lock the directory, recover its state, delete what is done; blocking (scans every segment)."""
        spool = cls(directory, max_bytes, segment_bytes or segment_bytes_for(max_bytes))
        try:
            os.makedirs(directory, exist_ok=True)
            spool._lock()
        except OSError as exc:
            raise SpoolError(f"cannot use spool directory {directory}: {exc}") from None
        try:
            spool._load_state()
            spool._replay_ack_log()
            spool._scan_segments()
            for path in spool._collect_done(include_active=True):
                os.unlink(path)
            spool._ack_fd = os.open(spool._path("acks.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            spool._compact()
            spool._start_segment()
        except BaseException:
            spool._release()
            raise
        log.info("spool_opened", directory=directory, segments=len(spool._segments) - 1, bytes=spool.bytes,
                 pending=spool.pending(), dropped=sum(spool._dropped.values()))
        return spool

    def close(self) -> None:
        """Snapshot the state and release the directory (idempotent)."""
        if self._lock_fd < 0:
            return
        try:
            self._compact()
        except OSError as exc:  # acks.log still holds every mark: the next open recovers from it
            log.error("spool_snapshot_failed", directory=self.directory, error=str(exc))
        finally:
            self._release()

    def _release(self) -> None:
        for fd in (self._fd, self._ack_fd, self._lock_fd):
            if fd >= 0:
                os.close(fd)
        self._fd = self._ack_fd = self._lock_fd = -1

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def _lock(self) -> None:
        self._lock_fd = os.open(self._path("LOCK"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise SpoolLocked(f"spool directory {self.directory} is in use by another agent") from None

    def _load_state(self) -> None:
        try:
            with open(self._path("state.json"), encoding="utf-8") as f:
                state = json.load(f)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            raise SpoolError(f"{self._path('state.json')}: unreadable ({exc}); move the spool directory "
                             "aside to start afresh (seq then restarts at 1)") from None
        if state.get("version") != STATE_VERSION:
            raise SpoolError(f"{self._path('state.json')}: version {state.get('version')!r}, "
                             f"this agent reads {STATE_VERSION}")
        self._high = {a: int(n) for a, n in state["high"].items()}
        self._dropped = {a: int(n) for a, n in state["dropped"].items()}
        self._done = {a: SeqSet((f, l) for f, l in ranges) for a, ranges in state["done"].items()}
        self._next_id = int(state["next_segment"])

    def _replay_ack_log(self) -> None:
        try:
            with open(self._path("acks.log"), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return
        parsed = parse(data)
        for _, _, payload in parsed.records:
            self._apply_record(json.loads(payload))
        if parsed.tail is not Tail.CLEAN:
            log.warning("spool_ack_log_torn", kept_bytes=parsed.end, cut_bytes=len(data) - parsed.end)

    def _apply_record(self, record: Mapping) -> None:
        for asset_id, first, last in record.get("done", ()):
            self._done_of(asset_id).add(first, last)
        for asset_id, total in record.get("dropped", {}).items():
            self._dropped[asset_id] = max(self._dropped.get(asset_id, 0), total)

    def _scan_segments(self) -> None:
        ids = sorted(int(n[4:-6]) for n in os.listdir(self.directory) if n.startswith("seg-") and n.endswith(".spool"))
        for seg_id in ids:
            seg = _Segment(seg_id, self._segment_path(seg_id))
            with open(seg.path, "rb") as f:
                data = f.read()
            parsed = parse(data)
            end = parsed.end
            for start, stop, payload in parsed.records:
                try:
                    msg = pb.Telemetry.FromString(payload)
                except DecodeError:
                    end = start
                    break
                seg.seqs.setdefault(msg.asset_id, SeqSet()).add(msg.seq)
                self._latest[msg.asset_id] = (msg.seq, (seg_id, start), (seg_id, stop))
            if end < len(data):
                log.warning("spool_segment_torn", segment=seg.path, kept_bytes=end, cut_bytes=len(data) - end)
                os.truncate(seg.path, end)
            seg.size = end
            self._segments[seg_id] = seg
            self.bytes += end
            self._next_id = max(self._next_id, seg_id + 1)
        for asset_id, done in self._done.items():
            if done:
                self._high[asset_id] = max(self._high.get(asset_id, 0), done.max)
        for seg in self._segments.values():
            for asset_id, seqs in seg.seqs.items():
                self._high[asset_id] = max(self._high.get(asset_id, 0), seqs.max)

    def _segment_path(self, seg_id: int) -> str:
        return self._path(f"seg-{seg_id:08d}.spool")

    def _start_segment(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        seg = _Segment(self._next_id, self._segment_path(self._next_id))
        self._next_id += 1
        self._fd = os.open(seg.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._segments[seg.id] = seg
        self._active = seg

    def _compact(self) -> None:
        """Write state.json (trimmed done ranges), then empty acks.log: small, a few ms with the fsync."""
        floors: dict[str, int] = {}
        for seg in self._segments.values():
            for asset_id, seqs in seg.seqs.items():
                if seqs:
                    floors[asset_id] = min(floors.get(asset_id, seqs.min), seqs.min)
        for asset_id, done in self._done.items():
            done.discard_below(floors.get(asset_id, self._high.get(asset_id, 0) + 1))
        state = {
            "version": STATE_VERSION,
            "next_segment": self._next_id,
            "high": self._high,
            "dropped": self._dropped,
            "done": {a: [list(r) for r in d.ranges()] for a, d in self._done.items() if d},
        }
        tmp = self._path("state.json.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(state, separators=(",", ":")))  # dumps: the C encoder (dump is pure Python)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._path("state.json"))
        os.ftruncate(self._ack_fd, 0)
        self._ack_log_bytes = 0

    # --- queries ---------------------------------------------------------------------------------

    def high_seq(self, asset_id: str) -> int:
        """The last seq ever spooled for the asset (0: none): the next point is this + 1."""
        return self._high.get(asset_id, 0)

    def dropped(self, asset_id: str) -> int:
        """Points of this asset dropped to keep the bound, since the directory was created."""
        return self._dropped.get(asset_id, 0)

    @property
    def dropped_total(self) -> int:
        return sum(self._dropped.values())

    def done_seqs(self, asset_id: str) -> SeqSet:
        return self._done.get(asset_id, _EMPTY)

    def pending(self, assets: Container[str] | None = None) -> int:
        """Points not done yet (optionally only those of `assets`)."""
        return sum(
            seqs.count_missing_from(self.done_seqs(a))
            for seg in self._segments.values()
            for a, seqs in seg.seqs.items()
            if assets is None or a in assets
        )

    @property
    def start(self) -> Position:
        return (next(iter(self._segments)), 0)

    @property
    def end(self) -> Position:
        assert self._active is not None
        return (self._active.id, self._active.size)

    def segment_ids(self) -> list[int]:
        return list(self._segments)

    # --- changes ---------------------------------------------------------------------------------

    def append(self, points: Sequence[Telemetry]) -> Appended:
        """Write the points (one os.write), dropping the oldest segments first if the bound needs it."""
        assert self._active is not None, "spool is closed"
        payloads = [encode(p) for p in points]
        data = b"".join(frame(p) for p in payloads)
        if self._active.size and self._active.size + len(data) > self.segment_bytes:
            self._roll()
        dropped = 0
        while self.bytes + len(data) > self.max_bytes and len(self._segments) > 1:
            dropped += self._drop_oldest()
        seg = self._active
        start = (seg.id, seg.size)
        view = memoryview(data)
        try:
            while view:  # a regular file takes it in one write; loop for the rule's sake
                view = view[os.write(self._fd, view):]
        except OSError:  # disk full: cut what got written, so the segment stays whole frames
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, seg.size)
            raise
        offset = seg.size
        for point, payload in zip(points, payloads):
            stop = offset + HEADER.size + len(payload)
            seg.seqs.setdefault(point.asset_id, SeqSet()).add(point.seq)
            if point.seq > self._high.get(point.asset_id, 0):
                self._high[point.asset_id] = point.seq
            self._latest[point.asset_id] = (point.seq, (seg.id, offset), (seg.id, stop))
            offset = stop
        seg.size = offset
        self.bytes += len(data)
        return Appended(start, (seg.id, offset), dropped)

    def mark_done(self, ranges: Iterable[tuple[str, int, int]]) -> int:
        """Record (asset_id, first, last) as done; returns how many seqs were not done yet."""
        added = 0
        record = []
        for asset_id, first, last in ranges:
            new = self._done_of(asset_id).add(first, last)
            if new:
                added += new
                record.append([asset_id, first, last])
        if record and self._write_record({"done": record}):
            # Only once the marks are on disk: a segment unlinked before would come back at the next open.
            self._dead.extend(self._collect_done(include_active=False))
        return added

    def discard(self, asset_ids: Iterable[str]) -> int:
        """Mark every spooled point of these assets done (the headend refused them); returns how many."""
        ranges = []
        count = 0
        for asset_id in asset_ids:
            count += self.pending({asset_id})
            high = self._high.get(asset_id, 0)
            if high:
                ranges.append((asset_id, 1, high))
        self.mark_done(ranges)
        return count

    @property
    def has_dead(self) -> bool:
        return bool(self._dead)

    def take_dead(self) -> list[str]:
        """Paths of segments that are all done and no longer indexed: unlink them (in a thread)."""
        dead, self._dead = self._dead, []
        return dead

    def _done_of(self, asset_id: str) -> SeqSet:
        done = self._done.get(asset_id)
        if done is None:
            done = self._done[asset_id] = SeqSet()
        return done

    def _write_record(self, record: Mapping) -> bool:
        """Append to acks.log (a few hundred bytes: inline, like a log line); False if the disk refused."""
        data = frame(json.dumps(record, separators=(",", ":")).encode())
        try:
            os.write(self._ack_fd, data)
            self._ack_log_bytes += len(data)
            if self._ack_log_bytes > ACK_LOG_COMPACT_BYTES:
                self._compact()
        except OSError as exc:  # the marks stay in memory; a later record or snapshot carries them
            log.error("spool_ack_log_write_failed", directory=self.directory, error=str(exc))
            return False
        return True

    def _collect_done(self, *, include_active: bool) -> list[str]:
        dead = []
        for seg in list(self._segments.values()):
            if seg is self._active and not include_active:
                continue
            if all(seqs.issubset(self.done_seqs(a)) for a, seqs in seg.seqs.items()):
                del self._segments[seg.id]
                self.bytes -= seg.size
                dead.append(seg.path)
        return dead

    def _roll(self) -> None:
        self._start_segment()
        self._dead.extend(self._collect_done(include_active=False))

    def _drop_oldest(self) -> int:
        seg = next(iter(self._segments.values()))
        assert seg is not self._active
        dropped = 0
        done = []
        for asset_id, seqs in seg.seqs.items():
            n = seqs.count_missing_from(self.done_seqs(asset_id))
            if n:
                dropped += n
                self._dropped[asset_id] = self._dropped.get(asset_id, 0) + n
                self._done_of(asset_id).update(seqs)
                done.extend([asset_id, f, l] for f, l in seqs.ranges())
        if dropped:
            self._write_record({"done": done, "dropped": dict(self._dropped)})
        del self._segments[seg.id]
        self.bytes -= seg.size
        self._dead.append(seg.path)
        log.warning("spool_full_dropped_oldest", segment=seg.path, points=dropped,
                    dropped_total=self.dropped_total, max_bytes=self.max_bytes)
        return dropped

    # --- reading back ----------------------------------------------------------------------------

    def read(
        self,
        start: Position,
        end: Position,
        want: int,
        *,
        skip: Mapping[str, SeqSet] | None = None,
        assets: Container[str] | None = None,
        budget: int = READ_BUDGET,
    ) -> tuple[list[Telemetry], Position]:
        """Up to `want` points in [start, end), oldest first, that are not done, not in `skip` and (if
        given) of `assets`. Returns them and where to continue (`end`: nothing is left). Decodes at
        most `budget` records, so a call blocks for a few milliseconds at most."""
        skip = skip or {}
        points: list[Telemetry] = []
        scanned = 0
        for seg in list(self._segments.values()):
            if seg.id < start[0]:
                continue
            if seg.id > end[0]:
                break
            offset = start[1] if seg.id == start[0] else 0
            stop = min(seg.size, end[1] if seg.id == end[0] else seg.size)
            if offset < stop and self._has_work(seg, skip, assets):
                while offset < stop:
                    if len(points) >= want or scanned >= budget:
                        return points, (seg.id, offset)
                    records, offset = self._read_records(seg, offset, stop)
                    for rec_start, rec_end, payload in records:
                        if len(points) >= want or scanned >= budget:
                            return points, (seg.id, rec_start)
                        scanned += 1
                        msg = pb.Telemetry.FromString(payload)
                        a, s = msg.asset_id, msg.seq
                        if (assets is not None and a not in assets) or s in self.done_seqs(a) or s in skip.get(a, _EMPTY):
                            continue
                        points.append(codec.telemetry_from_pb(msg))
        return points, end

    def read_latest(self, assets: Iterable[str]) -> list[tuple[Telemetry, Position, Position]]:
        """The newest spooled point of each asset that is not done yet, with where it lies."""
        out = []
        for asset_id in assets:
            latest = self._latest.get(asset_id)
            if latest is None or latest[0] in self.done_seqs(asset_id):
                continue
            seq, start, stop = latest
            seg = self._segments.get(start[0])
            if seg is None:
                continue
            records, _ = self._read_records(seg, start[1], stop[1])
            if records:
                out.append((codec.telemetry_from_pb(pb.Telemetry.FromString(records[0][2])), start, stop))
        return out

    def _has_work(self, seg: _Segment, skip: Mapping[str, SeqSet], assets: Container[str] | None) -> bool:
        for asset_id, seqs in seg.seqs.items():
            if assets is not None and asset_id not in assets:
                continue
            left = seqs.difference(self.done_seqs(asset_id))
            if left and not left.issubset(skip.get(asset_id, _EMPTY)):
                return True
        return False

    def _read_records(self, seg: _Segment, offset: int, stop: int) -> tuple[list[tuple[int, int, bytes]], int]:
        """Whole frames from offset (at most READ_CHUNK bytes' worth, at least one), and the next offset."""
        with open(seg.path, "rb") as f:
            f.seek(offset)
            chunk = f.read(min(stop - offset, READ_CHUNK))
            parsed = parse(chunk, base=offset)
            if not parsed.records and parsed.tail is Tail.PARTIAL and len(chunk) >= HEADER.size:
                length, _ = HEADER.unpack_from(chunk)  # one frame bigger than a chunk: read all of it
                f.seek(offset)
                parsed = parse(f.read(min(stop - offset, HEADER.size + length)), base=offset)
        if parsed.records:
            return parsed.records, parsed.end
        log.error("spool_segment_unreadable", segment=seg.path, offset=offset, tail=parsed.tail.value)
        return [], stop  # skip the rest of the segment rather than loop on it
