"""MIG driver behaviour on simulated state: placements, capacity, instance ids, MIG mode, reset, privileges.

Pure logic over ``state.Host`` dicts; raises ``pynvml.NVMLError`` with the code the driver returns.
Rules that are inferred rather than documented are listed in tests/simulator/README.md.
"""

from __future__ import annotations

from typing import Any

import pynvml

from ansible_collections.gpu.mig.plugins.module_utils._mig.catalog import ComputeProfile, GpuInstanceProfile, GpuModel
from nvmlsim import models
from nvmlsim.state import Host, fresh_gpu_state

_UUID_NAMESPACE = "6f0c5f43-56a1-4f61-9a35-7d1f0c0a4d31"

# What a call needs from a caller that is not root: root itself (no capability grants it), or an nvidia-capability
# (/proc/driver/nvidia/capabilities/mig/...; root and CAP_SYS_ADMIN hold them all).
ROOT = "root"
MIG_CONFIG = "mig/config"  # create and destroy GPU/compute instances
MIG_MONITOR = "mig/monitor"  # list the GPU/compute instances
CAPABILITIES = (MIG_CONFIG, MIG_MONITOR)
# A stock driver creates mig/config as 0400 (root only) and mig/monitor as 0444 (everyone): DeviceFileMode 256 and 292.
STOCK_USER_CAPABILITIES = (MIG_MONITOR,)


def stable_uuid(name: str) -> str:
    """Deterministic UUID text for ``name`` (a version 5 UUID in the simulator's namespace)."""
    import uuid  # deferred: only creating GPUs or instances needs it, read-only runs skip the import

    return str(uuid.uuid5(uuid.UUID(_UUID_NAMESPACE), name))


def fail(code: int) -> pynvml.NVMLError:
    """The pynvml exception (right subclass) for an NVML return code."""
    return pynvml.NVMLError(code)


def model(host: Host, index: int) -> GpuModel:
    """The catalog model of GPU ``index``."""
    return models.lookup(host.gpus[index]["model"])


def mode_record(host: Host, index: int) -> dict[str, int]:
    """Where the MIG mode lives: the InfoROM (persistent) or the driver (volatile)."""
    if model(host, index).mig_mode_persists_reboot:
        return host.gpus[index]["mig"]
    return host.live(index)["mig"]


def mig_enabled(host: Host, index: int) -> bool:
    """Current MIG mode is enabled."""
    return mode_record(host, index)["current"] == pynvml.NVML_DEVICE_MIG_ENABLE


def require_privilege(host: Host, needed: str | None) -> None:
    """NO_PERMISSION when the caller is not root (host flag ``unprivileged``) and lacks what a call needs."""
    if needed and host.persistent.get("unprivileged") and needed not in user_capabilities(host):
        raise fail(pynvml.NVML_ERROR_NO_PERMISSION)


def user_capabilities(host: Host) -> tuple[str, ...]:
    """The nvidia-capabilities the unprivileged caller holds (a stock driver's when the host does not say)."""
    return tuple(host.persistent.get("user_capabilities", STOCK_USER_CAPABILITIES))


def profiled(host: Host, index: int) -> bool:
    """A profiling client (DCGM profiling metrics, Nsight) holds the GPU: NVML does not list it as a process, but
    the driver refuses to reconfigure or reset the GPU under it."""
    return bool(host.live(index)["profilers"])


def require_unprofiled(host: Host, index: int) -> None:
    """IN_USE while a profiling client holds the GPU."""
    if profiled(host, index):
        raise fail(pynvml.NVML_ERROR_IN_USE)


def require_mig(host: Host, index: int, enabled: bool = True) -> GpuModel:
    """The model, or NOT_SUPPORTED when the GPU lacks MIG (or, with ``enabled``, MIG is off)."""
    gpu_model = model(host, index)
    if not models.is_mig_capable(gpu_model) or (enabled and not mig_enabled(host, index)):
        raise fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
    return gpu_model


def gi_profile(gpu_model: GpuModel, profile_id: int) -> GpuInstanceProfile:
    """GPU-instance profile by info.id, INVALID_ARGUMENT if the GPU has none such."""
    for prof in gpu_model.profiles:
        if prof.id == profile_id:
            return prof
    raise fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)


