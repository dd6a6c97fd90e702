"""The simulator replaces pynvml functions without changing their interface or return types."""

from __future__ import annotations

import ctypes
import inspect

import pynvml
import pytest

import nvmlsim
from nvmlsim import api

REQUIRED = [
    "nvmlInit",
    "nvmlInitWithFlags",
    "nvmlShutdown",
    "nvmlSystemGetDriverVersion",
    "nvmlSystemGetCudaDriverVersion",
    "nvmlSystemGetCudaDriverVersion_v2",
    "nvmlSystemGetNVMLVersion",
    "nvmlDeviceGetCount",
    "nvmlDeviceGetHandleByIndex",
    "nvmlDeviceGetHandleByUUID",
    "nvmlDeviceGetHandleByPciBusId",
    "nvmlDeviceGetIndex",
    "nvmlDeviceGetUUID",
    "nvmlDeviceGetName",
    "nvmlDeviceGetSerial",
    "nvmlDeviceGetPciInfo",
    "nvmlDeviceGetPciInfo_v3",
    "nvmlDeviceGetMemoryInfo",
    "nvmlDeviceGetCudaComputeCapability",
    "nvmlDeviceGetArchitecture",
    "nvmlDeviceGetPersistenceMode",
    "nvmlDeviceGetMigMode",
    "nvmlDeviceSetMigMode",
    "nvmlDeviceGetComputeRunningProcesses",
    "nvmlDeviceGetComputeRunningProcesses_v3",
    "nvmlDeviceGetGpuInstanceProfileInfo",
    "nvmlDeviceGetGpuInstanceProfileInfoV",
    "nvmlDeviceGetGpuInstanceProfileInfoById",
    "nvmlDeviceGetGpuInstanceProfileInfoByIdV",
    "nvmlDeviceGetGpuInstancePossiblePlacements",
    "nvmlDeviceGetGpuInstanceRemainingCapacity",
    "nvmlDeviceCreateGpuInstance",
    "nvmlDeviceCreateGpuInstanceWithPlacement",
    "nvmlDeviceGetGpuInstances",
    "nvmlDeviceGetGpuInstanceById",
    "nvmlGpuInstanceGetInfo",
    "nvmlGpuInstanceDestroy",
    "nvmlGpuInstanceGetComputeInstanceProfileInfo",
    "nvmlGpuInstanceGetComputeInstanceProfileInfoV",
    "nvmlGpuInstanceGetComputeInstanceRemainingCapacity",
    "nvmlGpuInstanceGetComputeInstancePossiblePlacements",
    "nvmlGpuInstanceCreateComputeInstance",
    "nvmlGpuInstanceCreateComputeInstanceWithPlacement",
    "nvmlGpuInstanceGetComputeInstances",
    "nvmlGpuInstanceGetComputeInstanceById",
    "nvmlComputeInstanceGetInfo",
    "nvmlComputeInstanceGetInfo_v2",
    "nvmlComputeInstanceDestroy",
    "nvmlDeviceIsMigDeviceHandle",
    "nvmlDeviceGetGpuInstanceId",
    "nvmlDeviceGetComputeInstanceId",
    "nvmlDeviceGetMaxMigDeviceCount",
    "nvmlDeviceGetMigDeviceHandleByIndex",
    "nvmlDeviceGetDeviceHandleFromMigDeviceHandle",
]


def _params(func):
    return [(p.name, p.default, p.kind) for p in inspect.signature(func).parameters.values()]


def test_every_required_function_is_replaced():
    assert sorted(set(REQUIRED) - set(api.REPLACEMENTS)) == []


@pytest.mark.parametrize("name", sorted(api.REPLACEMENTS))
def test_signature_matches_pynvml(name, sim_host):
    sim_host("A100-SXM4-40GB")
    original = nvmlsim.ORIGINALS[name]
    assert original.__module__ == "pynvml"
    assert _params(getattr(pynvml, name)) == _params(original)


def test_install_patches_in_place_and_uninstall_restores(sim_host):
    host = sim_host("L4")
    assert host.pynvml is pynvml
    assert pynvml.nvmlDeviceGetName.__module__ != "pynvml"
    nvmlsim.uninstall(pynvml)
    assert pynvml.nvmlDeviceGetName is nvmlsim.ORIGINALS["nvmlDeviceGetName"]


