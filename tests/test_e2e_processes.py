"""End to end over real sockets, every part its own OS process: `der-headend` (python -m der_actors.cli)
on ephemeral ports, a gateway `der-edge` for Ridgeway (13 assets) and a legacy single-asset `der-edge`
for Harbourside BESS 1, driven by an operator's HTTP client.

The headend logs `headend_started` (JSON) with the ports it bound; we read its stderr until then and
keep draining every child's stderr so no pipe fills (the lines are shown when the test fails). Real
time: every wait is bounded by fail_after and polls briefly; nothing asserts on timing. Every child is
killed in a shielded `finally`, so a failing test leaves no process behind.

A dispatch to a site with no agent connected is answered 202 `pending` (README, "Offline targets"),
not 409: `plan_dispatch` still raises `Refused`, but `DispatchActor.submit` turns it into a pending
dispatch, so nothing answers 409 any more (the README's error list and openapi still mention it).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

ROOT = Path(__file__).resolve().parent.parent
ASSETS = str(ROOT / "assets.yaml")

RIDGEWAY = "f91f3035-50e0-4460-81ba-4fe29ad09222"
HARBOURSIDE = "7e3a446b-8390-41f8-ba6c-946169ccf1e8"
WHEATFIELD = "39177186-ddbe-4574-80ef-a2055fea0232"
BESS_1 = "c85e9759-8fac-40b8-ae8e-e9f6c796f8bb"  # Harbourside BESS 1: the legacy agent's asset
LEGACY_GATEWAY_ID = f"agent-{BESS_1}"
PEER = re.compile(r"^127\.0\.0\.1:\d+$")

START_S = 20  # a child process imports, binds and registers within this
STEP_S = 10  # any one asynchronous state change (a dispatch applied, a value moved, a process exited)


class Child:
    """One child process and every line it wrote on stderr (drained in the background)."""

    def __init__(self, name: str, process: trio.Process) -> None:
        self.name = name
        self.process = process
        self.lines: list[str] = []
        self.drained = trio.Event()  # its stderr reached EOF: every line it wrote is in `lines`

    async def drain(self) -> None:
        assert self.process.stderr is not None
        pending = b""
        try:
            async for chunk in self.process.stderr:
                pending += chunk
                *complete, pending = pending.split(b"\n")
                self.lines.extend(line.decode("utf-8", "replace") for line in complete)
            if pending:
                self.lines.append(pending.decode("utf-8", "replace"))
        finally:
            self.drained.set()

    def events(self, name: str) -> list[dict[str, Any]]:
        found = []
        for line in self.lines:
            if f'"{name}"' not in line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("event") == name:
                found.append(record)
        return found

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        self.process.send_signal(sig)
        return await self.process.wait()


class Processes:
    """The children of one test; `report()` is their stderr, for failure messages."""

    def __init__(self, nursery: trio.Nursery, tmp_path: Path) -> None:
        self.nursery = nursery
        self.tmp_path = tmp_path
        self.children: list[Child] = []

    async def start(self, name: str, module: str, **env: str) -> Child:
        environ = {k: v for k, v in os.environ.items()
                   if not k.startswith(("EDGE_", "HEADEND_", "GATEWAY_", "ASSET", "SITE_", "DATABASE_", "LOG_"))}
        environ.update({"PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "LOG_FORMAT": "json", **env})
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", module], env=environ, cwd=str(self.tmp_path),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        child = Child(name, process)
        self.children.append(child)
        self.nursery.start_soon(child.drain)
        return child

    async def kill_all(self) -> None:
        """SIGKILL whatever still runs and reap it (shielded: runs even when the test is cancelled)."""
        with trio.CancelScope(shield=True):
            for child in self.children:
                if child.process.returncode is None:
                    child.process.kill()
            with trio.move_on_after(5):
                for child in self.children:
                    await child.process.wait()
                    await child.drained.wait()  # so a failure report has their last words

    def report(self) -> str:
        parts = []
        for child in self.children:
            rc = child.process.returncode
            parts.append(f"--- {child.name} (pid {child.process.pid}, returncode {rc}) stderr:")
            parts.extend(child.lines[-200:])
        return "\n".join(parts)


@pytest.fixture
async def processes(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Processes]:
    procs = Processes(nursery, tmp_path)
    try:
        yield procs
    finally:
        await procs.kill_all()


async def poll(what: str, probe: Callable[[], Awaitable[Any]], timeout_s: float = STEP_S) -> Any:
    """Call `probe` every 50 ms until it returns something truthy (returned); TooSlowError naming `what`."""
    try:
        with trio.fail_after(timeout_s):
            while True:
                result = await probe()
                if result:
                    return result
                await trio.sleep(0.05)
    except trio.TooSlowError:
        raise trio.TooSlowError(f"timed out waiting for {what}") from None


def kw(mw: float) -> int:
    return round(mw * 1000)


async def test_headend_gateway_and_legacy_agent_processes_operator_flow(processes: Processes, tmp_path: Path) -> None:
    try:
        await operator_flow(processes, tmp_path)
    except (AssertionError, trio.TooSlowError, httpx.HTTPError) as exc:
        await processes.kill_all()
        raise AssertionError(f"{type(exc).__name__}: {exc}\n\n{processes.report()}") from exc


async def operator_flow(procs: Processes, tmp_path: Path) -> None:
    # 1. The headend, on ephemeral ports; its `headend_started` line says which.
    headend = await procs.start(
        "headend", "der_actors.cli",
        HEADEND_HTTP_ADDR="127.0.0.1:0", HEADEND_GRPC_ADDR="127.0.0.1:0", ASSETS_PATH=ASSETS,
        DATABASE_URL=f"sqlite:///{tmp_path / 'headend.sqlite3'}",
    )

    async def started() -> dict[str, Any] | None:
        assert headend.process.returncode is None, "the headend exited during start-up"
        found = headend.events("headend_started")
        return found[0] if found else None

    event = await poll("headend_started", started, START_S)
    http_url, grpc = event["http"], event["grpc"]
    assert http_url.startswith("http://127.0.0.1:") and re.fullmatch(r"127\.0\.0\.1:\d+", grpc), event

    # 2. + 3. The gateway for Ridgeway and the legacy agent for Harbourside BESS 1, each its own spool.
    gateway = await procs.start(
        "gateway", "edge.cli",
        GATEWAY_SITE_ID=RIDGEWAY, ASSETS_PATH=ASSETS, HEADEND_GRPC=grpc, TELEMETRY_INTERVAL_S="0.5",
        EDGE_SPOOL_DIR=str(tmp_path / "spool-gateway"),
    )
    legacy = await procs.start(
        "legacy", "edge.cli",
        ASSET_ID=BESS_1, SITE_ID=HARBOURSIDE, MAX_MW="5", MIN_MW="-5", CAPACITY_MWHR="20",
        RAMP_RATE_MW_PER_MIN="600", HEADEND_GRPC=grpc, TELEMETRY_INTERVAL_S="0.5",
        EDGE_SPOOL_DIR=str(tmp_path / "spool-legacy"),
    )

    async with httpx.AsyncClient(base_url=http_url, timeout=5) as http:

        async def get(path: str) -> Any:
            response = await http.get(path)
            assert response.status_code == 200, (path, response.status_code, response.text)
            return response.json()

        inventory = (await get("/assets"))["assets"]
        limits = {a["id"]: (a["min_mw"], a["max_mw"]) for a in inventory}
        ridgeway = [a["id"] for a in inventory if a["site_id"] == RIDGEWAY]
        served = set(ridgeway) | {BESS_1}
        assert len(ridgeway) == 13 and len(inventory) == 20

        # Every asset of both agents is connected, every other one is not.
        async def all_connected() -> list[dict[str, Any]] | None:
            for child in (gateway, legacy):
                assert child.process.returncode is None, f"{child.name} exited"
            rows = (await get("/agents"))["agents"]
            return rows if all(r["connected"] for r in rows if r["asset_id"] in served) else None

        rows = await poll("all 14 assets connected", all_connected, START_S)
        assert [r["asset_id"] for r in rows] == [a["id"] for a in inventory]  # inventory order
        for row in rows:
            if row["asset_id"] not in served:
                assert not row["connected"] and row["peer"] is None and row["session_id"] is None, row
                continue
            assert PEER.match(row["peer"]), row
            assert row["gateway_id"] == (LEGACY_GATEWAY_ID if row["asset_id"] == BESS_1 else RIDGEWAY), row
        by_asset = {r["asset_id"]: r for r in rows}
        assert sum(not r["connected"] for r in rows) == 6
        assert len({by_asset[a]["session_id"] for a in ridgeway}) == 1  # one stream for the whole site
        assert by_asset[BESS_1]["session_id"] != by_asset[ridgeway[0]]["session_id"]
        assert by_asset[BESS_1]["peer"] != by_asset[ridgeway[0]]["peer"]

        # Telemetry "now" for the assets of both agents.
        async def latest(asset_id: str) -> dict[str, Any] | None:
            response = await http.get(f"/telemetry/{asset_id}")
            if response.status_code == 404 and response.json()["error"]["code"] == "no_data_yet":
                return None
            assert response.status_code == 200, (asset_id, response.status_code, response.text)
            return response.json()

        for asset_id in sorted(served):
            point = await poll(f"telemetry of {asset_id}", lambda a=asset_id: latest(a))
            assert point["asset_id"] == asset_id and point["seq"] >= 1, point
            assert point["site_id"] == (HARBOURSIDE if asset_id == BESS_1 else RIDGEWAY), point
            assert math.isfinite(point["mw"]), point

        async def dispatch(body: dict[str, Any]) -> dict[str, Any]:
            response = await http.post("/dispatch", json=body)
            assert response.status_code == 202, (body, response.status_code, response.text)
            return response.json()

        async def until_applied(dispatch_id: str) -> dict[str, Any]:
            async def applied() -> dict[str, Any] | None:
                view = await get(f"/dispatch/{dispatch_id}")
                assert view["state"] not in ("rejected", "expired", "superseded", "failed"), view
                return view if view["state"] == "applied" else None

            return await poll(f"dispatch {dispatch_id} applied", applied)

        # An asset dispatch to the legacy BESS: applied, then the simulated output gets there.
        sent = await dispatch({"asset_id": BESS_1, "mw": 2.0})
        assert sent["target"] == "asset" and sent["mode"] == "asset" and sent["mw"] == 2.0 and not sent["clamped"]
        view = await until_applied(sent["dispatch_id"])
        assert [leg["outcome"] for leg in view["setpoints"]] == ["applied"], view
        assert [h["state"] for h in view["history"]][0] == "submitted" and view["history"][-1]["state"] == "applied"

        async def at_two_mw() -> dict[str, Any] | None:
            point = await latest(BESS_1)
            ok = point is not None and abs(point["mw"] - 2.0) <= 1e-6 and abs(point["mw_setpoint"] - 2.0) <= 1e-6
            return point if ok else None

        point = await poll("Harbourside BESS 1 at 2.0 MW", at_two_mw)
        assert point["details"] is not None and 0 <= point["details"]["soc_pct"] <= 100, point

        # A site dispatch to Ridgeway: its one gateway serves the whole site, so the gateway splits.
        sent = await dispatch({"site_id": RIDGEWAY, "mw": -3})
        assert sent["target"] == "site" and sent["mode"] == "gateway_split", sent
        view = await until_applied(sent["dispatch_id"])
        allocations = view["allocations"]
        assert allocations and {a["asset_id"] for a in allocations} <= set(ridgeway), view
        assert sum(kw(a["mw"]) for a in allocations) == -3000, allocations
        for a in allocations:
            lo, hi = limits[a["asset_id"]]
            assert lo - 1e-9 <= a["mw"] <= hi + 1e-9, (a, lo, hi)

        # A site with no agent at all: nothing is sent; the dispatch waits for the site (README
        # "Offline targets"; the headend no longer answers 409 for this, see the module docstring).
        response = await http.post("/dispatch", json={"site_id": WHEATFIELD, "mw": 1.0, "ttl_s": 30})
        assert response.status_code == 202, (response.status_code, response.text)
        waiting = response.json()
        assert waiting["state"] == "pending" and waiting["setpoints"] == [], waiting
        assert waiting["history"][-1] == {"state": "pending", "at": waiting["history"][-1]["at"],
                                          "reason": "target not connected"}, waiting
        listed = (await get("/dispatch?state=pending"))["dispatches"]
        assert [d["dispatch_id"] for d in listed] == [waiting["dispatch_id"]], listed

        # History: the store has points (written in batches, so poll), newest first.
        async def three_points() -> list[dict[str, Any]] | None:
            points = (await get(f"/telemetry/{BESS_1}/history?limit=3"))["points"]
            return points if len(points) == 3 else None

        points = await poll("3 stored points", three_points)
        assert all(p["asset_id"] == BESS_1 for p in points), points
        seqs = [p["seq"] for p in points]
        stamps = [p["timestamp"] for p in points]
        assert seqs == sorted(seqs, reverse=True) and len(set(seqs)) == 3, points
        assert stamps == sorted(stamps, reverse=True), points

        # The legacy agent stops on SIGTERM: exit 0, and the headend sees it leave, with a reason.
        with trio.fail_after(STEP_S):
            assert await legacy.stop() == 0, "the legacy agent's exit code"

        async def legacy_gone() -> dict[str, Any] | None:
            row = next(r for r in (await get("/agents"))["agents"] if r["asset_id"] == BESS_1)
            return row if not row["connected"] else None

        row = await poll("the legacy agent shown disconnected", legacy_gone)
        assert row["sessions"] and row["sessions"][0]["reason"], row
        assert row["sessions"][0]["disconnected_at"] and row["sessions"][0]["gateway_id"] == LEGACY_GATEWAY_ID, row
        assert all(r["connected"] for r in (await get("/agents"))["agents"] if r["asset_id"] in ridgeway)

    # Finally the headend, the gateway still connected, then the gateway: both exit 0 on SIGTERM. The
    # gateway's session is recorded as ended by the shutdown, not as a stream that dropped.
    with trio.fail_after(STEP_S):
        assert await headend.stop() == 0, "the headend's exit code"
    assert headend.events("headend_stopping"), "the headend logged no headend_stopping"
    assert headend.events("headend_stopped"), "the headend's last log line was lost at exit"
    with contextlib.closing(sqlite3.connect(tmp_path / "headend.sqlite3")) as db:
        last = db.execute("SELECT reason, disconnected_at FROM agent_sessions WHERE site_id = ? ORDER BY connected_at DESC",
                          (RIDGEWAY,)).fetchone()
    assert last[0] == "headend shutting down" and last[1] is not None, last
    with trio.fail_after(STEP_S):
        assert await gateway.stop() == 0, "the gateway's exit code"
