# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Filter gpu.mig.preflight_report: verdicts, reasons, drift and runtime from mig_facts-shaped facts and probes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ansible.errors import AnsibleFilterError

from ansible_collections.gpu.mig.plugins.filter import preflight
from ansible_collections.gpu.mig.plugins.filter.preflight import FilterModule, preflight_report
from ansible_collections.gpu.mig.tests.unit.plugins.filter import mig_gpu_facts

ROLE = Path(__file__).resolve().parents[4] / "roles/preflight"
DRIVER = {"loaded": True, "error": None, "driver_version": "550.90.07", "cuda_driver_version": "12.4"}
A100 = "NVIDIA A100-SXM4-40GB"
H100 = "NVIDIA H100 80GB HBM3"


def gi(gi_id: int, profile: str, start: int, cis=None, name: str = H100, processes=()) -> dict:
    return mig_gpu_facts.gpu_instance(name, gi_id, profile, start, cis, processes)


def gpu(index: int = 0, name: str = H100, mig=(True, True), instances=(), processes=(), **extra) -> dict:
    """A mig_facts GPU; ``mig``: (current, pending), or None for a GPU without MIG."""
    return mig_gpu_facts.gpu(index, name, mig, instances, processes, **extra)


def facts(*gpus: dict, driver: dict | None = None, **host) -> dict:
    return {"nvidia_mig": {"driver": driver or DRIVER, "gpus": list(gpus)}, **host}


PROBED = {"distribution": "Debian", "distribution_version": "12", "kernel": "6.1.0-18-amd64"}
CTK_NEW = {"rc": 0, "stdout": "NVIDIA Container Toolkit CLI version 1.14.3\ncommit: 53b24618"}


def layout(gpus=0, *slots: dict, **entry) -> list:
    return [{"gpus": gpus, "slots": list(slots), **entry}]


def msgs(report: dict, level: str | None = None) -> list[str]:
    return [r["msg"] for r in report["reasons"] if level in (None, r["level"])]


# --- verdicts ------------------------------------------------------------------------------------------------------


def test_no_layout_is_skip_and_lists_the_gpus():
    report = preflight_report(facts(gpu(0, mig=(False, False))), "h1")
    assert report["verdict"] == "skip"
    assert report["reasons"] == []
    assert report["host"] == "h1"
    assert report["gpus"][0]["managed"] is False
    assert report["gpus"][0]["desired_mig"] is None
    assert report["in_sync"] is True


def test_layout_in_place_is_ready_and_in_sync():
    have = gpu(0, instances=[gi(2, "3g.40gb", 4), gi(7, "1g.10gb", 0)])
    want = layout(0, {"name": "chat", "profile": "3g.40gb", "placement": 4}, {"name": "ocr", "profile": 19})
    report = preflight_report(facts(have), "h1", layout=want)
    assert report["verdict"] == "ready"
    assert report["reasons"] == []
    assert report["in_sync"] is True
    row = report["gpus"][0]
    assert row["desired_slots"] == ["chat", "ocr"]
    assert row["drift"] == []
    assert row["layout"] == "3g.40gb@4+1g.10gb@0"
    assert row["gpu_instances"] == 2
    assert (row["managed"], row["desired_mig"], row["min_driver"], row["driver_ok"]) == (True, True, "525.85.12", True)


def test_pending_mode_change_warns():
    report = preflight_report(facts(gpu(0, mig=(False, True))), "h1", layout=layout(0))
    assert report["verdict"] == "warn"
    assert report["reasons"] == [
        {
            "level": "warn",
            "where": f"GPU 0 ({H100}, GPU-0000-hbm3)",
            "msg": "MIG mode change pending (on)",
            "fix": "stop the GPU clients and reset the GPU (gpu.mig.mig_mode role), or reboot",
        }
    ]


