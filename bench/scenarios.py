"""The benchmark's scenarios (issue 5). Each is `async def scenario(ctx) -> dict` returning
`{"figures": {flat numbers for the table and medians}, ...details}` and printing as it goes."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time

import attrs
import httpx
import trio

from bench import profiling
from bench.fleet import Fleet
from bench.procs import (
    ROOT,
    ChildFailed,
    Cleanup,
    CpuWindow,
    GenSite,
    Headend,
    Sink,
    count_telemetry_async,
    create_schema,
    free_port,
    gen_sites,
    proc_cpu_s,
    proc_rss_kb,
    release_schema,
    tail,
    write_inventory,
)
from der_actors.actors.store import StoreActor

# what the store actor writes in one transaction while it is behind, as in a flood (group commit)
BATCH_ROWS = attrs.fields(StoreActor).max_batch_rows.default


@attrs.define
class Ctx:
    cleanup: Cleanup
    quick: bool
    pg_url: str | None  # None: PostgreSQL skipped
    pg_skip_reason: str = ""
    profile_dir: str | None = None  # py-spy the headend during ingest and each dispatch pass
    run: int = 1
    window: int = 8  # flood, live shape: unacknowledged ticks per gateway
    flood_s: float = 40.0  # flood: time box

    def say(self, text: str) -> None:
        print(text, flush=True)


async def wait_until(predicate, timeout_s: float, what: str, poll_s: float = 0.05) -> float:
    """Poll until predicate() is true; returns the time it became true (perf_counter)."""
    with trio.move_on_after(timeout_s):
        while not predicate():
            await trio.sleep(poll_s)
        return time.perf_counter()
    raise TimeoutError(f"{what}: not within {timeout_s:g} s")


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


def _database(ctx: Ctx, engine: str, workdir: str, name: str) -> tuple[str, str | None]:
    """(DATABASE_URL, pg schema or None): a fresh database of that engine."""
    if engine == "sqlite":
        return f"sqlite:///{os.path.join(workdir, name + '.sqlite3')}", None
    schema, url = create_schema(ctx.cleanup, ctx.pg_url)
    return url, schema


def _drop(ctx: Ctx, schema: str | None) -> None:
    if schema:
        release_schema(ctx.cleanup, ctx.pg_url, schema)


# === 1 + 2. ingest, storage ceiling, transport sink ==============================================


def _ingest_shape(ctx: Ctx) -> tuple[int, int, int, float]:
    # gateways, assets each, ticks, and a time box for each flood (no new batch after it)
    return (100, 10, 40, 10.0) if ctx.quick else (1000, 10, 60, 40.0)


# The two message shapes a gateway sends (see the README): a live tick, one point per asset; and
# ticks merged into one TelemetryBatch, as a real agent sends them when it is behind (edge/link.py
# merges ticks queued behind a slow send; its backfill batches hold up to 500 points). The merged
# flood keeps 40 ticks per gateway unacknowledged: 400,000 points at the default size, inside the
# store's 500,000-point buffer, so nothing is dropped.
SHAPES = (("live", 1), ("merged", 10))
MERGED_WINDOW = 40


async def scenario_ingest(ctx: Ctx) -> dict:
    n_gw, per, ticks, flood_s = _ingest_shape(ctx)
    ctx.flood_s = flood_s
    total = n_gw * per * ticks
    sites = gen_sites(n_gw, per)
    workdir = ctx.cleanup.tempdir("ingest")
    inv = os.path.join(workdir, "assets.yaml")
    write_inventory(inv, sites)
    merged = dict(SHAPES)["merged"]
    ctx.say(f"\n== Ingest: {n_gw:,} gateways x {per} assets x {ticks} ticks = {total:,} points per engine and shape, "
            f"or what {flood_s:g} s of sending allows (flood). Shapes: live = one tick ({per} points) a message, "
            f"ack window {ctx.window} ticks per gateway; merged = {merged} ticks ({merged * per} points) a message, "
            f"window {MERGED_WINDOW} ticks. The storage ceiling writes {ceiling_ticks(ctx, ticks)} ticks of the same rows")
    out: dict = {"gateways": n_gw, "assets_per_gateway": per, "ticks": ticks, "points": total}
    figures: dict = {}
    engines = ["sqlite"] + (["postgres"] if ctx.pg_url else [])
    if not ctx.pg_url:
        ctx.say(f"   PostgreSQL skipped: {ctx.pg_skip_reason}")
        out["postgres_skipped"] = ctx.pg_skip_reason
    for engine in engines:
        for shape, ticks_per_message in SHAPES:
            url, schema = _database(ctx, engine, workdir, "ingest")
            try:
                r = await ingest_once(ctx, workdir, inv, sites, url, ticks, engine, ticks_per_message)
            finally:
                _drop(ctx, schema)
            name = engine if shape == "live" else f"{engine}_{shape}"
            out[f"{name}_ingest"] = r
            figures[f"ingest_{name}_pts_s"] = r["points_per_s"]
            figures[f"ingest_{name}_headend_us_pt"] = r["headend_cpu_us_per_point"]
            ctx.say(f"   {engine:<8} ingest, {shape:<6} {r['points_per_s']:>10,.0f} points/s stored  ({r['rows_in_db']:,} rows "
                    f"counted in {r['seconds']:.2f} s; CPU a point: headend {r['headend_cpu_us_per_point']:.1f} us, its "
                    f"writer {r['writer_cpu_us_per_point']:.1f} us; headend {r['cpu'].get('cpu_headend_cores', 0):.2f} cores, generator "
                    f"{r['cpu']['cpu_bench_cores']:.2f}, other processes {r['cpu']['cpu_other_processes_cores']:.2f}; "
                    f"ack stalls {r['fleet']['ack_stalls']})")
        url, schema = _database(ctx, engine, workdir, "ceiling")
        try:
            c = await trio.to_thread.run_sync(ceiling, url, inv, sites, ceiling_ticks(ctx, ticks))
        finally:
            _drop(ctx, schema)
        out[f"{engine}_ceiling"] = c
        figures[f"ceiling_{engine}_rows_s"] = c["rows_per_s"]
        for shape, _ in SHAPES:
            name = engine if shape == "live" else f"{engine}_{shape}"
            figures[f"ingest_{name}_vs_ceiling"] = figures[f"ingest_{name}_pts_s"] / c["rows_per_s"]
        ctx.say(f"   {engine:<8} ceiling       {c['rows_per_s']:>10,.0f} rows/s  (storage.write of {c['batches']} "
                f"batches of {BATCH_ROWS:,}, no network, no actors)  -> ingest is "
                f"{figures[f'ingest_{engine}_vs_ceiling']:.0%} (live) and {figures[f'ingest_{engine}_merged_vs_ceiling']:.0%} "
                f"(merged) of it")
    # the same gateways and batches; at least 120,000 points so start-up does not dominate a quick run
    sink_ticks = max(ticks, -(-120_000 // (n_gw * per)))
    sinks = [("sink", 1, False)] + ([] if ctx.quick else [("sink_codec", 1, True)]) + [("sink_merged", merged, False)]
    for key, ticks_per_message, use_codec in sinks:
        s = await sink_once(ctx, workdir, sites, sink_ticks, use_codec, ticks_per_message)
        out[key] = s
        figures[f"{key}_pts_s"] = s["points_per_s"]
        label = {"sink": "sink, live", "sink_codec": "sink+codec, live", "sink_merged": "sink, merged"}[key]
        ctx.say(f"   {label:<22}{s['points_per_s']:>10,.0f} points/s decoded (purerpc server + protobuf parse"
                f"{' + codec.received_from_pb' if use_codec else ''}; sink {s['cpu']['cpu_sink_cores']:.2f} cores, "
                f"generator {s['cpu']['cpu_bench_cores']:.2f})")
    for engine in engines:
        for shape, _ in SHAPES:
            name, sink = (engine, "sink") if shape == "live" else (f"{engine}_{shape}", f"sink_{shape}")
            figures[f"ingest_{name}_vs_sink"] = figures[f"ingest_{name}_pts_s"] / figures[f"{sink}_pts_s"]
            ctx.say(f"   {engine} ingest / sink, {shape} = {figures[f'ingest_{name}_vs_sink']:.0%}")
    out["figures"] = figures
    return out


def _window(ctx: Ctx, ticks_per_message: int) -> int:
    """Unacknowledged ticks per gateway for a flood of this shape."""
    return ctx.window if ticks_per_message == 1 else MERGED_WINDOW


def ceiling_ticks(ctx: Ctx, ticks: int) -> int:
    return ticks if ctx.quick else 40  # 400,000 rows at the default size: enough for a steady rate


async def ingest_once(ctx: Ctx, workdir: str, inv: str, sites: list[GenSite], url: str, ticks: int,
                      engine: str, ticks_per_message: int) -> dict:
    headend = Headend(ctx.cleanup, workdir, inv, url, name=f"headend-ingest-{engine}")
    await headend.start()
    fleet = Fleet(sites, "127.0.0.1", headend.grpc_port, mode="flood", ticks=ticks,
                  window=_window(ctx, ticks_per_message), ticks_per_message=ticks_per_message)
    profiler = None
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(fleet.run)
            await wait_until(lambda: fleet.n_registered == fleet.size, 120, "gateways registered")
            rss0 = headend.rss_kb()
            if ctx.profile_dir:
                profiler = profiling.start(ctx.cleanup, headend.pid, ctx.profile_dir,
                                           f"ingest-{engine}{'' if ticks_per_message == 1 else '-merged'}-run{ctx.run}")
            cpu = CpuWindow({"headend": headend.pid}, count_postgres=engine == "postgres")
            t0 = time.perf_counter()
            fleet.flood_until = t0 + ctx.flood_s
            fleet.go.set()
            await wait_until(lambda: fleet.n_flood_done == fleet.size, ctx.flood_s + 120, "every ack")
            t_end = fleet.last_ack_at
            cpu_figures = cpu.stop()
            if profiler:
                profiler.stop()
            rss1 = headend.rss_kb()
            fleet.stop()
        # the database is the truth: acks say "stored", the count must agree
        total = fleet.stats.points_sent
        rows = await count_telemetry_async(url)
        deadline = time.perf_counter() + 30
        while rows < total and time.perf_counter() < deadline:
            await trio.sleep(0.5)
            now_rows = await count_telemetry_async(url)
            if now_rows == rows and fleet.stats.ack_stalls == 0:
                break
            rows, t_end = now_rows, time.perf_counter()
    finally:
        fleet.stop()
        shutdown_s = await headend.stop()
        if profiler:
            profiler.stop()
    seconds = t_end - t0
    result = {
        "points_sent": fleet.stats.points_sent, "rows_in_db": rows, "seconds": seconds,
        "points_per_s": rows / seconds, "headend_start_s": headend.started_s, "headend_shutdown_s": shutdown_s,
        "headend_rss_mb_before": rss0 / 1024, "headend_rss_mb_after": rss1 / 1024,
        "cpu": cpu_figures, "fleet": attrs.asdict(fleet.stats),
        # CPU a point over the flood (every point acked in it): the headend's own process, and its writer
        **_cpu_per_point(cpu_figures, fleet.stats.points_sent),
    }
    if profiler:
        result["profile"] = profiler.summary()
    if rows != total:
        result["warning"] = f"{total - rows:,} of {total:,} points not in the database"
        ctx.say(f"   WARNING {engine}: {result['warning']}")
    return result


def _cpu_per_point(cpu: dict, points: int) -> dict:
    wall = cpu["wall_s"]
    own = cpu["cpu_headend_cores"] - cpu.get("cpu_headend_children_cores", 0.0)
    return {"headend_cpu_us_per_point": own * wall / points * 1e6,
            "writer_cpu_us_per_point": cpu.get("cpu_headend_children_cores", 0.0) * wall / points * 1e6}


def ceiling(url: str, inv_path: str, sites: list[GenSite], ticks: int) -> dict:
    """The same rows (same assets, one point per asset per tick, tick-major like the fleet sends them),
    written with the storage's own `write(WriteBatch)` in batches of the store actor's size; only
    the write calls are timed (building each batch is not)."""
    from der_actors.inventory import load_inventory
    from der_actors.messages import BessDetails, Telemetry
    from der_actors.storage import open_storage
    from der_actors.storage.base import PointRow, WriteBatch
    from der_actors.storage.rows import point_row

    storage = open_storage(url)
    try:
        storage.save_inventory(load_inventory(inv_path))
        rng = random.Random(3)
        base = time.time()
        pending: list[PointRow] = []
        spent = 0.0
        batches = 0
        rows = 0

        def flush() -> None:
            nonlocal spent, batches, rows
            batch = WriteBatch(points=pending[:])
            pending.clear()
            t0 = time.perf_counter()
            storage.write(batch)
            spent += time.perf_counter() - t0
            batches += 1
            rows += len(batch.points)

        for seq in range(1, ticks + 1):
            ts = base + seq * 0.01
            for site in sites:
                for a in site.asset_ids:
                    p = Telemetry(a, site.id, seq, ts, round(rng.uniform(-2, 2), 3), 0.0, True, "", "",
                                  BessDetails(round(rng.uniform(5, 95), 1), 2.0))
                    pending.append(point_row(p, ts + 0.05))
                    if len(pending) == BATCH_ROWS:
                        flush()
        if pending:
            flush()
        counted = storage.count_telemetry()
    finally:
        storage.close()
    return {"rows": rows, "rows_in_db": counted, "batches": batches, "seconds": spent, "rows_per_s": rows / spent}


async def sink_once(ctx: Ctx, workdir: str, sites: list[GenSite], ticks: int, use_codec: bool,
                    ticks_per_message: int) -> dict:
    sink = Sink(ctx.cleanup, workdir, use_codec)
    await sink.start()
    fleet = Fleet(sites, "127.0.0.1", sink.port, mode="flood", ticks=ticks,
                  window=_window(ctx, ticks_per_message), ticks_per_message=ticks_per_message)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(fleet.run)
            await wait_until(lambda: fleet.n_registered == fleet.size, 120, "gateways registered at the sink")
            cpu = CpuWindow({"sink": sink.pid})
            t0 = time.perf_counter()
            fleet.flood_until = t0 + ctx.flood_s
            fleet.go.set()
            await wait_until(lambda: fleet.n_flood_done == fleet.size, 300, "every sink ack")
            t_end = fleet.last_ack_at
            cpu_figures = cpu.stop()
            fleet.stop()
    finally:
        fleet.stop()
        stats = await sink.stop()
    points = stats.get("points", fleet.stats.points_sent)
    return {"points": points, "seconds": t_end - t0, "points_per_s": points / (t_end - t0), "cpu": cpu_figures,
            "fleet": attrs.asdict(fleet.stats), "codec": use_codec}


# === 3. dispatch latency under load ===============================================================


async def scenario_dispatch(ctx: Ctx) -> dict:
    n_gw, per, rate, n = (100, 10, 2_000, 200) if ctx.quick else (1000, 10, 20_000, 2000)
    budget_s = 20 if ctx.quick else 45  # a pass stops here whatever is left (reported)
    # the full run's target pass can be overload (below): each dispatch times out at 5 s, so a few
    # tell the story (and the bench stays under 10 minutes); --quick's target pass is light and keeps
    # `budget_s`
    overload_budget_s = budget_s if ctx.quick else 30
    # Passes: (name, points/s, dispatches, ticks a message). A light pass first (10% of the load,
    # fewer dispatches): the dispatch path's own latency, apart from what the load does to it. Then
    # the load merged (10 ticks a message, a batch per gateway every 5 s), a shape the headend takes
    # at well over 100,000 points/s, so it is load and not overload. Then the live shape, last: near
    # what the headend takes in on this machine, and past it in the VM's slow hours, when it leaves a
    # backlog (stored < sent in its line). --quick: the target only.
    merged = dict(SHAPES)["merged"]
    passes = [("target", rate, n, 1)] if ctx.quick else [
        ("light", rate // 10, n // 4, 1), ("merged", rate, n, merged), ("target", rate, n, 1)]
    sites = gen_sites(n_gw, per, seed=11)
    workdir = ctx.cleanup.tempdir("dispatch")
    inv = os.path.join(workdir, "assets.yaml")
    write_inventory(inv, sites)
    ctx.say(f"\n== Dispatch latency: {n_gw * per:,} assets on {n_gw:,} gateways, background telemetry "
            f"{rate:,} points/s (a batch per gateway every {n_gw * per / rate:g} s), {n:,} dispatches one after another "
            f"(asset and site alternately), POST /dispatch?wait=applied&timeout_s=5"
            + ("" if ctx.quick else f"; first a light pass at {rate // 10:,} points/s with {n // 4:,} dispatches, then "
               f"the same {rate:,} points/s merged ({merged} ticks a message, a batch per gateway every "
               f"{n_gw * per * merged / rate:g} s)"))
    url = f"sqlite:///{workdir}/dispatch.sqlite3"
    headend = Headend(ctx.cleanup, workdir, inv, url, name="headend-dispatch")
    await headend.start()
    fleet = Fleet(sites, "127.0.0.1", headend.grpc_port, mode="paced", interval_s=n_gw * per / passes[0][1], gated=True)
    results: dict = {}
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(fleet.run)
            await wait_until(lambda: fleet.n_registered == fleet.size, 120, "gateways registered")
            fleet.go.set()
            for i, (name, pass_rate, pass_n, ticks_per_message) in enumerate(passes):
                fleet.interval_s = n_gw * per * ticks_per_message / pass_rate
                fleet.ticks_per_message = ticks_per_message
                await trio.sleep(1 if ctx.quick else 4)  # telemetry settles into its schedule
                profiler = (profiling.start(ctx.cleanup, headend.pid, ctx.profile_dir, f"dispatch-{name}-run{ctx.run}")
                            if ctx.profile_dir else None)
                budget = overload_budget_s if name == "target" else budget_s
                r = await _dispatch_pass(fleet, headend, url, sites, pass_n, budget, 5 + i, workdir)
                if profiler:
                    profiler.stop()
                    r["profile"] = profiler.summary()
                results[name] = r
                ctx.say(_dispatch_line(name, pass_rate, pass_n, ticks_per_message, budget, r))
            fleet.stop()
    finally:
        fleet.stop()
        await headend.stop()
    t, light = results["target"], results.get("light")
    figures = {
        "dispatch_p50_ms": t["p50_ms"], "dispatch_p99_ms": t["p99_ms"], "dispatch_max_ms": t["max_ms"],
        "dispatch_asset_p99_ms": t["asset_p99_ms"], "dispatch_site_p99_ms": t["site_p99_ms"],
        "dispatch_failures": t["not_applied"], "dispatch_background_pts_s": t["sent_pts_s"],
        "dispatch_background_stored_pts_s": t["stored_pts_s"], "dispatch_loop_lag_p50_ms": t["loop_lag_p50_ms"],
    }
    if light:
        figures.update({"dispatch_light_p50_ms": light["p50_ms"], "dispatch_light_p99_ms": light["p99_ms"],
                        "dispatch_light_max_ms": light["max_ms"],
                        "dispatch_light_loop_lag_p50_ms": light["loop_lag_p50_ms"]})
    if merged_pass := results.get("merged"):
        figures.update({"dispatch_merged_p50_ms": merged_pass["p50_ms"], "dispatch_merged_p99_ms": merged_pass["p99_ms"],
                        "dispatch_merged_max_ms": merged_pass["max_ms"],
                        "dispatch_merged_tried": merged_pass["dispatches"], "dispatch_merged_failures": merged_pass["failed"],
                        "dispatch_merged_stored_pts_s": merged_pass["stored_pts_s"],
                        "dispatch_merged_loop_lag_p50_ms": merged_pass["loop_lag_p50_ms"]})
    return {"figures": figures, "gateways": n_gw, "assets": n_gw * per, "passes": results,
            "fleet": attrs.asdict(fleet.stats)}


async def _dispatch_pass(fleet: Fleet, headend: Headend, url: str, sites: list[GenSite], n: int, budget_s: float,
                         seed: int, workdir: str) -> dict:
    """One pass: `bench.dispatch_client` in its own process times the dispatches (see why there)."""
    fleet.measuring = True
    fleet.stats.max_send_lateness_s = 0.0
    sent0 = fleet.stats.points_sent
    rows0 = await count_telemetry_async(url)
    rss0 = headend.rss_kb()
    spec = os.path.join(workdir, f"dispatch-client-{seed}.json")
    with open(spec, "w") as f:
        json.dump({"url": headend.http_url, "targets": [[s.id, s.asset_ids] for s in sites], "n": n,
                   "budget_s": budget_s, "seed": seed}, f)
    cpu = CpuWindow({"headend": headend.pid})
    proc = await trio.run_process([sys.executable, "-m", "bench.dispatch_client", spec], cwd=ROOT,
                                  capture_stdout=True)
    cpu_figures = cpu.stop()
    c = json.loads(proc.stdout)
    wall = cpu_figures["wall_s"]
    lat, internal, lags = c["lat"], c["internal"], c["lags"]
    both = lat["asset"] + lat["site"]
    ms = lambda xs, q: pct(xs, q) * 1000 if xs else None  # noqa: E731
    return {
        "dispatches": c["done"], "applied": len(both), "not_applied": len(c["failures"]) + (n - c["done"]),
        "failed": len(c["failures"]),  # tried and not applied (not_applied also counts those the budget left)
        "budget_hit": c["done"] < n,
        "p50_ms": ms(both, 50), "p99_ms": ms(both, 99), "max_ms": max(both) * 1000 if both else None,
        "asset_p99_ms": ms(lat["asset"], 99), "site_p99_ms": ms(lat["site"], 99),
        "headend_internal_p50_ms": ms(internal["total"], 50), "headend_internal_p99_ms": ms(internal["total"], 99),
        "headend_to_sent_p99_ms": ms(internal["to_sent"], 99),
        "headend_sent_to_applied_p99_ms": ms(internal["sent_to_applied"], 99),
        "http_request_p99_ms": ms(internal["request"], 99), "http_response_p99_ms": ms(internal["response"], 99),
        "slowest": c["slowest"],
        "sent_pts_s": (fleet.stats.points_sent - sent0) / wall,
        "stored_pts_s": (await count_telemetry_async(url) - rows0) / wall,
        "generator_late_max_s": fleet.stats.max_send_lateness_s,
        "loop_lag_p50_ms": ms(lags, 50), "loop_lag_max_ms": max(lags) * 1000 if lags else None,
        "headend_rss_mb_before": rss0 / 1024, "headend_rss_mb_after": headend.rss_kb() / 1024,
        "cpu": cpu_figures, "failures": c["failures"][:20],
    }


def _dispatch_line(name: str, rate: int, n: int, ticks_per_message: int, budget_s: float, r: dict) -> str:
    f = lambda v: f"{v:.1f}" if v is not None else "-"  # noqa: E731
    stop = (f"; stopped after {r['dispatches']} dispatches ({budget_s:g} s budget), {r['failed']} of those not applied"
            if r["budget_hit"] else "")
    return (f"   {name} ({rate:,} points/s, {ticks_per_message} tick{'s' * (ticks_per_message > 1)} a message): POST -> applied p50 {f(r['p50_ms'])} ms, p99 {f(r['p99_ms'])} ms, max "
            f"{f(r['max_ms'])} ms (asset p99 {f(r['asset_p99_ms'])}, site p99 {f(r['site_p99_ms'])}); headend-recorded "
            f"submitted->applied p50 {f(r['headend_internal_p50_ms'])} ms, p99 {f(r['headend_internal_p99_ms'])} ms "
            f"(->sent p99 {f(r['headend_to_sent_p99_ms'])}, sent->applied p99 {f(r['headend_sent_to_applied_p99_ms'])}); "
            f"HTTP legs: POST -> submitted p99 {f(r['http_request_p99_ms'])} ms, applied -> response p99 "
            f"{f(r['http_response_p99_ms'])} ms; "
            f"{r['not_applied']} of {n} not applied{stop}; headend event loop lag (GET /health each second) p50 "
            f"{f(r['loop_lag_p50_ms'])} ms, max {f(r['loop_lag_max_ms'])} ms\n"
            f"      telemetry sent {r['sent_pts_s']:,.0f} points/s, stored {r['stored_pts_s']:,.0f}/s; headend "
            f"{r['cpu']['cpu_headend_cores']:.2f} cores, RSS {r['headend_rss_mb_before']:.0f} -> "
            f"{r['headend_rss_mb_after']:.0f} MB; generator {r['cpu']['cpu_bench_cores']:.2f} cores (at most "
            f"{r['generator_late_max_s'] * 1000:.0f} ms late); other processes {r['cpu']['cpu_other_processes_cores']:.2f}")


# === 4. connections =================================================================================


async def scenario_connections(ctx: Ctx) -> dict:
    steps = [100, 250] if ctx.quick else [100, 250, 500, 1000, 1500, 2000]
    per, interval = 10, 4.0
    hold = 0.5 * interval if ctx.quick else 2.5 * interval
    lag_limit = 2 * interval
    sites = gen_sites(max(steps), per, seed=13)
    workdir = ctx.cleanup.tempdir("connections")
    inv = os.path.join(workdir, "assets.yaml")
    write_inventory(inv, sites)
    ctx.say(f"\n== Connections: ramp {', '.join(map(str, steps))} gateway streams x {per} assets, telemetry every "
            f"{interval:g} s, each step held {hold:g} s; degraded = /agents max telemetry_lag_s > {lag_limit:g} s, "
            f"a registration failure, or an asset not connected")
    headend = Headend(ctx.cleanup, workdir, inv, f"sqlite:///{workdir}/connections.sqlite3", name="headend-connections")
    await headend.start()
    rows_out = []
    fleets: list[Fleet] = []
    held_streams = 0
    try:
        async with trio.open_nursery() as nursery, httpx.AsyncClient(base_url=headend.http_url, timeout=60) as client:
            await trio.sleep(1 if ctx.quick else 3)
            rss_base = headend.rss_kb()
            prev = 0
            for step in steps:
                fleet = Fleet(sites[prev:step], "127.0.0.1", headend.grpc_port, mode="paced", interval_s=interval)
                fleets.append(fleet)
                t_reg = time.perf_counter()
                await nursery.start(fleet.run)
                try:
                    await wait_until(lambda: fleet.n_registered == fleet.size, 120, "gateways registered")
                    reg_s = time.perf_counter() - t_reg
                except TimeoutError:
                    reg_s = None
                cpu = CpuWindow({"headend": headend.pid})
                for f in fleets:
                    f.measuring = True
                await trio.sleep(hold)
                cpu_figures = cpu.stop()
                t0 = time.perf_counter()
                try:
                    agents = (await client.get("/agents")).json()["agents"]
                    agents_s = time.perf_counter() - t0
                except (httpx.HTTPError, ValueError, KeyError) as exc:
                    agents, agents_s = None, None
                    ctx.say(f"   GET /agents failed: {exc!r}")
                rss = headend.rss_kb()
                connected = sum(a["connected"] for a in agents) if agents else 0
                lags = [a["telemetry_lag_s"] for a in agents or () if a["connected"] and a["telemetry_lag_s"] is not None]
                max_lag = max(lags) if lags else None
                failures = sum(f.stats.registration_failures + f.stats.dial_failures + f.stats.sessions_lost for f in fleets)
                late = max(f.stats.max_send_lateness_s for f in fleets)
                degraded = []
                if agents is None:
                    degraded.append("GET /agents failed")
                if max_lag is None or max_lag > lag_limit:
                    degraded.append(f"telemetry lag {max_lag} s")
                if failures:
                    degraded.append(f"{failures} registration/dial failures or lost sessions")
                if connected < step * per:
                    degraded.append(f"only {connected} of {step * per} assets connected")
                row = {"streams": step, "assets": step * per, "connected_assets": connected, "register_s": reg_s,
                       "max_lag_s": max_lag, "p50_lag_s": pct(lags, 50) if lags else None, "agents_get_s": agents_s,
                       "rss_mb": rss / 1024, "rss_kb_per_asset": (rss - rss_base) / max(1, step * per),
                       "headend_cores": cpu_figures["cpu_headend_cores"], "generator_cores": cpu_figures["cpu_bench_cores"],
                       "other_cores": cpu_figures["cpu_other_processes_cores"], "generator_late_s": late,
                       "degraded": degraded}
                rows_out.append(row)
                ctx.say(f"   {step:>5} streams {step * per:>6} assets: registered in {reg_s or float('nan'):.1f} s, lag max "
                        f"{max_lag if max_lag is not None else float('nan'):.2f} s (p50 {row['p50_lag_s'] or float('nan'):.2f}), "
                        f"GET /agents {agents_s or float('nan'):.2f} s, RSS {rss / 1024:.0f} MB "
                        f"(+{row['rss_kb_per_asset']:.1f} KB per connected asset), headend "
                        f"{row['headend_cores']:.2f} cores{'  DEGRADED: ' + '; '.join(degraded) if degraded else ''}")
                if degraded:
                    break
                held_streams = step
                prev = step
            for f in fleets:
                f.stop()
    finally:
        for f in fleets:
            f.stop()
        await headend.stop()
    at_1000 = next((r for r in rows_out if r["streams"] == 1000 and not r["degraded"]), None)
    last_ok = next((r for r in reversed(rows_out) if not r["degraded"]), None)
    figures = {
        "connections_streams_held": held_streams, "connections_assets_held": held_streams * per,
        "connections_ramp_max": steps[-1],
        "rss_kb_per_asset_at_1000": at_1000["rss_kb_per_asset"] if at_1000 else None,
        "rss_kb_per_asset_at_max": last_ok["rss_kb_per_asset"] if last_ok else None,
        "rss_kb_per_asset": (at_1000 or last_ok or {}).get("rss_kb_per_asset"),
        # the whole process (every configured asset's actor included) over the connected assets
        "rss_total_kb_per_connected_asset": ((at_1000 or last_ok)["rss_mb"] * 1024 / (at_1000 or last_ok)["assets"])
        if (at_1000 or last_ok) else None,
    }
    ctx.say(f"   held {held_streams:,} streams ({held_streams * per:,} assets)"
            f"{' (the top of the ramp: not degraded)' if held_streams == steps[-1] else ''}; RSS baseline "
            f"{rss_base / 1024:.0f} MB with every asset configured and none connected")
    return {"figures": figures, "steps": rows_out, "rss_baseline_mb": rss_base / 1024, "interval_s": interval,
            "hold_s": hold}


# === 5. reconnect storm ==============================================================================


async def scenario_storm(ctx: Ctx) -> dict:
    n_gw, per, interval = (100, 10, 4.0) if ctx.quick else (1000, 10, 4.0)
    sites = gen_sites(n_gw, per, seed=17)
    workdir = ctx.cleanup.tempdir("storm")
    inv = os.path.join(workdir, "assets.yaml")
    write_inventory(inv, sites)
    ctx.say(f"\n== Reconnect storm: {n_gw:,} gateways x {per} assets (telemetry every {interval:g} s), headend "
            f"SIGTERM and started again on the same ports; gateways reconnect with the agents' policy "
            f"(Backoff full jitter 0.5 s doubling to 30 s, 5 s after a refused dial, reset after a healthy 30 s "
            f"session), simulated")
    headend = Headend(ctx.cleanup, workdir, inv, f"sqlite:///{workdir}/storm.sqlite3",
                      grpc_port=free_port(), http_port=free_port(), name="headend-storm")
    await headend.start()
    fleet = Fleet(sites, "127.0.0.1", headend.grpc_port, mode="paced", interval_s=interval, reconnect=True,
                  dial_concurrency=None, seed=ctx.run)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(fleet.run)
            await wait_until(lambda: fleet.n_streaming == fleet.size, 120, "gateways streaming")
            await trio.sleep(1 if ctx.quick else 5)
            dials0 = fleet.stats.dials
            t_term = time.perf_counter()
            stop_s = await headend.stop(signal.SIGTERM)
            t_exit = time.perf_counter()
            start_s_before = headend.started_s
            await headend.start()
            t_started = time.perf_counter()
            t_all_reg = await wait_until(lambda: fleet.n_registered == fleet.size, 180, "every gateway re-registered")
            t_all_stream = await wait_until(lambda: fleet.n_streaming == fleet.size, 60, "every gateway streaming")
            reg_after = sorted(g.registered_at - t_term for g in fleet.gateways)
            async with httpx.AsyncClient(base_url=headend.http_url, timeout=60) as client:
                agents = (await client.get("/agents")).json()["agents"]
            connected = sum(a["connected"] for a in agents)
            fleet.stop()
    finally:
        fleet.stop()
        await headend.stop()
    storm_s = t_all_stream - t_term
    figures = {"storm_s": storm_s, "storm_after_started_s": t_all_stream - t_started,
               "storm_headend_down_s": t_started - t_term}
    ctx.say(f"   all {n_gw:,} re-registered and streaming {storm_s:.1f} s after SIGTERM: the headend took "
            f"{stop_s:.1f} s to stop and {headend.started_s:.1f} s to start (first start {start_s_before:.1f} s), "
            f"then {t_all_stream - t_started:.1f} s for every gateway; re-registration after SIGTERM p50 "
            f"{pct(reg_after, 50):.1f} s, p90 {pct(reg_after, 90):.1f} s, max {reg_after[-1]:.1f} s; "
            f"{fleet.stats.dials - dials0:,} dials ({fleet.stats.dial_failures:,} refused); /agents shows "
            f"{connected:,} of {n_gw * per:,} assets connected")
    return {"figures": figures, "stop_s": stop_s, "start_s": headend.started_s, "exit_s": t_exit - t_term,
            "registered_all_s": t_all_reg - t_term, "reregistration_s": {"p50": pct(reg_after, 50), "p90": pct(reg_after, 90),
                                                                           "max": reg_after[-1]},
            "connected_assets": connected, "fleet": attrs.asdict(fleet.stats)}


# === 6. edge ===========================================================================================


async def scenario_edge(ctx: Ctx) -> dict:
    n_assets, window = 1000, (5.0 if ctx.quick else 30.0)
    sites = gen_sites(1, n_assets, seed=19)
    workdir = ctx.cleanup.tempdir("edge")
    inv = os.path.join(workdir, "assets.yaml")
    write_inventory(inv, sites)
    ctx.say(f"\n== Edge: one real gateway process (python -m edge.cli) serving {n_assets:,} assets at "
            f"TELEMETRY_INTERVAL_S=1; CPU from /proc/<pid>/stat over {window:g} s, RSS from VmRSS")
    url = f"sqlite:///{workdir}/edge.sqlite3"
    headend = Headend(ctx.cleanup, workdir, inv, url, name="headend-edge")
    await headend.start()
    log_path = os.path.join(workdir, "edge.log")
    env = dict(os.environ, GATEWAY_SITE_ID=sites[0].id, ASSETS_PATH=inv, HEADEND_GRPC=f"127.0.0.1:{headend.grpc_port}",
               TELEMETRY_INTERVAL_S="1", EDGE_SPOOL_DIR=os.path.join(workdir, "spool"), LOG_FORMAT="json")
    edge = None
    try:
        with open(log_path, "wb") as log:
            edge = ctx.cleanup.proc(subprocess.Popen([sys.executable, "-m", "edge.cli"], cwd=workdir, env=env, stdout=log,
                                                     stderr=log, stdin=subprocess.DEVNULL, start_new_session=True))
        t0 = time.perf_counter()
        async with httpx.AsyncClient(base_url=headend.http_url, timeout=30) as client:
            async def connected() -> int:
                return sum(a["connected"] for a in (await client.get("/agents")).json()["agents"])

            with trio.move_on_after(90):
                while await connected() < n_assets:
                    if edge.poll() is not None:
                        raise ChildFailed(f"edge exited with {edge.returncode}:\n{tail(log_path)}")
                    await trio.sleep(0.5)
            if await connected() < n_assets:
                raise ChildFailed(f"edge did not register {n_assets} assets within 90 s:\n{tail(log_path)}")
            registered_s = time.perf_counter() - t0
            await trio.sleep(1 if ctx.quick else 5)
            rows0 = await count_telemetry_async(url)
            cpu0, w0 = proc_cpu_s(edge.pid), time.perf_counter()
            machine = CpuWindow({"edge": edge.pid, "headend": headend.pid})
            await trio.sleep(window)
            cpu1, w1 = proc_cpu_s(edge.pid), time.perf_counter()
            machine_figures = machine.stop()
            rss = proc_rss_kb(edge.pid)
            rows1 = await count_telemetry_async(url)
            agents = (await client.get("/agents")).json()["agents"]
            lags = [a["telemetry_lag_s"] for a in agents if a["telemetry_lag_s"] is not None]
    except ChildFailed as exc:
        ctx.say(f"   FAILED: {exc}")
        return {"figures": {"edge_cpu_pct": None, "edge_rss_mb": None}, "error": str(exc)}
    finally:
        if edge is not None and edge.poll() is None:
            edge.send_signal(signal.SIGTERM)
            with trio.move_on_after(10):
                while edge.poll() is None:
                    await trio.sleep(0.05)
            if edge.poll() is None:
                edge.kill()
        await headend.stop()
    cpu_pct = (cpu1 - cpu0) / (w1 - w0) * 100
    stored = (rows1 - rows0) / (w1 - w0)
    figures = {"edge_cpu_pct": cpu_pct, "edge_rss_mb": rss / 1024, "edge_points_stored_s": stored}
    ctx.say(f"   edge CPU {cpu_pct:.1f}% of one core, RSS {rss / 1024:.0f} MB; headend stored {stored:,.0f} points/s "
            f"from it (expected {n_assets:,}); newest telemetry lag max {max(lags) if lags else float('nan'):.2f} s; "
            f"registered {registered_s:.1f} s after spawn; other processes "
            f"{machine_figures['cpu_other_processes_cores']:.2f} cores")
    return {"figures": figures, "registered_s": registered_s, "max_lag_s": max(lags) if lags else None,
            "cpu": machine_figures}


# === generator cost: which client to simulate gateways with ======================================


async def scenario_client(ctx: Ctx) -> dict:
    streams, ticks = (100, 50) if ctx.quick else (200, 150)
    workdir = ctx.cleanup.tempdir("client")
    ctx.say(f"\n== Generator cost per message: {streams} streams x {ticks} pre-encoded 10-point batches against the "
            f"sink, ack window 8; client CPU from os.times of the client process")
    out: dict = {}
    figures: dict = {}
    for kind in ("lite", "purerpc", "grpcio"):
        sink = Sink(ctx.cleanup, workdir)
        await sink.start()
        try:
            proc = await trio.run_process(
                [sys.executable, "-m", "bench.client_cost", kind, "--port", str(sink.port), "--streams", str(streams),
                 "--ticks", str(ticks)], cwd=ROOT, capture_stdout=True, capture_stderr=True, check=False)
        finally:
            await sink.stop()
        if proc.returncode != 0:
            ctx.say(f"   {kind}: failed: {proc.stderr.decode()[-500:]}")
            continue
        r = json.loads(proc.stdout.decode().strip().splitlines()[-1])
        out[kind] = r
        figures[f"client_{kind}_us_per_msg"] = r["cpu_us_per_msg"]
        ctx.say(f"   {kind:<8} {r['cpu_us_per_msg']:>6.1f} us client CPU per message, {r['msgs_per_s']:>8,.0f} msg/s "
                f"({r['cpu_cores']:.2f} cores)")
    out["figures"] = figures
    return out


# === a dashboard's read: GET /agents on 10,000 assets ===============================================


async def scenario_agents(ctx: Ctx) -> dict:
    requests = 3 if ctx.quick else 5
    ctx.say(f"\n== GET /agents on 10,000 assets (bench/agents_read.py: in-process headend, every asset with a session "
            f"and a latest point), {requests} requests")
    proc = await trio.run_process([sys.executable, "-m", "bench.agents_read", "--requests", str(requests)], cwd=ROOT,
                                  capture_stdout=True, capture_stderr=True, check=False)
    if proc.returncode != 0:
        ctx.say(f"   failed: {proc.stderr.decode()[-500:]}")
        return {"figures": {}}
    r = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    ctx.say(f"   median response {r['median_response_s'] * 1e3:.0f} ms for {r['bytes'] / 1e6:.1f} MB; the longest single "
            f"task step while serving {r['worst_longest_step_s'] * 1e3:.1f} ms (nothing else runs during one)")
    return {"figures": {"agents_get_ms": r["median_response_s"] * 1e3,
                        "agents_longest_step_ms": r["worst_longest_step_s"] * 1e3}, **r}


SCENARIOS = {
    "agents": scenario_agents,
    "client": scenario_client,
    "ingest": scenario_ingest,
    "dispatch": scenario_dispatch,
    "connections": scenario_connections,
    "storm": scenario_storm,
    "edge": scenario_edge,
}
DEFAULT = ["ingest", "dispatch", "connections", "storm", "edge"]
