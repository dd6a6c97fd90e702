# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Benchmark: capacity error and total test time of the adaptive plan versus the linear plan.

  .venv/bin/python benchmarks/capacity_plans.py [--trials 40] [--real] [--law both]

Two kinds of figures:

* virtual time (default): each plan is run ``--trials`` times against an M/M/c queue simulated in virtual time
  (tests/unit/capacity/virtual_mmc.py), judged by the same code as a real test. The error against the exact
  Erlang-C SLA rate and the time the test would take are properties of the plan and its holds, not of how busy
  this machine is; the spread over trials is what a single real run can land anywhere in.
* ``--real``: one run of each plan against the ground-truth servers on 127.0.0.1 (tests/capacity_server/server.py,
  deterministic, c / S with constant arrivals; tests/unit/capacity/mmc_server.py, independent exponential service,
  Poisson arrivals, SLA p95). The load average is printed with them: on a shared machine it moves the figures.

The exponential case: 16 workers x 10 ms (1600 RPS at saturation), SLA p95 < 40 ms, true SLA capacity from Erlang C.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COLLECTIONS = REPO / ".build" / "collections"
sys.path.insert(0, str(COLLECTIONS))
SERVER = REPO / "tests" / "capacity_server" / "server.py"
MMC_SERVER = REPO / "tests" / "unit" / "capacity" / "mmc_server.py"

from ansible_collections.gpu.mig.plugins.module_utils._capacity import analysis as cap  # noqa: E402
from ansible_collections.gpu.mig.plugins.module_utils._capacity import loadgen as lg  # noqa: E402
from ansible_collections.gpu.mig.tests.unit.capacity import virtual_mmc  # noqa: E402

WORKERS = 16
SERVICE_MS = 10.0
SLA_MS = 40.0
SAT = WORKERS / (SERVICE_MS / 1000.0)
# what a one-minute test can afford: short search steps, longer steps at the knee, a long confirmation
HOLDS = {"step": 2.0, "knee": 4.0, "confirm": 8.0}
WARMUP = 1.5


def plans(kind: str):
    if kind == "adaptive":
        return cap.AdaptivePlan(SAT / 4, max_rps=SAT * 1.25, resolution=0.02)
    if kind == "adaptive, no confirmation":
        return cap.AdaptivePlan(SAT / 4, max_rps=SAT * 1.25, resolution=0.02, confirm=False)
    # the linear plan needs a fine step to resolve 5 %; it starts where a careful user would, at half saturation
    return cap.LinearPlan(SAT / 2, step_pct=4, max_rps=SAT * 1.25, max_steps=40)


def linear_holds() -> dict:
    # a linear plan has no "close to the knee" steps: every step gets the knee hold, the confirmation its own
    return {"step": HOLDS["knee"], "knee": HOLDS["knee"], "confirm": HOLDS["confirm"]}


def virtual(trials: int) -> None:
    sla = cap.parse_sla({"p95_ms": SLA_MS, "baseline_factor": 0})
    truth = cap.mmc_sla_rate(WORKERS, SERVICE_MS / 1000.0, SLA_MS / 1000.0, 0.95)
    print(
        "virtual time: M/M/%d, exponential %g ms, Poisson arrivals, SLA p95 < %g ms: exact SLA capacity %.1f RPS "
        "(saturation %g); %d trials per plan" % (WORKERS, SERVICE_MS, SLA_MS, truth, SAT, trials)
    )
    print(
        "%-26s %8s %8s %8s %10s %9s %9s %7s"
        % ("plan", "err mean", "err sd", "max|err|", "within 5%", "time mean", "time max", "steps")
    )
    for kind in ("linear", "adaptive, no confirmation", "adaptive"):
        errors, seconds, steps = [], [], []
        holds = linear_holds() if kind == "linear" else HOLDS
        for seed in range(trials):
            st, capacity, took = virtual_mmc.run_plan(
                plans(kind), sla, holds, WARMUP, WORKERS, SERVICE_MS / 1000.0, seed
            )
            errors.append(100.0 * ((capacity["sustained_rps"] or 0.0) - truth) / truth)
            seconds.append(took)
            steps.append(len(st))
        print(
            "%-26s %+7.2f%% %7.2f%% %7.1f%% %9.0f%% %8.1fs %8.1fs %7.1f"
            % (
                kind,
                statistics.mean(errors),
                statistics.stdev(errors),
                max(abs(e) for e in errors),
                100.0 * sum(1 for e in errors if abs(e) <= 5.0) / len(errors),
                statistics.mean(seconds),
                max(seconds),
                statistics.mean(steps),
            ),
            flush=True,
        )


