# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Filter gpu.mig.mig_parted_layout: a named mig-parted config -> the layout entries it means on one host.

The roles that run before mig_layout (mig_mode, preflight) use it; its entries must be what gpu.mig.mig_instances
applies for the same config on the same facts, and a config that cannot apply fails listing every problem.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import yaml
from ansible.errors import AnsibleFilterError

from ansible_collections.gpu.mig.plugins.filter.mig_parted_layout import FilterModule, mig_parted_layout
from ansible_collections.gpu.mig.plugins.module_utils._mig import apply as _apply
from ansible_collections.gpu.mig.tests.unit.plugins.filter import mig_gpu_facts

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures" / "mig-parted"
OPERATOR = (FIXTURES / "gpu-operator-default-mig-parted-config.yaml.published").read_text()
A100, H100, L4 = "NVIDIA A100-SXM4-40GB", "NVIDIA H100 80GB HBM3", "NVIDIA L4"
IDS = {A100: "0x20B010DE", H100: "0x233010DE", L4: "0x27B810DE"}
DRIVER = {"loaded": True, "error": None, "driver_version": "580.65.06"}


def gpu(index: int, name: str, mig=(False, False), instances=()) -> dict:
    return mig_gpu_facts.gpu(index, name, mig, instances, pci_device_id=IDS[name], pci_subsystem_id=None)


def facts(*gpus: dict) -> dict:
    return {"driver": DRIVER, "gpus": list(gpus)}


def devices(entry: dict) -> Counter:
    """An entry's MIG devices counted as mig-parted counts them: a slot's compute instances, or the slot itself."""
    found = Counter()
    for slot in entry["slots"]:
        found.update(
            [ci["profile"] for ci in slot["compute_instances"]] if "compute_instances" in slot else [slot["profile"]]
        )
    return found


def test_the_filter_is_registered():
    assert FilterModule().filters() == {"mig_parted_layout": mig_parted_layout}


def test_the_entries_are_what_mig_instances_applies_for_the_config():
    """The GPU Operator's all-balanced on a host with an A100 (MIG off) and an H100 (MIG on, empty): each GPU gets
    its model's entry of the config, and the entries equal mig_instances' own conversion of the same facts."""
    host = facts(gpu(0, A100), gpu(1, H100, mig=(True, True)))
    entries = mig_parted_layout(host, OPERATOR, "all-balanced")
    by_gpu = {e["gpus"]: e for e in entries}
    assert sorted((i, e["mig_enabled"]) for i, e in by_gpu.items()) == [(0, True), (1, True)]
    assert devices(by_gpu[0]) == Counter({"1g.5gb": 2, "2g.10gb": 1, "3g.20gb": 1})
    assert devices(by_gpu[1]) == Counter({"1g.10gb": 2, "2g.20gb": 1, "3g.40gb": 1})
    params = {
        "state": "present",
        "mig_parted_config": yaml.safe_load(OPERATOR),
        "mig_parted_config_name": "all-balanced",
    }
    assert entries == _apply.desired_layout(params, _apply.host_from_facts(host["gpus"])).layout


def test_yaml_text_and_a_parsed_config_give_the_same_entries():
    host = facts(gpu(0, H100))
    assert mig_parted_layout(host, OPERATOR, "all-1g.10gb") == mig_parted_layout(
        host, yaml.safe_load(OPERATOR), "all-1g.10gb"
    )


def test_indices_the_host_lacks_and_gpus_without_mig_select_nothing():
    config = {
        "version": "v1",
        "mig-configs": {
            "fleet": [{"devices": [0, 1, 2, 3, 4, 5, 6, 7], "mig-enabled": True, "mig-devices": {"3g.40gb": 2}}]
        },
    }
    assert [e["gpus"] for e in mig_parted_layout(facts(gpu(0, H100), gpu(1, H100)), config, "fleet")] == [0, 1]
    assert mig_parted_layout(facts(gpu(0, L4, mig=None)), OPERATOR, "all-balanced") == []


def test_mig_off_in_the_config_is_an_entry_with_mig_disabled():
    busy = mig_gpu_facts.gpu_instance(A100, 1, "3g.20gb", 4)
    entries = mig_parted_layout(facts(gpu(0, A100, mig=(True, True), instances=[busy])), OPERATOR, "all-disabled")
    assert entries == [{"gpus": 0, "mig_enabled": False, "slots": []}]


def test_a_gpu_that_already_has_the_counts_keeps_its_instances():
    present = [mig_gpu_facts.gpu_instance(A100, 1, "3g.20gb", 0), mig_gpu_facts.gpu_instance(A100, 2, "3g.20gb", 4)]
    entries = mig_parted_layout(facts(gpu(0, A100, mig=(True, True), instances=present)), OPERATOR, "all-3g.20gb")
    assert [(s["profile"], s["placement"]) for s in entries[0]["slots"]] == [("3g.20gb", 0), ("3g.20gb", 4)]


@pytest.mark.parametrize(
    ("nvidia_mig", "config", "name", "problems"),
    [
        pytest.param(
            facts(gpu(0, A100)), OPERATOR, "all-balance",
            ["no config named 'all-balance'; available: all-1g.10gb,"], id="unknown-name",
        ),
        pytest.param(
            facts(gpu(0, A100)), OPERATOR, "all-1g.10gb.me",
            ["mig-configs.all-1g.10gb.me[0] on GPU 0", "1g.10gb+me"], id="profile-the-model-lacks",
        ),
        pytest.param(
            facts(gpu(0, L4, mig=None)), {"version": "v1", "mig-configs": {"x": [{"devices": [0], "mig-enabled": True,
                                                                                 "mig-devices": {"1g.5gb": 1}}]}},
            "x", ["the GPU does not support MIG, and mig-enabled is true"], id="mig-on-a-gpu-without-mig",
        ),
        pytest.param(
            {"driver": {"loaded": False, "error": "NVML Shared Library Not Found"}, "gpus": []}, OPERATOR,
            "all-balanced", ["NVML is not available on this host (NVML Shared Library Not Found)",
                             "install and load the NVIDIA driver"], id="no-driver",
        ),
        pytest.param(
            facts({"index": 0, "name": A100}), OPERATOR, "all-balanced",
            ["the nvidia_mig facts lack what the planner reads (KeyError", "gather them with gpu.mig.mig_facts"],
            id="facts-not-from-mig-facts",
        ),
        pytest.param(
            "GPU 0", "version: v1\nmig-configs: [", ["name"],
            ["the input must be the nvidia_mig facts", "config_name must be the name of a config under mig-configs,"
             " not ['name']", "mig-parted config: not valid YAML"], id="every-input-wrong-at-once",
        ),
        pytest.param(
            facts(gpu(0, A100)), {"version": "v1", "mig-configs": {"x": [{"devices": [], "mig-device": {}}]}}, "x",
            ["3 problem(s)", "mig-configs.x[0]: ", "'mig-enabled' is required", "unknown key 'mig-device'"],
            id="every-config-problem-at-once",
        ),
    ],
)  # fmt: skip
def test_what_cannot_apply_fails_naming_every_problem(nvidia_mig, config, name, problems):
    with pytest.raises(AnsibleFilterError) as failed:
        mig_parted_layout(nvidia_mig, config, name)
    assert failed.value.message.startswith(f"mig_parted_layout: config {name!r}: ")
    for problem in problems:
        assert problem in failed.value.message
