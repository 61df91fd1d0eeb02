"""The REST API over real sockets: a real headend on ephemeral ports, httpx as the client, and
grpcio agents (code generated from proto/agent.proto at test time) feeding it over real gRPC."""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import trio

from der_actors.transport import rest
from der_actors.transport.grpc_server import DISPATCHING_TURNS, INTAKE_TURNS, IntakeTurns
from der_actors.transport.rest import create_app

if TYPE_CHECKING:
    from conftest import LiveHeadend
    from grpcio_agent import GrpcioAgent

HARBOURSIDE = "7e3a446b-8390-41f8-ba6c-946169ccf1e8"
WHEATFIELD = "39177186-ddbe-4574-80ef-a2055fea0232"
RIDGEWAY = "f91f3035-50e0-4460-81ba-4fe29ad09222"
BESS_1 = "c85e9759-8fac-40b8-ae8e-e9f6c796f8bb"  # Harbourside, 5 / -5
BESS_2 = "e5941070-e4e7-47fa-aab1-76cc0c722d04"  # Harbourside, 5 / -5
BESS_3 = "5570bfcf-8032-445f-96a9-5839423e1832"  # Harbourside, 2.5 / -2.5
RIDGE_A1 = "f092578c-87ad-4433-ba1d-69688c45dbcb"  # Ridgeway BESS A1
RIDGE_T1 = "98f89e62-8bf8-433d-a148-2da0a15dc8a3"  # Ridgeway Wind T1
UNKNOWN = "00000000-0000-4000-8000-000000000000"

ASSET_FIELDS = {
    "id", "name", "site_id", "type", "location", "capacity_mwhr", "max_mw", "min_mw",
    "ramp_rate_mw_per_min", "efficiency", "site_name",
}
AGENT_FIELDS = {
    "asset_id", "asset_name", "site_id", "site_name", "connected", "peer", "gateway_id", "session_id",
    "connected_at", "last_seen", "telemetry_lag_s", "sessions",
}
SESSION_FIELDS = {"session_id", "gateway_id", "agent_id", "peer", "connected_at", "disconnected_at", "reason"}
CSV_COLUMNS = ["timestamp", "received_at", "asset_id", "site_id", "seq", "mw", "mw_setpoint", "online", "status", "fault_code"]
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
PEER = re.compile(r"^127\.0\.0\.1:\d+$")


