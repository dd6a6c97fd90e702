"""Error paths as strict as real drivers: an unprivileged caller (NO_PERMISSION), VM pass-through (no GPU reset, the
mode waits for a VM restart) and a profiling client holding the GPU (IN_USE)."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pynvml as n
import pytest

from nvmlsim import api, cli, mig, procs

SIMULATOR = Path(__file__).resolve().parents[2] / "simulator"
SMI = SIMULATOR / "bin" / "nvidia-smi"
CONFIG_CALLS = (
    "nvmlDeviceCreateGpuInstance",
    "nvmlDeviceCreateGpuInstanceWithPlacement",
    "nvmlGpuInstanceDestroy",
    "nvmlGpuInstanceCreateComputeInstance",
    "nvmlGpuInstanceCreateComputeInstanceWithPlacement",
    "nvmlComputeInstanceDestroy",
)


def _reset(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SMI), "-r", "-i", "0"],
        capture_output=True,
        text=True,
        env={**os.environ, "MIGSIM_ROOT": str(root)},
        check=False,
    )


def _gi(dev, gi_id=None):
    """A GPU instance handle: by id, or the only one of the A100's 3g.20gb profile (9)."""
    if gi_id is not None:
        return n.nvmlDeviceGetGpuInstanceById(dev, gi_id)
    array, count = (n.c_nvmlGpuInstance_t * 2)(), ctypes.c_uint(0)
    n.nvmlDeviceGetGpuInstances(dev, 9, array, ctypes.byref(count))
    assert count.value == 1
    return array[0]


def _ci_ids(gi):
    array, count = (n.c_nvmlComputeInstance_t * 3)(), ctypes.c_uint(0)
    n.nvmlGpuInstanceGetComputeInstances(gi, 2, array, ctypes.byref(count))  # the full 3-slice compute profile
    return [n.nvmlComputeInstanceGetInfo(array[i]).id for i in range(count.value)]


# --- unprivileged callers ----------------------------------------------------------------------------


def test_every_state_changing_call_needs_a_privilege():
    """The privilege table covers every replacement that writes the state (so none is open to any user)."""
    import inspect

    writers = sorted(name for name, f in api.REPLACEMENTS.items() if "_write(" in inspect.getsource(inspect.unwrap(f)))
    assert writers == sorted(["nvmlDeviceSetMigMode", *CONFIG_CALLS])
    assert all(name in api.PRIVILEGES for name in writers)


def test_a_stock_driver_lets_any_user_read_but_only_root_configure(sim_host):
    """Stock file modes: mig/config 0400 (root), mig/monitor 0444 (everyone); the MIG mode needs root."""
    host = sim_host("A100-SXM4-40GB:mig=on", instances=["0:3g.20gb@4"], unprivileged=True)
    before = host.state().snapshot()
    dev = n.nvmlDeviceGetHandleByIndex(0)
    gi = _gi(dev)
    assert _ci_ids(gi) == [0] and n.nvmlDeviceGetGpuInstanceRemainingCapacity(dev, 19) == 4
    ci = n.nvmlGpuInstanceGetComputeInstanceById(gi, 0)
    refused = {
        "set MIG mode": lambda: n.nvmlDeviceSetMigMode(dev, n.NVML_DEVICE_MIG_DISABLE),
        "create GI": lambda: n.nvmlDeviceCreateGpuInstance(dev, 19),
        "create GI at": lambda: n.nvmlDeviceCreateGpuInstanceWithPlacement(
            dev, 19, n.c_nvmlGpuInstancePlacement_t(0, 1)
        ),
        "create CI": lambda: n.nvmlGpuInstanceCreateComputeInstance(gi, 0),
        "destroy CI": lambda: n.nvmlComputeInstanceDestroy(ci),
        "destroy GI": lambda: n.nvmlGpuInstanceDestroy(gi),
    }
    for what, call in refused.items():
        with pytest.raises(n.NVMLError_NoPermission):
            call()
        assert host.state().snapshot() == before, what
    reset = _reset(host.root)
    assert reset.returncode == 4 and "Insufficient Permissions" in reset.stdout


def test_the_mig_config_capability_allows_instances_but_not_the_mode(sim_host):
    sim_host("A100-SXM4-40GB:mig=on", unprivileged=True, user_capabilities=(mig.MIG_CONFIG, mig.MIG_MONITOR))
    dev = n.nvmlDeviceGetHandleByIndex(0)
    gi = n.nvmlDeviceCreateGpuInstance(dev, 9)
    n.nvmlComputeInstanceDestroy(n.nvmlGpuInstanceCreateComputeInstance(gi, 0))
    n.nvmlGpuInstanceDestroy(gi)
    with pytest.raises(n.NVMLError_NoPermission):
        n.nvmlDeviceSetMigMode(dev, n.NVML_DEVICE_MIG_DISABLE)


def test_without_mig_monitor_instances_cannot_be_listed(sim_host):
    """A container without /dev/nvidia-caps/nvidia-cap2 (or a host that made it 0400): the instances stay hidden, the
    profiles and free counts do not."""
    host = sim_host("A100-SXM4-40GB:mig=on", instances=["0:3g.20gb@4"])
    dev = n.nvmlDeviceGetHandleByIndex(0)
    gi = _gi(dev)
    with host.edit() as state:
        state.persistent.update(unprivileged=True, user_capabilities=[])
    for call in (
        lambda: _gi(dev),
        lambda: _gi(dev, 2),
        lambda: _ci_ids(gi),
        lambda: n.nvmlGpuInstanceGetComputeInstanceById(gi, 0),
    ):
        with pytest.raises(n.NVMLError_NoPermission):
            call()
    assert n.nvmlDeviceGetGpuInstanceRemainingCapacity(dev, 9) == 1
    assert n.nvmlDeviceGetMigMode(dev) == [1, 1]
    with host.edit() as state:
        state.persistent["unprivileged"] = False  # root holds every capability
    assert _ci_ids(_gi(dev, 2)) == [0]


