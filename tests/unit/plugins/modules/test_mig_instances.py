# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""mig_instances against the simulated NVML: order-free solving, stable UUIDs, exact check mode, safe failures."""

from __future__ import annotations

import pynvml
import pytest

from ansible_collections.gpu.mig.plugins.modules import mig_instances
from ansible_collections.gpu.mig.tests.unit.plugins.module_utils._mig.slot_prediction import assert_predicted

SEED = [
    {"name": "chat", "profile": "3g.20gb"},
    {"name": "classifier", "profile": "2g.10gb"},
    {"name": "ocr", "profile": "1g.5gb"},
]


def layout(slots, gpus=0):
    return {"layout": [{"gpus": gpus, "slots": slots}]}


@pytest.mark.parametrize("order", [["3g.20gb", "4g.20gb"], ["4g.20gb", "3g.20gb"]])
def test_any_feasible_order_applies(sim_host, run_module, order):
    sim_host("A100-SXM4-40GB:mig=on", init=False)
    slots = [{"name": f"s{i}", "profile": p} for i, p in enumerate(order)]
    result, failed = run_module(mig_instances, layout(slots))
    assert not failed, result.get("msg")
    assert result["changed"] is True
    assert sorted(s["profile"] for s in result["slots"].values()) == ["3g.20gb", "4g.20gb"]
    assert all(s["mig_uuid"].startswith("MIG-") for s in result["slots"].values())
    again, _unused = run_module(mig_instances, layout(slots))
    assert again["changed"] is False and again["slots"] == result["slots"]


def test_changing_one_slot_of_three_keeps_the_other_uuids(sim_host, run_module):
    sim_host("A100-SXM4-40GB:mig=on", init=False)
    first, _unused = run_module(mig_instances, layout(SEED))
    changed = [SEED[0], SEED[1], {"name": "ocr", "profile": "1g.10gb"}]
    second, failed = run_module(mig_instances, layout(changed))
    assert not failed, second.get("msg")
    for name in ("chat", "classifier"):
        assert second["slots"][name]["mig_uuid"] == first["slots"][name]["mig_uuid"]
    assert second["slots"]["ocr"]["mig_uuid"] != first["slots"]["ocr"]["mig_uuid"]
    assert second["slots"]["ocr"]["profile"] == "1g.10gb"


def test_check_mode_predicts_the_real_plan_and_changes_nothing(sim_host, run_module, snapshot):
    host = sim_host("H100-80GB:mig=on", instances=["0:1g.10gb@6"], init=False)
    spec = layout([{"name": "chat", "profile": "3g.40gb"}, {"name": "ocr", "profile": "1g.10gb"}])
    before = snapshot(host)
    checked, _unused = run_module(mig_instances, spec, check_mode=True)
    assert snapshot(host) == before
    real, _unused = run_module(mig_instances, spec)
    assert checked["plan"] == real["plan"] and checked["changed"] is real["changed"] is True
    assert checked["slots"]["ocr"]["mig_uuid"] == real["slots"]["ocr"]["mig_uuid"]  # kept instance
    assert checked["slots"]["chat"]["mig_uuid"] is None and real["slots"]["chat"]["mig_uuid"].startswith("MIG-")


def test_diff_mode_shows_before_and_after(sim_host, run_module):
    sim_host("A100-SXM4-40GB:mig=on", init=False)
    result, _unused = run_module(mig_instances, layout(SEED), check_mode=True, diff=True)
    assert "3g.20gb" not in result["diff"]["before"] and "3g.20gb" in result["diff"]["after"]
    assert "slot=chat" in result["diff"]["after"]


def test_busy_instance_is_refused_naming_slot_gpu_instance_and_pids(sim_host, run_module, snapshot):
    host = sim_host("A100-SXM4-40GB:mig=on", instances=["0:7g.40gb"], init=False)
    gi_id = host.state().live(0)["gpu_instances"][0]["id"]
    pid = host.add_process(f"0:{gi_id}:0:512")
    before = snapshot(host)
    result, failed = run_module(mig_instances, layout(SEED))
    assert failed and result["changed"] is False
    assert str(pid) in result["msg"] and "GPU 0 (GPU-" in result["msg"] and "slot 'chat'" in result["msg"]
    assert "force" in result["msg"]
    assert snapshot(host) == before
    forced, failed = run_module(mig_instances, dict(layout(SEED), force=True))
    assert not failed and forced["changed"] and str(pid) in forced["warnings_busy"][0]