def rfc3339(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def poll_json(http: httpx.AsyncClient, path: str, ready: Callable[[Any], bool], timeout: float = 10.0) -> Any:
    """GET `path` until `ready(json)`: the headend applies agent messages and writes history asynchronously."""
    with trio.fail_after(timeout):
        while True:
            r = await http.get(path)
            if r.status_code == 200 and ready(r.json()):
                return r.json()
            await trio.sleep(0.01)


def agent_row(agents: dict, asset_id: str) -> dict:
    return next(a for a in agents["agents"] if a["asset_id"] == asset_id)


async def register(agent: GrpcioAgent, site_id: str, asset_ids: list[str], *, inventory, primary: str = "",
                   gateway_id: str = "", agent_id: str = "test-agent"):
    """Register over grpcio; a gateway (no primary) lists every asset with its AssetInfo."""
    pb = agent.pb
    agent.send(register=pb.Register(
        agent_id=agent_id, gateway_id=gateway_id, site_id=site_id, asset_id=primary, protocol_version=1,
        assets=[agent.asset_info(inventory.asset(a)) for a in asset_ids if a != primary],
    ))
    with trio.fail_after(15):
        return await agent.receive_kind("register_ack")


# --- read-only resources -------------------------------------------------------------------------


async def test_assets_in_inventory_order(live_headend: LiveHeadend, http: httpx.AsyncClient) -> None:
    r = await http.get("/assets")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    assets = r.json()["assets"]
    assert len(assets) == 20
    assert [a["id"] for a in assets] == [a.id for a in live_headend.inventory.assets]
    assert all(set(a) == ASSET_FIELDS for a in assets)
    first = assets[0]
    assert first == {
        "id": BESS_1, "name": "Harbourside BESS 1", "site_id": HARBOURSIDE, "type": "bess",
        "location": "Quay 3, container row A", "capacity_mwhr": 20.0, "max_mw": 5.0, "min_mw": -5.0,
        "ramp_rate_mw_per_min": 10.0, "efficiency": 0.9, "site_name": "Harbourside Battery Park",
    }
    assert {a["type"] for a in assets} == {"bess", "pv", "wind", "ev_charger"}
    assert sum(a["site_id"] == RIDGEWAY for a in assets) == 13
    assert (await http.get("/assets")).json()["assets"] == assets  # stable


async def test_sites(http: httpx.AsyncClient) -> None:
    r = await http.get("/sites")
    assert r.status_code == 200
    assert r.json() == {"sites": [
        {"id": HARBOURSIDE, "name": "Harbourside Battery Park", "location": "Port of Tilbury, Essex, GB"},
        {"id": WHEATFIELD, "name": "Wheatfield Solar & Storage", "location": "Swaffham, Norfolk, GB"},
        {"id": RIDGEWAY, "name": "Ridgeway Energy Hub", "location": "Didcot, Oxfordshire, GB"},
    ]}


@pytest.mark.parametrize("chunk", [rest.AGENT_ROWS_PER_CHUNK, 2, 1])  # one chunk; several, the last short; one row each
async def test_agents_all_disconnected_initially(
    live_headend: LiveHeadend, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    monkeypatch.setattr(rest, "AGENT_ROWS_PER_CHUNK", chunk)
    r = await http.get("/agents")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    rows = r.json()["agents"]
    assert [row["asset_id"] for row in rows] == [a.id for a in live_headend.inventory.assets]
    for row in rows:
        assert set(row) == AGENT_FIELDS
        assert row["connected"] is False
        assert row["peer"] is row["gateway_id"] is row["session_id"] is row["connected_at"] is None
        assert row["last_seen"] is None and row["telemetry_lag_s"] is None
        assert row["sessions"] == []
    assert agent_row(r.json(), BESS_1)["asset_name"] == "Harbourside BESS 1"
    assert agent_row(r.json(), BESS_1)["site_name"] == "Harbourside Battery Park"


async def test_health(http: httpx.AsyncClient) -> None:
    r = await http.get("/health")
    assert r.status_code == 200
    body = r.json()
    lag = body.pop("event_loop_lag_ms")
    assert body.pop("event_loop_stalls") >= 0
    history = body.pop("history")
    assert body.pop("intake") == {"turns": INTAKE_TURNS, "in_use": 0, "streams_waiting": 0}
    assert body == {"status": "ok", "sessions": 0, "assets": 20}
    assert 0 <= lag["last"] <= lag["worst_60s"]  # the process's monitor has woken at least once
    assert (history["received_points"], history["stored_points"], history["healthy"]) == (0, 0, True)


async def test_intake_takes_fewer_turns_while_a_dispatch_request_waits_for_its_outcome(http: httpx.AsyncClient) -> None:
    def turns(health: dict) -> int:
        return health["intake"]["turns"]

    assert turns((await http.get("/health")).json()) == INTAKE_TURNS
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            replies = []

            async def dispatch_to_an_offline_asset() -> None:  # pending: the request waits its timeout out
                replies.append(await http.post("/dispatch?wait=applied&timeout_s=1", json={"asset_id": BESS_1, "mw": 1}))

            nursery.start_soon(dispatch_to_an_offline_asset)
            await poll_json(http, "/health", lambda h: turns(h) == DISPATCHING_TURNS)
        assert replies[0].status_code == 202 and replies[0].json()["state"] == "pending"
        assert turns((await http.get("/health")).json()) == INTAKE_TURNS


async def test_openapi_describes_every_route(live_headend: LiveHeadend, http: httpx.AsyncClient) -> None:
    r = await http.get("/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.")
    app = create_app(live_headend.headend, IntakeTurns())  # the same routes the running server has
    routes: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        routes.setdefault(path, set()).update(m.lower() for m in rule.methods - {"HEAD", "OPTIONS"})
    described = {path: set(item) for path, item in doc["paths"].items()}
    assert described == routes
    for path, item in doc["paths"].items():
        for name in re.findall(r"{([^}]+)}", path):  # every path parameter is declared
            for op in item.values():
                assert any(p["name"] == name and p["in"] == "path" for p in op["parameters"]), (path, name)


async def test_docs_is_html(http: httpx.AsyncClient) -> None:
    r = await http.get("/docs")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "<html" in r.text and "/openapi.json" in r.text


async def test_split_preview_with_nothing_connected(http: httpx.AsyncClient) -> None:
    r = await http.get(f"/sites/{RIDGEWAY}/split", params={"mw": 5})
    assert r.status_code == 200
    assert r.json() == {"site_id": RIDGEWAY, "requested_mw": 5.0, "placed_mw": 0.0, "shortfall_mw": 5.0, "allocations": []}


# --- validation: every refusal is JSON naming the field; the headend keeps serving -------------------

GOOD = f'"asset_id": "{BESS_1}"'

BAD_REQUESTS = [
    # id, method, path, request kwargs, status, code (None: any), field
    ("no-target", "POST", "/dispatch", {"json": {"mw": 1}}, 400, "missing_field", "asset_id"),
    ("null-targets", "POST", "/dispatch", {"json": {"asset_id": None, "site_id": None, "mw": 1}}, 400, "missing_field", "asset_id"),
    ("missing-mw", "POST", "/dispatch", {"json": {"asset_id": BESS_1}}, 400, "missing_field", "mw"),
    ("mw-string", "POST", "/dispatch", {"json": {"asset_id": BESS_1, "mw": "1.5"}}, 400, "invalid_field", "mw"),
    ("mw-bool", "POST", "/dispatch", {"json": {"asset_id": BESS_1, "mw": True}}, 400, "invalid_field", "mw"),
    ("mw-null", "POST", "/dispatch", {"json": {"asset_id": BESS_1, "mw": None}}, 400, "invalid_field", "mw"),
    ("mw-nan", "POST", "/dispatch", {"content": "{%s, \"mw\": NaN}" % GOOD}, 400, "invalid_field", "mw"),
    ("mw-inf", "POST", "/dispatch", {"content": "{%s, \"mw\": 1e999}" % GOOD}, 400, "invalid_field", "mw"),
    ("mw-neg-inf", "POST", "/dispatch", {"content": "{%s, \"mw\": -Infinity}" % GOOD}, 400, "invalid_field", "mw"),
    ("mw-huge-int", "POST", "/dispatch", {"content": "{%s, \"mw\": 1%s}" % (GOOD, "0" * 400)}, 400, "invalid_field", "mw"),
    ("mw-out-of-range", "POST", "/dispatch", {"json": {"site_id": RIDGEWAY, "mw": 1e308}}, 400, "invalid_field", "mw"),
    ("duration-negative", "POST", "/dispatch", {"json": {"asset_id": BESS_1, "mw": 1, "duration_s": -1}}, 400, "invalid_field", "duration_s"),
    ("duration-string", "POST", "/dispatch", {"json": {"asset_id": BESS_1, "mw": 1, "duration_s": "60"}}, 400, "invalid_field", "duration_s"),
    ("duration-nan", "POST", "/dispatch", {"content": "{%s, \"mw\": 1, \"duration_s\": NaN}" % GOOD}, 400, "invalid_field", "duration_s"),
    ("unknown-field", "POST", "/dispatch", {"json": {"asset_id": BESS_1, "mw": 1, "megawatts": 2}}, 400, "unknown_field", "megawatts"),
    ("malformed-json", "POST", "/dispatch", {"content": '{"asset_id": '}, 400, "malformed_json", None),
    ("empty-body", "POST", "/dispatch", {"content": b""}, 400, "malformed_json", None),
    ("not-utf8", "POST", "/dispatch", {"content": b"{\"mw\": \xff}"}, 400, "malformed_json", None),
    ("too-deep", "POST", "/dispatch", {"content": "[" * 100_000}, 400, "malformed_json", None),
    ("int-too-long", "POST", "/dispatch", {"content": "1" * 5000}, 400, "malformed_json", None),
    ("body-array", "POST", "/dispatch", {"json": [BESS_1, 1]}, 400, "invalid_body", None),
    ("body-string", "POST", "/dispatch", {"json": "dispatch please"}, 400, "invalid_body", None),
    ("asset-not-uuid", "POST", "/dispatch", {"json": {"asset_id": "bess-1", "mw": 1}}, 400, "invalid_field", "asset_id"),
    ("asset-not-string", "POST", "/dispatch", {"json": {"asset_id": 7, "mw": 1}}, 400, "invalid_field", "asset_id"),
    ("site-not-uuid", "POST", "/dispatch", {"json": {"site_id": "ridgeway", "mw": 1}}, 400, "invalid_field", "site_id"),
    ("asset-site-mismatch", "POST", "/dispatch", {"json": {"asset_id": BESS_1, "site_id": RIDGEWAY, "mw": 1}}, 400, "invalid_field", "site_id"),
    ("unknown-asset", "POST", "/dispatch", {"json": {"asset_id": UNKNOWN, "mw": 1}}, 404, "unknown_asset", "asset_id"),
    ("unknown-site", "POST", "/dispatch", {"json": {"site_id": UNKNOWN, "mw": 1}}, 404, "unknown_site", "site_id"),
    ("ttl-zero", "POST", "/dispatch", {"json": {"asset_id": BESS_1, "mw": 1, "ttl_s": 0}}, 400, "invalid_field", "ttl_s"),
    ("wait-unknown", "POST", "/dispatch?wait=forever", {"json": {"asset_id": BESS_1, "mw": 1}}, 400, "invalid_parameter", "wait"),
    ("wait-timeout-too-long", "POST", "/dispatch?wait=applied&timeout_s=600", {"json": {"asset_id": BESS_1, "mw": 1}}, 400, "invalid_parameter", "timeout_s"),
    ("timeout-without-wait", "POST", "/dispatch?timeout_s=5", {"json": {"asset_id": BESS_1, "mw": 1}}, 400, "invalid_parameter", "timeout_s"),
    ("list-bad-state", "GET", "/dispatch?state=lost", {}, 400, "invalid_parameter", "state"),
    ("telemetry-unknown", "GET", f"/telemetry/{UNKNOWN}", {}, 404, "unknown_asset", "asset_id"),
    ("telemetry-not-uuid", "GET", "/telemetry/not-a-uuid", {}, 400, "invalid_parameter", "asset_id"),
    ("telemetry-no-data", "GET", f"/telemetry/{BESS_1}", {}, 404, "no_data_yet", "asset_id"),
    ("history-unknown", "GET", f"/telemetry/{UNKNOWN}/history", {}, 404, "unknown_asset", "asset_id"),
    ("history-limit-0", "GET", f"/telemetry/{BESS_1}/history", {"params": {"limit": 0}}, 400, "invalid_parameter", "limit"),
    ("history-limit-10001", "GET", f"/telemetry/{BESS_1}/history", {"params": {"limit": 10001}}, 400, "invalid_parameter", "limit"),
    ("history-limit-x", "GET", f"/telemetry/{BESS_1}/history", {"params": {"limit": "x"}}, 400, "invalid_parameter", "limit"),
    ("history-since-bad", "GET", f"/telemetry/{BESS_1}/history", {"params": {"since": "yesterday"}}, 400, "invalid_parameter", "since"),
    ("history-since-no-tz", "GET", f"/telemetry/{BESS_1}/history", {"params": {"since": "2026-11-23T10:00:00"}}, 400, "invalid_parameter", "since"),
    ("history-until-bad", "GET", f"/telemetry/{BESS_1}/history", {"params": {"until": "1e9"}}, 400, "invalid_parameter", "until"),
    ("history-since-after-until", "GET", f"/telemetry/{BESS_1}/history",
     {"params": {"since": "2026-11-23T10:00:01Z", "until": "2026-11-23T10:00:00Z"}}, 400, "invalid_parameter", "since"),
    ("csv-limit-0", "GET", f"/telemetry/{BESS_1}/history.csv", {"params": {"limit": 0}}, 400, "invalid_parameter", "limit"),
    ("csv-not-uuid", "GET", "/telemetry/nope/history.csv", {}, 400, "invalid_parameter", "asset_id"),
    ("heartbeat-unknown", "GET", f"/heartbeat/{UNKNOWN}", {}, 404, "unknown_asset", "asset_id"),
    ("heartbeat-not-uuid", "GET", "/heartbeat/nope", {}, 400, "invalid_parameter", "asset_id"),
    ("heartbeat-history-limit", "GET", f"/heartbeat/{BESS_1}/history", {"params": {"limit": -3}}, 400, "invalid_parameter", "limit"),
    ("dispatch-not-uuid", "GET", "/dispatch/nope", {}, 400, "invalid_parameter", "dispatch_id"),
    ("dispatch-unknown", "GET", f"/dispatch/{UNKNOWN}", {}, 404, "unknown_dispatch", "dispatch_id"),
    ("dispatch-history-site", "GET", "/dispatch/history", {"params": {"site_id": "x"}}, 400, "invalid_parameter", "site_id"),
    ("dispatch-history-asset", "GET", "/dispatch/history", {"params": {"asset_id": "x"}}, 400, "invalid_parameter", "asset_id"),
    ("dispatch-history-limit", "GET", "/dispatch/history", {"params": {"limit": 10001}}, 400, "invalid_parameter", "limit"),
    ("split-no-mw", "GET", f"/sites/{RIDGEWAY}/split", {}, 400, "missing_parameter", "mw"),
    ("split-mw-abc", "GET", f"/sites/{RIDGEWAY}/split", {"params": {"mw": "abc"}}, 400, "invalid_parameter", "mw"),
    ("split-mw-nan", "GET", f"/sites/{RIDGEWAY}/split", {"params": {"mw": "nan"}}, 400, "invalid_parameter", "mw"),
    ("split-mw-huge", "GET", f"/sites/{RIDGEWAY}/split", {"params": {"mw": "1e308"}}, 400, "invalid_parameter", "mw"),
    ("split-unknown-site", "GET", f"/sites/{UNKNOWN}/split", {"params": {"mw": 1}}, 404, "unknown_site", "site_id"),
    ("split-site-not-uuid", "GET", "/sites/ridgeway/split", {"params": {"mw": 1}}, 400, "invalid_parameter", "site_id"),
    ("unknown-route", "GET", "/no/such/route", {}, 404, "not_found", None),
    ("delete-assets", "DELETE", "/assets", {}, 405, "method_not_allowed", None),
    ("delete-dispatch", "DELETE", "/dispatch", {}, 405, "method_not_allowed", None),
    ("put-agents", "PUT", "/agents", {"json": {}}, 405, "method_not_allowed", None),
]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code", "field"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_REQUESTS],
)
async def test_bad_request_is_a_json_error(
    http: httpx.AsyncClient, method: str, path: str, kwargs: dict, status: int, code: str, field: str | None
) -> None:
    if "content" in kwargs:
        kwargs = {**kwargs, "headers": {"content-type": "application/json"}}
    r = await http.request(method, path, **kwargs)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "field"}
    assert body["error"]["code"] == code
    assert body["error"]["field"] == field
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if status == 405:  # RFC 9110: a 405 names the methods the resource has
        allowed = {m.strip() for m in r.headers["allow"].split(",")}
        assert method not in allowed and allowed & {"GET", "POST"}
    health = await http.get("/health")
    assert health.status_code == 200


