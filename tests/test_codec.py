"""The headend's decode of telemetry: straight from the wire into the store's rows."""

from __future__ import annotations

import gc
import json
import math
import struct

import attrs
from hypothesis import given
from hypothesis import strategies as st

from der_actors import messages as m
from der_actors.storage.rows import details_from, point_row, stored_point_of
from der_actors.transport import codec
from der_actors.transport.link import ReceivedPoints
from der_actors.transport.pb import agent_pb2 as pb

T0 = 1_800_000_000.0
floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
details = st.one_of(
    st.none(),
    st.builds(m.BessDetails, floats, floats),
    st.builds(m.PvDetails, floats, floats),
    st.builds(m.WindDetails, floats, floats),
    st.builds(m.EvDetails, st.integers(0, 2**32 - 1), st.text()),
)
points = st.builds(
    m.Telemetry,
    asset_id=st.sampled_from(["", "bess-1", "ev-\u00e9"]),  # "": a legacy agent's point
    site_id=st.text(max_size=8),
    seq=st.integers(0, 2**64 - 1),
    timestamp=st.floats(0, 4e9),
    mw=floats,
    mw_setpoint=floats,
    online=st.booleans(),
    status=st.text(max_size=8),
    fault_code=st.text(max_size=8),
    details=details,
)


def wire(point: m.Telemetry) -> pb.Telemetry:
    out = pb.Telemetry()
    codec.telemetry_to_pb(point, out)
    return out


@given(st.lists(points, max_size=5), st.floats(0, 4e9))
def test_each_received_row_is_the_row_the_decoded_point_makes(batch, received_at):
    wired = [wire(p) for p in batch]
    rows = codec.point_rows_from_pb(wired, received_at)
    expected = [point_row(codec.telemetry_from_pb(p), received_at) for p in wired]
    assert repr(rows) == repr(expected)  # repr: NaN compares unequal to itself
    for row, p in zip(rows, wired):  # and it reads back as the point the agent sent
        assert repr(stored_point_of(row).point) == repr(codec.telemetry_from_pb(p))


def test_a_batch_or_a_single_point_arrives_as_rows_and_anything_else_as_before():
    point = m.Telemetry("bess-1", "site", 7, T0, 1.5, 2.0, details=m.BessDetails(55.5, 2.25))
    batch = codec.agent_to_pb(m.TelemetryBatch((point, point)))
    received = codec.received_from_pb(batch, T0 + 1)
    assert isinstance(received, ReceivedPoints) and received.rows == [point_row(point, T0 + 1)] * 2
    single = codec.received_from_pb(codec.agent_to_pb(point), T0 + 1)
    assert isinstance(single, ReceivedPoints) and single.rows == [point_row(point, T0 + 1)]
    beat = codec.agent_to_pb(m.Heartbeat(T0))
    assert codec.received_from_pb(beat, T0 + 1) == codec.agent_from_pb(beat) == m.Heartbeat(T0)


def test_a_received_row_is_a_tuple_the_collector_stops_tracking():
    # the point of decoding into rows: no tracked object per point (see PointRow)
    wired = [wire(m.Telemetry("ev-1", "site", 1, T0, 0.5, 0.0, details=m.EvDetails(3, "charging")))]
    (row,) = codec.point_rows_from_pb(wired, T0)
    gc.collect()
    assert type(row) is tuple and not gc.is_tracked(row)


@given(details)
def test_details_are_stored_as_json_that_reads_back_bit_for_bit(d):
    # the details column: each float's shortest repr (or NaN / Infinity), tagged with its kind
    text = point_row(m.Telemetry("bess-1", "site", 1, T0, 0.5, 0.0, details=d), T0)[10]
    back = details_from(text)
    if d is None:
        assert text is None and back is None
        return
    assert json.loads(text)["kind"] in ("bess", "pv", "wind", "ev")
    assert type(back) is type(d)
    assert [_bits(v) for v in attrs.astuple(back)] == [_bits(v) for v in attrs.astuple(d)]


def _bits(v: object) -> object:
    """A float as its bytes (so -0.0 and 0.0 differ), any NaN as "nan" (JSON has one NaN)."""
    if not isinstance(v, float):
        return v
    return "nan" if math.isnan(v) else struct.pack("<d", v)
