"""Simulated host state: persistence, locking and boot detection.

A host is a directory ``ROOT``. What survives a reboot (GPU identity, the Ampere MIG mode kept in the
InfoROM, fault injection) lives in ``ROOT/var/lib/migsim/host.json``; what a reboot clears (instances,
the Hopper MIG mode, processes, lost GPUs) lives in ``ROOT/run/migsim/state.json``. A missing volatile
file means the host has just booted: the first access applies pending Ampere modes and starts empty.

Processes are real processes (see ``procs``), and so are profiling clients (DCGM profiling, Nsight), which hold a
GPU without being listed as its processes: loading the state drops the records of those that have exited (the
next write persists that), and a reboot kills the ones still running.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nvmlsim import procs

PERSISTENT = Path("var/lib/migsim/host.json")
VOLATILE = Path("run/migsim/state.json")
LOCK = Path("var/lib/migsim/lock")
FORMAT = 1
# Per-GPU volatile lists of records of real processes holding the GPU: compute processes (listed by NVML) and
# profiling clients (not listed, but they keep the GPU from being reconfigured).
CLIENTS = ("processes", "profilers")


class NoHostError(RuntimeError):
    """Raised when a directory holds no simulated host."""


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` atomically (temporary file in the same directory, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as stream:
        json.dump(data, stream, indent=1, sort_keys=True)
        stream.write("\n")
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        with path.open() as stream:
            return json.load(stream)
    except FileNotFoundError:
        return None


def _kill_processes(volatile: dict[str, Any] | None) -> None:
    """Kill the recorded processes and profilers still running (a reboot or a replaced host ends them)."""
    for gpu in (volatile or {}).get("gpus", []):
        for key in CLIENTS:
            for record in gpu.get(key, []):
                procs.kill(record)


def _drop_exited(gpu: dict[str, Any]) -> None:
    """Forget the processes and profilers of a GPU that have exited: the driver released their contexts."""
    for key in CLIENTS:
        gpu[key] = [p for p in gpu.get(key, []) if procs.alive(p)]


def fresh_gpu_state() -> dict[str, Any]:
    """Volatile state of one GPU right after boot."""
    return {"mig": {"current": 0, "pending": 0}, "gpu_instances": [], "processes": [], "profilers": [], "lost": False}


class Host:
    """Both halves of one host's state, as plain JSON-able dicts."""

    def __init__(self, root: Path, persistent: dict[str, Any], volatile: dict[str, Any]) -> None:
        self.root = root
        self.persistent = persistent
        self.volatile = volatile

    @property
    def gpus(self) -> list[dict[str, Any]]:
        """Persistent per-GPU records (model, identity, InfoROM MIG mode)."""
        return self.persistent["gpus"]

    def live(self, index: int) -> dict[str, Any]:
        """Volatile per-GPU record (instances, processes, volatile MIG mode)."""
        return self.volatile["gpus"][index]

    def snapshot(self) -> str:
        """Canonical text of the whole state (change detection, ``migsim show``)."""
        return json.dumps({"persistent": self.persistent, "volatile": self.volatile}, indent=1, sort_keys=True)

    def boot(self) -> None:
        """Start from a cold boot: apply pending persistent modes, forget everything volatile."""
        self.persistent["boots"] += 1
        for gpu in self.gpus:
            gpu["mig"]["current"] = gpu["mig"]["pending"]
        self.volatile = {"gpus": [fresh_gpu_state() for _gpu in self.gpus], "serial": 0}

    def next_serial(self) -> int:
        """A number unique within this boot (MIG UUIDs of re-created instances differ)."""
        self.volatile["serial"] += 1
        return self.volatile["serial"]


