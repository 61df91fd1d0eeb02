import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AssetType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ASSET_TYPE_UNSPECIFIED: _ClassVar[AssetType]
    ASSET_TYPE_BESS: _ClassVar[AssetType]
    ASSET_TYPE_PV: _ClassVar[AssetType]
    ASSET_TYPE_WIND: _ClassVar[AssetType]
    ASSET_TYPE_EV_CHARGER: _ClassVar[AssetType]
ASSET_TYPE_UNSPECIFIED: AssetType
ASSET_TYPE_BESS: AssetType
ASSET_TYPE_PV: AssetType
ASSET_TYPE_WIND: AssetType
ASSET_TYPE_EV_CHARGER: AssetType

class AgentMessage(_message.Message):
    __slots__ = ("register", "telemetry", "telemetry_batch", "heartbeat", "setpoint_ack")
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_BATCH_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    SETPOINT_ACK_FIELD_NUMBER: _ClassVar[int]
    register: Register
    telemetry: Telemetry
    telemetry_batch: TelemetryBatch
    heartbeat: Heartbeat
    setpoint_ack: SetpointAck
    def __init__(self, register: _Optional[_Union[Register, _Mapping]] = ..., telemetry: _Optional[_Union[Telemetry, _Mapping]] = ..., telemetry_batch: _Optional[_Union[TelemetryBatch, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., setpoint_ack: _Optional[_Union[SetpointAck, _Mapping]] = ...) -> None: ...

class HeadendMessage(_message.Message):
    __slots__ = ("register_ack", "setpoint", "heartbeat", "telemetry_ack")
    REGISTER_ACK_FIELD_NUMBER: _ClassVar[int]
    SETPOINT_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_ACK_FIELD_NUMBER: _ClassVar[int]
    register_ack: RegisterAck
    setpoint: Setpoint
    heartbeat: Heartbeat
    telemetry_ack: TelemetryAck
    def __init__(self, register_ack: _Optional[_Union[RegisterAck, _Mapping]] = ..., setpoint: _Optional[_Union[Setpoint, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., telemetry_ack: _Optional[_Union[TelemetryAck, _Mapping]] = ...) -> None: ...

class AssetInfo(_message.Message):
    __slots__ = ("asset_id", "site_id", "type", "max_mw", "min_mw", "capacity_mwhr", "ramp_rate_mw_per_min", "efficiency", "name")
    ASSET_ID_FIELD_NUMBER: _ClassVar[int]
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MAX_MW_FIELD_NUMBER: _ClassVar[int]
    MIN_MW_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_MWHR_FIELD_NUMBER: _ClassVar[int]
    RAMP_RATE_MW_PER_MIN_FIELD_NUMBER: _ClassVar[int]
    EFFICIENCY_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    asset_id: str
    site_id: str
    type: AssetType
    max_mw: float
    min_mw: float
    capacity_mwhr: float
    ramp_rate_mw_per_min: float
    efficiency: float
    name: str
    def __init__(self, asset_id: _Optional[str] = ..., site_id: _Optional[str] = ..., type: _Optional[_Union[AssetType, str]] = ..., max_mw: _Optional[float] = ..., min_mw: _Optional[float] = ..., capacity_mwhr: _Optional[float] = ..., ramp_rate_mw_per_min: _Optional[float] = ..., efficiency: _Optional[float] = ..., name: _Optional[str] = ...) -> None: ...

class Register(_message.Message):
    __slots__ = ("agent_id", "gateway_id", "site_id", "asset_id", "assets", "protocol_version", "agent_version")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    ASSET_ID_FIELD_NUMBER: _ClassVar[int]
    ASSETS_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    gateway_id: str
    site_id: str
    asset_id: str
    assets: _containers.RepeatedCompositeFieldContainer[AssetInfo]
    protocol_version: int
    agent_version: str
    def __init__(self, agent_id: _Optional[str] = ..., gateway_id: _Optional[str] = ..., site_id: _Optional[str] = ..., asset_id: _Optional[str] = ..., assets: _Optional[_Iterable[_Union[AssetInfo, _Mapping]]] = ..., protocol_version: _Optional[int] = ..., agent_version: _Optional[str] = ...) -> None: ...

class Rejection(_message.Message):
    __slots__ = ("asset_id", "reason")
    ASSET_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    asset_id: str
    reason: str
    def __init__(self, asset_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RegisterAck(_message.Message):
    __slots__ = ("session_id", "accepted_asset_ids", "rejected")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_ASSET_IDS_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    accepted_asset_ids: _containers.RepeatedScalarFieldContainer[str]
    rejected: _containers.RepeatedCompositeFieldContainer[Rejection]
    def __init__(self, session_id: _Optional[str] = ..., accepted_asset_ids: _Optional[_Iterable[str]] = ..., rejected: _Optional[_Iterable[_Union[Rejection, _Mapping]]] = ...) -> None: ...

class BessDetails(_message.Message):
    __slots__ = ("soc_pct", "energy_mwh")
    SOC_PCT_FIELD_NUMBER: _ClassVar[int]
    ENERGY_MWH_FIELD_NUMBER: _ClassVar[int]
    soc_pct: float
    energy_mwh: float
    def __init__(self, soc_pct: _Optional[float] = ..., energy_mwh: _Optional[float] = ...) -> None: ...

class PvDetails(_message.Message):
    __slots__ = ("irradiance_wm2", "available_mw")
    IRRADIANCE_WM2_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_MW_FIELD_NUMBER: _ClassVar[int]
    irradiance_wm2: float
    available_mw: float
    def __init__(self, irradiance_wm2: _Optional[float] = ..., available_mw: _Optional[float] = ...) -> None: ...

class WindDetails(_message.Message):
    __slots__ = ("wind_speed_ms", "available_mw")
    WIND_SPEED_MS_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_MW_FIELD_NUMBER: _ClassVar[int]
    wind_speed_ms: float
    available_mw: float
    def __init__(self, wind_speed_ms: _Optional[float] = ..., available_mw: _Optional[float] = ...) -> None: ...

class EvDetails(_message.Message):
    __slots__ = ("active_sessions", "station_state")
    ACTIVE_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    STATION_STATE_FIELD_NUMBER: _ClassVar[int]
    active_sessions: int
    station_state: str
    def __init__(self, active_sessions: _Optional[int] = ..., station_state: _Optional[str] = ...) -> None: ...

class Telemetry(_message.Message):
    __slots__ = ("asset_id", "site_id", "seq", "timestamp", "mw", "mw_setpoint", "online", "status", "fault_code", "bess", "pv", "wind", "ev")
    ASSET_ID_FIELD_NUMBER: _ClassVar[int]
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    MW_FIELD_NUMBER: _ClassVar[int]
    MW_SETPOINT_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    FAULT_CODE_FIELD_NUMBER: _ClassVar[int]
    BESS_FIELD_NUMBER: _ClassVar[int]
    PV_FIELD_NUMBER: _ClassVar[int]
    WIND_FIELD_NUMBER: _ClassVar[int]
    EV_FIELD_NUMBER: _ClassVar[int]
    asset_id: str
    site_id: str
    seq: int
    timestamp: _timestamp_pb2.Timestamp
    mw: float
    mw_setpoint: float
    online: bool
    status: str
    fault_code: str
    bess: BessDetails
    pv: PvDetails
    wind: WindDetails
    ev: EvDetails
    def __init__(self, asset_id: _Optional[str] = ..., site_id: _Optional[str] = ..., seq: _Optional[int] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., mw: _Optional[float] = ..., mw_setpoint: _Optional[float] = ..., online: _Optional[bool] = ..., status: _Optional[str] = ..., fault_code: _Optional[str] = ..., bess: _Optional[_Union[BessDetails, _Mapping]] = ..., pv: _Optional[_Union[PvDetails, _Mapping]] = ..., wind: _Optional[_Union[WindDetails, _Mapping]] = ..., ev: _Optional[_Union[EvDetails, _Mapping]] = ...) -> None: ...

class TelemetryBatch(_message.Message):
    __slots__ = ("points",)
    POINTS_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[Telemetry]
    def __init__(self, points: _Optional[_Iterable[_Union[Telemetry, _Mapping]]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("timestamp",)
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    timestamp: _timestamp_pb2.Timestamp
    def __init__(self, timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Setpoint(_message.Message):
    __slots__ = ("setpoint_id", "asset_id", "site_id", "mw", "duration_s", "issued_at")
    SETPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    ASSET_ID_FIELD_NUMBER: _ClassVar[int]
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    MW_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_FIELD_NUMBER: _ClassVar[int]
    setpoint_id: str
    asset_id: str
    site_id: str
    mw: float
    duration_s: float
    issued_at: _timestamp_pb2.Timestamp
    def __init__(self, setpoint_id: _Optional[str] = ..., asset_id: _Optional[str] = ..., site_id: _Optional[str] = ..., mw: _Optional[float] = ..., duration_s: _Optional[float] = ..., issued_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Allocation(_message.Message):
    __slots__ = ("asset_id", "mw")
    ASSET_ID_FIELD_NUMBER: _ClassVar[int]
    MW_FIELD_NUMBER: _ClassVar[int]
    asset_id: str
    mw: float
    def __init__(self, asset_id: _Optional[str] = ..., mw: _Optional[float] = ...) -> None: ...

class SetpointAck(_message.Message):
    __slots__ = ("setpoint_id", "state", "message", "allocations")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[SetpointAck.State]
        RECEIVED: _ClassVar[SetpointAck.State]
        APPLIED: _ClassVar[SetpointAck.State]
        REJECTED: _ClassVar[SetpointAck.State]
    STATE_UNSPECIFIED: SetpointAck.State
    RECEIVED: SetpointAck.State
    APPLIED: SetpointAck.State
    REJECTED: SetpointAck.State
    SETPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ALLOCATIONS_FIELD_NUMBER: _ClassVar[int]
    setpoint_id: str
    state: SetpointAck.State
    message: str
    allocations: _containers.RepeatedCompositeFieldContainer[Allocation]
    def __init__(self, setpoint_id: _Optional[str] = ..., state: _Optional[_Union[SetpointAck.State, str]] = ..., message: _Optional[str] = ..., allocations: _Optional[_Iterable[_Union[Allocation, _Mapping]]] = ...) -> None: ...

class SeqRange(_message.Message):
    __slots__ = ("asset_id", "first_seq", "last_seq")
    ASSET_ID_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    asset_id: str
    first_seq: int
    last_seq: int
    def __init__(self, asset_id: _Optional[str] = ..., first_seq: _Optional[int] = ..., last_seq: _Optional[int] = ...) -> None: ...

class TelemetryAck(_message.Message):
    __slots__ = ("ranges",)
    RANGES_FIELD_NUMBER: _ClassVar[int]
    ranges: _containers.RepeatedCompositeFieldContainer[SeqRange]
    def __init__(self, ranges: _Optional[_Iterable[_Union[SeqRange, _Mapping]]] = ...) -> None: ...