def test_aliases_point_at_the_replacements(sim_host):
    sim_host("A100-SXM4-40GB")
    assert pynvml.nvmlDeviceGetGpuInstanceProfileInfoV is pynvml.nvmlDeviceGetGpuInstanceProfileInfo
    assert pynvml.nvmlDeviceGetGpuInstanceProfileInfoByIdV is pynvml.nvmlDeviceGetGpuInstanceProfileInfoById
    assert pynvml.nvmlGpuInstanceGetComputeInstanceProfileInfoV is pynvml.nvmlGpuInstanceGetComputeInstanceProfileInfo


def test_returned_types_are_pynvml_types(sim_host):
    sim_host("A100-SXM4-40GB:mig=on", processes=[])
    n = pynvml
    dev = n.nvmlDeviceGetHandleByIndex(0)
    assert isinstance(dev, n.c_nvmlDevice_t)
    assert isinstance(n.nvmlDeviceGetName(dev), str)
    assert isinstance(n.nvmlDeviceGetUUID(dev), str)
    assert isinstance(n.nvmlDeviceGetSerial(dev), str)
    assert isinstance(n.nvmlSystemGetDriverVersion(), str)
    assert isinstance(n.nvmlSystemGetNVMLVersion(), str)
    assert isinstance(n.nvmlSystemGetCudaDriverVersion(), int)
    assert isinstance(n.nvmlDeviceGetPciInfo(dev), n.nvmlPciInfo_t)
    assert isinstance(n.nvmlDeviceGetMemoryInfo(dev), n.c_nvmlMemory_t)
    assert isinstance(n.nvmlDeviceGetMemoryInfo(dev, version=n.nvmlMemory_v2), n.c_nvmlMemory_v2_t)
    assert n.nvmlDeviceGetCudaComputeCapability(dev) == (8, 0)
    assert n.nvmlDeviceGetArchitecture(dev) == n.NVML_DEVICE_ARCH_AMPERE
    assert isinstance(n.nvmlDeviceGetMigMode(dev), list)
    assert isinstance(n.nvmlDeviceGetGpuInstanceProfileInfo(dev, 0), n.c_nvmlGpuInstanceProfileInfo_v2_t)
    assert isinstance(n.nvmlDeviceGetGpuInstanceProfileInfo(dev, 0, version=1), n.c_nvmlGpuInstanceProfileInfo_t)
    assert isinstance(n.nvmlDeviceGetGpuInstanceProfileInfoById(dev, 19), n.c_nvmlGpuInstanceProfileInfo_v2_t)
    gi = n.nvmlDeviceCreateGpuInstance(dev, 9)
    assert isinstance(gi, n.c_nvmlGpuInstance_t)
    info = n.nvmlGpuInstanceGetInfo(gi)
    assert isinstance(info, n.c_nvmlGpuInstanceInfo_t)
    assert isinstance(info.device, n.c_nvmlDevice_t)
    assert isinstance(info.placement, n.c_nvmlGpuInstancePlacement_t)
    cprof = n.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, 2, n.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED)
    assert isinstance(cprof, n.c_nvmlComputeInstanceProfileInfo_v2_t)
    ci = n.nvmlGpuInstanceCreateComputeInstance(gi, cprof.id)
    assert isinstance(ci, n.c_nvmlComputeInstance_t)
    ci_info = n.nvmlComputeInstanceGetInfo(ci)
    assert isinstance(ci_info, n.c_nvmlComputeInstanceInfo_t)
    assert isinstance(ci_info.gpuInstance, n.c_nvmlGpuInstance_t)
    mig_dev = n.nvmlDeviceGetMigDeviceHandleByIndex(dev, 0)
    assert isinstance(mig_dev, n.c_nvmlDevice_t)
    assert isinstance(n.nvmlDeviceIsMigDeviceHandle(mig_dev), ctypes.c_uint)
    assert isinstance(n.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(mig_dev), n.c_nvmlDevice_t)
    assert n.nvmlComputeInstanceDestroy(ci) == n.NVML_SUCCESS
    assert n.nvmlGpuInstanceDestroy(gi) == n.NVML_SUCCESS


def test_errors_are_pynvml_subclasses(sim_host):
    sim_host("L4")
    with pytest.raises(pynvml.NVMLError_NotSupported) as err:
        pynvml.nvmlDeviceGetMigMode(pynvml.nvmlDeviceGetHandleByIndex(0))
    assert str(err.value) == "Not Supported"
    assert str(pynvml.NVMLError(pynvml.NVML_ERROR_IN_USE)) == "In use by another client"
