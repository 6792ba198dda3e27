"""AetherGate benchmark: the direct path to an upstream vs the same load through the gateway.

Run: make bench (or `python bench/run.py --help`); `make bench-smoke` for a quick pass.

What it starts (all on 127.0.0.1, each in its own process group, all killed
on exit or Ctrl-C):
- a mock OpenAI upstream (bench/upstream.py; aiohttp, or `--upstream raw`,
  a bare asyncio protocol several times faster): instant non-stream
  answers, and streams of 20 content chunks + a usage chunk + [DONE];
- AetherGate itself: uvicorn, one worker, on a fresh SQLite file (default) or
  a freshly recreated PostgreSQL database (`--db postgres`), with one user,
  endpoint, model and key made by `manage.py shell`.

What it measures, per scenario and path (direct to the upstream, then
through the gateway): requests/s, p50/p99 latency, and for streams the time
to first token (first body bytes carrying `"content"`). Non-stream load is
`wrk` (bench/post.lua prints the percentiles); stream load is
bench/stream_client.py (raw asyncio streams, uvloop). The gateway is pinned
to the first core, the upstream and load generators to the second (taskset).
Each measured interval follows a warm-up whose request logs are drained first.

For the gateway path it also takes:
- CPU ms per request: utime+stime of the gateway process (/proc/PID/stat)
  from the start of the measured interval until its request logs are all
  in the database (so log writing is included), divided by the requests;
  the interval-only figure is kept in the JSON too;
- the log backlog: requests completed minus `logs_requestlog` rows right
  when the load stops, and how long the rows took to catch up;
- peak RSS: VmHWM from /proc/PID/status.
`--repeat N` runs every scenario N times and reports the median of each
figure (and flags runs whose RPS spread exceeds 10%). `--only TEXT` runs the
scenarios whose name contains TEXT. `--profile DIR` samples the gateway
with py-spy during each measured gateway run (figures taken that way are
not for reporting), writes the raw stacks to DIR and prints the functions
holding the most samples. Only threads holding the GIL are sampled, so the
shares are of CPU time, not of time spent waiting. `--soak N` then sends N
non-stream requests through the gateway in one wrk run, sampling its RSS
every second. `--stall S` then keeps the load on for S seconds with the
request-log table locked, as in a database outage: the log writer's buffer
fills to its bound, and the RSS that costs counts in the peak. Results go
to bench-results/bench-<db>-<timestamp>.json with machine information and a
pass/fail per target. Exit status: 0 when the benchmark ran (targets
missed or not), non-zero when setup failed.
"""

# ruff: noqa: S603, S607 -- a harness: it starts its own tools with fixed argument lists.

import argparse
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PYTHON = sys.executable
VENV_BIN = Path(PYTHON).parent
RESULTS = ROOT / "bench-results"
DEFAULT_PG_URL = "postgres://postgres@127.0.0.1:5432/aethergate_bench"
# Served as deployed: AetherGate's HTTP protocol (aethergate/server.py).
HTTP_PROTOCOL = "aethergate.server:HttpProtocol"
NONSTREAM_BODY = json.dumps(
    {"model": "bench", "messages": [{"role": "user", "content": "hi"}]}, separators=(",", ":")
)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CPUS = sorted(os.sched_getaffinity(0))  # before this process pins itself


class SetupError(Exception):
    """Something the benchmark needs could not be started or checked: exit non-zero."""


@dataclass(frozen=True)
class Scenario:
    name: str
    stream: bool
    concurrency: int


SCENARIOS = [
    Scenario("non-stream c=1", False, 1),
    Scenario("non-stream c=64", False, 64),
    Scenario("stream c=1", True, 1),
    Scenario("stream c=32", True, 32),
]


# Processes ------------------------------------------------------------------