def _load(root: Path) -> tuple[Host, bool]:
    persistent = _read_json(root / PERSISTENT)
    if persistent is None:
        raise NoHostError(f"{root} holds no simulated host (no {PERSISTENT}); create one with 'migsim host'")
    volatile = _read_json(root / VOLATILE)
    host = Host(root, persistent, volatile or {})
    if volatile is None:
        host.boot()
    else:  # a process that exited released its GPU context, as with the real driver
        for gpu in host.volatile.get("gpus", []):
            _drop_exited(gpu)
    return host, volatile is None


def save(host: Host) -> None:
    """Write both halves (caller holds the lock)."""
    _write_json(host.root / PERSISTENT, host.persistent)
    _write_json(host.root / VOLATILE, host.volatile)


@contextlib.contextmanager
def locked(root: Path | str) -> Iterator[None]:
    """Exclusive host lock around a read-modify-write."""
    path = Path(root) / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as stream:
        fcntl.flock(stream, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(stream, fcntl.LOCK_UN)


@contextlib.contextmanager
def transaction(root: Path | str) -> Iterator[Host]:
    """Load the host under the lock, yield it for changes, write it back if anything changed."""
    root = Path(root)
    with locked(root):
        host, booted = _load(root)
        before = "" if booted else host.snapshot()
        committed = False
        try:
            yield host
            committed = True
        finally:  # an exception inside the block leaves the stored state as it was
            if committed and host.snapshot() != before:
                save(host)


class _Cached:
    """A state parsed for read-only calls, valid while the volatile file keeps its signature."""

    __slots__ = ("busy", "host", "path", "signature")

    def __init__(self, path: str, signature: tuple[int, int, int] | None, host: Host) -> None:
        self.path = path  # the volatile state file
        self.signature = signature
        self.host = host
        self.busy = [gpu for gpu in host.volatile["gpus"] if any(gpu[key] for key in CLIENTS)]  # clients may exit


_READ_CACHE: dict[str, _Cached] = {}


def _signature(path: str) -> tuple[int, int, int] | None:
    """Identity of the volatile state file (None when absent): every writer replaces or removes it last, after the
    persistent one, and replaces it atomically, so a new inode means new state.

    Runs on every simulated NVML call, hence one os.stat on a cached string rather than pathlib.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def read(root: Path | str) -> Host:
    """Current state for a read-only call (lock-free: writers replace files atomically).

    The parsed state is reused while the volatile file is unchanged; callers must not modify it.
    """
    key = os.fspath(root)
    cached = _READ_CACHE.get(key)
    path = cached.path if cached else os.path.join(key, VOLATILE)
    sig = _signature(path)
    if cached and sig is not None and cached.signature == sig:
        for gpu in cached.busy:  # processes and profilers may have exited since
            _drop_exited(gpu)
        return cached.host
    host, booted = _load(Path(root))
    if booted:  # first access after boot: persist the boot under the lock
        with transaction(root) as host:
            pass
        sig = _signature(path)
    _READ_CACHE[key] = _Cached(path, sig, host)
    return host


def create(root: Path | str, persistent: dict[str, Any]) -> Host:
    """Create a host from its persistent record, replacing any previous state, and boot it."""
    root = Path(root)
    with locked(root):
        _kill_processes(_read_json(root / VOLATILE))
        (root / VOLATILE).unlink(missing_ok=True)
        persistent.setdefault("format", FORMAT)
        persistent.setdefault("boots", 0)
        host = Host(root, persistent, {})
        host.boot()
        save(host)
    return host


def reboot(root: Path | str) -> None:
    """Simulate a reboot: kill the host's processes, drop the volatile state; the next access boots."""
    root = Path(root)
    with locked(root):
        host, _booted = _load(root)
        _kill_processes(host.volatile)
        (root / VOLATILE).unlink(missing_ok=True)


def stop_processes(root: Path | str) -> None:
    """Kill every recorded process and profiler of a host that still runs and drop the records."""
    with transaction(root) as host:
        _kill_processes(host.volatile)
        for gpu in host.volatile["gpus"]:
            for key in CLIENTS:
                gpu[key] = []
