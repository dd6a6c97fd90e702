# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The fleet planner: its input rules, its verdicts, and crafted fleets whose optimum is derived by hand below."""

from __future__ import annotations

import math

import pytest
from ansible.errors import AnsibleFilterError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ansible_collections.gpu.mig.plugins.filter.plan_services import plan_services as plan_filter
from ansible_collections.gpu.mig.plugins.module_utils._mig import catalog as _catalog
from ansible_collections.gpu.mig.plugins.module_utils._mig import layout as _layout
from ansible_collections.gpu.mig.plugins.plugin_utils import service_planner as sp
from ansible_collections.gpu.mig.tests.unit.plugins.filter import mig_gpu_facts

H100 = "NVIDIA H100 80GB HBM3"
A100 = "NVIDIA A100-SXM4-40GB"


def service(name, memory_gib, target, cls="fast", sla="p95<100ms", **extra):
    return {"name": name, "class": cls, "sla": sla, "target_rps": target, "headroom_pct": 0, "memory_gib": memory_gib,
            **extra}  # fmt: skip


def rows(name, rates, sla="p95<100ms", gpu="H100"):
    """Capacity table rows: ``rates`` maps a profile to its sustained rate at ``sla``."""
    return [{"service": name, "profile": p, "gpu": gpu, "sustained_rps": r, "sla": sla} for p, r in rates.items()]


def fleet(count, name=H100, host="h"):
    return {host: {"gpus": [name] * count}}


def plan(services, fleet_, capacity=(), **options):
    return sp.plan_services(services, fleet_, list(capacity), options=options or None)


def gpus_of(result, name):
    return [(p["host"], p["gpu"]) for p in result["services"][name]["placements"]]


# ---------------------------------------------------------------------------------------------------------------------
# Inputs: one rule table per kind, every problem at once


def test_every_problem_of_every_input_is_listed_at_once():
    bad = [
        {"name": "Chat", "class": "urgent", "sla": "p95<fast", "target_rps": 0, "memory_gib": 4, "model": {}},
        {"name": "ocr", "class": "background", "sla": {"p95_ms": 300}, "target_rps": 5},
        {"name": "ocr", "class": "fast", "sla": {"p95_ms": 300}, "target_rps": 5, "spread": "yes",
         "model": {"parameters_b": 7, "precision": "fp12"}, "deploy": {"name": "x", "port": 8000}, "colour": 1},
    ]  # fmt: skip
    capacity = [
        {"service": "ocr", "profile": "9g.99gb", "gpu": "H100", "sustained_rps": 3, "sla": "p95<300ms"},
        {"service": "ocr", "profile": "1g.10gb", "gpu": "H100", "sustained_rps": -1},
    ]
    fleet_ = {"h": {"gpus": [H100, "NVIDIA RTX 9090"]}, "g": "facts?"}
    with pytest.raises(sp.PlanError) as err:
        sp.plan_services(bad, fleet_, capacity, options={"separate_classes": "no"})
    text = "\n".join(err.value.problems)
    for expected in (
        "services[0].name must be 1-20 lowercase letters",
        "services[0].class must be one of fast, background",
        "services[0].sla: cannot parse the term 'p95<fast'",
        "services[0].sla names no latency percentile",
        "services[0].target_rps must be > 0",
        "services[0].model.parameters_b is required",
        "services[0]: give the memory as memory_gib or as model",
        "services[1]: give the memory as memory_gib or as model",
        "services[2].spread must be true or false",
        "services[2].model.precision must be one of fp32, fp16, bf16, fp8, int8, int4",
        "services[2].colour is not an option here",
        "services[2].deploy.name: the planner names each replica",
        "services: name 'ocr' is used 2 times; names must be unique",
        "fleet.h.gpus[1]: 'NVIDIA RTX 9090' is not a MIG GPU model of the catalog",
        "fleet.g must be the host's nvidia_mig facts",
        "capacity[0]: NVIDIA H100 80GB HBM3 has no profile '9g.99gb'",
        "capacity[1].sustained_rps must be >= 0, got -1",
        "capacity[1].sla is required",
        "options.separate_classes must be true or false",
    ):
        assert expected in text, expected
    assert len(err.value.problems) == 20


