# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""mig_facts: one namespaced facts key, selectors, require_mig, clear failures, partial hosts, the slot map."""

from __future__ import annotations

import json
from pathlib import Path

import pynvml
import pytest
import yaml

from ansible_collections.gpu.mig.plugins.module_utils._mig import slot_files
from ansible_collections.gpu.mig.plugins.modules import mig_facts, mig_instances
from nvmlsim import cli


def test_reports_every_gpu_under_one_key(sim_host, run_module):
    sim_host("A100-SXM4-40GB:mig=on", "H100-80GB", "L4", instances=["0:3g.20gb"], init=False)
    result, failed = run_module(mig_facts, {})
    assert not failed and result["changed"] is False
    assert list(result["ansible_facts"]) == ["nvidia_mig"]
    facts = result["ansible_facts"]["nvidia_mig"]
    assert [g["name"] for g in facts["gpus"]] == ["NVIDIA A100-SXM4-40GB", "NVIDIA H100 80GB HBM3", "NVIDIA L4"]
    assert facts["summary"]["gpu_instances"] == 1 and facts["summary"]["mig_capable"] == 2


def test_check_mode_returns_the_same_facts(sim_host, run_module):
    host = sim_host("A100-SXM4-40GB:mig=on", instances=["0:1g.5gb"], init=False)
    normal, _unused = run_module(mig_facts, {})
    checked, _unused = run_module(mig_facts, {}, check_mode=True)
    assert checked["ansible_facts"] == normal["ansible_facts"]
    assert host.state().live(0)["gpu_instances"]  # nothing was removed


def test_selectors_filter_and_summary_follows(sim_host, run_module):
    sim_host("A100-SXM4-40GB", "H100-80GB", "H100-80GB", init=False)
    result, failed = run_module(mig_facts, {"gpus": ["arch:hopper"]})
    assert not failed
    facts = result["ansible_facts"]["nvidia_mig"]
    assert [g["index"] for g in facts["gpus"]] == [1, 2] and facts["summary"]["gpu_count"] == 2


def test_unknown_selector_fails_with_the_fix(sim_host, run_module):
    sim_host("A100-SXM4-40GB", init=False)
    result, failed = run_module(mig_facts, {"gpus": ["GPU-does-not-exist"]})
    assert failed and "'GPU-does-not-exist' match no GPU" in result["msg"] and "an index" in result["msg"]


def test_no_driver_is_reported_not_failed(sim_host, run_module):
    sim_host("A100-SXM4-40GB", driver_state="no_library", init=False)
    result, failed = run_module(mig_facts, {})
    assert not failed
    assert result["ansible_facts"]["nvidia_mig"]["driver"]["loaded"] is False


def test_require_mig_fails_without_driver_or_mig_gpu(sim_host, run_module):
    sim_host("L4", init=False)
    result, failed = run_module(mig_facts, {"require_mig": True})
    assert failed and "no selected GPU supports MIG" in result["msg"] and "0: NVIDIA L4" in result["msg"]
    sim_host("A100-SXM4-40GB", driver_state="not_loaded", init=False)
    result, failed = run_module(mig_facts, {"require_mig": True})
    assert failed and "driver is not loaded" in result["msg"]


LOST = (
    "GPU 1: opening the GPU failed: the GPU has fallen off the bus (GPU lost) (NVML: GPU is lost); drain the host,"
    " check dmesg for Xid errors and reboot it"
)


@pytest.fixture
def lost_gpu_1(sim_host):
    """Two A100s with an instance each; then ``migsim fault --lost --gpu 1``."""
    host = sim_host("A100-SXM4-40GB:mig=on", "A100-SXM4-40GB:mig=on", instances=["0:3g.20gb", "1:3g.20gb"], init=False)
    assert cli.main(["fault", str(host.root), "--lost", "--gpu", "1"]) == 0
    return host


