"""Build simulated hosts: GPUs, driver, privileges, MIG layouts, processes and profilers."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pynvml

from nvmlsim import mig, models, procs, state
from nvmlsim.state import Host

PCI_BUSES = (0x07, 0x0F, 0x47, 0x4E, 0x87, 0x90, 0xB7, 0xBD)  # DGX A100 layout
# CUDA driver API version shipped with each driver branch (nvidia-smi's "CUDA Version").
CUDA_BY_BRANCH = {
    450: 11000, 455: 11010, 460: 11020, 465: 11030, 470: 11040, 495: 11050, 510: 11060, 515: 11070,
    520: 11080, 525: 12000, 530: 12010, 535: 12020, 545: 12030, 550: 12040, 555: 12050, 560: 12060,
    565: 12070, 570: 12080, 575: 12090, 580: 13000,
}  # fmt: skip
DRIVER_STATES = ("loaded", "not_loaded", "no_library")


@dataclass
class GpuSpec:
    """One GPU to install: model name (or alias) and initial MIG mode."""

    model: str
    mig: bool = False

    @classmethod
    def parse(cls, text: str) -> GpuSpec:
        """``MODEL[:mig=on|off]``."""
        name, _sep, option = text.partition(":")
        if option and option not in ("mig=on", "mig=off"):
            raise ValueError(f"bad GPU option {option!r} in {text!r} (expected mig=on or mig=off)")
        return cls(name, option == "mig=on")


@dataclass
class Process:
    """A process holding a GPU (optionally inside a MIG GPU/compute instance).

    The PID is not chosen: ``add_process`` spawns a real process (``procs.spawn``) and records its
    PID and start time.
    """

    gpu: int
    used_mib: int
    gpu_instance_id: int | None = None
    compute_instance_id: int | None = None
    name: str = "python3"
    pid: int | None = None
    start_time: int | None = None

    @classmethod
    def parse(cls, text: str) -> Process:
        """``GPU[:GI[:CI]]:MIB[:NAME]`` (a GI without CI means CI 0)."""
        fields = text.split(":")
        name = fields.pop() if fields and not fields[-1].isdigit() else "python3"
        if not 2 <= len(fields) <= 4 or not all(f.isdigit() for f in fields):
            raise ValueError(f"bad process {text!r}; expected GPU[:GI[:CI]]:MIB[:NAME] (the PID is spawned)")
        numbers = [int(f) for f in fields]
        gpu, *ids, used = numbers
        gi = ids[0] if ids else None
        ci = (ids[1] if len(ids) > 1 else 0) if ids else None
        return cls(gpu, used, gi, ci, name)

    def record(self) -> dict[str, Any]:
        """JSON form stored in the volatile state."""
        return {
            "pid": self.pid,
            "start_time": self.start_time,
            "used_mib": self.used_mib,
            "gpu_instance_id": self.gpu_instance_id,
            "compute_instance_id": self.compute_instance_id,
            "name": self.name,
        }


@dataclass
class HostSpec:
    """Everything ``migsim host`` accepts."""

    gpus: list[GpuSpec]
    hostname: str | None = None
    driver: str = "550.90.07"
    cuda: int | None = None
    driver_state: str = "loaded"
    vm_passthrough: bool = False
    unprivileged: bool = False  # NVML callers are not root
    user_capabilities: tuple[str, ...] = mig.STOCK_USER_CAPABILITIES  # nvidia-capabilities such a caller holds
    instances: list[str] = field(default_factory=list)  # GPU:PROFILE[@START]
    processes: list[Process] = field(default_factory=list)
    lifetime: int = procs.DEFAULT_LIFETIME  # seconds the spawned processes live at most


def cuda_for(driver: str) -> int:
    """CUDA version of a driver branch (the newest branch at or below it)."""
    branch = int(driver.split(".")[0])
    return max((v for b, v in CUDA_BY_BRANCH.items() if b <= branch), default=11000)


def parse_cuda(text: str) -> int:
    """ "12.4" -> 12040."""
    major, _sep, minor = text.partition(".")
    return int(major) * 1000 + int(minor or 0) * 10


def gpu_record(hostname: str, index: int, spec: GpuSpec) -> dict[str, Any]:
    """Persistent identity of one GPU, deterministic from host name and index."""
    gpu_model = models.lookup(spec.model)
    mode = int(spec.mig and gpu_model.mig_mode_persists_reboot and models.is_mig_capable(gpu_model))
    digest = hashlib.sha256(f"{hostname}/{index}".encode()).hexdigest()
    return {
        "model": gpu_model.name,
        "uuid": "GPU-" + mig.stable_uuid(f"{hostname}/gpu/{index}"),
        "serial": str(int(digest, 16))[:13],
        "pci_bus_id": f"00000000:{PCI_BUSES[index % len(PCI_BUSES)] + index // len(PCI_BUSES):02X}:00.0",
        "pci_device_id": (gpu_model.pci_device_ids or ("0x000010DE",))[0],
        "pci_subsystem_id": "0x147E10DE",
        "persistence_mode": pynvml.NVML_FEATURE_ENABLED,
        "mig": {"current": mode, "pending": mode},
    }


def create_instance(host: Host, text: str) -> None:
    """``GPU:PROFILE[@START]``: a GPU instance (profile name or id) with its default compute instance."""
    where, _sep, profile = text.partition(":")
    profile, _sep, start = profile.partition("@")
    index = int(where)
    gpu_model = mig.require_mig(host, index)
    prof = gpu_model.profile(profile)
    if prof is None:
        raise ValueError(f"GPU {index} ({gpu_model.name}) has no MIG profile {profile!r}")
    gi = mig.create_gpu_instance(host, index, prof.id, int(start) if start else None)
    default = next(c for c in prof.compute_profiles if c.default)
    mig.create_compute_instance(host, index, gi["id"], default.id)


def add_process(host: Host, proc: Process, lifetime: int = procs.DEFAULT_LIFETIME) -> int:
    """Spawn a real process holding the GPU (its GPU/compute instance must exist); returns its PID."""
    live = host.live(proc.gpu)  # IndexError for an unknown GPU, before anything is spawned
    if proc.gpu_instance_id is not None:
        mig.find_compute_instance(host, proc.gpu, proc.gpu_instance_id, proc.compute_instance_id)
    proc.pid, proc.start_time = procs.spawn(lifetime)
    live["processes"].append(proc.record())
    return proc.pid


def attach_profiler(host: Host, gpu: int, name: str = "nv-hostengine", lifetime: int = procs.DEFAULT_LIFETIME) -> int:
    """Spawn a real process standing for a profiling client (DCGM profiling metrics, Nsight) that holds GPU ``gpu``;
    returns its PID. NVML does not list it as a process, but creating instances, changing the MIG mode and resetting
    the GPU answer IN_USE until it exits or is detached."""
    live = host.live(gpu)  # IndexError for an unknown GPU, before anything is spawned
    pid, start_time = procs.spawn(lifetime)
    live["profilers"].append({"pid": pid, "start_time": start_time, "name": name})
    return pid


def remove_process(host: Host, pid: int, key: str = "processes") -> None:
    """Kill a process (SIGKILL) and detach it from every GPU; KeyError if no GPU has it.

    ``key``: "processes" for compute processes, "profilers" for profiling clients.
    """
    found = False
    for index in range(len(host.gpus)):
        live = host.live(index)
        for record in live[key]:
            if record["pid"] == pid:
                procs.kill(record)
                found = True
        live[key] = [p for p in live[key] if p["pid"] != pid]
    if not found:
        raise KeyError(f"no {key[:-1]} {pid}")


def build(root: Path | str, spec: HostSpec) -> Host:
    """Create (or replace) a host directory from ``spec``."""
    root = Path(root)
    hostname = spec.hostname or root.name
    if spec.driver_state not in DRIVER_STATES:
        raise ValueError(f"driver state must be one of {DRIVER_STATES}")
    unknown = sorted(set(spec.user_capabilities) - set(mig.CAPABILITIES))
    if unknown:
        raise ValueError(f"unknown nvidia-capabilities {unknown}; known: {', '.join(mig.CAPABILITIES)}")
    persistent = {
        "hostname": hostname,
        "driver": {"state": spec.driver_state, "version": spec.driver, "cuda": spec.cuda or cuda_for(spec.driver)},
        "vm_passthrough": spec.vm_passthrough,
        "unprivileged": spec.unprivileged,
        "user_capabilities": sorted(spec.user_capabilities),
        "faults": [],
        "gpus": [gpu_record(hostname, i, g) for i, g in enumerate(spec.gpus)],
    }
    state.create(root, persistent)
    spawned: list[dict[str, Any]] = []
    try:
        with state.transaction(root) as host:
            for index, gpu in enumerate(spec.gpus):
                if gpu.mig:
                    mig.require_mig(host, index, enabled=False)
                    mig.mode_record(host, index).update(current=1, pending=1)
            for text in spec.instances:
                create_instance(host, text)
            for proc in spec.processes:
                add_process(host, proc, spec.lifetime)
                spawned.append(proc.record())
    except BaseException:
        for record in spawned:  # not saved: nobody else could ever find them
            procs.kill(record)
        raise
    return state.read(root)