def test_malformed_facts_and_slot_maps_name_the_host():
    broken = {"h": {"gpus": [{"index": 0, "name": H100, "mig": {"supported": True}, "profiles": [{"id": 1}]}]}}
    with pytest.raises(sp.PlanError) as err:
        sp.plan_services([service("a", 4, 1)], broken, slot_maps={"h": {"a-1": {"profile": "1g.10gb"}}, "x": {}})
    text = "\n".join(err.value.problems)
    assert "fleet.h: the GPU facts are malformed (KeyError" in text
    assert "slot_maps.h: slot 'a-1': 'placement' is required" in text
    assert "slot_maps.x: no such host in the fleet" in text


def test_a_gpu_name_matching_several_fleet_models_is_refused():
    mixed = {"h": {"gpus": [H100, "NVIDIA H100 PCIe"]}}
    with pytest.raises(sp.PlanError, match="matches several GPU models of the fleet"):
        plan([service("a", 4, 1)], mixed, rows("a", {"1g.10gb": 5}))


def test_the_filter_refuses_with_every_problem_and_plans_otherwise():
    with pytest.raises(AnsibleFilterError, match=r"cannot be planned:\n- services\[0\]\.class"):
        plan_filter([service("a", 4, 1, cls="batch")], fleet(1))
    result = plan_filter([service("a", 4, 10)], fleet(1), rows("a", {"1g.10gb": 20}), separate_classes=True)
    assert result["services"]["a"]["verdict"] == "placed"
    assert result["summary"]["separate_classes"] is True


# ---------------------------------------------------------------------------------------------------------------------
# Memory and profiles


def test_memory_from_parameters_kv_cache_overhead_and_margin():
    chat = {"name": "chat", "class": "fast", "sla": "p95<300ms", "target_rps": 1,
            "model": {"parameters_b": 7, "precision": "fp16", "kv_mib_per_request": 512, "max_concurrency": 8}}  # fmt: skip
    weights = 7e9 * 2 / 2**20  # 13351.4 MiB
    base = weights + 512 * 8 + 1024  # 18471.4 MiB
    result = plan([chat], fleet(1), rows("chat", {"1g.20gb": 5, "3g.40gb": 20}, "p95<300ms"), estimate=False)
    report = result["services"]["chat"]
    assert report["memory_mib"] == math.ceil(base * 1.10) == 20319
    assert report["concurrency"] == 8  # the queueing model's c defaults to the model's max_concurrency
    # 20319 MiB no longer fits 1g.20gb (20091 MiB) once the 10 % margin is added: 3g.40gb is the smallest that holds it
    assert report["profile"] == "3g.40gb"
    without_margin = plan([{**chat, "memory_margin_pct": 0}], fleet(1), rows("chat", {"1g.20gb": 5}, "p95<300ms"))
    assert without_margin["services"]["chat"]["profile"] == "1g.20gb"


def test_a_measured_profile_too_small_for_the_memory_is_not_used_and_said_so():
    result = plan([service("a", 12, 10)], fleet(1), rows("a", {"1g.10gb": 50, "1g.20gb": 20}))
    report = result["services"]["a"]
    assert report["profile"] == "1g.20gb"
    assert any("measured on 1g.10gb, but 13517 MiB needed" in r for r in report["reasons"])


# ---------------------------------------------------------------------------------------------------------------------
# Capacity: measured, estimated, unknown


