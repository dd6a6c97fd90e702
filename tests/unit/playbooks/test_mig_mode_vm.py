# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The mig_mode role in a VM with GPU pass-through (migsim --vm-passthrough): an A100 whose MIG mode stays pending
because the GPU cannot be reset. The role must name the GPU and ask for a VM restart, not for stopping clients."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from nvmlsim import cli, state


def test_role_asks_for_a_vm_restart_where_the_gpu_cannot_be_reset(tmp_path: Path):
    root = tmp_path / "vm1"
    assert cli.main(["host", str(root), "--gpu", "A100-SXM4-40GB", "--vm-passthrough"]) == 0
    python = root / "python"
    python.write_text(cli.wrapper_script(root))
    python.chmod(0o755)
    host_vars = {
        "ansible_connection": "local",
        "ansible_python_interpreter": str(python),
        "gpu_mig_root": str(root),
        "gpu_mig_manage_systemd": False,
        "gpu_mig_layout": [{"gpus": "NVIDIA A100-SXM4-40GB", "slots": []}],
    }
    (tmp_path / "inventory.json").write_text(json.dumps({"all": {"hosts": {"vm1": host_vars}}}))
    play = [{"hosts": "vm1", "gather_facts": False, "roles": ["gpu.mig.mig_mode"]}]
    (tmp_path / "play.json").write_text(json.dumps(play))
    env = {
        **os.environ,
        "ANSIBLE_COLLECTIONS_PATH": os.environ.get("ANSIBLE_COLLECTIONS_PATH", str(cli.COLLECTIONS)),
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp"),
        "ANSIBLE_NOCOLOR": "1",
    }
    playbook = Path(sys.executable).parent / "ansible-playbook"
    argv = [str(playbook), "-i", str(tmp_path / "inventory.json"), str(tmp_path / "play.json")]
    run = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, check=False)
    uuid = state.read(root).gpus[0]["uuid"]
    assert run.returncode == 2, run.stdout[-3000:]
    failure = [line for line in run.stdout.splitlines() if line.startswith("fatal: [vm1]")][-1]  # after the rescue
    assert f"MIG mode is still pending on {uuid}" in failure
    assert f"GPU 0 ({uuid}): turning MIG on waits for a GPU reset, and this GPU cannot be reset here" in failure
    assert "Fix: restart the VM" in failure
    assert "stop the GPU clients" not in failure and "processes []" not in failure
    assert state.read(root).gpus[0]["mig"] == {"current": 0, "pending": 1}