def test_a_lost_gpu_is_that_gpus_error_not_the_hosts(lost_gpu_1, run_module, warning_texts):
    result, failed = run_module(mig_facts, {})
    assert not failed
    facts = result["ansible_facts"]["nvidia_mig"]
    healthy, lost = facts["gpus"]
    assert "error" not in healthy and [gi["profile"] for gi in healthy["gpu_instances"]] == ["3g.20gb"]
    assert lost == {
        "index": 1,
        "uuid": None,
        "name": None,
        "pci_bus_id": None,
        "pci_device_id": None,
        "pci_subsystem_id": None,
        "architecture": "unknown",
        "compute_capability": None,
        "memory": None,
        "mig": {"supported": False, "current": None, "pending": None},
        "profiles": [],
        "gpu_instances": [],
        "processes": [],
        "error": LOST,
    }
    assert set(lost) == {*healthy, "error"}
    assert facts["summary"] == {
        "gpu_count": 2,
        "mig_capable": 1,
        "mig_enabled": 1,
        "mig_change_pending": 0,
        "gpu_instances": 1,
        "compute_instances": 1,
        "processes": 0,
        "failed_gpus": 1,
    }
    assert warning_texts(result) == [LOST]


def test_selecting_around_a_lost_gpu(lost_gpu_1, run_module, warning_texts):
    healthy, _unused = run_module(mig_facts, {"gpus": ["0"]})
    assert [g["index"] for g in healthy["ansible_facts"]["nvidia_mig"]["gpus"]] == [0]
    assert healthy["ansible_facts"]["nvidia_mig"]["summary"]["failed_gpus"] == 0 and not warning_texts(healthy)
    lost, failed = run_module(mig_facts, {"gpus": ["1"], "require_mig": True})
    assert failed and "no selected GPU supports MIG" in lost["msg"] and LOST in lost["msg"]
    assert lost["nvidia_mig"]["gpus"][0]["error"] == LOST


def test_a_gpu_erroring_mid_read_keeps_what_nvml_still_reads(sim_host, run_module):
    host = sim_host("A100-SXM4-40GB:mig=on", init=False)
    host.fault("nvmlDeviceGetGpuInstanceRemainingCapacity", pynvml.NVML_ERROR_GPU_IS_LOST)
    result, failed = run_module(mig_facts, {})
    assert not failed and "exception" not in result
    (gpu,) = result["ansible_facts"]["nvidia_mig"]["gpus"]
    uuid = host.state().gpus[0]["uuid"]
    assert gpu["error"].startswith(f"GPU 0 ({uuid}): reading remaining capacity failed: the GPU has fallen off the bus")
    assert (gpu["uuid"], gpu["name"], gpu["pci_bus_id"]) == (uuid, "NVIDIA A100-SXM4-40GB", "00000000:07:00.0")
    assert gpu["profiles"] == [] and gpu["mig"]["supported"] is False


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ("nvmlInit", "NVML initialisation failed: the GPU has fallen off the bus"),
        ("nvmlDeviceGetCount", "counting the GPUs failed: the GPU has fallen off the bus"),
        ("nvmlSystemGetDriverVersion", "reading the driver version failed: the GPU has fallen off the bus"),
    ],
)
def test_host_level_errors_still_fail_the_host(sim_host, run_module, call, message):
    host = sim_host("A100-SXM4-40GB:mig=on", init=False)
    host.fault(call, pynvml.NVML_ERROR_GPU_IS_LOST)
    result, failed = run_module(mig_facts, {})
    assert (
        failed
        and result["msg"].startswith(message)
        and result["msg"].endswith("check dmesg for Xid errors and reboot it")
    )


# --- slot_map_file: the last applied slot map, read as mig_instances reads it ---------------------------------------


