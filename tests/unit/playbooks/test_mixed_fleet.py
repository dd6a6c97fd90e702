# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""site.yml over a simulated mixed fleet (A100, H100, A30, L4) sharing one gpu_mig_layout (inventories/simulated_mixed):
every role passes over the entries that match none of a host's GPUs, each host ends with its own slice of the layout,
a second run changes nothing, and the boot applier restores it after a reboot."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nvmlsim import cli

REPO = Path(__file__).resolve().parents[3]
INVENTORY = REPO / "inventories/simulated_mixed"
# Host -> per GPU: (MIG mode on, GPU-instance profiles); the slots the slot map holds. The A100 keeps its busy
# 4g.20gb at slice 0 for chat; the L4 keeps no MIG and no slot.
EXPECTED = {
    "sim00-a100": ([(True, ["1g.5gb", "4g.20gb"])] * 2, ["chat-gpu0", "chat-gpu1", "ocr-gpu0", "ocr-gpu1"]),
    "sim01-h100": ([(True, ["1g.10gb", "3g.40gb"])] * 2, ["chat-gpu0", "chat-gpu1", "ocr-gpu0", "ocr-gpu1"]),
    "sim02-a30": ([(True, ["1g.6gb", "2g.12gb"])], ["chat", "ocr"]),
    "sim03-l4": ([(None, [])], []),
}
NVML_STATE = ("var/lib/migsim/host.json", "run/migsim/state.json")


def site(fleet: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "ANSIBLE_COLLECTIONS_PATH": os.environ.get("ANSIBLE_COLLECTIONS_PATH", str(cli.COLLECTIONS)),
        "ANSIBLE_LOCAL_TEMP": str(fleet / "tmp"),
        "ANSIBLE_REMOTE_TMP": str(fleet / "tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORKS": "4",
    }
    playbook = Path(sys.executable).parent / "ansible-playbook"
    argv = [str(playbook), "-i", str(fleet / "inventory.yml"), "-i", str(INVENTORY), str(REPO / "playbooks/site.yml")]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=540, check=False)


def recap(run: subprocess.CompletedProcess) -> dict[str, dict[str, int]]:
    """PLAY RECAP counters per host."""
    return {
        host: {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", counters)}
        for host, counters in re.findall(r"^(sim\S+)\s+:\s+(.*)$", run.stdout, re.MULTILINE)
    }


def live(host: Path) -> tuple[list, dict]:
    """(per GPU: MIG mode and GPU-instance profiles, the slot map) read through the host's own NVML, as modules do."""
    code = "import json; from ansible_collections.gpu.mig.plugins.module_utils._mig import nvml as _nvml; print(json.dumps(_nvml.gather()))"
    facts = json.loads(subprocess.run([host / "python", "-c", code], capture_output=True, check=True).stdout)
    gpus = [(g["mig"]["current"], sorted(gi["profile"] for gi in g["gpu_instances"])) for g in facts["gpus"]]
    slot_map = host / "etc/gpu-mig/slots.json"
    return gpus, json.loads(slot_map.read_text()) if slot_map.exists() else {}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory):
    """The fleet, its L4's NVML state before any run, and the first site.yml run."""
    base = tmp_path_factory.mktemp("mixed") / "fleet"
    assert cli.main(["fleet", "--dir", str(base), "--hosts", "4", "--mix", "a100,h100,a30,l4"]) == 0
    l4_before = {name: (base / "sim03-l4" / name).read_bytes() for name in NVML_STATE}
    try:
        yield base, l4_before, site(base)
    finally:
        cli.main(["stop", str(base)])


def test_site_converges_every_host_of_a_mixed_fleet(fleet):
    base, l4_before, run = fleet
    assert run.returncode == 0, run.stdout[-4000:]
    assert {host: counts["failed"] for host, counts in recap(run).items()} == dict.fromkeys(EXPECTED, 0)
    for host, (gpus, slots) in EXPECTED.items():
        found_gpus, slot_map = live(base / host)
        assert found_gpus == gpus, host
        assert sorted(slot_map) == slots, host
    # The L4 has no MIG: its simulated driver state is untouched.
    assert {name: (base / "sim03-l4" / name).read_bytes() for name in NVML_STATE} == l4_before


def test_second_run_changes_nothing(fleet):
    base, _unused, first = fleet
    assert first.returncode == 0
    again = site(base)
    assert again.returncode == 0, again.stdout[-4000:]
    assert {host: counts["changed"] for host, counts in recap(again).items()} == dict.fromkeys(EXPECTED, 0)


def test_boot_applier_restores_each_hosts_slice_after_a_reboot(fleet):
    base, _unused, first = fleet
    assert first.returncode == 0
    for host, (gpus, slots) in EXPECTED.items():
        root = base / host
        cli.main(["reboot", str(root)])
        applier = root / "usr/local/lib/gpu-mig/gpu-mig-apply"
        applied = subprocess.run(
            [root / "python", applier, "--root", root], capture_output=True, text=True, check=False
        )
        assert applied.returncode == 0 and "gpu-mig-apply: done" in applied.stderr, (host, applied.stderr)
        found_gpus, slot_map = live(root)
        assert found_gpus == gpus, host
        assert sorted(slot_map) == slots, host