def gi_profile_by_index(gpu_model: GpuModel, index: int) -> GpuInstanceProfile:
    """GPU-instance profile by NVML_GPU_INSTANCE_PROFILE_* index (as nvmlDeviceGetGpuInstanceProfileInfo)."""
    if not 0 <= index < pynvml.NVML_GPU_INSTANCE_PROFILE_COUNT:
        raise fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
    for prof in gpu_model.profiles:
        if prof.nvml_index == index:
            return prof
    raise fail(pynvml.NVML_ERROR_NOT_SUPPORTED)


# --- GPU instances ---------------------------------------------------------------------------------


def used_slices(instances: list[dict[str, Any]]) -> set[int]:
    """Memory slices occupied by existing GPU (or compute) instances."""
    return {s for inst in instances for s in range(inst["start"], inst["start"] + inst["size"])}


def free_starts(starts: tuple[int, ...], size: int, instances: list[dict[str, Any]]) -> list[int]:
    """Legal starts whose slices are all free."""
    used = used_slices(instances)
    return [s for s in starts if used.isdisjoint(range(s, s + size))]


def _greedy_fit(starts: list[int], size: int) -> int:
    """How many non-overlapping placements fit among ``starts`` (ascending, first fit)."""
    taken: set[int] = set()
    for start in starts:
        if taken.isdisjoint(range(start, start + size)):
            taken.update(range(start, start + size))
    return len(taken) // size


def gi_remaining(gpu_model: GpuModel, instances: list[dict[str, Any]], prof: GpuInstanceProfile) -> int:
    """Additional instances of ``prof`` that fit together (placements, compute slices, max count)."""
    fits = _greedy_fit(free_starts(prof.placement_starts, prof.placement_size, instances), prof.placement_size)
    compute_used = sum(gi_profile(gpu_model, gi["profile_id"]).compute_slices for gi in instances)
    by_compute = (gpu_model.compute_slices - compute_used) // prof.compute_slices
    by_count = prof.max_instances - sum(1 for gi in instances if gi["profile_id"] == prof.id)
    by_total = gpu_model.max_gpu_instances - len(instances)
    return max(0, min(fits, by_compute, by_count, by_total))


def _lost_placements(gpu_model: GpuModel, instances: list[dict[str, Any]], start: int, size: int) -> int:
    """How many currently free placements (all profiles) an instance at ``start`` would block."""
    span = set(range(start, start + size))
    return sum(
        1
        for prof in gpu_model.profiles
        for s in free_starts(prof.placement_starts, prof.placement_size, instances)
        if not span.isdisjoint(range(s, s + prof.placement_size))
    )


def default_start(gpu_model: GpuModel, instances: list[dict[str, Any]], prof: GpuInstanceProfile) -> int:
    """Placement the driver picks without an explicit one: block the fewest free placements, then lowest start."""
    candidates = free_starts(prof.placement_starts, prof.placement_size, instances)
    if not candidates:
        raise fail(pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES)
    return min(candidates, key=lambda s: (_lost_placements(gpu_model, instances, s, prof.placement_size), s))


