# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The mig_layout and mig_persist roles with a mig-parted config file, its config chosen per host by a group variable.

One ansible-playbook run over simulated hosts: a two-GPU H100 host takes a named config of a fleet-wide file (device
indices it lacks are skipped), an A30 host takes a plain layout, a host given both is refused before anything
changes (by mig_layout and by mig_persist, each naming both variables). Then both hosts reboot (the H100s lose their
MIG mode, every host its instances) and the installed boot applier brings back the very slots that were applied:
names, GPUs, profiles, placements and compute instances.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from nvmlsim import cli, state

LIB = "usr/local/lib/gpu-mig"
CORE = f"{LIB}/ansible_collections/gpu/mig/plugins/module_utils/_mig"
SLOT_MAP = "etc/gpu-mig/slots.json"
ENV_DIR = "run/gpu-mig/slots"
# A fleet-wide file as the GPU Operator's users write them: entries name device indices of the biggest hosts.
MIG_PARTED = """\
version: v1
mig-configs:
  all-disabled:
    - devices: all
      mig-enabled: false
  inference-mixed:
    - devices: [0]
      mig-enabled: true
      mig-devices:
        "1g.10gb": 2
        "3g.40gb": 1
    - devices: [1, 2, 3, 4, 5, 6, 7]
      mig-enabled: true
      mig-devices:
        "1c.2g.20gb": 2
        "4g.40gb": 1
"""
LAYOUT = [{"gpus": 0, "slots": [{"name": "chat", "profile": "2g.12gb"}, {"name": "ocr", "profile": "1g.6gb"}]}]
HOSTS = {  # host -> simulated GPUs and starting instances
    "parted": ["--gpu", "H100-80GB", "--gpu", "H100-80GB"],
    "layout": ["--gpu", "A30:mig=on"],
    "both": ["--gpu", "A100-SXM4-40GB:mig=on", "--instance", "0:3g.20gb@4"],
}
BOTH_VARS = "mig_layout_entries (gpu_mig_layout) or mig_layout_mig_parted_config_file (gpu_mig_parted_config_file)"


def host_vars(root: Path) -> dict:
    python = root / "python"
    python.write_text(cli.wrapper_script(root))
    python.chmod(0o755)
    return {
        "ansible_connection": "local",
        "ansible_python_interpreter": str(python),
        "gpu_mig_root": str(root),
        "gpu_mig_manage_systemd": False,
        "mig_layout_cdi": "never",
    }


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory):
    """The hosts' base folder, the playbook run, and the state of the 'both' host before it."""
    base = tmp_path_factory.mktemp("migparted")
    config_file = base / "mig-parted.yaml"
    config_file.write_text(MIG_PARTED)
    inventory = {}
    for host, argv in HOSTS.items():
        assert cli.main(["host", str(base / host), "--hostname", host, *argv]) == 0
        inventory[host] = host_vars(base / host)
    inventory["layout"]["gpu_mig_layout"] = LAYOUT
    inventory["both"].update(gpu_mig_layout=LAYOUT, gpu_mig_parted_config_file=str(config_file),
                             gpu_mig_parted_config_name="inference-mixed")  # fmt: skip
    # mig_persist alone, given both and a file that is not there: every problem named at once.
    inventory["persist_checks"] = {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable, "gpu_mig_root": str(base / "pc"),
        "gpu_mig_layout": LAYOUT, "gpu_mig_parted_config_file": str(base / "missing.yaml"),
        "gpu_mig_parted_config_name": "inference-mixed",
    }  # fmt: skip
    groups = {  # the config file and the config of the group, as group variables
        "inference": {
            "hosts": {"parted": inventory.pop("parted")},
            "vars": {"gpu_mig_parted_config_file": str(config_file), "gpu_mig_parted_config_name": "inference-mixed"},
        }
    }
    (base / "inventory.json").write_text(json.dumps({"all": {"hosts": inventory, "children": groups}}))
    plays = [
        {"hosts": "inference,layout,both", "gather_facts": False, "roles": ["gpu.mig.mig_layout", "gpu.mig.mig_persist"]},
        {"hosts": "persist_checks", "gather_facts": False, "roles": ["gpu.mig.mig_persist"]},
    ]  # fmt: skip
    (base / "play.json").write_text(json.dumps(plays))
    env = {
        **os.environ,
        "ANSIBLE_COLLECTIONS_PATH": os.environ.get("ANSIBLE_COLLECTIONS_PATH", str(cli.COLLECTIONS)),
        "ANSIBLE_LOCAL_TEMP": str(base / "tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORKS": "4",
    }
    both_before = state.read(base / "both").snapshot()
    argv = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(base / "inventory.json")]
    try:
        run = subprocess.run([*argv, str(base / "play.json")], capture_output=True, text=True, env=env, timeout=300,
                             check=False)  # fmt: skip
        yield base, run, both_before
    finally:
        cli.main(["stop", str(base)])