def test_driver_too_old_blocks_a_managed_host_and_warns_an_unmanaged_one():
    old = {**DRIVER, "driver_version": "535.161.07"}
    h200 = gpu(0, name="NVIDIA H200", mig=(False, False))
    blocked = preflight_report(facts(h200, driver=old), "h1", layout=layout(0))
    assert blocked["verdict"] == "blocked"
    assert blocked["reasons"][0] == {
        "level": "fail",
        "where": "GPU 0 (NVIDIA H200, GPU-0000-h200)",
        "msg": "driver 535.161.07 is older than 550.90.07, the minimum for MIG on this model",
        "fix": "upgrade the NVIDIA driver to 550.90.07 or later and reboot",
    }
    assert blocked["gpus"][0]["driver_ok"] is False
    unmanaged = preflight_report(facts(h200, driver=old), "h1")
    assert unmanaged["verdict"] == "skip"
    assert [r["level"] for r in unmanaged["reasons"]] == ["warn"]


def test_driver_minimum_from_the_caller_table_and_from_the_facts():
    table = [{"match": "H100", "version": "560.0.0"}]
    report = preflight_report(facts(gpu(0)), "h1", layout=layout(0), min_driver=table)
    assert report["verdict"] == "blocked"
    assert msgs(report, "fail") == ["driver 550.90.07 is older than 560.0.0, the minimum for MIG on this model"]
    fact_minimum = preflight_report(facts(gpu(0, min_driver="500.1.1")), "h1", layout=layout(0), min_driver=table)
    assert fact_minimum["verdict"] == "ready"
    assert fact_minimum["gpus"][0]["min_driver"] == "500.1.1"


def test_loose_version_order_not_text_order():
    # '550.100.1' > '550.90.07' numerically; text comparison would say older.
    report = preflight_report(
        facts(gpu(0, name="NVIDIA H200"), driver={**DRIVER, "driver_version": "550.100.1"}), "h1", layout=layout(0)
    )
    assert report["gpus"][0]["driver_ok"] is True


def test_non_mig_gpu_selected_blocks():
    l4 = gpu(0, name="NVIDIA L4", mig=None)
    report = preflight_report(facts(l4), "h1", layout=layout(0, {"name": "chat", "profile": "1g.5gb"}))
    assert report["verdict"] == "blocked"
    assert msgs(report, "fail") == [
        "a MIG layout is set but no GPU supports MIG (NVIDIA L4)",
        "entry 1 (gpus: 0) selects GPU 0 (GPU-0000-al4, NVIDIA L4), which does not support MIG; remove it from the"
        " selector",
    ]
    assert report["gpus"][0]["drift"] == []
    assert report["gpus"][0]["desired_slots"] == []


def test_all_passes_over_gpus_without_mig():
    host = facts(gpu(0, name=A100, mig=(True, True)), gpu(1, name="NVIDIA L4", mig=None))
    report = preflight_report(host, "h1", layout=layout(" all "))
    assert [g["managed"] for g in report["gpus"]] == [True, False]
    assert report["verdict"] == "ready"


def test_no_gpu_at_all_with_a_layout():
    report = preflight_report(facts(), "h1", layout=layout(0))
    assert msgs(report) == [
        "a MIG layout is set but no GPU supports MIG (no GPUs)",
        "entry 1 (gpus: 0): no GPU on this host matches selector 0; GPUs: none",
    ]


# --- drift ---------------------------------------------------------------------------------------------------------


def test_drift_is_the_plan_of_mig_instances():
    """Each line names the slot, the GPU instance, the profile and the placement of one change mig_instances makes."""
    have = gpu(0, instances=[gi(2, "3g.40gb", 4), gi(3, "2g.20gb", 0), gi(9, "1g.10gb", 2), gi(10, "1g.10gb", 3)])
    want = layout(
        0,
        {"name": "chat", "profile": "3g.40gb", "placement": 4, "compute_instances": ["1c.3g.40gb", "2c.3g.40gb"]},
        {"name": "ocr", "profile": "1g.10gb", "placement": 0},
        {"name": "batch", "profile": "1g.10gb", "placement": 2},
    )
    report = preflight_report(facts(have), "h1", layout=want)
    assert report["gpus"][0]["drift"] == [
        "slot chat (3g.40gb@4, GPU instance 2): extra compute instance 0 (3g.40gb)",
        "GPU instance 3 (2g.20gb@0) is in the way of slot ocr",
        "extra GPU instance 10 (1g.10gb@3)",
        "slot ocr (1g.10gb@0) missing",
        "slot chat (3g.40gb@4, GPU instance 2): compute instance ci1 (2c.3g.40gb) missing",
        "slot chat (3g.40gb@4, GPU instance 2): compute instance ci0 (1c.3g.40gb) missing",
    ]
    assert report["gpus"][0]["desired_slots"] == ["chat", "ocr", "batch"]
    assert report["in_sync"] is False
    assert report["verdict"] == "ready"  # drift is what the layout role fixes, not a reason to stop


