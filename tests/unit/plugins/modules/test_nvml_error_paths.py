# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What a user reads when the driver refuses, as real drivers do: a task without root (NO_PERMISSION), a GPU passed
through to a VM (no reset: the mode waits for a VM restart), a profiling client holding the GPU (IN_USE). Each
message names the GPU and the fix, and no traceback reaches the user."""

from __future__ import annotations

import inspect
import os
import signal

import pynvml
import pytest

import nvmlsim
from ansible_collections.gpu.mig.plugins.module_utils._mig import nvml as _nvml
from ansible_collections.gpu.mig.plugins.modules import mig_facts, mig_instances, mig_mode
from nvmlsim import cli, mig, procs

PROFILER_FIX = (
    "stop the GPU's processes (gpu.mig.mig_facts lists them) and any profiling client, which NVML does not list: DCGM"
    " profiling metrics (dcgm-exporter, nv-hostengine; or pause them with dcgmi profile --pause) and Nsight sessions"
    " (nsys, ncu); then retry"
)


def config_fix(capability: str, minor: int) -> str:
    return (
        f"run the task as root (become: true), or grant the user running it the {capability} nvidia-capability (read"
        f" access to /dev/nvidia-caps/nvidia-cap{minor}; see /proc/driver/nvidia/capabilities/{capability})"
    )


def layout(*profiles: str) -> dict:
    return {"layout": [{"gpus": 0, "slots": [{"name": f"s{i}", "profile": p} for i, p in enumerate(profiles)]}]}


def uuid(host, index: int = 0) -> str:
    return host.state().gpus[index]["uuid"]


def instances(host, index: int = 0) -> list[tuple[int, int]]:
    return [(gi["profile_id"], gi["start"]) for gi in host.state().live(index)["gpu_instances"]]


def no_traceback(result: dict) -> None:
    assert "Traceback" not in result["msg"] and "exception" not in result


@pytest.fixture
def nvidia_smi(monkeypatch):
    """Put the simulator's nvidia-smi (GPU reset only) on PATH, talking to the host given."""

    def use(host):
        monkeypatch.setenv("PATH", f"{cli.SIMULATOR / 'bin'}:{os.environ['PATH']}")
        monkeypatch.setenv("MIGSIM_ROOT", str(host.root))
        return host

    return use


def test_each_call_specific_remedy_names_a_pynvml_function_the_adapter_calls():
    """The adapter finds a call's own remedy by the pynvml function's name: a misspelt or unused entry would never
    match."""
    names = {call for call, _code in _nvml._CALL_REMEDIES}
    adapter = inspect.getsource(_nvml.Nvml)
    for name in names:
        assert nvmlsim.ORIGINALS.get(name, getattr(pynvml, name)).__name__ == name
        assert f"pynvml.{name}," in adapter


# --- a task without root ---------------------------------------------------------------------------


def test_mig_mode_without_root_says_become_and_changes_nothing(sim_host, run_module, snapshot):
    host = sim_host("H100-80GB", unprivileged=True, init=False)
    before = snapshot(host)
    result, failed = run_module(mig_mode, {"state": "enabled"})
    assert failed and result["changed"] is False
    assert result["msg"] == (
        f"GPU 0 ({uuid(host)}): enabling MIG failed: no permission (NVML: Insufficient Permissions); changing the MIG"
        " mode needs root: run the task with become: true (already changed before this failure: none)"
    )
    no_traceback(result)
    assert snapshot(host) == before


def test_mig_mode_reset_without_root_says_become_not_stop_clients(sim_host, run_module, nvidia_smi):
    host = nvidia_smi(sim_host("A100-SXM4-40GB", processes=["0:100"], init=False))
    pending, _unused = run_module(mig_mode, {"state": "enabled"})
    assert pending["pending_reset"] is True
    with host.edit() as state:
        state.live(0)["processes"].clear()  # the client was stopped; then the reset runs as a plain user
        state.persistent["unprivileged"] = True
    result, failed = run_module(mig_mode, {"state": "enabled", "reset": True})
    assert failed and result["msg"].startswith(f"GPU 0 ({uuid(host)}): reset failed (nvidia-smi: Unable to reset GPU")
    assert result["msg"].endswith(
        "Insufficient Permissions); resetting a GPU needs root: run the task with become: true"
    )
    assert "stop the GPU's clients" not in result["msg"]
    assert host.state().gpus[0]["mig"] == {"current": 0, "pending": 1}


def test_mig_instances_without_root_names_the_gpu_and_the_mig_config_capability(sim_host, run_module):
    host = sim_host("A100-SXM4-40GB:mig=on", instances=["0:3g.20gb@4"], unprivileged=True, init=False)
    before = host.state().snapshot()
    result, failed = run_module(mig_instances, layout("3g.20gb", "2g.10gb"))  # keeps the 3g, creates a 2g
    assert failed
    assert result["msg"].startswith(
        f"GPU 0 ({uuid(host)}): creating GPU instance of profile 14 at 0:2 failed: no permission (NVML: Insufficient"
        f" Permissions); {config_fix(mig.MIG_CONFIG, 1)}; the layout found at the start was restored"
    )
    no_traceback(result)
    assert host.state().snapshot() == before