def recap(run: subprocess.CompletedProcess, host: str) -> dict[str, int]:
    line = next(line for line in run.stdout.splitlines() if line.startswith(f"{host} ") and "failed=" in line)
    return {key: int(value) for key, value in (part.split("=") for part in line.split(":", 1)[1].split())}


def slots(root: Path) -> dict:
    return json.loads((root / SLOT_MAP).read_text())


def identity(slot_map: dict) -> dict:
    """What a slot is, apart from the ids NVML hands out anew: GPU, profile, placement, compute instance profiles."""
    return {
        name: (slot["gpu_index"], slot["gpu_uuid"], slot["profile"], slot["placement"],
               sorted(ci["profile"] for ci in slot["compute_instances"]))
        for name, slot in slot_map.items()
    }  # fmt: skip


def mig_parted_devices(slot_map: dict) -> dict[int, Counter]:
    """The slots counted as mig-parted counts devices: one per compute instance, a full one under the GI profile."""
    devices: dict[int, Counter] = {}
    for slot in slot_map.values():
        cis = slot["compute_instances"]
        names = [slot["profile"]] if len(cis) == 1 and cis[0]["profile"] == slot["profile"] else [
            ci["profile"] for ci in cis
        ]  # fmt: skip
        devices.setdefault(slot["gpu_index"], Counter()).update(names)
    return devices


def boot(root: Path) -> subprocess.CompletedProcess:
    """Run the installed boot applier as the unit does, on the simulated host."""
    argv = [str(root / "python"), str(root / LIB / "gpu-mig-apply"), "--root", str(root)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def test_the_roles_apply_the_config_named_for_the_host(fleet):
    base, run, _before = fleet
    assert recap(run, "parted")["failed"] == 0 and recap(run, "layout")["failed"] == 0, run.stdout[-6000:]
    entries = yaml.safe_load(MIG_PARTED)["mig-configs"]["inference-mixed"]
    want = {0: Counter(entries[0]["mig-devices"]), 1: Counter(entries[1]["mig-devices"])}
    assert mig_parted_devices(slots(base / "parted")) == want
    assert sorted(slots(base / "layout")) == ["chat", "ocr"]
    applier = json.loads((base / "parted/etc/gpu-mig/applier.json").read_text())
    assert applier["mig_parted_config"] == yaml.safe_load(MIG_PARTED)
    assert applier["mig_parted_config_name"] == "inference-mixed" and applier["layout"] is None
    assert (base / "parted" / CORE / "migparted.py").read_bytes() == (
        Path(__file__).resolve().parents[3] / "plugins/module_utils/_mig/migparted.py"
    ).read_bytes()


def test_a_host_given_both_is_refused_before_anything_changes(fleet):
    base, run, before = fleet
    text = " ".join(run.stdout.split())
    assert recap(run, "both")["failed"] == 1
    assert f"mig_layout on both: set either {BOTH_VARS}, not both" in text
    assert state.read(base / "both").snapshot() == before
    assert not (base / "both/etc").exists()
    assert recap(run, "persist_checks")["failed"] == 1
    persist_vars = (
        "mig_persist_layout (gpu_mig_layout) or mig_persist_mig_parted_config_file (gpu_mig_parted_config_file)"
    )
    assert f"mig_persist on persist_checks: set either {persist_vars}, not both" in text
    assert f"mig_persist_mig_parted_config_file {base}/missing.yaml is not a mig-parted config file" in text
    assert not (base / "pc").exists()


@pytest.mark.parametrize(("host", "skipped"), [("parted", 6), ("layout", 0)])
def test_the_boot_applier_brings_back_the_applied_slots(fleet, host, skipped):
    base = fleet[0]
    root = base / host
    applied = slots(root)
    assert applied, fleet[1].stdout[-4000:]
    cli.main(["reboot", str(root)])
    gone = json.loads(state.read(root).snapshot())["volatile"]["gpus"]
    assert all(not gpu.get("gpu_instances") for gpu in gone)  # a reboot leaves no instance
    first = boot(root)
    assert first.returncode == 0, first.stderr
    assert "Traceback" not in first.stderr
    assert len([line for line in first.stderr.splitlines() if line.startswith("gpu-mig-apply: skipped: ")]) == skipped
    assert identity(slots(root)) == identity(applied)
    assert sorted(p.name for p in (root / ENV_DIR).iterdir()) == sorted(f"{name}.env" for name in applied)
    again = boot(root)
    assert again.returncode == 0 and again.stderr.splitlines()[-1].endswith("already in place"), again.stderr
