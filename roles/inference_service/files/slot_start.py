# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Start hook of a gpu.mig inference service (``ExecStartPre=+``, as root, before every start of the unit).

Installed by the gpu.mig.inference_service role as ``<lib_dir>/slot_start.py`` next to a copy of the collection's
``plugin_utils/services.py``, and run with an explicit interpreter:

  python3 slot_start.py --unit inference-chat.service --slot chat --stamp /var/lib/gpu-mig/services/chat.mig_uuid

1. Devices (process runner): the slot's GPU- and compute-instance capability nodes change whenever the layout is
   re-created with other instance ids (at boot by gpu-mig-apply, or by a re-slice), so the unit file cannot name them.
   The hook reads the slot from the slot map that the boot applier or the mig_layout role just wrote, works out the
   nodes (``/proc/driver/nvidia-caps/mig-minors`` when the driver has it, the driver's fixed layout otherwise) and
   sets the unit's device allow-list to exactly those plus the control, UVM and parent GPU nodes
   (``systemctl set-property --runtime``: the cgroup changes at once, before the service's own process starts).
2. Stamp: records the MIG UUID the service starts with (``GPU_MIG_UUID`` from the slot's env file, which systemd
   loaded for this unit), so a later role run restarts the service only when its slot's MIG device really changed.

Exit status 0 when done, 1 (the unit fails to start, the reason in its journal) when the slot is unknown.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys


def current_nvidia_allow(unit: str) -> set[tuple[str, str]]:
    """The unit's DeviceAllow= entries for NVIDIA nodes, as systemd holds them now."""
    shown = subprocess.run(
        ["systemctl", "show", "--property=DeviceAllow", "--value", unit], capture_output=True, text=True, check=True
    ).stdout
    return {(path, mode) for path, mode in re.findall(r"(\S+) (\S+)", shown) if path.startswith("/dev/nvidia")}


def allow_devices(unit: str, devices: list[str]) -> bool:
    """Make ``devices`` (rw) the unit's only device allow-list entries; True when it had to change them."""
    wanted = {(path, "rw") for path in devices}
    if current_nvidia_allow(unit) == wanted:
        return False
    base = ["systemctl", "set-property", "--runtime", unit]
    subprocess.run([*base, "DeviceAllow="], check=True)  # an empty assignment resets the list
    subprocess.run([*base, *(f"DeviceAllow={path} rw" for path in devices)], check=True)
    return True


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--unit", required=True, help="the unit being started (%%n)")
    parser.add_argument("--slot", required=True)
    parser.add_argument("--slot-map", default="/etc/gpu-mig/slots.json")
    parser.add_argument("--mig-minors", default="/proc/driver/nvidia-caps/mig-minors")
    parser.add_argument("--stamp", help="file that records the MIG UUID the service starts with")
    parser.add_argument("--no-devices", action="store_true", help="container runner: CDI gives the devices")
    args = parser.parse_args(argv)

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from ansible_collections.gpu.mig.plugins.plugin_utils import services as _services  # pylint: disable=import-outside-toplevel

    prog = f"gpu-mig slot_start {args.unit}"
    try:
        with open(args.slot_map, encoding="utf-8") as stream:
            slot = json.load(stream).get(args.slot)
    except (OSError, ValueError) as err:
        print(f"{prog}: cannot read the slot map {args.slot_map}: {err}", file=sys.stderr)
        return 1
    if not isinstance(slot, dict) or "gpu_instance_id" not in slot:
        print(f"{prog}: slot {args.slot!r} is not in {args.slot_map}; apply the MIG layout first", file=sys.stderr)
        return 1
    if not args.no_devices:
        try:
            with open(args.mig_minors, encoding="ascii") as stream:
                table = _services.parse_mig_minors(stream.read())
        except OSError:
            table = {}
        devices = _services.device_allow(slot, table)
        if allow_devices(args.unit, devices):
            print(f"{prog}: slot {args.slot} (GPU instance {slot['gpu_instance_id']}): allowed {' '.join(devices)}")
    if args.stamp:
        uuid = os.environ.get("GPU_MIG_UUID") or slot.get("mig_uuid") or ""
        os.makedirs(os.path.dirname(args.stamp), mode=0o755, exist_ok=True)
        with open(args.stamp, "w", encoding="ascii") as stream:
            stream.write(uuid + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
