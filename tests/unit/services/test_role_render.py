# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The inference_service role against a fake root: it renders, its unit passes systemd-analyze, preflight refuses.

No systemd or GPU needed: ``inference_service_manage_systemd``/``_manage_users`` are off and the slot map is a file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ansible_collections.gpu.mig.plugins.plugin_utils.services import systemd_exec

REPO = Path(__file__).resolve().parents[3]
SLOTS = {
    "chat": {"gpu_index": 0, "gpu_uuid": "GPU-a", "gpu_name": "NVIDIA A100-SXM4-40GB", "profile": "3g.20gb",
             "placement": {"start": 4, "size": 4}, "gpu_instance_id": 2, "compute_instance_id": 0,
             "mig_uuid": "MIG-1111", "memory_mib": 20096},
    "ocr": {"gpu_index": 0, "gpu_uuid": "GPU-a", "gpu_name": "NVIDIA A100-SXM4-40GB", "profile": "1g.5gb",
            "placement": {"start": 0, "size": 1}, "gpu_instance_id": 13, "compute_instance_id": 0,
            "mig_uuid": "MIG-2222", "memory_mib": 4864},
}  # fmt: skip
# Words that systemd would split, expand (%s, $HOME) or unquote if they were written as they are.
ODD_ARGS = ["--served-model-name", 'ocr "v1"', "--download-dir", "$HOME/model cache", "--note", "50%s it's a\\b;c"]
SERVICES = [
    {"name": "chat", "slot": "chat", "server": "triton", "command": ["/opt/tritonserver/bin/tritonserver"],
     "port": 8000, "backend_port": 18000,
     "model": {"name": "resnet", "dir": "/srv/models", "weights_mib": 12000, "activation_mib": 2000},
     "limits": {"max_concurrency": 8, "max_queue": 16, "queue_timeout": "500ms", "request_timeout": "30s",
                "cpu_quota": "400%", "memory_max": "16G"},
     "classes": [{"name": "fast", "weight": 3}, {"name": "background", "queue_timeout": "10s"}]},
    {"name": "ocr", "slot": "ocr", "server": "vllm", "runner": "quadlet", "image": "docker.io/vllm/vllm-openai:v0.10.1",
     "port": 8100, "backend_port": 18100, "model": {"name": "Qwen/Qwen2.5-0.5B", "weights_mib": 1000},
     "extra_args": ODD_ARGS},
]  # fmt: skip


def run_role(root: Path, services: list) -> subprocess.CompletedProcess:
    playbook = root.parent / "play.yml"
    play = {
        "hosts": "localhost",
        "connection": "local",
        "gather_facts": False,
        "vars": {
            "inference_service_root": str(root),
            "inference_service_manage_systemd": False,
            "inference_service_manage_users": False,
            "inference_service_specs": services,
            "ansible_python_interpreter": sys.executable,
        },
        "roles": ["gpu.mig.inference_service"],
    }
    playbook.write_text(json.dumps([play]))
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": os.environ.get("ANSIBLE_COLLECTIONS_PATH", str(REPO / ".build/collections")),
           "ANSIBLE_LOCAL_TEMP": str(root.parent / "tmp"), "ANSIBLE_NOCOLOR": "1", "ANSIBLE_PIPELINING": "1"}  # fmt: skip
    argv = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", str(playbook)]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, check=False)


def fake_root(tmp_path: Path, name: str, unit: str, binary: str) -> Path:
    """A root for systemd-analyze --root (toolchain-probe §3): the system units, a stub gpu-mig.target, the unit,
    and stubs for its binary and the start hook's python3."""
    fake = tmp_path / "fakeroot"
    shutil.copytree("/lib/systemd/system", fake / "usr/lib/systemd/system", symlinks=True)
    (fake / "etc/systemd/system").mkdir(parents=True)
    (fake / "etc/systemd/system/gpu-mig.target").write_text("[Unit]\nDescription=stub\n")
    (fake / "etc/systemd/system" / name).write_text(unit)
    for stub in (fake / binary.lstrip("/"), fake / "usr/bin/python3"):
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text("#!/bin/sh\n")
        stub.chmod(0o755)
    return fake


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("svc") / "root"
    (root / "etc/gpu-mig").mkdir(parents=True)
    (root / "etc/gpu-mig/slots.json").write_text(json.dumps(SLOTS))
    return root, run_role(root, SERVICES)


