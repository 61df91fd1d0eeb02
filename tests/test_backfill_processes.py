"""Over real sockets: an edge agent process killed with SIGKILL in the middle of a backfill, restarted,
and the headend's SQLite store still ends up with every point exactly once.

The headend runs in this process (run_server on ephemeral ports, SQLite in tmp_path); the agent is
`python -m edge.cli` in gateway mode for Ridgeway (13 assets), ticking every 50 ms. Real time: every
wait is bounded by fail_after, nothing asserts on timing.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import trio

from der_actors.config import load_settings
from der_actors.inventory import load_inventory
from der_actors.server import run_server
from der_actors.storage import open_storage
from der_actors.storage.base import Storage
from edge.spool import Spool

ROOT = Path(__file__).resolve().parent.parent
ASSETS = str(ROOT / "assets.yaml")
RIDGEWAY = "f91f3035-50e0-4460-81ba-4fe29ad09222"
ASSET_IDS = [a.id for a in load_inventory(ASSETS).assets_of(RIDGEWAY)]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def start_agent(tmp_path: Path, name: str, headend_port: int, **env: str) -> trio.Process:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("EDGE_", "HEADEND_", "GATEWAY_"))}
    environ.update({
        "GATEWAY_SITE_ID": RIDGEWAY,
        "ASSETS_PATH": ASSETS,
        "HEADEND_GRPC": f"127.0.0.1:{headend_port}",
        "TELEMETRY_INTERVAL_S": "0.05",
        "EDGE_SPOOL_DIR": str(tmp_path / "spool"),
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        **env,
    })
    log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 (the child writes to it; closed with the test)
    try:
        return await trio.lowlevel.open_process([sys.executable, "-m", "edge.cli"], env=environ, cwd=str(tmp_path),
                                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    finally:
        log.close()


async def kill(process: trio.Process, sig: int = signal.SIGKILL) -> int:
    process.send_signal(sig)
    return await process.wait()


def high_seqs_on_disk(tmp_path: Path, copy_name: str) -> dict[str, int]:
    """The agent's high-water seq per asset, read from a copy of its (dead) spool directory."""
    copy = tmp_path / copy_name
    shutil.copytree(tmp_path / "spool", copy)
    spool = Spool.open(str(copy))
    try:
        return {a: spool.high_seq(a) for a in ASSET_IDS}
    finally:
        spool.close()


def stored_seqs(storage: Storage) -> dict[str, list[int]]:
    return {a: sorted(r.point.seq for r in storage.telemetry_history(a, None, None, 10**7)) for a in ASSET_IDS}


async def wait_for(check: Callable[[dict[str, list[int]]], bool], storage: Storage) -> dict[str, list[int]]:
    while True:
        seqs = await trio.to_thread.run_sync(stored_seqs, storage)
        if check(seqs):
            return seqs
        await trio.sleep(0.1)


def complete(seqs: list[int], at_least: int) -> bool:
    return bool(seqs) and seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= at_least


async def test_sigkill_during_backfill_then_restart_and_the_store_has_every_point_once(tmp_path: Path) -> None:
    # 1. The headend is unreachable: the agent spools (13 assets x 20 ticks/s), then dies.
    agent = await start_agent(tmp_path, "offline", closed_port())
    with trio.fail_after(30):
        while sum(p.stat().st_size for p in (tmp_path / "spool").glob("seg-*.spool")) < 100_000:
            await trio.sleep(0.1)
        await kill(agent)
    offline_high = high_seqs_on_disk(tmp_path, "after-offline")
    assert min(offline_high.values()) >= 20

    settings = load_settings(["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0", "--assets", ASSETS,
                              "--database-url", f"sqlite:///{tmp_path / 'headend.sqlite3'}"], env={})
    storage = open_storage(settings.database_url)
    shutdown = trio.Event()
    try:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(10):
                running = await nursery.start(functools.partial(
                    run_server, settings, load_inventory(ASSETS), storage, shutdown=shutdown))
            with trio.fail_after(60):
                # 2. The agent comes back with a slow backfill; kill it once part of the backlog is stored.
                agent = await start_agent(tmp_path, "backfilling", running.grpc_port, EDGE_BACKFILL_RATE="150")
                backlog = sum(offline_high.values())

                def partly_backfilled(seqs: dict[str, list[int]]) -> bool:
                    old = sum(sum(1 for s in seqs[a] if s < offline_high[a]) for a in ASSET_IDS)
                    return old >= backlog // 4  # at 150 points/s the rest takes seconds more

                await wait_for(partly_backfilled, storage)
                await kill(agent)
                killed_high = high_seqs_on_disk(tmp_path, "after-kill")
                before = await trio.to_thread.run_sync(stored_seqs, storage)
                assert not all(complete(before[a], killed_high[a]) for a in ASSET_IDS)  # it was mid-backfill

                # 3. Restarted, it delivers the rest: every seq up to the kill, and on, without a hole.
                agent = await start_agent(tmp_path, "restarted", running.grpc_port)
                await wait_for(lambda seqs: all(complete(seqs[a], killed_high[a] + 20) for a in ASSET_IDS), storage)
                assert await kill(agent, signal.SIGTERM) == 0
                await running.headend.ctx.store.flushed()
            shutdown.set()
    finally:
        storage.close()

    final = stored_seqs(open_storage(settings.database_url))
    for a in ASSET_IDS:
        assert final[a] == list(range(1, len(final[a]) + 1))  # every seq once: no gap, no duplicate
        assert len(final[a]) > killed_high[a] >= offline_high[a]
