"""What the benchmark runs and reads outside itself: generated inventories, headend / sink / edge child
processes, throwaway databases, and /proc figures (CPU, RSS). Everything is registered with a
`Cleanup` so that a failure or Ctrl-C still stops every child and drops every temporary schema.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid

import attrs
import trio
import yaml

PG_DEFAULT = "postgresql://postgres@127.0.0.1:5432/test"
CLK_TCK = os.sysconf("SC_CLK_TCK")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- cleanup registry --------------------------------------------------------------------------


class Cleanup:
    """Children, temp dirs and PostgreSQL schemas to remove whatever happens (synchronous: it also
    runs after trio.run has been interrupted)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self.dirs: list[str] = []
        self.schemas: list[tuple[str, str]] = []  # (admin url, schema)

    def proc(self, p: subprocess.Popen) -> subprocess.Popen:
        self.procs.append(p)
        return p

    def tempdir(self, prefix: str) -> str:
        d = tempfile.mkdtemp(prefix=f"der-bench-{prefix}-")
        if not os.environ.get("DER_BENCH_KEEP"):  # keep the work directories (logs) to look into a run
            self.dirs.append(d)
        return d

    def run(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                p.wait()
        self.procs.clear()
        for url, schema in self.schemas:
            with contextlib.suppress(Exception):
                drop_schema(url, schema)
        self.schemas.clear()
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)
        self.dirs.clear()


# --- inventories ---------------------------------------------------------------------------------


@attrs.frozen
class GenSite:
    id: str
    name: str
    asset_ids: tuple[str, ...]


def gen_sites(n_sites: int, per_site: int, seed: int = 7) -> list[GenSite]:
    rng = random.Random(seed)
    uid = lambda: str(uuid.UUID(int=rng.getrandbits(128), version=4))  # noqa: E731
    return [GenSite(uid(), f"bench site {i}", tuple(uid() for _ in range(per_site))) for i in range(n_sites)]


ASSET_MAX_MW, ASSET_MIN_MW, ASSET_CAPACITY = 2.0, -2.0, 4.0


