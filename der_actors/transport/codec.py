"""Protobuf <-> our message types, at the boundary. Nothing else touches the generated classes.

Decoding checks what protobuf cannot: a oneof that is unset, an unknown enum value. Such a message
raises `ProtocolError` naming the field, and the session answers it as the agent's fault.
"""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from der_actors import messages as m
from der_actors.model import AssetType
from der_actors.storage.base import PointRow
from der_actors.storage.rows import DETAILS_JSON_BY_KIND
from der_actors.transport.link import ReceivedPoints
from der_actors.transport.pb import agent_pb2 as pb


class ProtocolError(ValueError):
    """A message from the peer that does not follow the contract (the peer's fault)."""


_TYPE_TO_PB = {
    AssetType.BESS: pb.ASSET_TYPE_BESS,
    AssetType.PV: pb.ASSET_TYPE_PV,
    AssetType.WIND: pb.ASSET_TYPE_WIND,
    AssetType.EV_CHARGER: pb.ASSET_TYPE_EV_CHARGER,
}
_TYPE_FROM_PB = {v: k for k, v in _TYPE_TO_PB.items()}
_ACK_TO_PB = {
    m.AckState.RECEIVED: pb.SetpointAck.RECEIVED,
    m.AckState.APPLIED: pb.SetpointAck.APPLIED,
    m.AckState.REJECTED: pb.SetpointAck.REJECTED,
}
_ACK_FROM_PB = {v: k for k, v in _ACK_TO_PB.items()}


# --- time --------------------------------------------------------------------------------------


