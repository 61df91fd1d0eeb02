"""The edge over a real gRPC socket: a tiny purerpc server in the test (port 0) against `grpc_dialer`.

Real time here, bounded by fail_after; nothing asserts on timing.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import trio

from der_actors.messages import (
    AckState,
    Allocation,
    Register,
    RegisterAck,
    Setpoint,
    SetpointAck,
    TelemetryBatch,
)
from der_actors.transport import codec
from der_actors.transport.grpc_client import grpc_dialer
from der_actors.transport.pb import agent_pb2 as pb
from der_actors.transport.purerpc_compat import Status, StatusCode, receive_message, serve_grpc
from edge.config import load_config
from edge.site import run_site

ASSETS = str(Path(__file__).resolve().parent.parent / "assets.yaml")
HARBOUR = "7e3a446b-8390-41f8-ba6c-946169ccf1e8"
B1 = "c85e9759-8fac-40b8-ae8e-e9f6c796f8bb"  # 5 MW


@pytest.fixture(autouse=True)
def _spool_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EDGE_SPOOL_DIR defaults to spool/<agent id> under the working directory: keep each test's apart."""
    monkeypatch.chdir(tmp_path)


async def test_register_setpoint_and_ack_over_a_real_socket() -> None:
    seen_send, seen_recv = trio.open_memory_channel[object](64)

    async def handler(stream, request, peer: str) -> None:
        stream.expect_message_type(pb.AgentMessage)
        first = codec.agent_from_pb(await receive_message(stream))
        await seen_send.send(first)
        assert isinstance(first, Register)
        ack = RegisterAck("grpc-session", tuple(a.asset_id for a in first.assets))
        await stream.send_message(codec.headend_to_pb(ack))
        await stream.send_message(pb.HeadendMessage())  # malformed (no body): logged and skipped
        setpoint = Setpoint("sp-grpc", asset_id=B1, site_id=HARBOUR, mw=7.0, duration_s=30.0)
        await stream.send_message(codec.headend_to_pb(setpoint))
        while (raw := await receive_message(stream)) is not None:
            await seen_send.send(codec.agent_from_pb(raw))
        await seen_send.send("stream ended")

    config = load_config(
        ["--gateway-site-id", HARBOUR, "--assets-path", ASSETS, "--telemetry-interval-s", "0.05"], {}
    )
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_grpc, "127.0.0.1", 0, handler)
            site = await nursery.start(run_site, config, grpc_dialer("127.0.0.1", port))
            register = await seen_recv.receive()
            assert isinstance(register, Register)
            assert register.agent_id == HARBOUR
            assert len(register.assets) == 3
            acks = []
            batches = 0
            while len(acks) < 2 or batches < 2:
                msg = await seen_recv.receive()
                if isinstance(msg, SetpointAck):
                    acks.append(msg)
                elif isinstance(msg, TelemetryBatch):
                    assert len(msg.points) == 3
                    batches += 1
            assert acks == [
                SetpointAck("sp-grpc", AckState.RECEIVED),
                SetpointAck("sp-grpc", AckState.APPLIED, "applied 5.000 MW (clamped from 7.000)",
                            (Allocation(B1, 5.0),)),
            ]
            assert site.snapshot(B1).state.setpoint_mw == 5.0
            nursery.cancel_scope.cancel()


async def test_a_refused_dial_raises_an_os_error() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with trio.fail_after(10):
        with pytest.raises(ConnectionRefusedError):
            async with grpc_dialer("127.0.0.1", port)():
                pass


async def test_the_link_sees_the_stream_end_when_the_server_goes_away() -> None:
    """The server ends the stream after registering: the uplink notices and redials."""
    connections = 0
    registered_twice = trio.Event()

    async def handler(stream, request, peer: str) -> None:
        nonlocal connections
        stream.expect_message_type(pb.AgentMessage)
        first = codec.agent_from_pb(await receive_message(stream))
        assert isinstance(first, Register)
        connections += 1
        await stream.send_message(codec.headend_to_pb(RegisterAck("s", ())))
        if connections == 2:
            registered_twice.set()
        await stream.close(Status(StatusCode.OK))  # end the response: the agent must see the end of its stream

    config = load_config(["--gateway-site-id", HARBOUR, "--assets-path", ASSETS], {})
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_grpc, "127.0.0.1", 0, handler)
            site = await nursery.start(run_site, config, grpc_dialer("127.0.0.1", port))
            await registered_twice.wait()
            assert site.stats.last_disconnect_reason == "headend closed the stream"
            nursery.cancel_scope.cancel()