# --- an agent reports: telemetry, heartbeats, /agents, site dispatch through a gateway -------------


async def test_gateway_telemetry_heartbeats_and_site_dispatch(
    live_headend: LiveHeadend, http: httpx.AsyncClient, grpcio_agent: Callable[[], GrpcioAgent]
) -> None:
    inventory = live_headend.inventory
    ridgeway = [a.id for a in inventory.assets_of(RIDGEWAY)]
    assert len(ridgeway) == 13
    gw = grpcio_agent()
    pb = gw.pb
    ack = await register(gw, RIDGEWAY, ridgeway, inventory=inventory, gateway_id="gw-ridgeway", agent_id="agent-ridgeway")
    assert list(ack.accepted_asset_ids) == ridgeway
    assert list(ack.rejected) == []

    t0 = int(time.time()) - 60  # whole seconds: exact through google.protobuf.Timestamp
    points = []
    for seq in (1, 2, 3):
        points.append(pb.Telemetry(
            asset_id=RIDGE_A1, site_id=RIDGEWAY, seq=seq, timestamp=gw.timestamp(t0 + seq), mw=0.5 * seq,
            mw_setpoint=2.0, online=True, status="discharging", bess=pb.BessDetails(soc_pct=50.0 - seq, energy_mwh=4.0),
        ))
        points.append(pb.Telemetry(
            asset_id=RIDGE_T1, site_id=RIDGEWAY, seq=seq, timestamp=gw.timestamp(t0 + seq), mw=1.0 + seq,
            online=seq != 2, status="generating", fault_code="E7" if seq == 2 else "",
            wind=pb.WindDetails(wind_speed_ms=8.0 + seq, available_mw=3.5),
        ))
    gw.send(telemetry_batch=pb.TelemetryBatch(points=points))
    gw.send(heartbeat=pb.Heartbeat(timestamp=gw.timestamp(t0 + 4)))

    # Latest value
    latest = await poll_json(http, f"/telemetry/{RIDGE_A1}", lambda j: j.get("seq") == 3)
    assert latest["asset_id"] == RIDGE_A1 and latest["site_id"] == RIDGEWAY
    assert latest["timestamp"] == rfc3339(t0 + 3)
    assert RFC3339.match(latest["received_at"])
    assert latest["mw"] == 1.5 and latest["mw_setpoint"] == 2.0 and latest["online"] is True
    assert latest["status"] == "discharging" and latest["fault_code"] == ""
    assert latest["details"] == {"soc_pct": 47.0, "energy_mwh": 4.0}
    wind = await poll_json(http, f"/telemetry/{RIDGE_T1}", lambda j: j.get("seq") == 3)
    assert wind["details"] == {"wind_speed_ms": 11.0, "available_mw": 3.5}
    r = await http.get(f"/telemetry/{ridgeway[-1]}")  # served, but silent so far
    assert r.status_code == 404 and r.json()["error"]["code"] == "no_data_yet"

    # History: newest first, limit, since/until (epoch seconds and RFC 3339), CSV
    def seqs(j: dict) -> list[int]:
        return [p["seq"] for p in j["points"]]

    history = await poll_json(http, f"/telemetry/{RIDGE_A1}/history", lambda j: len(j["points"]) == 3)
    assert history["asset_id"] == RIDGE_A1
    assert seqs(history) == [3, 2, 1]
    assert history["points"][0] == latest | {"received_at": history["points"][0]["received_at"]}
    assert all(p["asset_id"] == RIDGE_A1 for p in history["points"])
    for params, expected in [
        ({"limit": 2}, [3, 2]),
        ({"limit": 1}, [3]),
        ({"since": t0 + 2}, [3, 2]),
        ({"until": t0 + 2}, [2, 1]),
        ({"since": t0 + 2, "until": t0 + 2}, [2]),
        ({"since": rfc3339(t0 + 2), "until": rfc3339(t0 + 3)}, [3, 2]),
        ({"since": t0 + 10}, []),
        ({"since": t0 + 1, "limit": 2}, [3, 2]),
    ]:
        r = await http.get(f"/telemetry/{RIDGE_A1}/history", params=params)
        assert r.status_code == 200, (params, r.text)
        assert seqs(r.json()) == expected, params

    r = await http.get(f"/telemetry/{RIDGE_T1}/history.csv")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(r.text)))
    assert rows[0] == CSV_COLUMNS
    assert [row[4] for row in rows[1:]] == ["3", "2", "1"]
    by_seq = {row[4]: dict(zip(CSV_COLUMNS, row)) for row in rows[1:]}
    assert by_seq["2"]["asset_id"] == RIDGE_T1 and by_seq["2"]["site_id"] == RIDGEWAY
    assert by_seq["2"]["timestamp"] == rfc3339(t0 + 2)
    assert by_seq["2"]["mw"] == "3.0" and by_seq["2"]["online"] == "False" and by_seq["2"]["fault_code"] == "E7"
    r = await http.get(f"/telemetry/{RIDGE_T1}/history.csv", params={"limit": 1, "until": t0 + 2})
    assert [row[4] for row in csv.reader(io.StringIO(r.text))][1:] == ["2"]

    # Heartbeats
    beat = await poll_json(http, f"/heartbeat/{RIDGE_A1}", lambda j: j["last_heartbeat"] is not None)
    assert beat["asset_id"] == RIDGE_A1 and beat["connected"] is True
    assert RFC3339.match(beat["last_seen"])
    assert beat["last_heartbeat"]["session_id"] == ack.session_id
    assert beat["last_heartbeat"]["gateway_id"] == "gw-ridgeway"
    assert beat["last_heartbeat"]["site_id"] == RIDGEWAY
    assert beat["last_heartbeat"]["timestamp"] == rfc3339(t0 + 4)
    assert RFC3339.match(beat["last_heartbeat"]["received_at"])
    gw.send(heartbeat=pb.Heartbeat(timestamp=gw.timestamp(t0 + 5)))
    beats = await poll_json(http, f"/heartbeat/{ridgeway[-1]}/history", lambda j: len(j["heartbeats"]) == 2)
    assert [h["timestamp"] for h in beats["heartbeats"]] == [rfc3339(t0 + 5), rfc3339(t0 + 4)]
    r = await http.get(f"/heartbeat/{RIDGE_A1}/history", params={"limit": 1})
    assert [h["timestamp"] for h in r.json()["heartbeats"]] == [rfc3339(t0 + 5)]
    r = await http.get(f"/heartbeat/{BESS_1}")  # another site: never heard of
    assert r.json() == {"asset_id": BESS_1, "connected": False, "last_seen": None, "last_heartbeat": None}

    # /agents: every Ridgeway asset is served by the gateway's session
    agents = (await http.get("/agents")).json()
    for row in agents["agents"]:
        if row["site_id"] != RIDGEWAY:
            assert row["connected"] is False
            continue
        assert row["connected"] is True
        assert PEER.match(row["peer"]), row["peer"]
        assert row["gateway_id"] == "gw-ridgeway"
        assert row["session_id"] == ack.session_id
        assert RFC3339.match(row["connected_at"]) and RFC3339.match(row["last_seen"])
        assert len(row["sessions"]) == 1
        session = row["sessions"][0]
        assert set(session) == SESSION_FIELDS
        assert session["session_id"] == ack.session_id and session["agent_id"] == "agent-ridgeway"
        assert session["peer"] == row["peer"] and session["connected_at"] == row["connected_at"]
        assert session["disconnected_at"] is None and session["reason"] is None
        if row["asset_id"] in (RIDGE_A1, RIDGE_T1):
            assert isinstance(row["telemetry_lag_s"], float)
        else:
            assert row["telemetry_lag_s"] is None
    health = (await http.get("/health")).json()
    assert health["sessions"] == 1 and health["status"] == "ok"
    history = health["history"]  # three points each from the battery and the turbine, all read back above
    assert (history["received_points"], history["stored_points"], history["buffered_points"]) == (6, 6, 0)
    assert (history["dropped_points"], history["rejected_points"], history["last_error"]) == (0, 0, None)

    # Split preview: allocations add up to what is placed
    r = await http.get(f"/sites/{RIDGEWAY}/split", params={"mw": 5})
    split = r.json()
    assert r.status_code == 200 and split["requested_mw"] == 5.0 and split["placed_mw"] == 5.0
    assert split["shortfall_mw"] == 0.0
    assert round(sum(a["mw"] for a in split["allocations"]) * 1000) == round(split["placed_mw"] * 1000)
    assert {a["asset_id"] for a in split["allocations"]} == set(ridgeway)
    limits = {a.id: (a.min_mw, a.max_mw) for a in inventory.assets_of(RIDGEWAY)}
    assert all(limits[a["asset_id"]][0] <= a["mw"] <= limits[a["asset_id"]][1] for a in split["allocations"])
    split = (await http.get(f"/sites/{RIDGEWAY}/split", params={"mw": 100})).json()
    assert split["placed_mw"] == 28.5 and split["shortfall_mw"] == 71.5  # every export limit reached
    assert round(sum(a["mw"] for a in split["allocations"]) * 1000) == 28_500

    # Site dispatch: one gateway serves the whole site, so it gets one site setpoint and splits it
    r = await http.post("/dispatch", json={"site_id": RIDGEWAY, "mw": 5, "duration_s": 900})
    assert r.status_code == 202, r.text
    dispatch = r.json()
    assert dispatch["target"] == "site" and dispatch["mode"] == "gateway_split"
    assert dispatch["asset_id"] is None and dispatch["site_id"] == RIDGEWAY
    assert dispatch["state"] == "sent" and dispatch["mw"] == 5.0 and dispatch["clamped"] is False
    assert dispatch["duration_s"] == 900
    with trio.fail_after(15):
        sp = await gw.receive_kind("setpoint")
    assert sp.setpoint_id == dispatch["dispatch_id"]
    assert sp.asset_id == "" and sp.site_id == RIDGEWAY
    assert sp.mw == 5.0 and sp.duration_s == 900
    allocations = [(RIDGE_A1, 3.0), (RIDGE_T1, 2.0)]
    gw.send(setpoint_ack=pb.SetpointAck(setpoint_id=sp.setpoint_id, state=pb.SetpointAck.RECEIVED))
    gw.send(setpoint_ack=pb.SetpointAck(
        setpoint_id=sp.setpoint_id, state=pb.SetpointAck.APPLIED,
        allocations=[pb.Allocation(asset_id=a, mw=mw) for a, mw in allocations],
    ))
    done = await poll_json(http, f"/dispatch/{dispatch['dispatch_id']}", lambda j: j["state"] == "applied")
    assert done["allocations"] == [{"asset_id": a, "mw": mw} for a, mw in allocations]
    assert [h["state"] for h in done["history"]] == ["submitted", "sent", "received", "applied"]
    assert all(RFC3339.match(h["at"]) for h in done["history"])
    listed = await poll_json(
        http, f"/dispatch/history?site_id={RIDGEWAY}",
        lambda j: [d["state"] for d in j["dispatches"]] == ["applied"],
    )
    assert listed["dispatches"][0]["dispatch_id"] == dispatch["dispatch_id"]
    r = await http.get("/dispatch/history", params={"site_id": HARBOURSIDE})
    assert r.json() == {"dispatches": []}