def _ts_to_pb(t: float, out: Timestamp) -> None:
    seconds = int(t // 1)
    out.seconds = seconds
    out.nanos = int(round((t - seconds) * 1e9)) % 1_000_000_000


def _ts_from_pb(ts: Timestamp) -> float:
    return ts.seconds + ts.nanos * 1e-9


# --- details -----------------------------------------------------------------------------------


def _details_to_pb(d: m.Details, out: pb.Telemetry) -> None:
    if isinstance(d, m.BessDetails):
        out.bess.soc_pct = d.soc_pct
        out.bess.energy_mwh = d.energy_mwh
    elif isinstance(d, m.PvDetails):
        out.pv.irradiance_wm2 = d.irradiance_wm2
        out.pv.available_mw = d.available_mw
    elif isinstance(d, m.WindDetails):
        out.wind.wind_speed_ms = d.wind_speed_ms
        out.wind.available_mw = d.available_mw
    elif isinstance(d, m.EvDetails):
        out.ev.active_sessions = d.active_sessions
        out.ev.station_state = d.station_state


def _details_from_pb(p: pb.Telemetry) -> m.Details:
    which = p.WhichOneof("details")
    if which == "bess":
        d = p.bess
        return m.BessDetails(d.soc_pct, d.energy_mwh)
    if which == "pv":
        d = p.pv
        return m.PvDetails(d.irradiance_wm2, d.available_mw)
    if which == "wind":
        d = p.wind
        return m.WindDetails(d.wind_speed_ms, d.available_mw)
    if which == "ev":
        d = p.ev
        return m.EvDetails(d.active_sessions, d.station_state)
    return None


# --- telemetry ---------------------------------------------------------------------------------


def telemetry_to_pb(t: m.Telemetry, out: pb.Telemetry) -> None:
    out.asset_id = t.asset_id
    out.site_id = t.site_id
    out.seq = t.seq
    _ts_to_pb(t.timestamp, out.timestamp)
    out.mw = t.mw
    out.mw_setpoint = t.mw_setpoint
    out.online = t.online
    out.status = t.status
    out.fault_code = t.fault_code
    _details_to_pb(t.details, out)


def telemetry_from_pb(p: pb.Telemetry) -> m.Telemetry:
    # positional: this runs for every point the headend receives
    return m.Telemetry(
        p.asset_id, p.site_id, p.seq, _ts_from_pb(p.timestamp), p.mw, p.mw_setpoint, p.online, p.status,
        p.fault_code, _details_from_pb(p),
    )


# --- agent -> headend --------------------------------------------------------------------------


def _asset_info_to_pb(a: m.AssetInfo, out: pb.AssetInfo) -> None:
    out.asset_id = a.asset_id
    out.site_id = a.site_id
    out.type = _TYPE_TO_PB[a.type]
    out.max_mw = a.max_mw
    out.min_mw = a.min_mw
    out.capacity_mwhr = a.capacity_mwhr or 0.0
    out.ramp_rate_mw_per_min = a.ramp_rate_mw_per_min
    out.efficiency = a.efficiency
    out.name = a.name


def _asset_info_from_pb(p: pb.AssetInfo, index: int) -> m.AssetInfo:
    try:
        asset_type = _TYPE_FROM_PB[p.type]
    except KeyError:
        raise ProtocolError(f"register.assets[{index}].type: unknown asset type {p.type}") from None
    return m.AssetInfo(
        asset_id=p.asset_id,
        site_id=p.site_id,
        type=asset_type,
        max_mw=p.max_mw,
        min_mw=p.min_mw,
        capacity_mwhr=p.capacity_mwhr or None,
        ramp_rate_mw_per_min=p.ramp_rate_mw_per_min,
        efficiency=p.efficiency,
        name=p.name,
    )


def agent_to_pb(msg: m.AgentMessage) -> pb.AgentMessage:
    out = pb.AgentMessage()
    if isinstance(msg, m.TelemetryBatch):
        points = out.telemetry_batch.points
        for t in msg.points:
            telemetry_to_pb(t, points.add())
    elif isinstance(msg, m.Telemetry):
        telemetry_to_pb(msg, out.telemetry)
    elif isinstance(msg, m.Heartbeat):
        _ts_to_pb(msg.timestamp, out.heartbeat.timestamp)
    elif isinstance(msg, m.SetpointAck):
        ack = out.setpoint_ack
        ack.setpoint_id = msg.setpoint_id
        ack.state = _ACK_TO_PB[msg.state]
        ack.message = msg.message
        for a in msg.allocations:
            ack.allocations.add(asset_id=a.asset_id, mw=a.mw)
    elif isinstance(msg, m.Register):
        reg = out.register
        reg.agent_id = msg.agent_id
        reg.gateway_id = msg.gateway_id
        reg.site_id = msg.site_id
        reg.asset_id = msg.asset_id
        for a in msg.assets:
            _asset_info_to_pb(a, reg.assets.add())
        reg.protocol_version = msg.protocol_version
        reg.agent_version = msg.agent_version
    else:
        raise TypeError(f"not an agent message: {msg!r}")
    return out


def agent_from_pb(p: pb.AgentMessage) -> m.AgentMessage:
    which = p.WhichOneof("body")
    if which == "telemetry_batch":
        return m.TelemetryBatch(points=tuple(telemetry_from_pb(t) for t in p.telemetry_batch.points))
    if which == "telemetry":
        return telemetry_from_pb(p.telemetry)
    if which == "heartbeat":
        return m.Heartbeat(timestamp=_ts_from_pb(p.heartbeat.timestamp))
    if which == "setpoint_ack":
        ack = p.setpoint_ack
        try:
            state = _ACK_FROM_PB[ack.state]
        except KeyError:
            raise ProtocolError(f"setpoint_ack.state: unknown state {ack.state}") from None
        return m.SetpointAck(
            setpoint_id=ack.setpoint_id,
            state=state,
            message=ack.message,
            allocations=tuple(m.Allocation(a.asset_id, a.mw) for a in ack.allocations),
        )
    if which == "register":
        reg = p.register
        return m.Register(
            agent_id=reg.agent_id,
            gateway_id=reg.gateway_id,
            site_id=reg.site_id,
            asset_id=reg.asset_id,
            assets=tuple(_asset_info_from_pb(a, i) for i, a in enumerate(reg.assets)),
            protocol_version=reg.protocol_version,
            agent_version=reg.agent_version,
        )
    raise ProtocolError("body: empty AgentMessage (no oneof field set)")


def received_from_pb(p: pb.AgentMessage, received_at: float) -> m.AgentMessage | ReceivedPoints:
    """`agent_from_pb` as the headend's gRPC reader calls it: telemetry comes out as store rows."""
    which = p.WhichOneof("body")
    if which == "telemetry_batch":
        return ReceivedPoints(point_rows_from_pb(p.telemetry_batch.points, received_at))
    if which == "telemetry":
        return ReceivedPoints(point_rows_from_pb((p.telemetry,), received_at))
    return agent_from_pb(p)


def point_rows_from_pb(points, received_at: float) -> list[PointRow]:
    """Each point as `rows.point_row(telemetry_from_pb(p), received_at)` makes it, without the
    `Telemetry` and details objects in between (the details JSON is written from the wire's fields).
    The headend's hot path: this runs for every point it receives."""
    rows: list[PointRow] = []
    append = rows.append
    for t in points:
        which = t.WhichOneof("details")
        ts = t.timestamp
        append((
            t.asset_id, t.seq, ts.seconds + ts.nanos * 1e-9, received_at, t.site_id, t.mw, t.mw_setpoint, t.online,
            t.status, t.fault_code, DETAILS_JSON_BY_KIND[which](getattr(t, which)) if which else None,
        ))
    return rows


# --- headend -> agent --------------------------------------------------------------------------


def headend_to_pb(msg: m.HeadendMessage) -> pb.HeadendMessage:
    out = pb.HeadendMessage()
    if isinstance(msg, m.Setpoint):
        sp = out.setpoint
        sp.setpoint_id = msg.setpoint_id
        sp.asset_id = msg.asset_id
        sp.site_id = msg.site_id
        sp.mw = msg.mw
        sp.duration_s = msg.duration_s
        _ts_to_pb(msg.issued_at, sp.issued_at)
    elif isinstance(msg, m.Heartbeat):
        _ts_to_pb(msg.timestamp, out.heartbeat.timestamp)
    elif isinstance(msg, m.TelemetryAck):
        ranges = out.telemetry_ack.ranges
        for r in msg.ranges:
            ranges.add(asset_id=r.asset_id, first_seq=r.first_seq, last_seq=r.last_seq)
    elif isinstance(msg, m.RegisterAck):
        ack = out.register_ack
        ack.session_id = msg.session_id
        ack.accepted_asset_ids.extend(msg.accepted_asset_ids)
        for r in msg.rejected:
            ack.rejected.add(asset_id=r.asset_id, reason=r.reason)
    else:
        raise TypeError(f"not a headend message: {msg!r}")
    return out


def headend_from_pb(p: pb.HeadendMessage) -> m.HeadendMessage:
    which = p.WhichOneof("body")
    if which == "setpoint":
        sp = p.setpoint
        return m.Setpoint(
            setpoint_id=sp.setpoint_id,
            asset_id=sp.asset_id,
            site_id=sp.site_id,
            mw=sp.mw,
            duration_s=sp.duration_s,
            issued_at=_ts_from_pb(sp.issued_at),
        )
    if which == "heartbeat":
        return m.Heartbeat(timestamp=_ts_from_pb(p.heartbeat.timestamp))
    if which == "telemetry_ack":
        return m.TelemetryAck(
            ranges=tuple(m.SeqRange(r.asset_id, r.first_seq, r.last_seq) for r in p.telemetry_ack.ranges)
        )
    if which == "register_ack":
        ack = p.register_ack
        return m.RegisterAck(
            session_id=ack.session_id,
            accepted_asset_ids=tuple(ack.accepted_asset_ids),
            rejected=tuple(m.Rejection(r.asset_id, r.reason) for r in ack.rejected),
        )
    raise ProtocolError("body: empty HeadendMessage (no oneof field set)")
