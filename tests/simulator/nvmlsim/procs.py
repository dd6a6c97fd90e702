"""Simulated GPU processes are real processes, spawned and ended here.

Code under test may signal the PIDs that NVML reports (``mig_instances`` with ``force: true`` sends
SIGTERM, then SIGKILL), so those PIDs must belong to harmless processes the simulator owns: each one
is ``sleep LIFETIME`` in its own session, stdio on /dev/null. A record keeps the PID and the start
time (field 22 of ``/proc/PID/stat``, clock ticks since boot), so a PID later reused by an unrelated
process is neither reported nor killed. As with the real driver, a process that exits (or is a
zombie) no longer holds its GPU context.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

DEFAULT_LIFETIME = 3600  # seconds; bounds how long a forgotten process can outlive its test
PROC = Path("/proc")

# Processes spawned by this Python process, by PID: the Popen objects reap them (no zombies left in a
# long pytest run) and keep the PID from being reused while we still hold it.
SPAWNED: dict[int, subprocess.Popen] = {}


def stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time) of ``pid`` from /proc, None if there is no such process."""
    try:
        text = (PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    fields = text[text.rindex(b")") + 2 :].split()  # comm (field 2) may hold spaces and parentheses
    return fields[0].decode(), int(fields[19])  # fields 3 (state) and 22 (starttime)


def alive(record: dict[str, Any]) -> bool:
    """Whether the process of a record still runs: same PID and start time, not a zombie."""
    pid, start = record.get("pid"), record.get("start_time")
    if not isinstance(pid, int) or start is None:
        return False
    found = stat(pid)
    return found is not None and found[1] == start and found[0] not in ("Z", "X")


def spawn(lifetime: int = DEFAULT_LIFETIME) -> tuple[int, int]:
    """Start a detached, harmless process (``sleep LIFETIME``); returns (PID, start time)."""
    if lifetime <= 0:
        raise ValueError(f"process lifetime must be positive, not {lifetime}")
    child = subprocess.Popen(
        ["sleep", str(int(lifetime))],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )
    found = stat(child.pid)
    if found is None:  # cannot happen for an unreaped child; be safe rather than record a guess
        child.kill()
        child.wait()
        raise RuntimeError(f"spawned process {child.pid} vanished")
    SPAWNED[child.pid] = child
    return child.pid, found[1]


def kill(record: dict[str, Any]) -> None:
    """SIGKILL the process of a record if it is still that process; reap it if it is our child."""
    pid = record.get("pid")
    child = SPAWNED.pop(pid, None) if isinstance(pid, int) else None
    if child is not None:  # unreaped child: the PID is still ours, whatever the record says
        child.kill()
        child.wait()
    elif alive(record):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def reap(pids: Iterable[int]) -> None:
    """Kill and reap processes this Python process spawned (only PIDs still in ``SPAWNED``)."""
    for pid in list(pids):
        child = SPAWNED.pop(pid, None)
        if child is not None:
            child.kill()  # Popen signals only while the child is unreaped, i.e. still ours
            child.wait()
