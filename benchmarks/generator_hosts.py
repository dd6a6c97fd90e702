# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Benchmark: one capacity test from two generator hosts against the same test from one, at a rate both hold.

Two capacity_generator agents (separate processes on 127.0.0.1, one worker each: two "hosts") and the coordinator
run the same constant-rate steps as a single-host run, against the project's synthetic server (exponential service,
mean 5 ms, so the latency has a spread). Printed per run: the hosts' clock offsets and round trips, and p50/p95/p99
of the merged histogram against the exact percentiles of the recorded requests (they must agree within the
histogram's 1/256 resolution), and the two-host figures beside the single-host ones (separate runs: sampling noise).

  .venv/bin/python benchmarks/generator_hosts.py [--rate 1500] [--hold 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

import _loadbench as bench

sys.path.insert(0, str(bench.REPO / ".build" / "collections"))

from ansible_collections.gpu.mig.plugins.module_utils._capacity import loadgen as lg

TOKEN = "benchmark-token-0123456789"
AGENT = (
    "import sys\n"
    "from ansible_collections.gpu.mig.plugins.module_utils._capacity import loadgen, remote\n"
    "loadgen.run_sync(remote.serve_generator('127.0.0.1', 0, sys.argv[1], 600, 1, connect_timeout=60,\n"
    "                 ready=lambda port: print('LISTENING', port, flush=True)))\n"
)


def config(url: str, args: argparse.Namespace, ports: list) -> dict:
    opts = {"url": url, "payload": {}, "sla": {"p99_ms": 1000, "max_schedule_lag_ms": 50}, "plan": "linear",
            "start_rps": args.rate, "max_steps": 1, "hold": args.hold, "warmup": 0.5, "initial_warmup": 0.5,
            "confirm": False, "arrival": "constant", "record_requests": True, "workers": 1}  # fmt: skip
    if ports:
        opts.update(generators=[{"host": "gen%d" % i, "address": "127.0.0.1", "port": p} for i, p in enumerate(ports)],
                    generator_token=TOKEN)  # fmt: skip
    return opts


def one_run(url: str, args: argparse.Namespace, hosts: int) -> dict:
    """One test from ``hosts`` generator hosts (0: this process alone); its step's merged and exact percentiles."""
    agents, ports = [], []
    try:
        for _host in range(hosts):
            proc = subprocess.Popen([sys.executable, "-c", AGENT, TOKEN], stdout=subprocess.PIPE, text=True,
                                    env={"PYTHONPATH": str(bench.REPO / ".build" / "collections")})  # fmt: skip
            agents.append(proc)
            line = proc.stdout.readline()
            if not line.startswith("LISTENING"):
                raise bench.Unavailable("generator agent did not start: %r" % line)
            ports.append(int(line.split()[1]))
        result = lg.run_sync(lg.run_capacity_test(config(url, args, ports)))
    finally:
        for proc in agents:
            bench.stop(proc)
    step = result["steps"][-1]
    rows = [r for r in result["requests"] if r[0] == step["index"] and r[7] and r[5] in ("", "timeout")]
    return {
        "merged": {name: step["latency_ms"][name] for name in ("p50", "p95", "p99")},
        "exact": bench.exact_percentiles_ms([r[4] for r in rows]),
        "requests": len(rows),
        "workers": step["workers"],
        "lag_p99_ms": step["schedule_lag_ms"]["p99"],
        "hosts": result["generator"].get("hosts", []),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=1500.0, help="the constant rate of the step (RPS)")
    ap.add_argument("--hold", type=float, default=4.0, help="seconds measured")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved single- and two-host runs")
    args = ap.parse_args()
    runs: dict = {0: [], 2: []}
    with bench.CapacityServer(workers=256, service="exponential", mean_ms=5.0, max_seconds=900) as server:
        for repeat in range(args.repeats):
            for hosts in (0, 2) if repeat % 2 == 0 else (2, 0):
                run = one_run(server.url, args, hosts)
                runs[hosts].append(run)
                tolerance = all(
                    abs(run["merged"][n] - run["exact"][n]) <= run["exact"][n] / 256 + 0.002 for n in run["exact"]
                )
                offsets = ", ".join("%s %+.3f ms (rtt %.3f ms)" % (h["host"], h["clock_offset_ms"], h["rtt_ms"])
                                    for h in run["hosts"]) or "one host"  # fmt: skip
                print("  %s: %d requests, send lag p99 %.3f ms; merged/exact %s: %s; %s" % (
                    "two hosts" if hosts else "one host ", run["requests"], run["lag_p99_ms"],
                    ", ".join("%s %.3f/%.3f" % (n, run["merged"][n], run["exact"][n]) for n in run["exact"]),
                    "AGREE" if tolerance else "DISAGREE", offsets), flush=True)  # fmt: skip
    print("\n===== summary: %g RPS, %g s hold, %d repeats =====" % (args.rate, args.hold, args.repeats))
    for name in ("p50", "p95", "p99"):
        one = statistics.median(r["merged"][name] for r in runs[0])
        two = statistics.median(r["merged"][name] for r in runs[2])
        print("%s: one host %.3f ms, two hosts %.3f ms (medians; ratio %.3f)" % (name, one, two, two / one))
    worst = max(abs(r["merged"][n] - r["exact"][n]) / r["exact"][n] for r in runs[2] for n in r["exact"])
    print("two hosts, merged histogram against the exact percentiles: worst relative difference %.4f (1/256 = %.4f)"
          % (worst, 1 / 256))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