def test_infeasible_layout_fails_before_any_change_and_proposes(sim_host, run_module, snapshot):
    host = sim_host("A100-SXM4-40GB:mig=on", instances=["0:1g.5gb@0"], init=False)
    before = snapshot(host)
    slots = [{"name": "a", "profile": "4g.20gb"}, {"name": "b", "profile": "4g.20gb"}]
    result, failed = run_module(mig_instances, layout(slots))
    assert failed and result["changed"] is False and "4g.20gb" in result["msg"]
    assert snapshot(host) == before


@pytest.mark.parametrize(
    ("slots", "expected"),
    [
        ([{"name": "a", "profile": "9g.99gb"}], "9g.99gb"),
        ([{"name": "a", "profile": "1g.5gb"}, {"name": "a", "profile": "1g.5gb"}], "'a'"),
        ([{"name": "Bad Name", "profile": "1g.5gb"}], "Bad Name"),
        ([{"name": "a", "profile": "3g.20gb", "placement": 2}], "placement"),
    ],
)
def test_invalid_slots_are_clear_errors(sim_host, run_module, snapshot, slots, expected):
    host = sim_host("A100-SXM4-40GB:mig=on", init=False)
    before = snapshot(host)
    result, failed = run_module(mig_instances, layout(slots))
    assert failed and expected in result["msg"]
    assert snapshot(host) == before


def test_failed_create_restores_the_starting_layout_and_rerun_converges(sim_host, run_module):
    host = sim_host("A100-SXM4-40GB:mig=on", instances=["0:3g.20gb@4", "0:1g.5gb@0"], init=False)
    start = {(g["profile_id"], g["start"]) for g in host.state().live(0)["gpu_instances"]}
    host.fault("nvmlDeviceCreateGpuInstanceWithPlacement", pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES, times=1)
    spec = layout([{"name": "big", "profile": "4g.20gb"}, {"name": "small", "profile": "2g.10gb"}])
    result, failed = run_module(mig_instances, spec)
    assert failed and result["restored"] is True and "restored" in result["msg"]
    assert {(g["profile_id"], g["start"]) for g in host.state().live(0)["gpu_instances"]} == start
    rerun, failed = run_module(mig_instances, spec)
    assert not failed and rerun["changed"]
    assert sorted(s["profile"] for s in rerun["slots"].values()) == ["2g.10gb", "4g.20gb"]


def test_state_absent_clears_and_is_idempotent(sim_host, run_module):
    sim_host("A100-SXM4-40GB:mig=on", "H100-80GB:mig=on", instances=["0:1g.5gb", "1:1g.10gb"], init=False)
    result, failed = run_module(mig_instances, {"state": "absent", "gpus": ["0"]})
    assert not failed and result["changed"]
    gpus = result["ansible_facts"]["nvidia_mig"]["gpus"]
    assert gpus[0]["gpu_instances"] == [] and len(gpus[1]["gpu_instances"]) == 1
    again, _unused = run_module(mig_instances, {"state": "absent", "gpus": ["0"]})
    assert again["changed"] is False


def test_hopper_mig_is_enabled_on_the_way(sim_host, run_module):
    sim_host("H100-80GB", init=False)
    result, failed = run_module(mig_instances, layout([{"name": "chat", "profile": "3g.40gb"}]))
    assert not failed and result["slots"]["chat"]["mig_uuid"].startswith("MIG-")


def test_busy_ampere_mode_change_points_to_mig_mode(sim_host, run_module):
    host = sim_host("A100-SXM4-40GB", processes=["0:100"], init=False)
    pid = host.state().live(0)["processes"][0]["pid"]
    result, failed = run_module(mig_instances, layout([{"name": "chat", "profile": "3g.20gb"}]))
    assert failed and f"processes [{pid}]" in result["msg"] and "gpu.mig.mig_mode with reset: true" in result["msg"]


