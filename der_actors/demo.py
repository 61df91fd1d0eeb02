"""`./dev demo`: a headend and one gateway agent per site of assets.yaml, on this machine.

Child processes log to `.demo/*.log`; this prints the URLs and a few `curl` lines to try, then a
one-line status every 15 s until Ctrl-C, which stops everything.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import signal
import sys

import httpx
import trio

from der_actors.inventory import load_inventory

LOG_DIR = pathlib.Path(".demo")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="./dev demo", description=__doc__)
    p.add_argument("--http-port", type=int, default=int(os.environ.get("DEMO_HTTP_PORT", 3001)))
    p.add_argument("--grpc-port", type=int, default=int(os.environ.get("DEMO_GRPC_PORT", 50051)))
    p.add_argument("--assets", default=os.environ.get("ASSETS_PATH", "assets.yaml"))
    p.add_argument("--interval-s", default=os.environ.get("TELEMETRY_INTERVAL_S", "2"), help="agents' telemetry interval")
    return p.parse_args(argv)


async def _start(name: str, args: list[str], env: dict[str, str]) -> trio.Process:
    with open(LOG_DIR / f"{name}.log", "wb") as log:  # the child keeps its own copy of the descriptor
        return await trio.lowlevel.open_process([sys.executable, "-m", *args], stdout=log, stderr=log, env=env)


async def _wait_healthy(client: httpx.AsyncClient, url: str) -> None:
    with trio.fail_after(30):
        while True:
            try:
                if (await client.get(f"{url}/health")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await trio.sleep(0.2)


def _curl_lines(url: str, inventory) -> str:
    site = max(inventory.sites, key=lambda s: len(inventory.assets_of(s.id)))
    bess = next(a for a in inventory.assets_of(site.id) if a.type.value == "bess")
    return f"""
  Headend REST  {url}   (API docs: {url}/docs)
  Logs          {LOG_DIR}/headend.log, {LOG_DIR}/edge-*.log

  Try:
    curl -s {url}/agents | python3 -m json.tool | head -40
    curl -s {url}/telemetry/{bess.id}
    curl -s -X POST {url}/dispatch -H 'content-type: application/json' -d '{{"asset_id": "{bess.id}", "mw": 1.5}}'
    curl -s -X POST {url}/dispatch -H 'content-type: application/json' -d '{{"site_id": "{site.id}", "mw": -3}}'
    curl -s "{url}/sites/{site.id}/split?mw=5"
    curl -s {url}/dispatch/history?limit=5
    curl -s "{url}/telemetry/{bess.id}/history?limit=5"

  ({bess.name} is a battery at {site.name}; Ctrl-C stops everything.)
"""


async def _status(client: httpx.AsyncClient, url: str) -> None:
    while True:
        await trio.sleep(15)
        try:
            rows = (await client.get(f"{url}/agents")).json()["agents"]
        except (httpx.TransportError, ValueError, KeyError):
            print("demo: headend not answering", flush=True)
            continue
        connected = sum(r["connected"] for r in rows)
        lags = [r["telemetry_lag_s"] for r in rows if r["telemetry_lag_s"] is not None]
        print(f"demo: {connected}/{len(rows)} assets connected; newest telemetry {min(lags, default=float('nan')):.1f} s old", flush=True)


async def run(opts: argparse.Namespace) -> None:
    inventory = load_inventory(opts.assets)
    LOG_DIR.mkdir(exist_ok=True)
    url = f"http://127.0.0.1:{opts.http_port}"
    grpc = f"127.0.0.1:{opts.grpc_port}"
    env = dict(os.environ, ASSETS_PATH=opts.assets, HEADEND_HTTP_ADDR=f"127.0.0.1:{opts.http_port}",
               HEADEND_GRPC_ADDR=grpc, HEADEND_GRPC=grpc, TELEMETRY_INTERVAL_S=str(opts.interval_s))
    procs: list[trio.Process] = []
    try:
        async with httpx.AsyncClient(timeout=5) as client, trio.open_nursery() as nursery:
            procs.append(await _start("headend", ["der_actors.cli"], env))
            await _wait_healthy(client, url)
            for site in inventory.sites:
                spool = str(LOG_DIR / "spool" / site.id)
                procs.append(await _start(f"edge-{site.id[:8]}", ["edge.cli"],
                                          dict(env, GATEWAY_SITE_ID=site.id, EDGE_SPOOL_DIR=spool)))
            print(_curl_lines(url, inventory), flush=True)
            nursery.start_soon(_status, client, url)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    break
            nursery.cancel_scope.cancel()
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGINT)
        with trio.move_on_after(10) as scope:
            scope.shield = True
            for p in procs:
                await p.wait()
        for p in procs:
            if p.returncode is None:
                p.kill()
        print("demo: stopped", flush=True)


def main(argv: list[str] | None = None) -> None:
    trio.run(run, _parse(argv))


if __name__ == "__main__":
    main()
