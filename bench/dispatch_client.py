"""The dispatch scenario's client, in a process of its own: `POST /dispatch?wait=applied` one after
another, timing each, and `GET /health` once a second for the headend's event-loop lag.

Why a process: so that the figures are the headend's and the network's, not the load generator's.
In the bench process the client shared a trio loop, the GIL and the GC with 1,000 simulated
gateways. An operator's client is a process of its own. (Measured when it moved: the figures stayed
within run-to-run noise, so the tail is in the headend, not in the generator.)

    python -m bench.dispatch_client SPEC.json   # prints the result as JSON on stdout

SPEC: {"url", "targets": [[site_id, [asset_id, ...]], ...], "n", "budget_s", "seed"}.
"""

from __future__ import annotations

import datetime as dt
import heapq
import json
import random
import sys
import time

import httpx
import trio


def _ts(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Run:
    def __init__(self) -> None:
        self.lat: dict[str, list[float]] = {"asset": [], "site": []}
        # the headend's own timestamps (history): in all, and split at `sent`; and the HTTP legs, from
        # this process's wall clock to the headend's (one machine, one clock; the headend's in ms)
        self.internal: dict[str, list[float]] = {"total": [], "to_sent": [], "sent_to_applied": [],
                                                 "request": [], "response": []}
        self.slowest: list[tuple[float, str, dict]] = []  # the ten slowest, with those phases
        self.failures: list[str] = []
        self.lags: list[float] = []
        self.done = 0

    async def dispatches(self, client: httpx.AsyncClient, targets: list, n: int, deadline: float,
                         rng: random.Random) -> None:
        """One after another until `n` or the deadline (perf_counter)."""
        for i in range(n):
            if time.perf_counter() > deadline:
                break
            self.done += 1
            site_id, asset_ids = rng.choice(targets)
            mw = round(rng.uniform(-3, 3), 3)
            kind = "asset" if i % 2 == 0 else "site"
            body = {"asset_id": rng.choice(asset_ids), "mw": mw} if kind == "asset" else {"site_id": site_id, "mw": mw}
            w0, t0 = time.time(), time.perf_counter()
            try:
                resp = await client.post("/dispatch", params={"wait": "applied", "timeout_s": "5"}, json=body)
                doc = resp.json()
            except (httpx.HTTPError, ValueError) as exc:
                self.failures.append(f"{kind}: {exc!r}")
                continue
            elapsed, w1 = time.perf_counter() - t0, time.time()
            if resp.status_code != 200 or doc.get("state") != "applied":
                self.failures.append(f"{kind}: HTTP {resp.status_code} state {doc.get('state')} "
                                     f"{doc.get('message') or doc.get('error')}")
                continue
            self.lat[kind].append(elapsed)
            at = {h["state"]: _ts(h["at"]) for h in doc["history"]}
            phases = {"request": at["submitted"] - w0, "to_sent": at["sent"] - at["submitted"],
                      "sent_to_applied": at["applied"] - at["sent"], "response": w1 - at["applied"]}
            self.internal["total"].append(at["applied"] - at["submitted"])
            for phase, seconds in phases.items():
                self.internal[phase].append(seconds)
            heapq.heappush(self.slowest, (elapsed, kind, {k: round(v * 1000, 1) for k, v in phases.items()}))
            if len(self.slowest) > 10:
                heapq.heappop(self.slowest)

    async def sample_loop_lag(self, client: httpx.AsyncClient) -> None:
        """The headend's own view of its load, once a second: how late its event loop last woke."""
        while True:
            try:
                self.lags.append((await client.get("/health")).json()["event_loop_lag_ms"]["last"] / 1000)
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            await trio.sleep(1)

    def result(self) -> dict:
        return {"done": self.done, "lat": self.lat, "internal": self.internal, "failures": self.failures,
                "lags": self.lags,
                "slowest": [{"kind": k, "ms": t * 1000, "headend_ms": p} for t, k, p in sorted(self.slowest, reverse=True)]}


async def main(spec: dict) -> dict:
    run = Run()
    async with httpx.AsyncClient(base_url=spec["url"], timeout=30) as client:
        await client.get("/health")  # the connection is open before timing starts
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run.sample_loop_lag, client)
            await run.dispatches(client, spec["targets"], spec["n"], time.perf_counter() + spec["budget_s"],
                                 random.Random(spec["seed"]))
            nursery.cancel_scope.cancel()
    return run.result()


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(json.dumps(trio.run(main, json.load(f))))