def test_role_renders_the_services(deployed):
    root, result = deployed
    assert result.returncode == 0, result.stdout[-3000:]
    unit = (root / "etc/systemd/system/inference-chat.service").read_text()
    assert "EnvironmentFile=/run/gpu-mig/slots/chat.env" in unit and "User=gpumig-chat" in unit
    # The slot's capability nodes (cap21/cap22 for GPU instance 2) change with the instance ids: the start hook sets
    # them before every start (tests/unit/services/test_slot_start.py), the unit names the fixed nodes only.
    assert "DevicePolicy=closed" in unit and "DeviceAllow=/dev/nvidia0 rw" in unit and "/dev/nvidia-caps" not in unit
    assert (
        "ExecStartPre=+/usr/bin/python3 /usr/local/lib/gpu-mig/slot_start.py --slot-map /etc/gpu-mig/slots.json "
        "--mig-minors /proc/driver/nvidia-caps/mig-minors --unit %n --slot chat "
        "--stamp /var/lib/gpu-mig/services/chat.mig_uuid" in unit
    )
    hook = root / "usr/local/lib/gpu-mig"
    assert (hook / "slot_start.py").is_file()
    assert (hook / "ansible_collections/gpu/mig/plugins/plugin_utils/services.py").is_file()
    quadlet = (root / "etc/containers/systemd/inference-ocr.container").read_text()
    assert "AddDevice=${GPU_MIG_CDI_DEVICE}" in quadlet and "--gpu-memory-utilization 0.21" in quadlet
    assert "max_queue_size: 8" in (root / "srv/models/resnet/config.pbtxt").read_text()
    assert "maxconn 6 maxqueue 16" in (root / "etc/haproxy/haproxy.cfg").read_text()


def test_unit_verifies_and_exposure_is_at_most_3(deployed, tmp_path: Path):
    root = deployed[0]
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is required (Debian package systemd)"
    unit = (root / "etc/systemd/system/inference-chat.service").read_text()
    fake = fake_root(tmp_path, "inference-chat.service", unit, "/opt/tritonserver/bin/tritonserver")
    verify = subprocess.run(
        [analyze, "verify", f"--root={fake}", "inference-chat.service"], capture_output=True, text=True, check=False
    )
    assert verify.returncode == 0 and "Unknown key" not in verify.stderr, verify.stderr
    security = subprocess.run([analyze, "security", "--offline=true", f"--root={fake}", "inference-chat.service"],
                              capture_output=True, text=True, check=False)  # fmt: skip
    exposure = re.search(r"Overall exposure level for inference-chat.service: ([\d.]+)", security.stdout)
    assert exposure and float(exposure.group(1)) <= 3.0, security.stdout[-2000:]


def test_preflight_refuses_before_writing_anything(tmp_path: Path):
    root = tmp_path / "root"
    (root / "etc/gpu-mig").mkdir(parents=True)
    (root / "etc/gpu-mig/slots.json").write_text(json.dumps(SLOTS))
    too_big = [{**SERVICES[0], "model": {"name": "resnet", "dir": "/srv/models", "weights_mib": 30000}}]
    result = run_role(root, too_big)
    assert result.returncode != 0
    assert "needs 30000 MiB" in result.stdout and "use profile 7g.40gb or larger" in result.stdout, result.stdout[
        -3000:
    ]
    assert sorted(p.name for p in root.rglob("*") if p.is_file()) == ["slots.json"]


