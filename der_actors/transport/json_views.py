"""Our views as JSON-ready dicts (timestamps as RFC 3339 UTC). One function per resource."""

from __future__ import annotations

import datetime as dt

import attrs

from der_actors.messages import Telemetry
from der_actors.model import Asset, Inventory, Site
from der_actors.split import SplitResult
from der_actors.storage.base import HeartbeatRow, StoredPoint
from der_actors.views import AssetView, DispatchView, SessionSummary


def rfc3339(t: float | None) -> str | None:
    if t is None:
        return None
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def site_json(site: Site) -> dict:
    return {"id": site.id, "name": site.name, "location": site.location}


def asset_json(asset: Asset, inventory: Inventory) -> dict:
    out = attrs.asdict(asset)
    out["type"] = asset.type.value
    out["site_name"] = inventory.site(asset.site_id).name
    return out


def telemetry_json(p: Telemetry, received_at: float | None) -> dict:
    details = attrs.asdict(p.details) if p.details is not None else None
    return {
        "asset_id": p.asset_id,
        "site_id": p.site_id,
        "seq": p.seq,
        "timestamp": rfc3339(p.timestamp),
        "received_at": rfc3339(received_at),
        "mw": p.mw,
        "mw_setpoint": p.mw_setpoint,
        "online": p.online,
        "status": p.status,
        "fault_code": p.fault_code,
        "details": details,
    }


def stored_point_json(sp: StoredPoint) -> dict:
    return telemetry_json(sp.point, sp.received_at)


def session_json(s: SessionSummary) -> dict:
    return {
        "session_id": s.session_id,
        "gateway_id": s.gateway_id,
        "agent_id": s.agent_id,
        "peer": s.peer,
        "connected_at": rfc3339(s.connected_at),
        "disconnected_at": rfc3339(s.disconnected_at),
        "reason": s.reason or None,
    }


def agent_row(view: AssetView, site_name: str, latest_ts: float | None, last_seen: float | None, now: float) -> dict:
    s = view.session
    return {
        "asset_id": view.asset.id,
        "asset_name": view.asset.name,
        "site_id": view.asset.site_id,
        "site_name": site_name,
        "connected": s is not None,
        "peer": s.peer if s else None,
        "gateway_id": s.gateway_id if s else None,
        "session_id": s.session_id if s else None,
        "connected_at": rfc3339(s.connected_at) if s else None,
        "last_seen": rfc3339(last_seen),
        "telemetry_lag_s": round(now - latest_ts, 3) if latest_ts is not None else None,
        "sessions": [session_json(x) for x in view.sessions],
    }


def dispatch_json(v: DispatchView) -> dict:
    return {
        "dispatch_id": v.dispatch_id,
        "target": v.target,
        "asset_id": v.asset_id,
        "site_id": v.site_id,
        "requested_mw": v.requested_mw,
        "mw": v.applied_mw,
        "clamped": v.clamped,
        "shortfall_mw": v.shortfall_mw,
        "duration_s": v.duration_s,
        "mode": v.mode,
        "state": v.lifecycle.state.value,
        "message": v.message or None,
        "allocations": [{"asset_id": a.asset_id, "mw": a.mw} for a in v.allocations],
        "history": [
            {"state": t.state.value, "at": rfc3339(t.at), "reason": t.reason or None} for t in v.lifecycle.history
        ],
        "setpoints": [
            {"setpoint_id": leg.setpoint_id, "session_id": leg.session_id, "asset_id": leg.asset_id or None,
             "mw": leg.mw, "outcome": leg.outcome or None, "message": leg.message or None}
            for leg in v.legs
        ],
    }


def split_json(site_id: str, result: SplitResult) -> dict:
    return {
        "site_id": site_id,
        "requested_mw": result.requested_mw,
        "placed_mw": result.placed_mw,
        "shortfall_mw": result.shortfall_mw,
        "allocations": [{"asset_id": a.asset_id, "mw": a.mw} for a in result.allocations],
    }


def heartbeat_json(h: HeartbeatRow) -> dict:
    return {
        "session_id": h.session_id,
        "gateway_id": h.gateway_id,
        "site_id": h.site_id,
        "timestamp": rfc3339(h.timestamp),
        "received_at": rfc3339(h.received_at),
    }
