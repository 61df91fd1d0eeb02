"""One actor per asset: owns the asset's simulator state, ticks it, emits telemetry, applies setpoints.

The actor's public surface is `AssetHandle`: `snapshot` (an immutable `AssetSnapshot`, published after
every change) and `apply_setpoint` (a request/reply through the actor's mailbox).

The actor runs under `supervise(...)`: `AssetActor.run` is one incarnation. Everything that must
survive a crash (simulator state, last seq) lives in the published snapshot, and a restarted
incarnation continues from it, so seq never goes back. A request that crashes the actor (a value
physics refuses, which the setpoint router should have caught: our bug) makes the requester's
`apply_setpoint` raise `AssetUnavailable`.

Telemetry ticks come from the site's metronome (edge/metronome.py) through `AssetHandle.tick`: a
synchronous call, so a tick costs no task switch per asset. A tick that raises crashes the actor just
as a request would: the exception is handed to the actor's own task, which raises it to its supervisor.
"""

from __future__ import annotations

import attrs
import trio

from der_actors import physics
from der_actors.clock import WallClock
from der_actors.messages import PvDetails, Telemetry, WindDetails
from der_actors.model import Asset, AssetType
from der_actors.physics import SimState

# Requests are request/reply, so each requester has at most one in flight; a handful is plenty.
MAILBOX_SIZE = 16


class AssetUnavailable(RuntimeError):
    """The asset actor could not answer (it crashed while handling the request)."""


@attrs.frozen
class AssetSnapshot:
    asset: Asset
    state: SimState
    seq: int  # seq of the last telemetry point produced (0: none yet, ever)
    online: bool  # False between a crash and the restart
    last_step_at: float  # trio time of the last simulator step


@attrs.frozen
class Applied:
    mw: float  # the setpoint as applied (after clamping to what the asset can do)
    clamped: bool


@attrs.frozen
class _ApplySetpoint:
    mw: float
    duration_s: float
    reply: trio.MemorySendChannel[Applied]


def telemetry_setpoint(asset: Asset, state: SimState) -> float:
    """The `mw_setpoint` reported in telemetry.

    An explicit setpoint is reported as is. PV, wind and EV chargers running without one (setpoint_mw
    None) report what they would do unconstrained: the available power for PV and wind (from the
    simulator's details), the current demand (= the output) for an EV charger. So `mw_setpoint` is
    always the asset's effective target, and `mw < mw_setpoint` means it cannot reach it.
    """
    if state.setpoint_mw is not None:
        return state.setpoint_mw
    if asset.type in (AssetType.PV, AssetType.WIND) and isinstance(state.details, PvDetails | WindDetails):
        return state.details.available_mw
    return state.mw


def make_point(asset: Asset, state: SimState, seq: int, timestamp: float) -> Telemetry:
    return Telemetry(
        asset_id=asset.id,
        site_id=asset.site_id,
        seq=seq,
        timestamp=timestamp,
        mw=state.mw,
        mw_setpoint=telemetry_setpoint(asset, state),
        online=True,
        status=state.status,
        details=state.details,
    )


class AssetActor:
    """Run `run` under supervise, talk to it through `handle`."""

    def __init__(
        self,
        asset: Asset,
        *,
        clock: WallClock,
        last_seq: int = 0,
        held_setpoint_mw: float | None = None,
    ) -> None:
        self._asset = asset
        self._clock = clock
        self._failure: Exception | None = None  # a tick's crash, for the actor's task to raise
        self._waiting: trio.CancelScope | None = None  # the incarnation's wait for a request
        self._mailbox_send, self._mailbox_recv = trio.open_memory_channel[_ApplySetpoint](MAILBOX_SIZE)
        now = trio.current_time()
        state = physics.initial_state(asset, clock.now())
        if held_setpoint_mw is not None:  # where the operator left it before the agent restarted
            state, _, _ = physics.apply_setpoint(asset, state, held_setpoint_mw, 0.0, clock.now())
        self._snapshot = AssetSnapshot(
            asset=asset,
            state=state,
            seq=last_seq,  # the spool's high-water mark: seq goes on across agent restarts
            online=True,
            last_step_at=now,
        )
        self.handle = AssetHandle(self)

    def close(self) -> None:
        self._mailbox_send.close()
        self._mailbox_recv.close()

    async def run(self) -> None:
        """One incarnation: answer requests; returns when the mailbox is closed."""
        self._publish(online=True)
        try:
            while True:
                with trio.CancelScope() as self._waiting:  # cancelled by a tick that crashed
                    if self._failure is None:
                        try:
                            request = await self._mailbox_recv.receive()
                        except (trio.EndOfChannel, trio.ClosedResourceError):
                            return
                self._waiting = None
                if self._failure is not None:
                    failure, self._failure = self._failure, None
                    raise failure
                self._handle(request)
        except Exception:
            self._publish(online=False)
            raise

    def tick(self) -> Telemetry | None:
        """Step to now and return the next point; None if the tick crashed the actor."""
        now = trio.current_time()
        try:
            state = self._step_to_now()
            seq = self._snapshot.seq + 1
            point = make_point(self._asset, state, seq, self._clock.now())
        except Exception as exc:
            self._failure = exc
            self._publish(online=False)
            if self._waiting is not None:
                self._waiting.cancel()
            return None
        self._snapshot = AssetSnapshot(self._asset, state, seq, True, now)  # evolve() costs 3x at every tick
        return point

    # --- the thin loop's steps ---------------------------------------------------------------------

    def _step_to_now(self) -> SimState:
        snap = self._snapshot
        now = trio.current_time()
        return physics.step(self._asset, snap.state, self._clock.now(), now - snap.last_step_at)

    def _handle(self, request: _ApplySetpoint) -> None:
        with request.reply:  # closed even if physics raises: the requester sees AssetUnavailable
            state = self._step_to_now()
            state, mw, clamped = physics.apply_setpoint(
                self._asset, state, request.mw, request.duration_s, self._clock.now()
            )
            self._publish(state=state, last_step_at=trio.current_time())
            try:
                request.reply.send_nowait(Applied(mw, clamped))
            except trio.BrokenResourceError:
                pass  # the requester gave up (cancelled); the setpoint stands

    def _publish(self, **changes: object) -> None:
        self._snapshot = attrs.evolve(self._snapshot, **changes)


class AssetHandle:
    """The asset actor's public surface."""

    def __init__(self, actor: AssetActor) -> None:
        self._actor = actor

    @property
    def asset(self) -> Asset:
        return self._actor._asset

    @property
    def snapshot(self) -> AssetSnapshot:
        return self._actor._snapshot

    def tick(self) -> Telemetry | None:
        """The site metronome's clock input: the asset's next telemetry point, stepped to now.

        Synchronous on purpose (one wake-up per site tick, not one per asset). Returns None when the
        tick crashed the actor: its supervisor restarts it, and the snapshot is offline until then.
        """
        return self._actor.tick()

    async def apply_setpoint(self, mw: float, duration_s: float = 0.0) -> Applied:
        """Apply a setpoint (clamped by physics); raises AssetUnavailable if the actor crashed on it."""
        reply_send, reply_recv = trio.open_memory_channel[Applied](1)
        with reply_recv:
            await self._actor._mailbox_send.send(_ApplySetpoint(mw, duration_s, reply_send))
            try:
                return await reply_recv.receive()
            except trio.EndOfChannel:
                raise AssetUnavailable(f"asset {self.asset.id} failed to apply {mw!r} MW") from None
