# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Benchmark: capacity error and total test time of the adaptive plan versus the linear plan on the ground-truth
server (c workers, known service time; true capacity c / E[S]).

  .venv/bin/python benchmarks/capacity_plans.py [--hold 2] [--workers 4] [--service-ms 20] [--step-pct 15]

The true capacity of the deterministic server (constant arrivals) is exactly c / S: the queue grows above it.
For the exponential server (Poisson arrivals) the reference is the exact M/M/c rate at which p95 reaches the SLA.
All traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / ".build" / "collections"))
SERVER = REPO / "tests" / "capacity_server" / "server.py"

from ansible_collections.gpu.mig.plugins.module_utils import _capacity as cap  # noqa: E402
from ansible_collections.gpu.mig.plugins.module_utils import _loadgen as lg  # noqa: E402


def start_server(workers: int, service_ms: float, law: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [
            sys.executable,
            str(SERVER),
            "--workers",
            str(workers),
            "--mean-ms",
            str(service_ms),
            "--service",
            law,
            "--max-seconds",
            "1800",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    return proc, int(proc.stdout.readline().split()[1])


def run_plan(port: int, plan: str, args, arrival: str, sla_ms: float) -> dict:
    opts = {
        "url": "http://127.0.0.1:%d/infer" % port,
        "payload": {"x": 1},
        "sla": {"p95_ms": sla_ms, "max_schedule_lag_ms": 50, "baseline_factor": 0},
        "plan": plan,
        "arrival": arrival,
        "start_rps": args.start_rps,
        "step_pct": args.step_pct,
        "max_rps": args.max_rps,
        "max_steps": 40,
        "resolution": args.resolution,
        "warmup": args.warmup,
        "hold": args.hold,
        "initial_warmup": 0.5,
        "concurrency": args.workers,
        "metrics_urls": ["http://127.0.0.1:%d/metrics" % port],
        "metrics_interval": 0.2,
        "time_limit": 1800,
    }
    t = time.monotonic()
    res = lg.run_sync(lg.run_capacity_test(opts))
    res["wall_s"] = time.monotonic() - t
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--service-ms", type=float, default=20.0)
    ap.add_argument("--start-rps", type=float, default=50.0)
    ap.add_argument("--max-rps", type=float, default=600.0)
    ap.add_argument("--step-pct", type=float, default=15.0)
    ap.add_argument("--resolution", type=float, default=0.03)
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--hold", type=float, default=2.0)
    ap.add_argument("--sla-ms", type=float, default=90.0, help="p95 SLA for the exponential case")
    ap.add_argument("--law", choices=["deterministic", "exponential", "both"], default="both")
    args = ap.parse_args()
    sat = args.workers / (args.service_ms / 1000.0)
    cases = [
        ("deterministic", "constant", 10 * args.service_ms, sat, "c/S = %g RPS (queue grows above it)" % sat),
    ]
    mmc = cap.predict_capacity(args.workers, args.service_ms / 1000.0, args.sla_ms, 0.95, 1.0, 1.0)["rate_rps"]
    cases.append(
        (
            "exponential",
            "poisson",
            args.sla_ms,
            mmc,
            "exact M/M/%d p95 = %g ms at %.1f RPS (+ network overhead)" % (args.workers, args.sla_ms, mmc),
        )
    )
    print(
        "%-14s %-9s %6s %10s %10s %9s %8s %7s"
        % ("server", "plan", "steps", "sustained", "truth", "error %", "time s", "knee")
    )
    for law, arrival, sla_ms, truth, why in cases:
        if args.law not in ("both", law):
            continue
        proc, port = start_server(args.workers, args.service_ms, law)
        try:
            for plan in ("linear", "adaptive"):
                res = run_plan(port, plan, args, arrival, sla_ms)
                c = res["capacity"]
                steps = len([s for s in res["steps"] if s["kind"] == "step"])
                sus = c["sustained_rps"]
                truth_here = truth
                if law == "exponential" and res["prediction"].get("overhead_ms") is not None:
                    # the loopback overhead adds to every response: the reference accounts for it
                    truth_here = cap.predict_capacity(
                        args.workers, args.service_ms / 1000.0, sla_ms - res["prediction"]["overhead_ms"], 0.95
                    )["rate_rps"]
                err = None if sus is None else 100.0 * (sus - truth_here) / truth_here
                print(
                    "%-14s %-9s %6d %10s %10.1f %9s %8.1f %7s"
                    % (
                        law,
                        plan,
                        steps,
                        sus,
                        truth_here,
                        "n/a" if err is None else "%+.1f" % err,
                        res["wall_s"],
                        c["knee_rps"],
                    ),
                    flush=True,
                )
                if c["knee_reasons"]:
                    print("    knee: %s" % "; ".join(c["knee_reasons"])[:160])
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        print("  truth for %s: %s" % (law, why))
    return 0


if __name__ == "__main__":
    sys.exit(main())
