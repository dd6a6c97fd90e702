# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Benchmark: the highest open-loop rate our generator sustains on one core with p99 send lag < 1 ms, against the
maximum throughput wrk and Locust reach on the same server (closed loop, as fast as they can), and the ratios.

The rate is searched (doubling, then bisection to 5 %; each passing rate is run twice), the load average printed
with every step: other work on the machine delays the generator's timers and is part of the figure.

  .venv/bin/python benchmarks/capacity_generator.py [--seconds 4] [--server-workers 64] [--lag-ms 1]

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

from ansible_collections.gpu.mig.plugins.module_utils._capacity import loadgen as lg  # noqa: E402

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


def generator_search(
    port: int, seconds: float, start: float, max_rate: float, pin: bool = True, lag_ms: float = 1.0
) -> tuple:
    """The highest rate at which the generator keeps p99 send lag under ``lag_ms`` (1 ms), searched on one core.

    Doubles the rate while steps pass, then bisects between the last pass and the first failure down to 5 %; a step
    passes when p99 send lag < ``lag_ms`` and the server kept up (achieved >= 99 % of offered, no errors). Every
    rate that passes is re-run once (a shared machine has bad seconds); a rate passes only if both runs do.
    """
    if pin and len(CORES) > 1:
        os.sched_setaffinity(0, {LOAD_CORE})
    rows = []

    async def go():
        runner = lg.Runner(
            lg.build_target({"url": "http://127.0.0.1:%d/infer" % port, "payload": {"x": 1}, "request_timeout": 5}),
            "constant",
        )

        async def step(rate: float) -> dict:
            cpu = time.process_time()
            s = await runner.run_phase(rate, 0.5, seconds)
            cpu = time.process_time() - cpu
            lag = s["schedule_lag_ms"]["p99"]
            kept_up = s["achieved_rps"] >= 0.99 * s["offered_rps"] and not s["errors"]
            row = {
                "rate": rate,
                "achieved": s["achieved_rps"],
                "lag_p50_ms": s["schedule_lag_ms"]["p50"],
                "lag_p99_ms": lag,
                "p99_ms": s["latency_ms"]["p99"],
                "errors": s["errors"],
                "kept_up": kept_up,
                "cpu_us_per_request": round(1e6 * cpu / max(1, s["scheduled"]), 1),
                "load": os.getloadavg()[0],
            }
            row["ok"] = kept_up and lag is not None and lag < lag_ms
            rows.append(row)
            print(
                "  generator %7.0f RPS: achieved %8.1f, send lag p50 %6.3f p99 %7.3f ms, latency p99 %7.2f ms,"
                " %5.1f us CPU/request, load %.2f%s%s"
                % (
                    rate,
                    s["achieved_rps"],
                    row["lag_p50_ms"] or -1,
                    lag or -1,
                    s["latency_ms"]["p99"] or -1,
                    row["cpu_us_per_request"],
                    row["load"],
                    "" if kept_up else "  (server fell behind)",
                    " errors %s" % s["errors"] if s["errors"] else "",
                ),
                flush=True,
            )
            return row

        async def passes(rate: float) -> bool:
            return (await step(rate))["ok"] and (await step(rate))["ok"]

        try:
            await runner.run_phase(start, 0.0, 1.0, -1, "warmup")
            good, bad = None, None
            rate = start
            for _step in range(12):  # doubling: at most 12 rungs
                if rate > max_rate:
                    break
                if await passes(rate):
                    good = rate
                    rate *= 2
                else:
                    bad = rate
                    break
            for _step in range(8):  # bisection to 5 %
                if good is None or bad is None or bad / good <= 1.05:
                    break
                mid = round((good * bad) ** 0.5)
                if await passes(mid):
                    good = mid
                else:
                    bad = mid
            return good
        finally:
            runner.close()

    best = asyncio.run(go())
    return rows, best


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
    ap.add_argument("--max-rate", type=float, default=40000.0)
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument(
        "--no-pin", action="store_true", help="let the scheduler place the generator (busy shared machines)"
    )
    ap.add_argument(
        "--lag-ms",
        type=float,
        default=1.0,
        help="p99 send lag a searched rate must stay under (a busy shared machine cannot hold 1 ms at any rate)",
    )
    args = ap.parse_args()
    print(
        "cores available: %s; server on core %d, load tool on core %d; load average before: %s (other work on the"
        " machine delays the generator's timers: read the send lag with it)"
        % (CORES, SERVER_CORE, LOAD_CORE, os.getloadavg())
    )
    figures = {}
    # each tool gets a fresh server: a step that overran leaves connections and backlog behind
    for tool in ("generator", "wrk", "locust"):
        proc, port = start_server(args.server_workers)
        try:
            if tool == "generator":
                rows, best = generator_search(
                    port, args.seconds, args.start, args.max_rate, not args.no_pin, args.lag_ms
                )
                figures["generator_rps_lag_%gms" % args.lag_ms] = best
                for limit in sorted(set(LAG_LIMITS_MS) - {args.lag_ms}):
                    good = [
                        r["rate"]
                        for r in rows
                        if r["kept_up"] and r["lag_p99_ms"] is not None and r["lag_p99_ms"] < limit
                    ]
                    figures["generator_rps_lag_%gms" % limit] = max(good, default=None)
                cpu = [r["cpu_us_per_request"] for r in rows if r["ok"]]
                figures["generator_cpu_us_per_request"] = min(cpu) if cpu else None
            elif tool == "wrk":
                figures["wrk_rps"] = run_wrk(port, args.seconds, 64)
            else:
                figures["locust_rps"] = run_locust(port, args.seconds, 64)
            print("  (load average after %s: %s)" % (tool, os.getloadavg()), flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    print()
    for limit in sorted({args.lag_ms, *LAG_LIMITS_MS}):
        gen = figures["generator_rps_lag_%gms" % limit]
        how = "searched" if limit == args.lag_ms else "highest rate measured during the search"
        print("generator (open loop, one event loop) with p99 send lag < %g ms (%s): %s RPS" % (limit, how, gen))
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
    if figures.get("generator_cpu_us_per_request"):
        print("generator CPU per request at a passing rate: %.1f us" % figures["generator_cpu_us_per_request"])
    print("load average after: %s" % (os.getloadavg(),))
    if args.json:
        Path(args.json).write_text(json.dumps({"figures": figures, "ladder": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
