# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Harness for the load-generator benchmark: HAProxy as a server that is never the limit, wrk and Locust runs, and
one generator step in a fresh process (``python benchmarks/_loadbench.py step ...`` prints the step as JSON).

Every server listens on 127.0.0.1 only; every wait is bounded; a missing tool raises :class:`Unavailable`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HAPROXY = "/usr/sbin/haproxy"
CAPACITY_SERVER = REPO / "tests" / "capacity_server" / "server.py"
BENCH_VENV = REPO / ".build" / "bench-venv"
LOCUST_VERSION = "2.47.0"
PERCENTILES = (50, 95, 99)

HAPROXY_CONFIG = """global
    nbthread 1
    maxconn 4096

defaults
    mode http
    timeout client 30s
    timeout connect 5s
    timeout server 30s

frontend bench
    bind 127.0.0.1:{port}
    http-request return status 200 content-type application/json string '{{"ok":true}}'
"""

LOCUSTFILE = """from locust import FastHttpUser, constant, task


class Bench(FastHttpUser):
    wait_time = constant(0)

    @task
    def get(self):
        self.client.get("/")
"""


class Unavailable(Exception):
    """A tool the benchmark needs is missing or failed: reported as such, never replaced by a figure."""


def pinned(cmd: list, core: int | None) -> list:
    """``cmd`` run on ``core`` alone (taskset), or as is when ``core`` is None."""
    return cmd if core is None else ["taskset", "-c", str(core), *cmd]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, what: str, seconds: float = 10.0) -> None:
    """Return once 127.0.0.1:``port`` accepts a connection; raise when ``proc`` exits or ``seconds`` pass."""
    for _attempt in range(int(seconds / 0.05)):
        if proc.poll() is not None:
            raise Unavailable("%s exited with status %s before listening" % (what, proc.returncode))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise Unavailable("%s did not listen on 127.0.0.1:%d within %g s" % (what, port, seconds))


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


class HAProxy:
    """HAProxy answering every request itself (``http-request return``), one thread, on ``core``."""

    def __init__(self, core: int | None) -> None:
        if not os.access(HAPROXY, os.X_OK):
            raise Unavailable("%s not found (apt-get install haproxy)" % HAPROXY)
        self.port = free_port()
        self.url = "http://127.0.0.1:%d/" % self.port
        self.core = core
        self.dir = tempfile.TemporaryDirectory(prefix="loadbench-")
        self.config = Path(self.dir.name) / "haproxy.cfg"
        self.config.write_text(HAPROXY_CONFIG.format(port=self.port))
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> HAProxy:
        check = subprocess.run(
            [HAPROXY, "-c", "-f", str(self.config)], capture_output=True, text=True, timeout=30, check=False
        )
        if check.returncode != 0:
            raise Unavailable("haproxy -c rejected the config: %s" % (check.stderr or check.stdout).strip())
        log = Path(self.dir.name) / "haproxy.log"
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                pinned([HAPROXY, "-db", "-f", str(self.config)], self.core), stdout=out, stderr=subprocess.STDOUT
            )
        try:
            wait_listening(self.port, self.proc, "haproxy")
        except Unavailable as exc:
            told = log.read_text().strip()[-500:]
            self.__exit__()
            raise Unavailable("%s: %s" % (exc, told)) from None
        return self

    def __exit__(self, *_exc) -> None:
        if self.proc is not None:
            stop(self.proc)
        self.dir.cleanup()


class CapacityServer:
    """The project's synthetic server (tests/capacity_server/server.py) with a given service-time law."""

    def __init__(self, workers: int, service: str, mean_ms: float, max_seconds: float) -> None:
        self.cmd = [
            sys.executable,
            str(CAPACITY_SERVER),
            "--workers",
            str(workers),
            "--service",
            service,
            "--mean-ms",
            str(mean_ms),
            "--metrics-style",
            "none",
            "--max-seconds",
            str(max_seconds),
        ]
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def __enter__(self) -> CapacityServer:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()  # "LISTENING <port>", or "" when it died
        if not line.startswith("LISTENING"):
            stop(self.proc)
            raise Unavailable("capacity server did not start: %r" % line)
        self.url = "http://127.0.0.1:%d/infer" % int(line.split()[1])
        return self

    def __exit__(self, *_exc) -> None:
        if self.proc is not None:
            stop(self.proc)


def run_wrk(url: str, seconds: float, connections: int, core: int | None) -> float:
    """wrk's closed-loop maximum (Requests/sec), one thread, ``connections`` connections."""
    if not shutil.which("wrk"):
        raise Unavailable("wrk not installed (apt-get install -y wrk)")
    cmd = pinned(["wrk", "-t1", "-c%d" % connections, "-d%ds" % max(1, round(seconds)), url], core)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, check=False)
    found = re.search(r"Requests/sec:\s+([\d.]+)", done.stdout)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: .*", done.stdout)
    if done.returncode != 0 or not found:
        raise Unavailable("wrk failed (status %d): %s" % (done.returncode, (done.stderr or done.stdout).strip()))
    if errors:
        raise Unavailable("wrk saw errors: %s" % errors.group(0))
    return float(found.group(1))


