"""migsim CLI, fleet wrappers and the nvidia-smi stand-in, run as real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pynvml
import yaml

SIMULATOR = Path(__file__).resolve().parents[3] / "tests" / "simulator"
MIGSIM = SIMULATOR / "migsim"
SMI = SIMULATOR / "bin" / "nvidia-smi"


def run(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, env={**os.environ, **(env or {})}, check=False
    )


def test_help_lists_subcommands():
    out = run(MIGSIM, "--help").stdout
    for command in ("host", "show", "reboot", "fault", "process", "fleet"):
        assert command in out


def test_host_show_reboot(tmp_path):
    host = tmp_path / "h"
    assert run(MIGSIM, "host", host, "--gpu", "H100-80GB:mig=on", "--instance", "0:3g.40gb@4").returncode == 0
    shown = json.loads(run(MIGSIM, "show", host).stdout)
    assert shown["volatile"]["gpus"][0]["gpu_instances"][0]["start"] == 4
    assert run(MIGSIM, "reboot", host).returncode == 0
    shown = json.loads(run(MIGSIM, "show", host).stdout)
    assert shown["volatile"]["gpus"][0]["mig"] == {"current": 0, "pending": 0}
    assert run(MIGSIM, "host", tmp_path / "x", "--gpu", "NoSuchGPU").returncode == 1


def test_fault_and_process_commands(tmp_path):
    host = tmp_path / "h"
    run(MIGSIM, "host", host, "--gpu", "A30")
    fault = ["--call", "nvmlDeviceSetMigMode", "--error", "NVML_ERROR_IN_USE", "--times", "2", "--gpu", "0"]
    assert run(MIGSIM, "fault", host, *fault).returncode == 0
    assert run(MIGSIM, "process", host, "add", "0:123:512:python3").returncode == 0
    state = json.loads(run(MIGSIM, "show", host).stdout)
    assert state["persistent"]["faults"] == [{"call": "nvmlDeviceSetMigMode", "error": 19, "gpu": 0, "times": 2}]
    assert state["volatile"]["gpus"][0]["processes"][0]["pid"] == 123
    assert run(MIGSIM, "process", host, "remove", "123").returncode == 0
    assert run(MIGSIM, "process", host, "remove", "123").returncode == 1


def test_fleet_inventory_and_wrappers(tmp_path):
    fleet = tmp_path / "fleet"
    assert run(MIGSIM, "fleet", "--dir", fleet, "--hosts", "8").returncode == 0
    inventory = yaml.safe_load((fleet / "inventory.yml").read_text())
    hosts = inventory["all"]["children"]["simulated_gpu_hosts"]["hosts"]
    assert len(hosts) == 8
    counts = {}
    for name, variables in hosts.items():
        assert variables["ansible_connection"] == "local"
        code = "import pynvml; pynvml.nvmlInit(); print(pynvml.nvmlDeviceGetCount())"
        result = run(variables["ansible_python_interpreter"], "-c", code)
        counts[name] = result.stdout.strip() if result.returncode == 0 else result.stderr.strip().splitlines()[-1]
    assert counts["sim00-a100"] == "2" and counts["sim03-l4"] == "1"
    assert "LibraryNotFound" in counts["sim04-nodriver"]
    assert run(MIGSIM, "fleet", "--dir", fleet).returncode != 0  # refuses to overwrite without --force


def test_nvidia_smi_reset(tmp_path):
    host = tmp_path / "h"
    run(MIGSIM, "host", host, "--gpu", "A100-SXM4-40GB", "--process", "0:55:100")
    env = {"MIGSIM_ROOT": str(host)}
    code = "import pynvml as n; n.nvmlInit(); print(n.nvmlDeviceSetMigMode(n.nvmlDeviceGetHandleByIndex(0), 1))"
    pending = run(sys.executable, "-c", code, env={**env, "PYTHONPATH": str(SIMULATOR / "boot")})
    assert pending.stdout.strip() == str(pynvml.NVML_ERROR_IN_USE)
    busy = run(SMI, "-r", "-i", "0", env=env)
    assert busy.returncode == 255 and "In use by another client" in busy.stdout
    run(MIGSIM, "process", host, "remove", "55")
    done = run(SMI, "--gpu-reset", "-i", "00000000:07:00.0", env=env)
    assert done.returncode == 0 and "was successfully reset" in done.stdout
    assert json.loads(run(MIGSIM, "show", host).stdout)["persistent"]["gpus"][0]["mig"] == {"current": 1, "pending": 1}
    assert run(SMI, "-r", "-i", "9", env=env).returncode == 6
    assert run(SMI, "-q", env=env).returncode == 2


def test_nvidia_smi_passthrough(tmp_path):
    host = tmp_path / "h"
    run(MIGSIM, "host", host, "--gpu", "A100-SXM4-40GB", "--vm-passthrough")
    result = run(SMI, "-r", env={"MIGSIM_ROOT": str(host)})
    assert result.returncode == 3 and "is not supported" in result.stdout