def test_migsim_sets_the_user_capabilities(tmp_path):
    root = tmp_path / "h"
    assert cli.main(["host", str(root), "--gpu", "H100-80GB", "--unprivileged", "--user-capabilities", ""]) == 0
    persistent = json.loads((root / "var/lib/migsim/host.json").read_text())
    assert persistent["unprivileged"] is True and persistent["user_capabilities"] == []
    assert cli.main(["host", str(root), "--gpu", "H100-80GB"]) == 0
    assert json.loads((root / "var/lib/migsim/host.json").read_text())["user_capabilities"] == [mig.MIG_MONITOR]
    assert cli.main(["host", str(root), "--gpu", "H100-80GB", "--user-capabilities", "mig/admin"]) == 1


# --- VM pass-through -------------------------------------------------------------------------------


@pytest.mark.parametrize("start, wanted", [("A100-SXM4-40GB", 1), ("A100-SXM4-40GB:mig=on", 0)])
def test_in_a_vm_an_ampere_mode_waits_for_the_vm_restart(sim_host, start, wanted):
    host = sim_host(start, vm_passthrough=True)
    dev = n.nvmlDeviceGetHandleByIndex(0)
    assert n.nvmlDeviceSetMigMode(dev, wanted) == n.NVML_ERROR_RESET_REQUIRED
    reset = _reset(host.root)
    assert reset.returncode == 3 and "is not supported" in reset.stdout
    assert n.nvmlDeviceGetMigMode(dev) == [1 - wanted, wanted]  # pending: no reset is possible
    host.reboot()  # the VM restarts
    assert n.nvmlDeviceGetMigMode(dev) == [wanted, wanted]


def test_in_a_vm_hopper_switches_at_once(sim_host):
    sim_host("H100-80GB", vm_passthrough=True)
    dev = n.nvmlDeviceGetHandleByIndex(0)
    assert n.nvmlDeviceSetMigMode(dev, n.NVML_DEVICE_MIG_ENABLE) == n.NVML_SUCCESS
    assert n.nvmlDeviceGetMigMode(dev) == [1, 1]


# --- profiling clients -----------------------------------------------------------------------------


def test_a_profiler_blocks_creating_instances_and_changing_the_mode_not_destroying(sim_host):
    host = sim_host("A100-SXM4-40GB:mig=on", "H100-80GB", instances=["0:3g.20gb@4"])
    a100, h100 = n.nvmlDeviceGetHandleByIndex(0), n.nvmlDeviceGetHandleByIndex(1)
    gi = _gi(a100)
    pids = [host.attach_profiler(0), host.attach_profiler(1, "nsys")]
    assert n.nvmlDeviceGetComputeRunningProcesses(a100) == []  # NVML does not list a profiler as a process
    before = host.state().snapshot()
    for call in (
        lambda: n.nvmlDeviceCreateGpuInstance(a100, 19),
        lambda: n.nvmlDeviceCreateGpuInstanceWithPlacement(a100, 19, n.c_nvmlGpuInstancePlacement_t(0, 1)),
        lambda: n.nvmlGpuInstanceCreateComputeInstance(gi, 0),
        lambda: n.nvmlDeviceSetMigMode(h100, n.NVML_DEVICE_MIG_ENABLE),
    ):
        with pytest.raises(n.NVMLError_InUse):
            call()
    assert host.state().snapshot() == before
    reset = _reset(host.root)
    assert reset.returncode == 255 and "In use by another client" in reset.stdout
    n.nvmlComputeInstanceDestroy(n.nvmlGpuInstanceGetComputeInstanceById(gi, 0))
    n.nvmlGpuInstanceDestroy(gi)
    assert n.nvmlDeviceSetMigMode(a100, n.NVML_DEVICE_MIG_DISABLE) == n.NVML_ERROR_IN_USE  # Ampere: pending
    assert n.nvmlDeviceGetMigMode(a100) == [1, 0]
    os.kill(pids[0], signal.SIGTERM)  # a profiler that exits releases the GPU, as any process
    deadline = time.monotonic() + 10
    while host.state().live(0)["profilers"]:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert _reset(host.root).returncode == 0 and n.nvmlDeviceGetMigMode(a100) == [0, 0]
    (nsys,) = host.state().live(1)["profilers"]
    host.reboot()  # a profiler is a process: a reboot ends it
    assert not procs.alive(nsys) and host.state().live(1)["profilers"] == []
    assert n.nvmlDeviceSetMigMode(h100, n.NVML_DEVICE_MIG_ENABLE) == n.NVML_SUCCESS


def test_migsim_attaches_and_detaches_a_profiler(tmp_path, capsys):
    root = tmp_path / "h"
    assert cli.main(["host", str(root), "--gpu", "H100-80GB:mig=on"]) == 0
    assert cli.main(["profiler", str(root), "attach", "0", "--name", "dcgm-exporter", "--lifetime", "60"]) == 0
    pid = int(capsys.readouterr().out)
    (record,) = json.loads((root / "run/migsim/state.json").read_text())["gpus"][0]["profilers"]
    assert record["pid"] == pid and record["name"] == "dcgm-exporter" and procs.alive(record)
    assert cli.main(["profiler", str(root), "detach", str(pid)]) == 0
    assert not procs.alive(record)
    assert json.loads((root / "run/migsim/state.json").read_text())["gpus"][0]["profilers"] == []
    assert cli.main(["profiler", str(root), "detach", str(pid)]) == 1  # no such profiler
    assert cli.main(["profiler", str(root), "attach", "3"]) == 1  # no GPU 3