class Processes:
    """Every child started by the harness, each in its own session (process group)."""

    def __init__(self, cores: dict[str, list[int]]):
        self.cores = cores
        self.running: list[subprocess.Popen] = []

    def start(self, argv, *, role, env=None, stdout=None, stderr=None) -> subprocess.Popen:
        cores = self.cores.get(role)
        if cores and shutil.which("taskset"):
            argv = ["taskset", "-c", ",".join(map(str, cores)), *argv]
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.running.append(proc)
        return proc

    def run(self, argv, *, role, env=None, timeout) -> str:
        """Run a tool to completion; return its stdout (stderr is shown on failure)."""
        proc = self.start(argv, role=role, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop(proc)
            raise SetupError(f"{Path(argv[0]).name} did not finish in {timeout:.0f} s") from None
        self.running.remove(proc)
        if proc.returncode != 0:
            raise SetupError(
                f"{' '.join(map(str, argv[:3]))} … exited with {proc.returncode}:\n"
                f"{err.decode(errors='replace')[-2000:]}"
            )
        return out.decode()

    def stop(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if proc in self.running:
            self.running.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.running)):
            self.stop(proc)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SetupError(f"{what} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SetupError(f"{what} is not listening on port {port} after {timeout:.0f} s")


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def memory_mb(pid: int, field: str) -> float:
    """VmRSS, VmHWM, … of one process, in MB (MiB)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


class RssSampler:
    """Samples a process's VmRSS (MB) every `every` seconds in a thread, for the `with` block."""

    def __init__(self, pid: int, every: float = 1.0):
        self.pid = pid
        self.every = every
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.samples.append(memory_mb(self.pid, "VmRSS"))
            self._stop.wait(self.every)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(memory_mb(self.pid, "VmRSS"))


# Database -------------------------------------------------------------------


class LogRows:
    """Counts `logs_requestlog` rows without going through the gateway."""

    def __init__(self, db: str, url: str, sqlite_path: Path | None):
        self.db = db
        self.url = url
        self.sqlite_path = sqlite_path
        self._conn = None

    def count(self) -> int:
        if self._conn is None:
            if self.db == "sqlite":
                self._conn = sqlite3.connect(self.sqlite_path, timeout=20, isolation_level=None)
            else:
                import psycopg

                self._conn = psycopg.connect(self.url, autocommit=True)
        return self._conn.execute("SELECT count(*) FROM logs_requestlog").fetchone()[0]

    def wait_for(self, expected: int, timeout: float) -> tuple[bool, float, int]:
        """Wait until at least `expected` rows exist; return (reached, seconds, rows)."""
        started = time.monotonic()
        while True:
            rows = self.count()
            waited = time.monotonic() - started
            if rows >= expected or waited >= timeout:
                return rows >= expected, waited, rows
            time.sleep(0.05)

    def settle(self, quiet: float = 0.5, timeout: float = 30) -> int:
        """Wait until the count stops changing for `quiet` seconds (requests cut off by
        the end of a load run may still be logged); return it."""
        deadline = time.monotonic() + timeout
        rows, since = self.count(), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.1)
            now = self.count()
            if now != rows:
                rows, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                break
        return rows

    @contextmanager
    def locked(self):
        """Hold `logs_requestlog` locked for the `with` block: the gateway's log writes wait.

        SQLite: an exclusive transaction (a write waits up to the gateway's busy
        timeout, 20 s, then fails and is retried); PostgreSQL: ACCESS EXCLUSIVE.
        """
        self.count()  # connected
        if self.db == "sqlite":
            self._conn.execute("BEGIN EXCLUSIVE")
            try:
                yield
            finally:
                self._conn.execute("COMMIT")
        else:
            with self._conn.transaction():
                self._conn.execute("LOCK TABLE logs_requestlog IN ACCESS EXCLUSIVE MODE")
                yield

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def recreate_postgres(url: str, procs: Processes) -> None:
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    if not re.fullmatch(r"[A-Za-z0-9_]+", name):
        raise SetupError(f"unexpected PostgreSQL database name {name!r}")
    args = ["-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 5432)]
    args += ["-U", parts.username or "postgres"]
    env = dict(os.environ)
    if parts.password:
        env["PGPASSWORD"] = parts.password
    for tool in ("dropdb", "createdb"):
        if not shutil.which(tool):
            raise SetupError(f"`{tool}` not found: install the PostgreSQL client tools")
    procs.run(["dropdb", "--if-exists", *args, name], role="tools", env=env, timeout=60)
    procs.run(["createdb", *args, name], role="tools", env=env, timeout=60)


SETUP_SCRIPT = """
from accounts.models import User
from endpoints.models import Endpoint
from keys.services import create_key
from models_registry.models import Deployment, Model
user = User.objects.create_user(username="bench", password=None)
model = Model.objects.create(name="bench", price_in="0.000001", price_out="0.000002")
for n in range({deployments}):  # each its own endpoint, all on the mock upstream
    endpoint = Endpoint.objects.create(name=f"mock{{n}}", base_url="http://127.0.0.1:{port}/v1")
    Deployment.objects.create(model=model, endpoint=endpoint, upstream_name="bench")
key, secret = create_key(owner=user, name="bench", rate_limit="100000000/m", log_content=False)
print("BENCH_SECRET=" + secret)
"""


def prepare_database(env: dict, upstream_port: int, procs: Processes, deployments: int) -> str:
    """Migrate, create the bench user/endpoint/model/key; return the key's secret."""
    manage = [PYTHON, "manage.py"]
    procs.run([*manage, "migrate", "--noinput"], role="tools", env=env, timeout=300)
    out = procs.run(
        [*manage, "shell", "-c", SETUP_SCRIPT.format(port=upstream_port, deployments=deployments)],
        role="tools",
        env=env,
        timeout=120,
    )
    match = re.search(r"^BENCH_SECRET=(\S+)$", out, re.MULTILINE)
    if not match:
        raise SetupError(f"creating the bench key printed no secret:\n{out[-2000:]}")
    return match.group(1)


# Load generators --------------------------------------------------------------


@dataclass
class Target:
    label: str  # "direct" or "gateway"
    port: int
    auth: str


def wrk_version() -> str:
    out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    return (out.stdout + out.stderr).splitlines()[0].strip() if out.stdout + out.stderr else ""


def run_wrk(procs, target, concurrency, duration, stop_after=None) -> dict:
    env = dict(os.environ, BENCH_BODY=NONSTREAM_BODY, BENCH_AUTH=target.auth)
    if stop_after:
        env["BENCH_STOP_AFTER"] = str(stop_after)
    argv = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(duration))}s"]
    argv += ["--timeout", "5s", "-s", str(BENCH / "post.lua")]
    argv.append(f"http://127.0.0.1:{target.port}/v1/chat/completions")
    if stop_after:
        out = run_until_stopped(procs, argv, env, timeout=duration + 60)
    else:
        out = procs.run(argv, role="load", env=env, timeout=duration + 60)
    match = re.search(r"^BENCH_JSON (.*)$", out, re.MULTILINE)
    if not match:
        raise SetupError(f"wrk printed no summary:\n{out[-2000:]}")
    raw = json.loads(match.group(1))
    seconds = raw["duration_us"] / 1e6
    errors = sum(raw["errors"].values())
    return {
        "requests": raw["requests"],
        "errors": errors,
        "error_detail": raw["errors"],
        "duration_s": seconds,
        "rps": raw["requests"] / seconds if seconds else 0.0,
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
    }


