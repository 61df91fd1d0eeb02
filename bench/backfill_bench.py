"""Backfill benchmark: points/s a gateway replays from its spool to a real headend over real sockets.
A script that prints figures, not a test.

    .venv/bin/python -m bench.backfill_bench                          # 2000 points/s (default) and unlimited
    .venv/bin/python -m bench.backfill_bench --rates 2000 --database memory

The case of the issue: a gateway offline for an hour with 12 assets at 4 s (10,800 points).
1. The spool is filled by the agent's own site on MockClock: Ridgeway's first 12 assets, an hour of
   4 s ticks with every dial refused, timestamps ending now. Nothing is sent.
2. A headend (run_server: actors, purerpc, SQLite in a temp dir by default) runs in this process on
   ephemeral ports; the agent runs as `python -m edge.cli` (its own process, real gRPC) with
   EDGE_BACKFILL_RATE set, on that spool.
3. Timed from the agent's session appearing at the headend until the store has committed every one
   of the 10,800 spooled points (a store listener counts distinct (asset_id, seq) of spooled seqs).
   The agent's own `backfill_done` log line (its sending side) is printed too.
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import attrs
import structlog
import trio
import trio.testing
import yaml

from der_actors.clock import WallClock
from der_actors.config import load_settings
from der_actors.inventory import load_inventory
from der_actors.server import run_server
from der_actors.storage import open_storage
from der_actors.transport.link import MemoryNetwork
from edge.config import load_config
from edge.site import run_site

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets.yaml"
RIDGEWAY = "f91f3035-50e0-4460-81ba-4fe29ad09222"


def write_inventory(path: Path, n_assets: int) -> list[str]:
    """Ridgeway with its first n assets: the agent's inventory (the headend uses the shipped file)."""
    doc = yaml.safe_load(ASSETS.read_text())
    doc["sites"] = [s for s in doc["sites"] if s["id"] == RIDGEWAY]
    doc["assets"] = [a for a in doc["assets"] if a["site_id"] == RIDGEWAY][:n_assets]
    path.write_text(yaml.safe_dump(doc))
    return [a["id"] for a in doc["assets"]]


async def _prefill(config, offline_s: float, epoch: float) -> None:
    network = MemoryNetwork()  # nobody listening: every dial is refused
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(run_site, config, lambda: network.dial("bench"),
                                              clock=WallClock.pinned(epoch), rng=random.Random(1)))
        await trio.sleep(offline_s + 0.5)
        nursery.cancel_scope.cancel()


def prefill(env: dict[str, str], offline_s: float) -> None:
    config = load_config([], env)
    epoch = time.time() - offline_s - 1  # the hour that just ended
    trio.run(_prefill, config, offline_s, epoch, clock=trio.testing.MockClock(autojump_threshold=0))


@attrs.define
class Progress:
    expected: int
    seen: set[tuple[str, int]] = attrs.Factory(set)
    first_at: float | None = None
    done_at: float | None = None
    done: trio.Event = attrs.Factory(trio.Event)

    def on_stored(self, high: dict[str, int], points) -> None:
        now = trio.current_time()
        self.first_at = self.first_at or now
        self.seen.update((p[0], p[1]) for p in points if p[1] <= high.get(p[0], 0))  # PointRow: (asset_id, seq, ...)
        if len(self.seen) >= self.expected and self.done_at is None:
            self.done_at = now
            self.done.set()


async def measure(workdir: Path, env: dict[str, str], high: dict[str, int], database: str) -> dict[str, float]:
    url = f"sqlite:///{workdir / 'headend.sqlite3'}" if database == "sqlite" else "memory://"
    settings = load_settings(["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0", "--assets", str(ASSETS),
                              "--database-url", url], env={})
    storage = open_storage(url)
    progress = Progress(sum(high.values()))
    shutdown = trio.Event()
    log_path = workdir / "agent.log"
    try:
        async with trio.open_nursery() as nursery:
            running = await nursery.start(functools.partial(run_server, settings, load_inventory(str(ASSETS)),
                                                            storage, shutdown=shutdown))
            store = running.headend.ctx.store
            store.stored_listeners.append(functools.partial(progress.on_stored, high))
            with open(log_path, "wb") as log:
                agent = await trio.lowlevel.open_process(
                    [sys.executable, "-m", "edge.cli"], env={**env, "HEADEND_GRPC": f"127.0.0.1:{running.grpc_port}"},
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=str(workdir))
            try:
                with trio.fail_after(600):
                    directory = running.headend.ctx.directory
                    while not directory.sessions:
                        await trio.sleep(0.002)
                    session_at = trio.current_time()
                    await progress.done.wait()
            finally:
                agent.send_signal(signal.SIGTERM)
                await agent.wait()
            counters = attrs.asdict(store.counters)
            shutdown.set()
    finally:
        storage.close()
    sent = re.search(r"backfill_done.*?points=(\d+).*?points_per_s=(\d+)", log_path.read_text())
    assert progress.done_at is not None and progress.first_at is not None
    took = progress.done_at - session_at
    return {
        "points": progress.expected,
        "seconds": took,
        "points_per_s": progress.expected / took,
        "first_to_last_commit_s": progress.done_at - progress.first_at,
        "agent_send_points_per_s": float(sent.group(2)) if sent else float("nan"),
        "duplicates": counters["duplicate_points"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[2000.0, 1e9],
                        help="EDGE_BACKFILL_RATE values to run (1e9: unlimited)")
    parser.add_argument("--assets", type=int, default=12)
    parser.add_argument("--offline-s", type=float, default=3600.0)
    parser.add_argument("--database", choices=("sqlite", "memory"), default="sqlite")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # errors only

    print(f"gateway offline {args.offline_s:g} s, {args.assets} assets at 4 s; headend store: {args.database}; "
          f"agent: separate process; {os.cpu_count()} CPUs")
    for rate in args.rates:
        with tempfile.TemporaryDirectory(prefix="backfill-bench-") as tmp:
            workdir = Path(tmp)
            ids = write_inventory(workdir / "assets.yaml", args.assets)
            env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGE_", "HEADEND_", "GATEWAY_"))}
            env.update({"GATEWAY_SITE_ID": RIDGEWAY, "ASSETS_PATH": str(workdir / "assets.yaml"),
                        "EDGE_SPOOL_DIR": str(workdir / "spool"), "EDGE_BACKFILL_RATE": repr(rate),
                        "TELEMETRY_INTERVAL_S": "4", "PYTHONPATH": str(ROOT), "LOG_FORMAT": "kv"})
            t = time.perf_counter()
            prefill(env, args.offline_s)
            prefill_s = time.perf_counter() - t
            high = {a: int(args.offline_s // 4) for a in ids}
            r = trio.run(measure, workdir, env, high, args.database)
            label = "unlimited" if rate >= 1e8 else f"{rate:g}/s"
            print(f"EDGE_BACKFILL_RATE={label:>9}: {r['points']} points stored in {r['seconds']:.2f} s "
                  f"= {r['points_per_s']:,.0f} points/s (first to last commit {r['first_to_last_commit_s']:.2f} s; "
                  f"agent sent at {r['agent_send_points_per_s']:,.0f}/s; replays stored twice: {r['duplicates']}; "
                  f"spool prefilled on MockClock in {prefill_s:.1f} s)")


if __name__ == "__main__":
    main()
