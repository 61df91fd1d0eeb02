"""Shared fixtures: a real headend on ephemeral ports, an HTTP client for it, grpcio test agents."""

from __future__ import annotations

import functools
import pathlib
from collections.abc import AsyncIterator, Callable

import attrs
import httpx
import pytest
import trio

from der_actors.actors.headend import Headend
from der_actors.config import load_settings
from der_actors.inventory import load_inventory
from der_actors.model import Inventory
from der_actors.server import run_server
from der_actors.storage.memory import MemoryStorage
from grpcio_agent import Contract, GrpcioAgent, generate_contract

ASSETS_YAML = pathlib.Path(__file__).resolve().parent.parent / "assets.yaml"


@attrs.frozen
class LiveHeadend:
    http_url: str
    grpc_port: int
    headend: Headend
    inventory: Inventory


@pytest.fixture
async def live_headend() -> AsyncIterator[LiveHeadend]:
    """The whole headend (actors, gRPC, REST) on 127.0.0.1 ephemeral ports, shipped assets.yaml, memory store."""
    settings = load_settings(
        ["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0", "--assets", str(ASSETS_YAML)], env={}
    )
    inventory = load_inventory(settings.assets_path)
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        with trio.fail_after(10):
            running = await nursery.start(
                functools.partial(run_server, settings, inventory, MemoryStorage(), shutdown=shutdown)
            )
        yield LiveHeadend(running.http_url, running.grpc_port, running.headend, inventory)
        shutdown.set()  # run_server flushes, cancels its nursery and returns; ours then closes


@pytest.fixture
async def http(live_headend: LiveHeadend) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=live_headend.http_url, timeout=10) as client:
        yield client


@pytest.fixture(scope="session")
def contract(tmp_path_factory: pytest.TempPathFactory) -> Contract:
    """Python + grpc stubs generated from proto/agent.proto by grpc_tools.protoc, at test time."""
    return generate_contract(tmp_path_factory.mktemp("contract"))


@pytest.fixture
async def grpcio_agent(live_headend: LiveHeadend, contract: Contract) -> AsyncIterator[Callable[[], GrpcioAgent]]:
    """A factory of grpcio agents dialled to the live headend; every one is closed at teardown."""
    agents: list[GrpcioAgent] = []

    def connect() -> GrpcioAgent:
        agent = GrpcioAgent(contract, live_headend.grpc_port)
        agents.append(agent)
        return agent

    yield connect
    for agent in agents:
        await agent.aclose()