def start_server(script: Path, law: str, workers: int, service_ms: float) -> tuple[subprocess.Popen, int]:
    args = [sys.executable, str(script), "--workers", str(workers), "--mean-ms", str(service_ms)]
    env = dict(os.environ, PYTHONPATH=str(COLLECTIONS))  # mmc_server.py imports the shared server from there
    proc = subprocess.Popen(
        [*args, "--service", law, "--max-seconds", "1800"], stdout=subprocess.PIPE, text=True, env=env
    )
    return proc, int(proc.stdout.readline().split()[1])


def real(law_filter: str) -> None:
    print("\nreal runs on 127.0.0.1 (load average %s)" % (os.getloadavg(),))
    print(
        "%-14s %-9s %6s %10s %16s %9s %8s %7s"
        % ("server", "plan", "steps", "sustained", "truth", "error %", "time s", "knee")
    )
    cases = [
        # deterministic: 4 workers x 20 ms, constant arrivals, loose SLA: the knee is where the queue grows (200 RPS)
        ("deterministic", SERVER, 4, 20.0, "constant", 200.0),
        ("exponential", MMC_SERVER, WORKERS, SERVICE_MS, "poisson", SLA_MS),
    ]
    for law, script, workers, service_ms, arrival, sla_ms in cases:
        if law_filter not in ("both", law):
            continue
        proc, port = start_server(script, law, workers, service_ms)
        sat = workers / (service_ms / 1000.0)
        try:
            for kind in ("linear", "adaptive"):
                holds = HOLDS if kind == "adaptive" else linear_holds()
                opts = {
                    "url": "http://127.0.0.1:%d/infer" % port,
                    "payload": {"x": 1},
                    "sla": {"p95_ms": sla_ms, "max_schedule_lag_ms": 200, "baseline_factor": 0},
                    "plan": kind,
                    "arrival": arrival,
                    "start_rps": sat / 4 if kind == "adaptive" else sat / 2,
                    "step_pct": 4,
                    "max_rps": sat * 1.25,
                    "max_steps": 40,
                    "resolution": 0.02,
                    "warmup": WARMUP,
                    "hold": holds["step"],
                    "knee_hold": holds["knee"],
                    "confirm_hold": holds["confirm"],
                    "initial_warmup": 1.0,
                    "baseline_rps": sat / 4,
                    "concurrency": workers,
                    "metrics_urls": ["http://127.0.0.1:%d/metrics" % port],
                    "metrics_interval": 0.2,
                    "time_limit": 1800,
                }
                t = time.monotonic()
                res = lg.run_sync(lg.run_capacity_test(opts))
                wall = time.monotonic() - t
                c = res["capacity"]
                if law == "deterministic":
                    truth, why = sat, "%g" % sat
                else:
                    # the exact M/M/c rate, less the client's measured mean overhead (see the ground-truth test)
                    ov = res["prediction"].get("overhead_ms") or 0.0
                    truth = cap.mmc_sla_rate(workers, service_ms / 1000.0, (sla_ms - ov) / 1000.0, 0.95)
                    why = "%.1f (-%.1fms)" % (truth, ov)
                sus = c["sustained_rps"]
                err = None if sus is None else 100.0 * (sus - truth) / truth
                print(
                    "%-14s %-9s %6d %10s %16s %9s %8.1f %7s"
                    % (
                        law,
                        kind,
                        len([s for s in res["steps"] if s["kind"] == "step"]),
                        sus,
                        why,
                        "n/a" if err is None else "%+.1f" % err,
                        wall,
                        c["knee_rps"],
                    ),
                    flush=True,
                )
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    print("load average after: %s" % (os.getloadavg(),))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=40, help="virtual-time runs per plan (0: none)")
    ap.add_argument("--real", action="store_true", help="also run each plan once against the real servers")
    ap.add_argument("--law", choices=["deterministic", "exponential", "both"], default="both")
    args = ap.parse_args()
    if args.trials:
        virtual(args.trials)
    if args.real:
        real(args.law)
    return 0


if __name__ == "__main__":
    sys.exit(main())