def run_until_stopped(procs, argv, env, timeout) -> str:
    """Run wrk until post.lua says it has had its responses, then SIGINT it.

    wrk's `-d` is only the upper bound here: on SIGINT wrk stops, and its
    summary (duration included) covers the time it actually ran.
    """
    proc = procs.start(argv, role="load", env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    timer = threading.Timer(
        timeout, lambda: proc.poll() is None and proc.send_signal(signal.SIGINT)
    )
    timer.start()
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line.decode(errors="replace"))
            if line.startswith(b"BENCH_STOPPED") and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    finally:
        timer.cancel()
        procs.stop(proc)
    if proc.returncode != 0:
        raise SetupError(f"wrk exited with {proc.returncode}: {proc.stderr.read().decode()[-500:]}")
    return "".join(lines)


def run_streams(procs, target, concurrency, duration) -> dict:
    argv = [PYTHON, str(BENCH / "stream_client.py"), "--port", str(target.port)]
    argv += ["--concurrency", str(concurrency), "--duration", str(duration)]
    if target.auth:
        argv += ["--auth", target.auth]
    raw = json.loads(procs.run(argv, role="load", timeout=duration + 60))
    return {
        "requests": raw["requests"],
        "errors": raw["errors"],
        "error_detail": raw["first_errors"],
        "duration_s": raw["duration_s"],
        "rps": raw["rps"],
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "ttft_p50_ms": raw["ttft_p50_us"] / 1000,
        "ttft_p99_ms": raw["ttft_p99_us"] / 1000,
    }


def load(procs, target, scenario, duration) -> dict:
    if scenario.stream:
        return run_streams(procs, target, scenario.concurrency, duration)
    return run_wrk(procs, target, scenario.concurrency, duration)


# Measuring ------------------------------------------------------------------


