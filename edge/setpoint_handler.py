"""Setpoints at the edge: RECEIVED at once, then APPLIED or REJECTED (rules in `edge.setpoints`).

A site setpoint is split across the assets that are online (actor running) and accepted in the
session's RegisterAck. Setpoints are handled one at a time, in arrival order. Final outcomes are kept
by setpoint_id in an `OutcomeStore` (on disk, so across sessions and agent restarts): a resent
setpoint is answered with its earlier outcome and applied at most once. The outcome is recorded
before the final ack is sent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import structlog
import trio

from der_actors.messages import AckState, AgentMessage, Allocation, Setpoint, SetpointAck
from der_actors.split import SplitMember
from edge.asset import AssetHandle, AssetUnavailable
from edge.config import EdgeConfig
from edge.outcomes import OutcomeStore
from edge.setpoints import ApplySplit, ApplyToAsset, Reject, applied_message, route_setpoint, split_message
from edge.stats import LinkStats

__all__ = ["SetpointHandler", "APPLY_TIMEOUT_S"]

log = structlog.get_logger("der.edge")

APPLY_TIMEOUT_S = 10.0  # an asset actor restarting after a crash answers well within this

Send = Callable[[AgentMessage], Awaitable[bool]]


class SetpointHandler:
    def __init__(self, config: EdgeConfig, assets: Mapping[str, AssetHandle], outcomes: OutcomeStore,
                 stats: LinkStats) -> None:
        self._config = config
        self._assets = assets
        self._outcomes = outcomes
        self._stats = stats

    async def handle(self, sp: Setpoint, accepted: frozenset[str], send: Send) -> bool:
        """Ack, apply, ack; returns False if the link dropped while answering."""
        self._stats.setpoints_received += 1
        earlier = self._outcomes.get(sp.setpoint_id) if sp.setpoint_id else None
        if earlier is not None:
            self._stats.setpoints_duplicate += 1
            log.info("setpoint_duplicate", setpoint_id=sp.setpoint_id, outcome=earlier.state.value)
            return await send(earlier)
        log.info("setpoint_received", setpoint_id=sp.setpoint_id, asset_id=sp.asset_id,
                 site_id=sp.site_id, mw=sp.mw, duration_s=sp.duration_s)
        if not await send(SetpointAck(sp.setpoint_id, AckState.RECEIVED)):
            return False
        # Shielded: once started, an application finishes and its outcome is remembered even if the
        # session drops meanwhile, so a resend is answered from the store rather than applied twice.
        with trio.CancelScope(deadline=trio.current_time() + APPLY_TIMEOUT_S, shield=True) as scope:
            ack = await self._carry_out(sp, accepted)
        if scope.cancelled_caught:
            ack = SetpointAck(sp.setpoint_id, AckState.REJECTED,
                              f"not applied within {APPLY_TIMEOUT_S:g} s (asset actor unavailable)")
        if ack.state is AckState.APPLIED:
            self._stats.setpoints_applied += 1
        else:
            self._stats.setpoints_rejected += 1
            log.warning("setpoint_rejected", setpoint_id=sp.setpoint_id, reason=ack.message)
        if sp.setpoint_id:
            self._outcomes.put(ack, sp.duration_s)  # one short line appended: inline, before the ack leaves
        return await send(ack)

    async def _carry_out(self, sp: Setpoint, accepted: frozenset[str]) -> SetpointAck:
        members = [
            SplitMember(
                asset_id=h.asset.id,
                max_mw=h.asset.max_mw,
                min_mw=h.asset.min_mw,
                online=h.snapshot.online and h.asset.id in accepted,
            )
            for h in self._assets.values()
        ]
        route = route_setpoint(
            sp,
            site_id=self._config.site_id,
            primary_asset_id=self._config.primary_asset_id,
            members=members,
        )
        if isinstance(route, Reject):
            return SetpointAck(sp.setpoint_id, AckState.REJECTED, route.reason)
        if isinstance(route, ApplyToAsset):
            try:
                applied = await self._assets[route.asset_id].apply_setpoint(route.mw, route.duration_s)
            except AssetUnavailable as exc:
                return SetpointAck(sp.setpoint_id, AckState.REJECTED, str(exc))
            log.info("setpoint_applied", setpoint_id=sp.setpoint_id, asset_id=route.asset_id,
                     requested_mw=route.mw, applied_mw=applied.mw, clamped=applied.clamped)
            return SetpointAck(
                sp.setpoint_id,
                AckState.APPLIED,
                applied_message(route.mw, applied.mw, applied.clamped),
                (Allocation(route.asset_id, applied.mw),),
            )
        assert isinstance(route, ApplySplit)
        return await self._apply_split(sp, route)

    async def _apply_split(self, sp: Setpoint, route: ApplySplit) -> SetpointAck:
        split = route.split
        log.info("setpoint_split", setpoint_id=sp.setpoint_id, requested_mw=split.requested_mw,
                 placed_mw=split.placed_mw, shortfall_mw=split.shortfall_mw,
                 allocations={a.asset_id: a.mw for a in split.allocations})
        applied: list[Allocation] = []
        failures: list[str] = []
        for alloc in split.allocations:
            try:
                result = await self._assets[alloc.asset_id].apply_setpoint(alloc.mw, route.duration_s)
            except AssetUnavailable as exc:
                failures.append(str(exc))
                continue
            applied.append(Allocation(alloc.asset_id, result.mw))
            log.info("setpoint_applied", setpoint_id=sp.setpoint_id, asset_id=alloc.asset_id,
                     requested_mw=alloc.mw, applied_mw=result.mw, clamped=result.clamped)
        state = AckState.APPLIED if applied else AckState.REJECTED
        message = split_message(split, tuple(applied), tuple(failures))
        return SetpointAck(sp.setpoint_id, state, message, tuple(applied))
