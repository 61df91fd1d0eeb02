"""The headend's asset actor: one per configured asset; holds its "now".

It keeps which session serves the asset, the last few sessions and the current setpoint, and
publishes them as an `AssetView` after every change. Its inbox survives a restart (the supervisor
owns it) and so does its last view, so a crash loses nothing that was published.

Telemetry "now" is a latest-value register on the handle, not a queue through the actor: the only
rule is "a newer point replaces an older one", so a session writes it in place (`offer_telemetry`)
instead of waking the actor once per point. At 100,000 points/s that is the difference between a
dictionary write and a task switch per point.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import attrs
import structlog
import trio

from der_actors.actors.supervise import supervise
from der_actors.model import Asset
from der_actors.storage.base import PointRow
from der_actors.storage.rows import stored_point_of
from der_actors.views import AssetView, SessionSummary

log = structlog.get_logger("der.asset")

SESSIONS_KEPT = 5
# Presence changes and setpoints: a few per session and dispatch. 256 absorbs a reconnect storm's
# burst without letting a stuck actor hide a growing backlog.
INBOX_SIZE = 256


@attrs.frozen
class Connected:
    session: SessionSummary


@attrs.frozen
class Disconnected:
    session_id: str
    at: float
    reason: str


@attrs.frozen
class SetpointSet:
    mw: float
    dispatch_id: str


AssetMessage = Connected | Disconnected | SetpointSet


def apply(view: AssetView, msg: AssetMessage) -> AssetView:
    """The asset's rules: pure, one message at a time."""
    if isinstance(msg, Connected):
        return attrs.evolve(view, session=msg.session, sessions=(msg.session,) + view.sessions[: SESSIONS_KEPT - 1])
    if isinstance(msg, Disconnected):
        sessions = tuple(
            attrs.evolve(s, disconnected_at=msg.at, reason=msg.reason)
            if s.session_id == msg.session_id and s.disconnected_at is None
            else s
            for s in view.sessions
        )
        current = None if view.session and view.session.session_id == msg.session_id else view.session
        return attrs.evolve(view, session=current, sessions=sessions)
    if isinstance(msg, SetpointSet):
        return attrs.evolve(view, setpoint_mw=msg.mw, setpoint_dispatch_id=msg.dispatch_id)
    raise TypeError(f"asset actor cannot handle {msg!r}")


class AssetHandle:
    """Send messages to an asset actor; offer it telemetry; read its view."""

    def __init__(
        self, asset: Asset, send: trio.MemorySendChannel[AssetMessage], sessions: tuple[SessionSummary, ...] = ()
    ) -> None:
        self.asset = asset
        self._send = send
        self.published = AssetView(asset=asset, sessions=sessions[:SESSIONS_KEPT])  # written by the actor
        self._latest: PointRow | None = None  # the newest point, as the store's row

    async def send(self, msg: AssetMessage) -> None:
        try:
            await self._send.send(msg)
        except trio.ClosedResourceError:
            pass  # closed at shutdown (below): the view is no longer served, nothing to update

    def close(self) -> None:
        """End the actor once it has applied what is queued (headend shutdown). Measured: 10,000
        actors end this way in 0.3 s; cancelling them took 1.5 s, mostly trio gathering 10,000
        Cancelled exceptions."""
        self._send.close()

    def offer_telemetry(self, row: PointRow) -> None:
        """A point (the store's row: asset_id, seq, ts, ...), kept if it is the newest: a late or
        replayed point never hides a newer one (by its own timestamp, then seq)."""
        latest = self._latest
        if latest is None or row[2] > latest[2] or (row[2] == latest[2] and row[1] >= latest[1]):
            self._latest = row

    def latest_times(self) -> tuple[float | None, float | None]:
        """The newest point's (timestamp, received_at), without building the point (`/agents`)."""
        latest = self._latest
        return (latest[2], latest[3]) if latest is not None else (None, None)

    @property
    def view(self) -> AssetView:
        if self._latest is None:
            return self.published
        shown = stored_point_of(self._latest)  # a read (REST) pays for the Telemetry, not intake
        return attrs.evolve(self.published, latest=shown.point, received_at=shown.received_at)


async def _asset_loop(handle: AssetHandle, inbox: trio.MemoryReceiveChannel[AssetMessage]) -> None:
    async for msg in inbox:
        handle.published = apply(handle.published, msg)


def open_asset(
    asset: Asset, sessions: tuple[SessionSummary, ...] = ()
) -> tuple[AssetHandle, Callable[[], Awaitable[None]]]:
    """The asset actor's handle and its run function (start it in the owner's nursery).

    The handle is usable at once: messages queue in the inbox until the loop runs, so the headend
    creates 10,000 actors without waiting for each one's task to be scheduled (`nursery.start` did,
    one scheduling round per actor). `sessions`: the asset's last few sessions from the store (newest
    first), so `/agents` shows them after a restart.
    """
    send, recv = trio.open_memory_channel[AssetMessage](INBOX_SIZE)
    handle = AssetHandle(asset, send, sessions)

    async def run() -> None:
        with send, recv:  # sync close: `async with` checkpoints twice per actor, 10,000 times at shutdown
            await supervise(f"asset:{asset.id}", lambda: _asset_loop(handle, recv))

    return handle, run