def test_mig_mode_drift_and_the_placement_the_planner_picks():
    report = preflight_report(
        facts(gpu(0, mig=(False, True))), "h1", layout=layout(0, {"name": "a", "profile": "7g.80gb"})
    )
    assert report["gpus"][0]["drift"] == ["MIG mode off (pending on), desired on", "slot a (7g.80gb@0) missing"]


def test_each_instance_matches_one_slot():
    have = gpu(0, instances=[gi(3, "1g.10gb", 0)])
    want = layout(0, {"name": "a", "profile": "1g.10gb"}, {"name": "b", "profile": "1g.10gb"})
    assert preflight_report(facts(have), "h1", layout=want)["gpus"][0]["drift"] == ["slot b (1g.10gb@1) missing"]


def test_mig_disabled_entry_wants_mig_off_and_no_instances():
    have = gpu(0, instances=[gi(1, "7g.80gb", 0)])
    row = preflight_report(facts(have), "h1", layout=[{"gpus": 0, "mig_enabled": False}])["gpus"][0]
    assert row["desired_mig"] is False
    assert row["drift"] == ["extra GPU instance 1 (7g.80gb@0)", "MIG mode on, desired off"]


def test_slot_names_follow_mig_instances():
    two = facts(gpu(0), gpu(1))
    slot = {"name": "chat", "profile": "7g.80gb"}
    # An entry that picks several MIG GPUs suffixes -gpu<index>; one that picks one GPU keeps the name.
    assert [g["desired_slots"] for g in preflight_report(two, "h", layout=layout("all", slot))["gpus"]] == [
        ["chat-gpu0"],
        ["chat-gpu1"],
    ]
    assert [g["desired_slots"] for g in preflight_report(two, "h", layout=layout([1], slot))["gpus"]] == [[], ["chat"]]
    one = facts(gpu(0, name=A100), gpu(1, name=H100))
    picked = preflight_report(one, "h", layout=layout("arch:hopper", slot))["gpus"]
    assert [g["desired_slots"] for g in picked] == [[], ["chat"]]


def test_a_gpu_two_entries_select_blocks_as_mig_instances_refuses_it():
    host = facts(gpu(0), gpu(1))
    want = [
        {"gpus": "0000:0F:00.0", "slots": [{"name": "first", "profile": "7g.80gb"}]},  # lspci form, GPU 1
        {"gpus": "all", "slots": [{"name": "second", "profile": "7g.80gb"}]},
    ]
    report = preflight_report(host, "h", layout=want)
    assert report["verdict"] == "blocked" and report["in_sync"] is False
    (reason,) = report["reasons"]
    assert (reason["level"], reason["where"]) == ("fail", "layout")
    assert reason["msg"].startswith("GPU 1 (GPU-0001-hbm3, NVIDIA H100 80GB HBM3) is selected by both entry 1")
    assert [(g["managed"], g["drift"], g["desired_slots"]) for g in report["gpus"]] == [(True, [], []), (True, [], [])]


# --- Ampere reset, runtime, toolkit ----------------------------------------------------------------------------------


