"""Which session serves which asset (pure; the directory actor owns one of these).

The newer session wins a contested asset: `claim` moves it and reports the takeover so the old
session can be told. `release` only removes assets the releasing session still holds, so a session
that lost an asset to a takeover cannot remove the new owner's claim when it disconnects.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

import attrs


@attrs.frozen
class Takeover:
    asset_id: str
    old_session_id: str
    new_session_id: str


@attrs.define
class Routing:
    _owner: dict[str, str] = attrs.field(factory=dict)  # asset_id -> session_id

    def claim(self, session_id: str, asset_ids: Iterable[str]) -> list[Takeover]:
        takeovers = []
        for asset_id in asset_ids:
            old = self._owner.get(asset_id)
            if old is not None and old != session_id:
                takeovers.append(Takeover(asset_id, old, session_id))
            self._owner[asset_id] = session_id
        return takeovers

    def release(self, session_id: str, asset_ids: Iterable[str]) -> list[str]:
        """Drop the session's claims on these assets; returns those actually released."""
        released = []
        for asset_id in asset_ids:
            if self._owner.get(asset_id) == session_id:
                del self._owner[asset_id]
                released.append(asset_id)
        return released

    def owner(self, asset_id: str) -> str | None:
        return self._owner.get(asset_id)

    @property
    def owners(self) -> Mapping[str, str]:
        """asset_id -> session_id, live and read-only."""
        return MappingProxyType(self._owner)
