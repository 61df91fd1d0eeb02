"""`der-launcher`: a test harness that starts edge agents for a whole inventory.

By default one single-asset `der-edge` per asset in `ASSETS_PATH` (each asset's fields passed through
the legacy env vars); with `--gateway`, one gateway agent per site. All point at `HEADEND_GRPC`.
Their output is forwarded line by line with a `[<name>] ` prefix. SIGINT / SIGTERM stops them all:
terminate, then kill whatever is still running after the grace period. The children run as
`sys.executable -m edge.cli`, so nothing needs to be on PATH.

Settings shared by every child (HEADEND_GRPC, TELEMETRY_INTERVAL_S, HEARTBEAT_INTERVAL_S,
HEADEND_TIMEOUT_S, LOG_FORMAT, EDGE_SPOOL_MAX_MB, EDGE_BACKFILL_RATE) are passed through from the
launcher's environment; every other edge variable is removed from the children's environment and set
per child. EDGE_SPOOL_DIR, if set, is a root: each child gets its own `<root>/<agent id>` (two agents
must never share a spool); unset, each child uses its default `spool/<agent id>`.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

import attrs
import trio

from der_actors.inventory import InventoryError, load_inventory
from der_actors.model import Asset, Inventory
from edge.config import ENV_VARS, parse_headend
from edge.signals import STOP_SIGNALS, EarlySignals

SHARED_VARS = ("HEADEND_GRPC", "TELEMETRY_INTERVAL_S", "HEARTBEAT_INTERVAL_S", "HEADEND_TIMEOUT_S", "LOG_FORMAT",
               "EDGE_SPOOL_MAX_MB", "EDGE_BACKFILL_RATE")
_PROJECT_ROOT = str(Path(__file__).resolve().parent.parent)


@attrs.frozen
class ChildSpec:
    name: str  # the output prefix
    env: Mapping[str, str]  # the edge variables for this child
    agent_id: str = ""  # its spool directory's name under an EDGE_SPOOL_DIR root


def _asset_env(asset: Asset, site_name: str) -> dict[str, str]:
    env = {
        "ASSET_ID": asset.id,
        "SITE_ID": asset.site_id,
        "SITE_NAME": site_name,
        "ASSET_NAME": asset.name,
        "ASSET_TYPE": asset.type.value,
        "MAX_MW": repr(asset.max_mw),
        "MIN_MW": repr(asset.min_mw),
        "EFFICIENCY": repr(asset.efficiency),
        "RAMP_RATE_MW_PER_MIN": repr(asset.ramp_rate_mw_per_min),
    }
    if asset.location:
        env["ASSET_LOCATION"] = asset.location
    if asset.capacity_mwhr is not None:
        env["CAPACITY_MWHR"] = repr(asset.capacity_mwhr)
    return env


def child_specs(
    inventory: Inventory, assets_path: str, *, gateway: bool, site_ids: Sequence[str] = ()
) -> list[ChildSpec]:
    """One spec per asset (default) or per site with assets (`gateway`), optionally for some sites only."""
    sites = [s for s in inventory.sites if not site_ids or s.id in site_ids]
    specs: list[ChildSpec] = []
    for site in sites:
        assets = inventory.assets_of(site.id)
        if gateway:
            if assets:
                env = {"GATEWAY_SITE_ID": site.id, "ASSETS_PATH": os.path.abspath(assets_path)}
                specs.append(ChildSpec(site.name, env, site.id))
        else:
            specs.extend(ChildSpec(a.name, _asset_env(a, site.name), f"agent-{a.id}") for a in assets)
    return specs


def child_environ(base: Mapping[str, str], spec: ChildSpec, headend: str) -> dict[str, str]:
    shared = set(SHARED_VARS)
    env = {k: v for k, v in base.items() if k not in ENV_VARS or k in shared}
    env.update(spec.env)
    root = base.get("EDGE_SPOOL_DIR")
    if root and spec.agent_id:
        env["EDGE_SPOOL_DIR"] = os.path.join(root, spec.agent_id)
    env["HEADEND_GRPC"] = headend
    env["PYTHONUNBUFFERED"] = "1"
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = _PROJECT_ROOT + (os.pathsep + path if path else "")
    return env


# --- running the children ------------------------------------------------------------------------


@attrs.define
class _Child:
    spec: ChildSpec
    process: trio.Process


def _say(text: str) -> None:
    print(f"[launcher] {text}", flush=True)


async def _forward(child: _Child) -> None:
    prefix = f"[{child.spec.name}] "
    pending = b""
    stream = child.process.stdout
    assert stream is not None
    while chunk := await stream.receive_some(65536):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            print(prefix + line.decode(errors="replace"), flush=True)
    if pending:
        print(prefix + pending.decode(errors="replace"), flush=True)


async def _wait_all(children: list[_Child], done: trio.CancelScope) -> None:
    for child in children:
        code = await child.process.wait()
        _say(f"{child.spec.name} exited with code {code}")
    done.cancel()


async def _stop_all(children: list[_Child], grace_s: float) -> None:
    running = [c for c in children if c.process.returncode is None]
    for c in running:
        c.process.terminate()
    with trio.move_on_after(grace_s):
        for c in running:
            await c.process.wait()
    for c in running:
        if c.process.returncode is None:
            _say(f"{c.spec.name} did not stop within {grace_s:g} s; killing it")
            c.process.kill()
            await c.process.wait()


async def _on_signal(
    signals: AsyncIterator[int], children: list[_Child], grace_s: float, done: trio.CancelScope
) -> None:
    async for signum in signals:
        _say(f"{signal.Signals(signum).name}: stopping {len(children)} agents")
        with trio.CancelScope(shield=True):
            await _stop_all(children, grace_s)
        done.cancel()
        return


async def run_children(specs: Sequence[ChildSpec], base_env: Mapping[str, str], headend: str,
                       grace_s: float, early: EarlySignals | None = None) -> int:
    """Start every child, forward its output, stop all on a signal. Returns 0 if all exited with 0."""
    children: list[_Child] = []
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
        if early is not None and early.received is not None:
            _say(f"{early.name()}: not starting any agents")
            return 0
        try:
            async with trio.open_nursery() as nursery:
                for spec in specs:
                    process = await trio.lowlevel.open_process(
                        [sys.executable, "-m", "edge.cli"],
                        env=child_environ(base_env, spec, headend),
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                    )
                    children.append(_Child(spec, process))
                    nursery.start_soon(_forward, children[-1])
                _say(f"started {len(children)} agents -> {headend}")
                async with trio.open_nursery() as waiters:
                    waiters.start_soon(_wait_all, children, waiters.cancel_scope)
                    waiters.start_soon(_on_signal, signals, children, grace_s, waiters.cancel_scope)
        finally:
            for c in children:
                if c.process.returncode is None:
                    c.process.kill()
    return 0 if all(c.process.returncode == 0 for c in children) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="der-launcher",
        description="Start one der-edge per asset (or per site with --gateway) from an assets.yaml.",
    )
    parser.add_argument("--assets-path", metavar="ASSETS_PATH",
                        help="the inventory [env ASSETS_PATH; default assets.yaml]")
    parser.add_argument("--headend-grpc", metavar="HEADEND_GRPC",
                        help="the headend's gRPC address [env HEADEND_GRPC; default 127.0.0.1:50051]")
    parser.add_argument("--gateway", action="store_true", help="one gateway agent per site")
    parser.add_argument("--site", action="append", default=[], metavar="SITE_ID",
                        help="only this site (repeatable)")
    parser.add_argument("--grace-s", type=float, default=5.0,
                        help="seconds between terminate and kill on shutdown (default 5)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    env = os.environ
    assets_path = args.assets_path or env.get("ASSETS_PATH") or "assets.yaml"
    headend = args.headend_grpc or env.get("HEADEND_GRPC") or "127.0.0.1:50051"
    try:
        parse_headend(headend)
    except ValueError as exc:
        print(f"der-launcher: HEADEND_GRPC: {exc}", file=sys.stderr)
        sys.exit(2)
    try:
        inventory = load_inventory(assets_path)
    except InventoryError as exc:
        print(f"der-launcher: ASSETS_PATH {assets_path} is invalid:", file=sys.stderr)
        for err in exc.errors:
            print(f"  {err}", file=sys.stderr)
        sys.exit(2)
    unknown = [s for s in args.site if inventory.site(s) is None]
    if unknown:
        print(f"der-launcher: --site: no such site in {assets_path}: {', '.join(unknown)}", file=sys.stderr)
        sys.exit(2)
    specs = child_specs(inventory, assets_path, gateway=args.gateway, site_ids=args.site)
    if not specs:
        print(f"der-launcher: nothing to start: no assets in {assets_path}", file=sys.stderr)
        sys.exit(2)
    early = EarlySignals()
    code = trio.run(run_children, specs, env, headend, args.grace_s, early)
    early.ignore_from_now()
    return code


if __name__ == "__main__":
    sys.exit(main())
