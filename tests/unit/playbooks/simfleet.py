# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Real ansible-playbook runs on a simulated fleet (migsim): build the fleet, run the collection's playbooks on it
with inventories/simulated's group variables, read the PLAY RECAP."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from nvmlsim import cli

REPO = Path(__file__).resolve().parents[3]


def build(base: Path, mix: str, hosts: int = 1) -> Path:
    """``hosts`` simulated hosts of ``mix`` under ``base`` and a vars inventory: no system users are created (the
    simulated hosts run as the test's user), everything else is inventories/simulated's."""
    assert cli.main(["fleet", "--dir", str(base), "--hosts", str(hosts), "--mix", mix]) == 0
    (base / "vars/group_vars").mkdir(parents=True)
    (base / "vars/hosts.yml").write_text("all:\n  children:\n    simulated_gpu_hosts:\n")
    (base / "vars/group_vars/simulated_gpu_hosts.yml").write_text("inference_service_manage_users: false\n")
    return base


def stop(base: Path) -> None:
    cli.main(["stop", str(base)])


def playbook(base: Path, name: str, *inventories: Path, extra: dict | None = None) -> subprocess.CompletedProcess:
    """Run playbooks/<name> on the fleet (its inventory, inventories/simulated, the vars, then ``inventories``)."""
    env = {
        **os.environ,
        "ANSIBLE_COLLECTIONS_PATH": os.environ.get("ANSIBLE_COLLECTIONS_PATH", str(cli.COLLECTIONS)),
        "ANSIBLE_LOCAL_TEMP": str(base / "tmp"),
        "ANSIBLE_REMOTE_TMP": str(base / "tmp"),
        "ANSIBLE_NOCOLOR": "1",
    }
    argv = [str(Path(sys.executable).parent / "ansible-playbook")]
    for inventory in (base / "inventory.yml", REPO / "inventories/simulated", base / "vars", *inventories):
        argv += ["-i", str(inventory)]
    if extra is not None:
        path = base / ("extra-%s.json" % name)
        path.write_text(json.dumps(extra))
        argv += ["-e", "@%s" % path]
    argv.append(str(REPO / "playbooks" / name))
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=400, check=False)


def recap(run: subprocess.CompletedProcess, host: str) -> dict[str, int]:
    """The PLAY RECAP counters of ``host``."""
    counters = re.search(r"^%s\s+:\s+(.*)$" % re.escape(host), run.stdout, re.MULTILINE).group(1)
    return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", counters)}


def changed_tasks(run: subprocess.CompletedProcess) -> list[str]:
    """The tasks that reported a change, with their changed lines (for failure messages)."""
    out, task = [], ""
    for line in run.stdout.splitlines():
        if line.startswith("TASK ["):
            task = line
        elif line.startswith("changed:"):
            out.append("%s %s" % (task, line))
    return out