def test_measured_estimated_and_measure_first_verdicts():
    services = [service("m", 4, 30), service("e", 4, 30), service("u", 4, 30)]
    capacity = rows("m", {"1g.10gb": 10}) + rows("e", {"2g.20gb": 40})
    result = plan(services, fleet(2), capacity, estimate=False)
    m, e, u = (result["services"][n] for n in "meu")
    assert (m["verdict"], m["profile"], m["replicas"], m["capacity_rps"]) == ("placed", "1g.10gb", 3, 30)
    assert m["capacity"] == {"kind": "measured", "basis": "measured on NVIDIA H100 80GB HBM3 1g.10gb"}
    assert (e["verdict"], e["profile"], e["replicas"], e["headroom_pct"]) == ("placed", "2g.20gb", 1, 33.3)
    assert (u["verdict"], u["profile"], u["replicas"]) == ("measure first", "1g.10gb", 1)
    assert u["tests"] == result["capacity_tests"] == [
        {"service": "u", "profile": "1g.10gb", "gpu": H100, "sla": "p95<100ms", "target_rps": 30.0,
         "start_rps": 7.5, "concurrency": 1, "host": "h"}
    ]  # fmt: skip
    # With estimates, e's 2g.20gb measurement gives every other profile an estimate, labelled with its basis.
    estimated = plan(services, fleet(2), capacity)["services"]["e"]
    kinds = {o["profile"]: o["kind"] for o in estimated["options"]}
    assert kinds == {"1g.10gb": "estimate", "1g.20gb": "estimate", "2g.20gb": "measured", "3g.40gb": "estimate",
                     "4g.40gb": "estimate", "7g.80gb": "estimate"}  # fmt: skip
    one_g = next(o for o in estimated["options"] if o["profile"] == "1g.10gb")
    assert "estimate from measured on NVIDIA H100 80GB HBM3 2g.20gb (40 rps at p95<100ms)" in one_g["basis"]
    assert "service time x 2/1 compute slices" in one_g["basis"]


def test_an_estimate_reproduces_the_queueing_model_of_the_capacity_engine():
    """1g measured at 20 rps, c=4, p95<100 ms: the planner's 2g estimate is the M/M/4 SLA rate at half the service
    time that M/M/4 needs to give exactly 20 rps on 1g (``_capacity.mmc_sla_rate`` computes both here)."""
    from ansible_collections.gpu.mig.plugins.module_utils._capacity import analysis

    result = plan([service("a", 4, 200, concurrency=4)], fleet(1), rows("a", {"1g.10gb": 20}))
    two_g = next(o for o in result["services"]["a"]["options"] if o["profile"] == "2g.20gb")
    low, high = 1e-6, 4 / 20
    for _step in range(60):  # the service time at which M/M/4 holds p95 < 100 ms up to exactly 20 rps
        mid = (low + high) / 2
        low, high = (mid, high) if analysis.mmc_sla_rate(4, mid, 0.1, 0.95) >= 20 else (low, mid)
    assert two_g["rate_per_replica_rps"] == pytest.approx(analysis.mmc_sla_rate(4, low / 2, 0.1, 0.95), rel=1e-3)
    assert two_g["kind"] == "estimate"


def test_a_capacity_test_result_counts_with_its_concurrency_and_sla():
    result_json = {
        "schema": "gpu.mig/capacity/v1",
        "service": {"service": "a", "profile": "1g.10gb", "gpu": H100, "host": "loadgen1"},
        "sla": {"percentiles_ms": {"p95": 100.0, "p99": 250.0}, "max_error_rate": 0.0},
        "capacity": {"sustained_rps": 20.0, "knee_rps": 23.0},
        "prediction": {"available": True, "c": 6, "service_ms": 30.0},
    }
    report = plan([service("a", 4, 15)], fleet(1), [result_json])["services"]["a"]
    assert report["verdict"] == "placed"  # measured at p95<100 and p99<250: at least as strict as p95<100 alone
    assert report["capacity"]["basis"] == "measured on NVIDIA H100 80GB HBM3 1g.10gb from loadgen1"
    two_g = next(o for o in report["options"] if o["profile"] == "2g.20gb")
    assert "c=6" in two_g["basis"]


def test_a_looser_measurement_is_recomputed_at_the_service_sla_and_a_failed_one_excludes_its_profile():
    loose = plan([service("a", 4, 10, sla="p95<50ms")], fleet(1), rows("a", {"1g.10gb": 30}))["services"]["a"]
    one_g = next(o for o in loose["options"] if o["profile"] == "1g.10gb")
    assert one_g["kind"] == "estimate" and "at the service's SLA" in one_g["basis"]
    assert one_g["rate_per_replica_rps"] < 30
    failed = [{"service": "a", "profile": "1g.10gb", "gpu": "H100", "sustained_rps": None, "sla": "p95<100ms",
               "verdict": "below lowest step"}]  # fmt: skip
    report = plan([service("a", 4, 10)], fleet(1), failed + rows("a", {"2g.20gb": 10}))["services"]["a"]
    assert "1g.10gb" not in {o["profile"] for o in report["options"]}
    assert report["profile"] == "2g.20gb"