def write_inventory(path: str, sites: list[GenSite]) -> None:
    """An assets.yaml: every asset a 2 MW / 4 MWh battery."""
    doc = {
        "sites": [{"id": s.id, "name": s.name} for s in sites],
        "assets": [
            {"id": a, "name": f"bess {i}-{j}", "site_id": s.id, "type": "bess", "capacity_mwhr": ASSET_CAPACITY,
             "max_mw": ASSET_MAX_MW, "min_mw": ASSET_MIN_MW}
            for i, s in enumerate(sites) for j, a in enumerate(s.asset_ids)
        ],
    }
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    with open(path, "w") as f:
        yaml.dump(doc, f, Dumper=dumper, sort_keys=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- /proc ---------------------------------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    """The process and its running descendants (the headend's storage writer process)."""
    pids = [pid]
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
            for child in f.read().split():
                with contextlib.suppress(OSError):
                    pids += _tree(int(child))
    return pids


def proc_cpu_s(pid: int, *, children: bool = True) -> float:
    """utime + stime of a process (all its threads) and, unless told not to, its running children,
    seconds."""
    total = 0
    for p in _tree(pid) if children else [pid]:
        with contextlib.suppress(OSError), open(f"/proc/{p}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def proc_rss_kb(pid: int) -> int:
    """Resident memory of a process and its running children."""
    total = 0
    for p in _tree(pid):
        with contextlib.suppress(OSError), open(f"/proc/{p}/status") as f:
            total += next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
    return total


def self_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def _machine_busy_s() -> float:
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in parts[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def _pids_named(name: str) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/comm") as f:
                    if f.read().strip() == name:
                        out.append(int(d))
            except OSError:
                pass
    return out


class CpuWindow:
    """CPU seconds used over a window by each of our processes and by everything else on the machine
    (other load makes a figure noisy; it is reported next to each one)."""

    def __init__(self, pids: dict[str, int], count_postgres: bool = False) -> None:
        self.pids = dict(pids)
        self.count_postgres = count_postgres
        self.t0 = time.perf_counter()
        self.busy0 = _machine_busy_s()
        self.self0 = self_cpu_s()
        self.cpu0 = {k: _safe_cpu(p) for k, p in self.pids.items()}
        self.own0 = {k: _safe_cpu(p, children=False) for k, p in self.pids.items()}
        self.pg0 = self._pg() if count_postgres else 0.0

    def _pg(self) -> float:
        return sum(_safe_cpu(p) for p in _pids_named("postgres"))

    def stop(self) -> dict:
        wall = time.perf_counter() - self.t0
        ours = {k: _safe_cpu(p) - self.cpu0[k] for k, p in self.pids.items()}
        own = {k: _safe_cpu(p, children=False) - self.own0[k] for k, p in self.pids.items()}
        children = {f"{k}_children": ours[k] - own[k] for k in own if ours[k] - own[k] > 0}  # the headend's writer
        ours["bench"] = self_cpu_s() - self.self0
        if self.count_postgres:
            ours["postgres"] = self._pg() - self.pg0
        busy = _machine_busy_s() - self.busy0
        others = max(0.0, busy - sum(ours.values()))
        return {"wall_s": round(wall, 3), **{f"cpu_{k}_cores": round(v / wall, 3) for k, v in ours.items()},
                **{f"cpu_{k}_cores": round(v / wall, 3) for k, v in children.items()},
                "cpu_other_processes_cores": round(others / wall, 3)}


def _safe_cpu(pid: int, *, children: bool = True) -> float:
    try:
        return proc_cpu_s(pid, children=children)
    except OSError:
        return 0.0


# --- databases -----------------------------------------------------------------------------------


def pg_problem(url: str) -> str:
    """'' if PostgreSQL answers at url, else why not."""
    try:
        import psycopg

        psycopg.connect(url, connect_timeout=3).close()
        return ""
    except Exception as exc:  # noqa: BLE001 (any reason is a reason to skip)
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def create_schema(cleanup: Cleanup, admin_url: str) -> tuple[str, str]:
    """A fresh schema; returns (schema, DATABASE_URL selecting it). Dropped by `cleanup`."""
    import psycopg
    from psycopg import sql

    schema = f"der_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    cleanup.schemas.append((admin_url, schema))
    sep = "&" if "?" in admin_url else "?"
    return schema, f"{admin_url}{sep}options=-csearch_path%3D{schema}"


def drop_schema(admin_url: str, schema: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def release_schema(cleanup: Cleanup, admin_url: str, schema: str) -> None:
    drop_schema(admin_url, schema)
    with contextlib.suppress(ValueError):
        cleanup.schemas.remove((admin_url, schema))


def count_telemetry(database_url: str) -> int:
    """Rows in the telemetry table, read from outside the headend."""
    if database_url.startswith("sqlite:///"):
        path = database_url[len("sqlite:///"):]
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            return conn.execute("SELECT COUNT(*) FROM telemetry").fetchone()[0]
        except sqlite3.OperationalError:
            return 0  # not migrated yet
        finally:
            conn.close()
    import psycopg

    with psycopg.connect(database_url, connect_timeout=5) as conn:
        try:
            return conn.execute("SELECT COUNT(*) FROM telemetry").fetchone()[0]
        except psycopg.errors.UndefinedTable:
            return 0


async def count_telemetry_async(database_url: str) -> int:
    return await trio.to_thread.run_sync(count_telemetry, database_url)


# --- child processes -----------------------------------------------------------------------------


class ChildFailed(RuntimeError):
    pass


def tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


class Headend:
    """`python -m der_actors.cli` as a child: JSON logs to a file, ports from its `headend_started`."""

    def __init__(self, cleanup: Cleanup, workdir: str, assets_path: str, database_url: str, *,
                 grpc_port: int = 0, http_port: int = 0, env: dict[str, str] | None = None, name: str = "headend") -> None:
        self.cleanup = cleanup
        self.workdir = workdir
        self.assets_path = assets_path
        self.database_url = database_url
        self.grpc_port = grpc_port
        self.http_port = http_port
        self.extra_env = env or {}
        self.name = name
        self.proc: subprocess.Popen | None = None
        self.http_url = ""
        self.log_path = ""
        self.starts = 0
        self.started_s = 0.0  # seconds from spawn to headend_started, last start

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def start(self, timeout_s: float = 180) -> None:
        self.starts += 1
        self.log_path = os.path.join(self.workdir, f"{self.name}-{self.starts}.log")
        env = dict(os.environ, LOG_FORMAT="json", ASSETS_PATH=self.assets_path, DATABASE_URL=self.database_url,
                   HEADEND_HTTP_ADDR=f"127.0.0.1:{self.http_port}", HEADEND_GRPC_ADDR=f"127.0.0.1:{self.grpc_port}",
                   **self.extra_env)
        t0 = time.perf_counter()
        with open(self.log_path, "wb") as log:
            self.proc = self.cleanup.proc(subprocess.Popen(
                [sys.executable, "-m", "der_actors.cli"], cwd=self.workdir, env=env, stdout=log, stderr=log,
                stdin=subprocess.DEVNULL, start_new_session=True))
        event = await wait_for_log_event(self.log_path, "headend_started", self.proc, timeout_s)
        self.started_s = time.perf_counter() - t0
        self.http_url = event["http"]
        self.grpc_port = int(event["grpc"].rsplit(":", 1)[1])
        self.http_port = int(self.http_url.rsplit(":", 1)[1])

    def rss_kb(self) -> int:
        return proc_rss_kb(self.pid)

    def cpu_s(self) -> float:
        return proc_cpu_s(self.pid)

    async def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> float:
        """Signal it and wait for it to exit; returns the seconds it took (killed after timeout_s)."""
        p = self.proc
        if p is None or p.poll() is not None:
            return 0.0
        t0 = time.perf_counter()
        p.send_signal(sig)
        with trio.move_on_after(timeout_s):
            while p.poll() is None:
                await trio.sleep(0.02)
        if p.poll() is None:
            p.kill()
            p.wait()
        return time.perf_counter() - t0

    def log_tail(self) -> str:
        return tail(self.log_path)

    def events(self, name: str) -> list[dict]:
        out = []
        with open(self.log_path, errors="replace") as f:
            for line in f:
                if f'"{name}"' in line:
                    with contextlib.suppress(ValueError):
                        out.append(json.loads(line))
        return out


async def wait_for_log_event(path: str, event: str, proc: subprocess.Popen, timeout_s: float) -> dict:
    """The first JSON log line whose event is `event` (the file is read as it grows)."""
    pos = 0
    buf = ""
    with trio.move_on_after(timeout_s):
        while True:
            try:
                with open(path, errors="replace") as f:
                    f.seek(pos)
                    chunk = f.read()
                    pos = f.tell()
            except OSError:
                chunk = ""
            buf += chunk
            *lines, buf = buf.split("\n")
            for line in lines:
                if f'"{event}"' in line:
                    with contextlib.suppress(ValueError):
                        doc = json.loads(line)
                        if doc.get("event") == event:
                            return doc
            if proc.poll() is not None:
                raise ChildFailed(f"{proc.args} exited with {proc.returncode} before {event}:\n{tail(path)}")
            await trio.sleep(0.05)
    raise ChildFailed(f"{proc.args}: no {event} within {timeout_s:g} s:\n{tail(path)}")


class Sink:
    """`python -m bench.sink` as a child."""

    def __init__(self, cleanup: Cleanup, workdir: str, use_codec: bool = False) -> None:
        self.cleanup = cleanup
        self.workdir = workdir
        self.use_codec = use_codec
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.stats: dict = {}

    async def start(self) -> None:
        args = [sys.executable, "-m", "bench.sink"] + (["--codec"] if self.use_codec else [])
        self.log_path = os.path.join(self.workdir, "sink.log")
        with open(self.log_path, "wb") as log:
            self.proc = self.cleanup.proc(subprocess.Popen(
                args, cwd=ROOT, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True))
        event = await wait_for_log_event(self.log_path, "sink_started", self.proc, 30)
        self.port = event["port"]

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def stop(self) -> dict:
        self.proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(10):
            while self.proc.poll() is None:
                await trio.sleep(0.02)
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(ChildFailed):
            self.stats = await wait_for_log_event(self.log_path, "sink_stopped", self.proc, 1)
        return self.stats
