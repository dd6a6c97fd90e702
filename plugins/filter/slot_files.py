# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Filters ``gpu.mig.slot_map`` and ``gpu.mig.slot_env``: the text of the slot files, as the boot applier writes it.

The gpu.mig.mig_layout role writes the slot map and the slot environment files with them; gpu-mig-apply writes the
same files at boot with the same functions (``module_utils/_mig/slot_files.py``), so both write them byte for byte.
"""

from __future__ import annotations

from collections.abc import Mapping

from ansible.errors import AnsibleFilterError

from ansible_collections.gpu.mig.plugins.module_utils._mig import slot_files as _slot_files


def slot_map(slots) -> str:
    """The slot map file (``/etc/gpu-mig/slots.json``) of ``mig_layout_slots``."""
    if not isinstance(slots, Mapping):
        raise AnsibleFilterError(f"slot_map: the slots must be a mapping slot name -> slot, not {slots!r}")
    return _slot_files.slot_map_text(dict(slots))


def slot_env(slot, name: str) -> str:
    """The environment file (``/run/gpu-mig/slots/<name>.env``) of one slot of ``mig_layout_slots``."""
    try:
        return _slot_files.env_text(name, slot)
    except (KeyError, TypeError) as exc:
        raise AnsibleFilterError(
            f"slot_env: slot {name!r} lacks {exc} (gpu_index, gpu_uuid, profile, placement.start and mig_uuid of the"
            f" slot map are needed): {slot!r}"
        ) from exc


class FilterModule:
    """gpu.mig slot file filters."""

    def filters(self) -> dict:
        return {"slot_map": slot_map, "slot_env": slot_env}