# ---------------------------------------------------------------------------------------------------------------------
# Whole GPUs


def test_memory_beyond_the_largest_profile_takes_a_whole_gpu_without_mig_preferring_a_non_mig_gpu():
    big = service("big", 72.2, 5)  # 72.2 GiB x 1.1 = 81326 MiB: beyond 7g.80gb's 81152 MiB, within the GPU's 81559
    result = plan([big], fleet(2))
    report = result["services"]["big"]
    assert report["verdict"] == "dedicated GPU" and "beyond the largest MIG profile" in report["reasons"][0]
    assert result["hosts"]["h"]["gpu_mig_layout"] == [{"gpus": 0, "mig_enabled": False}]
    assert report["tests"][0]["profile"] == "whole"
    plain = mig_gpu_facts.gpu(1, "NVIDIA H200", mig=None)  # 143771 MiB, MIG not supported here
    mixed = {"h": {"gpus": [mig_gpu_facts.gpu(0, H100), plain]}}
    result = plan([big], mixed, [{"service": "big", "profile": "whole", "gpu": "H200", "sustained_rps": 5,
                                  "sla": "p95<100ms"}])  # fmt: skip
    assert result["services"]["big"]["placements"][0]["gpu"] == 1
    assert result["hosts"]["h"]["gpu_mig_layout"] == []
    assert result["hosts"]["h"]["gpus"][1]["note"].startswith("no MIG here")


def test_a_fleet_without_mig_gives_each_service_a_whole_gpu_no_mig_here():
    plain = {"h": {"gpus": [mig_gpu_facts.gpu(0, "NVIDIA L4", mig=None), mig_gpu_facts.gpu(1, "NVIDIA L4", mig=None)]}}
    result = plan([service("a", 4, 5), service("b", 4, 5, cls="background")], plain)
    assert {n: s["verdict"] for n, s in result["services"].items()} == {"a": "no MIG here", "b": "no MIG here"}
    assert sorted(gpus_of(result, "a") + gpus_of(result, "b")) == [("h", 0), ("h", 1)]


def test_whole_gpu_capacity_on_a_gpu_without_mig_sets_the_replicas():
    plain = {"h": {"gpus": [mig_gpu_facts.gpu(i, "NVIDIA L4", mig=None) for i in range(3)]}}
    whole = [{"service": "a", "profile": "whole", "gpu": "L4", "sustained_rps": 4, "sla": "p95<100ms"}]
    report = plan([service("a", 4, 10)], plain, whole)["services"]["a"]
    assert (report["verdict"], report["replicas"], report["capacity_rps"]) == ("no MIG here", 3, 12)
    assert report["capacity"]["basis"] == "measured on NVIDIA L4 whole"


def test_a_mixed_fleet_plans_each_service_on_the_model_it_was_measured_on():
    mixed = {"a": {"gpus": [A100]}, "b": {"gpus": [H100]}}
    capacity = rows("x", {"1g.5gb": 10}, gpu="A100") + rows("y", {"1g.10gb": 10}, gpu="H100")
    result = plan([service("x", 4, 10), service("y", 4, 10)], mixed, capacity)
    assert gpus_of(result, "x") == [("a", 0)] and gpus_of(result, "y") == [("b", 0)]
    assert [o["gpu_model"] for o in result["services"]["x"]["options"]] == [A100] * 6  # 1g.5gb ... 7g.40gb


_JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)
_SPEC = st.dictionaries(st.sampled_from([*sp.SERVICE_RULES, "other"]), _JUNK, max_size=8)
_ROW = st.dictionaries(st.sampled_from([*sp.ROW_RULES, "verdict"]), _JUNK, max_size=6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    services=st.lists(_SPEC, max_size=3),
    capacity=st.lists(_ROW, max_size=2),
    gpus=st.lists(
        st.one_of(
            st.sampled_from([H100, A100, "junk"]),
            st.dictionaries(st.sampled_from([*sp.GPU_RULES, "profiles"]), _JUNK, max_size=4),
        ),
        max_size=3,
    ),
)
def test_malformed_inputs_are_refused_by_name_never_with_a_traceback(services, capacity, gpus):
    valid = [service("ok", 4, 5)]
    try:
        result = sp.plan_services(services + valid, {"h": {"gpus": gpus}}, capacity)
    except sp.PlanError as err:
        assert err.problems and all(isinstance(p, str) and p for p in err.problems)
    else:
        assert "ok" in result["services"]


