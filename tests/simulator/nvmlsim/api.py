"""Replacements for the pynvml functions the collection calls, backed by ``nvmlsim.state``.

Each function has the parameters of its pynvml namesake and returns pynvml's own types. Strings are
returned as bytes; ``install`` wraps the functions that pynvml decorates with ``convertStrBytes``.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import functools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pynvml

from nvmlsim import mig, state
from nvmlsim.state import Host

MIB = 1024 * 1024
_MAGIC = 0x5A << 40
KINDS = {"device": 1, "mig": 2, "gi": 3, "ci": 4}
_KIND_NAMES = {number: kind for kind, number in KINDS.items()}
_NO_ID = 0xFFFFFFFF  # gpuInstanceId/computeInstanceId of processes on a GPU without MIG

_root: str | None = None  # the host directory, as a string: state.read runs on every call
_init_count = 0
_call: contextvars.ContextVar[str] = contextvars.ContextVar("nvmlsim_call", default="")
F = TypeVar("F", bound=Callable[..., Any])

# What each privileged call needs from a caller that is not root (see mig.require_privilege). nvml.h: changing the
# MIG mode "requires root user"; the MIG user guide: creating and destroying instances needs the mig/config
# capability, monitoring them (listing GPU and compute instances) the mig/monitor one. Other reads need nothing.
PRIVILEGES = {
    "nvmlDeviceSetMigMode": mig.ROOT,
    **dict.fromkeys(
        (
            "nvmlDeviceCreateGpuInstance",
            "nvmlDeviceCreateGpuInstanceWithPlacement",
            "nvmlGpuInstanceDestroy",
            "nvmlGpuInstanceCreateComputeInstance",
            "nvmlGpuInstanceCreateComputeInstanceWithPlacement",
            "nvmlComputeInstanceDestroy",
        ),
        mig.MIG_CONFIG,
    ),
    **dict.fromkeys(
        (
            "nvmlDeviceGetGpuInstances",
            "nvmlDeviceGetGpuInstanceById",
            "nvmlGpuInstanceGetComputeInstances",
            "nvmlGpuInstanceGetComputeInstanceById",
        ),
        mig.MIG_MONITOR,
    ),
}

# Strings of nvmlErrorString for codes that pynvml's own table lacks.
ERROR_STRINGS = {
    pynvml.NVML_ERROR_IN_USE: b"In use by another client",
    pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES: b"Insufficient Resources",
    pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH: b"Argument version mismatch",
}


def configure(root: Path | str) -> None:
    """Point the API at a host directory and forget any nvmlInit of a previous host."""
    global _root, _init_count
    _root = os.fspath(root)
    _init_count = 0


def _api(func: F) -> F:
    """Mark an NVML entry point: record its name for fault matching, refuse calls before nvmlInit."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not _init_count and func.__name__ not in ("nvmlInit", "nvmlInitWithFlags"):
            raise mig.fail(pynvml.NVML_ERROR_UNINITIALIZED)
        token = _call.set(func.__name__)
        try:
            return func(*args, **kwargs)
        finally:
            _call.reset(token)

    return wrapper  # type: ignore[return-value]


# --- handles ---------------------------------------------------------------------------------------


class Ref:
    """What a handle points at (a plain class: cheaper to define and to build than a dataclass or NamedTuple)."""

    __slots__ = ("ci", "gi", "gpu", "kind")

    def __init__(self, kind: str, gpu: int, gi: int = 0, ci: int = 0) -> None:
        self.kind, self.gpu, self.gi, self.ci = kind, gpu, gi, ci


_REFS: dict[int, Ref] = {}  # handle value -> what it points at, shared (refs are never modified)


def _handle(ref: Ref, handle_type: type) -> Any:
    value = _MAGIC | KINDS[ref.kind] << 32 | ref.gpu << 16 | ref.gi << 8 | ref.ci
    return handle_type.from_buffer(ctypes.c_void_p(value))  # a pointer holding value; cheaper than ctypes.cast


