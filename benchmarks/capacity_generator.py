# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Benchmark: the highest open-loop rate our generator sustains on one core with p99 send lag < 1 ms, against the
maximum throughput wrk and Locust reach on the same server (closed loop, as fast as they can), and the ratios.

  .venv/bin/python benchmarks/capacity_generator.py [--seconds 4] [--server-workers 64]

The server (tests/capacity_server/server.py, zero service time) gets one core, the load tool the other
(taskset). The server may saturate before a tool does; each line says which side ran out. All traffic goes to
127.0.0.1. wrk comes from Debian (apt-get install wrk) and Locust from pip; a missing one is reported, not faked.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / ".build" / "collections"))
SERVER = REPO / "tests" / "capacity_server" / "server.py"

from ansible_collections.gpu.mig.plugins.module_utils import _loadgen as lg  # noqa: E402

CORES = sorted(os.sched_getaffinity(0))
LAG_LIMITS_MS = (1.0, 5.0, 10.0)
SERVER_CORE = CORES[-1]
LOAD_CORE = CORES[0]


def start_server(workers: int) -> tuple[subprocess.Popen, int]:
    cmd = [
        sys.executable,
        str(SERVER),
        "--workers",
        str(workers),
        "--mean-ms",
        "0",
        "--metrics-style",
        "none",
        "--max-seconds",
        "900",
    ]
    if shutil.which("taskset") and len(CORES) > 1:
        cmd = ["taskset", "-c", str(SERVER_CORE), *cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    return proc, int(line.split()[1])


def generator_ladder(port: int, seconds: float, start: float, factor: float, max_rate: float, pin: bool = True) -> list:
    """Step up the rate on one core until p99 send lag >= 1 ms or the server stops keeping up."""
    if pin and len(CORES) > 1:
        os.sched_setaffinity(0, {LOAD_CORE})
    rows = []

    async def go():
        runner = lg.Runner(
            lg.build_target({"url": "http://127.0.0.1:%d/infer" % port, "payload": {"x": 1}, "request_timeout": 5}),
            "constant",
        )
        try:
            await runner.run_phase(start, 0.0, 1.0, -1, "warmup")
            rate = start
            bad = 0
            while rate <= max_rate and bad < 2:
                s = await runner.run_phase(rate, 0.5, seconds)
                lag = s["schedule_lag_ms"]["p99"]
                kept_up = s["achieved_rps"] >= 0.99 * s["offered_rps"] and not s["errors"]
                ok = kept_up and lag is not None and lag < max(LAG_LIMITS_MS)
                rows.append(
                    {
                        "rate": rate,
                        "achieved": s["achieved_rps"],
                        "lag_p99_ms": lag,
                        "p99_ms": s["latency_ms"]["p99"],
                        "errors": s["errors"],
                        "kept_up": kept_up,
                    }
                )
                print(
                    "  generator %7.0f RPS: achieved %8.1f, send lag p99 %7.3f ms, latency p99 %7.2f ms%s%s"
                    % (
                        rate,
                        s["achieved_rps"],
                        lag or -1,
                        s["latency_ms"]["p99"] or -1,
                        ""
                        if kept_up
                        else (
                            "  (generator saturated)" if (lag or 0) >= max(LAG_LIMITS_MS) else "  (server fell behind)"
                        ),
                        " errors %s" % s["errors"] if s["errors"] else "",
                    ),
                    flush=True,
                )
                bad = 0 if ok else bad + 1
                rate = round(rate * factor)
        finally:
            runner.close()

    asyncio.run(go())
    return rows


def run_wrk(port: int, seconds: float, connections: int) -> float | None:
    if not shutil.which("wrk"):
        print("  wrk: NOT AVAILABLE (apt-get install wrk)")
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write('wrk.method = "POST"\nwrk.body = \'{"x":1}\'\nwrk.headers["Content-Type"] = "application/json"\n')
        script = fh.name
    cmd = [
        "wrk",
        "-t1",
        "-c%d" % connections,
        "-d%ds" % max(1, int(seconds)),
        "-s",
        script,
        "http://127.0.0.1:%d/infer" % port,
    ]
    if shutil.which("taskset") and len(CORES) > 1:
        cmd = ["taskset", "-c", str(LOAD_CORE), *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, check=False).stdout
    os.unlink(script)
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    rps = float(m.group(1)) if m else None
    lat = re.search(r"Latency\s+(\S+)", out)
    print(
        "  wrk (1 thread, %d connections, closed loop): %s RPS, mean latency %s"
        % (connections, rps, lat.group(1) if lat else "?")
    )
    return rps


LOCUSTFILE = """
from locust import constant, task
from locust.contrib.fasthttp import FastHttpUser

class U(FastHttpUser):
    wait_time = constant(0)

    @task
    def infer(self):
        self.client.post("/infer", data='{"x":1}', headers={"Content-Type": "application/json"})
"""


def run_locust(port: int, seconds: float, users: int) -> float | None:
    locust = Path(sys.executable).parent / "locust"
    if not locust.exists():
        print("  locust: NOT AVAILABLE (pip install locust)")
        return None
    with tempfile.TemporaryDirectory() as tmp:
        lf = Path(tmp) / "locustfile.py"
        lf.write_text(LOCUSTFILE)
        cmd = [
            str(locust),
            "-f",
            str(lf),
            "--headless",
            "-u",
            str(users),
            "-r",
            str(users),
            "-t",
            "%ds" % max(2, int(seconds)),
            "--host",
            "http://127.0.0.1:%d" % port,
            "--csv",
            str(Path(tmp) / "r"),
            "--only-summary",
            "--loglevel",
            "ERROR",
        ]
        if shutil.which("taskset") and len(CORES) > 1:
            cmd = ["taskset", "-c", str(LOAD_CORE), *cmd]
        subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
        stats = Path(tmp) / "r_stats.csv"
        if not stats.exists():
            print("  locust: ran but wrote no statistics")
            return None
        lines = stats.read_text().splitlines()
        header = lines[0].split(",")
        for line in lines[1:]:
            cells = line.split(",")
            if "Aggregated" in cells:
                rps = float(cells[header.index("Requests/s")])
                print("  locust (FastHttpUser, %d users, no wait, closed loop): %.1f RPS" % (users, rps))
                return rps
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--server-workers", type=int, default=64)
    ap.add_argument("--start", type=float, default=500.0)
    ap.add_argument("--factor", type=float, default=1.25)
    ap.add_argument("--max-rate", type=float, default=40000.0)
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument(
        "--no-pin", action="store_true", help="let the scheduler place the generator (busy shared machines)"
    )
    args = ap.parse_args()
    print(
        "cores available: %s; server on core %d, load tool on core %d; load average before: %s (other work on the"
        " machine delays the generator's timers: read the send lag with it)"
        % (CORES, SERVER_CORE, LOAD_CORE, os.getloadavg())
    )
    figures = {}
    proc, port = start_server(args.server_workers)
    try:
        rows = generator_ladder(port, args.seconds, args.start, args.factor, args.max_rate, not args.no_pin)
        for limit in LAG_LIMITS_MS:
            good = [r["rate"] for r in rows if r["kept_up"] and r["lag_p99_ms"] is not None and r["lag_p99_ms"] < limit]
            figures["generator_rps_lag_%gms" % limit] = max(good, default=None)
        time.sleep(1.0)
        figures["wrk_rps"] = run_wrk(port, args.seconds, 64)
        time.sleep(1.0)
        figures["locust_rps"] = run_locust(port, args.seconds, 64)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    print()
    for limit in LAG_LIMITS_MS:
        gen = figures["generator_rps_lag_%gms" % limit]
        print("generator (open loop, one event loop) with p99 send lag < %g ms: %s RPS" % (limit, gen))
        for tool in ("wrk", "locust"):
            other = figures.get(tool + "_rps")
            if other and gen:
                print(
                    "  generator / %-6s = %.3f  (%s: %.0f RPS closed loop at full speed)"
                    % (tool, gen / other, tool, other)
                )
            else:
                print(
                    "  generator / %-6s = n/a (%s)"
                    % (tool, "no generator rate met this lag" if other else tool + " unavailable or failed")
                )
    print("load average after: %s" % (os.getloadavg(),))
    if args.json:
        Path(args.json).write_text(json.dumps({"figures": figures, "ladder": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
