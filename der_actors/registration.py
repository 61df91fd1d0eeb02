"""Which assets a Register may claim (pure).

The headend's inventory is the truth: an asset is accepted only if it is configured and belongs to
the site the agent registers for. Everything else is rejected with a reason the agent can log, and
the stream stays up for what was accepted.
"""

from __future__ import annotations

import attrs

from der_actors.messages import MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, Register, Rejection
from der_actors.model import Inventory


@attrs.frozen
class Review:
    accepted: tuple[str, ...]
    rejected: tuple[Rejection, ...]
    refusal: str = ""  # non-empty: the whole session is refused, with this reason
    is_gateway: bool = False  # serves its site's assets and splits site setpoints itself


def review_register(reg: Register, inventory: Inventory) -> Review:
    if reg.protocol_version > PROTOCOL_VERSION:
        return Review((), (), f"protocol_version {reg.protocol_version} is newer than this headend's {PROTOCOL_VERSION}")
    if reg.protocol_version < MIN_PROTOCOL_VERSION:
        return Review((), (), f"protocol_version {reg.protocol_version} is older than the oldest this headend "
                              f"supports ({MIN_PROTOCOL_VERSION}); upgrade the agent")
    claimed = [a.asset_id for a in reg.assets]
    if reg.asset_id and reg.asset_id not in claimed:
        claimed.insert(0, reg.asset_id)  # legacy agents may announce only their primary asset
    if not claimed:
        return Review((), (), "register lists no assets (set asset_id or assets)")
    info_site = {a.asset_id: a.site_id for a in reg.assets}
    site = inventory.site(reg.site_id)
    accepted: list[str] = []
    rejected: list[Rejection] = []
    seen: set[str] = set()
    for asset_id in claimed:
        reason = ""
        asset = inventory.asset(asset_id)
        if asset_id in seen:
            reason = "listed twice"
        elif asset is None:
            reason = "unknown asset: not in the headend's inventory"
        elif site is None:
            reason = f"unknown site {reg.site_id!r}"
        elif asset.site_id != reg.site_id:
            reason = f"asset belongs to site {asset.site_id}, not {reg.site_id}"
        elif info_site.get(asset_id, reg.site_id) not in ("", reg.site_id):
            reason = f"asset info names site {info_site[asset_id]}, register names {reg.site_id}"
        seen.add(asset_id)
        if reason:
            rejected.append(Rejection(asset_id, reason))
        else:
            accepted.append(asset_id)
    return Review(tuple(accepted), tuple(rejected), is_gateway=not reg.asset_id)