# --- takeover and disconnect ---------------------------------------------------------------------------


async def test_takeover_closes_the_old_single_asset_stream(
    live_headend: LiveHeadend, http: httpx.AsyncClient, grpcio_agent: Callable[[], GrpcioAgent]
) -> None:
    inventory = live_headend.inventory
    old = grpcio_agent()
    old_ack = await register(old, HARBOURSIDE, [BESS_1], inventory=inventory, primary=BESS_1, agent_id="bess-1-old")
    assert list(old_ack.accepted_asset_ids) == [BESS_1]
    new = grpcio_agent()
    new_ack = await register(new, HARBOURSIDE, [BESS_1], inventory=inventory, primary=BESS_1, agent_id="bess-1-new")
    assert list(new_ack.accepted_asset_ids) == [BESS_1]
    assert new_ack.session_id != old_ack.session_id

    with trio.fail_after(15):
        ended = await old.wait_ended()  # it served nothing else: the headend closed its stream
    assert ended.code.name == "OK"

    agents = await poll_json(http, "/agents", lambda j: len(agent_row(j, BESS_1)["sessions"]) == 2)
    row = agent_row(agents, BESS_1)
    assert row["connected"] is True and row["session_id"] == new_ack.session_id
    current, previous = row["sessions"]
    assert current["session_id"] == new_ack.session_id and current["disconnected_at"] is None
    assert previous["session_id"] == old_ack.session_id
    assert "taken over" in previous["reason"] and new_ack.session_id in previous["reason"]
    assert RFC3339.match(previous["disconnected_at"])

    # Setpoints now go to the new session
    r = await http.post("/dispatch", json={"asset_id": BESS_1, "mw": -2})
    assert r.status_code == 202, r.text
    with trio.fail_after(15):
        sp = await new.receive_kind("setpoint")
    assert sp.setpoint_id == r.json()["dispatch_id"] and sp.mw == -2.0
    new.send(setpoint_ack=new.pb.SetpointAck(setpoint_id=sp.setpoint_id, state=new.pb.SetpointAck.APPLIED))
    await poll_json(http, f"/dispatch/{sp.setpoint_id}", lambda j: j["state"] == "applied")
    listed = await poll_json(http, f"/dispatch/history?asset_id={BESS_1}", lambda j: len(j["dispatches"]) == 1)
    assert listed["dispatches"][0]["dispatch_id"] == sp.setpoint_id


