# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""playbooks/export_mig_parted.yml over a simulated mixed fleet (A100 with instances and a process, H100 exporting a
desired layout, A30 named by a host var, L4 without MIG): the written file is a valid mig-parted config, and on each
host its config imports (``_migparted.layout_from_mig_parted``) as no change, or as exactly the desired layout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ansible_collections.gpu.mig.plugins.module_utils._mig import apply as _apply
from ansible_collections.gpu.mig.plugins.module_utils._mig import layout as _layout
from ansible_collections.gpu.mig.plugins.module_utils._mig import migparted as _migparted
from nvmlsim import cli

REPO = Path(__file__).resolve().parents[3]
HOSTS = ("sim00-a100", "sim01-h100", "sim02-a30", "sim03-l4")
DESIRED = [{"gpus": "all", "slots": [{"name": "chat", "profile": "3g.40gb"}, {"name": "ocr", "profile": "1g.10gb"}]}]
HOST_VARS = {
    "sim01-h100": {"gpu_mig_export_desired": True, "gpu_mig_layout": DESIRED},
    "sim02-a30": {"gpu_mig_export_config_name": "a30-empty"},
}


def live_facts(host: Path) -> dict:
    """The host's nvidia_mig facts, read through its own (simulated) NVML as gpu.mig.mig_facts reads them."""
    code = (
        "import json; from ansible_collections.gpu.mig.plugins.module_utils._mig import nvml as _nvml;"
        " print(json.dumps(_nvml.gather()))"
    )
    return json.loads(subprocess.run([host / "python", "-c", code], capture_output=True, check=True).stdout)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    """(fleet directory, the playbook run, the export directory)."""
    base = tmp_path_factory.mktemp("export")
    fleet = base / "fleet"
    assert cli.main(["fleet", "--dir", str(fleet), "--hosts", "4", "--mix", "a100,h100,a30,l4"]) == 0
    try:
        (base / "vars.yml").write_text(yaml.safe_dump({"all": {"hosts": HOST_VARS}}))
        env = {
            **os.environ,
            "ANSIBLE_COLLECTIONS_PATH": os.environ.get("ANSIBLE_COLLECTIONS_PATH", str(cli.COLLECTIONS)),
            "ANSIBLE_LOCAL_TEMP": str(base / "tmp"),
            "ANSIBLE_REMOTE_TMP": str(base / "tmp"),
            "ANSIBLE_NOCOLOR": "1",
        }
        argv = [
            str(Path(sys.executable).parent / "ansible-playbook"),
            *("-i", str(fleet / "inventory.yml"), "-i", str(base / "vars.yml")),
            *("-e", f"gpu_mig_export_dir={base / 'out'}"),
            str(REPO / "playbooks/export_mig_parted.yml"),
        ]
        run = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, check=False)
        yield fleet, run, base / "out"
    finally:
        cli.main(["stop", str(fleet)])


def test_the_playbook_writes_a_valid_config_and_the_host_map(exported):
    _fleet, run, out = exported
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    config = yaml.safe_load((out / "mig-parted-config.yaml").read_text())
    hosts = yaml.safe_load((out / "mig-parted-hosts.yaml").read_text())
    assert _migparted.check_config(config) == []
    assert sorted(hosts) == list(HOSTS) and hosts["sim02-a30"] == "a30-empty"
    assert sorted(config["mig-configs"]) == sorted(set(hosts.values()))
    assert config["mig-configs"]["a30-empty"] == [
        {"device-filter": "0x20B710DE", "devices": "all", "mig-enabled": True, "mig-devices": {}}
    ]
    # Every instance of this fleet holds a compute instance: nothing the config cannot express.
    assert run.stdout.split("TASK [Print what the config cannot express]")[1].split("\n")[1] == "skipping: [localhost]"


def test_each_hosts_config_reimports_as_no_change_or_as_its_desired_layout(exported):
    fleet, run, out = exported
    assert run.returncode == 0
    config = yaml.safe_load((out / "mig-parted-config.yaml").read_text())
    hosts = yaml.safe_load((out / "mig-parted-hosts.yaml").read_text())
    for host in HOSTS:
        _facts, states, models = _apply.host_from_facts(live_facts(fleet / host)["gpus"])
        imported = _migparted.layout_from_mig_parted(config, hosts[host], states, models)
        assert (imported.skipped, imported.warnings) == ([], []), host
        plan = _layout.plan_layout(imported.entries, states, models)
        if host in HOST_VARS and HOST_VARS[host].get("gpu_mig_export_desired"):
            desired = _layout.plan_layout(DESIRED, states, models)
            assert plan.changed and desired.changed
            profiles = sorted((s.gpu_index, s.profile) for s in plan.slots)
            assert profiles == sorted((s.gpu_index, s.profile) for s in desired.slots)
            assert [g.mig_after for g in plan.gpus] == [g.mig_after for g in desired.gpus] == [True, True]
        else:
            assert plan.actions == (), (host, plan.to_dict())
