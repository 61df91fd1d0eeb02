"""Pure parts of the spool: SeqSet, frames, and the replay bookkeeping (InFlight, Pacer)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from der_actors.messages import Telemetry
from edge.frames import Tail, frame, frames, parse
from edge.replay import InFlight, Pacer, Span
from edge.seqset import SeqSet

# --- SeqSet against a plain set --------------------------------------------------------------------

ops = st.lists(
    st.tuples(st.sampled_from(["add", "remove", "floor"]), st.integers(0, 60), st.integers(0, 8)),
    max_size=40,
)


def check_shape(s: SeqSet) -> None:
    ranges = list(s.ranges())
    for first, last in ranges:
        assert first <= last
    for (_, a_last), (b_first, _) in zip(ranges, ranges[1:]):
        assert b_first > a_last + 1  # disjoint and never adjacent: one run is one range


@given(ops)
def test_seqset_behaves_like_a_set_of_ints(operations: list[tuple[str, int, int]]) -> None:
    s, model = SeqSet(), set()
    for op, first, length in operations:
        last = first + length
        if op == "add":
            new = set(range(first, last + 1)) - model
            assert s.add(first, last) == len(new)
            model |= new
        elif op == "remove":
            s.remove(first, last)
            model -= set(range(first, last + 1))
        else:
            s.discard_below(first)
            model = {x for x in model if x >= first}
        check_shape(s)
        assert {x for f, l in s.ranges() for x in range(f, l + 1)} == model
        assert len(s) == len(model)
        assert s.min == (min(model) if model else None)
        assert s.max == (max(model) if model else None)
    for x in range(-1, 75):
        assert (x in s) == (x in model)


@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 6)), max_size=8),
       st.lists(st.tuples(st.integers(0, 50), st.integers(0, 6)), max_size=8))
def test_seqset_relations(a_ranges: list[tuple[int, int]], b_ranges: list[tuple[int, int]]) -> None:
    a = SeqSet((f, f + n) for f, n in a_ranges)
    b = SeqSet((f, f + n) for f, n in b_ranges)
    sa = {x for f, l in a.ranges() for x in range(f, l + 1)}
    sb = {x for f, l in b.ranges() for x in range(f, l + 1)}
    assert a.count_missing_from(b) == len(sa - sb)
    assert a.issubset(b) == (sa <= sb)
    assert {x for f, l in a.difference(b).ranges() for x in range(f, l + 1)} == sa - sb
    merged = a.copy()
    assert merged.update(b) == len(sb - sa)
    assert {x for f, l in merged.ranges() for x in range(f, l + 1)} == sa | sb
    for first in range(0, 60, 7):
        assert b.covers(first, first + 3) == all(x in sb for x in range(first, first + 4))


def test_a_consecutive_run_is_one_range() -> None:
    s = SeqSet()
    for seq in range(1, 10_001):
        s.add(seq)
    assert list(s.ranges()) == [(1, 10_000)]
    s.add(10_002)
    s.add(10_001)
    assert list(s.ranges()) == [(1, 10_002)]


# --- frames ----------------------------------------------------------------------------------------

payloads = st.lists(st.binary(max_size=40), max_size=12)


@given(payloads, st.data())
def test_frames_parse_back_and_a_cut_keeps_every_whole_frame_before_it(items: list[bytes], data: st.DataObject) -> None:
    buf = frames(items)
    parsed = parse(buf, base=100)
    assert [p for _, _, p in parsed.records] == items
    assert (parsed.end, parsed.tail) == (100 + len(buf), Tail.CLEAN)
    cut = data.draw(st.integers(0, len(buf)))
    boundaries = [0]
    for p in items:
        boundaries.append(boundaries[-1] + len(frame(p)))
    whole = max(i for i, b in enumerate(boundaries) if b <= cut)
    torn = parse(buf[:cut])
    assert [p for _, _, p in torn.records] == items[:whole]
    assert torn.end == boundaries[whole]
    assert torn.tail is (Tail.CLEAN if cut == boundaries[whole] else Tail.PARTIAL)


def test_a_flipped_byte_is_corrupt_and_nothing_after_it_is_read() -> None:
    buf = bytearray(frames([b"first", b"second", b"third"]))
    second = len(frame(b"first"))
    buf[second + 8] ^= 0xFF  # inside the second payload
    parsed = parse(bytes(buf))
    assert [p for _, _, p in parsed.records] == [b"first"]
    assert (parsed.end, parsed.tail) == (second, Tail.CORRUPT)


# --- replay bookkeeping ----------------------------------------------------------------------------


def pt(asset: str, seq: int) -> Telemetry:
    return Telemetry(asset, "site", seq, 0.0, 0.0, 0.0)


def test_pacer_spaces_batches_by_their_size_over_the_rate() -> None:
    pacer = Pacer(rate=2000, max_batch=500)
    assert pacer.batch == 500 and pacer.ready(0.0)
    pacer.sent(500, 10.0)
    assert pacer.next_at == 10.25
    assert not pacer.ready(10.2) and pacer.ready(10.25)
    pacer.sent(120, 10.25)
    assert pacer.next_at == pytest.approx(10.31)
    pacer.sent(500, 50.0)  # idle for a while: no burst to catch up
    assert pacer.next_at == 50.25
    assert Pacer(rate=20, max_batch=500).batch == 5
    assert Pacer(rate=1, max_batch=500).batch == 1


def test_inflight_retires_acked_batches_and_hands_back_due_ones() -> None:
    done: dict[str, SeqSet] = {}

    def done_of(asset: str) -> SeqSet:
        return done.get(asset, SeqSet())

    inflight = InFlight()
    a = inflight.add(0.0, [pt("a", 1), pt("a", 2), pt("b", 1)], (Span((1, 0), (1, 30)),), 0)
    b = inflight.add(1.0, [pt("a", 3)], (Span((1, 30), (1, 40)),), 0)
    assert list(inflight.seqs["a"].ranges()) == [(1, 3)]
    assert inflight.next_due(60.0) == 60.0
    done["a"] = SeqSet([(1, 2)])
    inflight.retire_acked(done_of)
    assert len(inflight) == 2  # b:1 of the first batch is not acknowledged yet
    assert a.unacked(done_of) == 1
    assert inflight.due(59.9, 60.0) == []
    assert inflight.due(60.0, 60.0) == [a]
    assert list(inflight.seqs["a"].ranges()) == [(3, 3)] and not inflight.seqs["b"]
    done["a"].add(3)
    inflight.retire_acked(done_of)
    assert len(inflight) == 0 and not inflight.seqs["a"]
    assert inflight.next_due(60.0) == math.inf
    assert b.unacked(done_of) == 0
