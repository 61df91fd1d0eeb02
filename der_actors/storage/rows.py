"""Our types <-> SQL row tuples, the same for both engines (pure).

Nested parts are JSON text; floats go through `repr`, so they read back bit for bit and a stored
`DispatchView` reads back equal to the one written.
"""

from __future__ import annotations

import json

import attrs

from der_actors.lifecycle import DispatchState, Lifecycle, Transition
from der_actors.messages import Allocation, BessDetails, Details, EvDetails, PvDetails, Telemetry, WindDetails
from der_actors.storage.base import HeartbeatRow, StoredPoint
from der_actors.views import DispatchView, Leg, SessionSummary

_DETAIL_KINDS: dict[str, type] = {"bess": BessDetails, "pv": PvDetails, "wind": WindDetails, "ev": EvDetails}
_KIND_OF = {cls: kind for kind, cls in _DETAIL_KINDS.items()}


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def details_json(details: Details) -> str | None:
    if details is None:
        return None
    return _dumps({"kind": _KIND_OF[type(details)], **attrs.asdict(details)})


def details_from(text: str | None) -> Details:
    if text is None:
        return None
    fields = json.loads(text)
    return _DETAIL_KINDS[fields.pop("kind")](**fields)


# --- telemetry -------------------------------------------------------------------------------

TELEMETRY_COLUMNS = (
    "asset_key", "seq", "ts", "received_at", "site_id", "mw", "mw_setpoint", "online", "status", "fault_code", "details",
)
# what a history read selects (the asset is known from the query)
TELEMETRY_READ = "site_id, seq, ts, received_at, mw, mw_setpoint, online, status, fault_code, details"


def telemetry_row(asset_key: int, sp: StoredPoint) -> tuple:
    p = sp.point
    return (
        asset_key, p.seq, p.timestamp, sp.received_at, p.site_id, p.mw, p.mw_setpoint, bool(p.online),
        p.status, p.fault_code, details_json(p.details),
    )


def stored_point(asset_id: str, row: tuple) -> StoredPoint:
    site_id, seq, ts, received_at, mw, mw_setpoint, online, status, fault_code, details = row
    point = Telemetry(asset_id, site_id, seq, ts, mw, mw_setpoint, bool(online), status, fault_code, details_from(details))
    return StoredPoint(point, received_at)


# --- dispatches ------------------------------------------------------------------------------

DISPATCH_COLUMNS = (
    "dispatch_id", "created_at", "updated_at", "state", "target", "asset_id", "site_id", "requested_mw",
    "applied_mw", "clamped", "duration_s", "mode", "shortfall_mw", "message", "lifecycle", "legs", "allocations",
)


def dispatch_row(v: DispatchView) -> tuple:
    history = v.lifecycle.history
    return (
        v.dispatch_id, history[0].at, history[-1].at, v.lifecycle.state.value, v.target, v.asset_id, v.site_id,
        v.requested_mw, v.applied_mw, bool(v.clamped), v.duration_s, v.mode, v.shortfall_mw, v.message,
        _dumps([[t.state.value, t.at, t.reason] for t in history]),
        _dumps([attrs.asdict(leg) for leg in v.legs]),
        _dumps([[a.asset_id, a.mw] for a in v.allocations]),
    )


def dispatch_view(row: tuple) -> DispatchView:
    (dispatch_id, _created, _updated, _state, target, asset_id, site_id, requested_mw, applied_mw, clamped,
     duration_s, mode, shortfall_mw, message, lifecycle, legs, allocations) = row
    return DispatchView(
        dispatch_id=dispatch_id,
        target=target,
        asset_id=asset_id,
        site_id=site_id,
        requested_mw=requested_mw,
        applied_mw=applied_mw,
        clamped=bool(clamped),
        duration_s=duration_s,
        mode=mode,
        lifecycle=Lifecycle(tuple(Transition(DispatchState(s), at, reason) for s, at, reason in json.loads(lifecycle))),
        legs=tuple(Leg(**leg) for leg in json.loads(legs)),
        allocations=tuple(Allocation(a, mw) for a, mw in json.loads(allocations)),
        shortfall_mw=shortfall_mw,
        message=message,
    )


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
