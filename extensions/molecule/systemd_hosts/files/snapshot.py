"""Print what a test must find unchanged on a systemd host: slot map, env files, the given units, live MIG devices.

Usage: python snapshot.py UNIT... (run by ansible.builtin.script with the gpu.mig venv's Python: pynvml)
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pynvml


def live_instances() -> list[list]:
    """(GPU index, GPU instance id, MIG UUID) of every MIG device the (simulated) driver reports now."""
    pynvml.nvmlInit()
    out = []
    for index in range(pynvml.nvmlDeviceGetCount()):
        gpu = pynvml.nvmlDeviceGetHandleByIndex(index)
        try:
            count = pynvml.nvmlDeviceGetMaxMigDeviceCount(gpu)
        except pynvml.NVMLError:
            continue
        for mig in range(count):
            try:
                handle = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, mig)
            except pynvml.NVMLError:
                continue
            out.append([index, pynvml.nvmlDeviceGetGpuInstanceId(handle), pynvml.nvmlDeviceGetUUID(handle)])
    pynvml.nvmlShutdown()
    return sorted(out)


def unit_state(unit: str) -> dict:
    """Active state, main PID, start time and the MIG device the unit's main process was started with."""
    shown = subprocess.run(
        ["systemctl", "show", "-p", "MainPID", "-p", "ActiveState", "-p", "ExecMainStartTimestampMonotonic", unit],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    props = dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)
    device = None
    if props.get("MainPID", "0") != "0":
        try:
            with open(f"/proc/{props['MainPID']}/environ", "rb") as stream:
                env = dict(item.split(b"=", 1) for item in stream.read().split(b"\0") if b"=" in item)
            device = env.get(b"CUDA_VISIBLE_DEVICES", b"").decode() or None
        except OSError:
            pass
    return {
        "active": props.get("ActiveState"),
        "pid": props.get("MainPID"),
        "started": props.get("ExecMainStartTimestampMonotonic"),
        "device": device,
    }


def main() -> None:
    """Entry point: the units to record are the arguments."""
    with open("/etc/gpu-mig/slots.json", encoding="utf-8") as stream:
        slots_text = stream.read()
    env = {}
    for path in sorted(glob.glob("/run/gpu-mig/slots/*.env")):
        with open(path, encoding="utf-8") as stream:
            env[os.path.basename(path)[:-4]] = stream.read()
    services = {unit: unit_state(unit) for unit in sys.argv[1:]}
    print(json.dumps({"slots_text": slots_text, "env": env, "services": services, "instances": live_instances()}))


if __name__ == "__main__":
    main()
