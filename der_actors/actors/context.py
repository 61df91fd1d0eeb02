"""What every headend actor may reach: the handles of the long-lived actors, the config, the clock."""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from der_actors.clock import WallClock
from der_actors.loop_lag import LagWindow
from der_actors.model import Inventory

if TYPE_CHECKING:
    from der_actors.actors.asset import AssetHandle
    from der_actors.actors.directory import DirectoryHandle
    from der_actors.actors.dispatch import DispatchBook
    from der_actors.actors.store import StoreActor


@attrs.frozen
class HeadendConfig:
    heartbeat_timeout_s: float = 90.0  # a session silent this long is closed as stale
    heartbeat_interval_s: float = 30.0  # the headend's own heartbeat to each agent
    dispatch_ack_timeout_s: float = 10.0  # no outcome from the agent by then: the dispatch failed
    dispatch_ttl_s: float = 300.0  # default time a dispatch may wait for its target


@attrs.frozen
class HeadendContext:
    config: HeadendConfig
    inventory: Inventory
    clock: WallClock
    assets: dict[str, AssetHandle]
    directory: DirectoryHandle
    store: StoreActor
    dispatches: DispatchBook
    loop_lag: LagWindow
