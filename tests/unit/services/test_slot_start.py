# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The inference units' start hook (roles/inference_service/files/slot_start.py), laid out as the role installs it.

``systemctl`` is a stub on PATH that logs its arguments and answers ``show`` with a given DeviceAllow list.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
SLOTS = {
    "chat": {"gpu_index": 0, "gpu_uuid": "GPU-a", "profile": "3g.20gb", "gpu_instance_id": 2,
             "compute_instance_id": 0, "mig_uuid": "MIG-1111"},
    "ocr": {"gpu_index": 1, "gpu_uuid": "GPU-b", "profile": "1g.5gb", "gpu_instance_id": 13,
            "compute_instance_id": 0, "mig_uuid": "MIG-2222"},
}  # fmt: skip
CHAT_DEVICES = ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia0",
                "/dev/nvidia-caps/nvidia-cap21", "/dev/nvidia-caps/nvidia-cap22"]  # fmt: skip
STUB = """#!/bin/sh
printf '%s\\n' "$*" >> "$STUB_LOG"
[ "$1" = show ] && cat "$STUB_SHOW"
exit 0
"""


@pytest.fixture
def hook(tmp_path: Path):
    """Install the hook as the role does; return a runner: (args, shown DeviceAllow, env) -> (result, systemctl calls)."""
    lib = tmp_path / "lib"
    core = lib / "ansible_collections/gpu/mig/plugins/plugin_utils"
    core.mkdir(parents=True)
    shutil.copy(REPO / "roles/inference_service/files/slot_start.py", lib)
    for name in ("__init__.py", "services.py"):
        shutil.copy(REPO / "plugins/plugin_utils" / name, core)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin/systemctl").write_text(STUB)
    (tmp_path / "bin/systemctl").chmod(0o755)
    (tmp_path / "slots.json").write_text(json.dumps(SLOTS))

    def run(args: list[str], shown: str = "", env: dict | None = None) -> tuple[subprocess.CompletedProcess, list[str]]:
        (tmp_path / "show").write_text(shown)
        log = tmp_path / "systemctl.log"
        log.write_text("")
        environ = {**os.environ, **(env or {}), "STUB_LOG": str(log), "STUB_SHOW": str(tmp_path / "show"),
                   "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}  # fmt: skip
        argv = [sys.executable, str(lib / "slot_start.py"), "--slot-map", str(tmp_path / "slots.json"),
                "--mig-minors", str(tmp_path / "no-mig-minors"), *args]  # fmt: skip
        result = subprocess.run(argv, capture_output=True, text=True, env=environ, timeout=60, check=False)
        return result, log.read_text().splitlines()

    return run


def test_sets_the_slot_devices_and_records_the_mig_uuid(hook, tmp_path: Path):
    stamp = tmp_path / "state/chat.mig_uuid"
    result, calls = hook(
        ["--unit", "inference-chat.service", "--slot", "chat", "--stamp", str(stamp)],
        shown="/dev/nvidiactl rw\n/dev/nvidia-uvm rw\n/dev/nvidia0 rw\nchar-rtc r\n",
        env={"GPU_MIG_UUID": "MIG-1111"},
    )
    assert result.returncode == 0, result.stderr
    assert calls == [
        "show --property=DeviceAllow --value inference-chat.service",
        "set-property --runtime inference-chat.service DeviceAllow=",
        "set-property --runtime inference-chat.service " + " ".join(f"DeviceAllow={d} rw" for d in CHAT_DEVICES),
    ]
    assert stamp.read_text() == "MIG-1111\n"


def test_leaves_a_correct_allow_list_alone(hook):
    shown = "".join(f"{device} rw\n" for device in CHAT_DEVICES)
    result, calls = hook(["--unit", "inference-chat.service", "--slot", "chat"], shown=shown)
    assert result.returncode == 0, result.stderr
    assert calls == ["show --property=DeviceAllow --value inference-chat.service"]


def test_replaces_the_nodes_of_an_earlier_layout(hook):
    """After a re-creation with other instance ids: the old capability nodes go, the slot's current ones come."""
    stale = (
        "".join(f"{d} rw\n" for d in CHAT_DEVICES[:3])
        + "/dev/nvidia-caps/nvidia-cap12 rw\n/dev/nvidia-caps/nvidia-cap13 rw\n"
    )
    result, calls = hook(["--unit", "inference-chat.service", "--slot", "chat"], shown=stale)
    assert result.returncode == 0, result.stderr
    assert calls[1:] == [
        "set-property --runtime inference-chat.service DeviceAllow=",
        "set-property --runtime inference-chat.service " + " ".join(f"DeviceAllow={d} rw" for d in CHAT_DEVICES),
    ]


def test_prefers_the_driver_table(hook, tmp_path: Path):
    (tmp_path / "mig-minors").write_text("config 1\nmonitor 2\ngpu1/gi13/access 501\ngpu1/gi13/ci0/access 502\n")
    result, calls = hook(
        ["--unit", "inference-ocr.service", "--slot", "ocr", "--mig-minors", str(tmp_path / "mig-minors")]
    )
    assert result.returncode == 0, result.stderr
    assert calls[-1].endswith(
        "DeviceAllow=/dev/nvidia1 rw DeviceAllow=/dev/nvidia-caps/nvidia-cap501 rw "
        "DeviceAllow=/dev/nvidia-caps/nvidia-cap502 rw"
    )


def test_container_runner_only_records_the_stamp(hook, tmp_path: Path):
    stamp = tmp_path / "ocr.mig_uuid"
    result, calls = hook(
        ["--unit", "inference-ocr.service", "--slot", "ocr", "--stamp", str(stamp), "--no-devices"],
        env={"GPU_MIG_UUID": "MIG-2222"},
    )
    assert result.returncode == 0, result.stderr
    assert calls == []
    assert stamp.read_text() == "MIG-2222\n"


def test_unknown_slot_fails_the_start(hook):
    result, calls = hook(["--unit", "inference-x.service", "--slot", "nope"])
    assert result.returncode == 1
    assert "slot 'nope' is not in" in result.stderr and "apply the MIG layout first" in result.stderr
    assert calls == []