def test_without_mig_monitor_the_gpu_is_unreadable_and_named_with_the_fix(sim_host, run_module, warning_texts):
    host = sim_host(
        "A100-SXM4-40GB:mig=on", instances=["0:3g.20gb@4"], unprivileged=True, user_capabilities=(), init=False
    )
    error = (
        f"GPU 0 ({uuid(host)}): listing GPU instances failed: no permission (NVML: Insufficient Permissions);"
        f" {config_fix(mig.MIG_MONITOR, 2)}"
    )
    facts, failed = run_module(mig_facts, {})
    assert not failed and facts["ansible_facts"]["nvidia_mig"]["gpus"][0]["error"] == error
    assert warning_texts(facts) == [error]
    before = host.state().snapshot()
    result, failed = run_module(mig_instances, layout("3g.20gb"))
    assert failed and error in result["msg"]
    no_traceback(result)
    assert host.state().snapshot() == before


# --- a GPU passed through to a VM ------------------------------------------------------------------


def test_mig_mode_in_a_vm_asks_for_a_vm_restart_which_applies_the_mode(sim_host, run_module, warning_texts):
    host = sim_host("A100-SXM4-40GB", vm_passthrough=True, init=False)
    result, failed = run_module(mig_mode, {"state": "enabled"})
    assert not failed and result["changed"] and result["pending_reset"]
    (warning,) = warning_texts(result)
    assert warning.startswith(
        f"GPU 0 ({uuid(host)}): turning MIG on waits for a GPU reset, and this GPU cannot be reset here (NVML: the"
        " activation status of the new mode is RESET_REQUIRED). A GPU passed through to a VM takes the new MIG mode"
        " only when the VM restarts: restart the VM"
    )
    assert "mig_mode_allow_reboot: true" in warning
    host.reboot()  # the VM restarts
    after, failed = run_module(mig_mode, {"state": "enabled"})
    assert not failed and after["changed"] is False and after["pending_reset"] is False
    assert after["gpus"][0]["after"] == {"current": True, "pending": True}


def test_mig_mode_reset_in_a_vm_fails_at_once_without_nvidia_smi(sim_host, run_module, monkeypatch):
    """NVML's activation status already says the GPU cannot be reset: no nvidia-smi is needed to find out."""
    monkeypatch.setenv("PATH", "/nonexistent")
    host = sim_host("A100-SXM4-40GB", vm_passthrough=True, init=False)
    result, failed = run_module(mig_mode, {"state": "enabled", "reset": True})
    assert failed and result["reset_not_supported"] is True and result["changed"] is True
    assert result["msg"].startswith(f"GPU 0 ({uuid(host)}): turning MIG on waits for a GPU reset")
    assert "restart the VM" in result["msg"] and "nvidia-smi" not in result["msg"]
    no_traceback(result)
    assert host.state().gpus[0]["mig"] == {"current": 0, "pending": 1}


# --- a profiling client holding the GPU ------------------------------------------------------------


def test_mig_mode_under_a_profiler_names_the_gpu_and_the_profiler(sim_host, run_module):
    host = sim_host("H100-80GB", init=False)
    host.attach_profiler(0)
    result, failed = run_module(mig_mode, {"state": "enabled"})
    assert failed and result["changed"] is False
    assert result["msg"] == (
        f"GPU 0 ({uuid(host)}): enabling MIG failed: the GPU or instance is in use (NVML: In use by another client);"
        f" {PROFILER_FIX} (already changed before this failure: none)"
    )
    assert host.state().live(0)["mig"] == {"current": 0, "pending": 0}


def test_mig_instances_under_a_profiler_creates_nothing(sim_host, run_module):
    host = sim_host("A100-SXM4-40GB:mig=on", init=False)
    host.attach_profiler(0, "dcgm-exporter")
    result, failed = run_module(mig_instances, layout("3g.20gb"))
    assert failed and result["restored"] is True
    assert result["msg"].startswith(
        f"GPU 0 ({uuid(host)}): creating GPU instance of profile 9 at 4:4 failed: the GPU or instance is in use (NVML:"
        f" In use by another client); {PROFILER_FIX}; the layout found at the start was restored"
    )
    no_traceback(result)
    assert instances(host) == []


def test_a_profiler_mid_run_is_reported_with_what_was_left_and_a_rerun_converges(sim_host, run_module):
    """The plan cannot see a profiler: the destroy succeeds, the create and the restore's create answer IN_USE."""
    host = sim_host("A100-SXM4-40GB:mig=on", instances=["0:3g.20gb@4"], init=False)
    pid = host.attach_profiler(0)
    result, failed = run_module(mig_instances, layout("7g.40gb"))
    assert failed and result["restored"] is False
    assert result["msg"].startswith(
        f"GPU 0 ({uuid(host)}): creating GPU instance of profile 0 at 0:8 failed: the GPU or instance is in use"
        f" (NVML: In use by another client); {PROFILER_FIX}; restoring the layout found at the start failed too"
    )
    assert result["msg"].endswith("left behind: GPU 0: no instances")
    no_traceback(result)
    assert instances(host) == []
    os.kill(pid, signal.SIGKILL)  # the user stops the profiler
    procs.reap([pid])
    rerun, failed = run_module(mig_instances, layout("7g.40gb"))
    assert not failed and rerun["changed"] and instances(host) == [(0, 0)]
