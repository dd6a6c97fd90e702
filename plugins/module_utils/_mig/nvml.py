# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The one adapter over pynvml (PRIVATE to the collection).

Reads GPUs, MIG profiles and instances into plain dicts and performs MIG changes.
Every NVML error becomes an ``NvmlError`` whose message names the GPU and the remedy.
"""

from __future__ import annotations

import contextlib
import ctypes
import traceback

try:
    import pynvml

    HAS_PYNVML = True
    PYNVML_IMPORT_ERROR = None
except ImportError:  # pragma: no cover - exercised by ansible-test's import sanity test
    pynvml = None
    HAS_PYNVML = False
    PYNVML_IMPORT_ERROR = traceback.format_exc()

ARCHITECTURES = {2: "kepler", 3: "maxwell", 4: "pascal", 5: "volta", 6: "turing", 7: "ampere", 8: "ada", 9: "hopper"}
ARCHITECTURES.update({10: "blackwell", 13: "rubin"})

# NVML_COMPUTE_INSTANCE_PROFILE_* index -> compute slices (nvml.h: 1, 2, 3, 4, 7, 8, 6 slices, 1 slice REV1, 7 NVL).
CI_PROFILE_SLICES = {0: 1, 1: 2, 2: 3, 3: 4, 4: 7, 5: 8, 6: 6, 7: 1, 8: 7}

# Errors that mean "no such profile on this GPU" while enumerating profile indices.
_NO_PROFILE = ("NVML_ERROR_NOT_SUPPORTED", "NVML_ERROR_INVALID_ARGUMENT")

# The remedy for NVML_ERROR_UNKNOWN and for codes without an entry of their own.
_DEFAULT_REMEDY = (
    "check dmesg and journalctl -k for Xid errors and retry; if it persists, reset the GPU (nvidia-smi -r -i <gpu>)"
    " or reboot"
)
# NVML return code -> (problem, remedy). Codes are pynvml's NVML_ERROR_* values.
_REMEDIES = {
    1: ("NVML is not initialized", "this is a bug in gpu.mig; please report it"),
    2: ("NVML rejected an argument", "check the requested profile and placement against mig_facts"),
    3: ("not supported on this GPU", "use a MIG-capable GPU (A100, A30, H100, H200, B200) with MIG enabled"),
    4: ("no permission", "run the task as root (become: true)"),
    6: ("not found", "gather mig_facts again; the instance may have been removed concurrently"),
    8: ("the GPU lacks power", "check the GPU's power cables and the power supply, then reboot"),
    9: ("the NVIDIA driver is not loaded", "install the NVIDIA driver and load it (modprobe nvidia), then retry"),
    10: ("the GPU did not answer in time", "retry; if it persists, check dmesg for Xid errors and reboot"),
    11: ("the driver has an interrupt (IRQ) problem", "check dmesg for NVRM messages and reboot"),
    12: ("the NVML library (libnvidia-ml.so.1) was not found", "install the NVIDIA driver on this host"),
    13: ("the installed driver lacks this NVML function", "upgrade the NVIDIA driver (see preflight_min_driver)"),
    14: ("the GPU's InfoROM is corrupted", "drain the host and have the GPU's InfoROM updated or the GPU replaced"),
    15: ("the GPU has fallen off the bus (GPU lost)", "drain the host, check dmesg for Xid errors and reboot it"),
    16: ("a GPU reset is required", "stop the GPU's clients and reset it (nvidia-smi -r -i <gpu>) or reboot"),
    17: ("the operating system refused the call", "check dmesg and journalctl -k for NVRM messages"),
    18: ("the NVML library and the kernel driver versions differ", "reboot after the driver upgrade"),
    19: ("the GPU or instance is in use", "stop the processes using it (see mig_facts processes) and retry"),
    20: ("the driver ran out of host memory", "free memory on the host and retry"),
    23: ("insufficient resources", "choose profiles and placements that fit (see mig_facts free counts)"),
    27: ("the GPU is not ready (initialising or resetting)", "wait a few seconds and retry"),
    28: ("the GPU was not found", "check the GPU with lspci and the driver logs"),
    29: ("the GPU is in a state that does not allow this", "gather mig_facts again and retry"),
    999: ("NVML reported an unknown error", _DEFAULT_REMEDY),
}


def _capability_remedy(capability: str, minor: int) -> str:
    return (
        f"run the task as root (become: true), or grant the user running it the {capability} nvidia-capability"
        f" (read access to /dev/nvidia-caps/nvidia-cap{minor}; see /proc/driver/nvidia/capabilities/{capability})"
    )


# Remedies that depend on the call too: (pynvml function, code) -> remedy. NO_PERMISSION (4): nvml.h says changing the
# MIG mode needs root; creating and destroying instances needs the mig/config capability, listing them the
# mig/monitor one (the MIG user guide; a stock driver grants only mig/monitor to every user). IN_USE (19) when a
# change was planned with no process on the GPU: a client NVML does not list, such as a profiler, holds it.
_CALL_REMEDIES = {
    ("nvmlDeviceSetMigMode", 4): "changing the MIG mode needs root: run the task with become: true",
    **dict.fromkeys(
        (
            ("nvmlDeviceCreateGpuInstanceWithPlacement", 4),
            ("nvmlGpuInstanceCreateComputeInstance", 4),
            ("nvmlGpuInstanceDestroy", 4),
            ("nvmlComputeInstanceDestroy", 4),
        ),
        _capability_remedy("mig/config", 1),
    ),
    **dict.fromkeys(
        (
            ("nvmlDeviceGetGpuInstances", 4),
            ("nvmlDeviceGetGpuInstanceById", 4),
            ("nvmlGpuInstanceGetComputeInstances", 4),
            ("nvmlGpuInstanceGetComputeInstanceById", 4),
        ),
        _capability_remedy("mig/monitor", 2),
    ),
    **dict.fromkeys(
        (
            ("nvmlDeviceSetMigMode", 19),
            ("nvmlDeviceCreateGpuInstanceWithPlacement", 19),
            ("nvmlGpuInstanceCreateComputeInstance", 19),
        ),
        "stop the GPU's processes (gpu.mig.mig_facts lists them) and any profiling client, which NVML does not list:"
        " DCGM profiling metrics (dcgm-exporter, nv-hostengine; or pause them with dcgmi profile --pause) and Nsight"
        " sessions (nsys, ncu); then retry",
    ),
}


class NvmlError(Exception):
    """An NVML failure, with a message that names the GPU and the fix."""

    def __init__(self, msg: str, code: int | None = None):
        super().__init__(msg)
        self.msg = msg
        self.code = code
        self.value = code  # pynvml.NVMLError compares by .value; keep comparisons with it safe


def describe(err: Exception, where: str = "", action: str = "", call: str = "") -> NvmlError:
    """Turn a pynvml exception into an NvmlError naming ``where`` (a GPU) and the remedy (for the pynvml function
    ``call`` when it has its own)."""
    code = getattr(err, "value", None)
    problem, remedy = _REMEDIES.get(code, (f"NVML error {code}", _DEFAULT_REMEDY))
    remedy = _CALL_REMEDIES.get((call, code), remedy)
    prefix = f"{where}: " if where else ""
    doing = f"{action} failed: " if action else ""
    return NvmlError(f"{prefix}{doing}{problem} (NVML: {err}); {remedy}", code)


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _mib(num_bytes: int) -> int:
    return int(num_bytes) // (1024 * 1024)


def _is_error(err: Exception, *names: str) -> bool:
    return getattr(err, "value", None) in {getattr(pynvml, name) for name in names}


class Nvml:
    """An NVML session. Use as a context manager; all reads return plain dicts."""

    def __init__(self):
        self._handles: dict[int, object] = {}
        self._profile_tables: dict[tuple, list[dict]] = {}
        self._ci_profiles: dict[tuple, object] = {}

    def __enter__(self) -> Nvml:
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as err:
            raise describe(err, action="NVML initialisation") from err
        return self

    def __exit__(self, *exc) -> None:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()

    # ----------------------------------------------------------------- system
    def system(self) -> dict:
        """Driver, CUDA and NVML versions."""
        cuda = self._call(None, "reading the CUDA driver version", pynvml.nvmlSystemGetCudaDriverVersion)
        return {
            "driver_version": _text(self._call(None, "reading the driver version", pynvml.nvmlSystemGetDriverVersion)),
            "cuda_driver_version": f"{cuda // 1000}.{(cuda % 1000) // 10}",
            "nvml_version": _text(self._call(None, "reading the NVML version", pynvml.nvmlSystemGetNVMLVersion)),
        }

    def count(self) -> int:
        return self._call(None, "counting the GPUs", pynvml.nvmlDeviceGetCount)

    def handle(self, index: int):
        if index not in self._handles:
            self._handles[index] = self._call(index, "opening the GPU", pynvml.nvmlDeviceGetHandleByIndex, index)
        return self._handles[index]

    def label(self, index: int) -> str:
        """'GPU 0 (GPU-…)', or 'GPU 0' when even the UUID cannot be read."""
        uuid = self._readable(index, pynvml.nvmlDeviceGetUUID)
        return f"GPU {index}" if uuid is None else f"GPU {index} ({_text(uuid)})"

    def _readable(self, index: int, func):
        """``func(handle)`` on GPU ``index``, or None when NVML fails on it (for messages and failed GPUs)."""
        try:
            return func(self.handle(index))
        except (pynvml.NVMLError, NvmlError):
            return None

    def _call(self, index: int | None, action: str, func, *args, absent: tuple[str, ...] = ()):
        """Call pynvml; NVML errors named in ``absent`` (e.g. NOT_SUPPORTED) mean "nothing there" and give None."""
        try:
            return func(*args)
        except pynvml.NVMLError as err:
            if absent and _is_error(err, *absent):
                return None
            where = "" if index is None else self.label(index) if index in self._handles else f"GPU {index}"
            raise describe(err, where, action, getattr(func, "__name__", "")) from err

    # ------------------------------------------------------------------ reads
    def gpu(self, index: int) -> dict:
        """Everything mig_facts reports for one GPU."""
        handle = self.handle(index)
        pci = self._call(index, "reading PCI info", pynvml.nvmlDeviceGetPciInfo, handle)
        memory = self._call(index, "reading memory info", pynvml.nvmlDeviceGetMemoryInfo, handle)
        major, minor = self._call(
            index, "reading compute capability", pynvml.nvmlDeviceGetCudaComputeCapability, handle
        )
        facts = {
            "index": index,
            "uuid": _text(self._call(index, "reading the UUID", pynvml.nvmlDeviceGetUUID, handle)),
            "name": _text(self._call(index, "reading the product name", pynvml.nvmlDeviceGetName, handle)),
            "pci_bus_id": _text(pci.busId),
            "pci_device_id": f"0x{pci.pciDeviceId:08X}",
            "pci_subsystem_id": f"0x{pci.pciSubSystemId:08X}",
            "architecture": self._architecture(index, handle),
            "compute_capability": f"{major}.{minor}",
            "memory": {"total_mib": _mib(memory.total), "used_mib": _mib(memory.used), "free_mib": _mib(memory.free)},
            "mig": self.mig_mode(index),
            "profiles": [],
            "gpu_instances": [],
            "processes": [],
        }
        model = (facts["name"], memory.total, facts["mig"]["current"])
        if facts["mig"]["supported"]:
            facts["profiles"] = self.profiles(index, model)
        if facts["mig"]["current"]:
            facts["gpu_instances"] = self.gpu_instances(index, facts["profiles"], model)
            facts["processes"] = [p for gi in facts["gpu_instances"] for p in gi["processes"]]
        else:
            facts["processes"] = self._processes(index, handle)
        return facts

    def gpu_or_failure(self, index: int) -> dict:
        """The GPU's facts as gpu() reads them or, when NVML fails on this GPU, a record with the same keys and
        ``error`` (the message naming the GPU and the remedy): one failing GPU is that GPU's problem, not the host's.
        Only a failed GPU has the ``error`` key; its identity is kept as far as NVML still reads it."""
        try:
            return self.gpu(index)
        except NvmlError as err:
            pci = self._readable(index, pynvml.nvmlDeviceGetPciInfo)
            uuid = self._readable(index, pynvml.nvmlDeviceGetUUID)
            name = self._readable(index, pynvml.nvmlDeviceGetName)
            return failed_gpu(
                index,
                err.msg,
                uuid=None if uuid is None else _text(uuid),
                name=None if name is None else _text(name),
                pci_bus_id=None if pci is None else _text(pci.busId),
            )

    def _architecture(self, index: int, handle) -> str:
        """The generation's name; 'unknown' for a generation this table lacks or a driver that cannot tell."""
        arch = self._call(
            index,
            "reading the architecture",
            pynvml.nvmlDeviceGetArchitecture,
            handle,
            absent=("NVML_ERROR_NOT_SUPPORTED", "NVML_ERROR_FUNCTION_NOT_FOUND"),
        )
        return ARCHITECTURES.get(arch, "unknown")

    def mig_mode(self, index: int) -> dict:
        """{'supported', 'current', 'pending'}: booleans, None when MIG is not supported."""
        mode = self._call(
            index,
            "reading MIG mode",
            pynvml.nvmlDeviceGetMigMode,
            self.handle(index),
            absent=("NVML_ERROR_NOT_SUPPORTED",),
        )
        if mode is None:
            return {"supported": False, "current": None, "pending": None}
        current, pending = mode
        enabled = pynvml.NVML_DEVICE_MIG_ENABLE
        return {"supported": True, "current": current == enabled, "pending": pending == enabled}

    def profiles(self, index: int, model: tuple | None = None) -> list[dict]:
        """The GPU-instance profile table read live, with free counts and placements.

        The static part (sizes, engines, placements) is the same on every GPU of one model in one MIG mode: it is read
        once per ``model`` key (name, memory, MIG mode; read here when not given) and session. Free counts are per GPU.
        """
        handle = self.handle(index)
        if model is None:
            memory = self._call(index, "reading memory info", pynvml.nvmlDeviceGetMemoryInfo, handle)
            name = self._call(index, "reading the product name", pynvml.nvmlDeviceGetName, handle)
            model = (_text(name), memory.total, self.mig_mode(index)["current"])
        if model not in self._profile_tables:
            self._profile_tables[model] = self._static_profiles(index)
        return [
            dict(
                profile,
                free=self._call(
                    index,
                    "reading remaining capacity",
                    pynvml.nvmlDeviceGetGpuInstanceRemainingCapacity,
                    handle,
                    profile["id"],
                    absent=("NVML_ERROR_NOT_SUPPORTED",),
                )
                or 0,
                placement_starts=list(profile["placement_starts"]),
            )
            for profile in self._profile_tables[model]
        ]

    def _static_profiles(self, index: int) -> list[dict]:
        handle = self.handle(index)
        table = []
        for nvml_index in range(pynvml.NVML_GPU_INSTANCE_PROFILE_COUNT):
            info = self._call(
                index,
                "reading MIG profiles",
                pynvml.nvmlDeviceGetGpuInstanceProfileInfo,
                handle,
                nvml_index,
                absent=_NO_PROFILE,
            )
            if info is None:
                continue
            starts, size = self._placements(index, info.id)
            table.append(
                {
                    "id": info.id,
                    "nvml_index": nvml_index,
                    "name": _profile_name(info),
                    "slices": info.sliceCount,
                    "memory_slices": size,
                    "memory_mib": int(info.memorySizeMB),
                    "sm_count": info.multiprocessorCount,
                    "copy_engines": info.copyEngineCount,
                    "decoders": info.decoderCount,
                    "encoders": info.encoderCount,
                    "jpeg": info.jpegCount,
                    "ofa": info.ofaCount,
                    "total": info.instanceCount,
                    "free": None,
                    "placement_starts": starts,
                }
            )
        return table

    def _placements(self, index: int, profile_id: int) -> tuple[list[int], int]:
        """Possible starts of a GPU-instance profile and its size in memory slices (([], 0) while MIG is off)."""
        handle = self.handle(index)
        count = ctypes.c_uint(0)
        array = (pynvml.c_nvmlGpuInstancePlacement_t * 16)()
        count.value = len(array)
        found = self._call(
            index,
            "reading placements",
            pynvml.nvmlDeviceGetGpuInstancePossiblePlacements,
            handle,
            profile_id,
            array,
            ctypes.byref(count),
            absent=("NVML_ERROR_NOT_SUPPORTED",),  # MIG disabled on some drivers
        )
        if found is None or not count.value:
            return [], 0
        return [array[i].start for i in range(count.value)], array[0].size

    def _gi_handles(self, index: int, profiles: list[dict]) -> list:
        handle = self.handle(index)
        found = []
        for profile in profiles:
            if profile["free"] == profile["total"]:
                continue  # room for every instance of it: none exists, skip the NVML round trip
            array = (pynvml.c_nvmlGpuInstance_t * max(profile["total"], 1))()
            count = ctypes.c_uint(0)
            self._call(
                index,
                "listing GPU instances",
                pynvml.nvmlDeviceGetGpuInstances,
                handle,
                profile["id"],
                array,
                ctypes.byref(count),
            )
            found.extend(array[i] for i in range(count.value))
        return found

    def gpu_instances(self, index: int, profiles: list[dict], model: tuple) -> list[dict]:
        """GPU instances with placements, compute instances, MIG device UUIDs and processes.

        Compute-instance profiles are read once per GPU-instance profile of the GPU's ``model`` key (see profiles()).
        """
        by_id = {p["id"]: p for p in profiles}
        instances = []
        for gi in self._gi_handles(index, profiles):
            info = self._call(index, "reading a GPU instance", pynvml.nvmlGpuInstanceGetInfo, gi)
            profile = by_id.get(info.profileId, {})
            static_key = (model, info.profileId)
            instances.append(
                {
                    "id": info.id,
                    "profile_id": info.profileId,
                    "profile": profile.get("name"),
                    "placement": {"start": info.placement.start, "size": info.placement.size},
                    "memory_mib": profile.get("memory_mib"),
                    "compute_instances": self._compute_instances(index, gi, profile, static_key),
                    "processes": [],
                }
            )
        devices = self.mig_devices(index, sum(len(gi["compute_instances"]) for gi in instances))
        for gi in instances:
            for ci in gi["compute_instances"]:
                ci.update(devices.get((gi["id"], ci["id"]), ()))
            gi["processes"] = [p for ci in gi["compute_instances"] for p in ci["processes"]]
        return sorted(instances, key=lambda gi: gi["placement"]["start"])

    def _compute_instances(self, index: int, gi, profile: dict, static_key: tuple) -> list[dict]:
        """Compute instances of a GPU instance; their MIG device fields stay empty for gpu_instances() to fill."""
        gi_name, gi_slices = profile.get("name", "?"), profile.get("slices")
        result = []
        for ci_index in range(pynvml.NVML_COMPUTE_INSTANCE_PROFILE_COUNT):
            if gi_slices and CI_PROFILE_SLICES.get(ci_index, 0) > gi_slices:
                continue  # no compute instance is larger than its GPU instance: skip the NVML round trip
            pinfo = self._ci_profile(index, gi, ci_index, static_key)
            if pinfo is None:
                continue
            array = (pynvml.c_nvmlComputeInstance_t * max(pinfo.instanceCount, 1))()
            count = ctypes.c_uint(0)
            self._call(
                index,
                "listing compute instances",
                pynvml.nvmlGpuInstanceGetComputeInstances,
                gi,
                pinfo.id,
                array,
                ctypes.byref(count),
            )
            for i in range(count.value):
                info = self._call(index, "reading a compute instance", pynvml.nvmlComputeInstanceGetInfo, array[i])
                result.append(
                    {
                        "id": info.id,
                        "profile_id": pinfo.id,
                        "nvml_index": ci_index,
                        "profile": gi_name if pinfo.sliceCount == gi_slices else f"{pinfo.sliceCount}c.{gi_name}",
                        "slices": pinfo.sliceCount,
                        "sm_count": pinfo.multiprocessorCount,
                        "placement": {"start": info.placement.start, "size": info.placement.size},
                        "uuid": None,
                        "mig_index": None,
                        "memory_mib": None,
                        "memory_used_mib": None,
                        "processes": [],
                    }
                )
        return sorted(result, key=lambda ci: ci["id"])

    def _ci_profile(self, index: int, gi, ci_index: int, static_key: tuple):
        """A compute-instance profile of a GPU instance (None if absent). It is static per model and GPU-instance
        profile, ``static_key`` (model key, GI profile id), so it is read once per session."""
        key = (static_key, ci_index)
        if key not in self._ci_profiles:
            self._ci_profiles[key] = self._call(
                index,
                "reading compute-instance profiles",
                pynvml.nvmlGpuInstanceGetComputeInstanceProfileInfo,
                gi,
                ci_index,
                pynvml.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED,
                absent=_NO_PROFILE,
            )
        return self._ci_profiles[key]

    def mig_devices(self, index: int, expected: int) -> dict[tuple[int, int], dict]:
        """(GI id, CI id) -> {uuid, mig_index, memory_mib, memory_used_mib, processes} for the MIG devices of the GPU.

        A MIG device's memory is its GPU instance's: the compute instances of one GPU instance report the same.

        Probing stops once ``expected`` devices (the compute instances listed) are found: the other indices are empty.
        """
        handle = self.handle(index)
        devices: dict[tuple[int, int], dict] = {}
        maximum = self._call(index, "counting MIG devices", pynvml.nvmlDeviceGetMaxMigDeviceCount, handle)
        for mig_index in range(maximum):
            if len(devices) == expected:
                break
            mig = self._call(
                index,
                "opening a MIG device",
                pynvml.nvmlDeviceGetMigDeviceHandleByIndex,
                handle,
                mig_index,
                absent=("NVML_ERROR_NOT_FOUND", "NVML_ERROR_INVALID_ARGUMENT"),
            )
            if mig is None:
                continue
            gi_id = self._call(index, "reading a MIG device", pynvml.nvmlDeviceGetGpuInstanceId, mig)
            ci_id = self._call(index, "reading a MIG device", pynvml.nvmlDeviceGetComputeInstanceId, mig)
            memory = self._call(index, "reading MIG device memory", pynvml.nvmlDeviceGetMemoryInfo, mig)
            devices[(gi_id, ci_id)] = {
                "uuid": _text(self._call(index, "reading a MIG device UUID", pynvml.nvmlDeviceGetUUID, mig)),
                "mig_index": mig_index,
                "memory_mib": _mib(memory.total),
                "memory_used_mib": _mib(memory.used),
                "processes": self._processes(index, mig, gi_id, ci_id),
            }
        return devices

    def _processes(self, index: int, handle, gi_id: int | None = None, ci_id: int | None = None) -> list[dict]:
        procs = self._call(
            index,
            "listing processes",
            pynvml.nvmlDeviceGetComputeRunningProcesses,
            handle,
            absent=("NVML_ERROR_NOT_SUPPORTED", "NVML_ERROR_NO_PERMISSION"),
        )
        return [
            {
                "pid": int(p.pid),
                "used_memory_mib": _mib(p.usedGpuMemory) if p.usedGpuMemory is not None else None,
                "gpu_instance_id": gi_id,
                "compute_instance_id": ci_id,
            }
            for p in procs or ()
        ]

    # ---------------------------------------------------------------- changes
    def set_mig_mode(self, index: int, enabled: bool) -> int:
        """Request a MIG mode; returns NVML's activation status, an NVML return code: SUCCESS, or why an Ampere change
        waits (IN_USE: clients hold the GPU; RESET_REQUIRED: the GPU cannot be reset here, as in VM pass-through).
        Read mig_mode() to see what applied."""
        mode = pynvml.NVML_DEVICE_MIG_ENABLE if enabled else pynvml.NVML_DEVICE_MIG_DISABLE
        action = "enabling MIG" if enabled else "disabling MIG"
        return self._call(index, action, pynvml.nvmlDeviceSetMigMode, self.handle(index), mode)

    def create_gpu_instance(self, index: int, profile_id: int, start: int, size: int) -> int:
        placement = pynvml.c_nvmlGpuInstancePlacement_t()
        placement.start, placement.size = start, size
        action = f"creating GPU instance of profile {profile_id} at {start}:{size}"
        gi = self._call(
            index, action, pynvml.nvmlDeviceCreateGpuInstanceWithPlacement, self.handle(index), profile_id, placement
        )
        return self._call(index, action, pynvml.nvmlGpuInstanceGetInfo, gi).id

    def create_compute_instance(self, index: int, gi_id: int, ci_nvml_index: int) -> int:
        gi = self._gpu_instance(index, gi_id)
        action = f"creating a compute instance in GPU instance {gi_id}"
        pinfo = self._call(
            index,
            action,
            pynvml.nvmlGpuInstanceGetComputeInstanceProfileInfo,
            gi,
            ci_nvml_index,
            pynvml.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED,
        )
        ci = self._call(index, action, pynvml.nvmlGpuInstanceCreateComputeInstance, gi, pinfo.id)
        return self._call(index, action, pynvml.nvmlComputeInstanceGetInfo, ci).id

    def destroy_compute_instance(self, index: int, gi_id: int, ci_id: int) -> None:
        gi = self._gpu_instance(index, gi_id)
        action = f"destroying compute instance {ci_id} of GPU instance {gi_id}"
        ci = self._call(index, action, pynvml.nvmlGpuInstanceGetComputeInstanceById, gi, ci_id)
        self._call(index, action, pynvml.nvmlComputeInstanceDestroy, ci)

    def destroy_gpu_instance(self, index: int, gi_id: int) -> None:
        gi = self._gpu_instance(index, gi_id)
        self._call(index, f"destroying GPU instance {gi_id}", pynvml.nvmlGpuInstanceDestroy, gi)

    def _gpu_instance(self, index: int, gi_id: int):
        return self._call(
            index, f"opening GPU instance {gi_id}", pynvml.nvmlDeviceGetGpuInstanceById, self.handle(index), gi_id
        )