# ---------------------------------------------------------------------------------------------------------------------
# Crafted fleets with a hand-derived optimum


def test_one_large_slice_beats_many_small_and_the_optimum_is_one_gpu():
    """x (8 GiB -> 9011 MiB: fits 1g.10gb) needs 55 rps: 1g.10gb gives 10 rps (6 replicas, 6 compute slices),
    2g.20gb 30 rps (2 replicas, 4 slices), 4g.40gb 60 rps (1 replica, 4 slices, more memory). y (30 GiB -> 33792 MiB:
    3g.40gb at least) needs 40 rps: one 3g.40gb. x can take no fewer than 4 compute slices and y no fewer than 3, so
    7 of the GPU's 7: one GPU is the optimum, reached with 2g + 2g + 3g (memory 2 + 2 + 4 = 8 of 8 slices). The
    smallest profile per service (x on 6 x 1g.10gb, y on 3g.40gb) needs 9 compute slices: 2 GPUs."""
    services = [service("x", 8, 55), service("y", 30, 40, cls="background")]
    capacity = rows("x", {"1g.10gb": 10, "2g.20gb": 30, "4g.40gb": 60}) + rows("y", {"3g.40gb": 40})
    result = plan(services, fleet(3), capacity, estimate=False)
    assert result["summary"]["gpus_used"] == result["summary"]["lower_bound_gpus"] == 1
    assert (result["services"]["x"]["profile"], result["services"]["x"]["replicas"]) == ("2g.20gb", 2)
    assert result["hosts"]["h"]["gpu_mig_layout"] == [
        {"gpus": 0, "mig_enabled": True,
         "slots": [{"name": "y-1", "profile": "3g.40gb"}, {"name": "x-1", "profile": "2g.20gb"},
                   {"name": "x-2", "profile": "2g.20gb"}]}
    ]  # fmt: skip


def test_memory_slices_bind_before_compute_slices():
    """Four services on 3g.40gb (4 memory slices each) and two on 1g.10gb: two 3g.40gb fill a GPU's 8 memory slices
    (6 of 7 compute slices), so the 1g.10gb pair needs a third GPU. Bound: ceil((4 x 4 + 2 x 1) / 8) = 3."""
    services = [service(n, 30, 40) for n in "abcd"] + [service(n, 5, 20, cls="background") for n in "ef"]
    capacity = [r for n in "abcd" for r in rows(n, {"3g.40gb": 40})] + [
        r for n in "ef" for r in rows(n, {"1g.10gb": 20})
    ]
    result = plan(services, fleet(5), capacity, estimate=False)
    assert result["summary"]["gpus_used"] == result["summary"]["lower_bound_gpus"] == 3
    assert result["summary"]["spare"] == {"gpus": 2, "compute_slices": 3 * 7 - 14, "memory_slices": 3 * 8 - 18}
    assert result["summary"]["gpus_available"] == 5


def test_spread_and_separate_classes():
    """s (fast, spread) needs 50 rps at 20 per 1g.10gb: 3 replicas on 3 distinct GPUs; b (background) one 4g.40gb
    that fits beside a 1g.10gb (5 compute slices): 3 GPUs. Kept apart from the fast class, b needs a 4th."""
    services = [service("s", 5, 50, spread=True), service("b", 35, 10, cls="background")]
    capacity = rows("s", {"1g.10gb": 20}) + rows("b", {"4g.40gb": 10})
    together = plan(services, fleet(4), capacity, estimate=False)
    assert len(set(gpus_of(together, "s"))) == 3
    assert together["summary"]["gpus_used"] == 3
    apart = plan(services, fleet(4), capacity, estimate=False, separate_classes=True)
    assert apart["summary"]["gpus_used"] == 4
    assert not set(gpus_of(apart, "s")) & set(gpus_of(apart, "b"))


