# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The slot files services read: the slot map (JSON) and one environment file per slot.

PRIVATE to the collection. The one definition of their text: the gpu.mig.mig_layout role writes it through the
filters gpu.mig.slot_map and gpu.mig.slot_env, the boot applier (gpu-mig-apply) at boot. Pure: no I/O.
"""

from __future__ import annotations

import json

ENV_HEADER = "# gpu.mig slot {name}: written by the mig_layout role and at boot by gpu-mig-apply; do not edit\n"


def env_text(name: str, slot: dict) -> str:
    """The environment file of one slot (an entry of the slot map): the slot, its GPU and its MIG device."""
    uuid = slot["mig_uuid"]
    lines = [
        ("GPU_MIG_SLOT", name),
        ("GPU_MIG_GPU_INDEX", slot["gpu_index"]),
        ("GPU_MIG_GPU_UUID", slot["gpu_uuid"]),
        ("GPU_MIG_PROFILE", slot["profile"]),
        ("GPU_MIG_PLACEMENT", slot["placement"]["start"]),
        ("GPU_MIG_UUID", uuid),
        ("CUDA_VISIBLE_DEVICES", uuid),
        ("NVIDIA_VISIBLE_DEVICES", uuid),
        ("GPU_MIG_CDI_DEVICE", f"nvidia.com/gpu={uuid}"),
    ]
    return ENV_HEADER.format(name=name) + "".join(f"{key}={value}\n" for key, value in lines)


def slot_map_text(slots: dict) -> str:
    """The slot map (slot name -> slot): indented JSON, sorted keys, non-ASCII escaped, and a final newline."""
    return json.dumps(slots, indent=4, sort_keys=True, separators=(",", ": ")) + "\n"
