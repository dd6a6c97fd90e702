# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The fleet planner on random fleets: never more GPUs than first-fit decreasing (the baseline, written out here),
every host layout planned as mig_instances plans it, memory margins, class separation, spread and capacity kept,
and on fleets already running, no busy instance destroyed."""

from __future__ import annotations

import math
import random

import pytest

from ansible_collections.gpu.mig.plugins.module_utils._mig import catalog as _catalog
from ansible_collections.gpu.mig.plugins.module_utils._mig import layout as _layout
from ansible_collections.gpu.mig.plugins.plugin_utils import service_planner as sp
from ansible_collections.gpu.mig.tests.unit.plugins.filter import mig_gpu_facts

MODELS = ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB", "NVIDIA H200", "NVIDIA A30")
FRESH_CASES = 300
RUNNING_CASES = 120


def need_mib(spec: dict) -> int:
    return math.ceil(spec["memory_gib"] * 1024 * (1 + spec["memory_margin_pct"] / 100))


def shapes(model: _catalog.GpuModel) -> list[_catalog.GpuInstanceProfile]:
    """The profiles a service may get: no media-extension twins, smallest memory (then compute) first."""
    return sorted((p for p in model.profiles if "+me" not in p.name), key=lambda p: (p.memory_mib, p.compute_slices))


def size(model: _catalog.GpuModel, profile: _catalog.GpuInstanceProfile) -> float:
    return max(profile.compute_slices / model.compute_slices, profile.placement_size / model.memory_slices)


def random_case(rng: random.Random) -> tuple[_catalog.GpuModel, dict, list, list, dict]:
    """A fleet of one GPU model over 1-3 hosts, 1-12 services; each service measured on every profile that holds it
    (rate growing with compute slices to a random power, so large slices are sometimes better) or on none."""
    model = _catalog.find_model(rng.choice(MODELS))
    hosts = {f"h{h}": [] for h in range(rng.randint(1, 3))}
    for _gpu in range(rng.randint(1, 8)):
        host = rng.choice(sorted(hosts))
        hosts[host].append(
            mig_gpu_facts.gpu(len(hosts[host]), model.name, mig=rng.choice([(True, True), (False, False)]))
        )
    largest = max(p.memory_mib for p in model.profiles)
    services, capacity = [], []
    for i in range(rng.randint(1, 12)):
        spec = {"name": f"s{i}", "class": rng.choice(sp.CLASSES), "sla": "p95<%dms" % rng.choice((50, 200, 1000)),
                "target_rps": round(rng.uniform(1, 400), 1), "headroom_pct": rng.choice((0, 10, 25, 50)),
                "memory_gib": round(rng.uniform(0.5, largest / 1024 / 1.25), 1),
                "memory_margin_pct": rng.choice((0, 10, 20)), "spread": rng.random() < 0.2,
                "min_replicas": rng.choice((1, 1, 1, 2))}  # fmt: skip
        services.append(spec)
        if rng.random() < 0.85:
            base, power = rng.uniform(5, 150), rng.uniform(0.8, 1.6)
            capacity += [{"service": spec["name"], "profile": p.name, "gpu": model.name, "sla": spec["sla"],
                          "sustained_rps": round(base * p.compute_slices**power, 2)}
                         for p in shapes(model) if p.memory_mib >= need_mib(spec)]  # fmt: skip
    facts = {host: {"gpus": gpus} for host, gpus in hosts.items() if gpus}
    return model, facts, services, capacity, {"separate_classes": rng.random() < 0.3}


def first_fit_decreasing(model: _catalog.GpuModel, services: list, capacity: list, separate: bool) -> int:
    """The baseline: each service on its smallest fitting profile (replicas to cover the demand; unmeasured: its
    minimum), replicas by size, largest first, each into the first GPU where the placement solver finds room."""
    items = []
    for spec in services:
        profile = next(p for p in shapes(model) if p.memory_mib >= need_mib(spec))
        rate = next(
            (r["sustained_rps"] for r in capacity if (r["service"], r["profile"]) == (spec["name"], profile.name)), None
        )
        demand = spec["target_rps"] * (1 + spec["headroom_pct"] / 100)
        count = max(spec["min_replicas"], math.ceil(demand / rate - 1e-9)) if rate else spec["min_replicas"]
        items += [(spec, profile)] * count
    items.sort(key=lambda item: (-size(model, item[1]), item[0]["name"]))
    gpus: list[list] = []
    for spec, profile in items:
        for gpu in gpus:
            names = {s["name"] for s, _p in gpu}
            if spec["spread"] and spec["name"] in names:
                continue
            if separate and any(s["class"] != spec["class"] for s, _p in gpu):
                continue
            if _layout.solve_placements(model, [(p, None) for _s, p in gpu] + [(profile, None)]) is not None:
                gpu.append((spec, profile))
                break
        else:
            gpus.append([(spec, profile)])
    return len(gpus)


def check_plan(model: _catalog.GpuModel, facts: dict, services: list, result: dict, separate: bool,
               slot_maps: dict | None = None) -> None:  # fmt: skip
    """Every host layout is what mig_instances plans, no busy instance is destroyed, and each service's replicas keep
    its memory margin, class, spread and capacity."""
    slots_by_service: dict[str, list] = {}
    for host, data in result["hosts"].items():
        states = [_layout.gpu_state_from_facts(g) for g in facts[host]["gpus"]]
        previous = (slot_maps or {}).get(host)
        plan = _layout.plan_layout(data["gpu_mig_layout"], states, dict.fromkeys(range(len(states)), model), previous)
        _layout.check_busy(plan)  # raises when the plan destroys an instance with running processes
        for state in states:
            for gi in state.gpu_instances if state.gpu_instances and state.mig_current else ():
                if gi.busy_pids():
                    assert any((s.gpu_index, s.start, s.profile_id) == (state.index, gi.start, gi.profile_id)
                               for s in plan.slots), (host, state.index, gi)  # fmt: skip
        classes: dict[int, set] = {}
        for slot in plan.slots:
            replica = next((p for s in result["services"].values() for p in s["placements"]
                            if (p["host"], p["slot"]) == (host, slot.name)), None)  # fmt: skip
            if replica is None:  # an instance kept as it is (busy)
                continue
            name = slot.name.rsplit("-", 1)[0]
            slots_by_service.setdefault(name, []).append((host, slot.gpu_index, slot.profile))
            classes.setdefault(slot.gpu_index, set()).add(result["services"][name]["class"])
        if separate:
            assert all(len(c) == 1 for c in classes.values()), classes
    for spec in services:
        report = result["services"][spec["name"]]
        placed = slots_by_service.get(spec["name"], [])
        assert len(placed) == len(report["placements"])
        for _host, _gpu, profile in placed:
            assert model.profile(profile).memory_mib >= need_mib(spec)
        if spec["spread"]:
            assert len({(h, g) for h, g, _p in placed}) == len(placed)
        if report["verdict"] in ("placed", "estimate"):
            demand = spec["target_rps"] * (1 + spec["headroom_pct"] / 100)
            assert report["capacity_rps"] >= demand - 0.01 and len(placed) >= spec["min_replicas"]
    summary = result["summary"]
    assert summary["gpus_needed"] >= summary["lower_bound_gpus"]
    assert summary["gpus_needed"] - summary["gpus_used"] == sum(summary["gpus_short"].values())


def test_random_fleets_never_worse_than_first_fit_decreasing_and_always_feasible():
    better = 0
    for seed in range(FRESH_CASES):
        rng = random.Random(seed)
        model, facts, services, capacity, options = random_case(rng)
        result = sp.plan_services(services, facts, capacity, options=options)
        baseline = first_fit_decreasing(model, services, capacity, options["separate_classes"])
        assert result["summary"]["gpus_needed"] <= baseline, seed
        better += result["summary"]["gpus_needed"] < baseline
        check_plan(model, facts, services, result, options["separate_classes"])
    assert better >= FRESH_CASES // 10  # the options and the emptying pass win often, not by accident


def running_fleet(rng: random.Random, model: _catalog.GpuModel, facts: dict, services: list) -> dict:
    """Instances on every MIG GPU (a random set the solver places), some busy, some named after a service's replica
    in the slot map: returns the slot maps."""
    slot_maps: dict[str, dict] = {}
    for host, data in facts.items():
        for gpu in data["gpus"]:
            gpu["mig"] = {"supported": True, "current": True, "pending": True}
            wanted = [rng.choice(shapes(model)) for _pick in range(rng.randint(0, 4))]
            starts = _layout.solve_placements(model, [(p, None) for p in wanted]) if wanted else ()
            if starts is None:
                continue
            for gi_id, (profile, start) in enumerate(zip(wanted, starts), 1):  # noqa: B905 - equal lengths
                busy = [rng.randint(100, 999)] if rng.random() < 0.3 else []
                gpu["gpu_instances"].append(
                    mig_gpu_facts.gpu_instance(model.name, gi_id, profile.name, start, processes=busy)
                )
                if rng.random() < 0.5:
                    name = "%s-%d" % (rng.choice(services)["name"], rng.randint(1, 3))
                    slot_maps.setdefault(host, {})[name] = {
                        "gpu_uuid": gpu["uuid"],
                        "profile": profile.name,
                        "placement": {"start": start, "size": profile.placement_size},
                    }
    return slot_maps


def test_random_running_fleets_keep_busy_instances_and_stay_feasible():
    for seed in range(RUNNING_CASES):
        rng = random.Random(10_000 + seed)
        model, facts, services, capacity, options = random_case(rng)
        slot_maps = running_fleet(rng, model, facts, services)
        result = sp.plan_services(services, facts, capacity, slot_maps, options)
        check_plan(model, facts, services, result, options["separate_classes"], slot_maps)


@pytest.mark.parametrize("seed", [3, 17])
def test_a_plan_is_reproducible(seed):
    _model, facts, services, capacity, options = random_case(random.Random(seed))
    assert sp.plan_services(services, facts, capacity, options=options) == sp.plan_services(
        services, facts, capacity, options=options
    )