def test_a_spread_service_makes_the_planner_try_the_other_options():
    """2 x H100-80GB. chat needs 120 rps: one 7g.80gb (120) or two 4g.40gb (60 each); cls (spread) needs 100 rps: four
    1g.10gb (25 each) or two 2g.20gb (50 each); ocr needs 40 rps: two 1g.10gb (20 each). Lower bound: compute
    ceil((7 + 4 + 2) / 7) = 2. A 7g.80gb takes a whole GPU, so spread cls then needs two more GPUs (4 in all with
    1g.10gb, one per replica); four spread 1g.10gb need four GPUs whatever chat takes. The only 2-GPU layout is
    per GPU chat 4g.40gb + cls 2g.20gb + ocr 1g.10gb: 7 compute and 7 memory slices each."""
    services = [service("chat", 30, 120), service("cls", 8, 100, spread=True), service("ocr", 4, 40)]
    capacity = (
        rows("chat", {"4g.40gb": 60, "7g.80gb": 120})
        + rows("cls", {"1g.10gb": 25, "2g.20gb": 50})
        + rows("ocr", {"1g.10gb": 20})
    )
    result = plan(services, fleet(2), capacity, estimate=False)
    summary = result["summary"]
    assert summary["gpus_needed"] == summary["gpus_used"] == summary["lower_bound_gpus"] == 2
    assert summary["gpus_short"] == {}
    picked = {n: (s["verdict"], s["profile"], s["replicas"]) for n, s in result["services"].items()}
    assert picked == {
        "chat": ("placed", "4g.40gb", 2),
        "cls": ("placed", "2g.20gb", 2),
        "ocr": ("placed", "1g.10gb", 2),
    }
    assert len(set(gpus_of(result, "cls"))) == 2


def test_a_fleet_too_small_says_how_many_gpus_it_lacks():
    services = [service(n, 30, 40) for n in "abcde"]  # five 3g.40gb, two per GPU: 3 GPUs
    capacity = [r for n in "abcde" for r in rows(n, {"3g.40gb": 40})]
    result = plan(services, fleet(2), capacity, estimate=False)
    assert result["summary"]["gpus_short"] == {H100: 1}
    assert (result["summary"]["gpus_needed"], result["summary"]["gpus_available"]) == (3, 2)
    lacking = [n for n, s in result["services"].items() if s["verdict"] == "not placed"]
    assert len(lacking) == 1 and "the fleet needs more NVIDIA H100 80GB HBM3 GPUs" in result["services"][lacking[0]][
        "reasons"][-1]  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------------
# An existing fleet: minimal change


def test_kept_busy_and_moved_instances_on_an_existing_fleet():
    """GPU 0 holds a busy 1g.10gb nobody names, y-1 (idle 3g.40gb at 4) and x-1 (idle 1g.10gb at 2); x now wants
    2g.20gb. y-1 stays, the busy instance stays, x-1 is destroyed and x's replicas are created (x-1 counts as moved)."""
    idle = [mig_gpu_facts.gpu_instance(H100, 1, "7g.80gb", 0)]
    instances = [
        mig_gpu_facts.gpu_instance(H100, 1, "1g.10gb", 0, processes=[4242]),
        mig_gpu_facts.gpu_instance(H100, 2, "3g.40gb", 4),
        mig_gpu_facts.gpu_instance(H100, 3, "1g.10gb", 2),
    ]
    facts = {
        "h": {"gpus": [mig_gpu_facts.gpu(0, H100, instances=instances), mig_gpu_facts.gpu(1, H100, instances=idle)]}
    }
    uuid = facts["h"]["gpus"][0]["uuid"]
    slot_map = {"y-1": {"gpu_uuid": uuid, "profile": "3g.40gb", "placement": {"start": 4, "size": 4}},
                "x-1": {"gpu_uuid": uuid, "profile": "1g.10gb", "placement": {"start": 2, "size": 1}}}  # fmt: skip
    services = [service("x", 8, 30), service("y", 30, 40, cls="background")]
    capacity = rows("x", {"2g.20gb": 30}) + rows("y", {"3g.40gb": 40})
    result = sp.plan_services(services, facts, capacity, {"h": slot_map}, {"estimate": False})
    changes = result["hosts"]["h"]["changes"]
    assert "y-1" in changes["keep"] and "gpu0-1g-10gb-0" in changes["keep"]
    assert changes["create"] == ["x-1"] and changes["moved"] == ["x-1"]
    assert result["services"]["x"]["moved"] == ["h: x-1"]
    assert [(d["profile"], d["start"], d["busy_pids"]) for d in changes["destroy"]] == [("1g.10gb", 2, [])]
    assert gpus_of(result, "x") == [("h", 0)]  # x fits beside what runs: GPU 1 stays free
    assert (
        result["hosts"]["h"]["gpus"][1]["note"]
        == "holds 1 idle GPU instance(s) no service of the plan uses; left as they are"
    )
    assert [entry["gpus"] for entry in result["hosts"]["h"]["gpu_mig_layout"]] == [0]  # GPU 1 is left untouched
    layout = result["hosts"]["h"]["gpu_mig_layout"]
    assert {"name": "gpu0-1g-10gb-0", "profile": "1g.10gb", "placement": 0} in layout[0]["slots"]
    assert {"name": "y-1", "profile": "3g.40gb", "placement": 4} in layout[0]["slots"]