def _decode(handle: Any) -> Ref:
    if handle is None:
        value = None
    elif isinstance(handle, ctypes._Pointer):  # pylint: disable=protected-access
        value = ctypes.c_void_p.from_buffer(handle).value  # read in place: ctypes.cast is a foreign call
    else:
        value = ctypes.cast(handle, ctypes.c_void_p).value
    ref = _REFS.get(value)
    if ref is None:
        if not value or value >> 40 != _MAGIC >> 40:
            raise mig.fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        kind = _KIND_NAMES.get(value >> 32 & 0xFF)
        if kind is None:
            raise mig.fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        ref = _REFS[value] = Ref(kind, value >> 16 & 0xFF, value >> 8 & 0xFF, value & 0xFF)
    return ref


def device_handle(index: int) -> Any:
    """A c_nvmlDevice_t for GPU ``index``."""
    return _handle(Ref("device", index), pynvml.c_nvmlDevice_t)


# --- state access ----------------------------------------------------------------------------------


def _fault_matches(fault: dict[str, Any], gpu: int | None, kind: str | None) -> bool:
    names = NAMES.get(_call.get(), {_call.get()})
    return (
        fault["call"] in names
        and fault["times"] > 0
        and fault.get("gpu") in (None, gpu)
        and fault.get("handle") in (None, kind)
    )


def _check(host: Host, gpu: int | None, kind: str | None = None) -> None:
    """Raise an injected fault (consuming it) or GPU_IS_LOST for a lost GPU; ``kind``: the handle's, if any."""
    if gpu is not None and host.live(gpu)["lost"]:
        raise mig.fail(pynvml.NVML_ERROR_GPU_IS_LOST)
    faults = host.persistent["faults"]
    if not faults or not any(_fault_matches(f, gpu, kind) for f in faults):
        return
    with state.transaction(_root) as locked:
        fault = next((f for f in locked.persistent["faults"] if _fault_matches(f, gpu, kind)), None)
        if fault is None:  # consumed by another process meanwhile
            return
        fault["times"] -= 1
    raise mig.fail(fault["error"])


def _system() -> Host:
    host = state.read(_root)
    _check(host, None)
    return host


def _read(handle: Any, *kinds: str) -> tuple[Host, Ref]:
    """The state for a read-only call and the decoded handle, one of ``kinds`` whose target still exists; NO_PERMISSION
    when the caller lacks the privilege the call needs."""
    host = state.read(_root)
    ref = _decode(handle)
    if ref.kind not in kinds or ref.gpu >= len(host.gpus):
        raise mig.fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
    _check(host, ref.gpu, ref.kind)
    mig.require_privilege(host, PRIVILEGES.get(_call.get()))
    try:
        if ref.kind == "gi":
            mig.find_gpu_instance(host, ref.gpu, ref.gi)
        elif ref.kind in ("ci", "mig"):
            mig.find_compute_instance(host, ref.gpu, ref.gi, ref.ci)
    except pynvml.NVMLError as err:
        raise mig.fail(pynvml.NVML_ERROR_INVALID_ARGUMENT) from err
    return host, ref


@contextlib.contextmanager
def _write(handle: Any, *kinds: str) -> Iterator[tuple[Host, Ref]]:
    """A mutating call (privileged: listed in PRIVILEGES), under the host lock."""
    _host, ref = _read(handle, *kinds)
    with state.transaction(_root) as locked:
        yield locked, ref


def _deref(ref: Any) -> Any:  # pylint: disable=protected-access
    """The ctypes object behind byref(x), pointer(x) or x itself."""
    if hasattr(ref, "_obj"):
        return ref._obj
    if isinstance(ref, ctypes._Pointer):
        return ref.contents
    return ref


def _fill(array: Any, count_ref: Any, items: list[Any]) -> None:
    """C contract of the list calls: NULL array -> count only; too small -> INSUFFICIENT_SIZE."""
    count = _deref(count_ref)
    if array is None:
        count.value = len(items)
        return
    if isinstance(array, ctypes.Array) and len(array) < len(items):
        count.value = len(items)
        raise mig.fail(pynvml.NVML_ERROR_INSUFFICIENT_SIZE)
    for i, item in enumerate(items):
        array[i] = item
    count.value = len(items)


