# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Filter gpu.mig.preflight_report given a mig-parted config instead of a layout: converted for the host's GPUs as
gpu.mig.mig_instances converts it, a config it refuses is a fail reason (never an exception), and the host counts as
managed exactly when the config selects one of its GPUs."""

from __future__ import annotations

from ansible_collections.gpu.mig.plugins.filter.preflight import preflight_report
from ansible_collections.gpu.mig.tests.unit.plugins.filter import mig_gpu_facts

DRIVER = {"loaded": True, "error": None, "driver_version": "550.90.07", "cuda_driver_version": "12.4"}
H100 = "NVIDIA H100 80GB HBM3"
A100 = "NVIDIA A100-SXM4-40GB"
CONFIG = {
    "version": "v1",
    "mig-configs": {
        "all-disabled": [{"devices": "all", "mig-enabled": False}],
        "two-3g": [{"devices": "all", "mig-enabled": True, "mig-devices": {"3g.40gb": 2}}],
        "eight-gpus": [{"devices": [0, 1, 2, 3, 4, 5, 6, 7], "mig-enabled": True, "mig-devices": {"7g.80gb": 1}}],
        "a100-only": [{"devices": "all", "device-filter": "0x20B010DE", "mig-enabled": True, "mig-devices": {}}],
    },
}


def facts(*gpus: dict, driver: dict | None = None) -> dict:
    return {"nvidia_mig": {"driver": driver or DRIVER, "gpus": list(gpus)}}


def h100(instances=()) -> dict:
    return mig_gpu_facts.gpu(0, H100, (True, True), instances)


def two_3g() -> list:
    return [mig_gpu_facts.gpu_instance(H100, 1, "3g.40gb", 0), mig_gpu_facts.gpu_instance(H100, 2, "3g.40gb", 4)]


def report(host_facts: dict, name: str, config=None, **kwargs) -> dict:
    """The report with ``config`` (CONFIG when None) chosen by ``name``."""
    return preflight_report(host_facts, "h1", mig_parted_config=config or CONFIG, mig_parted_config_name=name, **kwargs)


def test_a_config_in_place_is_ready_and_in_sync():
    done = report(facts(h100(two_3g())), "two-3g")
    assert (done["verdict"], done["in_sync"], done["reasons"]) == ("ready", True, [])
    assert done["gpus"][0]["managed"] is True and done["gpus"][0]["drift"] == []


def test_a_config_not_in_place_drifts_as_mig_instances_would_change_it():
    done = report(facts(h100()), "two-3g")
    assert done["in_sync"] is False and done["verdict"] == "ready"
    assert len(done["gpus"][0]["drift"]) == 2 and all("3g.40gb" in line for line in done["gpus"][0]["drift"])


def test_mig_parted_disabled_on_a_gpu_holding_instances_drifts():
    done = report(facts(h100(two_3g())), "all-disabled")
    assert done["in_sync"] is False and done["gpus"][0]["desired_mig"] is False


def test_devices_the_host_lacks_are_info_not_failures():
    done = report(facts(h100([mig_gpu_facts.gpu_instance(H100, 0, "7g.80gb", 0)])), "eight-gpus")
    assert done["verdict"] == "ready" and done["in_sync"] is True
    infos = [r["msg"] for r in done["reasons"] if r["level"] == "info"]
    assert len(infos) == 7 and all("is not on this host" in m for m in infos), infos


def test_a_config_selecting_no_gpu_of_the_host_leaves_it_alone():
    done = report(facts(h100()), "a100-only")
    assert (done["verdict"], done["in_sync"], done["gpus"][0]["managed"]) == ("skip", True, False)


def test_an_unknown_config_name_blocks_the_host_with_the_names_it_has():
    done = report(facts(h100()), "no-such-config")
    fails = [r for r in done["reasons"] if r["level"] == "fail"]
    assert done["verdict"] == "blocked" and done["in_sync"] is False
    assert "no-such-config" in fails[0]["msg"] and "two-3g" in fails[0]["msg"]
    assert "gpu_mig_parted_config_name" in fails[0]["fix"]


def test_a_malformed_config_blocks_the_host_naming_every_problem():
    bad = {"version": "v2", "mig-configs": {"x": [{"devices": "all", "mig-enabled": "yes"}]}}
    done = report(facts(h100()), "x", config=bad)
    text = " ".join(r["msg"] for r in done["reasons"] if r["level"] == "fail")
    assert done["verdict"] == "blocked" and "v1" in text


def test_a_config_that_does_not_fit_the_gpu_blocks_the_host():
    big = {
        "version": "v1",
        "mig-configs": {"x": [{"devices": "all", "mig-enabled": True, "mig-devices": {"3g.40gb": 3}}]},
    }
    done = report(facts(h100()), "x", config=big)
    assert done["verdict"] == "blocked" and any("3g.40gb" in r["msg"] for r in done["reasons"] if r["level"] == "fail")


def test_a_layout_and_a_config_together_block_the_host():
    done = report(facts(h100(two_3g())), "two-3g", layout=[{"gpus": 0, "slots": []}])
    fails = [r for r in done["reasons"] if r["level"] == "fail"]
    assert done["verdict"] == "blocked" and any("unset gpu_mig_layout" in r["fix"] for r in fails)


def test_without_nvml_a_host_given_a_config_is_blocked_for_the_driver():
    done = report(facts(driver={"loaded": False, "error": "NVML Shared Library Not Found"}), "two-3g")
    assert done["verdict"] == "blocked" and "NVML is not available" in done["reasons"][0]["msg"]
