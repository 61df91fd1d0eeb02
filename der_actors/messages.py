"""Our own message types: what travels between actors and across the link.

Protobuf classes never leave `transport/` (or the edge's link); `transport.codec` converts them to
and from these. Timestamps are float seconds since the Unix epoch, UTC (cheap to make and compare;
RFC 3339 in JSON, google.protobuf.Timestamp on the wire).
"""

from __future__ import annotations

import enum

import attrs

from der_actors.model import AssetType

# 2 added TelemetryAck (spooled, at-least-once telemetry). A version-1 agent still works: it ignores
# the acks. Version 0 means the field was never set: an agent older than this contract.
PROTOCOL_VERSION = 2
MIN_PROTOCOL_VERSION = 1


@attrs.frozen
class Allocation:
    """One asset's share of a site setpoint (MW, +export / -import)."""

    asset_id: str
    mw: float


# --- type-specific telemetry details ---------------------------------------------------------


@attrs.frozen
class BessDetails:
    soc_pct: float
    energy_mwh: float


@attrs.frozen
class PvDetails:
    irradiance_wm2: float
    available_mw: float


@attrs.frozen
class WindDetails:
    wind_speed_ms: float
    available_mw: float


@attrs.frozen
class EvDetails:
    active_sessions: int
    station_state: str


Details = BessDetails | PvDetails | WindDetails | EvDetails | None


# --- agent -> headend ------------------------------------------------------------------------


@attrs.frozen
class AssetInfo:
    """An asset as the agent announces it in Register (its identity and limits)."""

    asset_id: str
    site_id: str
    type: AssetType
    max_mw: float
    min_mw: float
    capacity_mwhr: float | None = None
    ramp_rate_mw_per_min: float = 1.0
    efficiency: float = 1.0
    name: str = ""


@attrs.frozen
class Register:
    agent_id: str
    gateway_id: str
    site_id: str
    asset_id: str  # legacy primary asset ("" for a gateway)
    assets: tuple[AssetInfo, ...]
    protocol_version: int = PROTOCOL_VERSION
    agent_version: str = ""


@attrs.frozen
class Telemetry:
    asset_id: str
    site_id: str
    seq: int  # per asset, increasing
    timestamp: float
    mw: float
    mw_setpoint: float
    online: bool = True
    status: str = ""
    fault_code: str = ""
    details: Details = None


@attrs.frozen
class TelemetryBatch:
    points: tuple[Telemetry, ...]


@attrs.frozen
class Heartbeat:
    timestamp: float


class AckState(enum.Enum):
    RECEIVED = "received"
    APPLIED = "applied"
    REJECTED = "rejected"


@attrs.frozen
class SetpointAck:
    setpoint_id: str
    state: AckState
    message: str = ""
    allocations: tuple[Allocation, ...] = ()


AgentMessage = Register | Telemetry | TelemetryBatch | Heartbeat | SetpointAck


# --- headend -> agent ------------------------------------------------------------------------


@attrs.frozen
class Rejection:
    asset_id: str
    reason: str


@attrs.frozen
class RegisterAck:
    session_id: str
    accepted_asset_ids: tuple[str, ...]
    rejected: tuple[Rejection, ...] = ()


@attrs.frozen
class Setpoint:
    """A setpoint for one asset (asset_id set: asset wins, never fans out) or a whole site."""

    setpoint_id: str
    asset_id: str
    site_id: str
    mw: float
    duration_s: float = 0.0  # 0 = hold until replaced
    issued_at: float = 0.0


@attrs.frozen
class SeqRange:
    """Inclusive range of one asset's telemetry seqs."""

    asset_id: str
    first_seq: int
    last_seq: int


@attrs.frozen
class TelemetryAck:
    """These points are durably stored at the headend: the agent may drop them from its spool."""

    ranges: tuple[SeqRange, ...]


HeadendMessage = RegisterAck | Setpoint | Heartbeat | TelemetryAck
