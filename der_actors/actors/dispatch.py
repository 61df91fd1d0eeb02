"""Dispatch actors: one per dispatch, from request to outcome, under the dispatch supervisor.

A dispatch whose target is connected is sent at once. One whose target is offline waits as
`pending` until the target registers, its TTL passes (`expired`) or a newer dispatch for the same
target replaces it (`superseded`). Delivery on reconnect happens in submission order: the registering
session asks the book, which plans and sends every ready pending dispatch synchronously, oldest first,
and then tells each actor what was sent.

`DispatchBook` is the supervisor's handle: `submit` starts an actor (the supervisor's task owns the
nursery), `route_ack` hands an agent's ack to the actor waiting for it, `view` reads a dispatch,
`targets_online` delivers what was waiting, `wait_terminal` lets a caller wait for the outcome.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING

import attrs
import structlog
import trio

from der_actors.actors.asset import SetpointSet
from der_actors.actors.context import HeadendContext
from der_actors.dispatching import (
    DispatchRequest,
    Plan,
    Refused,
    apply_ack,
    fail_unanswered,
    new_uuid,
    pending_view,
    plan_dispatch,
    request_of,
)
from der_actors.lifecycle import DispatchState
from der_actors.messages import SetpointAck
from der_actors.views import DispatchView

if TYPE_CHECKING:
    from der_actors.actors.session import SessionHandle

log = structlog.get_logger("der.dispatch")

RECENT_KEPT = 10_000  # dispatch views served from memory; older ones come from the store
SUBMIT_INBOX = 64  # REST handlers waiting to start a dispatch; each start is quick


@attrs.frozen
class _Start:
    view: DispatchView  # planned (sent now) or pending
    plan: Plan | None
    reply: trio.MemorySendChannel[DispatchView]


@attrs.frozen
class _Delivered:
    plan: Plan
    undelivered: bool


@attrs.frozen
class _Superseded:
    by: str


@attrs.frozen
class _GatewaySessions:
    """`session_id in this`: a live session that serves a whole site. Asked of the one or two
    sessions a plan involves; building the set of all of them was ~0.5 ms of each dispatch with
    1,000 sessions (bench profile)."""

    sessions: Mapping[str, SessionHandle]

    def __contains__(self, session_id: object) -> bool:
        session = self.sessions.get(session_id)  # type: ignore[call-overload]
        return session is not None and session.is_gateway


class DispatchBook:
    def __init__(self, submit: trio.MemorySendChannel[_Start]) -> None:
        self._submit = submit
        self.ctx: HeadendContext | None = None  # set by the root supervisor once every actor is up
        self.recent: OrderedDict[str, DispatchView] = OrderedDict()
        self._waiting: dict[str, trio.MemorySendChannel] = {}  # setpoint_id -> actor inbox
        self._pending: OrderedDict[str, tuple[str, trio.MemorySendChannel]] = OrderedDict()  # id -> (key, inbox)
        self._terminal: dict[str, trio.Event] = {}
        self.late_acks = 0

    # --- submitting ----------------------------------------------------------------------------

    async def submit(self, req: DispatchRequest) -> DispatchView:
        """Start a dispatch; returns its first view (sent, failed or pending)."""
        ctx = self.ctx
        now = ctx.clock.now()
        ttl = req.ttl_s if req.ttl_s is not None else ctx.config.dispatch_ttl_s
        expires_at = now + ttl
        dispatch_id = new_uuid()
        try:
            plan = plan_dispatch(req, ctx.inventory, ctx.directory.owners, self._gateways(), now,
                                 dispatch_id=dispatch_id, expires_at=expires_at)
            view = plan.view
        except Refused:
            plan, view = None, pending_view(req, ctx.inventory, now, expires_at, dispatch_id)
        self._supersede(req.target_key, dispatch_id)
        return await self._start(view, plan)

    async def resume(self, view: DispatchView) -> None:
        """Take up a dispatch the store had as unfinished when the headend started."""
        await self._start(view, None)

    async def _start(self, view: DispatchView, plan: Plan | None) -> DispatchView:
        reply_send, reply_recv = trio.open_memory_channel[DispatchView](1)
        async with reply_recv:
            await self._submit.send(_Start(view, plan, reply_send))
            try:
                return await reply_recv.receive()
            except trio.EndOfChannel:
                raise RuntimeError(f"dispatch {view.dispatch_id} failed to start (see the log)") from None

    def _gateways(self) -> _GatewaySessions:
        return _GatewaySessions(self.ctx.directory.sessions)

    def _supersede(self, key: str, by: str) -> None:
        for dispatch_id, (other_key, inbox) in list(self._pending.items()):
            if other_key == key:
                del self._pending[dispatch_id]
                _tell(inbox, _Superseded(by))

    # --- delivery of pending dispatches ------------------------------------------------------

    def expect_pending(self, view: DispatchView, inbox: trio.MemorySendChannel) -> None:
        self._pending[view.dispatch_id] = (request_of(view).target_key, inbox)

    def forget_pending(self, dispatch_id: str) -> None:
        self._pending.pop(dispatch_id, None)

    def targets_online(self, asset_ids: tuple[str, ...]) -> None:
        """A session registered these assets: send what waited for them, oldest first."""
        ctx = self.ctx
        keys = {f"asset:{a}" for a in asset_ids} | {f"site:{ctx.inventory.asset(a).site_id}" for a in asset_ids}
        now = ctx.clock.now()
        for dispatch_id, (key, inbox) in list(self._pending.items()):
            if key not in keys:
                continue
            view = self.recent.get(dispatch_id)
            if view is None or (view.expires_at is not None and now >= view.expires_at):
                continue  # its actor expires it
            try:
                plan = plan_dispatch(request_of(view), ctx.inventory, ctx.directory.owners, self._gateways(), now,
                                     dispatch_id=dispatch_id, lifecycle=view.lifecycle, expires_at=view.expires_at)
            except Refused:
                continue
            del self._pending[dispatch_id]
            undelivered = self._send(plan)
            _tell(inbox, _Delivered(plan, undelivered))

    def deliver_if_online(self, view: DispatchView) -> None:
        target = (view.asset_id,) if view.asset_id else tuple(a.id for a in self.ctx.inventory.assets_of(view.site_id))
        online = tuple(a for a in target if a in self.ctx.directory.owners)
        if online:
            self.targets_online(online)

    def _send(self, plan: Plan) -> bool:
        """Hand every setpoint to its session; True if any could not be handed over."""
        failed = False
        for session_id, sp in plan.setpoints:
            session = self.ctx.directory.sessions.get(session_id)
            failed |= session is None or not session.send_setpoint(sp)
        return failed

    # --- acks and views ------------------------------------------------------------------------

    def expect(self, setpoint_id: str, inbox: trio.MemorySendChannel) -> None:
        self._waiting[setpoint_id] = inbox

    def forget(self, setpoint_id: str) -> None:
        self._waiting.pop(setpoint_id, None)

    def route_ack(self, ack: SetpointAck, session_id: str) -> None:
        inbox = self._waiting.get(ack.setpoint_id)
        if inbox is None:
            self.late_acks += 1
            log.info("ack_unmatched", setpoint_id=ack.setpoint_id, session_id=session_id, state=ack.state.value)
            return
        if not _tell(inbox, ack):
            log.warning("ack_dropped", setpoint_id=ack.setpoint_id, session_id=session_id, reason="dispatch inbox full or closed")

    def publish(self, view: DispatchView) -> None:
        self.recent[view.dispatch_id] = view
        self.recent.move_to_end(view.dispatch_id)
        while len(self.recent) > RECENT_KEPT:
            self.recent.popitem(last=False)
        if view.lifecycle.state.terminal:
            self._terminal.pop(view.dispatch_id, trio.Event()).set()

    async def view(self, dispatch_id: str) -> DispatchView | None:
        found = self.recent.get(dispatch_id)
        if found is None:
            found = await self.ctx.store.query(self.ctx.store.storage.dispatch, dispatch_id)
        return found

    async def wait_terminal(self, dispatch_id: str, timeout_s: float) -> DispatchView | None:
        """The dispatch once it reached a final state, or as it is when the timeout passes."""
        view = await self.view(dispatch_id)
        if view is not None and not view.lifecycle.state.terminal:
            event = self._terminal.setdefault(dispatch_id, trio.Event())
            with trio.move_on_after(timeout_s):
                await event.wait()
            view = await self.view(dispatch_id)
        return view


def _tell(inbox: trio.MemorySendChannel, msg: object) -> bool:
    try:
        inbox.send_nowait(msg)
        return True
    except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
        return False


@attrs.define
class _Dispatch:
    """One dispatch's actor state: the view it publishes and its inbox."""

    ctx: HeadendContext
    book: DispatchBook
    view: DispatchView
    inbox: trio.MemoryReceiveChannel

    def _publish(self, store: bool = True) -> None:
        self.book.publish(self.view)
        if store:
            self.ctx.store.record_dispatch(self.view)

    def _to(self, state: DispatchState, reason: str = "") -> None:
        lc = self.view.lifecycle.to(state, self.ctx.clock.now(), reason)
        self._became(attrs.evolve(self.view, lifecycle=lc, message=reason or self.view.message))

    def _became(self, view: DispatchView) -> None:
        """A new state: logged, published and stored."""
        self.view = view
        _log(view)
        self._publish()

    async def run(self, inbox_send: trio.MemorySendChannel, plan: Plan | None, task_status) -> None:
        state = self.view.lifecycle.state
        if state in (DispatchState.SENT, DispatchState.RECEIVED):  # resumed after a restart
            self._to(DispatchState.PENDING, "outcome unknown after a headend restart; re-sent when the target is connected")
        if plan is not None:
            plan = await self._sent(inbox_send, plan, undelivered=self.book._send(plan))
        else:
            if self.view.lifecycle.state is DispatchState.PENDING:
                self._publish(store=False)  # resumed as pending: readers see it from memory again
            else:
                self._to(DispatchState.PENDING, "target not connected")
            self.book.expect_pending(self.view, inbox_send)
            self.book.deliver_if_online(self.view)  # the target may have registered meanwhile
        task_status.started(self.view)
        if plan is None:
            plan = await self._wait_for_delivery(inbox_send)
            if plan is None:
                return
        await self._wait_for_outcome()
        if self.view.lifecycle.state is DispatchState.APPLIED:
            await _note_setpoints(self.ctx, self.view)

    async def _sent(self, inbox_send, plan: Plan, undelivered: bool) -> Plan:
        for _, sp in plan.setpoints:
            self.book.expect(sp.setpoint_id, inbox_send)
        self.view = attrs.evolve(plan.view, lifecycle=self.view.lifecycle, message="")
        self._to(DispatchState.SENT)
        if undelivered:
            self._to(DispatchState.FAILED, "session closed before the setpoint could be sent")
        return plan

    async def _wait_for_delivery(self, inbox_send) -> Plan | None:
        expires_at = self.view.expires_at
        deadline = trio.current_time() + (expires_at - self.ctx.clock.now()) if expires_at is not None else float("inf")
        try:
            with trio.move_on_at(deadline):
                while True:
                    msg = await self.inbox.receive()
                    if isinstance(msg, _Delivered):
                        return await self._sent(inbox_send, msg.plan, msg.undelivered)
                    if isinstance(msg, _Superseded):
                        self._to(DispatchState.SUPERSEDED, f"replaced by dispatch {msg.by} before delivery")
                        return None
            self._to(DispatchState.EXPIRED, "TTL passed before the target was connected")
            return None
        finally:
            self.book.forget_pending(self.view.dispatch_id)

    async def _wait_for_outcome(self) -> None:
        timeout = self.ctx.config.dispatch_ack_timeout_s
        with trio.move_on_after(timeout):
            while not self.view.lifecycle.state.terminal:
                msg = await self.inbox.receive()
                if not isinstance(msg, SetpointAck):
                    continue
                before = self.view.lifecycle.state
                self.view = apply_ack(self.view, msg, self.ctx.clock.now())
                state_changed = self.view.lifecycle.state is not before
                self._publish(store=state_changed)
                if state_changed:
                    _log(self.view)
        if not self.view.lifecycle.state.terminal:
            self._became(fail_unanswered(self.view, self.ctx.clock.now(), timeout))