def test_replica_specs_carry_deploy_fields_with_ports_per_replica():
    deploy = {
        "server": "triton",
        "port": 8000,
        "backend_port": 18000,
        "command": ["/opt/tritonserver/bin/tritonserver"],
    }
    result = plan([service("a", 4, 50, sla={"p95_ms": 100, "p99_ms": 300}, deploy=deploy)], fleet(1),
                  rows("a", {"1g.10gb": 20}, "p95<100ms, p99<300ms"), estimate=False)  # fmt: skip
    specs = result["hosts"]["h"]["inference_service_specs"]
    assert [(s["name"], s["slot"], s["port"], s["backend_port"]) for s in specs] == [
        ("a-1", "a-1", 8000, 18000), ("a-2", "a-2", 8001, 18003), ("a-3", "a-3", 8002, 18006)]  # fmt: skip
    assert specs[0]["sla"] == {"p95_ms": 100.0, "p99_ms": 300.0, "target_rps": round(50 / 3, 3)}
    assert specs[0]["command"] == deploy["command"]
    assert "limits" not in specs[0]  # no concurrency given: the server's own default stays
    with_c = plan([service("a", 4, 50, concurrency=4, deploy=deploy)], fleet(1), rows("a", {"1g.10gb": 20}))
    assert with_c["hosts"]["h"]["inference_service_specs"][0]["limits"] == {"max_concurrency": 4}


def test_every_planned_host_layout_is_what_mig_instances_plans():
    """On A100-40GB facts: x (9011 MiB) on 6 x 1g.10gb (12 of 8 memory slices) or 2 x 2g.10gb, y (33792 MiB) only
    on 7g.40gb, a GPU of its own."""
    services = [service("x", 8, 55), service("y", 30, 40, cls="background")]
    capacity = rows("x", {"1g.10gb": 10, "2g.10gb": 30}, gpu="A100") + rows("y", {"7g.40gb": 40}, gpu="A100")
    facts = {"h": {"gpus": [mig_gpu_facts.gpu(i, A100) for i in range(3)]}}
    result = plan(services, facts, capacity, estimate=False)
    assert result["services"]["y"]["profile"] == "7g.40gb" and result["summary"]["gpus_used"] == 2
    assert (result["services"]["x"]["profile"], result["services"]["x"]["replicas"]) == ("2g.10gb", 2)
    states = [_layout.gpu_state_from_facts(g) for g in facts["h"]["gpus"]]
    models = dict.fromkeys(range(3), _catalog.find_model(A100))
    planned = _layout.plan_layout(result["hosts"]["h"]["gpu_mig_layout"], states, models)
    placed = sorted(p["slot"] for s in result["services"].values() for p in s["placements"])
    assert sorted(s.name for s in planned.slots) == placed == ["x-1", "x-2", "y-1"]