class Bench:
    def __init__(self, args, procs, direct, gateway, gateway_pid, rows: LogRows):
        self.args = args
        self.procs = procs
        self.direct = direct
        self.gateway = gateway
        self.pid = gateway_pid
        self.rows = rows

    def drain_timeout(self) -> float:
        return max(30.0, 3 * self.args.duration)

    def measure(self, scenario: Scenario, target: Target) -> dict:
        via_gateway = target is self.gateway
        if self.args.warmup > 0:
            load(self.procs, target, scenario, self.args.warmup)
        baseline = self.rows.settle() if via_gateway else 0
        profiler = self.start_profiler(scenario) if via_gateway and self.args.profile else None
        cpu_before = cpu_seconds(self.pid)
        result = load(self.procs, target, scenario, self.args.duration)
        if profiler:
            self.stop_profiler(*profiler)
        if not via_gateway:
            return result
        cpu_at_stop = cpu_seconds(self.pid)
        expected = baseline + result["requests"]
        rows_at_stop = self.rows.count()
        drained, drain_s, _ = self.rows.wait_for(expected, self.drain_timeout())
        cpu_after_drain = cpu_seconds(self.pid)
        final_rows = self.rows.settle()
        requests = max(result["requests"], 1)
        result.update(
            cpu_ms_per_req=(cpu_after_drain - cpu_before) * 1000 / requests,
            cpu_ms_per_req_interval=(cpu_at_stop - cpu_before) * 1000 / requests,
            log_backlog=max(0, expected - rows_at_stop),
            log_drain_s=drain_s,
            all_logged=drained,
            unlogged=max(0, expected - final_rows),
            extra_rows=max(0, final_rows - expected),  # requests cut off by the load's end
            rss_mb=memory_mb(self.pid, "VmRSS"),
            peak_rss_mb=memory_mb(self.pid, "VmHWM"),
        )
        return result

    def start_profiler(self, scenario: Scenario):
        self.args.profile.mkdir(parents=True, exist_ok=True)
        path = self.args.profile / (re.sub(r"\W+", "-", scenario.name) + ".txt")
        argv = [str(VENV_BIN / "py-spy"), "record", "--pid", str(self.pid), "--rate", "500"]
        argv += ["--format", "raw", "--nonblocking", "--gil", "--output", str(path)]
        proc = self.procs.start(
            argv, role="load", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(0.5)  # attached before the load starts
        return proc, path

    def stop_profiler(self, proc: subprocess.Popen, path: Path) -> None:
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            proc.wait(timeout=30)
        finally:
            self.procs.stop(proc)
        print(top_functions(path), flush=True)

    def run(self) -> dict:
        runs = {s.name: {"direct": [], "gateway": []} for s in SCENARIOS}
        for repeat in range(self.args.repeat):
            for scenario in SCENARIOS:
                if self.args.only and self.args.only not in scenario.name:
                    continue
                for target in (self.direct, self.gateway):
                    note = f" (run {repeat + 1}/{self.args.repeat})" if self.args.repeat > 1 else ""
                    print(f"  {scenario.name:<16} {target.label:<8}{note} …", flush=True)
                    runs[scenario.name][target.label].append(self.measure(scenario, target))
        return {s.name: summarize(s, runs[s.name]) for s in SCENARIOS if runs[s.name]["direct"]}

    def soak(self, total: int) -> dict:
        concurrency = 64
        bound = total / 500 + 60  # seconds: generous even at a few hundred requests/s
        baseline = self.rows.settle()
        print(f"  soak: {total} non-stream requests at c={concurrency} …", flush=True)
        cpu_before = cpu_seconds(self.pid)
        with RssSampler(self.pid) as sampler:
            result = run_wrk(self.procs, self.gateway, concurrency, bound, stop_after=total)
        expected = baseline + result["requests"]
        backlog = max(0, expected - self.rows.count())
        drained, drain_s, _ = self.rows.wait_for(expected, max(60.0, total / 1000))
        cpu_ms = (cpu_seconds(self.pid) - cpu_before) * 1000 / max(result["requests"], 1)
        rss = sampler.samples

        def at(fraction: float) -> float:
            return rss[min(len(rss) - 1, max(0, round(fraction * len(rss)) - 1))]

        quarters = {f"{int(q * 100)}%": at(q) for q in (0.25, 0.5, 0.75, 1.0)}
        growth = (quarters["100%"] - quarters["50%"]) / quarters["50%"]
        return {
            "requested": total,
            "requests": result["requests"],
            "errors": result["errors"],
            "rps": result["rps"],
            "p50_ms": result["p50_ms"],
            "p99_ms": result["p99_ms"],
            "cpu_ms_per_req": cpu_ms,
            "log_backlog": backlog,
            "log_drain_s": drain_s,
            "all_logged": drained,
            "rss_mb": quarters,
            "second_half_growth": growth,
            "grew": growth > 0.05,
            "peak_rss_mb": memory_mb(self.pid, "VmHWM"),
            "rss_samples_mb": [round(mb, 1) for mb in rss],
        }

    def stall(self, seconds: float) -> dict:
        """Non-stream load at c=64 while the log table is locked for `seconds`, then 5 s free.

        The log writer can store nothing meanwhile, as in a database outage or
        one too slow for the traffic: its buffer fills to its bound and the
        oldest records are dropped. What this measures is the memory that
        costs (RSS sampled every second) and what was not stored.
        """
        concurrency, after = 64, 5.0
        baseline = self.rows.settle()
        print(f"  stall: log table locked for {seconds:g} s under c={concurrency} …", flush=True)
        with RssSampler(self.pid) as sampler:
            with self.rows.locked():
                locked = run_wrk(self.procs, self.gateway, concurrency, seconds)
            unlocked = run_wrk(self.procs, self.gateway, concurrency, after)
        # The blocked batch goes in at once; a failed one waits out its backoff.
        stored = self.rows.settle(quiet=3.0, timeout=90) - baseline
        requests = locked["requests"] + unlocked["requests"]
        return {
            "seconds": seconds,
            "requests": requests,
            "errors": locked["errors"] + unlocked["errors"],
            "rps_locked": locked["rps"],
            "stored": stored,
            "not_stored": max(0, requests - stored),
            "max_rss_mb": max(sampler.samples),
            "peak_rss_mb": memory_mb(self.pid, "VmHWM"),
            "rss_samples_mb": [round(mb, 1) for mb in sampler.samples],
        }


MEDIAN_FIELDS = (
    "rps",
    "p50_ms",
    "p99_ms",
    "ttft_p50_ms",
    "ttft_p99_ms",
    "cpu_ms_per_req",
    "cpu_ms_per_req_interval",
    "log_backlog",
    "log_drain_s",
    "rss_mb",
)


def summarize(scenario: Scenario, runs: dict) -> dict:
    """Median of each figure over the repeats, the added latency, and a noise flag."""
    out = {"stream": scenario.stream, "concurrency": scenario.concurrency, "runs": runs}
    for label, results in runs.items():
        agg = {
            k: statistics.median(r[k] for r in results) for k in MEDIAN_FIELDS if k in results[0]
        }
        agg["requests"] = sum(r["requests"] for r in results)
        agg["errors"] = sum(r["errors"] for r in results)
        if label == "gateway":
            agg["all_logged"] = all(r["all_logged"] for r in results)
            agg["unlogged"] = sum(r["unlogged"] for r in results)
            agg["peak_rss_mb"] = max(r["peak_rss_mb"] for r in results)
        rps = [r["rps"] for r in results]
        agg["rps_spread"] = (max(rps) - min(rps)) / statistics.median(rps) if rps[0] else 0.0
        out[label] = agg
    out["added_p50_ms"] = out["gateway"]["p50_ms"] - out["direct"]["p50_ms"]
    if scenario.stream:
        out["added_ttft_ms"] = out["gateway"]["ttft_p50_ms"] - out["direct"]["ttft_p50_ms"]
    out["noisy"] = any(out[label]["rps_spread"] > 0.10 for label in ("direct", "gateway"))
    return out


def evaluate(results: dict, soak: dict | None, peak_rss: float, stall=None) -> list[dict]:
    """Pass/fail per target. A partial run (--only) checks the memory targets only."""
    rss_note = "stall included" if stall else ""
    if len(results) < len(SCENARIOS):
        rss = target("peak RSS of the gateway (VmHWM)", peak_rss, 100, "MB", "<=", rss_note)
        return [rss, soak_target(soak)] if soak else [rss]
    ns1, ns64 = results["non-stream c=1"], results["non-stream c=64"]
    st1, st32 = results["stream c=1"], results["stream c=32"]
    gw64 = ns64["gateway"]
    keeps_up = gw64["all_logged"] and gw64["log_backlog"] <= max(gw64["rps"], 500)
    targets = [
        ("gateway CPU per non-stream request (c=64)", gw64["cpu_ms_per_req"], 0.5, "ms", "<="),
        (
            "gateway CPU per 20-chunk stream (c=32)",
            st32["gateway"]["cpu_ms_per_req"],
            1.0,
            "ms",
            "<=",
        ),
        ("added p50 latency, non-stream c=1", ns1["added_p50_ms"], 0.5, "ms", "<="),
        ("added TTFT p50, stream c=1", st1["added_ttft_ms"], 0.5, "ms", "<="),
        ("non-stream requests/s via gateway at c=64", gw64["rps"], 2000, "req/s", ">="),
        ("peak RSS of the gateway (VmHWM)", peak_rss, 100, "MB", "<="),
    ]
    out = []
    for name, value, limit, unit, op in targets:
        row = target(name, value, limit, unit, op, rss_note if unit == "MB" else "")
        if name.startswith("non-stream requests/s"):
            row["note"] = (
                f"all logged: {'yes' if gw64['all_logged'] else 'NO'}, backlog at stop "
                f"{gw64['log_backlog']:.0f} (≤ 1 s of traffic: {'yes' if keeps_up else 'NO'})"
            )
            row["pass"] = row["pass"] and keeps_up and gw64["errors"] == 0
        out.append(row)
    if soak:
        out.append(soak_target(soak))
    return out


def target(name, value, limit, unit, op, note="") -> dict:
    ok = value <= limit if op == "<=" else value >= limit
    return {"target": name, "value": value, "limit": limit, "unit": unit, "op": op,
            "pass": ok, "note": note}  # fmt: skip


def soak_target(soak: dict) -> dict:
    note = f"{soak['requests']} requests, all logged: {soak['all_logged']}"
    growth = soak["second_half_growth"] * 100
    row = target("soak: RSS growth over the second half", growth, 5, "%", "<=", note)
    row["pass"] = not soak["grew"]
    return row


def top_functions(path: Path, most: int = 25) -> str:
    """The functions in the most samples of a py-spy raw profile (`stack;frames count`)."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        total += int(count)
        own[frames[-1]] = own.get(frames[-1], 0) + int(count)
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + int(count)
    lines = [f"profile {path.name}: {total} samples; % of samples (with callees | own)"]
    for frame, count in sorted(inclusive.items(), key=lambda kv: -kv[1])[:most]:
        lines.append(
            f"  {100 * count / total:5.1f} | {100 * own.get(frame, 0) / total:5.1f}  {frame}"
        )
    return "\n".join(lines)


# Output -------------------------------------------------------------------------


def fmt(value, digits=2, width=8) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-".rjust(width)
    return f"{value:.{digits}f}".rjust(width)


def render(results, targets, soak: dict | None, stall: dict | None, config: dict) -> str:
    lines = [
        f"AetherGate benchmark: {config['db']}, {config['upstream']} mock upstream, "
        f"{config['duration']:g} s per run after "
        f"{config['warmup']:g} s warm-up, {config['repeat']} run(s) per scenario"
        + (" (median of runs)" if config["repeat"] > 1 else ""),
        "",
        f"{'scenario':<16} {'path':<8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'+p50 ms':>8} {'TTFT ms':>8} {'+TTFT ms':>8} {'CPU ms/req':>10} "
        f"{'RSS MB':>7} {'log backlog':>11} {'drain s':>7} {'errors':>6}",
    ]
    lines.append("-" * len(lines[-1]))
    for name, r in results.items():
        for label in ("direct", "gateway"):
            a = r[label]
            gw = label == "gateway"
            lines.append(
                f"{name if not gw else '':<16} {label:<8} {fmt(a['rps'], 0)} {fmt(a['p50_ms'], 3)} "
                f"{fmt(a['p99_ms'], 3)} {fmt(r['added_p50_ms'] if gw else None, 3)} "
                f"{fmt(a.get('ttft_p50_ms'), 3)} {fmt(r.get('added_ttft_ms') if gw else None, 3)} "
                f"{fmt(a.get('cpu_ms_per_req'), 3, 10)} {fmt(a.get('rss_mb'), 1, 7)} "
                f"{fmt(a.get('log_backlog'), 0, 11)} {fmt(a.get('log_drain_s'), 2, 7)} "
                f"{a['errors']:>6}"
            )
        if r["noisy"]:
            lines.append(f"{'':<16} note: RPS differed by more than 10% between runs (noisy)")
    if soak:
        q = soak["rss_mb"]
        lines += [
            "",
            f"soak: {soak['requests']} requests at {soak['rps']:.0f} req/s, p50 "
            f"{soak['p50_ms']:.3f} ms, p99 {soak['p99_ms']:.3f} ms, "
            f"{soak['cpu_ms_per_req']:.3f} CPU ms/req, errors {soak['errors']}, "
            f"all logged: {soak['all_logged']} (backlog at stop {soak['log_backlog']})",
            "      RSS MB at 25/50/75/100%: "
            + " / ".join(f"{q[k]:.1f}" for k in ("25%", "50%", "75%", "100%"))
            + f"; second half {soak['second_half_growth'] * 100:+.1f}%"
            + (" (GREW)" if soak["grew"] else " (stable)"),
        ]
    if stall:
        lines += [
            "",
            f"stall: log table locked {stall['seconds']:g} s under c=64: {stall['requests']} "
            f"requests ({stall['rps_locked']:.0f} req/s while locked), errors {stall['errors']}, "
            f"{stall['not_stored']} not stored (buffer bound), "
            f"RSS max {stall['max_rss_mb']:.1f} MB",
        ]
    lines += ["", f"{'target':<45} {'value':>10} {'limit':>12}  result"]
    for t in targets:
        op = "≤" if t["op"] == "<=" else "≥"
        limit = f"{op} {t['limit']} {t['unit']}"
        digits = 0 if t["unit"] in ("req/s",) else (1 if t["unit"] in ("MB", "%") else 3)
        lines.append(
            f"{t['target']:<45} {t['value']:>10.{digits}f} {limit:>12}"
            f"  {'PASS' if t['pass'] else 'FAIL'}" + (f"  ({t['note']})" if t["note"] else "")
        )
    lines.append(
        "CPU ms/req: gateway utime+stime from the start of the measured interval until its "
        "logs are written, per request."
    )
    return "\n".join(lines)


def machine_info() -> dict:
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    git = subprocess.run(
        ["git", "describe", "--always", "--dirty"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    return {
        "nproc": os.cpu_count(),
        "cpus_available": CPUS,
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "wrk": wrk_version(),
        "git": git.stdout.strip(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


# Main -------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=("sqlite", "postgres"), default=None,
                        help="database for the gateway (default: $BENCH_DB or sqlite)")  # fmt: skip
    parser.add_argument("--pg-url", default=os.environ.get("BENCH_PG_URL", DEFAULT_PG_URL),
                        help="PostgreSQL URL; the database is dropped and recreated")  # fmt: skip
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per run")
    parser.add_argument("--repeat", type=int, default=1, help="runs per scenario (median)")
    parser.add_argument("--soak", type=int, default=0, help="N non-stream requests (0: no soak)")
    parser.add_argument("--stall", type=float, default=0,
                        help="then S seconds of load, log table locked (0: none)")  # fmt: skip
    parser.add_argument("--output", type=Path, default=None, help="JSON path (default: auto)")
    parser.add_argument("--only", default="", help="run only scenarios whose name contains this")
    parser.add_argument(
        "--deployments",
        type=int,
        default=1,
        help="deployments of the bench model (weighted random over them)",
    )
    parser.add_argument("--upstream", choices=("aiohttp", "raw"), default="aiohttp",
                        help="mock upstream (bench/upstream.py); raw is the faster")  # fmt: skip
    parser.add_argument("--profile", type=Path, default=None,
                        help="sample the gateway with py-spy into this folder")  # fmt: skip
    args = parser.parse_args(argv)
    args.db = args.db or os.environ.get("BENCH_DB") or "sqlite"
    if args.db not in ("sqlite", "postgres"):
        parser.error(f"unknown database {args.db!r} (sqlite or postgres)")
    if args.repeat < 1 or args.duration <= 0:
        parser.error("--repeat must be ≥ 1 and --duration > 0")
    return args


def pick_cores() -> dict[str, list[int]]:
    """Gateway on the first core, everything else on the second (if there are two)."""
    if len(CPUS) < 2:
        return {}
    first, second = [CPUS[0]], [CPUS[1]]
    return {"gateway": first, "upstream": second, "load": second, "tools": second}


def check_request(port: int, auth: str, what: str) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        data=NONSTREAM_BODY.encode(),
        headers={"Content-Type": "application/json", **({"Authorization": auth} if auth else {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            data = json.loads(response.read())
    except Exception as e:
        detail = e.read().decode(errors="replace")[:500] if hasattr(e, "read") else ""
        raise SetupError(f"a test request {what} failed: {e} {detail}") from None
    if not data.get("choices"):
        raise SetupError(f"a test request {what} returned no choices: {data}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if not shutil.which("wrk"):
        print(
            "bench: `wrk` is not installed. Install it with: apt-get install wrk", file=sys.stderr
        )
        return 2
    if not Path("/proc/self/stat").exists():
        print("bench: needs Linux /proc to read the gateway's CPU and memory", file=sys.stderr)
        return 2

    cores = pick_cores()
    if cores:  # keep this orchestrator off the gateway's core
        os.sched_setaffinity(0, cores["load"])
    procs = Processes(cores)
    workdir = Path(tempfile.mkdtemp(prefix="aethergate-bench-"))
    gateway_log = workdir / "gateway.log"
    rows = None

    def on_sigterm(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    # Even if started with SIGINT ignored (a background job), Ctrl-C must clean up.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        sqlite_path = workdir / "bench.sqlite3" if args.db == "sqlite" else None
        db_url = f"sqlite:///{sqlite_path}" if sqlite_path else args.pg_url
        if args.db == "postgres":
            recreate_postgres(args.pg_url, procs)
        env = dict(
            os.environ,
            AETHERGATE_ENV_FILE="",
            DEBUG="false",
            SECRET_KEY=secrets.token_urlsafe(48),
            DATABASE_URL=db_url,
            AETHERGATE_LOG_LEVEL="WARNING",
            PYTHONDONTWRITEBYTECODE="1",
        )

        upstream_port, gateway_port = free_port(), free_port()
        print(f"bench: mock upstream ({args.upstream}) on :{upstream_port}, gateway on "
              f":{gateway_port}, db {args.db}, cores {cores or 'unpinned'}",
              flush=True)  # fmt: skip
        with open(workdir / "upstream.log", "wb") as log_file:  # the child keeps its own fd
            upstream = procs.start(
                [PYTHON, str(BENCH / "upstream.py"), str(upstream_port), "--server", args.upstream],
                role="upstream",
                stdout=log_file,
                stderr=log_file,
            )
        wait_for_port(upstream_port, upstream, "the mock upstream")
        check_request(upstream_port, "", "to the mock upstream")

        secret = prepare_database(env, upstream_port, procs, args.deployments)
        auth = f"Bearer {secret}"
        uvicorn = [str(VENV_BIN / "uvicorn"), "aethergate.asgi:application"]
        uvicorn += ["--host", "127.0.0.1", "--port", str(gateway_port), "--workers", "1"]
        uvicorn += ["--no-access-log", "--log-level", "warning", "--http", HTTP_PROTOCOL]
        with open(gateway_log, "wb") as log_file:
            gateway = procs.start(
                uvicorn, role="gateway", env=env, stdout=log_file, stderr=log_file
            )
        wait_for_port(gateway_port, gateway, "AetherGate")
        check_request(gateway_port, auth, "through AetherGate")

        direct = Target("direct", upstream_port, "")
        through = Target("gateway", gateway_port, auth)
        for target in (direct, through):  # one stream each way, checked by the client
            check = run_streams(procs, target, 1, 0.3)
            if check["errors"] or not check["requests"]:
                raise SetupError(f"a test stream ({target.label}) failed: {check['error_detail']}")
        rows = LogRows(args.db, db_url, sqlite_path)
        if not rows.wait_for(2, 30)[0]:
            raise SetupError("the gateway logged no rows for the test requests in 30 s")

        info = machine_info()
        print(f"bench: {info['cpu_model']}, {info['nproc']} CPUs, Python {info['python']}, "
              f"gateway {info['git']}", flush=True)  # fmt: skip
        bench = Bench(args, procs, direct, through, gateway.pid, rows)
        results = bench.run()
        soak = bench.soak(args.soak) if args.soak else None
        stall = bench.stall(args.stall) if args.stall else None
        if gateway.poll() is not None:
            raise SetupError(f"AetherGate exited during the run ({gateway.returncode})")
        peak_rss = memory_mb(gateway.pid, "VmHWM")
        targets = evaluate(results, soak, peak_rss, stall)
        config = {k: v for k, v in vars(args).items() if k not in ("output", "pg_url", "profile")}
        if args.db == "postgres":
            config["pg_url"] = args.pg_url
        table = render(results, targets, soak, stall, config)
        print("\n" + table)

        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        output = args.output or RESULTS / f"bench-{args.db}-{stamp}.json"
        output.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "machine": info,
            "config": config,
            "cores": cores,
            "scenarios": results,
            "soak": soak,
            "stall": stall,
            "peak_rss_mb": peak_rss,
            "targets": targets,
            "table": table,
        }
        output.write_text(json.dumps(report, indent=2) + "\n")
        shown = output.relative_to(ROOT) if output.is_relative_to(ROOT) else output
        print(f"\nbench: results written to {shown}")
        return 0
    except SetupError as e:
        print(f"bench: setup failed: {e}", file=sys.stderr)
        if gateway_log.exists() and gateway_log.stat().st_size:
            tail = gateway_log.read_text(errors="replace")[-3000:]
            print(f"--- gateway log (tail) ---\n{tail}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nbench: interrupted; stopping everything it started", file=sys.stderr)
        return 130
    finally:
        # A second Ctrl-C must not cut the clean-up short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if rows is not None:
            rows.close()
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