async def run_dispatch(
    ctx: HeadendContext, book: DispatchBook, view: DispatchView, plan: Plan | None, *,
    task_status: trio.TaskStatus[DispatchView],
) -> None:
    # Acks for each setpoint (received + outcome, and a duplicate or two), or one delivery notice.
    legs = len(plan.setpoints) if plan else len(ctx.inventory.assets_of(view.site_id))
    inbox_send, inbox = trio.open_memory_channel(4 * legs + 4)
    actor = _Dispatch(ctx, book, view, inbox)
    async with inbox_send, inbox:
        try:
            await actor.run(inbox_send, plan, task_status)
        finally:
            for leg in actor.view.legs:
                book.forget(leg.setpoint_id)


async def _note_setpoints(ctx: HeadendContext, view: DispatchView) -> None:
    if view.mode == "asset":
        await ctx.assets[view.asset_id].send(SetpointSet(view.applied_mw, view.dispatch_id))
    else:
        for alloc in view.allocations:
            if alloc.asset_id in ctx.assets:
                await ctx.assets[alloc.asset_id].send(SetpointSet(alloc.mw, view.dispatch_id))


def _log(view: DispatchView) -> None:
    log.info(
        "dispatch", dispatch_id=view.dispatch_id, target=view.target, asset_id=view.asset_id, site_id=view.site_id,
        mode=view.mode or None, requested_mw=view.requested_mw, applied_mw=view.applied_mw, clamped=view.clamped,
        state=view.lifecycle.state.value, sessions=sorted({leg.session_id for leg in view.legs}) or None,
        allocations=[(a.asset_id, a.mw) for a in view.allocations] or None, message=view.message or None,
    )


async def run_dispatch_supervisor(*, task_status: trio.TaskStatus[DispatchBook] = trio.TASK_STATUS_IGNORED) -> None:
    """Owns the nursery every dispatch actor runs in. A dispatch actor that fails is our bug: it is
    logged and the dispatch stays in its last published state; the supervisor and its siblings go on."""
    send, recv = trio.open_memory_channel[_Start](SUBMIT_INBOX)
    async with send, recv, trio.open_nursery() as nursery:
        book = DispatchBook(send)
        task_status.started(book)
        async for start in recv:
            async with start.reply:
                try:
                    view = await nursery.start(_guarded, book, start.view, start.plan)
                except Exception:  # it failed before reporting its first view; the caller is told
                    log.exception("dispatch_start_failed", dispatch_id=start.view.dispatch_id)
                    continue
                start.reply.send_nowait(view)


async def _guarded(book: DispatchBook, view: DispatchView, plan: Plan | None, *, task_status) -> None:
    try:
        await run_dispatch(book.ctx, book, view, plan, task_status=task_status)
    except Exception:
        log.exception("dispatch_crashed", dispatch_id=view.dispatch_id)
