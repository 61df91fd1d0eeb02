"""`./dev bench`: the headend benchmark of issue 5. Prints each scenario's figures as it goes, a table
of every figure next to its target at the end, and writes everything to bench-results/<UTC time>.json.

    ./dev bench                      # every scenario, defaults (< 10 minutes on the 2-core box)
    ./dev bench --quick              # smaller everything (< 1 minute)
    ./dev bench --only ingest --only storm     # or --only ingest,storm
    ./dev bench --runs 3             # each figure is the median of 3 runs
    ./dev bench --only ingest --profile bench-results/profile   # py-spy the headend (ingest, dispatch)

Scenarios: ingest (with the storage ceiling and the transport sink: the "limits, same run"),
dispatch, connections, storm, edge; and, not in the defaults: `client` (the generator's own cost per
message with bench.h2lite, purerpc and grpcio), `agents` (bench/agents_read.py: what a GET /agents on
10,000 assets costs the event loop), `store` (bench/store_bench.py: the in-process store
benchmark and the SQLite layout comparison).

The headend, the sink and the edge agent run as child processes on 127.0.0.1 (ports picked by the
OS, or free ports picked first for the restart); the gateways are simulated in this process
(bench/fleet.py: pre-encoded batches over bench/h2lite.py). PostgreSQL: `--postgres URL` (default
$DER_TEST_POSTGRES or postgresql://postgres@127.0.0.1:5432/test); each run creates its own schema
and drops it. Every child, temp directory and schema is removed at the end, on failure and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
import traceback

import structlog
import trio

from bench import profiling
from bench.procs import PG_DEFAULT, ROOT, Cleanup, pg_problem
from bench.scenarios import DEFAULT, SCENARIOS, Ctx

ALL = list(SCENARIOS) + ["store"]


def _fmt_int(v: float) -> str:
    return f"{v:,.0f}"


def _fmt_pct(v: float) -> str:
    return f"{v:.0%}"


def _fmt_us(v: float) -> str:
    return f"{v:.1f} us"


def _fmt_ms(v: float) -> str:
    return f"{v:.1f} ms"


def _fmt_s(v: float) -> str:
    return f"{v:.1f} s"


# (figure key, what, target text, check or None, format)
TABLE = [
    ("ingest_sqlite_pts_s", "Ingest, SQLite, live (points/s stored)", ">= 100,000", lambda v: v >= 100_000, _fmt_int),
    ("ingest_sqlite_merged_pts_s", "  merged ticks (100 points a message)", ">= 100,000", lambda v: v >= 100_000, _fmt_int),
    ("ceiling_sqlite_rows_s", "  SQLite storage ceiling (rows/s)", "-", None, _fmt_int),
    ("ingest_sqlite_vs_ceiling", "  SQLite ingest / ceiling, live", ">= 75%", lambda v: v >= 0.75, _fmt_pct),
    ("ingest_sqlite_merged_vs_ceiling", "  SQLite ingest / ceiling, merged", ">= 75%", lambda v: v >= 0.75, _fmt_pct),
    ("ingest_sqlite_vs_sink", "  SQLite ingest / transport sink, live", "-", None, _fmt_pct),
    ("ingest_sqlite_merged_vs_sink", "  SQLite ingest / transport sink, merged", "-", None, _fmt_pct),
    ("ingest_sqlite_headend_us_pt", "  headend CPU a point stored, live (us)", "-", None, _fmt_us),
    ("ingest_sqlite_merged_headend_us_pt", "  headend CPU a point stored, merged (us)", "-", None, _fmt_us),
    ("ingest_postgres_pts_s", "Ingest, PostgreSQL, live (points/s stored)", ">= 60,000", lambda v: v >= 60_000,
     _fmt_int),
    ("ingest_postgres_merged_pts_s", "  merged ticks (100 points a message)", ">= 60,000", lambda v: v >= 60_000,
     _fmt_int),
    ("ceiling_postgres_rows_s", "  PostgreSQL storage ceiling (rows/s)", "-", None, _fmt_int),
    ("ingest_postgres_vs_ceiling", "  PostgreSQL ingest / ceiling, live", ">= 75%", lambda v: v >= 0.75, _fmt_pct),
    ("ingest_postgres_merged_vs_ceiling", "  PostgreSQL ingest / ceiling, merged", ">= 75%", lambda v: v >= 0.75,
     _fmt_pct),
    ("ingest_postgres_vs_sink", "  PostgreSQL ingest / transport sink, live", "-", None, _fmt_pct),
    ("ingest_postgres_merged_vs_sink", "  PostgreSQL ingest / transport sink, merged", "-", None, _fmt_pct),
    ("ingest_postgres_headend_us_pt", "  headend CPU a point stored, live (us)", "-", None, _fmt_us),
    ("ingest_postgres_merged_headend_us_pt", "  headend CPU a point stored, merged (us)", "-", None, _fmt_us),
    ("sink_pts_s", "Transport sink, live (points/s decoded)", "-", None, _fmt_int),
    ("sink_codec_pts_s", "  sink + codec.received_from_pb, live", "-", None, _fmt_int),
    ("sink_merged_pts_s", "  sink, merged", "-", None, _fmt_int),
    ("dispatch_p50_ms", "Dispatch POST -> applied, p50", "-", None, _fmt_ms),
    ("dispatch_p99_ms", "Dispatch POST -> applied, p99", "<= 20 ms", lambda v: v <= 20, _fmt_ms),
    ("dispatch_max_ms", "Dispatch POST -> applied, max", "-", None, _fmt_ms),
    ("dispatch_failures", "  dispatches not applied", "0", lambda v: v == 0, _fmt_int),
    ("dispatch_background_stored_pts_s", "  background telemetry stored meanwhile (/s)", "= offered", None, _fmt_int),
    ("dispatch_loop_lag_p50_ms", "  headend event loop lag, p50 (GET /health)", "-", None, _fmt_ms),
    ("dispatch_merged_p50_ms", "Dispatch, same load merged (10 ticks a message), p50", "-", None, _fmt_ms),
    ("dispatch_merged_p99_ms", "  p99", "<= 20 ms", lambda v: v <= 20, _fmt_ms),
    ("dispatch_merged_max_ms", "  max", "-", None, _fmt_ms),
    ("dispatch_merged_tried", "  dispatches tried in the 45 s budget", "-", None, _fmt_int),
    ("dispatch_merged_failures", "  of those, not applied", "0", lambda v: v == 0, _fmt_int),
    ("dispatch_merged_stored_pts_s", "  background telemetry stored meanwhile (/s)", "= offered", None, _fmt_int),
    ("dispatch_merged_loop_lag_p50_ms", "  headend event loop lag, p50", "-", None, _fmt_ms),
    ("dispatch_light_p50_ms", "Dispatch at 1/10 of the load, p50", "-", None, _fmt_ms),
    ("dispatch_light_p99_ms", "Dispatch at 1/10 of the load, p99", "-", None, _fmt_ms),
    ("dispatch_light_loop_lag_p50_ms", "  headend event loop lag, p50", "-", None, _fmt_ms),
    ("connections_assets_held", "Connections: assets held (10 per stream)", ">= 10,000 on 1,000 streams",
     lambda v: v >= 10_000, _fmt_int),
    ("connections_streams_held", "  streams held", ">= 1,000", lambda v: v >= 1_000, _fmt_int),
    ("rss_kb_per_asset", "  headend RSS added per connected asset (KB)", "<= 20", lambda v: v <= 20, lambda v: f"{v:.1f}"),
    ("rss_total_kb_per_connected_asset", "  headend total RSS / connected assets (KB)", "<= 20", lambda v: v <= 20,
     lambda v: f"{v:.1f}"),
    ("storm_s", "Reconnect storm: SIGTERM -> all streaming", "<= 15 s", lambda v: v <= 15, _fmt_s),
    ("storm_headend_down_s", "  of which the headend stop + start", "-", None, _fmt_s),
    ("edge_cpu_pct", "Edge, 1,000 assets at 1 s: CPU (% of a core)", "<= 25%", lambda v: v <= 25, lambda v: f"{v:.1f}%"),
    ("edge_rss_mb", "  edge RSS (MB)", "-", None, lambda v: f"{v:.0f}"),
    ("agents_get_ms", "GET /agents, 10,000 assets (ms)", "-", None, lambda v: f"{v:.0f}"),
    ("agents_longest_step_ms", "  longest event-loop step while serving (ms)", "-", None, lambda v: f"{v:.1f}"),
    ("client_lite_us_per_msg", "Generator CPU/message: bench.h2lite (us)", "-", None, lambda v: f"{v:.0f}"),
    ("client_purerpc_us_per_msg", "  purerpc dial_grpc (us)", "-", None, lambda v: f"{v:.0f}"),
    ("client_grpcio_us_per_msg", "  grpc.aio (us)", "-", None, lambda v: f"{v:.0f}"),
]


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="./dev bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--quick", action="store_true", help="smaller runs (under a minute)")
    p.add_argument("--only", action="append", default=[], metavar="SCENARIO",
                   help=f"run only these (repeat or comma-separate): {', '.join(ALL)}")
    p.add_argument("--runs", type=int, default=1, help="runs of each scenario; figures are medians (default 1)")
    p.add_argument("--postgres", default=os.environ.get("DER_TEST_POSTGRES", PG_DEFAULT), help="PostgreSQL admin URL")
    p.add_argument("--no-postgres", action="store_true", help="skip PostgreSQL")
    p.add_argument("--window", type=int, default=8, help="ingest, live shape: unacknowledged ticks per gateway (default 8)")
    p.add_argument("--out", default=os.path.join(ROOT, "bench-results"), help="directory for the JSON results")
    p.add_argument("--profile", nargs="?", const=os.path.join(ROOT, "bench-results", "profile"), default=None,
                   metavar="DIR", help="py-spy the headend during each ingest flood and dispatch pass (raw files and a summary in DIR)")
    a = p.parse_args(argv)
    only = [s.strip() for item in a.only for s in item.split(",") if s.strip()]
    bad = [s for s in only if s not in ALL]
    if bad:
        p.error(f"unknown scenario {', '.join(bad)}; choose from {', '.join(ALL)}")
    a.scenarios = only or DEFAULT
    if a.runs < 1:
        p.error("--runs must be >= 1")
    return a


def environment() -> dict:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    return {"python": platform.python_version(), "cpus": os.cpu_count(), "machine": platform.machine(),
            "kernel": platform.release(), "sqlite": sqlite3.sqlite_version, "loadavg_at_start": load,
            "git_commit": git("rev-parse", "--short", "HEAD"), "git_dirty_files": len(git("status", "--porcelain").splitlines())}


def median_figures(runs: list[dict]) -> dict:
    keys: dict[str, list[float]] = {}
    for run in runs:
        for result in run.values():
            for k, v in (result.get("figures") or {}).items():
                if isinstance(v, (int, float)) and v is not None:
                    keys.setdefault(k, []).append(v)
    return {k: statistics.median(v) for k, v in keys.items()}


def print_table(figures: dict, runs: int, quick: bool = False) -> list[dict]:
    rows = []
    note = (f" (median of {runs} runs)" if runs > 1 else "") + (" (--quick: smaller loads, indicative only)" if quick else "")
    print(f"\n== Results{note}")
    print(f"   {'figure':<46} {'measured':>14}   {'target':<28} ")
    for key, what, target, check, fmt in TABLE:
        if key not in figures:
            continue
        v = figures[key]
        verdict = "" if check is None else ("ok" if check(v) else "MISSED")
        if key == "dispatch_background_stored_pts_s" and "dispatch_background_pts_s" in figures:
            target = f"= offered ({figures['dispatch_background_pts_s']:,.0f})"
        top = figures.get("connections_ramp_max")
        if key.startswith("connections_") and verdict == "MISSED" and top and figures.get("connections_streams_held") == top:
            verdict = f"not reached: ramp stops at {top:,.0f} streams"
        rows.append({"figure": key, "what": what.strip(), "value": v, "target": target, "verdict": verdict or None})
        print(f"   {what:<46} {fmt(v):>14}   {target:<28} {verdict}")
    return rows


async def run_all(args: argparse.Namespace, cleanup: Cleanup, report: dict) -> None:
    pg_url, pg_reason = None, "--no-postgres"
    if not args.no_postgres:
        pg_reason = pg_problem(args.postgres)
        pg_url = None if pg_reason else args.postgres
    for run in range(1, args.runs + 1):
        results: dict = {}
        report["runs"].append(results)
        if args.runs > 1:
            print(f"\n######## run {run} of {args.runs}", flush=True)
        ctx = Ctx(cleanup, args.quick, pg_url, pg_reason, args.profile, run, args.window)
        for name in args.scenarios:
            t0 = time.perf_counter()
            try:
                if name == "store":
                    cmd = [sys.executable, "-m", "bench.store_bench"] + (["--quick"] if args.quick else [])
                    print("\n== Store (bench/store_bench.py)", flush=True)
                    proc = await trio.run_process(cmd, cwd=ROOT, check=False)
                    results[name] = {"returncode": proc.returncode}
                else:
                    results[name] = await SCENARIOS[name](ctx)
            except Exception as exc:  # one scenario's failure must not lose the others' figures
                print(f"   {name} FAILED: {exc!r}", flush=True)
                traceback.print_exc()
                results[name] = {"error": repr(exc), "traceback": traceback.format_exc()}
            finally:
                cleanup.run()
            results.setdefault(name, {})["scenario_s"] = round(time.perf_counter() - t0, 1)
            parts = results.get(name, {})
            parts = {**parts, **parts.get("passes", {})}  # dispatch: one profile per pass
            prof = [r.get("profile") for r in parts.values() if isinstance(r, dict) and r.get("profile")]
            for p in prof:
                if "error" in p:
                    print(f"   profile: {p['error']}")
                else:
                    profiling.print_summary(p, 15)


def _is_interrupt(exc: BaseException) -> bool:
    if isinstance(exc, KeyboardInterrupt):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_interrupt(e) for e in exc.exceptions)
    return False


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    # `timeout` and process managers stop a run with SIGTERM: clean up as after Ctrl-C, or the headend
    # and the other children outlive the run (holding their ports and databases)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # in-process storage: errors only
    cleanup = Cleanup()
    started = dt.datetime.now(dt.UTC)
    report: dict = {"started_at": started.isoformat(timespec="seconds"), "argv": sys.argv[1:],
                    "quick": args.quick, "scenarios": args.scenarios, "runs": [], "environment": environment()}
    env = report["environment"]
    dirty = f" + {env['git_dirty_files']} changed files" if env["git_dirty_files"] else ""
    print(f"der bench: python {env['python']}, {env['cpus']} CPUs, sqlite {env['sqlite']}, load "
          f"{' '.join(env['loadavg_at_start'])}, commit {env['git_commit']}{dirty}; scenarios "
          f"{', '.join(args.scenarios)}{' (quick)' if args.quick else ''}", flush=True)
    t0 = time.perf_counter()
    interrupted = False
    try:
        trio.run(run_all, args, cleanup, report)
    except BaseException as exc:  # Ctrl-C arrives as KeyboardInterrupt, possibly inside exception groups
        if not _is_interrupt(exc):
            raise
        interrupted = True
        print("\ninterrupted: cleaning up", flush=True)
    finally:
        cleanup.run()
        report["finished_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        report["total_s"] = round(time.perf_counter() - t0, 1)
        report["interrupted"] = interrupted
        report["figures"] = median_figures(report["runs"])
        report["table"] = print_table(report["figures"], len(report["runs"]), args.quick)
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, started.strftime("%Y%m%dT%H%M%SZ") + ("-quick" if args.quick else "") + ".json")
        with open(path, "w") as f:
            json.dump(report, f, indent=1, default=str)
        print(f"\n   {report['total_s']:.0f} s in all; results in {os.path.relpath(path, os.getcwd())}", flush=True)
    if interrupted:
        sys.exit(130)


if __name__ == "__main__":
    main()
