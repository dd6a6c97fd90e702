"""migsim CLI, fleet wrappers and the nvidia-smi stand-in, run as real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pynvml
import pytest
import yaml

from nvmlsim import procs, state

SIMULATOR = Path(__file__).resolve().parents[3] / "tests" / "simulator"
MIGSIM = SIMULATOR / "migsim"
SMI = SIMULATOR / "bin" / "nvidia-smi"


def run(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, env={**os.environ, **(env or {})}, check=False
    )


@pytest.fixture(autouse=True)
def _stop_host_processes(tmp_path):
    """migsim spawns real processes in its own (exited) process: kill what the hosts still record."""
    yield
    for persistent in tmp_path.rglob(str(state.PERSISTENT)):
        state.stop_processes(persistent.parents[len(state.PERSISTENT.parts) - 1])


def _processes(host: Path) -> list[dict]:
    return json.loads(run(MIGSIM, "show", host).stdout)["volatile"]["gpus"][0]["processes"]


def test_help_lists_subcommands():
    out = run(MIGSIM, "--help").stdout
    for command in ("host", "show", "reboot", "fault", "process", "stop", "fleet"):
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
    assert run(MIGSIM, "fault", host, "--call", "nvmlDeviceGetUUID", "--handle", "mig").returncode == 0
    added = run(MIGSIM, "process", host, "add", "0:512:python3", "--lifetime", "60")
    assert added.returncode == 0
    pid = int(added.stdout)
    shown = json.loads(run(MIGSIM, "show", host).stdout)
    assert shown["persistent"]["faults"] == [
        {"call": "nvmlDeviceSetMigMode", "error": 19, "gpu": 0, "times": 2, "handle": None},
        {"call": "nvmlDeviceGetUUID", "error": 999, "gpu": None, "times": 1, "handle": "mig"},
    ]
    (record,) = shown["volatile"]["gpus"][0]["processes"]
    assert record["pid"] == pid and record["name"] == "python3" and procs.alive(record)
    assert (procs.PROC / str(pid) / "cmdline").read_bytes() == b"sleep\x0060\x00"
    assert run(MIGSIM, "process", host, "remove", str(pid)).returncode == 0
    assert not procs.alive(record)  # killed (a zombie at most, until init reaps it)
    assert run(MIGSIM, "process", host, "remove", str(pid)).returncode == 1
    assert run(MIGSIM, "process", host, "add", "0:4242:512").returncode == 1  # old syntax: GI 4242 on a non-MIG GPU
    assert run(MIGSIM, "process", host, "add", "0:1:0:4242:512").returncode == 1  # old syntax with a PID
    assert _processes(host) == []


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
    (triton,) = _processes(fleet / "sim00-a100")
    assert triton["name"] == "tritonserver" and triton["gpu_instance_id"] == 1 and procs.alive(triton)
    assert run(MIGSIM, "fleet", "--dir", fleet).returncode != 0  # refuses to overwrite without --force
    assert run(MIGSIM, "fleet", "--dir", fleet, "--hosts", "1", "--force").returncode == 0
    assert not procs.alive(triton)  # the replaced host's process was killed
    (triton,) = _processes(fleet / "sim00-a100")
    assert procs.alive(triton)
    assert run(MIGSIM, "stop", fleet).returncode == 0  # what to run before deleting a fleet
    assert not procs.alive(triton) and _processes(fleet / "sim00-a100") == []
    assert run(MIGSIM, "stop", tmp_path).returncode == 1  # neither a host nor a fleet


def test_nvidia_smi_reset(tmp_path):
    host = tmp_path / "h"
    run(MIGSIM, "host", host, "--gpu", "A100-SXM4-40GB", "--process", "0:100")
    (record,) = _processes(host)
    env = {"MIGSIM_ROOT": str(host)}
    code = "import pynvml as n; n.nvmlInit(); print(n.nvmlDeviceSetMigMode(n.nvmlDeviceGetHandleByIndex(0), 1))"
    pending = run(sys.executable, "-c", code, env={**env, "PYTHONPATH": str(SIMULATOR / "boot")})
    assert pending.stdout.strip() == str(pynvml.NVML_ERROR_IN_USE)
    busy = run(SMI, "-r", "-i", "0", env=env)
    assert busy.returncode == 255 and "In use by another client" in busy.stdout
    run(MIGSIM, "process", host, "remove", str(record["pid"]))
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
