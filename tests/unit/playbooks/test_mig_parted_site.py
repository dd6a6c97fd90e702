# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""site.yml and reslice.yml with hosts given a mig-parted config instead of gpu_mig_layout, through every role.

The GPU Operator's default mig-parted file and its config name chosen by a group variable (as the operator's
``nvidia.com/mig.config`` node label chooses it) drive an A100 host with MIG off (GPU 0 with MIG on pending since a
client held it: only a reset applies it) and an H100 host with MIG off. preflight reports on the config's layout,
mig_mode turns MIG on where the config wants it (GPU 0 through the role's reset), mig_layout applies the config's
counts; a second run changes nothing; reslice.yml then moves the A100 host to another config of the file. Hosts given
both a layout and a config are refused by preflight and by mig_mode, naming both variables, and a config name the file
lacks by mig_mode, before any change; preflight blocks a host without a driver for it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from nvmlsim import cli, mig, state

REPO = Path(__file__).resolve().parents[3]
CONFIG_FILE = REPO / "tests/fixtures/mig-parted/gpu-operator-default-mig-parted-config.yaml.published"
CONFIGS = yaml.safe_load(CONFIG_FILE.read_text())["mig-configs"]
HOSTS = {"a100": ["--gpu", "A100-SXM4-40GB", "--gpu", "A100-SXM4-40GB"], "h100": ["--gpu", "H100-80GB"]}
PCI_IDS = {"a100": 0x20B010DE, "h100": 0x233010DE}  # the simulated models' PCI device ids
LAYOUT = [{"gpus": 0, "slots": [{"name": "chat", "profile": "3g.20gb"}]}]


def config_devices(name: str, host: str) -> Counter:
    """The MIG devices a GPU of ``host``'s model gets from config ``name``, read from the config itself: the
    ``devices: all`` entry whose device filter names the model (or that has no filter)."""
    for entry in CONFIGS[name]:
        filters = entry.get("device-filter", [])
        filters = [filters] if isinstance(filters, str) else filters
        if not filters or PCI_IDS[host] in (int(f, 16) for f in filters):
            return Counter(entry["mig-devices"])
    raise AssertionError(f"config {name} has no entry for {host}")


def live_devices(root: Path) -> list[tuple[bool, Counter]]:
    """Per GPU, (MIG on, its MIG devices counted as mig-parted counts them), read through the host's NVML."""
    code = (
        "import json; from ansible_collections.gpu.mig.plugins.module_utils._mig import nvml as _nvml;"
        " print(json.dumps(_nvml.gather()))"
    )
    facts = json.loads(subprocess.run([root / "python", "-c", code], capture_output=True, check=True).stdout)
    found = []
    for gpu in facts["gpus"]:
        devices = Counter()
        for gi in gpu["gpu_instances"]:
            devices.update(
                gi["profile"] if ci["profile"] == gi["profile"] else ci["profile"] for ci in gi["compute_instances"]
            )
        found.append((gpu["mig"]["current"], devices))
    return found


def playbook(base: Path, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "ANSIBLE_COLLECTIONS_PATH": os.environ.get("ANSIBLE_COLLECTIONS_PATH", str(cli.COLLECTIONS)),
        "ANSIBLE_LOCAL_TEMP": str(base / "tmp"),
        "ANSIBLE_REMOTE_TMP": str(base / "tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORKS": "4",
    }
    argv = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(base / "inventory.json"), *args]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=400, check=False)


def recap(run: subprocess.CompletedProcess) -> dict[str, dict[str, int]]:
    return {
        host: {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", counters)}
        for host, counters in re.findall(r"^(\S+)\s+:\s+(ok=.*)$", run.stdout, re.MULTILINE)
    }


def task_results(run: subprocess.CompletedProcess, task: str) -> list[str]:
    """The result lines (``changed: [a100]``, ``skipping: [h100]``) of every run of a task."""
    blocks = re.findall(r"^TASK \[[^\]]*: " + re.escape(task) + r"\] \*+\n(.*?)(?=^TASK |^PLAY |^RUNNING )", run.stdout, re.MULTILINE | re.DOTALL)  # fmt: skip
    return [
        line for block in blocks for line in block.splitlines() if re.match(r"^(ok|changed|skipping|fatal): ", line)
    ]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory):
    """The hosts' base folder and the first site.yml run."""
    base = tmp_path_factory.mktemp("parted-site")
    hosts = {}
    for host, argv in HOSTS.items():
        root = base / host
        assert cli.main(["host", str(root), "--hostname", host, *argv]) == 0
        (root / "python").write_text(cli.wrapper_script(root))
        (root / "python").chmod(0o755)
        hosts[host] = {"ansible_python_interpreter": str(root / "python"), "gpu_mig_root": str(root)}
    with state.transaction(base / "a100") as host:  # MIG on asked while a client held GPU 0; the client is gone
        mig.mode_record(host, 0).update(pending=1)
    for name in ("preflight_checks", "mode_checks"):  # given both a layout and a config: refused before any change
        hosts[name] = {"ansible_python_interpreter": sys.executable, "gpu_mig_root": str(base / name),
                       "gpu_mig_layout": LAYOUT}  # fmt: skip
    # An H100 host whose config name is not in the file, and a host without a driver.
    for name, argv in (
        ("mode_typo", ["--gpu", "H100-80GB"]),
        ("preflight_no_driver", ["--gpu", "H100-80GB", "--no-driver"]),
    ):
        root = base / name
        assert cli.main(["host", str(root), "--hostname", name, *argv]) == 0
        (root / "python").write_text(cli.wrapper_script(root))
        (root / "python").chmod(0o755)
        hosts[name] = {"ansible_python_interpreter": str(root / "python"), "gpu_mig_root": str(root)}
    hosts["mode_typo"]["gpu_mig_parted_config_name"] = "all-balance"
    inventory = {
        "all": {
            "vars": {
                "ansible_connection": "local",
                "gpu_mig_manage_systemd": False,
                "gpu_mig_install_nvml": False,
                "mig_layout_cdi": "never",
                "preflight_probe_host": False,  # the NVML facts are what a mig-parted config is judged on
                "gpu_mig_parted_config_file": str(CONFIG_FILE),
            },
            "children": {
                # The config per group, as the GPU Operator's node label nvidia.com/mig.config chooses it.
                "gpu_operator": {"hosts": hosts, "vars": {"gpu_mig_parted_config_name": "all-balanced"}},
            },
        }
    }
    (base / "inventory.json").write_text(json.dumps(inventory))
    try:
        yield base, playbook(base, "--limit", "a100,h100", str(REPO / "playbooks/site.yml"))
    finally:
        cli.main(["stop", str(base)])


