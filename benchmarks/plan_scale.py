# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Benchmark: the fleet planner (gpu.mig.plan_services) on 500 services over 200 GPUs, on one core.

  .venv/bin/python benchmarks/plan_scale.py [--services 500] [--gpus 200] [--model 'NVIDIA H100 80GB HBM3'] [--seed 1]

The fleet is 8 GPUs per host, MIG off (to be enabled by the plan). The services are a seeded mix of small
classifiers, mid-size models and LLMs (memory 1-70 GiB, fast or background, p95 or p95+p99 SLAs, 10 % with
``spread``); 90 % come with one measured profile (so every other profile is an estimate through the queueing model),
10 % with none (``measure first``). Prints the planning time (CPU seconds of this one process, and wall time), the
GPUs the plan uses or needs against the lower bound (per GPU model, the total compute slices and memory slices of
each service's leanest option), and the winning option ranking. Goal: under 10 s.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / ".build" / "collections"))

from ansible_collections.gpu.mig.plugins.module_utils._mig import catalog as _catalog  # noqa: E402
from ansible_collections.gpu.mig.plugins.plugin_utils import service_planner as _planner  # noqa: E402

KINDS = (  # (share of services, memory GiB range, target rps range, SLA)
    (0.62, (1, 8), (20, 300), "p95<50ms, p99<150ms"),
    (0.27, (9, 17), (5, 80), "p95<300ms"),
    (0.09, (20, 36), (1, 30), "p95<2s, p99<5s"),
    (0.02, (40, 70), (1, 10), "p95<2s, p99<5s"),
)


def workload(count: int, model: _catalog.GpuModel, rng: random.Random) -> tuple[list, list]:
    """``count`` services and their capacity rows (one measured profile each for 90 % of them)."""
    services, capacity = [], []
    for i in range(count):
        _share, memory, target, sla = rng.choices(KINDS, weights=[k[0] for k in KINDS])[0]
        spec = {"name": "svc%d" % i, "class": rng.choice(_planner.CLASSES), "sla": sla,
                "target_rps": round(rng.uniform(*target), 1), "headroom_pct": rng.choice((10, 20, 30)),
                "memory_gib": round(rng.uniform(*memory), 1), "concurrency": rng.choice((1, 2, 4, 8)),
                "spread": rng.random() < 0.1}  # fmt: skip
        services.append(spec)
        need = spec["memory_gib"] * 1024 * 1.1
        fitting = [p for p in model.profiles if p.memory_mib >= need and "+me" not in p.name]
        if fitting and rng.random() < 0.9:
            profile = rng.choice(fitting)
            rate = spec["target_rps"] * rng.uniform(1.0, 3.0) * profile.compute_slices / 3
            capacity.append({"service": spec["name"], "profile": profile.name, "gpu": model.name, "sla": sla,
                             "sustained_rps": round(rate, 2)})  # fmt: skip
    return services, capacity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=500)
    parser.add_argument("--gpus", type=int, default=200)
    parser.add_argument("--model", default="NVIDIA H100 80GB HBM3")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    model = _catalog.find_model(args.model)
    rng = random.Random(args.seed)
    services, capacity = workload(args.services, model, rng)
    hosts = -(-args.gpus // 8)
    fleet = {"gpu%03d" % h: {"gpus": [model.name] * min(8, args.gpus - 8 * h)} for h in range(hosts)}
    cpu, wall = time.process_time(), time.perf_counter()
    result = _planner.plan_services(services, fleet, capacity)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    summary = result["summary"]
    verdicts: dict[str, int] = {}
    for report in result["services"].values():
        verdicts[report["verdict"]] = verdicts.get(report["verdict"], 0) + 1
    replicas = sum(r["replicas"] for r in result["services"].values())
    print("fleet planner: %d services (%d replicas) over %d x %s" % (len(services), replicas, args.gpus, model.name))
    print("time: %.2f s CPU, %.2f s wall (goal < 10 s)" % (cpu, wall))
    print(
        "GPUs: %d used, %d needed, %d available; lower bound %d (+%d, %.1f %%); options ranked by %s"
        % (
            summary["gpus_used"],
            summary["gpus_needed"],
            summary["gpus_available"],
            summary["lower_bound_gpus"],
            summary["gpus_needed"] - summary["lower_bound_gpus"],
            100.0 * (summary["gpus_needed"] - summary["lower_bound_gpus"]) / max(summary["lower_bound_gpus"], 1),
            summary["options_ranked_by"],
        )
    )
    print("spare on used GPUs: %(compute_slices)d compute slices, %(memory_slices)d memory slices" % summary["spare"])
    print("verdicts: " + ", ".join("%s %d" % item for item in sorted(verdicts.items())))


if __name__ == "__main__":
    main()
