"""Pytest helpers: simulated hosts with a patched pynvml (import the fixtures into a conftest).

Simulated processes are real ``sleep`` processes (``nvmlsim.procs``); the ``sim_host`` fixture kills
the ones spawned during the test at teardown.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pynvml
import pytest

import nvmlsim
from nvmlsim import hosts, procs, state


@dataclass
class SimHost:
    """A simulated host directory and the pynvml module patched to talk to it."""

    root: Path
    pynvml: Any

    def state(self) -> state.Host:
        """Current state as stored on disk."""
        return state.read(self.root)

    def reboot(self) -> None:
        """Reboot the host (drop volatile state)."""
        state.reboot(self.root)

    def edit(self) -> Any:
        """Context manager yielding the host state for direct changes (processes, flags, faults)."""
        return state.transaction(self.root)

    def add_process(self, text: str, lifetime: int = procs.DEFAULT_LIFETIME) -> int:
        """Spawn a process holding ``GPU[:GI[:CI]]:MIB[:NAME]``; returns its PID."""
        with self.edit() as host:
            return hosts.add_process(host, hosts.Process.parse(text), lifetime)

    def attach_profiler(self, gpu: int, name: str = "nv-hostengine") -> int:
        """Spawn a profiling client holding GPU ``gpu`` (IN_USE for reconfiguration until it exits); returns its PID."""
        with self.edit() as host:
            return hosts.attach_profiler(host, gpu, name)

    def fault(self, call: str, error: int, times: int = 1, gpu: int | None = None, handle: str | None = None) -> None:
        """Make ``call`` fail with NVML code ``error`` ``times`` times (optionally only on GPU ``gpu``, only on
        handles of kind ``handle``: device, mig, gi or ci)."""
        with self.edit() as host:
            host.persistent["faults"].append(
                {"call": call, "error": error, "times": times, "gpu": gpu, "handle": handle}
            )


def make_sim_host(root: Path, *gpus: str, init: bool = True, **options: Any) -> SimHost:
    """Build a host from ``MODEL[:mig=on]`` strings and HostSpec options, install the simulator on pynvml.

    ``processes=["GPU[:GI[:CI]]:MIB[:NAME]", ...]`` spawns real processes; the caller must end them
    (``procs.reap(procs.SPAWNED)``) unless the ``sim_host`` fixture does.
    """
    processes = [hosts.Process.parse(p) for p in options.pop("processes", ())]
    hosts.build(root, hosts.HostSpec([hosts.GpuSpec.parse(g) for g in gpus], processes=processes, **options))
    nvmlsim.install(pynvml, root)
    if init:
        pynvml.nvmlInit()
    return SimHost(root, pynvml)


@pytest.fixture
def sim_host(tmp_path: Path) -> Iterator[Callable[..., SimHost]]:
    """Factory fixture: ``sim_host("A100-SXM4-40GB:mig=on", instances=["0:3g.20gb"])``.

    Each call creates a new host under tmp_path (named ``host0``, ``host1``...); the last one
    created is what pynvml talks to. pynvml's own functions are restored afterwards, and every
    process spawned during the test (``processes=``, ``add_process``) is killed.
    """
    count = 0
    before = set(procs.SPAWNED)

    def factory(*gpus: str, **options: Any) -> SimHost:
        nonlocal count
        count += 1
        options.setdefault("hostname", f"host{count - 1}")
        return make_sim_host(tmp_path / options["hostname"], *gpus, **options)

    try:
        yield factory
    finally:
        nvmlsim.uninstall(pynvml)
        procs.reap(set(procs.SPAWNED) - before)
