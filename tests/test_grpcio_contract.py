"""The wire contract, proven with a client that is not ours.

grpc_tools generates Python code (messages and the grpc stub) from proto/agent.proto at test time;
grpcio's sync client, in worker threads, speaks to the real headend over a real socket. The headend
is checked through its real REST API (httpx). Nothing of ours is on the client side.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

import httpx
import trio

from der_actors.transport.pb import agent_pb2 as our_pb

if TYPE_CHECKING:
    from conftest import LiveHeadend
    from grpcio_agent import Contract, GrpcioAgent

HARBOURSIDE = "7e3a446b-8390-41f8-ba6c-946169ccf1e8"
WHEATFIELD_PV_NORTH = "c4a3b185-95b5-46cd-a458-5f6ebc4dc32d"  # another site's asset
BESS_1 = "c85e9759-8fac-40b8-ae8e-e9f6c796f8bb"  # Harbourside, max 5 / min -5


async def poll_json(http: httpx.AsyncClient, path: str, ready: Callable[[httpx.Response], bool], timeout: float = 10.0) -> dict:
    """GET `path` until `ready(response)`; the headend applies agent messages asynchronously."""
    with trio.fail_after(timeout):
        while True:
            r = await http.get(path)
            if ready(r):
                return r.json()
            await trio.sleep(0.01)


def test_client_code_is_not_ours(contract: Contract) -> None:
    """The client's classes come from protoc's output in a descriptor pool of their own."""
    assert contract.pb2.AgentMessage is not our_pb.AgentMessage
    assert contract.pb2.DESCRIPTOR.pool is not our_pb.DESCRIPTOR.pool
    service = contract.pb2.DESCRIPTOR.services_by_name["AgentLink"]
    assert service.full_name == "der.agent.v1.AgentLink"
    assert service.methods_by_name["Stream"].client_streaming and service.methods_by_name["Stream"].server_streaming


def _uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


async def test_legacy_agent_over_grpcio(
    live_headend: LiveHeadend, http: httpx.AsyncClient, grpcio_agent: Callable[[], GrpcioAgent]
) -> None:
    agent = grpcio_agent()
    pb = agent.pb

    # Register: a legacy single-asset agent (asset_id = its primary asset), which also lists an asset
    # of another site. The primary is accepted; the stranger is rejected with a reason; the stream stays.
    agent.send(register=pb.Register(
        agent_id="legacy-bess-1", site_id=HARBOURSIDE, asset_id=BESS_1, protocol_version=1, agent_version="grpcio-test",
        assets=[pb.AssetInfo(asset_id=WHEATFIELD_PV_NORTH, site_id=HARBOURSIDE, type=pb.ASSET_TYPE_PV, max_mw=3.0)],
    ))
    with trio.fail_after(15):
        ack = await agent.receive_kind("register_ack")
    assert ack.session_id and _uuid(ack.session_id)
    assert list(ack.accepted_asset_ids) == [BESS_1]
    assert [r.asset_id for r in ack.rejected] == [WHEATFIELD_PV_NORTH]
    assert "39177186-ddbe-4574-80ef-a2055fea0232" in ack.rejected[0].reason  # names the asset's real site

    agents = await poll_json(http, "/agents", lambda r: any(a["asset_id"] == BESS_1 and a["connected"] for a in r.json()["agents"]))
    row = next(a for a in agents["agents"] if a["asset_id"] == BESS_1)
    assert row["session_id"] == ack.session_id
    assert not next(a for a in agents["agents"] if a["asset_id"] == WHEATFIELD_PV_NORTH)["connected"]

    # Telemetry without asset_id: the legacy rule puts it on the session's primary asset.
    now = time.time()
    agent.send(telemetry=pb.Telemetry(
        seq=7, timestamp=agent.timestamp(now), mw=-1.25, mw_setpoint=-1.5, online=True, status="charging",
        bess=pb.BessDetails(soc_pct=61.5, energy_mwh=12.3),
    ))
    point = await poll_json(http, f"/telemetry/{BESS_1}", lambda r: r.status_code == 200)
    assert point["asset_id"] == BESS_1
    assert point["site_id"] == HARBOURSIDE
    assert point["seq"] == 7
    assert point["mw"] == -1.25
    assert point["mw_setpoint"] == -1.5
    assert point["status"] == "charging"
    assert point["details"] == {"soc_pct": 61.5, "energy_mwh": 12.3}

    # Dispatch: REST -> headend -> grpcio client receives the Setpoint; acks flow back.
    r = await http.post("/dispatch", json={"asset_id": BESS_1, "mw": 1.5})
    assert r.status_code == 202, r.text
    dispatch = r.json()
    assert dispatch["state"] == "sent"
    assert dispatch["mw"] == 1.5 and dispatch["clamped"] is False
    with trio.fail_after(15):
        sp = await agent.receive_kind("setpoint")
    assert sp.asset_id == BESS_1
    assert sp.mw == 1.5
    assert sp.setpoint_id == dispatch["dispatch_id"]
    assert sp.site_id == HARBOURSIDE
    assert sp.issued_at.seconds > 0

    agent.send(setpoint_ack=pb.SetpointAck(setpoint_id=sp.setpoint_id, state=pb.SetpointAck.RECEIVED))
    agent.send(setpoint_ack=pb.SetpointAck(setpoint_id=sp.setpoint_id, state=pb.SetpointAck.APPLIED, message="ok"))
    done = await poll_json(http, f"/dispatch/{dispatch['dispatch_id']}", lambda r: r.json()["state"] == "applied")
    assert [h["state"] for h in done["history"]] == ["submitted", "sent", "received", "applied"]
    assert done["setpoints"][0]["outcome"] == "applied"

    # Clamped: 99 MW on a 5 MW battery is sent (and reported) as 5 MW.
    r = await http.post("/dispatch", json={"asset_id": BESS_1, "mw": 99})
    assert r.status_code == 202, r.text
    clamped = r.json()
    assert clamped["requested_mw"] == 99
    assert clamped["mw"] == 5.0
    assert clamped["clamped"] is True
    with trio.fail_after(15):
        sp = await agent.receive_kind("setpoint")
    assert sp.setpoint_id == clamped["dispatch_id"]
    assert sp.mw == 5.0
    agent.send(setpoint_ack=pb.SetpointAck(setpoint_id=sp.setpoint_id, state=pb.SetpointAck.APPLIED))
    await poll_json(http, f"/dispatch/{clamped['dispatch_id']}", lambda r: r.json()["state"] == "applied")

    # The agent leaves cleanly: the headend ends its side too, and /agents says why.
    agent.half_close()
    with trio.fail_after(15):
        ended = await agent.wait_ended()
    assert ended.code.name == "OK"
    agents = await poll_json(http, "/agents", lambda r: not next(a for a in r.json()["agents"] if a["asset_id"] == BESS_1)["connected"])
    row = next(a for a in agents["agents"] if a["asset_id"] == BESS_1)
    assert row["sessions"][0]["session_id"] == ack.session_id
    assert row["sessions"][0]["reason"] == "stream closed by agent"
    assert (await http.get("/health")).status_code == 200


async def test_register_refused_for_newer_protocol(
    live_headend: LiveHeadend, http: httpx.AsyncClient, grpcio_agent: Callable[[], GrpcioAgent]
) -> None:
    agent = grpcio_agent()
    pb = agent.pb
    agent.send(register=pb.Register(agent_id="future", site_id=HARBOURSIDE, asset_id=BESS_1, protocol_version=99))
    with trio.fail_after(15):
        ack = await agent.receive_kind("register_ack")
        ended = await agent.wait_ended()
    assert list(ack.accepted_asset_ids) == []
    assert [r.asset_id for r in ack.rejected] == [BESS_1]
    assert "protocol_version 99" in ack.rejected[0].reason
    assert ended.code.name == "OK"
    row = next(a for a in (await http.get("/agents")).json()["agents"] if a["asset_id"] == BESS_1)
    assert row["connected"] is False
