"""What a dashboard's `GET /agents` costs the headend's event loop, on a 10,000-asset fleet:

    .venv/bin/python -m bench.agents_read [--sites 1000] [--per-site 10] [--requests 5]

An in-process headend (REST over a real socket, memory store) whose every asset has a session and a
latest point, read with httpx. Prints, per request: the response time, its size, and the longest
single task step the trio thread ran while the request was served (no other task, dispatch acks
included, can run during a step: that is the stall a poller inflicts). One JSON line at the end.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import tempfile
import time

import httpx
import trio

from bench.procs import gen_sites, write_inventory
from der_actors.actors.asset import Connected
from der_actors.config import load_settings
from der_actors.inventory import load_inventory
from der_actors.messages import BessDetails, Telemetry
from der_actors.server import run_server
from der_actors.storage.memory import MemoryStorage
from der_actors.storage.rows import point_row
from der_actors.views import SessionSummary


class LongestStep(trio.abc.Instrument):
    def __init__(self) -> None:
        self.longest_s = 0.0
        self._began: float | None = None  # None until a step began after the probe was added

    def before_task_step(self, task) -> None:
        self._began = time.perf_counter()

    def after_task_step(self, task) -> None:
        if self._began is not None:
            self.longest_s = max(self.longest_s, time.perf_counter() - self._began)


async def _populate(headend, now: float) -> None:
    for i, (asset_id, handle) in enumerate(headend.ctx.assets.items()):
        a = handle.asset
        session = SessionSummary(f"s-{a.site_id}", f"gw-{a.site_id}", f"gw-{a.site_id}", a.site_id, "127.0.0.1:1",
                                 now - 60, ())
        await handle.send(Connected(session))
        point = Telemetry(asset_id, a.site_id, 7, now - 1.5, 0.5, 0.5, True, "ok", "",
                          BessDetails(soc_pct=51.25, energy_mwh=2.05))
        handle.offer_telemetry(point_row(point, now - 1.4))
    await trio.sleep(0.5)  # the asset actors apply their Connected


async def main(sites: int, per_site: int, requests: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        inv_path = os.path.join(tmp, "assets.yaml")
        write_inventory(inv_path, gen_sites(sites, per_site, seed=31))
        settings = load_settings(["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0", "--assets", inv_path], env={})
        inventory = load_inventory(inv_path)
        shutdown = trio.Event()
        runs = []
        async with trio.open_nursery() as nursery:
            running = await nursery.start(functools.partial(run_server, settings, inventory, MemoryStorage(), shutdown=shutdown))
            await _populate(running.headend, running.headend.ctx.clock.now())
            async with httpx.AsyncClient(base_url=running.http_url, timeout=60) as client:
                for _ in range(requests):
                    probe = LongestStep()
                    trio.lowlevel.add_instrument(probe)
                    t0 = time.perf_counter()
                    r = await client.get("/agents")
                    took = time.perf_counter() - t0
                    trio.lowlevel.remove_instrument(probe)
                    r.raise_for_status()
                    runs.append({"response_s": took, "bytes": len(r.content), "longest_step_s": probe.longest_s})
                    print(f"GET /agents: {took * 1e3:.0f} ms, {len(r.content) / 1e6:.1f} MB, "
                          f"longest task step {probe.longest_s * 1e3:.1f} ms", flush=True)
            shutdown.set()
    runs.sort(key=lambda r: r["response_s"])
    mid = runs[len(runs) // 2]
    return {"assets": sites * per_site, "requests": requests, "median_response_s": mid["response_s"],
            "worst_longest_step_s": max(r["longest_step_s"] for r in runs), "bytes": mid["bytes"]}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sites", type=int, default=1000)
    ap.add_argument("--per-site", type=int, default=10)
    ap.add_argument("--requests", type=int, default=5)
    a = ap.parse_args()
    print(json.dumps(trio.run(main, a.sites, a.per_site, a.requests)))
