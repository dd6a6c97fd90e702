# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""playbooks/audit.yml over a simulated fleet with a lost GPU, a host whose facts fail, an unreachable host and a host
with a slot map under its root."""

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
# The a100 host's GPU 0 holds 4g.20gb@0 (GPU instance 1, a tritonserver process in its compute instance 0) and
# 2g.10gb@4: the layout splits 4g.20gb into two compute instances, which destroys the busy one (with force: a warning).
A100_VARS = {
    "mig_layout_force": True,
    "preflight_layout": [
        {
            "gpus": 0,
            "slots": [
                {"name": "a", "profile": "4g.20gb", "compute_instances": ["1c.4g.20gb", "1c.4g.20gb"]},
                {"name": "b", "profile": "2g.10gb"},
            ],
        },
        {"gpus": 1, "slots": []},
    ],
}


# The a30 host (MIG on, no instances) has the slot map the mig_layout role wrote under its root (given with a trailing
# slash): x on 1g.6gb@3 and y on 1g.6gb@2, as before a reboot. The audit plans with it: the slots are missing there.
A30_SLOTS = [{"name": "x", "profile": "1g.6gb"}, {"name": "y", "profile": "1g.6gb"}]
A30_SLOT_MAP = {
    n: {"gpu_index": 0, "profile": "1g.6gb", "placement": {"start": s, "size": 1}} for n, s in (("x", 3), ("y", 2))
}


# The second h100 host (two H100s, MIG off) is given NVIDIA's published systemd default config by name, and no layout
# (preflight_layout: [] over the fleet-wide gpu_mig_layout of the command line).
MIG_PARTED_VARS = {
    "preflight_layout": [],
    "gpu_mig_parted_config_file": str(
        REPO / "tests/fixtures/mig-parted/mig-parted-systemd-config-default.yaml.published"
    ),
    "gpu_mig_parted_config_name": "all-3g.40gb",
}


@pytest.fixture(scope="module")
def audit(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    base = tmp_path_factory.mktemp("audit")
    fleet = base / "fleet"
    slot_map = base / "a30-root/etc/gpu-mig/slots.json"
    slot_map.parent.mkdir(parents=True)
    slot_map.write_text(json.dumps(A30_SLOT_MAP))
    a30_vars = {"gpu_mig_root": f"{base}/a30-root/", "preflight_layout": [{"gpus": 0, "slots": A30_SLOTS}]}
    mix = ["--hosts", "5", "--mix", "h100,l4,a30,a100,h100", "--lifetime", "120"]
    assert cli.main(["fleet", "--dir", str(fleet), *mix]) == 0
    try:
        assert cli.main(["fault", str(fleet / "sim00-h100"), "--lost", "--gpu", "1"]) == 0
        assert cli.main(["fault", str(fleet / "sim01-l4"), "--call", "nvmlDeviceGetCount"]) == 0
        # Nothing listens on port 1: Ansible cannot reach this host.
        gone = {"gone": {"ansible_connection": "ssh", "ansible_host": "127.0.0.1", "ansible_port": 1}}
        hosts = {**gone, "sim03-a100": A100_VARS, "sim02-a30": a30_vars, "sim04-h100": MIG_PARTED_VARS}
        (base / "gone.yml").write_text(yaml.safe_dump({"all": {"hosts": hosts}}))
        env = {
            **os.environ,
            "ANSIBLE_COLLECTIONS_PATH": os.environ.get("ANSIBLE_COLLECTIONS_PATH", str(REPO / ".build/collections")),
            "ANSIBLE_LOCAL_TEMP": str(base / "tmp"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_PIPELINING": "1",
        }
        argv = [
            str(Path(sys.executable).parent / "ansible-playbook"),
            *("-i", str(fleet / "inventory.yml"), "-i", str(base / "gone.yml")),
            *(
                "-e",
                json.dumps(
                    {"gpu_mig_report_dir": str(base / "report"), "gpu_mig_layout": [{"gpus": "all", "slots": []}]}
                ),
            ),
            str(REPO / "playbooks/audit.yml"),
        ]
        result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, check=False)
    finally:
        cli.main(["stop", str(fleet)])
    return result, base / "report"


def test_the_audit_runs_to_its_report(audit):
    result, report = audit
    assert result.returncode == 4, result.stdout + result.stderr  # 4: a host was unreachable; no task failed
    assert sorted(p.name for p in report.iterdir()) == [f"fleet-report.{f}" for f in ("csv", "html", "json", "md")]


def test_failed_facts_unreachable_and_a_lost_gpu_each_say_why(audit):
    document = json.loads((audit[1] / "fleet-report.json").read_text())
    hosts = {h["host"]: h for h in document["hosts"]}
    assert document["summary"]["unreachable"] == ["gone"]
    assert hosts["sim01-l4"]["verdict"] == "failed"
    assert hosts["sim01-l4"]["error"].startswith("counting the GPUs failed: NVML reported an unknown error")
    h100 = hosts["sim00-h100"]
    assert h100["verdict"] == "warn" and [g["error"] is None for g in h100["gpus"]] == [True, False]
    assert h100["gpus"][1]["error"].startswith("GPU 1: opening the GPU failed: the GPU has fallen off the bus")
    assert hosts["sim02-a30"]["verdict"] in ("ready", "warn")
    md = (audit[1] / "fleet-report.md").read_text()
    assert "| sim01-l4 | failed: counting the GPUs failed: NVML reported an unknown error" in md
    assert "| gone | unreachable |" in md and "| sim01-l4 | unreachable |" not in md
    assert "| sim00-h100 | warn | 550.90.07 / 12.4 | 1 | - | failed: GPU 1: opening the GPU failed" in md


def test_drift_is_the_plan_mig_instances_would_make(audit):
    """A compute-instance split is drift (the old matcher compared GPU instances only and said 'in sync'), and busy
    instances in the plan's way only warn on a host with mig_layout_force."""
    a100 = next(
        h for h in json.loads((audit[1] / "fleet-report.json").read_text())["hosts"] if h["host"] == "sim03-a100"
    )
    assert (a100["verdict"], a100["in_sync"]) == ("warn", False)
    where = "slot a (4g.20gb@0, GPU instance 1)"
    assert [g["drift"] for g in a100["gpus"]] == [
        [
            f"{where}: extra compute instance 0 (4g.20gb)",
            f"{where}: compute instance ci0 (1c.4g.20gb) missing",
            f"{where}: compute instance ci1 (1c.4g.20gb) missing",
        ],
        [],
    ]
    assert [g["desired_slots"] for g in a100["gpus"]] == [["a", "b"], []]
    (busy,) = [r for r in a100["reasons"] if r["where"] == "layout"]
    assert (
        busy["level"] == "warn"
        and "compute instance 0 in GPU instance 1 (4g.20gb) has running processes" in busy["msg"]
    )