async def test_partial_takeover_keeps_the_gateway_and_the_headend_splits(
    live_headend: LiveHeadend, http: httpx.AsyncClient, grpcio_agent: Callable[[], GrpcioAgent]
) -> None:
    inventory = live_headend.inventory
    gw = grpcio_agent()
    gw_ack = await register(gw, HARBOURSIDE, [BESS_1, BESS_2, BESS_3], inventory=inventory, gateway_id="gw-harbour")
    assert list(gw_ack.accepted_asset_ids) == [BESS_1, BESS_2, BESS_3]
    legacy = grpcio_agent()
    legacy_ack = await register(legacy, HARBOURSIDE, [BESS_1], inventory=inventory, primary=BESS_1)

    agents = await poll_json(http, "/agents", lambda j: agent_row(j, BESS_1)["session_id"] == legacy_ack.session_id
                             and len(agent_row(j, BESS_1)["sessions"]) == 2)
    previous = agent_row(agents, BESS_1)["sessions"][1]
    assert previous["session_id"] == gw_ack.session_id and "taken over" in previous["reason"]
    assert agent_row(agents, BESS_2)["session_id"] == gw_ack.session_id  # the gateway keeps the rest

    # The site is now served by two sessions: the headend splits and sends per-asset setpoints.
    r = await http.post("/dispatch", json={"site_id": HARBOURSIDE, "mw": 10})
    assert r.status_code == 202, r.text
    dispatch = r.json()
    assert dispatch["mode"] == "headend_split" and dispatch["mw"] == 10.0
    expected = {a["asset_id"]: a["mw"] for a in dispatch["allocations"]}
    assert set(expected) == {BESS_1, BESS_2, BESS_3}
    with trio.fail_after(15):
        got = [await legacy.receive_kind("setpoint")] + [await gw.receive_kind("setpoint") for _ in range(2)]
    assert got[0].asset_id == BESS_1
    assert {sp.asset_id for sp in got[1:]} == {BESS_2, BESS_3}  # the gateway still has its stream
    for agent, sp in zip([legacy, gw, gw], got):
        assert sp.mw == expected[sp.asset_id] and sp.site_id == HARBOURSIDE
        agent.send(setpoint_ack=agent.pb.SetpointAck(setpoint_id=sp.setpoint_id, state=agent.pb.SetpointAck.APPLIED))
    done = await poll_json(http, f"/dispatch/{dispatch['dispatch_id']}", lambda j: j["state"] == "applied")
    assert sorted(leg["outcome"] for leg in done["setpoints"]) == ["applied"] * 3


