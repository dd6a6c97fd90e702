# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The renamed role variables (mig_layout_layout -> mig_layout_entries, inference_service_services ->
inference_service_specs): the new names drive the roles, the old ones still do with a deprecation warning, and a new
name set beside an old one wins. One playbook run over three simulated hosts, one per way of naming."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nvmlsim import cli

LAYOUT = [{"gpus": "all", "slots": [{"name": "chat", "profile": "3g.20gb"}, {"name": "ocr", "profile": "1g.5gb"}]}]
SERVICES = [
    {"name": "chat", "slot": "chat", "server": "triton", "command": ["/opt/tritonserver/bin/tritonserver"],
     "port": 8000, "backend_port": 18000, "model": {"name": "resnet", "dir": "/srv/models", "weights_mib": 2000}},
]  # fmt: skip
# Host -> the role variables it sets: the old names, the new names, or both (the old ones then naming nothing).
NAMING = {
    "old": {"mig_layout_layout": LAYOUT, "inference_service_services": SERVICES},
    "new": {"mig_layout_entries": LAYOUT, "inference_service_specs": SERVICES},
    "both": {"mig_layout_entries": LAYOUT, "inference_service_specs": SERVICES,
             "mig_layout_layout": [], "inference_service_services": []},
}  # fmt: skip
WARNINGS = {
    "mig_layout": "mig_layout_layout is deprecated and will be removed in gpu.mig 1.0.0; rename it to mig_layout_entries",
    "inference_service": "inference_service_services is deprecated and will be removed in gpu.mig 1.0.0; rename it to "
    "inference_service_specs",
}
UNIT = "etc/systemd/system/inference-chat.service"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """The roots of the three hosts and the run of mig_layout + inference_service over them."""
    base = tmp_path_factory.mktemp("renamed")
    inventory = {}
    for host, role_vars in NAMING.items():
        root = base / host
        assert cli.main(["host", str(root), "--gpu", "A100-SXM4-40GB:mig=on"]) == 0
        python = root / "python"
        python.write_text(cli.wrapper_script(root))
        python.chmod(0o755)
        inventory[host] = {
            "ansible_connection": "local",
            "ansible_python_interpreter": str(python),
            "gpu_mig_root": str(root),
            "gpu_mig_manage_systemd": False,
            "inference_service_manage_users": False,
            **role_vars,
        }
    (base / "inventory.json").write_text(json.dumps({"all": {"hosts": inventory}}))
    play = [{"hosts": "all", "gather_facts": False, "roles": ["gpu.mig.mig_layout", "gpu.mig.inference_service"]}]
    (base / "play.json").write_text(json.dumps(play))
    env = {
        **os.environ,
        "ANSIBLE_COLLECTIONS_PATH": os.environ.get("ANSIBLE_COLLECTIONS_PATH", str(cli.COLLECTIONS)),
        "ANSIBLE_LOCAL_TEMP": str(base / "tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORKS": "3",
    }
    argv = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(base / "inventory.json")]
    try:
        yield base, subprocess.run([*argv, str(base / "play.json")], capture_output=True, text=True, env=env,
                                   timeout=300, check=False)  # fmt: skip
    finally:
        cli.main(["stop", str(base)])


def test_old_and_new_names_drive_the_roles_alike(run):
    base, result = run
    assert result.returncode == 0, result.stdout[-4000:]
    for host in NAMING:
        slots = json.loads((base / host / "etc/gpu-mig/slots.json").read_text())
        assert sorted(slots) == ["chat", "ocr"], host
        assert (base / host / UNIT).read_text() == (base / "new" / UNIT).read_text(), host


def test_only_the_old_names_warn(run):
    result = run[1]
    for role, warning in WARNINGS.items():
        warned = [host for host in NAMING if f"{role} on {host}: {warning}" in " ".join(result.stdout.split())]
        assert warned == ["old", "both"], role
