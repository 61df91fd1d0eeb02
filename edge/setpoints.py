"""Setpoint rules at the edge (pure): validate, route, word the outcome, remember outcomes by id.

Routing (`route_setpoint`):
- `asset_id` set (even if `site_id` is too): that asset only; an asset we do not serve is refused.
- only `site_id`: it must be ours; the total is split across the site's online assets with
  `split_site`, each asset's limits as its rating.
- neither: the legacy primary asset of a single-asset agent; a gateway refuses it.
Non-finite mw, a negative or non-finite duration, or an empty setpoint_id are refused first.

Duplicates: `OutcomeCache` keeps the final ack of the most recent setpoint ids (LRU), so a setpoint
the headend resends (after a reconnect, say) is applied at most once and answered with its outcome.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable

import attrs

from der_actors.messages import AckState, Allocation, Setpoint, SetpointAck
from der_actors.split import SplitMember, SplitResult, split_site

__all__ = [
    "ApplyToAsset",
    "ApplySplit",
    "Reject",
    "Route",
    "route_setpoint",
    "applied_message",
    "split_message",
    "OutcomeCache",
]


@attrs.frozen
class ApplyToAsset:
    asset_id: str
    mw: float
    duration_s: float


@attrs.frozen
class ApplySplit:
    split: SplitResult
    duration_s: float


@attrs.frozen
class Reject:
    reason: str


Route = ApplyToAsset | ApplySplit | Reject


def route_setpoint(
    sp: Setpoint,
    *,
    site_id: str,
    primary_asset_id: str | None,
    members: Iterable[SplitMember],
) -> Route:
    """Decide what a setpoint means here. `members`: every asset served, `online` = may take a share."""
    if not sp.setpoint_id:
        return Reject("setpoint_id is required")
    if not math.isfinite(sp.mw):
        return Reject(f"mw must be a finite number, got {sp.mw!r}")
    if not math.isfinite(sp.duration_s) or sp.duration_s < 0:
        return Reject(f"duration_s must be finite and >= 0, got {sp.duration_s!r}")
    served = {m.asset_id: m for m in members}

    if sp.asset_id:
        if sp.asset_id not in served:
            return Reject(f"unknown asset {sp.asset_id}")
        return ApplyToAsset(sp.asset_id, sp.mw, sp.duration_s)

    if sp.site_id:
        if sp.site_id != site_id:
            return Reject(f"unknown site {sp.site_id}: this agent serves site {site_id}")
        online = [m for m in served.values() if m.online]
        if not online:
            return Reject(f"site {site_id} has no online assets")
        return ApplySplit(split_site(sp.mw, online), sp.duration_s)

    if primary_asset_id is None:
        return Reject("setpoint names neither asset_id nor site_id; a gateway needs one of them")
    return ApplyToAsset(primary_asset_id, sp.mw, sp.duration_s)


def applied_message(requested_mw: float, applied_mw: float, clamped: bool) -> str:
    """e.g. 'applied 2.000 MW (clamped from 3.000)'."""
    text = f"applied {applied_mw:.3f} MW"
    return f"{text} (clamped from {requested_mw:.3f})" if clamped else text


def split_message(split: SplitResult, applied: tuple[Allocation, ...], failures: tuple[str, ...]) -> str:
    """e.g. 'applied 6.000 MW across 3 assets' (+ shortfall and failures when there are any)."""
    total = sum(a.mw for a in applied)
    text = f"applied {total:.3f} MW across {len(applied)} asset{'s' if len(applied) != 1 else ''}"
    if split.shortfall_mw:
        text += f" (shortfall {split.shortfall_mw:.3f} MW of {split.requested_mw:.3f})"
    if failures:
        text += "; failed: " + "; ".join(failures)
    return text


@attrs.define
class OutcomeCache:
    """The final acks of the most recent `capacity` setpoint ids (least recently used goes first)."""

    capacity: int = 1024
    _acks: OrderedDict[str, SetpointAck] = attrs.field(factory=OrderedDict)

    def get(self, setpoint_id: str) -> SetpointAck | None:
        ack = self._acks.get(setpoint_id)
        if ack is not None:
            self._acks.move_to_end(setpoint_id)
        return ack

    def put(self, ack: SetpointAck) -> None:
        if ack.state is AckState.RECEIVED:
            raise ValueError("only final outcomes (applied / rejected) are remembered")
        self._acks[ack.setpoint_id] = ack
        self._acks.move_to_end(ack.setpoint_id)
        while len(self._acks) > self.capacity:
            self._acks.popitem(last=False)

    def acks(self) -> list[SetpointAck]:
        """Least recently used first."""
        return list(self._acks.values())

    def __len__(self) -> int:
        return len(self._acks)
