"""The inventory's types: sites and assets as loaded from assets.yaml (pure, frozen)."""

from __future__ import annotations

import enum

import attrs


class AssetType(str, enum.Enum):
    BESS = "bess"
    PV = "pv"
    WIND = "wind"
    EV_CHARGER = "ev_charger"


@attrs.frozen
class Site:
    id: str  # canonical lower-case UUID string
    name: str
    location: str | None = None


@attrs.frozen
class Asset:
    id: str  # canonical lower-case UUID string; the control and telemetry address
    name: str
    site_id: str
    type: AssetType = AssetType.BESS
    location: str | None = None
    capacity_mwhr: float | None = None  # energy capacity; required for bess
    max_mw: float = 0.0  # most export / discharge / generation (>= 0)
    min_mw: float = 0.0  # most import / charge / load (<= 0)
    ramp_rate_mw_per_min: float = 1.0  # > 0
    efficiency: float = 1.0  # round trip, (0, 1]


@attrs.frozen
class Inventory:
    """Sites and assets in file order, with lookups by id."""

    sites: tuple[Site, ...]
    assets: tuple[Asset, ...]
    _sites_by_id: dict[str, Site] = attrs.field(init=False, repr=False, eq=False)
    _assets_by_id: dict[str, Asset] = attrs.field(init=False, repr=False, eq=False)
    _assets_by_site: dict[str, tuple[Asset, ...]] = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_sites_by_id", {s.id: s for s in self.sites})
        object.__setattr__(self, "_assets_by_id", {a.id: a for a in self.assets})
        by_site: dict[str, list[Asset]] = {}
        for a in self.assets:
            by_site.setdefault(a.site_id, []).append(a)
        # every site dispatch asks this: a scan of 10,000 assets was ~0.4 ms of each (bench profile)
        object.__setattr__(self, "_assets_by_site", {k: tuple(v) for k, v in by_site.items()})

    def site(self, site_id: str) -> Site | None:
        return self._sites_by_id.get(site_id)

    def asset(self, asset_id: str) -> Asset | None:
        return self._assets_by_id.get(asset_id)

    def assets_of(self, site_id: str) -> tuple[Asset, ...]:
        """The site's assets in file order (empty for an unknown site)."""
        return self._assets_by_site.get(site_id, ())
