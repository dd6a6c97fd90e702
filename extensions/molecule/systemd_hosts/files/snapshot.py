"""Print what a test must find unchanged on a systemd host: slot map, env files, pinned services, live MIG devices."""

from __future__ import annotations

import glob
import json
import os
import subprocess

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


def main() -> None:
    """Entry point."""
    with open("/etc/gpu-mig/slots.json", encoding="utf-8") as stream:
        slots_text = stream.read()
    env = {}
    for path in sorted(glob.glob("/run/gpu-mig/slots/*.env")):
        with open(path, encoding="utf-8") as stream:
            env[os.path.basename(path)[:-4]] = stream.read()
    services = {}
    for name in sorted(json.loads(slots_text)):
        unit = f"slot-service@{name}.service"
        shown = subprocess.run(
            ["systemctl", "show", "-p", "MainPID", "-p", "ActiveState", unit],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        props = dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)
        services[name] = {"pid": props.get("MainPID"), "active": props.get("ActiveState")}
    print(json.dumps({"slots_text": slots_text, "env": env, "services": services, "instances": live_instances()}))


if __name__ == "__main__":
    main()
