"""der-launcher: what it starts (pure), and one real run: a gateway child process against a real
gRPC server, stopped with SIGTERM (real time, bounded by fail_after)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import trio

from der_actors.inventory import load_inventory
from der_actors.messages import Register, RegisterAck
from der_actors.transport import codec
from der_actors.transport.pb import agent_pb2 as pb
from der_actors.transport.purerpc_compat import receive_message, serve_grpc
from edge.config import load_config
from edge.launcher import ChildSpec, child_environ, child_specs, run_children

ASSETS = str(Path(__file__).resolve().parent.parent / "assets.yaml")
INVENTORY = load_inventory(ASSETS)
HARBOUR = "7e3a446b-8390-41f8-ba6c-946169ccf1e8"


def test_one_single_asset_agent_per_asset_with_the_asset_in_legacy_env_vars() -> None:
    specs = child_specs(INVENTORY, ASSETS, gateway=False)
    assert [s.name for s in specs] == [a.name for a in INVENTORY.assets]
    for spec, asset in zip(specs, INVENTORY.assets):
        config = load_config([], dict(spec.env))  # what the child will parse
        assert config.assets == (asset,)
        assert config.primary_asset_id == asset.id
        assert config.site_name == INVENTORY.site(asset.site_id).name


def test_one_gateway_per_site_with_gateway() -> None:
    specs = child_specs(INVENTORY, ASSETS, gateway=True)
    assert [s.name for s in specs] == [s.name for s in INVENTORY.sites]
    for spec, site in zip(specs, INVENTORY.sites):
        config = load_config([], dict(spec.env))
        assert config.assets == INVENTORY.assets_of(site.id)
    only = child_specs(INVENTORY, ASSETS, gateway=True, site_ids=[HARBOUR])
    assert [s.env["GATEWAY_SITE_ID"] for s in only] == [HARBOUR]


def test_child_environment_drops_stale_edge_vars_and_keeps_shared_ones() -> None:
    base = {"PATH": "/bin", "GATEWAY_SITE_ID": "x", "ASSET_ID": "y", "LOG_FORMAT": "json",
            "TELEMETRY_INTERVAL_S": "1"}
    env = child_environ(base, ChildSpec("a", {"ASSET_ID": "z"}), "h:1")
    assert env["ASSET_ID"] == "z"
    assert "GATEWAY_SITE_ID" not in env
    assert (env["PATH"], env["LOG_FORMAT"], env["TELEMETRY_INTERVAL_S"]) == ("/bin", "json", "1")
    assert env["HEADEND_GRPC"] == "h:1"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert "EDGE_SPOOL_DIR" not in env  # the child's default: spool/<agent id>


def test_each_child_gets_its_own_spool_directory_under_a_given_root() -> None:
    base = {"EDGE_SPOOL_DIR": "/var/spool/der", "EDGE_SPOOL_MAX_MB": "16", "EDGE_BACKFILL_RATE": "500"}
    dirs = set()
    for gateway in (False, True):
        for spec in child_specs(INVENTORY, ASSETS, gateway=gateway):
            env = child_environ(base, spec, "h:1")
            config = load_config([], {k: v for k, v in env.items() if k != "HEADEND_GRPC"})
            assert config.spool_dir == os.path.join("/var/spool/der", config.agent_id)
            assert (config.spool_max_mb, config.backfill_rate) == (16.0, 500.0)
            dirs.add(config.spool_dir)
    assert len(dirs) == len(INVENTORY.assets) + len(INVENTORY.sites)


async def test_launcher_runs_an_agent_process_and_stops_it_on_sigterm(
    capfd: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    registered = trio.Event()

    async def handler(stream, request, peer: str) -> None:
        stream.expect_message_type(pb.AgentMessage)
        first = codec.agent_from_pb(await receive_message(stream))
        assert isinstance(first, Register)
        await stream.send_message(codec.headend_to_pb(RegisterAck("s", ())))
        registered.set()
        while await receive_message(stream) is not None:
            pass

    specs = child_specs(INVENTORY, ASSETS, gateway=True, site_ids=[HARBOUR])
    env = {**os.environ, "EDGE_SPOOL_DIR": str(tmp_path / "spool")}
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_grpc, "127.0.0.1", 0, handler)
            result: list[int] = []

            async def launcher() -> None:
                result.append(await run_children(specs, env, f"127.0.0.1:{port}", grace_s=5.0))

            nursery.start_soon(launcher)
            await registered.wait()
            os.kill(os.getpid(), signal.SIGTERM)  # the launcher's signal receiver is open by now
            while not result:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert result == [0]
    out = capfd.readouterr().out
    assert "[Harbourside Battery Park] " in out
    assert "link_connected" in out
    assert "edge_stopping" in out
    assert "Harbourside Battery Park exited with code 0" in out
    assert (tmp_path / "spool" / HARBOUR / "state.json").exists()