def failed_gpu(index: int, error: str, uuid: str | None = None, name: str | None = None, pci_bus_id=None) -> dict:
    """The facts of a GPU NVML could not read: a healthy GPU's keys, nothing read, and ``error`` (GPU and remedy)."""
    return {
        "index": index,
        "uuid": uuid,
        "name": name,
        "pci_bus_id": pci_bus_id,
        "pci_device_id": None,
        "pci_subsystem_id": None,
        "architecture": "unknown",
        "compute_capability": None,
        "memory": None,
        "mig": {"supported": False, "current": None, "pending": None},
        "profiles": [],
        "gpu_instances": [],
        "processes": [],
        "error": error,
    }


def _profile_name(info) -> str:
    """'MIG 1g.5gb' -> '1g.5gb' (NVML v2 profile info carries the name)."""
    name = _text(getattr(info, "name", b"")).strip()
    return name[4:] if name.startswith("MIG ") else name


def gather() -> dict:
    """Facts for the whole host: ``{'driver': {...}, 'gpus': [...], 'summary': {...}}``.

    Without a usable driver the result says so (``driver.loaded: false`` and ``driver.error``)
    instead of raising: an audit of a host without GPUs is a fact, not a failure. A GPU that NVML fails on is
    reported with its ``error`` (gpu_or_failure); NvmlError is raised only for the host: NVML, the versions, the count.
    """
    try:
        with Nvml() as nvml:
            system = nvml.system()
            gpus = [nvml.gpu_or_failure(i) for i in range(nvml.count())]
    except NvmlError as err:
        if err.code not in (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, pynvml.NVML_ERROR_LIBRARY_NOT_FOUND):
            raise
        return {"driver": {"loaded": False, "error": err.msg}, "gpus": [], "summary": summarize([])}
    return {"driver": dict(system, loaded=True, error=None), "gpus": gpus, "summary": summarize(gpus)}


def summarize(gpus: list[dict]) -> dict:
    """Counts an auditor wants at a glance."""
    return {
        "gpu_count": len(gpus),
        "mig_capable": sum(1 for g in gpus if g["mig"]["supported"]),
        "mig_enabled": sum(1 for g in gpus if g["mig"]["current"]),
        "mig_change_pending": sum(
            1 for g in gpus if g["mig"]["supported"] and g["mig"]["current"] != g["mig"]["pending"]
        ),
        "gpu_instances": sum(len(g["gpu_instances"]) for g in gpus),
        "compute_instances": sum(len(gi["compute_instances"]) for g in gpus for gi in g["gpu_instances"]),
        "processes": sum(len(g["processes"]) for g in gpus),
        "failed_gpus": sum(1 for g in gpus if g.get("error")),
    }
