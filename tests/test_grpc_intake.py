"""The headend's gRPC intake over a real socket: telemetry takes turns, a stream owed a setpoint's
outcome leaves the line, and other messages never wait (der_actors/transport/grpc_server.py).

The test holds every turn itself (`IntakeTurns` of one, passed to `serve_agents`), so whether a
message got through is a fact to check, not a race. Real time, bounded by fail_after; the only waits
are for the stream's reader to reach the line and, once, for every task to go idle.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from der_actors.clock import WallClock
from der_actors.messages import AckState, Heartbeat, Register, Setpoint, SetpointAck, Telemetry, TelemetryBatch
from der_actors.transport.grpc_client import grpc_dialer
from der_actors.transport.grpc_server import REPLY_PRIORITY_S, TURN_MESSAGES, IntakeTurns, _Replies, serve_agents
from der_actors.transport.link import AgentConnection, EdgeConnection, ReceivedPoints

SITE = "7e3a446b-8390-41f8-ba6c-946169ccf1e8"
BESS = "c85e9759-8fac-40b8-ae8e-e9f6c796f8bb"


def batch(seq: int) -> TelemetryBatch:
    return TelemetryBatch((Telemetry(BESS, SITE, seq, 1_800_000_000.0 + seq, 1.0, 1.0, True, "ok"),))


async def waiting_in_line(intake: trio.CapacityLimiter) -> None:
    while intake.statistics().tasks_waiting == 0:
        await trio.sleep(0.001)


async def first_batch_in_line(agent: EdgeConnection, intake: trio.CapacityLimiter) -> None:
    await agent.outbound.send(batch(1))
    await waiting_in_line(intake)


@contextlib.asynccontextmanager
async def registered_agent(intake: IntakeTurns) -> AsyncIterator[tuple[EdgeConnection, AgentConnection]]:
    """A gRPC server with these turns and one agent on it, registered: (the agent's end, the headend's)."""
    accept_send, accept_recv = trio.open_memory_channel[AgentConnection](1)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(lambda task_status: serve_agents(
            "127.0.0.1", 0, accept_send, WallClock.calibrated(), intake=intake, task_status=task_status))
        async with grpc_dialer("127.0.0.1", port)() as agent:
            await agent.outbound.send(Register("agent", "", SITE, BESS, ()))
            conn = await accept_recv.receive()
            assert isinstance(await conn.inbound.receive(), Register)  # not telemetry: no turn needed
            yield agent, conn
        nursery.cancel_scope.cancel()


def nothing_arrived(conn: AgentConnection) -> bool:
    try:
        conn.inbound.receive_nowait()
    except trio.WouldBlock:
        return True
    return False


async def test_telemetry_waits_for_a_turn_and_a_stream_owed_a_setpoint_outcome_goes_first() -> None:
    turns = IntakeTurns(1)
    intake = turns.limiter
    await intake.acquire()  # the test holds the only turn
    with trio.fail_after(10):
        async with registered_agent(turns) as (agent, conn):
            await agent.outbound.send(batch(1))
            await agent.outbound.send(Heartbeat(5.0))  # behind the telemetry on the same stream
            await waiting_in_line(intake)
            assert nothing_arrived(conn)

            # A setpoint goes out on the stream: its reader leaves the line, with what is queued.
            await conn.outbound.send(Setpoint("sp-1", BESS, SITE, 2.0))
            first = await conn.inbound.receive()
            assert isinstance(first, ReceivedPoints) and [r[1] for r in first.rows] == [1]
            assert await conn.inbound.receive() == Heartbeat(5.0)
            assert isinstance(await agent.inbound.receive(), Setpoint)
            await agent.outbound.send(batch(2))  # still owed the outcome: goes first too
            assert [r[1] for r in (await conn.inbound.receive()).rows] == [2]
            await agent.outbound.send(SetpointAck("sp-1", AckState.RECEIVED))
            assert (await conn.inbound.receive()).state is AckState.RECEIVED
            await agent.outbound.send(SetpointAck("sp-1", AckState.APPLIED))
            assert (await conn.inbound.receive()).state is AckState.APPLIED

            # The outcome is in: the stream's telemetry takes turns again.
            await agent.outbound.send(batch(3))
            await waiting_in_line(intake)
            assert nothing_arrived(conn)
            intake.release()
            assert [r[1] for r in (await conn.inbound.receive()).rows] == [3]


async def test_a_backlog_longer_than_a_turn_arrives_whole_and_in_order() -> None:
    turns = IntakeTurns(1)
    intake = turns.limiter
    await intake.acquire()
    n = 3 * TURN_MESSAGES + 1  # three full turns and one message more
    with trio.fail_after(10):
        async with registered_agent(turns) as (agent, conn):
            for seq in range(1, n + 1):
                await agent.outbound.send(batch(seq))
            await waiting_in_line(intake)
            # every task idle a moment: the agent's pump has sent all of it and the headend's
            # connection reader has queued it behind the first, so the turns below run full
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            intake.release()
            seqs = [(await conn.inbound.receive()).rows[0][1] for _ in range(n)]
            assert seqs == list(range(1, n + 1))


async def test_a_turn_waited_for_takes_what_its_agent_sent_meanwhile() -> None:
    turns = IntakeTurns(1)
    intake = turns.limiter
    await intake.acquire()
    with trio.fail_after(10):
        async with registered_agent(turns) as (agent, conn):
            await first_batch_in_line(agent, intake)
            for seq in range(2, 6):  # sent while the stream waits in line: they stay in the socket
                await agent.outbound.send(batch(seq))
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            assert nothing_arrived(conn)
            intake.release()
            while conn.inbound.statistics().current_buffer_used == 0:
                await trio.sleep(0)
            # all five in the one turn (the reader delivers a turn in one step)
            assert [conn.inbound.receive_nowait().rows[0][1] for _ in range(5)] == [1, 2, 3, 4, 5]


async def test_an_agent_that_never_answers_loses_its_place_after_reply_priority_s(autojump_clock) -> None:
    replies = _Replies()
    replies.sent(Heartbeat(1.0))
    assert not replies.urgent  # only a setpoint is owed an outcome
    replies.sent(Setpoint("sp-1", BESS, SITE, 2.0))
    await trio.sleep(REPLY_PRIORITY_S - 0.001)
    assert replies.urgent
    await trio.sleep(0.001)
    assert not replies.urgent


async def test_a_stream_waiting_for_a_turn_leaves_the_line_when_its_session_ends() -> None:
    turns = IntakeTurns(1)
    intake = turns.limiter
    await intake.acquire()
    with trio.fail_after(10):
        async with registered_agent(turns) as (agent, conn):
            await first_batch_in_line(agent, intake)
            await conn.outbound.aclose()  # the session ends its end of the stream
            with pytest.raises(trio.EndOfChannel):  # the agent sees the stream end
                await agent.inbound.receive()
            while intake.statistics().tasks_waiting:  # and no reader is left in line
                await trio.sleep(0.001)
            with pytest.raises(trio.EndOfChannel):  # what waited in line is dropped, not delivered late
                conn.inbound.receive_nowait()
    intake.release()


async def test_intake_takes_one_turn_while_any_dispatch_is_served_and_its_turns_again_after() -> None:
    turns = IntakeTurns(2, dispatching_turns=1)
    limiter = turns.limiter
    limiter.acquire_on_behalf_of_nowait("stream 1")
    with turns.giving_way():
        with turns.giving_way():  # two dispatches at once
            assert limiter.total_tokens == 1
            with pytest.raises(trio.WouldBlock):  # the turn held is the only one now
                limiter.acquire_on_behalf_of_nowait("stream 2")
        assert limiter.total_tokens == 1  # one is still served
    assert limiter.total_tokens == 2
    limiter.acquire_on_behalf_of_nowait("stream 2")
    with pytest.raises(RuntimeError), turns.giving_way():  # a handler that fails gives the turn back too
        raise RuntimeError
    assert limiter.total_tokens == 2
