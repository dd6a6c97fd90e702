"""Stand-in for ``nvidia-smi``: only GPU reset (``-r``/``--gpu-reset`` [``-i`` INDEX|UUID|BUSID,...]).

Messages and exit codes follow the real tool (exit codes from nvidia-smi(1): 3 not supported,
4 no permission, 6 not found, 9 driver not loaded, 12 library not found, 15 GPU lost, 255 other).
"""

from __future__ import annotations

import argparse
import os
import sys

import pynvml

from nvmlsim import mig, state
from nvmlsim.state import Host

NO_DRIVER = (
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
    "Make sure that the latest NVIDIA driver is installed and running."
)
NO_LIBRARY = (
    "NVIDIA-SMI couldn't find libnvidia-ml.so library in your system. "
    "Please make sure that the NVIDIA Display Driver is properly installed and present in your system."
)
IN_USE_HINT = (
    "1 device is currently being used by one or more other processes (e.g., Fabric Manager, CUDA application, "
    "graphics application such as an X server, or a monitoring application such as another instance of nvidia-smi). "
    "Please first kill all processes using this device and all compute applications running in the system."
)


def _targets(host: Host, ids: str | None) -> list[int] | None:
    """GPU indices named by -i (index, UUID or PCI bus id), None if one is unknown."""
    if ids is None:
        return list(range(len(host.gpus)))
    found = []
    for ident in ids.split(","):
        key = ident.strip().lower()
        matches = [
            i
            for i, gpu in enumerate(host.gpus)
            if key in (str(i), gpu["uuid"].lower(), gpu["pci_bus_id"].lower(), gpu["pci_bus_id"][4:].lower())
        ]
        if not matches:
            return None
        found.extend(matches)
    return found


def _reset(host: Host, index: int) -> int:
    bus = host.gpus[index]["pci_bus_id"]
    if host.live(index)["lost"]:
        print(
            f"Unable to determine the device handle for GPU {bus}: GPU is lost.  Reboot the system to recover this GPU"
        )
        return 15
    if host.persistent.get("unprivileged"):
        print(f"Unable to reset GPU {bus}: Insufficient Permissions")
        return 4
    try:
        mig.reset_gpu(host, index)
    except pynvml.NVMLError as err:
        if err.value == pynvml.NVML_ERROR_NOT_SUPPORTED:
            print(f"Resetting GPU {bus} is not supported.")
            return 3
        print(f"Unable to reset GPU {bus}: In use by another client\n\n{IN_USE_HINT}")
        return 255
    print(f"GPU {bus} was successfully reset.")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="nvidia-smi", add_help=False)
    parser.add_argument("-r", "--gpu-reset", action="store_true")
    parser.add_argument("-i", "--id")
    args, rest = parser.parse_known_args(argv)
    if rest or not args.gpu_reset:
        print("Invalid combination of input arguments. Please run 'nvidia-smi -h' for help.")
        print("(migsim stand-in: only -r/--gpu-reset [-i ID] is simulated)", file=sys.stderr)
        return 2
    root = os.environ.get("MIGSIM_ROOT")
    if not root:
        print(NO_DRIVER)
        return 9
    with state.transaction(root) as host:
        driver = host.persistent["driver"]["state"]
        if driver != "loaded":
            print(NO_LIBRARY if driver == "no_library" else NO_DRIVER)
            return 12 if driver == "no_library" else 9
        targets = _targets(host, args.id)
        if targets is None:
            print("No devices were found")
            return 6
        codes = [_reset(host, index) for index in targets]
    failed = [c for c in codes if c]
    if not failed:
        print("All done.")
    return failed[0] if failed else 0


if __name__ == "__main__":
    sys.exit(main())