def test_drift_is_planned_with_the_slot_map_under_the_hosts_root(audit):
    """The audit reads the slot map where the mig_layout role writes it (root joined without a double slash) and
    plans with it as mig_instances does: the slots are missing where the slot map recorded them."""
    a30 = next(h for h in json.loads((audit[1] / "fleet-report.json").read_text())["hosts"] if h["host"] == "sim02-a30")
    assert a30["in_sync"] is False
    assert [g["drift"] for g in a30["gpus"]] == [["slot x (1g.6gb@3) missing", "slot y (1g.6gb@2) missing"]]


def test_the_audit_reads_the_slot_map_where_the_mig_layout_role_writes_it():
    role = yaml.safe_load((REPO / "roles/mig_layout/defaults/main.yml").read_text())
    role_vars = yaml.safe_load((REPO / "roles/mig_layout/vars/main.yml").read_text())
    (gather,) = [
        t for t in yaml.safe_load((REPO / "playbooks/audit.yml").read_text())[0]["tasks"] if "gpu.mig.mig_facts" in t
    ]
    path = gather["gpu.mig.mig_facts"]["slot_map_file"]
    assert f"mig_layout_slot_map | default('{role['mig_layout_slot_map']}')" in path
    assert (
        "mig_layout_root | default(gpu_mig_root | default('/'))" in path
        and role["mig_layout_root"] == "{{ gpu_mig_root | default('/') }}"
    )
    assert "| regex_replace('/+$', '')" in path and "| regex_replace('/+$', '')" in role_vars["_mig_layout_prefix"]


def test_a_host_given_a_mig_parted_config_is_audited_against_it(audit):
    """Not 'skip' (the audit used to read gpu_mig_layout only): the config converted for the host's GPUs is the plan's
    input, as mig_instances converts it."""
    h100 = next(
        h for h in json.loads((audit[1] / "fleet-report.json").read_text())["hosts"] if h["host"] == "sim04-h100"
    )
    assert h100["verdict"] in ("ready", "warn") and h100["in_sync"] is False, h100["reasons"]
    assert [g["desired_slots"] for g in h100["gpus"]] == [[f"gpu{i}-3g-40gb-0", f"gpu{i}-3g-40gb-1"] for i in range(2)]
    assert all(g["managed"] and g["desired_mig"] for g in h100["gpus"])