def locust_binary() -> Path:
    """Locust in its own venv (.build/bench-venv, created and filled with pip on first use)."""
    locust = BENCH_VENV / "bin" / "locust"
    if locust.exists():
        version = subprocess.run([str(locust), "--version"], capture_output=True, text=True, timeout=60, check=False)
        if LOCUST_VERSION in version.stdout:
            return locust
    python = shutil.which("python3.11") or sys.executable
    print("  (installing locust==%s into %s)" % (LOCUST_VERSION, BENCH_VENV), flush=True)
    for cmd in (
        [python, "-m", "venv", str(BENCH_VENV)],
        [str(BENCH_VENV / "bin" / "pip"), "install", "-q", "locust==%s" % LOCUST_VERSION],
    ):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            raise Unavailable("locust install failed: %s" % (done.stderr or done.stdout).strip()[-500:])
    return locust


def run_locust(url: str, seconds: float, users: int, core: int | None) -> float:
    """Locust's closed-loop rate (aggregated Requests/s): FastHttpUser, one process, ``users`` users, no wait."""
    locust = locust_binary()
    with tempfile.TemporaryDirectory(prefix="loadbench-locust-") as tmp:
        locustfile = Path(tmp) / "locustfile.py"
        locustfile.write_text(LOCUSTFILE)
        prefix = Path(tmp) / "run"
        cmd = [
            str(locust),
            "-f",
            str(locustfile),
            "--headless",
            "-u",
            str(users),
            "-r",
            str(users),
            "-t",
            "%ds" % max(2, round(seconds)),
            "--host",
            url.rstrip("/"),
            "--csv",
            str(prefix),
            "--only-summary",
            "--loglevel",
            "ERROR",
        ]
        done = subprocess.run(pinned(cmd, core), capture_output=True, text=True, timeout=seconds + 60, check=False)
        stats = Path("%s_stats.csv" % prefix)
        if not stats.exists():
            raise Unavailable("locust wrote no statistics (status %d): %s" % (done.returncode, done.stderr[-500:]))
        lines = stats.read_text().splitlines()
    header = lines[0].split(",")
    for line in lines[1:]:
        cells = line.split(",")
        if "Aggregated" in cells:
            failures = int(cells[header.index("Failure Count")])
            if failures:
                raise Unavailable("locust saw %d failed requests" % failures)
            return float(cells[header.index("Requests/s")])
    raise Unavailable("locust statistics have no Aggregated row")


def run_step(
    url: str,
    rate: float,
    warmup: float,
    hold: float,
    workers: int,
    core: int | None,
    record: bool = False,
    event_loop: str = "asyncio",
) -> dict:
    """One open-loop generator step at ``rate`` RPS in a fresh process (on ``core``); its summary (see :func:`step`)."""
    cmd = [sys.executable, __file__, "step", url, "%r" % rate, "%r" % warmup, "%r" % hold, str(workers)]
    cmd += ["--event-loop", event_loop]
    if record:
        cmd.append("--record")
    done = subprocess.run(pinned(cmd, core), capture_output=True, text=True, timeout=warmup + hold + 120, check=False)
    if done.returncode != 0:
        raise Unavailable("generator step at %g RPS failed: %s" % (rate, done.stderr.strip()[-800:]))
    return json.loads(done.stdout.splitlines()[-1])


def exact_percentiles_ms(latencies: list) -> dict:
    """Nearest-rank percentiles (ms) of ``latencies`` (s): the definition LatencyHistogram approximates."""
    ordered = sorted(latencies)
    return {"p%d" % p: ordered[max(1, math.ceil(p / 100.0 * len(ordered))) - 1] * 1000.0 for p in PERCENTILES}


def step(url: str, rate: float, warmup: float, hold: float, workers: int, record: bool, event_loop: str) -> dict:
    """Run one phase with ``workers`` generator processes and return the figures the benchmark reads."""
    sys.path.insert(0, str(REPO / ".build" / "collections"))
    from ansible_collections.gpu.mig.plugins.module_utils._capacity import loadgen

    runner = loadgen.Runner(
        loadgen.Target(url, method="GET"), "constant", workers=workers, record_requests=record, event_loop=event_loop
    )

    async def phase() -> dict:
        try:
            return await runner.run_phase(rate, warmup, hold)
        finally:
            runner.close()  # inside the loop: the pool's transports close on it

    result = loadgen.run_sync(phase(), event_loop)
    sent = result["scheduled"] - result["unsent"]
    summary = {
        "rate": rate,
        "workers": result["workers"],
        "achieved_rps": result["achieved_rps"],
        "sent": sent,
        "unsent": result["unsent"],
        "errors": result["errors"],
        "lag_p99_ms": result["schedule_lag_ms"]["p99"],
        "latency_ms": {"p%d" % p: result["latency_ms"]["p%d" % p] for p in PERCENTILES},
        "histogram_count": result["latency_ms"]["count"],
        "cpu_us_per_request": 1e6 * result["generator_cpu_s"] / max(1, sent),
    }
    if record:
        # the rows the histogram holds: measured requests that succeeded or timed out (index 4: latency, s)
        rows = [r for r in runner.requests if r[7] and r[5] in ("", "timeout")]
        summary["recorded"] = len(rows)
        summary["exact_ms"] = exact_percentiles_ms([r[4] for r in rows])
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description="one generator step, printed as JSON")
    parser.add_argument("mode", choices=["step"])
    parser.add_argument("url")
    parser.add_argument("rate", type=float)
    parser.add_argument("warmup", type=float)
    parser.add_argument("hold", type=float)
    parser.add_argument("workers", type=int)
    parser.add_argument("--record", action="store_true")
    parser.add_argument("--event-loop", default="asyncio", choices=["asyncio", "uvloop"])
    args = parser.parse_args()
    print(json.dumps(step(args.url, args.rate, args.warmup, args.hold, args.workers, args.record, args.event_loop)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
