"""Immutable snapshots that actors publish for readers (REST, other actors).

An actor replaces its snapshot after each change; readers never see a half-made update and never
touch the actor's own fields. Writes always go through the actor's inbox.
"""

from __future__ import annotations

import attrs

from der_actors.lifecycle import Lifecycle
from der_actors.messages import Allocation, Telemetry
from der_actors.model import Asset


@attrs.frozen
class SessionSummary:
    session_id: str
    agent_id: str
    gateway_id: str
    site_id: str
    peer: str
    connected_at: float
    asset_ids: tuple[str, ...] = ()
    disconnected_at: float | None = None
    reason: str = ""


@attrs.frozen
class SessionView:
    summary: SessionSummary
    last_seen: float
    is_gateway: bool
    telemetry_points: int = 0
    ignored_points: int = 0


@attrs.frozen
class AssetView:
    asset: Asset
    latest: Telemetry | None = None
    received_at: float | None = None
    session: SessionSummary | None = None  # the session serving it now, None when disconnected
    sessions: tuple[SessionSummary, ...] = ()  # the last few, newest first
    setpoint_mw: float | None = None
    setpoint_dispatch_id: str | None = None

    @property
    def connected(self) -> bool:
        return self.session is not None


@attrs.frozen
class Leg:
    """One setpoint sent for a dispatch (one per asset when the headend splits)."""

    setpoint_id: str
    session_id: str
    asset_id: str  # "" for a site setpoint the gateway splits
    mw: float
    outcome: str = ""  # "", "received", "applied", "rejected"
    message: str = ""


@attrs.frozen
class DispatchView:
    dispatch_id: str
    target: str  # "asset" | "site"
    asset_id: str | None
    site_id: str
    requested_mw: float
    applied_mw: float
    clamped: bool
    duration_s: float
    mode: str  # "asset" | "gateway_split" | "headend_split"
    lifecycle: Lifecycle
    legs: tuple[Leg, ...] = ()
    allocations: tuple[Allocation, ...] = ()
    shortfall_mw: float = 0.0
    message: str = ""
    expires_at: float | None = None  # never delivered after this (epoch s); None: no TTL
