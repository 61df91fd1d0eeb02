"""Generator cost per message for three ways to simulate gateways (run by `./dev bench --only client`):

    .venv/bin/python -m bench.client_cost {lite,purerpc,grpcio} --port SINK_PORT [--streams 200] [--ticks 150]

`STREAMS` gateways each register 10 assets with a running `bench.sink` and send `TICKS` pre-encoded
10-point batches (ack window 8, as the fleet does). Prints one JSON line: messages/s and this
process's CPU (os.times) per message while sending. `lite` is `bench.h2lite` (what the fleet uses),
`purerpc` is `der_actors.transport.purerpc_compat.dial_grpc`, `grpcio` is grpc.aio with pass-through
(de)serialisers, so all three send the same bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from bench import wire
from bench.procs import gen_sites
from der_actors.transport.pb import agent_pb2 as pb

WINDOW = 8
SERVICE, METHOD = "der.agent.v1.AgentLink", "Stream"


def _gateways(n: int) -> list[tuple[bytes, wire.BatchEncoder]]:
    out = []
    for i, site in enumerate(gen_sites(n, 10, seed=23)):
        reg = pb.AgentMessage()
        r = reg.register
        r.agent_id = r.gateway_id = f"cost-{i}"
        r.site_id = site.id
        r.protocol_version = 2
        for a in site.asset_ids:
            r.assets.add(asset_id=a, site_id=site.id, type=pb.ASSET_TYPE_BESS, max_mw=2, min_mw=-2)
        enc = wire.BatchEncoder([wire.point_prefix(a, site.id, 0.5, 0.0, 50.0, 2.0) for a in site.asset_ids])
        out.append((reg.SerializeToString(), enc))
    return out


class _Window:
    """Shared by both event-loop flavours: the acked seq and a wake-up."""

    def __init__(self, event_factory) -> None:
        self.acked = 0
        self._factory = event_factory
        self.event = event_factory()

    def on_ack(self, data: bytes) -> None:
        seq = wire.max_acked_seq(data)
        if seq > self.acked:
            self.acked = seq
            self.event.set()

    def reset(self):
        self.event = self._factory()
        return self.event


def run_trio(kind: str, port: int, gws, ticks: int) -> tuple[float, float]:
    import trio

    if kind == "lite":
        from bench.h2lite import open_stream

        def dial():
            return open_stream("127.0.0.1", port, f"/{SERVICE}/{METHOD}")

        async def send(st, b):
            await st.send(b)

        async def recv(st):
            return await st.receive()
    else:
        from der_actors.transport.purerpc_compat import dial_grpc, receive_message

        def dial():
            return dial_grpc("127.0.0.1", port, SERVICE, METHOD, wire.Raw, wire.Raw)

        async def send(st, b):
            await st.send_message(wire.Raw(b))

        async def recv(st):
            m = await receive_message(st)
            return None if m is None else m.data

    async def gateway(reg, enc, ready, go, done):
        async with dial() as st:
            await send(st, reg)
            await recv(st)
            ready.append(1)
            await go.wait()
            w = _Window(trio.Event)

            async def rx():
                while (m := await recv(st)) is not None:
                    if m[0] == wire.HM_TELEMETRY_ACK:
                        w.on_ack(m)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(rx)
                for seq in range(1, ticks + 1):
                    while seq - w.acked > WINDOW:
                        await w.reset().wait()
                    await send(st, enc.encode(seq, time.time()))
                while w.acked < ticks:
                    await w.reset().wait()
                done.append(time.perf_counter())
                nursery.cancel_scope.cancel()

    async def main():
        ready, done, go = [], [], trio.Event()
        async with trio.open_nursery() as nursery:
            for reg, enc in gws:
                nursery.start_soon(gateway, reg, enc, ready, go, done)
            while len(ready) < len(gws):
                await trio.sleep(0.01)
            c0, t0 = os.times(), time.perf_counter()
            go.set()
        c1 = os.times()
        return max(done) - t0, (c1.user + c1.system) - (c0.user + c0.system)

    return trio.run(main)


def run_grpcio(port: int, gws, ticks: int) -> tuple[float, float]:
    import asyncio

    import grpc

    async def gateway(reg, enc, ready, go, done):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = ch.stream_stream(f"/{SERVICE}/{METHOD}", request_serializer=lambda b: b,
                                    response_deserializer=lambda b: b)()
            await call.write(reg)
            await call.read()
            ready.append(1)
            await go.wait()
            w = _Window(asyncio.Event)

            async def rx():
                while (m := await call.read()) is not grpc.aio.EOF:
                    if m[0] == wire.HM_TELEMETRY_ACK:
                        w.on_ack(m)

            task = asyncio.create_task(rx())
            for seq in range(1, ticks + 1):
                while seq - w.acked > WINDOW:
                    await w.reset().wait()
                await call.write(enc.encode(seq, time.time()))
            while w.acked < ticks:
                await w.reset().wait()
            done.append(time.perf_counter())
            task.cancel()
            call.cancel()

    async def main():
        ready, done, go = [], [], asyncio.Event()
        tasks = [asyncio.create_task(gateway(r, e, ready, go, done)) for r, e in gws]
        while len(ready) < len(gws):
            await asyncio.sleep(0.01)
        c0, t0 = os.times(), time.perf_counter()
        go.set()
        await asyncio.gather(*tasks)
        c1 = os.times()
        return max(done) - t0, (c1.user + c1.system) - (c0.user + c0.system)

    return asyncio.run(main())


def main() -> None:
    p = argparse.ArgumentParser(prog="bench.client_cost", description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=["lite", "purerpc", "grpcio"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--streams", type=int, default=200)
    p.add_argument("--ticks", type=int, default=150)
    a = p.parse_args()
    gws = _gateways(a.streams)
    wall, cpu = run_grpcio(a.port, gws, a.ticks) if a.kind == "grpcio" else run_trio(a.kind, a.port, gws, a.ticks)
    msgs = a.streams * a.ticks
    print(json.dumps({"kind": a.kind, "messages": msgs, "seconds": wall, "msgs_per_s": msgs / wall,
                      "cpu_s": cpu, "cpu_us_per_msg": cpu / msgs * 1e6, "cpu_cores": cpu / wall}))


if __name__ == "__main__":
    main()