def test_control_characters_in_any_templated_field_fail_the_role_before_writing(tmp_path: Path):
    """An image "x\\nPodmanArgs=--privileged" was written as its own Quadlet line; now every such field is refused."""
    root = tmp_path / "root"
    (root / "etc/gpu-mig").mkdir(parents=True)
    (root / "etc/gpu-mig/slots.json").write_text(json.dumps(SLOTS))
    chat, ocr = SERVICES
    injected = [
        {**chat, "command": ["/opt/tritonserver/bin/tritonserver", "--x\nExecStartPre=/bin/sh"],
         "model": {**chat["model"], "dir": "/srv/models\rx"}, "listen": "0.0.0.0\n    bind :9999"},
        {**ocr, "image": "x\nPodmanArgs=--privileged", "model": {"name": "Qwen\x00", "weights_mib": 1000},
         "extra_args": ["--ok", "a\x1bb"]},
    ]  # fmt: skip
    result = run_role(root, injected)
    assert result.returncode != 0
    for where in ("chat: command[1]", "chat: model.dir", "chat: listen", "ocr: image", "ocr: model.name",
                  "ocr: extra_args[1]"):  # fmt: skip
        assert f"service {where} must be one line of printable text" in result.stdout, (where, result.stdout[-3000:])
    assert sorted(p.name for p in root.rglob("*") if p.is_file()) == ["slots.json"]


def test_exec_start_words_reach_systemd_as_written(tmp_path: Path):
    """systemd finds the executable at its literal path (space, %s) only when the line is quoted and escaped."""
    executable = "/opt/gpu server/bin/50%serve"
    line = systemd_exec([executable, *ODD_ARGS])
    assert line == (
        '"/opt/gpu server/bin/50%%serve" --served-model-name "ocr \\"v1\\"" --download-dir "$$HOME/model cache" '
        '--note "50%%s it\'s a\\\\b;c"'
    )
    for exec_start, verifies in ((line, True), (" ".join([executable, *ODD_ARGS]), False)):
        unit = f"[Service]\nExecStart={exec_start}\n"
        fake = fake_root(tmp_path / str(verifies), "odd.service", unit, executable)
        verify = subprocess.run(
            ["systemd-analyze", "verify", f"--root={fake}", "odd.service"], capture_output=True, text=True, check=False
        )
        assert (verify.returncode == 0 and verify.stderr == "") is verifies, verify.stderr


def test_quadlet_generates_a_service_that_verifies(deployed, tmp_path: Path):
    quadlet = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpu-mig/quadlet/quadlet"
    assert quadlet.is_file(), "podman's Quadlet generator is required: run hacking/quadlet.sh (make quadlet)"
    units = deployed[0] / "etc/containers/systemd"
    generated = subprocess.run(
        [str(quadlet), "-dryrun"],
        env={**os.environ, "QUADLET_UNIT_DIRS": str(units)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert generated.returncode == 0 and "inference-ocr.container" in generated.stderr, generated.stderr
    assert not re.search(r"(?i)unsupported|error|warning", generated.stderr), generated.stderr
    service = generated.stdout.split("---inference-ocr.service---\n", 1)[1]
    exec_start = re.search(r"^ExecStart=(.*)$", service, re.M).group(1).split()
    # The slot's CDI device goes to podman as one word that systemd expands from the slot's env file at each start.
    assert exec_start[exec_start.index("--device") + 1] == "${GPU_MIG_CDI_DEVICE}"
    assert {"--read-only", "--security-opt=no-new-privileges"} <= set(exec_start)
    assert exec_start[exec_start.index("--cap-drop") + 1] == "all"
    assert "EnvironmentFile=/run/gpu-mig/slots/ocr.env" in service and "After=gpu-mig.target" in service
    # Podman's own parser of systemd command lines reads the Exec= words back and writes them unchanged.
    assert re.search(r"^ExecStart=(.*)$", service, re.M).group(1).endswith(" " + systemd_exec(ODD_ARGS))
    fake = fake_root(tmp_path, "inference-ocr.service", service, "/usr/bin/podman")
    verify = subprocess.run(
        ["systemd-analyze", "verify", f"--root={fake}", "inference-ocr.service"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0 and "Unknown key" not in verify.stderr, verify.stderr