def test_mig_parted_config_is_converted(sim_host, run_module):
    sim_host("A100-SXM4-40GB:mig=on", init=False)
    config = {
        "version": "v1",
        "mig-configs": {
            "balanced": [
                {"devices": "all", "mig-enabled": True, "mig-devices": {"1g.5gb": 2, "2g.10gb": 1, "3g.20gb": 1}}
            ]
        },
    }
    result, failed = run_module(mig_instances, {"mig_parted_config": config, "mig_parted_config_name": "balanced"})
    assert not failed, result.get("msg")
    assert sorted(s["profile"] for s in result["slots"].values()) == ["1g.5gb", "1g.5gb", "2g.10gb", "3g.20gb"]


# ------------------------------------------------------------------------------------ wrong types destroy nothing
TWO_INSTANCES = ["0:3g.20gb@4", "0:2g.10gb@0"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({"layout": [{"gpus": 0, "slots": {}}]}, "entry 1: slots is dict {}; it must be a list of slots"),
        ({"layout": [{"gpus": 0, "slots": ""}]}, "entry 1: slots is ''; it must be a list"),
        ({"layout": [{"gpus": 0, "slots": 0}]}, "entry 1: slots is 0; it must be a list"),
        ({"layout": [{"gpus": 0, "slots": False}]}, "entry 1: slots is False; it must be a list"),
        ({"layout": [{"gpus": 0}]}, "entry 1: 'slots' is required when MIG is enabled"),
        (
            {"layout": [{"gpus": 0, "slots": [{"name": "a", "profile": "3g.20gb", "compute_instances": []}]}]},
            "entry 1 slot 1 ('a'): compute_instances is list []; it must not be empty",
        ),
        ({"state": "absent", "layout": [{"gpus": 1, "slots": []}]}, "state=absent"),
        (
            {"state": "absent", "mig_parted_config": {"version": "v1"}, "mig_parted_config_name": "x"},
            "takes no mig_parted_config",
        ),
        ({"gpus": ["1"], "layout": [{"gpus": 0, "slots": [{"name": "a", "profile": "3g.20gb"}]}]}, "drop 'gpus'"),
    ],
)
def test_wrong_types_and_contradictions_fail_and_keep_every_instance(sim_host, run_module, snapshot, args, expected):
    host = sim_host("A100-SXM4-40GB:mig=on", instances=TWO_INSTANCES, init=False)
    before = snapshot(host)
    for check_mode in (True, False):
        result, failed = run_module(mig_instances, args, check_mode=check_mode)
        assert failed and result["changed"] is False and expected in result["msg"], result
    assert snapshot(host) == before


def test_slots_an_empty_list_removes_every_instance(sim_host, run_module):
    sim_host("A100-SXM4-40GB:mig=on", instances=TWO_INSTANCES, init=False)
    result, failed = run_module(mig_instances, layout([]))
    assert not failed and result["changed"] and result["ansible_facts"]["nvidia_mig"]["gpus"][0]["gpu_instances"] == []


# ------------------------------------------------------------------------------ exact predictions, CI splits too
def test_check_mode_predicts_the_new_uuids_of_a_changed_compute_split(sim_host, run_module):
    sim_host("H100-80GB:mig=on", instances=["0:3g.40gb@0", "0:1g.10gb@6"], init=False)
    before, _unused = run_module(mig_instances, layout([{"name": "chat", "profile": "3g.40gb"}, OCR_H100]))
    split = {"name": "chat", "profile": "3g.40gb", "compute_instances": ["1c.3g.40gb", "1c.3g.40gb"]}
    checked, _unused = run_module(mig_instances, layout([split, OCR_H100]), check_mode=True)
    real, failed = run_module(mig_instances, layout([split, OCR_H100]))
    assert not failed, real.get("msg")
    old = before["slots"]["chat"]["mig_uuid"]
    # The split makes new compute instances: check mode must not promise the old MIG UUID (reslice drains by it).
    assert checked["slots"]["chat"]["mig_uuid"] is None and real["slots"]["chat"]["mig_uuid"] not in (None, old)
    assert [c["name"] for c in real["slots"]["chat"]["compute_instances"]] == ["ci0", "ci1"]
    assert_predicted(checked["slots"], real["slots"], {s["mig_uuid"] for s in before["slots"].values()})
    assert checked["slots"]["ocr"] == real["slots"]["ocr"] == before["slots"]["ocr"]