def gi_id_for(gpu_model: GpuModel, instances: list[dict[str, Any]], start: int, size: int) -> int:
    """GI id: the slot's node number in the memory-slice tree (7g=0, halves 1-2, quarters 3-6, eighths 7-14).

    Falls back to the lowest free id when the placement is not an aligned power-of-two block.
    """
    total = gpu_model.memory_slices
    if total % size == 0 and start % size == 0 and (total // size) & (total // size - 1) == 0:
        return total // size - 1 + start // size
    taken = {gi["id"] for gi in instances}
    return min(i for i in range(1, len(taken) + 2 + total * 2) if i not in taken)


def create_gpu_instance(host: Host, index: int, profile_id: int, start: int | None = None) -> dict[str, Any]:
    """Create a GPU instance (explicit or driver-chosen placement) and return its record; IN_USE under a profiler."""
    gpu_model = require_mig(host, index)
    require_unprofiled(host, index)
    prof = gi_profile(gpu_model, profile_id)
    instances = host.live(index)["gpu_instances"]
    if start is None:
        start = default_start(gpu_model, instances, prof)
    elif start not in prof.placement_starts:
        raise fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
    if start not in free_starts(prof.placement_starts, prof.placement_size, instances) or not gi_remaining(
        gpu_model, instances, prof
    ):
        raise fail(pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES)
    record = {
        "id": gi_id_for(gpu_model, instances, start, prof.placement_size),
        "profile_id": prof.id,
        "start": start,
        "size": prof.placement_size,
        "compute_instances": [],
    }
    instances.append(record)
    instances.sort(key=lambda gi: gi["id"])
    return record


def find_gpu_instance(host: Host, index: int, gi_id: int) -> dict[str, Any]:
    """GPU instance record by id, NOT_FOUND if absent."""
    for gi in host.live(index)["gpu_instances"]:
        if gi["id"] == gi_id:
            return gi
    raise fail(pynvml.NVML_ERROR_NOT_FOUND)


def processes_on(host: Host, index: int, gi_id: int | None = None, ci_id: int | None = None) -> list[dict[str, Any]]:
    """Processes on the GPU, or only those inside a GPU instance / compute instance."""
    return [
        p
        for p in host.live(index)["processes"]
        if (gi_id is None or p.get("gpu_instance_id") == gi_id)
        and (ci_id is None or p.get("compute_instance_id") == ci_id)
    ]


def destroy_gpu_instance(host: Host, index: int, gi_id: int) -> None:
    """Destroy a GPU instance; IN_USE while it has compute instances or processes."""
    gi = find_gpu_instance(host, index, gi_id)
    if gi["compute_instances"] or processes_on(host, index, gi_id):
        raise fail(pynvml.NVML_ERROR_IN_USE)
    host.live(index)["gpu_instances"].remove(gi)


# --- compute instances -----------------------------------------------------------------------------


def ci_profiles(gpu_model: GpuModel, gi: dict[str, Any]) -> tuple[GpuInstanceProfile, tuple[ComputeProfile, ...]]:
    """The GI's profile and its compute profiles."""
    prof = gi_profile(gpu_model, gi["profile_id"])
    return prof, prof.compute_profiles


def ci_profile(gpu_model: GpuModel, gi: dict[str, Any], profile_id: int) -> ComputeProfile:
    """Compute profile of a GI by NVML_COMPUTE_INSTANCE_PROFILE_* id (== info.id)."""
    if not 0 <= profile_id < pynvml.NVML_COMPUTE_INSTANCE_PROFILE_COUNT:
        raise fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
    for cprof in ci_profiles(gpu_model, gi)[1]:
        if cprof.id == profile_id:
            return cprof
    raise fail(pynvml.NVML_ERROR_NOT_SUPPORTED)


def ci_starts(gpu_model: GpuModel, gi: dict[str, Any], cprof: ComputeProfile) -> tuple[int, ...]:
    """Legal compute-slice starts of a compute profile inside a GI (multiples of its size)."""
    size = gi_profile(gpu_model, gi["profile_id"]).compute_slices
    return tuple(range(0, size - cprof.slice_count + 1, cprof.slice_count))


def ci_remaining(gpu_model: GpuModel, gi: dict[str, Any], cprof: ComputeProfile) -> int:
    """Additional compute instances of ``cprof`` that fit in the GI."""
    existing = gi["compute_instances"]
    fits = _greedy_fit(free_starts(ci_starts(gpu_model, gi, cprof), cprof.slice_count, existing), cprof.slice_count)
    by_count = cprof.max_instances - sum(1 for ci in existing if ci["profile_id"] == cprof.id)
    return max(0, min(fits, by_count))


def create_compute_instance(
    host: Host, index: int, gi_id: int, profile_id: int, start: int | None = None
) -> dict[str, Any]:
    """Create a compute instance (lowest free start unless given) with the lowest free CI id; IN_USE under a
    profiler."""
    gpu_model = require_mig(host, index)
    require_unprofiled(host, index)
    gi = find_gpu_instance(host, index, gi_id)
    cprof = ci_profile(gpu_model, gi, profile_id)
    legal = ci_starts(gpu_model, gi, cprof)
    if start is not None and start not in legal:
        raise fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
    free = free_starts(legal, cprof.slice_count, gi["compute_instances"])
    if start is None:
        start = free[0] if free else None
    if start not in free or not ci_remaining(gpu_model, gi, cprof):
        raise fail(pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES)
    taken = {ci["id"] for ci in gi["compute_instances"]}
    gpu_uuid = host.gpus[index]["uuid"]
    record = {
        "id": min(i for i in range(len(taken) + 1) if i not in taken),
        "profile_id": cprof.id,
        "start": start,
        "size": cprof.slice_count,
        "uuid": "MIG-" + stable_uuid(f"{gpu_uuid}/{host.persistent['boots']}/{host.next_serial()}"),
    }
    gi["compute_instances"].append(record)
    gi["compute_instances"].sort(key=lambda ci: ci["id"])
    return record


def find_compute_instance(host: Host, index: int, gi_id: int, ci_id: int) -> dict[str, Any]:
    """Compute instance record, NOT_FOUND if absent."""
    for ci in find_gpu_instance(host, index, gi_id)["compute_instances"]:
        if ci["id"] == ci_id:
            return ci
    raise fail(pynvml.NVML_ERROR_NOT_FOUND)


def destroy_compute_instance(host: Host, index: int, gi_id: int, ci_id: int) -> None:
    """Destroy a compute instance; IN_USE while processes run on it."""
    ci = find_compute_instance(host, index, gi_id, ci_id)
    if processes_on(host, index, gi_id, ci_id):
        raise fail(pynvml.NVML_ERROR_IN_USE)
    find_gpu_instance(host, index, gi_id)["compute_instances"].remove(ci)


def mig_devices(host: Host, index: int) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(GI, CI) pairs in MIG device index order (by GI id, then CI id)."""
    return [(gi, ci) for gi in host.live(index)["gpu_instances"] for ci in gi["compute_instances"]]


# --- MIG mode and reset ----------------------------------------------------------------------------


def set_mig_mode(host: Host, index: int, mode: int) -> int:
    """nvmlDeviceSetMigMode semantics; returns the activation status (an NVML return code)."""
    gpu_model = require_mig(host, index, enabled=False)
    if mode not in (pynvml.NVML_DEVICE_MIG_DISABLE, pynvml.NVML_DEVICE_MIG_ENABLE):
        raise fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
    record = mode_record(host, index)
    if mode == pynvml.NVML_DEVICE_MIG_DISABLE and host.live(index)["gpu_instances"]:
        raise fail(pynvml.NVML_ERROR_IN_USE)
    busy = bool(processes_on(host, index)) or profiled(host, index)
    if not gpu_model.mig_enable_requires_reset:
        if busy and mode != record["current"]:
            raise fail(pynvml.NVML_ERROR_IN_USE)
        record.update(current=mode, pending=mode)
        return pynvml.NVML_SUCCESS
    record["pending"] = mode
    if mode == record["current"]:
        return pynvml.NVML_SUCCESS
    if host.persistent.get("vm_passthrough"):
        return pynvml.NVML_ERROR_RESET_REQUIRED
    if busy:
        return pynvml.NVML_ERROR_IN_USE
    reset_gpu(host, index)
    return pynvml.NVML_SUCCESS


def reset_gpu(host: Host, index: int) -> None:
    """GPU reset: refused in VM pass-through (NOT_SUPPORTED) or while processes or a profiler hold it (IN_USE).

    Applies the pending MIG mode and clears instances (the Hopper mode survives a reset).
    """
    if host.persistent.get("vm_passthrough"):
        raise fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
    if processes_on(host, index):
        raise fail(pynvml.NVML_ERROR_IN_USE)
    require_unprofiled(host, index)
    live = host.live(index)
    mig_mode = dict(mode_record(host, index))
    live.update(fresh_gpu_state())
    record = mode_record(host, index)
    record.update(current=mig_mode["pending"], pending=mig_mode["pending"])