# --- system ----------------------------------------------------------------------------------------


def _load_driver() -> None:
    """Load the simulated driver: LIBRARY_NOT_FOUND / DRIVER_NOT_LOADED as the host says."""
    global _init_count
    if _root is None:
        raise mig.fail(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    host = state.read(_root)
    driver = host.persistent["driver"]
    if driver["state"] == "no_library":
        raise mig.fail(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    if driver["state"] == "not_loaded":
        raise mig.fail(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    _check(host, None)
    _init_count += 1


@_api
def nvmlInitWithFlags(flags):  # pylint: disable=unused-argument
    """Initialise NVML (flags are ignored)."""
    _load_driver()


@_api
def nvmlInit():
    """Initialise NVML."""
    _load_driver()


@_api
def nvmlShutdown():
    """Drop one nvmlInit reference."""
    global _init_count
    _system()
    _init_count -= 1


def nvmlErrorString(result):
    """The driver's text for a return code (bytes, as the C library returns it)."""
    return ERROR_STRINGS.get(result) or pynvml.NVMLError._errcode_to_string.get(result, "Unknown Error").encode()


@_api
def nvmlSystemGetDriverVersion():
    """Driver version string."""
    return _system().persistent["driver"]["version"].encode()


@_api
def nvmlSystemGetNVMLVersion():
    """NVML version: CUDA major plus the driver version, e.g. 12.550.90.07."""
    driver = _system().persistent["driver"]
    return f"{driver['cuda'] // 1000}.{driver['version']}".encode()


@_api
def nvmlSystemGetCudaDriverVersion():
    """CUDA driver API version as an int (12040 for 12.4)."""
    return _system().persistent["driver"]["cuda"]


@_api
def nvmlSystemGetCudaDriverVersion_v2():
    """Same as nvmlSystemGetCudaDriverVersion."""
    return _system().persistent["driver"]["cuda"]


@_api
def nvmlDeviceGetCount():
    """Number of GPUs."""
    return len(_system().gpus)


# --- device identity -------------------------------------------------------------------------------


def _find_device(host: Host, predicate: Callable[[int, dict[str, Any]], bool]) -> Any:
    for index, gpu in enumerate(host.gpus):
        if predicate(index, gpu):
            _check(host, index)
            return device_handle(index)
    raise mig.fail(pynvml.NVML_ERROR_NOT_FOUND)


@_api
def nvmlDeviceGetHandleByIndex(index):
    """Handle of GPU ``index``; INVALID_ARGUMENT past the count."""
    host = _system()
    if not 0 <= index < len(host.gpus):
        raise mig.fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
    return _find_device(host, lambda i, _gpu: i == index)


@_api
def nvmlDeviceGetHandleByUUID(uuid):
    """Handle of the GPU with this UUID (MIG UUIDs give MIG device handles)."""
    host = _system()
    text = uuid.decode() if isinstance(uuid, bytes) else uuid
    for index, _gi, ci in ((i, gi, ci) for i in range(len(host.gpus)) for gi, ci in mig.mig_devices(host, i)):
        if ci["uuid"] == text:
            return _handle(Ref("mig", index, _gi["id"], ci["id"]), pynvml.c_nvmlDevice_t)
    return _find_device(host, lambda _i, gpu: gpu["uuid"] == text)


def _pci_key(bus_id: str) -> tuple[int, int, int, int]:
    domain, bus, rest = bus_id.strip().split(":")
    device, function = rest.split(".")
    return int(domain, 16), int(bus, 16), int(device, 16), int(function, 16)


@_api
def nvmlDeviceGetHandleByPciBusId(pciBusId):
    """Handle by PCI bus id in any of the usual spellings (4 or 8 hex digit domain, any case)."""
    host = _system()
    text = pciBusId.decode() if isinstance(pciBusId, bytes) else pciBusId
    try:
        wanted = _pci_key(text)
    except ValueError as err:
        raise mig.fail(pynvml.NVML_ERROR_INVALID_ARGUMENT) from err
    return _find_device(host, lambda _i, gpu: _pci_key(gpu["pci_bus_id"]) == wanted)


@_api
def nvmlDeviceGetIndex(handle):
    """Index of a GPU (NOT_SUPPORTED for MIG device handles)."""
    _host, ref = _read(handle, "device", "mig")
    if ref.kind == "mig":
        raise mig.fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
    return ref.gpu


def _mig_device(host: Host, ref: Ref) -> tuple[dict[str, Any], dict[str, Any]]:
    gi = mig.find_gpu_instance(host, ref.gpu, ref.gi)
    return gi, mig.find_compute_instance(host, ref.gpu, ref.gi, ref.ci)


@_api
def nvmlDeviceGetUUID(handle):
    """GPU-<uuid> for a GPU, MIG-<uuid> for a MIG device."""
    host, ref = _read(handle, "device", "mig")
    if ref.kind == "mig":
        return _mig_device(host, ref)[1]["uuid"].encode()
    return host.gpus[ref.gpu]["uuid"].encode()


def product_name(host: Host, index: int) -> str:
    """NVML product name; drivers before R510 omit the "NVIDIA " prefix."""
    name = mig.model(host, index).name
    version = tuple(int(p) for p in host.persistent["driver"]["version"].split(".")[:1])
    return name.removeprefix("NVIDIA ") if version < (510,) else name


@_api
def nvmlDeviceGetName(handle):
    """Product name; MIG devices read "<GPU name> MIG <profile>"."""
    host, ref = _read(handle, "device", "mig")
    name = product_name(host, ref.gpu)
    if ref.kind == "mig":
        gi, ci = _mig_device(host, ref)
        cprof = mig.ci_profile(mig.model(host, ref.gpu), gi, ci["profile_id"])
        name = f"{name} MIG {cprof.name}"
    return name.encode()


@_api
def nvmlDeviceGetSerial(handle):
    """Board serial number."""
    host, ref = _read(handle, "device", "mig")
    return host.gpus[ref.gpu]["serial"].encode()


@_api
def nvmlDeviceGetPciInfo_v3(handle):
    """PCI info of the GPU (a MIG device reports its parent's)."""
    host, ref = _read(handle, "device", "mig")
    gpu = host.gpus[ref.gpu]
    domain, bus, device, _function = _pci_key(gpu["pci_bus_id"])
    info = pynvml.nvmlPciInfo_t()
    info.busId = gpu["pci_bus_id"].encode()
    info.busIdLegacy = gpu["pci_bus_id"][4:].encode()
    info.domain, info.bus, info.device = domain, bus, device
    info.pciDeviceId = int(gpu["pci_device_id"], 16)
    info.pciSubSystemId = int(gpu["pci_subsystem_id"], 16)
    return info


@_api
def nvmlDeviceGetMemoryInfo(handle, version=None):
    """Framebuffer memory (MIG device: its GPU instance's memory); used = process memory."""
    host, ref = _read(handle, "device", "mig")
    gpu_model = mig.model(host, ref.gpu)
    if ref.kind == "mig":
        gi, _ci = _mig_device(host, ref)
        total = mig.gi_profile(gpu_model, gi["profile_id"]).memory_mib * MIB
        procs = mig.processes_on(host, ref.gpu, ref.gi)
    else:
        total = gpu_model.memory_mib * MIB
        procs = mig.processes_on(host, ref.gpu)
    used = sum(p["used_mib"] for p in procs) * MIB
    if not version:
        memory = pynvml.c_nvmlMemory_t()
    else:
        memory = pynvml.c_nvmlMemory_v2_t()
        memory.version = version
        memory.reserved = 0
    memory.total, memory.used, memory.free = total, used, total - used
    return memory


@_api
def nvmlDeviceGetCudaComputeCapability(handle):
    """(major, minor)."""
    host, ref = _read(handle, "device", "mig")
    return tuple(mig.model(host, ref.gpu).compute_capability)


@_api
def nvmlDeviceGetArchitecture(device):
    """NVML_DEVICE_ARCH_* value."""
    host, ref = _read(device, "device", "mig")
    return getattr(pynvml, "NVML_DEVICE_ARCH_" + mig.model(host, ref.gpu).architecture.upper())


@_api
def nvmlDeviceGetPersistenceMode(handle):
    """NVML_FEATURE_ENABLED/DISABLED."""
    host, ref = _read(handle, "device")
    return host.gpus[ref.gpu]["persistence_mode"]


@_api
def nvmlDeviceGetComputeRunningProcesses_v3(handle):
    """Compute processes as pynvml friendly objects (on a MIG device handle: that instance's only)."""
    host, ref = _read(handle, "device", "mig")
    procs = mig.processes_on(host, ref.gpu, ref.gi, ref.ci) if ref.kind == "mig" else mig.processes_on(host, ref.gpu)
    result = []
    for proc in procs:
        info = pynvml.c_nvmlProcessInfo_v3_t()
        info.pid, info.usedGpuMemory = proc["pid"], proc["used_mib"] * MIB
        info.gpuInstanceId = _NO_ID if proc.get("gpu_instance_id") is None else proc["gpu_instance_id"]
        info.computeInstanceId = _NO_ID if proc.get("compute_instance_id") is None else proc["compute_instance_id"]
        result.append(pynvml.nvmlStructToFriendlyObject(info))
    return result


# --- MIG mode --------------------------------------------------------------------------------------


@_api
def nvmlDeviceGetMigMode(device):
    """[current, pending]."""
    host, ref = _read(device, "device")
    mig.require_mig(host, ref.gpu, enabled=False)
    record = mig.mode_record(host, ref.gpu)
    return [record["current"], record["pending"]]


@_api
def nvmlDeviceSetMigMode(device, mode):
    """Set MIG mode; returns the activation status (see README for the per-generation rules)."""
    with _write(device, "device") as (host, ref):
        return mig.set_mig_mode(host, ref.gpu, mode)


# --- GPU instance profiles and instances -----------------------------------------------------------


def _gi_profile_info(prof: Any, version: int) -> Any:
    info = pynvml.c_nvmlGpuInstanceProfileInfo_v2_t() if version == 2 else pynvml.c_nvmlGpuInstanceProfileInfo_t()
    info.id, info.isP2pSupported, info.sliceCount = prof.id, 0, prof.compute_slices
    info.instanceCount, info.multiprocessorCount = prof.max_instances, prof.sm_count
    info.copyEngineCount, info.decoderCount, info.encoderCount = prof.copy_engines, prof.decoders, prof.encoders
    info.jpegCount, info.ofaCount, info.memorySizeMB = prof.jpeg, prof.ofa, prof.memory_mib
    if version == 2:
        info.name = f"MIG {prof.name}".encode()
    return info


@_api
def nvmlDeviceGetGpuInstanceProfileInfo(device, profile, version=2):
    """Profile info by NVML_GPU_INSTANCE_PROFILE_* index (version 1 or 2 structure)."""
    if version not in (1, 2):
        raise mig.fail(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
    host, ref = _read(device, "device")
    return _gi_profile_info(mig.gi_profile_by_index(mig.require_mig(host, ref.gpu, enabled=False), profile), version)


@_api
def nvmlDeviceGetGpuInstanceProfileInfoById(device, profileId):
    """Profile info (version 2) by profile id."""
    host, ref = _read(device, "device")
    return _gi_profile_info(mig.gi_profile(mig.require_mig(host, ref.gpu, enabled=False), profileId), 2)


@_api
def nvmlDeviceGetGpuInstancePossiblePlacements(device, profileId, placementsRef, countRef):
    """All legal placements of a profile, whatever the MIG mode and occupancy."""
    host, ref = _read(device, "device")
    prof = mig.gi_profile(mig.require_mig(host, ref.gpu, enabled=False), profileId)
    items = [pynvml.c_nvmlGpuInstancePlacement_t(s, prof.placement_size) for s in prof.placement_starts]
    _fill(placementsRef, countRef, items)
    return pynvml.NVML_SUCCESS


@_api
def nvmlDeviceGetGpuInstanceRemainingCapacity(device, profileId):
    """How many more instances of the profile can be created together."""
    host, ref = _read(device, "device")
    gpu_model = mig.require_mig(host, ref.gpu)
    instances = host.live(ref.gpu)["gpu_instances"]
    return mig.gi_remaining(gpu_model, instances, mig.gi_profile(gpu_model, profileId))


def _gi_handle(ref: Ref, gi: dict[str, Any]) -> Any:
    return _handle(Ref("gi", ref.gpu, gi["id"]), pynvml.c_nvmlGpuInstance_t)


@_api
def nvmlDeviceCreateGpuInstance(device, profileId):
    """Create a GPU instance where the driver would put it."""
    with _write(device, "device") as (host, ref):
        return _gi_handle(ref, mig.create_gpu_instance(host, ref.gpu, profileId))


@_api
def nvmlDeviceCreateGpuInstanceWithPlacement(device, profileId, placement):
    """Create a GPU instance at an explicit placement (size must match the profile)."""
    with _write(device, "device") as (host, ref):
        prof = mig.gi_profile(mig.require_mig(host, ref.gpu), profileId)
        wanted = _deref(placement)
        if wanted.size != prof.placement_size:
            raise mig.fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return _gi_handle(ref, mig.create_gpu_instance(host, ref.gpu, profileId, wanted.start))


@_api
def nvmlDeviceGetGpuInstances(device, profileId, gpuInstancesRef, countRef):
    """GPU instances of one profile, into the caller's c_nvmlGpuInstance_t array."""
    host, ref = _read(device, "device")
    mig.gi_profile(mig.require_mig(host, ref.gpu), profileId)
    if gpuInstancesRef is None:
        raise mig.fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
    found = [gi for gi in host.live(ref.gpu)["gpu_instances"] if gi["profile_id"] == profileId]
    _fill(gpuInstancesRef, countRef, [_gi_handle(ref, gi) for gi in found])
    return pynvml.NVML_SUCCESS


@_api
def nvmlDeviceGetGpuInstanceById(device, gpuInstanceId):
    """GPU instance handle by id (NOT_FOUND if absent)."""
    host, ref = _read(device, "device")
    mig.require_mig(host, ref.gpu)
    return _gi_handle(ref, mig.find_gpu_instance(host, ref.gpu, gpuInstanceId))


@_api
def nvmlGpuInstanceGetInfo(gpuInstance):
    """Parent device, id, profile id and placement of a GPU instance."""
    host, ref = _read(gpuInstance, "gi")
    gi = mig.find_gpu_instance(host, ref.gpu, ref.gi)
    info = pynvml.c_nvmlGpuInstanceInfo_t()
    info.device, info.id, info.profileId = device_handle(ref.gpu), gi["id"], gi["profile_id"]
    info.placement = pynvml.c_nvmlGpuInstancePlacement_t(gi["start"], gi["size"])
    return info


@_api
def nvmlGpuInstanceDestroy(gpuInstance):
    """Destroy a GPU instance (IN_USE with compute instances or processes)."""
    with _write(gpuInstance, "gi") as (host, ref):
        mig.destroy_gpu_instance(host, ref.gpu, ref.gi)
    return pynvml.NVML_SUCCESS


# --- compute instances -----------------------------------------------------------------------------


def _gi_of(host: Host, ref: Ref) -> dict[str, Any]:
    return mig.find_gpu_instance(host, ref.gpu, ref.gi)


@_api
def nvmlGpuInstanceGetComputeInstanceProfileInfo(device, profile, engProfile, version=2):
    """Compute profile info inside a GPU instance (``device`` is the GPU instance handle, as in pynvml)."""
    if version not in (1, 2):
        raise mig.fail(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
    host, ref = _read(device, "gi")
    if engProfile != pynvml.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED:
        raise mig.fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
    gi = _gi_of(host, ref)
    gprof = mig.gi_profile(mig.model(host, ref.gpu), gi["profile_id"])
    cprof = mig.ci_profile(mig.model(host, ref.gpu), gi, profile)
    info = (
        pynvml.c_nvmlComputeInstanceProfileInfo_v2_t() if version == 2 else pynvml.c_nvmlComputeInstanceProfileInfo_t()
    )
    info.id, info.sliceCount, info.instanceCount = cprof.id, cprof.slice_count, cprof.max_instances
    info.multiprocessorCount, info.sharedCopyEngineCount = cprof.sm_count, gprof.copy_engines
    info.sharedDecoderCount, info.sharedEncoderCount = gprof.decoders, gprof.encoders
    info.sharedJpegCount, info.sharedOfaCount = gprof.jpeg, gprof.ofa
    if version == 2:
        info.name = f"MIG {cprof.name}".encode()
    return info


@_api
def nvmlGpuInstanceGetComputeInstanceRemainingCapacity(gpuInstance, profileId):
    """How many more compute instances of the profile fit in the GPU instance."""
    host, ref = _read(gpuInstance, "gi")
    gi = _gi_of(host, ref)
    gpu_model = mig.model(host, ref.gpu)
    return mig.ci_remaining(gpu_model, gi, mig.ci_profile(gpu_model, gi, profileId))


@_api
def nvmlGpuInstanceGetComputeInstancePossiblePlacements(gpuInstance, profileId, placementsRef, countRef):
    """Legal compute-slice placements of a compute profile inside the GPU instance."""
    host, ref = _read(gpuInstance, "gi")
    gi = _gi_of(host, ref)
    gpu_model = mig.model(host, ref.gpu)
    cprof = mig.ci_profile(gpu_model, gi, profileId)
    items = [pynvml.c_nvmlComputeInstancePlacement_t(s, cprof.slice_count) for s in mig.ci_starts(gpu_model, gi, cprof)]
    _fill(placementsRef, countRef, items)
    return pynvml.NVML_SUCCESS


def _ci_handle(ref: Ref, ci: dict[str, Any]) -> Any:
    return _handle(Ref("ci", ref.gpu, ref.gi, ci["id"]), pynvml.c_nvmlComputeInstance_t)


@_api
def nvmlGpuInstanceCreateComputeInstance(gpuInstance, profileId):
    """Create a compute instance at the lowest free compute slice."""
    with _write(gpuInstance, "gi") as (host, ref):
        return _ci_handle(ref, mig.create_compute_instance(host, ref.gpu, ref.gi, profileId))


@_api
def nvmlGpuInstanceCreateComputeInstanceWithPlacement(gpuInstance, profileId, placement):
    """Create a compute instance at an explicit placement."""
    with _write(gpuInstance, "gi") as (host, ref):
        wanted = _deref(placement)
        cprof = mig.ci_profile(mig.model(host, ref.gpu), _gi_of(host, ref), profileId)
        if wanted.size != cprof.slice_count:
            raise mig.fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return _ci_handle(ref, mig.create_compute_instance(host, ref.gpu, ref.gi, profileId, wanted.start))


@_api
def nvmlGpuInstanceGetComputeInstances(gpuInstance, profileId, computeInstancesRef, countRef):
    """Compute instances of one profile, into the caller's c_nvmlComputeInstance_t array."""
    host, ref = _read(gpuInstance, "gi")
    gi = _gi_of(host, ref)
    mig.ci_profile(mig.model(host, ref.gpu), gi, profileId)
    if computeInstancesRef is None:
        raise mig.fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
    found = [ci for ci in gi["compute_instances"] if ci["profile_id"] == profileId]
    _fill(computeInstancesRef, countRef, [_ci_handle(ref, ci) for ci in found])
    return pynvml.NVML_SUCCESS


@_api
def nvmlGpuInstanceGetComputeInstanceById(gpuInstance, computeInstanceId):
    """Compute instance handle by id (NOT_FOUND if absent)."""
    host, ref = _read(gpuInstance, "gi")
    return _ci_handle(ref, mig.find_compute_instance(host, ref.gpu, ref.gi, computeInstanceId))


@_api
def nvmlComputeInstanceGetInfo_v2(computeInstance):
    """Parent device and GPU instance, id, profile id and placement of a compute instance."""
    host, ref = _read(computeInstance, "ci")
    ci = mig.find_compute_instance(host, ref.gpu, ref.gi, ref.ci)
    info = pynvml.c_nvmlComputeInstanceInfo_t()
    info.device = device_handle(ref.gpu)
    info.gpuInstance = _handle(Ref("gi", ref.gpu, ref.gi), pynvml.c_nvmlGpuInstance_t)
    info.id, info.profileId = ci["id"], ci["profile_id"]
    info.placement = pynvml.c_nvmlComputeInstancePlacement_t(ci["start"], ci["size"])
    return info


@_api
def nvmlComputeInstanceDestroy(computeInstance):
    """Destroy a compute instance (IN_USE while processes run on it)."""
    with _write(computeInstance, "ci") as (host, ref):
        mig.destroy_compute_instance(host, ref.gpu, ref.gi, ref.ci)
    return pynvml.NVML_SUCCESS


# --- MIG device handles ----------------------------------------------------------------------------


@_api
def nvmlDeviceIsMigDeviceHandle(device):
    """c_uint(1) for a MIG device handle, c_uint(0) for a GPU."""
    _host, ref = _read(device, "device", "mig")
    return ctypes.c_uint(int(ref.kind == "mig"))


def _mig_ref(device: Any) -> tuple[Host, Ref]:
    host, ref = _read(device, "device", "mig")
    if ref.kind != "mig":
        raise mig.fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
    return host, ref


@_api
def nvmlDeviceGetGpuInstanceId(device):
    """GPU instance id of a MIG device (NOT_SUPPORTED for a GPU handle)."""
    return _mig_ref(device)[1].gi


@_api
def nvmlDeviceGetComputeInstanceId(device):
    """Compute instance id of a MIG device (NOT_SUPPORTED for a GPU handle)."""
    return _mig_ref(device)[1].ci


@_api
def nvmlDeviceGetMaxMigDeviceCount(device):
    """Maximum MIG devices under the GPU; zero if MIG is not supported or not enabled (as NVML documents)."""
    host, ref = _read(device, "device")
    gpu_model = mig.model(host, ref.gpu)
    return gpu_model.max_gpu_instances if mig.mig_enabled(host, ref.gpu) else 0


@_api
def nvmlDeviceGetMigDeviceHandleByIndex(device, index):
    """The index-th MIG device (GI id, then CI id order); NOT_FOUND past the existing ones."""
    host, ref = _read(device, "device")
    gpu_model = mig.require_mig(host, ref.gpu, enabled=False)
    if not 0 <= index < gpu_model.max_gpu_instances:
        raise mig.fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
    devices = mig.mig_devices(host, ref.gpu)
    if index >= len(devices):
        raise mig.fail(pynvml.NVML_ERROR_NOT_FOUND)
    gi, ci = devices[index]
    return _handle(Ref("mig", ref.gpu, gi["id"], ci["id"]), pynvml.c_nvmlDevice_t)


@_api
def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(migDevice):
    """Parent GPU handle of a MIG device."""
    _host, ref = _read(migDevice, "device", "mig")
    if ref.kind != "mig":
        raise mig.fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
    return device_handle(ref.gpu)


# pynvml name -> replacement. Aliases point at the same replacement.
REPLACEMENTS: dict[str, Callable[..., Any]] = {
    name: func for name, func in globals().items() if name.startswith("nvml") and callable(func)
}
REPLACEMENTS.update(
    {
        "nvmlDeviceGetPciInfo": nvmlDeviceGetPciInfo_v3,
        "nvmlDeviceGetComputeRunningProcesses": nvmlDeviceGetComputeRunningProcesses_v3,
        "nvmlComputeInstanceGetInfo": nvmlComputeInstanceGetInfo_v2,
        "nvmlDeviceGetGpuInstanceProfileInfoV": nvmlDeviceGetGpuInstanceProfileInfo,
        "nvmlDeviceGetGpuInstanceProfileInfoByIdV": nvmlDeviceGetGpuInstanceProfileInfoById,
        "nvmlGpuInstanceGetComputeInstanceProfileInfoV": nvmlGpuInstanceGetComputeInstanceProfileInfo,
    }
)

# replacement name -> every pynvml name bound to it (faults match any of them)
NAMES: dict[str, set[str]] = {}
for _name, _func in REPLACEMENTS.items():
    NAMES.setdefault(_func.__name__, set()).add(_name)
