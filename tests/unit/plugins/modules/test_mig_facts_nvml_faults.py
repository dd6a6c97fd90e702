# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A fault on each NVML function the collection calls: a message naming the GPU and the remedy, never a traceback.

The list of functions is read from the adapter's source, so a new NVML call is tested the day it is written.
"""

from __future__ import annotations

import re
from pathlib import Path

import pynvml
import pytest

from ansible_collections.gpu.mig.plugins.module_utils._mig import nvml as _nvml
from ansible_collections.gpu.mig.plugins.modules import mig_facts

NVML_CALLS = sorted(set(re.findall(r"\bpynvml\.(nvml\w+)", Path(_nvml.__file__).read_text(encoding="utf-8"))))
# Calls about the host, not one GPU: their failure fails mig_facts with the host-level message.
HOST_CALLS = {
    "nvmlInit": "NVML initialisation failed",
    "nvmlSystemGetDriverVersion": "reading the driver version failed",
    "nvmlSystemGetCudaDriverVersion": "reading the CUDA driver version failed",
    "nvmlSystemGetNVMLVersion": "reading the NVML version failed",
    "nvmlDeviceGetCount": "counting the GPUs failed",
}
# Closing the session: an error there changes nothing that was read.
CLOSING_CALLS = {"nvmlShutdown"}
# Calls only MIG changes make, each with a change on GPU 1 that makes it (gi: the GPU instance on GPU 1).
CHANGE_CALLS = {
    "nvmlDeviceSetMigMode": lambda nvml, gi: nvml.set_mig_mode(1, False),
    "nvmlDeviceCreateGpuInstanceWithPlacement": lambda nvml, gi: nvml.create_gpu_instance(1, 15, 0, 1),
    "nvmlGpuInstanceCreateComputeInstance": lambda nvml, gi: nvml.create_compute_instance(1, gi, 0),
    "nvmlDeviceGetGpuInstanceById": lambda nvml, gi: nvml.destroy_gpu_instance(1, gi),
    "nvmlGpuInstanceGetComputeInstanceById": lambda nvml, gi: nvml.destroy_compute_instance(1, gi, 0),
    "nvmlComputeInstanceDestroy": lambda nvml, gi: nvml.destroy_compute_instance(1, gi, 0),
    "nvmlGpuInstanceDestroy": lambda nvml, gi: nvml.destroy_gpu_instance(1, gi),
}
# Every other call reads one GPU. A MIG device's reads are also faulted on MIG device handles only, since the same
# functions on the GPU's own handle come first.
GPU_READS = [(name, None) for name in NVML_CALLS if name not in {*HOST_CALLS, *CLOSING_CALLS, *CHANGE_CALLS}]
GPU_READS += [("nvmlDeviceGetUUID", "mig"), ("nvmlDeviceGetMemoryInfo", "mig")]

UNKNOWN = r"failed: NVML reported an unknown error \(NVML: Unknown Error\); check dmesg and journalctl -k for Xid"


@pytest.fixture
def host(sim_host):
    """GPU 0: an A100 with an instance; GPU 1: an H100 (another model: its profile tables are read for it) with a
    3g.40gb instance and a process on it, so that reading GPU 1 makes every read call on GPU 1's handles."""
    sim = sim_host("A100-SXM4-40GB:mig=on", "H100-80GB:mig=on", instances=["0:3g.20gb@4", "1:3g.40gb@4"], init=False)
    gi_id = sim.state().live(1)["gpu_instances"][0]["id"]
    sim.add_process(f"1:{gi_id}:0:500")
    return sim


def fault_left(sim) -> int:
    """Faults not yet raised: 0 proves the faulted call was made."""
    return sum(f["times"] for f in sim.state().persistent["faults"])


def test_every_call_is_in_one_group():
    assert "nvmlDeviceGetUUID" in NVML_CALLS and len(NVML_CALLS) > 30
    unknown = sorted({*HOST_CALLS, *CLOSING_CALLS, *CHANGE_CALLS} - set(NVML_CALLS))
    assert not unknown, f"{unknown} are no longer called by _nvml.py: drop them from this test"


@pytest.mark.parametrize(("call", "handle"), GPU_READS, ids=[f"{c}-{h or 'any'}" for c, h in GPU_READS])
def test_a_gpu_read_fault_is_that_gpus_error(host, run_module, warning_texts, call, handle):
    uuid = host.state().gpus[1]["uuid"]
    host.fault(call, pynvml.NVML_ERROR_UNKNOWN, gpu=1, handle=handle)
    result, failed = run_module(mig_facts, {})
    assert fault_left(host) == 0, f"{call} is not read by mig_facts: list it in CHANGE_CALLS with a change making it"
    assert not failed, result.get("msg")
    healthy, broken = result["ansible_facts"]["nvidia_mig"]["gpus"]
    assert "error" not in healthy and healthy["gpu_instances"]
    assert re.match(rf"GPU 1( \({uuid}\))?: .*{UNKNOWN}", broken["error"]), broken["error"]
    assert set(broken) == {*healthy, "error"} and broken["uuid"] == uuid  # the fault was once: identity reads again
    assert result["ansible_facts"]["nvidia_mig"]["summary"]["failed_gpus"] == 1
    assert warning_texts(result) == [broken["error"]]

    host.fault(call, pynvml.NVML_ERROR_UNKNOWN, gpu=1, handle=handle)
    with _nvml.Nvml() as nvml, pytest.raises(_nvml.NvmlError, match=rf"^GPU 1( \({uuid}\))?: .*{UNKNOWN}"):
        nvml.gpu(1)


@pytest.mark.parametrize("call", sorted(HOST_CALLS))
def test_a_host_call_fault_fails_the_host_with_what_and_the_remedy(host, run_module, call):
    host.fault(call, pynvml.NVML_ERROR_UNKNOWN)
    result, failed = run_module(mig_facts, {})
    assert fault_left(host) == 0
    assert failed and "exception" not in result
    expected = rf"^{HOST_CALLS[call]}: NVML reported an unknown error .*; check dmesg"
    assert re.match(expected, result["msg"]), result["msg"]


def test_a_fault_closing_the_session_changes_nothing(host, run_module):
    host.fault("nvmlShutdown", pynvml.NVML_ERROR_UNKNOWN)
    result, failed = run_module(mig_facts, {})
    assert fault_left(host) == 0
    assert not failed and result["ansible_facts"]["nvidia_mig"]["summary"]["failed_gpus"] == 0


@pytest.mark.parametrize("call", sorted(CHANGE_CALLS))
def test_a_change_call_fault_names_the_gpu_and_the_remedy(host, call):
    uuid = host.state().gpus[1]["uuid"]
    gi_id = host.state().live(1)["gpu_instances"][0]["id"]
    host.fault(call, pynvml.NVML_ERROR_UNKNOWN, gpu=1)
    with _nvml.Nvml() as nvml, pytest.raises(_nvml.NvmlError, match=rf"^GPU 1 \({uuid}\): .*{UNKNOWN}"):
        CHANGE_CALLS[call](nvml, gi_id)
    assert fault_left(host) == 0
