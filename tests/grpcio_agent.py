"""A test agent that is not ours: grpcio (sync API) over code that grpc_tools generates from proto/agent.proto.

`generate_contract(out_dir)` runs protoc with the grpc plugin at test time and imports the result under
unique module names (the generated `agent_pb2_grpc` imports `agent_pb2` by bare name; that name is
bound only while it executes, so nothing leaks into `sys.modules`).

`GrpcioAgent` drives one bidirectional `Stream` from a worker thread's point of view: requests go
through a `queue.Queue` that grpcio's own request thread drains; a reader thread moves every response
into another queue. The trio side only ever does short blocking `queue.get(timeout=...)` calls in
`trio.to_thread.run_sync`, so a cancelled wait never strands a thread. `close()` ends the call, closes
the channel and joins the reader.
"""

from __future__ import annotations

import pathlib
import queue
import shutil
import sys
import threading
import types
import uuid
from typing import Any

import attrs
import grpc
import trio

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto" / "agent.proto"

_END = object()  # ends the request iterator: the client half-closes the stream


@attrs.frozen
class Contract:
    pb2: types.ModuleType
    pb2_grpc: types.ModuleType


def _load(name: str, path: pathlib.Path, replace: tuple[str, str] | None = None, **extra: Any) -> types.ModuleType:
    """Import `path` as module `name`; optionally rewrite one expression of its source first."""
    source = path.read_text()
    if replace is not None:
        assert source.count(replace[0]) == 1, f"{path.name}: expected one {replace[0]!r} in the generated code"
        source = source.replace(*replace)
    module = types.ModuleType(name)
    module.__file__ = str(path)
    module.__dict__.update(extra)
    exec(compile(source, str(path), "exec"), module.__dict__)
    return module


def generate_contract(out_dir: pathlib.Path) -> Contract:
    """protoc --python_out --grpc_python_out on a copy of proto/agent.proto; import what it wrote.

    The generated messages are built in a descriptor pool of their own, so their classes share
    nothing with our committed `der_actors.transport.pb.agent_pb2` (protobuf's default pool is
    process-wide, and the same file registered there would hand back our classes).
    """
    import grpc_tools
    from google.protobuf import descriptor_pool, timestamp_pb2
    from grpc_tools import protoc

    src = out_dir / "proto"
    gen = out_dir / "gen"
    src.mkdir(parents=True)
    gen.mkdir()
    shutil.copy(PROTO, src / "agent.proto")
    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    rc = protoc.main(
        ["protoc", f"-I{src}", f"-I{include}", f"--python_out={gen}", f"--grpc_python_out={gen}", str(src / "agent.proto")]
    )
    assert rc == 0, "grpc_tools.protoc failed on proto/agent.proto"

    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(timestamp_pb2.DESCRIPTOR.serialized_pb)  # agent.proto's one import
    suffix = uuid.uuid4().hex[:8]
    pb2 = _load(
        f"contract_agent_pb2_{suffix}", gen / "agent_pb2.py",
        replace=("_descriptor_pool.Default()", "_contract_pool"), _contract_pool=pool,
    )
    previous = sys.modules.get("agent_pb2")
    sys.modules["agent_pb2"] = pb2  # agent_pb2_grpc.py imports it by bare name
    try:
        pb2_grpc = _load(f"contract_agent_pb2_grpc_{suffix}", gen / "agent_pb2_grpc.py")
    finally:
        if previous is None:
            del sys.modules["agent_pb2"]
        else:
            sys.modules["agent_pb2"] = previous
    return Contract(pb2, pb2_grpc)


class StreamEnded(Exception):
    """The headend ended the stream (or the connection dropped) while a message was awaited."""

    def __init__(self, code: Any, details: str) -> None:
        super().__init__(f"stream ended: {code} {details!r}")
        self.code = code
        self.details = details


class GrpcioAgent:
    """One grpcio channel with one open AgentLink.Stream call."""

    def __init__(self, contract: Contract, port: int) -> None:
        self.pb = contract.pb2
        self._requests: queue.Queue = queue.Queue()
        self._responses: queue.Queue = queue.Queue()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = contract.pb2_grpc.AgentLinkStub(self.channel)
        self.call = stub.Stream(iter(self._requests.get, _END))
        self._closed = False
        self.ended: StreamEnded | None = None  # set once the stream's end was received
        self._reader = threading.Thread(target=self._read, name=f"grpcio-agent-reader-{port}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for response in self.call:
                self._responses.put(response)
            self._responses.put(StreamEnded(self.call.code(), self.call.details() or ""))
        except grpc.RpcError as exc:
            self._responses.put(StreamEnded(exc.code(), exc.details() or ""))

    # --- sending (never blocks: grpcio's request thread drains the queue) ---------------------

    def send(self, **body: Any) -> None:
        """Send one AgentMessage, e.g. `send(register=pb.Register(...))`."""
        self._requests.put(self.pb.AgentMessage(**body))

    def half_close(self) -> None:
        """End the request stream (END_STREAM), as an agent that is done would."""
        self._requests.put(_END)

    # --- receiving -------------------------------------------------------------------------------

    def _get(self, timeout: float):
        try:
            return self._responses.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no message from the headend within {timeout:g} s") from None

    async def receive(self, timeout: float = 10.0):
        """The next HeadendMessage; raises StreamEnded if the stream ended instead."""
        item = await trio.to_thread.run_sync(self._get, timeout)
        if isinstance(item, StreamEnded):
            self.ended = item
            raise item
        return item

    async def receive_kind(self, kind: str, timeout: float = 10.0):
        """The next HeadendMessage whose body is `kind` (skipping heartbeats and telemetry acks)."""
        while True:
            msg = await self.receive(timeout)
            if msg.WhichOneof("body") == kind:
                return getattr(msg, kind)
            assert msg.WhichOneof("body") in ("heartbeat", "telemetry_ack"), f"expected {kind}, got {msg}"

    async def wait_ended(self, timeout: float = 10.0) -> StreamEnded:
        """Wait for the headend to end the stream (skipping anything still arriving)."""
        while True:
            try:
                await self.receive(timeout)
            except StreamEnded as ended:
                return ended

    # --- teardown --------------------------------------------------------------------------------

    def close(self) -> None:
        """Cancel the call if still open, close the channel, join the reader thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._requests.put(_END)
        self.call.cancel()
        self.channel.close()
        self._reader.join(timeout=10)
        assert not self._reader.is_alive(), "grpcio reader thread did not end"

    async def aclose(self) -> None:
        await trio.to_thread.run_sync(self.close)

    # --- message builders ------------------------------------------------------------------------

    def asset_info(self, asset) -> Any:
        """An AssetInfo for one of our inventory's assets (model.Asset)."""
        return self.pb.AssetInfo(
            asset_id=asset.id, site_id=asset.site_id, type=getattr(self.pb, f"ASSET_TYPE_{asset.type.name}"),
            max_mw=asset.max_mw, min_mw=asset.min_mw, capacity_mwhr=asset.capacity_mwhr or 0.0,
            ramp_rate_mw_per_min=asset.ramp_rate_mw_per_min, efficiency=asset.efficiency, name=asset.name,
        )

    @staticmethod
    def timestamp(t: float) -> dict[str, int]:
        """A google.protobuf.Timestamp initialiser (a dict: the contract pool has its own Timestamp class)."""
        seconds = int(t // 1)
        return {"seconds": seconds, "nanos": int(round((t - seconds) * 1e9)) % 1_000_000_000}
