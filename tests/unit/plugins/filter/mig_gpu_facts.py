# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""GPUs as gpu.mig.mig_facts reports them, for the filter tests: instances from the MIG catalog, so the planner that
gpu.mig.preflight_report asks reads what it would read on a host."""

from __future__ import annotations

from ansible_collections.gpu.mig.plugins.module_utils._mig import catalog as _catalog

ARCHITECTURES = {"A100": "ampere", "A30": "ampere", "H100": "hopper", "H200": "hopper", "B200": "blackwell"}


def _profile(p: _catalog.GpuInstanceProfile) -> dict:
    """A GPU-instance profile as mig_facts lists it (read from NVML; free counts left out)."""
    return {
        "id": p.id,
        "nvml_index": p.nvml_index,
        "name": p.name,
        "slices": p.compute_slices,
        "memory_slices": p.placement_size,
        "memory_mib": p.memory_mib,
        "sm_count": p.sm_count,
        "copy_engines": p.copy_engines,
        "decoders": p.decoders,
        "encoders": p.encoders,
        "jpeg": p.jpeg,
        "ofa": p.ofa,
        "total": p.max_instances,
        "free": None,
        "placement_starts": list(p.placement_starts),
    }


def gpu(index: int, name: str, mig=(True, True), instances=(), processes=(), **extra) -> dict:
    """One GPU; ``mig``: (current, pending), or None for a GPU without MIG. A model the catalog lacks has no
    profiles."""
    model = _catalog.find_model(name)
    return {
        "index": index,
        "name": name,
        "uuid": f"GPU-{index:04d}-{name[-4:].lower().replace(' ', '')}",
        "pci_bus_id": f"00000000:{7 + 8 * index:02X}:00.0",
        "architecture": next((arch for key, arch in ARCHITECTURES.items() if key in name), "unknown"),
        "compute_capability": "%d.%d" % (model.compute_capability if model else (8, 9)),
        "memory": {"total_mib": model.memory_mib if model else 23034, "used_mib": 0},
        "mig": {"supported": True, "current": mig[0], "pending": mig[1]}
        if mig
        else {"supported": False, "current": None, "pending": None},
        "profiles": [_profile(p) for p in model.profiles] if model and mig else [],
        "gpu_instances": list(instances),
        "processes": [{"pid": pid, "used_memory_mib": 100} for pid in processes],
        **extra,
    }


def gpu_instance(name: str, gi_id: int, profile: str, start: int, cis=None, processes=()) -> dict:
    """A GPU instance of model ``name`` at ``start`` holding ``cis`` (compute profile names; None: the default one),
    ``processes`` (pids) running in it."""
    found = _catalog.find_model(name).profile(profile)
    by_name = {c.name: c for c in found.compute_profiles}
    names = cis or [next(c.name for c in found.compute_profiles if c.default)]
    pids = [{"pid": pid, "used_memory_mib": 100} for pid in processes]
    return {
        "id": gi_id,
        "memory_mib": found.memory_mib,
        "profile_id": found.id,
        "profile": found.name,
        "placement": {"start": start, "size": found.placement_size},
        "compute_instances": [
            {"id": i, "profile_id": by_name[n].id, "profile": n, "uuid": f"MIG-{gi_id}-{i}", "processes": pids}
            for i, n in enumerate(names)
        ],
        "processes": pids,
    }
