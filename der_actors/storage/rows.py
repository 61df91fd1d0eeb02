"""Our types <-> SQL row tuples, the same for both engines (pure).

Nested parts are JSON text; floats go through `repr`, so they read back bit for bit and a stored
`DispatchView` reads back equal to the one written. Telemetry details are tagged with their kind;
a kind this code does not know is kept as `{"kind": <class name>, ...}` and reads back as None
rather than failing a whole batch.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable

import attrs
import cattrs

from der_actors.messages import BessDetails, Details, EvDetails, PvDetails, Telemetry, WindDetails
from der_actors.storage.base import HeartbeatRow, PointRow, StoredPoint
from der_actors.views import DispatchView, SessionSummary

_DETAIL_KINDS: dict[str, type] = {"bess": BessDetails, "pv": PvDetails, "wind": WindDetails, "ev": EvDetails}


_encoder = json.JSONEncoder(separators=(",", ":"))
_dumps = _encoder.encode


def _value(v: object) -> str:
    if type(v) is float and math.isfinite(v):
        return repr(v)  # what json writes, without its machinery
    if type(v) is int:
        return str(v)
    return _dumps(v)


def _template(kind: str, names: list[str], conversion: str) -> str:
    """The details' JSON with a `%` conversion per field (no "%" in these names)."""
    return '{"kind":' + _dumps(kind) + "".join(f',"{n}":%{conversion}' for n in names) + "}"


def _details_writer(kind: str, cls: type) -> Callable[[object], str]:
    names = [f.name for f in attrs.fields(cls)]
    template = _template(kind, names, "s")
    get = operator.attrgetter(*names)
    if len(names) == 1:
        return lambda d: template % _value(get(d))
    return lambda d: template % tuple(map(_value, get(d)))


def _wire_details_writer(kind: str, cls: type) -> Callable[[object], str]:
    """The writer for the wire's details message of this kind. Where every field is a proto
    `double` (always a Python float) and all are finite (their sum is), each goes through `%r`
    straight: the same text as `_value`'s, without a call per field. Else the checked writer."""
    checked = _details_writer(kind, cls)
    fields = attrs.fields(attrs.resolve_types(cls))
    if len(fields) < 2 or any(f.type is not float for f in fields):
        return checked
    names = [f.name for f in fields]
    template = _template(kind, names, "r")
    get = operator.attrgetter(*names)  # a tuple (two names or more)
    isfinite = math.isfinite

    def write(d: object) -> str:
        values = get(d)
        return template % values if isfinite(sum(values)) else checked(d)

    return write


# One JSON writer per kind: this runs once per stored point, so it avoids json.dumps and asdict.
# A writer reads the fields by name (the same names in proto/agent.proto): the headend's decode
# writes the JSON straight from the wire's details message (DETAILS_JSON_BY_KIND).
DETAILS_JSON_BY_KIND = {kind: _wire_details_writer(kind, cls) for kind, cls in _DETAIL_KINDS.items()}
_DETAILS_WRITERS = {cls: _details_writer(kind, cls) for kind, cls in _DETAIL_KINDS.items()}


def details_json(details: Details) -> str | None:
    if details is None:
        return None
    write = _DETAILS_WRITERS.get(type(details))
    if write is None:
        return _dumps({"kind": type(details).__name__, **attrs.asdict(details)})
    return write(details)


def details_from(text: str | None) -> Details:
    if text is None:
        return None
    fields = json.loads(text)
    cls = _DETAIL_KINDS.get(fields.pop("kind"))
    try:
        return cls(**fields) if cls else None
    except TypeError:  # fields of another release
        return None


# --- telemetry -------------------------------------------------------------------------------

TELEMETRY_COLUMNS = (
    "asset_key", "seq", "ts", "received_at", "site_id", "mw", "mw_setpoint", "online", "status", "fault_code", "details",
)
# what a history read selects (the asset is known from the query)
TELEMETRY_READ = "site_id, seq, ts, received_at, mw, mw_setpoint, online, status, fault_code, details"


def point_row(p: Telemetry, received_at: float) -> PointRow:
    """What the store buffers for a point (see `PointRow`); its details become JSON here, once."""
    return (
        p.asset_id, p.seq, p.timestamp, received_at, p.site_id, p.mw, p.mw_setpoint, bool(p.online), p.status,
        p.fault_code, details_json(p.details),
    )


def telemetry_row(asset_key: int, row: PointRow) -> tuple:
    """The insert row: the asset's id swapped for its key."""
    return (asset_key, *row[1:])


def stored_point(asset_id: str, row: tuple) -> StoredPoint:
    """A history read's row (`TELEMETRY_READ`) as a point."""
    site_id, seq, ts, received_at, mw, mw_setpoint, online, status, fault_code, details = row
    point = Telemetry(asset_id, site_id, seq, ts, mw, mw_setpoint, bool(online), status, fault_code, details_from(details))
    return StoredPoint(point, received_at)


def stored_point_of(row: PointRow) -> StoredPoint:
    """A buffered point (`point_row`) as a history read returns it."""
    asset_id, seq, ts, received_at, site_id, *rest = row
    return stored_point(asset_id, (site_id, seq, ts, received_at, *rest))


# --- dispatches ------------------------------------------------------------------------------

DISPATCH_COLUMNS = (
    "dispatch_id", "created_at", "updated_at", "state", "target", "asset_id", "site_id", "requested_mw",
    "applied_mw", "mode", "message", "view",
)
_views = cattrs.Converter()  # DispatchView <-> plain JSON; unknown keys are ignored on the way back


def dispatch_row(v: DispatchView) -> tuple:
    history = v.lifecycle.history
    return (
        v.dispatch_id, history[0].at, history[-1].at, v.lifecycle.state.value, v.target, v.asset_id, v.site_id,
        v.requested_mw, v.applied_mw, v.mode, v.message, _dumps(_views.unstructure(v)),
    )


def dispatch_view(view_json: str) -> DispatchView:
    return _views.structure(json.loads(view_json), DispatchView)


# --- sessions and heartbeats -----------------------------------------------------------------

SESSION_COLUMNS = (
    "session_id", "agent_id", "gateway_id", "site_id", "peer", "connected_at", "disconnected_at", "reason", "asset_ids",
)


def session_row(s: SessionSummary) -> tuple:
    return (
        s.session_id, s.agent_id, s.gateway_id, s.site_id, s.peer, s.connected_at, s.disconnected_at, s.reason,
        _dumps(list(s.asset_ids)),
    )


def session_summary(row: tuple) -> SessionSummary:
    session_id, agent_id, gateway_id, site_id, peer, connected_at, disconnected_at, reason, asset_ids = row
    return SessionSummary(
        session_id=session_id, agent_id=agent_id, gateway_id=gateway_id, site_id=site_id, peer=peer,
        connected_at=connected_at, asset_ids=tuple(json.loads(asset_ids)), disconnected_at=disconnected_at,
        reason=reason,
    )


HEARTBEAT_COLUMNS = ("session_id", "gateway_id", "site_id", "ts", "received_at", "asset_ids")


def heartbeat_row(h: HeartbeatRow) -> tuple:
    return (h.session_id, h.gateway_id, h.site_id, h.timestamp, h.received_at, _dumps(list(h.asset_ids)))


def heartbeat(row: tuple) -> HeartbeatRow:
    session_id, gateway_id, site_id, ts, received_at, asset_ids = row
    return HeartbeatRow(session_id, gateway_id, site_id, tuple(json.loads(asset_ids)), ts, received_at)