def test_ampere_reset_blockers():
    a100 = gpu(0, name=A100, mig=(False, False), processes=[4242])
    host = facts(
        a100,
        **PROBED,
        virtualization_role="guest",
        virtualization_type="kvm",
        services={
            "nvidia-persistenced.service": {"state": "running"},
            "nvidia-dcgm.service": {"state": "stopped"},
            "kubelet.service": {"state": "running"},
        },
    )
    report = preflight_report(
        host,
        "h1",
        layout=layout(0),
        reset_files={"results": [{"item": {"index": 0}, "stat": {"exists": False}}]},
        nvidia_drm={"stat": {"exists": True}},
        ctk=CTK_NEW,
    )
    assert report["verdict"] == "warn"
    assert msgs(report) == [
        "GPU 0 (GPU-0000-40gb): turning MIG on waits for a GPU reset; processes [4242] hold the GPU: stop them (or"
        " the services that own them), then run gpu.mig.mig_mode with reset: true, or reboot",
        "enabling MIG on Ampere needs a GPU reset: blocked by pid 4242, nvidia-persistenced.service,"
        " nvidia_drm kernel module, no GPU reset in this VM (pass-through)",
    ]
    assert report["reasons"][0]["where"] == "layout"
    assert report["gpus"][0]["drift"] == ["MIG mode off, desired on"]  # mig_mode makes it, before mig_layout
    assert report["reset_blockers"] == ["nvidia-persistenced.service", "nvidia_drm kernel module"]
    assert report["runtime"] == {"kind": "vm", "virtualization_type": "kvm", "gpu_reset": False, "kubernetes": True}


def test_ampere_reset_without_blockers_and_hopper_without_reset():
    plain = preflight_report(facts(gpu(0, name=A100, mig=(False, False))), "h1", layout=layout(0))
    assert msgs(plain) == ["enabling MIG on Ampere needs a GPU reset"]
    hopper = preflight_report(facts(gpu(0, mig=(False, False), processes=[1])), "h1", layout=layout(0))
    assert [(r["level"], r["msg"]) for r in hopper["reasons"]] == [
        (
            "warn",
            "GPU 0 (GPU-0000-hbm3): cannot switch MIG on while processes [1] use the GPU;"
            " stop them (or the services that own them) and retry",
        )
    ]
    b200 = gpu(0, name="NVIDIA B200", mig=(False, False), architecture="blackwell")
    assert (
        preflight_report(facts(b200, driver={**DRIVER, "driver_version": "570.133.20"}), "h", layout=layout(0))[
            "reasons"
        ]
        == []
    )
    pending = preflight_report(facts(gpu(0, name=A100, mig=(False, True))), "h1", layout=layout(0))
    assert msgs(pending, "warn") == [
        "GPU 0 (GPU-0000-40gb): turning MIG on waits for a GPU reset and no process holds it: run gpu.mig.mig_mode"
        " with reset: true (the mig_mode role does), or, if the GPU is passed through to a VM (no GPU reset there),"
        " restart the VM",
        "MIG mode change pending (on)",
    ]


@pytest.mark.parametrize(
    ("role", "vtype", "kind"),
    [
        ("guest", "podman", "container"),
        ("guest", "kvm", "vm"),
        ("host", "kvm", "bare-metal"),
        ("NA", "NA", "bare-metal"),
    ],
)
def test_runtime_kind(role, vtype, kind):
    host = facts(gpu(0), **PROBED, virtualization_role=role, virtualization_type=vtype)
    report = preflight_report(host, "h1", ctk=CTK_NEW)
    assert report["runtime"]["kind"] == kind
    assert report["runtime"]["virtualization_type"] == vtype
    assert report["os"] == "Debian 12"
    assert report["kernel"] == "6.1.0-18-amd64"


def test_not_probed_is_unknown_and_has_no_toolkit_reason():
    report = preflight_report(facts(gpu(0)), "h1", layout=layout(0))
    assert report["runtime"] == {"kind": "unknown", "virtualization_type": None, "gpu_reset": None, "kubernetes": False}
    assert (report["os"], report["kernel"]) == (None, None)
    assert report["toolkit"] == {"version": None, "cdi": False}
    assert report["verdict"] == "ready"


