"""Dispatch actors: one per dispatch, from request to outcome, under the dispatch supervisor.

`DispatchBook` is the supervisor's handle: `submit` plans a request and starts its actor (the
supervisor's task owns the nursery), `route_ack` hands an agent's ack to the actor waiting for it,
`view` reads a dispatch's current state (recent ones in memory, older ones from the store).
"""

from __future__ import annotations

from collections import OrderedDict

import attrs
import structlog
import trio

from der_actors.actors.asset import SetpointSet
from der_actors.actors.context import HeadendContext
from der_actors.dispatching import DispatchRequest, Plan, apply_ack, fail_unanswered, plan_dispatch
from der_actors.lifecycle import DispatchState
from der_actors.messages import SetpointAck
from der_actors.views import DispatchView

log = structlog.get_logger("der.dispatch")

RECENT_KEPT = 10_000  # dispatch views served from memory; older ones come from the store
SUBMIT_INBOX = 64  # REST handlers waiting to start a dispatch; a short queue, each start is quick


@attrs.frozen
class _Start:
    plan: Plan
    reply: trio.MemorySendChannel[DispatchView]


class DispatchBook:
    def __init__(self, submit: trio.MemorySendChannel[_Start]) -> None:
        self._submit = submit
        self.ctx: HeadendContext | None = None  # set by the root supervisor once every actor is up
        self.recent: OrderedDict[str, DispatchView] = OrderedDict()
        self._waiting: dict[str, trio.MemorySendChannel[SetpointAck]] = {}  # setpoint_id -> actor inbox
        self.late_acks = 0

    async def submit(self, req: DispatchRequest) -> DispatchView:
        """Plan and start a dispatch; returns its first view. Raises `Refused` (not connected)."""
        ctx = self.ctx
        gateways = {sid for sid, s in ctx.directory.sessions.items() if s.is_gateway}
        plan = plan_dispatch(req, ctx.inventory, ctx.directory.owners, gateways, ctx.clock.now())
        reply_send, reply_recv = trio.open_memory_channel[DispatchView](1)
        async with reply_recv:
            await self._submit.send(_Start(plan, reply_send))
            try:
                return await reply_recv.receive()
            except trio.EndOfChannel:
                raise RuntimeError(f"dispatch {plan.view.dispatch_id} failed to start (see the log)") from None

    def expect(self, setpoint_id: str, inbox: trio.MemorySendChannel[SetpointAck]) -> None:
        self._waiting[setpoint_id] = inbox

    def forget(self, setpoint_id: str) -> None:
        self._waiting.pop(setpoint_id, None)

    def route_ack(self, ack: SetpointAck, session_id: str) -> None:
        inbox = self._waiting.get(ack.setpoint_id)
        if inbox is None:
            self.late_acks += 1
            log.info("ack_unmatched", setpoint_id=ack.setpoint_id, session_id=session_id, state=ack.state.value)
            return
        try:
            inbox.send_nowait(ack)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            log.warning("ack_dropped", setpoint_id=ack.setpoint_id, session_id=session_id, reason="dispatch inbox full or closed")

    def publish(self, view: DispatchView) -> None:
        self.recent[view.dispatch_id] = view
        self.recent.move_to_end(view.dispatch_id)
        while len(self.recent) > RECENT_KEPT:
            self.recent.popitem(last=False)

    async def view(self, dispatch_id: str) -> DispatchView | None:
        found = self.recent.get(dispatch_id)
        if found is None:
            found = await self.ctx.store.query(self.ctx.store.storage.dispatch, dispatch_id)
        return found


async def run_dispatch(
    ctx: HeadendContext, book: DispatchBook, plan: Plan, *, task_status: trio.TaskStatus[DispatchView]
) -> None:
    view = plan.view
    inbox_send, inbox = trio.open_memory_channel[SetpointAck](4 * len(plan.setpoints) + 4)
    async with inbox_send, inbox:
        for _, sp in plan.setpoints:
            book.expect(sp.setpoint_id, inbox_send)
        try:
            undelivered = [sp for session_id, sp in plan.setpoints if not _deliver(ctx, session_id, sp)]
            now = ctx.clock.now()
            view = attrs.evolve(view, lifecycle=view.lifecycle.to(DispatchState.SENT, now))
            if undelivered:
                reason = "session closed before the setpoint could be sent"
                view = attrs.evolve(view, lifecycle=view.lifecycle.to(DispatchState.FAILED, now, reason), message=reason)
            _log(view)
            book.publish(view)
            ctx.store.record_dispatch(view)
            task_status.started(view)
            with trio.move_on_after(ctx.config.dispatch_ack_timeout_s):
                while not view.lifecycle.state.terminal:
                    view = apply_ack(view, await inbox.receive(), ctx.clock.now())
                    book.publish(view)
            view = fail_unanswered(view, ctx.clock.now(), ctx.config.dispatch_ack_timeout_s)
            book.publish(view)
            ctx.store.record_dispatch(view)
            _log(view)
            if view.lifecycle.state is DispatchState.APPLIED:
                await _note_setpoints(ctx, view)
        finally:
            for _, sp in plan.setpoints:
                book.forget(sp.setpoint_id)


def _deliver(ctx: HeadendContext, session_id: str, sp) -> bool:
    session = ctx.directory.sessions.get(session_id)
    return session is not None and session.send_setpoint(sp)


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
        mode=view.mode, requested_mw=view.requested_mw, applied_mw=view.applied_mw, clamped=view.clamped,
        state=view.lifecycle.state.value, sessions=sorted({leg.session_id for leg in view.legs}),
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
                    view = await nursery.start(_guarded, book, start.plan)
                except Exception:  # it failed before reporting its first view; the caller is told
                    log.exception("dispatch_start_failed", dispatch_id=start.plan.view.dispatch_id)
                    continue
                start.reply.send_nowait(view)


async def _guarded(book: DispatchBook, plan: Plan, *, task_status: trio.TaskStatus[DispatchView]) -> None:
    try:
        await run_dispatch(book.ctx, book, plan, task_status=task_status)
    except Exception:
        log.exception("dispatch_crashed", dispatch_id=plan.view.dispatch_id)