async def test_disconnect_shows_in_agents(
    live_headend: LiveHeadend, http: httpx.AsyncClient, grpcio_agent: Callable[[], GrpcioAgent]
) -> None:
    agent = grpcio_agent()
    ack = await register(agent, HARBOURSIDE, [BESS_1], inventory=live_headend.inventory, primary=BESS_1)
    agent.send(telemetry=agent.pb.Telemetry(seq=1, timestamp=agent.timestamp(time.time()), mw=0.5))
    point = await poll_json(http, f"/telemetry/{BESS_1}", lambda j: j.get("seq") == 1)

    await agent.aclose()  # cancel the call and close the channel: the agent vanishes

    agents = await poll_json(http, "/agents", lambda j: not agent_row(j, BESS_1)["connected"])
    row = agent_row(agents, BESS_1)
    assert row["session_id"] is None and row["peer"] is None
    assert row["last_seen"] == point["received_at"]  # when it was last heard of, still shown
    [session] = row["sessions"]
    assert session["session_id"] == ack.session_id
    assert session["reason"] == "stream closed by agent"
    assert RFC3339.match(session["disconnected_at"])
    r = await http.post("/dispatch", json={"asset_id": BESS_1, "mw": 1, "ttl_s": 30})
    assert r.status_code == 202 and r.json()["state"] == "pending"  # delivered if it reconnects in time
    listed = (await http.get("/dispatch", params={"state": "pending"})).json()["dispatches"]
    assert [d["dispatch_id"] for d in listed] == [r.json()["dispatch_id"]]
    assert (await http.get(f"/heartbeat/{BESS_1}")).json()["connected"] is False
    assert (await http.get("/health")).json()["sessions"] == 0
