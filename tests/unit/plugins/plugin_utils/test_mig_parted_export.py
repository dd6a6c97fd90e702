# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""mig-parted export and the GPU Operator hand-off: counts as ``nvidia-mig-parted export`` counts them (one device per
compute instance, ``Nc.Mg.Xgb`` for a split), entries merged per host with device filters kept, one named config per
distinct layout, and Kubernetes manifests that pass the Kubernetes schema (kubernetes-validate, offline)."""

from __future__ import annotations

import copy

import kubernetes_validate
import pynvml
import pytest
import yaml
from ansible.errors import AnsibleFilterError

from ansible_collections.gpu.mig.plugins.filter import mig_parted_export as _filters
from ansible_collections.gpu.mig.plugins.module_utils._mig import apply as _apply
from ansible_collections.gpu.mig.plugins.module_utils._mig import layout as _layout
from ansible_collections.gpu.mig.plugins.module_utils._mig import migparted as _migparted
from ansible_collections.gpu.mig.plugins.module_utils._mig import nvml as _nvml
from ansible_collections.gpu.mig.plugins.plugin_utils import mig_parted_export as _export

A100 = "A100-SXM4-40GB:mig=on"
SPLIT_AND_WHOLE = [
    {
        "gpus": 0,
        "slots": [
            {"name": "train", "profile": "3g.20gb", "compute_instances": ["1c.3g.20gb", "2c.3g.20gb"]},
            {"name": "web", "profile": "1g.5gb"},
            {"name": "ocr", "profile": "1g.5gb"},
        ],
    }
]


def facts_after(layout: list | None = None) -> dict:
    """The nvidia_mig facts of the simulated host pynvml talks to, after applying ``layout``."""
    if layout:
        with _nvml.Nvml() as nvml:
            _apply.apply_layout(nvml, layout)
    return _nvml.gather()


def validate(manifest: dict) -> None:
    kubernetes_validate.validate(manifest, kubernetes_validate.latest_version(), strict=True)


def test_counts_one_device_per_compute_instance_named_as_mig_parted_names_them(sim_host):
    sim_host(A100, A100, "L4")
    facts = facts_after(SPLIT_AND_WHOLE)
    result = _export.export_fleet({"node1": facts})
    (entries,) = result["config"]["mig-configs"].values()
    assert entries == [
        {
            "device-filter": "0x20B010DE",
            "devices": [0],
            "mig-enabled": True,
            "mig-devices": {"1c.3g.20gb": 1, "1g.5gb": 2, "2c.3g.20gb": 1},
        },
        {"device-filter": "0x20B010DE", "devices": [1], "mig-enabled": True, "mig-devices": {}},
        {"device-filter": "0x27B810DE", "devices": "all", "mig-enabled": False, "mig-devices": {}},
    ]
    # As many MIG devices as the host has compute instances.
    compute_instances = [ci for g in facts["gpus"] for gi in g["gpu_instances"] for ci in gi["compute_instances"]]
    assert sum(sum(e["mig-devices"].values()) for e in entries) == len(compute_instances) == 4
    assert result["warnings"] == [] and result["hosts"] == {
        "node1": "gpu0-1c.3g.20gb-2x1g.5gb-2c.3g.20gb_gpu1-enabled_all-disabled"
    }


def test_gpus_alike_share_an_entry_that_reads_all(sim_host):
    sim_host(A100, A100)
    layout = [
        {"gpus": "all", "slots": [{"name": "half", "profile": "3g.20gb"}, {"name": "small", "profile": "2g.10gb"}]}
    ]
    result = _export.export_fleet({"node1": facts_after(layout)})
    assert result["config"]["mig-configs"] == {
        "all-2g.10gb-3g.20gb": [
            {
                "device-filter": "0x20B010DE",
                "devices": "all",
                "mig-enabled": True,
                "mig-devices": {"2g.10gb": 1, "3g.20gb": 1},
            }
        ]
    }


def test_what_a_config_cannot_express_is_a_warning_not_dropped_silently(sim_host):
    host = sim_host(A100, A100, "A100-SXM4-40GB", processes=["2:500:trainer"])
    facts_after(SPLIT_AND_WHOLE)
    gi = host.pynvml.nvmlDeviceCreateGpuInstance(host.pynvml.nvmlDeviceGetHandleByIndex(1), 9)  # 3g.20gb, no CI
    gi_id = host.pynvml.nvmlGpuInstanceGetInfo(gi).id
    with _nvml.Nvml() as nvml:
        nvml.set_mig_mode(2, True)  # Ampere with a process on it: pending until the GPU is reset
    facts = _nvml.gather()
    facts["gpus"][0] = _nvml.failed_gpu(0, "GPU 0: opening the GPU failed: the GPU has fallen off the bus")
    result = _export.export_fleet({"node1": facts})
    assert result["warnings"] == [
        "node1 GPU 0: not exported, it could not be read (GPU 0: opening the GPU failed: the GPU has fallen off the"
        " bus); a mig-parted config leaves it alone",
        f"node1 GPU 1: GPU instance {gi_id} (3g.20gb at slice 4) holds no compute instance; mig-parted counts"
        " compute instances, so the config cannot express it (applying the config would destroy it)",
        "node1 GPU 2: MIG mode is off, on pending a GPU reset; the config records the current mode",
    ]
    # GPU 0 may share GPU 1's model: with it unread, no entry claims every GPU of the model.
    (entries,) = result["config"]["mig-configs"].values()
    assert [(e["devices"], e["mig-enabled"], e["mig-devices"]) for e in entries] == [
        ([1], True, {}),
        ([2], False, {}),
    ]


def test_a_desired_layout_is_exported_as_planned_on_the_host_and_only_its_gpus(sim_host):
    sim_host(A100, A100)
    facts = facts_after()
    layout = copy.deepcopy(SPLIT_AND_WHOLE)
    result = _export.export_fleet({"node1": facts}, layouts={"node1": layout})
    assert result["config"]["mig-configs"] == {
        "gpu0-1c.3g.20gb-2x1g.5gb-2c.3g.20gb": [
            {
                "device-filter": "0x20B010DE",
                "devices": [0],  # not 'all': GPU 1 is the same model and the layout leaves it alone
                "mig-enabled": True,
                "mig-devices": {"1c.3g.20gb": 1, "1g.5gb": 2, "2c.3g.20gb": 1},
            }
        ]
    }
    assert facts == facts_after()  # planned, not applied
    disabled = _export.export_fleet({"node1": facts}, layouts={"node1": [{"gpus": "all", "mig_enabled": False}]})
    assert disabled["config"]["mig-configs"] == {
        "all-disabled": [{"device-filter": "0x20B010DE", "devices": "all", "mig-enabled": False, "mig-devices": {}}]
    }


def test_a_layout_the_host_cannot_hold_is_refused_naming_the_host_and_every_problem(sim_host):
    sim_host(A100)
    layout = [{"gpus": 0, "slots": [{"name": f"s{i}", "profile": "3g.20gb"} for i in range(3)]}]
    with pytest.raises(_export.ExportError) as err:
        _export.export_fleet({"node1": facts_after(), "node2": {"gpus": "none"}}, layouts={"node1": layout})
    assert len(err.value.problems) == 2
    assert err.value.problems[0].startswith("mig_parted_export: facts[node2] is dict {'gpus': 'none'}; it must be")
    with pytest.raises(_export.ExportError) as err:
        _export.export_fleet({"node1": facts_after()}, layouts={"node1": layout})
    assert err.value.problems[0].startswith("node1: entry 1 (gpus: 0)") and "3g.20gb" in err.value.problems[0]


def test_one_named_config_per_distinct_layout_and_the_host_map(sim_host):
    sim_host(A100, A100)
    small = facts_after([{"gpus": "all", "slots": [{"name": f"s{i}", "profile": "1g.5gb"} for i in range(7)]}])
    sim_host(A100, A100)
    whole = facts_after([{"gpus": "all", "slots": [{"name": "all", "profile": "7g.40gb"}]}])
    sim_host("A100-SXM4-80GB:mig=on")  # a different model whose 7-way profile has its own name
    big = facts_after([{"gpus": "all", "slots": [{"name": f"s{i}", "profile": "1g.10gb"} for i in range(7)]}])
    result = _export.export_fleet({"a": small, "b": whole, "c": small, "d": big}, names={"b": "inference"})
    assert result["hosts"] == {"a": "all-7x1g.5gb", "b": "inference", "c": "all-7x1g.5gb", "d": "all-7x1g.10gb"}
    assert list(result["config"]["mig-configs"]) == ["all-7x1g.10gb", "all-7x1g.5gb", "inference"]
    assert yaml.safe_load(result["text"]) == result["config"]
    assert "device-filter: '0x20B010DE'" in result["text"]  # quoted: YAML would read the bare hex as an integer


def imports_unchanged(config: dict, name: str, facts: dict) -> bool:
    """Whether the named config, imported on the host of ``facts``, plans no change there."""
    _facts, states, models = _apply.host_from_facts(facts["gpus"])
    imported = _migparted.layout_from_mig_parted(config, name, states, models)
    return not imported.skipped and not _layout.plan_layout(imported.entries, states, models).changed


def test_layouts_of_different_models_share_a_name_and_a_hash_parts_the_rest(sim_host):
    sim_host("H100-80GB")
    h100 = facts_after()
    sim_host("L4")
    l4 = facts_after()
    result = _export.export_fleet({"h100": h100, "l4": l4})
    assert result["hosts"] == {"h100": "all-disabled", "l4": "all-disabled"}
    assert [e["device-filter"] for e in result["config"]["mig-configs"]["all-disabled"]] == ["0x233010DE", "0x27B810DE"]
    assert imports_unchanged(result["config"], "all-disabled", h100) and imports_unchanged(
        result["config"], "all-disabled", l4
    )
    # Two hosts whose entries read alike but share a model cannot share a config: each gets a hash of its content.
    sim_host("A100-SXM4-40GB", "A100-SXM4-40GB")
    mixed = facts_after()
    mixed["gpus"][1]["pci_device_id"] = "0x20F110DE"  # an A100-PCIE-40GB beside the SXM4
    sim_host("A100-SXM4-40GB")
    sxm = facts_after()
    result = _export.export_fleet({"mixed": mixed, "sxm": sxm})
    assert result["config"]["mig-configs"][result["hosts"]["mixed"]] == [
        {"device-filter": ["0x20B010DE", "0x20F110DE"], "devices": "all", "mig-enabled": False, "mig-devices": {}}
    ]
    assert len(set(result["hosts"].values())) == 2
    for host, facts in (("mixed", mixed), ("sxm", sxm)):
        name = result["hosts"][host]
        assert name.startswith("all-disabled-") and len(name) == len("all-disabled-") + 6, name
        assert imports_unchanged(result["config"], name, facts)
    # A name given to layouts of one model is refused; given to layouts of different models, it is shared.
    with pytest.raises(_export.ExportError, match="'x' is given to hosts with different layouts for the same GPU"):
        _export.export_fleet({"mixed": mixed, "sxm": sxm}, names={"mixed": "x", "sxm": "x"})
    shared = _export.export_fleet({"h100": h100, "sxm": sxm}, names={"h100": "x", "sxm": "x"})
    assert shared["hosts"] == {"h100": "x", "sxm": "x"} and list(shared["config"]["mig-configs"]) == ["x"]


def test_a_derived_name_too_long_for_a_label_value_is_cut_and_hashed(sim_host):
    sim_host(*[A100] * 8)
    profiles = ["7g.40gb", "4g.20gb", "3g.20gb", "2g.10gb", "1g.5gb", "1g.10gb", "1g.5gb+me"]
    eight = facts_after([{"gpus": i, "slots": [{"name": f"s{i}", "profile": p}]} for i, p in enumerate(profiles)])
    (name,) = _export.export_fleet({"big": eight})["hosts"].values()
    assert name.startswith("gpu0-7g.40gb_gpu1-4g.20gb_gpu2-3g.20gb_gpu3-2g.10gb_gpu4-")
    assert _export.label_value_problem(name) is None and len(name) == 63


def test_given_names_are_checked_against_each_other_and_as_label_values(sim_host):
    sim_host(A100)
    empty = facts_after()
    sim_host(A100)
    whole = facts_after([{"gpus": 0, "slots": [{"name": "a", "profile": "7g.40gb"}]}])
    with pytest.raises(_export.ExportError) as err:
        _export.export_fleet(
            {"a": empty, "b": whole, "c": empty, "d": empty},
            names={"a": "x", "b": "x", "c": "y", "d": "Bad name!", "ghost": "z"},
        )
    assert err.value.problems == [
        "mig_parted_export: names[d] is 'Bad name!'; it must be a Kubernetes label value: 1-63 letters, digits, '-',"
        " '_' or '.', starting and ending alphanumeric",
        "mig_parted_export: names[ghost]: no facts for this host",
        "names: hosts with the same layout get one config; c is named 'y', another host 'x'",
        "names: 'x' is given to hosts with different layouts for the same GPU model (a, b, c, d); give each layout"
        " its own name",
    ]


def test_a_host_with_nothing_to_export_gets_no_name(sim_host):
    sim_host(A100)
    no_driver = {"driver": {"loaded": False, "error": "no driver"}, "gpus": [], "summary": {}}
    result = _export.export_fleet({"gpu": facts_after(), "none": no_driver})
    assert result["hosts"] == {"gpu": "all-enabled"}
    assert result["warnings"] == ["none: no GPU to export; the host gets no config name"]


def test_malformed_facts_are_named_not_a_traceback(sim_host):
    sim_host(A100)
    facts = facts_after()
    del facts["gpus"][0]["mig"]
    with pytest.raises(_export.ExportError) as err:
        _export.export_fleet({"n": facts})
    assert err.value.problems == [
        "n: the nvidia_mig facts are malformed (KeyError: 'mig'); gather them again with gpu.mig.mig_facts"
    ]
    facts = facts_after()
    del facts["gpus"][0]["pci_device_id"]
    with pytest.raises(_export.ExportError, match="n GPU 0: the facts lack pci_device_id"):
        _export.export_fleet({"n": facts})


def test_the_configmap_passes_the_kubernetes_schema_and_carries_the_config(sim_host):
    sim_host(A100)
    export = _export.export_fleet({"n": facts_after(SPLIT_AND_WHOLE)})
    manifest = _export.configmap(export["config"])
    validate(manifest)
    assert manifest["metadata"]["name"] == "custom-mig-config" and manifest["metadata"]["namespace"] == "gpu-operator"
    text = manifest["data"]["config.yaml"]
    assert yaml.safe_load(text) == export["config"] and _migparted.check_config(yaml.safe_load(text)) == []
    from_text = _export.configmap(export["text"], name="mig.configs", namespace="nvidia-gpu-operator")
    validate(from_text)
    assert from_text["data"]["config.yaml"] == export["text"]


def test_the_configmap_lists_every_problem():
    bad = {"version": "v2", "mig-configs": {"x": [{"devices": "all", "mig-enabled": True}]}}
    with pytest.raises(_export.ExportError) as err:
        _export.configmap(bad, name="Not_A_Name", namespace="a.b")
    assert err.value.problems[:2] == [
        "mig_parted_configmap: name must be a Kubernetes object name: lower-case letters, digits, '-' and '.', at"
        " most 253",
        "mig_parted_configmap: namespace must be a Kubernetes namespace: 1-63 lower-case letters, digits and '-'",
    ]
    assert any("version" in p for p in err.value.problems[2:])
    with pytest.raises(_export.ExportError, match="config name 'all disabled' must be a Kubernetes label value"):
        _export.configmap(
            {"version": "v1", "mig-configs": {"all disabled": [{"devices": "all", "mig-enabled": False}]}}
        )
    with pytest.raises(_export.ExportError, match="is not YAML"):
        _export.configmap("version: [v1")


def test_node_labels_select_each_nodes_config_and_pass_the_schema():
    config = {"version": "v1", "mig-configs": {n: [{"devices": "all", "mig-enabled": False}] for n in ("a", "b")}}
    patches = _export.node_labels({"h2": "b", "h1": "a", "h3": "a"}, nodes={"h3": "gpu-3.example"}, config=config)
    for patch in patches:
        validate(patch)
    assert [(p["metadata"]["name"], p["metadata"]["labels"]) for p in patches] == [
        ("gpu-3.example", {"nvidia.com/mig.config": "a"}),
        ("h1", {"nvidia.com/mig.config": "a"}),
        ("h2", {"nvidia.com/mig.config": "b"}),
    ]


def test_node_labels_list_every_problem():
    config = "version: v1\nmig-configs:\n  a:\n  - {devices: all, mig-enabled: false}\n"
    with pytest.raises(_export.ExportError) as err:
        _export.node_labels(
            {"Host_1": "a", "h2": "missing", "h3": "a", "h4": "b"}, nodes={"h4": "h3", "gone": "x"}, config=config
        )
    assert err.value.problems == [
        "mig_parted_node_labels: Host_1: node name 'Host_1' must be a Kubernetes object name: lower-case letters,"
        " digits, '-' and '.', at most 253; map the host to its node name in 'nodes'",
        "mig_parted_node_labels: h2: config 'missing' is not in the config; it has a",
        "mig_parted_node_labels: h4: config 'b' is not in the config; it has a",
        "mig_parted_node_labels: node h3: two hosts name it, with configs 'a' and 'b'",
        "mig_parted_node_labels: nodes[gone]: no such host in the config names",
    ]


def test_the_filters_fail_as_ansible_filter_errors_listing_every_problem(sim_host):
    sim_host(A100)
    export = _filters.mig_parted_export({"n": facts_after()})
    assert _filters.mig_parted_node_labels(export["hosts"], config=export["text"])[0]["metadata"]["name"] == "n"
    assert _filters.mig_parted_configmap(export["config"])["kind"] == "ConfigMap"
    with pytest.raises(AnsibleFilterError, match=r"(?s)2 problems:\n- .*name must.*\n- .*namespace must"):
        _filters.mig_parted_configmap(export["config"], name="A", namespace="B")
    with pytest.raises(AnsibleFilterError, match="must map host names to nvidia_mig facts"):
        _filters.mig_parted_export([])
    with pytest.raises(AnsibleFilterError, match="must map host names to config names"):
        _filters.mig_parted_node_labels(["n"])
    assert pynvml.nvmlDeviceGetCount() == 1  # the filters only read what they are given