def test_site_applies_the_config_through_every_role(fleet):
    base, run = fleet
    assert run.returncode == 0, run.stdout[-6000:]
    assert {host: counts["failed"] for host, counts in recap(run).items()} == {"a100": 0, "h100": 0}
    # preflight judged the config's layout (without it: skip), mig_mode turned MIG on, GPU 0 by the role's reset.
    # The pending GPU 0 waits for mig_mode's reset: a warning, not a block.
    assert dict(re.findall(r'"msg": "(a100|h100): (\w+)', run.stdout)) == {"a100": "warn", "h100": "ready"}
    assert sorted(task_results(run, "Enable MIG on the GPUs the layout selects")) == [
        "changed: [a100]",
        "changed: [h100]",
    ]
    assert task_results(run, "Reset only the GPUs whose mode changed") == ["changed: [a100]"]
    for host in HOSTS:
        want = config_devices("all-balanced", host)
        assert live_devices(base / host) == [(True, want)] * len(HOSTS[host][1::2]), host
        assert sorted(json.loads((base / host / "etc/gpu-mig/slots.json").read_text()))  # slots published
        applier = json.loads((base / host / "etc/gpu-mig/applier.json").read_text())
        assert applier["mig_parted_config_name"] == "all-balanced"


def test_a_second_site_run_changes_nothing(fleet):
    base, first = fleet
    assert first.returncode == 0
    again = playbook(base, "--limit", "a100,h100", str(REPO / "playbooks/site.yml"))
    assert again.returncode == 0, again.stdout[-6000:]
    assert {host: counts["changed"] for host, counts in recap(again).items()} == {"a100": 0, "h100": 0}
    assert dict(re.findall(r'"msg": "(a100|h100): (\w+)', again.stdout)) == {"a100": "ready", "h100": "ready"}


def test_reslice_moves_a_host_to_another_config_of_the_file(fleet):
    base, first = fleet
    assert first.returncode == 0
    run = playbook(base, "--limit", "a100", "-e", "gpu_mig_parted_config_name=all-1g.10gb",
                   str(REPO / "playbooks/reslice.yml"))  # fmt: skip
    assert run.returncode == 0, run.stdout[-6000:]
    assert recap(run)["a100"]["failed"] == 0
    want = config_devices("all-1g.10gb", "a100")
    assert live_devices(base / "a100") == [(True, want)] * 2
    slot_map = json.loads((base / "a100/etc/gpu-mig/slots.json").read_text())
    assert Counter(slot["profile"] for slot in slot_map.values()) == Counter({"1g.10gb": 2 * want["1g.10gb"]})
    applier = json.loads((base / "a100/etc/gpu-mig/applier.json").read_text())
    assert applier["mig_parted_config_name"] == "all-1g.10gb"


def test_the_roles_refuse_what_cannot_apply_before_any_change(fleet):
    """Given both a layout and a config, or a config name the file lacks: every problem named; without a driver,
    blocked."""
    base, _first = fleet
    roles = {
        "preflight_checks": "gpu.mig.preflight",
        "mode_checks": "gpu.mig.mig_mode",
        "mode_typo": "gpu.mig.mig_mode",
        "preflight_no_driver": "gpu.mig.preflight",
    }
    task = {"name": "Run the role", "ansible.builtin.include_role": {"name": "{{ roles[inventory_hostname] }}"}}
    (base / "checks.json").write_text(json.dumps([{"hosts": ",".join(roles), "gather_facts": False,
                                                   "vars": {"roles": roles}, "tasks": [task]}]))  # fmt: skip
    typo_before = state.read(base / "mode_typo").snapshot()
    run = playbook(base, "--limit", ",".join(roles), str(base / "checks.json"))
    text = " ".join(run.stdout.split())
    assert {host: counts["failed"] for host, counts in recap(run).items()} == dict.fromkeys(roles, 1)
    for role, host in (("preflight", "preflight_checks"), ("mig_mode", "mode_checks")):
        both = f"{role}_layout (gpu_mig_layout) or {role}_mig_parted_config_file (gpu_mig_parted_config_file), not both"
        assert f"{role} on {host}: set either {both}" in text
    assert not (base / "preflight_checks").exists() and not (base / "mode_checks").exists()
    assert "mig_parted_layout: config 'all-balance': 1 problem(s): mig-parted config: no config named 'all-balance';" \
        " available: all-1g.10gb," in text  # fmt: skip
    assert state.read(base / "mode_typo").snapshot() == typo_before
    # Without NVML the config's GPUs are unknown: the host is blocked for the driver, as with a layout (not skipped).
    assert "preflight blocked preflight_no_driver: [1] host: NVML is not available" in text
