"""`--profile DIR`: sample the headend with py-spy (an external tool, run as a child process; never
imported) while the ingest flood runs, and summarise where its time goes.

Only the thread holding the GIL is sampled (`py-spy --gil`): the headend is one core of Python (the
trio thread and the store's writer thread take turns), so that is the time to account for. Without
it a thread waiting for the GIL counts as busy: under live ingest the trio thread showed ~96 % busy
and held the GIL 78 % of the time, and the decode's share read 42 % against 27 % held.

py-spy is not a project dependency. `./dev` syncs .venv exactly to uv.lock (which removes ad hoc
packages), so install it elsewhere and say where: `uv pip install --target /tmp/pyspy py-spy` then
`PY_SPY=/tmp/pyspy/bin/py-spy ./dev bench --only ingest --profile` (or have py-spy on PATH, or
`uv pip install --python .venv/bin/python py-spy` and run `.venv/bin/python -m bench` directly).
Without it `--profile` says so and does nothing.

    .venv/bin/python -m bench.profiling FILE.txt [N]   # summarise a raw py-spy file again
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import time

from bench.procs import Cleanup


def py_spy() -> str | None:
    if os.environ.get("PY_SPY"):
        return os.environ["PY_SPY"]
    here = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return here if os.path.exists(here) else shutil.which("py-spy")


class Profiler:
    def __init__(self, proc: subprocess.Popen | None, raw_path: str) -> None:
        self.proc = proc
        self.raw_path = raw_path
        self.t0 = time.perf_counter()
        self.seconds = 0.0

    def stop(self) -> None:
        p = self.proc
        if p is None or p.poll() is not None:
            return
        self.seconds = time.perf_counter() - self.t0
        p.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    def summary(self, top: int = 20) -> dict:
        if self.proc is None or not os.path.exists(self.raw_path):
            return {"error": "no profile (py-spy not installed or it failed)"}
        return {"raw": self.raw_path, "seconds": round(self.seconds, 2), **summarise(self.raw_path, top)}


def start(cleanup: Cleanup, pid: int, out_dir: str, name: str, rate: int = 100) -> Profiler:
    os.makedirs(out_dir, exist_ok=True)
    raw = os.path.join(os.path.abspath(out_dir), f"{name}.txt")
    exe = py_spy()
    if exe is None:
        print("   --profile: py-spy not found (set PY_SPY, see bench/profiling.py)", flush=True)
        return Profiler(None, raw)
    log = open(os.path.join(out_dir, f"{name}.py-spy.log"), "wb")
    proc = cleanup.proc(subprocess.Popen(
        [exe, "record", "-p", str(pid), "-r", str(rate), "-f", "raw", "-o", raw, "--threads", "--gil"],
        stdout=log, stderr=log, stdin=subprocess.DEVNULL))
    time.sleep(0.3)  # attach before the flood starts
    return Profiler(proc, raw)


_FRAME = re.compile(r"(.*?) \((.*?):\d+\)$")


def _where(path: str) -> str:
    for marker in ("site-packages/", "/work/main/", "python3.11/", "python3.12/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def _module(path: str) -> str:
    p = _where(path)
    parts = p.split("/")
    if parts[0] in ("der_actors", "edge", "bench"):
        return "/".join(parts[:3]) if parts[0] == "der_actors" and len(parts) > 2 else "/".join(parts[:2])
    if parts[0].startswith("<"):
        return parts[0]
    return parts[0] if "/" in p else "stdlib:" + p


def summarise(raw_path: str, top: int = 20) -> dict:
    """Self and cumulative sample shares by function and by module (package directory) from a
    `py-spy record -f raw --threads` file. Cumulative counts a sample once per distinct frame."""
    self_fn: collections.Counter = collections.Counter()
    self_mod: collections.Counter = collections.Counter()
    cum_fn: collections.Counter = collections.Counter()
    cum_mod: collections.Counter = collections.Counter()
    threads: collections.Counter = collections.Counter()
    thread_mod: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    total = 0
    with open(raw_path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or " " not in line:
                continue
            stack, _, n_text = line.rpartition(" ")
            try:
                n = int(n_text)
            except ValueError:
                continue
            frames = [x for x in stack.split(";") if x]
            thread = "all"
            if frames and frames[0].startswith(("thread (", "process ")):
                thread = frames[0].split(": ", 1)[-1]
                threads[thread] += n
                frames = [x for x in frames if not x.startswith(("thread (", "process "))]
            if not frames:
                continue
            total += n
            parsed = []
            for fr in frames:
                m = _FRAME.match(fr)
                name, path = (m.group(1), m.group(2)) if m else (fr, fr)
                parsed.append((f"{name} [{_where(path)}]", _module(path)))
            self_fn[parsed[-1][0]] += n
            self_mod[parsed[-1][1]] += n
            thread_mod[thread][parsed[-1][1]] += n
            for fn in {p[0] for p in parsed}:
                cum_fn[fn] += n
            for mod in {p[1] for p in parsed}:
                cum_mod[mod] += n

    def share(c: collections.Counter) -> list[tuple[str, float]]:
        return [(k, round(v / total, 4)) for k, v in c.most_common(top)] if total else []

    by_thread = {
        t: {"share_of_samples": round(n / total, 4),
            "self_by_module": [(k, round(v / n, 4)) for k, v in thread_mod[t].most_common(top)]}
        for t, n in threads.most_common(4)
    } if total else {}
    return {"samples": total, "threads": by_thread, "self_by_function": share(self_fn),
            "self_by_module": share(self_mod), "cumulative_by_function": share(cum_fn),
            "cumulative_by_module": share(cum_mod)}


def print_summary(s: dict, top: int = 20) -> None:
    print(f"   profile: {s.get('samples', 0)} samples of the GIL's holder over {s.get('seconds', '?')} s  ({s.get('raw', '')})")
    for name, t in s.get("threads", {}).items():
        mods = ", ".join(f"{m} {f * 100:.0f}%" for m, f in t["self_by_module"][:6])
        print(f"   -- thread {name}: {t['share_of_samples'] * 100:.0f}% of samples; self: {mods}")
    for title, key in (("self time by module", "self_by_module"), ("self time by function", "self_by_function"),
                       ("cumulative by module", "cumulative_by_module"), ("cumulative by function", "cumulative_by_function")):
        print(f"   -- {title}")
        for name, frac in s.get(key, [])[:top]:
            print(f"     {frac * 100:5.1f}%  {name}")


if __name__ == "__main__":
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 25
    print_summary({"raw": sys.argv[1], **summarise(sys.argv[1], n)}, n)