def test_documentation_matches_argument_spec():
    doc = yaml.safe_load(mig_facts.DOCUMENTATION)
    yaml.safe_load(mig_facts.EXAMPLES)
    returns = yaml.safe_load(mig_facts.RETURN)["ansible_facts"]["contains"]["nvidia_mig"]["contains"]
    assert set(doc["options"]) == set(mig_facts.ARGUMENT_SPEC)
    for name, spec in mig_facts.ARGUMENT_SPEC.items():
        option = doc["options"][name]
        assert (option["type"], option.get("elements"), option.get("default")) == (
            spec["type"],
            spec.get("elements"),
            spec.get("default"),
        ), name
    assert (returns["slot_map"]["type"], returns["slot_map"]["returned"]) == ("dict", "always")


@pytest.fixture
def converged(sim_host, run_module, tmp_path: Path):
    """An A100 with two look-alike slots applied, and the path of its slot map as the mig_layout role writes it."""
    sim_host("A100-SXM4-40GB:mig=on", init=False)
    layout = [{"gpus": 0, "slots": [{"name": "web", "profile": "1g.5gb"}, {"name": "ocr", "profile": "1g.5gb"}]}]
    applied, failed = run_module(mig_instances, {"layout": layout})
    assert not failed, applied.get("msg")
    path = tmp_path / "etc" / "slots.json"
    path.parent.mkdir()
    path.write_text(slot_files.slot_map_text(applied["slots"]))
    return applied, path


@pytest.mark.parametrize("check_mode", [False, True])
def test_the_slot_map_is_returned_with_the_facts(converged, run_module, check_mode):
    applied, path = converged
    result, failed = run_module(mig_facts, {"slot_map_file": str(path)}, check_mode=check_mode)
    assert not failed, result.get("msg")
    slot_map = result["ansible_facts"]["nvidia_mig"]["slot_map"]
    assert slot_map == json.loads(path.read_text()) and set(slot_map) == set(applied["slots"])
    assert slot_map["web"]["mig_uuid"] == applied["slots"]["web"]["mig_uuid"]


def test_no_option_or_no_file_is_no_slot_map(converged, run_module):
    _applied, path = converged
    for args in ({}, {"slot_map_file": str(path.parent / "absent.json")}):
        result, failed = run_module(mig_facts, args)
        assert not failed and result["ansible_facts"]["nvidia_mig"]["slot_map"] is None
        assert result["ansible_facts"]["nvidia_mig"]["gpus"][0]["gpu_instances"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", ["slot_map_file {path} is not JSON (Expecting property name"]),
        (
            '{"web": {"profile": "1g.5gb"}, "ocr": {"gpu_index": 0, "profile": "1g.5gb"}}',
            [
                "slot_map_file {path}: slot 'web': 'gpu_uuid' or 'gpu_index' is required",
                "slot_map_file {path}: slot 'web': 'placement' is required",
                "slot_map_file {path}: slot 'ocr': 'placement' is required",
            ],
        ),
        (None, ["slot_map_file {path} cannot be read (Is a directory); run the task as a user that can read it"]),
    ],
    ids=["not-json", "every-problem", "unreadable"],
)
def test_a_slot_map_that_is_not_one_fails_naming_the_file_and_the_fix(converged, run_module, content, expected):
    """The same message as mig_instances (one reader: _apply.read_slot_map), every problem listed."""
    _applied, path = converged
    path.unlink()
    if content is None:
        path.mkdir()
    else:
        path.write_text(content)
    result, failed = run_module(mig_facts, {"slot_map_file": str(path)})
    assert failed and "ansible_facts" not in result
    for line in expected:
        assert line.format(path=path) in result["msg"]
    if content is not None:
        assert "repair it, or remove it to apply the layout without history" in result["msg"]
    layout = [{"gpus": 0, "slots": [{"name": "web", "profile": "1g.5gb"}]}]
    module_result, failed = run_module(mig_instances, {"layout": layout, "slot_map_file": str(path)})
    assert failed and module_result["msg"] == result["msg"]
