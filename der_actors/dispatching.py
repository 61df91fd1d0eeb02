"""Dispatch rules (pure): validate-and-plan a request, then fold the agent's acks into the outcome.

Targets: an asset (clamped to its limits) or a site. A site goes whole to the gateway when one gateway
session serves every asset of it (the gateway splits with the same function); otherwise the headend
splits across the connected assets and sends per-asset setpoints.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Container

import attrs

from der_actors.lifecycle import DispatchState, Lifecycle
from der_actors.messages import AckState, Setpoint, SetpointAck
from der_actors.model import Inventory
from der_actors.split import SplitMember, SplitResult, split_site
from der_actors.views import DispatchView, Leg


@attrs.frozen
class DispatchRequest:
    mw: float
    asset_id: str | None = None
    site_id: str | None = None
    duration_s: float = 0.0
    ttl_s: float | None = None  # None: the headend's default

    @property
    def target_key(self) -> str:
        """Dispatches with the same key replace each other while undelivered."""
        return f"asset:{self.asset_id}" if self.asset_id is not None else f"site:{self.site_id}"


def request_of(view: DispatchView) -> DispatchRequest:
    """The request a dispatch was made from (to plan it again at delivery)."""
    return DispatchRequest(mw=view.requested_mw, asset_id=view.asset_id, site_id=None if view.asset_id else view.site_id,
                           duration_s=view.duration_s)


@attrs.frozen
class Refused(Exception):
    """No part of the target is connected now: the dispatch waits as pending."""

    message: str


@attrs.frozen
class Plan:
    view: DispatchView
    setpoints: tuple[tuple[str, Setpoint], ...]  # (session_id, setpoint)


def site_members(inventory: Inventory, site_id: str, connected: Callable[[str], bool]) -> list[SplitMember]:
    return [SplitMember(a.id, a.max_mw, a.min_mw, online=connected(a.id)) for a in inventory.assets_of(site_id)]


def preview_split(inventory: Inventory, site_id: str, mw: float, connected: Callable[[str], bool]) -> SplitResult:
    return split_site(mw, site_members(inventory, site_id, connected))


def new_uuid() -> str:
    return str(uuid.uuid4())


def pending_view(
    req: DispatchRequest, inventory: Inventory, now: float, expires_at: float | None, dispatch_id: str
) -> DispatchView:
    """A dispatch whose target is offline: it waits, showing what it will apply if all goes to plan."""
    if req.asset_id is not None:
        asset = inventory.asset(req.asset_id)
        mw = min(max(req.mw, asset.min_mw), asset.max_mw)
        site_id, shortfall = asset.site_id, 0.0
    else:
        split = preview_split(inventory, req.site_id, req.mw, lambda _: True)
        mw, site_id, shortfall = split.placed_mw, req.site_id, split.shortfall_mw
    return DispatchView(
        dispatch_id, "asset" if req.asset_id else "site", req.asset_id, site_id, req.mw, mw,
        not math.isclose(mw, req.mw, abs_tol=1e-9), req.duration_s, "", Lifecycle.start(now),
        shortfall_mw=shortfall, expires_at=expires_at,
    )


def plan_dispatch(
    req: DispatchRequest,
    inventory: Inventory,
    owners: dict[str, str],
    gateways: Container[str],
    now: float,
    new_id: Callable[[], str] = new_uuid,
    *,
    dispatch_id: str | None = None,
    lifecycle: Lifecycle | None = None,
    expires_at: float | None = None,
) -> Plan:
    """Decide what to send where, now. Raises `Refused` when no part of the target is connected.
    `owners`: asset -> the session serving it; `gateways`: the sessions that serve a whole site.

    A pending dispatch is planned again at delivery with its own id and lifecycle."""
    dispatch_id = dispatch_id or new_id()
    lifecycle = lifecycle or Lifecycle.start(now)
    if req.asset_id is not None:
        asset = inventory.asset(req.asset_id)
        session_id = owners.get(asset.id)
        if session_id is None:
            raise Refused(f"asset {asset.id} ({asset.name}) is not connected")
        mw = min(max(req.mw, asset.min_mw), asset.max_mw)
        sp = Setpoint(dispatch_id, asset.id, asset.site_id, mw, req.duration_s, now)
        view = DispatchView(
            dispatch_id, "asset", asset.id, asset.site_id, req.mw, mw, not math.isclose(mw, req.mw, abs_tol=1e-9),
            req.duration_s, "asset", lifecycle, legs=(Leg(dispatch_id, session_id, asset.id, mw),), expires_at=expires_at,
        )
        return Plan(view, ((session_id, sp),))

    site_id = req.site_id
    assets = inventory.assets_of(site_id)
    serving = {owners.get(a.id) for a in assets}
    split = preview_split(inventory, site_id, req.mw, lambda a: a in owners)
    if not split.allocations:
        raise Refused(f"no asset of site {site_id} is connected")
    clamped = not math.isclose(split.placed_mw, req.mw, abs_tol=1e-9)
    common = dict(
        dispatch_id=dispatch_id, target="site", asset_id=None, site_id=site_id, requested_mw=req.mw,
        applied_mw=split.placed_mw, clamped=clamped, duration_s=req.duration_s, lifecycle=lifecycle,
        shortfall_mw=split.shortfall_mw, expires_at=expires_at,
    )
    if len(serving) == 1 and (gateway := next(iter(serving))) in gateways:
        sp = Setpoint(dispatch_id, "", site_id, split.placed_mw, req.duration_s, now)
        view = DispatchView(mode="gateway_split", legs=(Leg(dispatch_id, gateway, "", split.placed_mw),), **common)
        return Plan(view, ((gateway, sp),))
    legs, setpoints = [], []
    for alloc in split.allocations:
        setpoint_id = new_id()
        session_id = owners[alloc.asset_id]
        legs.append(Leg(setpoint_id, session_id, alloc.asset_id, alloc.mw))
        setpoints.append((session_id, Setpoint(setpoint_id, alloc.asset_id, site_id, alloc.mw, req.duration_s, now)))
    view = DispatchView(mode="headend_split", legs=tuple(legs), allocations=split.allocations, **common)
    return Plan(view, tuple(setpoints))


def apply_ack(view: DispatchView, ack: SetpointAck, now: float) -> DispatchView:
    """Fold one ack into the dispatch. The outcome is decided when every leg has one:
    applied if all applied, rejected if any was rejected."""
    legs = tuple(
        attrs.evolve(leg, outcome=ack.state.value, message=ack.message)
        if leg.setpoint_id == ack.setpoint_id and leg.outcome in ("", "received")
        else leg
        for leg in view.legs
    )
    view = attrs.evolve(view, legs=legs)
    if ack.allocations and view.mode == "gateway_split":
        view = attrs.evolve(view, allocations=ack.allocations)
    state = view.lifecycle.state
    if ack.state is AckState.RECEIVED and state is DispatchState.SENT and all(leg.outcome for leg in legs):
        return attrs.evolve(view, lifecycle=view.lifecycle.to(DispatchState.RECEIVED, now))
    if all(leg.outcome in ("applied", "rejected") for leg in legs) and not state.terminal:
        rejected = [leg for leg in legs if leg.outcome == "rejected"]
        if rejected:
            reason = "; ".join(f"{leg.asset_id or leg.session_id}: {leg.message}" for leg in rejected)
            return attrs.evolve(view, lifecycle=view.lifecycle.to(DispatchState.REJECTED, now, reason), message=reason)
        return attrs.evolve(view, lifecycle=view.lifecycle.to(DispatchState.APPLIED, now), message=legs[0].message if len(legs) == 1 else "")
    return view


def fail_unanswered(view: DispatchView, now: float, timeout_s: float) -> DispatchView:
    if view.lifecycle.state.terminal:
        return view
    reason = f"no outcome from the agent within {timeout_s:g} s"
    return attrs.evolve(view, lifecycle=view.lifecycle.to(DispatchState.FAILED, now, reason), message=reason)