@pytest.mark.parametrize(
    ("ctk", "version", "cdi", "msg"),
    [
        (CTK_NEW, "1.14.3", True, None),
        ({"rc": 0, "stdout": "NVIDIA Container Toolkit CLI version 1.11.0"}, "1.11.0", False, "1.11.0 cannot"),
        ({"rc": 127, "stdout": "", "msg": "No such file"}, None, False, "not found"),
        (None, None, False, "not found"),
    ],
)
def test_container_toolkit(ctk, version, cdi, msg):
    report = preflight_report(facts(gpu(0), **PROBED), "h1", layout=layout(0), ctk=ctk)
    assert report["toolkit"] == {"version": version, "cdi": cdi}
    if msg is None:
        assert report["reasons"] == []
    else:
        assert report["verdict"] == "warn"
        assert msg in report["reasons"][0]["msg"]
        assert (
            report["reasons"][0]["fix"] == "install nvidia-container-toolkit 1.12.0 or later to run slots in containers"
        )


def test_gpu_reset_is_all_of_the_reset_files():
    host = facts(gpu(0), gpu(1))
    both = {"results": [{"item": {"index": i}, "stat": {"exists": True}} for i in (0, 1)]}
    one = {
        "results": [{"item": {"index": 0}, "stat": {"exists": True}}, {"item": {"index": 1}, "stat": {"exists": False}}]
    }
    skipped = {"results": [{"item": {"index": 0}, "skipped": True}], "skipped": True}
    assert preflight_report(host, "h", reset_files=both)["runtime"]["gpu_reset"] is True
    assert preflight_report(host, "h", reset_files=one)["runtime"]["gpu_reset"] is False
    assert [g["reset_available"] for g in preflight_report(host, "h", reset_files=one)["gpus"]] == [True, False]
    assert preflight_report(host, "h", reset_files=skipped)["runtime"]["gpu_reset"] is None


def test_kubelet_config_makes_a_kubernetes_node():
    assert preflight_report(facts(gpu(0)), "h", kubelet={"stat": {"exists": True}})["runtime"]["kubernetes"] is True
    assert preflight_report(facts(gpu(0)), "h", kubelet={"skipped": True})["runtime"]["kubernetes"] is False


# --- no NVML ---------------------------------------------------------------------------------------------------------


def test_no_nvml_blocks_a_managed_host_and_informs_on_an_unmanaged_one():
    nodriver = {"loaded": False, "error": "NVML Shared Library Not Found"}
    managed = preflight_report(facts(driver=nodriver), "h1", layout=layout(0))
    assert managed["verdict"] == "blocked"
    assert managed["reasons"] == [
        {
            "level": "fail",
            "where": "host",
            "msg": "NVML is not available: NVML Shared Library Not Found",
            "fix": "install and load the NVIDIA driver, and nvidia-ml-py for the Python that runs the modules",
        }
    ]
    unmanaged = preflight_report(facts(driver=nodriver), "h1")
    assert (unmanaged["verdict"], [r["level"] for r in unmanaged["reasons"]]) == ("skip", ["info"])
    assert unmanaged["driver"] == nodriver


def test_no_facts_at_all():
    report = preflight_report({}, "h1", layout=layout(0))
    assert report["driver"] == {"loaded": False, "error": "no NVML facts"}
    assert msgs(report) == ["NVML is not available: no NVML facts"]
    assert report["gpus"] == []
    assert report["in_sync"] is False  # mig_instances cannot run here: nothing says the host matches


# --- interface ---------------------------------------------------------------------------------------------------------


def test_bad_layout_is_a_filter_error():
    with pytest.raises(AnsibleFilterError, match=r"layout must be a list"):
        preflight_report(facts(gpu(0)), "h1", layout={"gpus": 0})


def test_filter_is_registered():
    assert FilterModule().filters()["preflight_report"] is preflight_report


def test_defaults_are_the_roles():
    defaults = yaml.safe_load((ROLE / "defaults/main.yml").read_text())
    role_vars = yaml.safe_load((ROLE / "vars/main.yml").read_text())
    assert defaults["preflight_min_driver"] == []  # no overrides: the minimums are the catalog's
    assert defaults["preflight_min_toolkit_cdi"] == preflight.MIN_TOOLKIT_CDI
    assert list(preflight.RESET_BLOCKER_UNITS) == defaults["preflight_reset_blocker_units"]
    assert list(preflight.CONTAINER_TYPES) == role_vars["_preflight_container_types"]
