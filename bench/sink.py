"""The transport sink: an AgentLink server that only decodes (the wire's ceiling for the ingest figure).

    .venv/bin/python -m bench.sink [--port 0] [--codec]

Built on the headend's own gRPC layer (`der_actors.transport.purerpc_compat.serve_grpc_consumers`,
purerpc over h2, a stream's messages handed over by its connection's reader), one process like the
headend. Per stream: answers the Register with a RegisterAck accepting every asset it lists, parses
every AgentMessage (protobuf), counts the points of each telemetry batch and answers it with a
one-range TelemetryAck (the headend acks every committed batch too, so the generator's ack window
works the same against both). `--codec` also decodes each message into what the headend's reader
makes of it (`codec.received_from_pb`: telemetry as the store's rows), to price that step.

Prints `{"event": "sink_started", "port": N}` on stdout once listening, and
`{"event": "sink_stopped", "points": N, "messages": N, "streams": N}` on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time

import trio

from bench.wire import Raw, ld, text, u64
from der_actors.transport import codec
from der_actors.transport.pb import agent_pb2 as pb
from der_actors.transport.purerpc_compat import Status, StatusCode, serve_grpc_consumers


class Counts:
    points = 0
    messages = 0
    streams = 0


def _ack(asset_id: str, seq: int) -> Raw:
    rng = text(1, asset_id) + u64(2, seq) + u64(3, seq)
    return Raw(ld(4, ld(1, rng)))


class _SinkStream:
    """One stream's consumer: run by its connection's reader, as the headend's stream reader is."""

    def __init__(self, stream, counts: Counts, use_codec: bool, nursery: trio.Nursery) -> None:
        self.stream = stream
        self.counts = counts
        self.use_codec = use_codec
        self.nursery = nursery
        self.first_asset = ""
        self.started = False

    async def received(self, payloads: list[bytes], read_ahead) -> None:
        try:
            if not self.started:
                self.started = True
                await self.stream.start_response()
            for payload in payloads:
                await self._one(pb.AgentMessage.FromString(payload))
        except Exception:
            pass  # a broken stream: the connection's end tells us the rest

    async def _one(self, msg: pb.AgentMessage) -> None:
        counts, stream = self.counts, self.stream
        counts.messages += 1
        if self.use_codec:
            codec.received_from_pb(msg, time.time())
        which = msg.WhichOneof("body")
        if which == "telemetry_batch":
            points = msg.telemetry_batch.points
            counts.points += len(points)
            await stream.send_message(_ack(self.first_asset, points[-1].seq))
        elif which == "register":
            ids = [a.asset_id for a in msg.register.assets]
            self.first_asset = ids[0] if ids else msg.register.asset_id
            ack = pb.HeadendMessage()
            ack.register_ack.session_id = f"sink-{counts.streams}"
            ack.register_ack.accepted_asset_ids.extend(ids)
            await stream.send_message(ack)

    def ended(self) -> None:
        self.nursery.start_soon(self._close)

    async def _close(self) -> None:
        try:
            await self.stream.close(Status(StatusCode.OK))
        except Exception:
            pass


def opener(counts: Counts, use_codec: bool):
    def open_stream(stream, request, peer: str, nursery: trio.Nursery) -> _SinkStream:
        counts.streams += 1
        return _SinkStream(stream, counts, use_codec, nursery)

    return open_stream


async def main(port: int, use_codec: bool) -> None:
    counts = Counts()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(serve_grpc_consumers, "127.0.0.1", port, opener(counts, use_codec))
            print(json.dumps({"event": "sink_started", "port": bound}), flush=True)
            async for _ in signals:
                break
            nursery.cancel_scope.cancel()
    print(json.dumps({"event": "sink_stopped", "points": counts.points, "messages": counts.messages,
                      "streams": counts.streams}), flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="bench.sink", description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--codec", action="store_true", help="also decode each message as the headend does (codec.received_from_pb)")
    a = p.parse_args()
    trio.run(main, a.port, a.codec)
    sys.exit(0)
