# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""playbooks/k8s_mig_config.yml against a stand-in cluster: no Kubernetes runs here, so a stand-in kubernetes.core
(k8s, k8s_info) keeps the cluster in a JSON file and plays mig-manager: a node whose nvidia.com/mig.config changed
reads 'pending' once, then 'success' (or 'failed' for the configs the test marks as failing; 'stuck' stays pending).
The playbook's own logic is under test: what it applies, which nodes it relabels, how it waits and what it says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nvmlsim import cli

REPO = Path(__file__).resolve().parents[3]
CONFIG = {
    "version": "v1",
    "mig-configs": {
        name: [{"device-filter": "0x233010DE", "devices": "all", "mig-enabled": False, "mig-devices": {}}]
        for name in ("all-disabled", "keep", "broken", "stuck")
    },
}
COMMON = """from __future__ import annotations
import json, os
from ansible.module_utils.basic import AnsibleModule
PATH = os.environ["FAKE_CLUSTER"]
def load():
    with open(PATH) as f:
        return json.load(f)
def save(cluster):
    with open(PATH, "w") as f:
        json.dump(cluster, f)
"""
K8S = (
    COMMON
    + """
def main():
    spec = {k: {"type": "raw"} for k in ("state", "apply", "definition", "api_version", "kind", "name", "merge_type")}
    module = AnsibleModule(argument_spec=spec)
    p, cluster = module.params, load()
    definition = p["definition"] or {}
    kind = p["kind"] or definition.get("kind")
    name = p["name"] or definition["metadata"]["name"]
    cluster["calls"].append([p["state"], kind, name])
    if kind == "Node":
        labels = cluster["nodes"][name]
        for key, value in definition["metadata"]["labels"].items():
            if value is None:
                labels.pop(key, None)
            else:
                labels[key] = value
    else:
        cluster["objects"][kind + "/" + name] = definition
    save(cluster)
    module.exit_json(changed=True)
main()
"""
)
K8S_INFO = (
    COMMON
    + """
def main():
    module = AnsibleModule(argument_spec={"kind": {"type": "str"}, "name": {"type": "str"}})
    cluster, name = load(), module.params["name"]
    labels = cluster["nodes"].get(name)
    if labels is None:
        module.exit_json(changed=False, resources=[])
    config, state = labels.get("nvidia.com/mig.config"), labels.get("nvidia.com/mig.config.state")
    if config and config != "stuck":  # mig-manager: pending on the first look at a new value, then done
        if state is None:
            labels["nvidia.com/mig.config.state"] = "pending"
        elif state == "pending":
            labels["nvidia.com/mig.config.state"] = "failed" if config == "broken" else "success"
    elif config == "stuck":
        labels["nvidia.com/mig.config.state"] = "pending"
    save(cluster)
    module.exit_json(changed=False, resources=[{"metadata": {"name": name, "labels": labels}}])
main()
"""
)


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with the stand-in kubernetes.core collection and the config file."""
    base = tmp_path_factory.mktemp("k8s")
    modules = base / "collections/ansible_collections/kubernetes/core/plugins/modules"
    modules.mkdir(parents=True)
    (modules / "k8s.py").write_text(K8S)
    (modules / "k8s_info.py").write_text(K8S_INFO)
    (base / "config.yaml").write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    return base


def run(base: Path, nodes: dict, node_configs: dict, **extra) -> tuple[subprocess.CompletedProcess, dict]:
    """Run the playbook against a cluster of ``nodes`` (name -> labels); return the run and the cluster after it."""
    cluster = base / "cluster.json"
    cluster.write_text(json.dumps({"nodes": nodes, "objects": {}, "calls": []}))
    env = {
        **os.environ,
        "ANSIBLE_COLLECTIONS_PATH": f"{base / 'collections'}:{os.environ.get('ANSIBLE_COLLECTIONS_PATH', cli.COLLECTIONS)}",
        "ANSIBLE_LOCAL_TEMP": str(base / "tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "FAKE_CLUSTER": str(cluster),
    }
    extra_vars = {
        "gpu_mig_k8s_config_file": str(base / "config.yaml"),
        "gpu_mig_k8s_node_configs": node_configs,
        "gpu_mig_k8s_wait_delay": 0,
        **extra,
    }
    argv = [
        str(Path(sys.executable).parent / "ansible-playbook"),
        *("-e", json.dumps(extra_vars)),
        str(REPO / "playbooks/k8s_mig_config.yml"),
    ]
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, check=False)
    return result, json.loads(cluster.read_text())


def test_applies_the_configmap_relabels_changed_nodes_and_waits_for_success(stand_in):
    nodes = {
        "gpu-1": {"kubernetes.io/os": "linux"},
        "gpu-2": {"nvidia.com/mig.config": "keep", "nvidia.com/mig.config.state": "success"},
    }
    result, cluster = run(stand_in, nodes, {"gpu-1": "all-disabled", "gpu-2": "keep"})
    assert result.returncode == 0, result.stdout[-3000:]
    configmap = cluster["objects"]["ConfigMap/custom-mig-config"]
    assert configmap["metadata"]["namespace"] == "gpu-operator"
    assert yaml.safe_load(configmap["data"]["config.yaml"]) == CONFIG
    assert cluster["objects"]["ClusterPolicy/cluster-policy"] == {
        "spec": {"migManager": {"config": {"name": "custom-mig-config"}}}
    }
    assert cluster["nodes"] == {
        "gpu-1": {
            "kubernetes.io/os": "linux",
            "nvidia.com/mig.config": "all-disabled",
            "nvidia.com/mig.config.state": "success",
        },
        "gpu-2": {"nvidia.com/mig.config": "keep", "nvidia.com/mig.config.state": "success"},
    }
    assert [call for call in cluster["calls"] if call[1] == "Node"] == [["patched", "Node", "gpu-1"]]  # gpu-2 kept


def test_every_node_not_done_is_named_with_its_state(stand_in):
    # gpu-2 still shows the 'success' of its last change: it must not be read as done with its new config.
    nodes = {
        "gpu-1": {},
        "gpu-2": {"nvidia.com/mig.config": "keep", "nvidia.com/mig.config.state": "success"},
        "gpu-3": {},
    }
    configs = {"gpu-1": "stuck", "gpu-2": "broken", "gpu-3": "all-disabled"}
    result, cluster = run(stand_in, nodes, configs, gpu_mig_k8s_wait_retries=3, gpu_mig_k8s_cluster_policy="")
    assert result.returncode == 2
    assert "node gpu-1: nvidia.com/mig.config.state is pending for config stuck after 3 checks" in result.stdout
    assert (
        "node gpu-2: nvidia.com/mig.config.state is failed for config broken; see the mig-manager log: kubectl logs"
        " -n gpu-operator -l app=nvidia-mig-manager" in result.stdout
    )
    assert "node gpu-3:" not in result.stdout and cluster["nodes"]["gpu-3"]["nvidia.com/mig.config.state"] == "success"
    assert "ClusterPolicy/cluster-policy" not in cluster["objects"]


def test_nodes_the_cluster_lacks_and_names_not_in_the_config_are_refused_before_any_label(stand_in):
    result, cluster = run(stand_in, {"gpu-1": {}}, {"gpu-1": "all-disabled", "gpu-9": "all-disabled", "gpu-8": "x"})
    assert result.returncode == 2
    assert "mig_parted_node_labels: gpu-8: config 'x' is not in the config" in result.stdout
    assert cluster["calls"] == []
    result, cluster = run(stand_in, {"gpu-1": {}}, {"gpu-1": "all-disabled", "gpu-9": "all-disabled"})
    assert result.returncode == 2
    assert "nodes not in the cluster: gpu-9; map each host to its node name in gpu_mig_k8s_node_names" in result.stdout
    assert [call for call in cluster["calls"] if call[1] == "Node"] == []