def test_a_failure_at_the_first_action_restores_nothing_and_reports_no_change(sim_host, run_module):
    host = sim_host("A100-SXM4-40GB:mig=on", instances=["0:3g.20gb@4"], init=False)
    before = host.state().live(0)["gpu_instances"]
    host.fault("nvmlDeviceCreateGpuInstanceWithPlacement", pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES, times=1)
    spec = layout([{"name": "chat", "profile": "3g.20gb"}, {"name": "ocr", "profile": "1g.5gb"}])
    result, failed = run_module(mig_instances, spec)
    assert failed and result["restored"] is True and result["restore_changes"] == []
    assert result["changed"] is False and host.state().live(0)["gpu_instances"] == before


OCR_H100 = {"name": "ocr", "profile": "1g.10gb"}


# ------------------------------------------------------------------------------- a restore says what it changed
def test_restore_after_a_failed_destroy_reports_every_new_uuid_by_slot_name(sim_host, run_module):
    host = sim_host("A100-SXM4-40GB:mig=on", instances=TWO_INSTANCES, init=False)
    start, _unused = run_module(mig_instances, layout([{"name": "chat", "profile": "3g.20gb"}, CLASSIFIER]))
    host.fault("nvmlGpuInstanceDestroy", pynvml.NVML_ERROR_IN_USE, times=1)
    split = {"name": "chat", "profile": "3g.20gb", "compute_instances": ["1c.3g.20gb", "1c.3g.20gb"]}
    result, failed = run_module(mig_instances, layout([split, {"name": "ocr", "profile": "1g.5gb"}]))
    assert failed and result["restored"] is True
    live = {c["uuid"] for gi in host.state().live(0)["gpu_instances"] for c in gi["compute_instances"]}
    old = {name: slot["mig_uuid"] for name, slot in start["slots"].items()}
    changes = {c["old_mig_uuid"]: c for c in result["restore_changes"]}
    assert set(changes) == set(old.values()) - live == set(old.values())  # both CIs were re-created
    assert changes[old["chat"]]["slot"] == "chat" and changes[old["chat"]]["new_mig_uuid"] in live
    assert f"slot 'chat' on GPU 0 3g.20gb@4: {old['chat']} -> {changes[old['chat']]['new_mig_uuid']}" in result["msg"]
    assert "2 MIG devices have new UUIDs" in result["msg"] and "restored" in result["msg"]


CLASSIFIER = {"name": "classifier", "profile": "2g.10gb"}


# --------------------------------------------------------------------------- a lost GPU is that GPU's problem only
@pytest.fixture
def gpu1_lost(sim_host):
    """Two A100s with MIG on; GPU 1 fell off the bus (migsim fault --lost --gpu 1)."""
    host = sim_host("A100-SXM4-40GB:mig=on", "A100-SXM4-40GB:mig=on", instances=["1:3g.20gb"], init=False)
    with host.edit() as state:
        state.live(1)["lost"] = True
    return host


@pytest.mark.parametrize("gpus", [0, "all", "NVIDIA A100-SXM4-40GB"])
def test_a_lost_gpu_leaves_the_healthy_ones_to_work_on(gpu1_lost, run_module, warning_texts, gpus):
    result, failed = run_module(mig_instances, layout(SEED, gpus=gpus))
    assert not failed, result.get("msg")
    assert {s["gpu_index"] for s in result["slots"].values()} == {0}
    assert any("GPU 1" in w and "lost" in w and "not applied" in w for w in warning_texts(result))


def test_a_layout_naming_a_lost_gpu_is_refused_naming_it(gpu1_lost, run_module, snapshot):
    before = snapshot(gpu1_lost)
    result, failed = run_module(mig_instances, {"layout": [{"gpus": [0, 1], "slots": SEED}]})
    assert failed and result["changed"] is False
    assert "GPU 1" in result["msg"] and "cannot be read" in result["msg"] and "lost" in result["msg"]
    assert "remove it from the selector" in result["msg"]
    assert snapshot(gpu1_lost) == before
