# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""mig-parted config conversion into the layout spec (PRIVATE to the collection).

Pure: no I/O. Kept apart from the layout core, which every mig_instances run compiles, because only runs given a
mig-parted config need it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ansible_collections.gpu.mig.plugins.module_utils._layout import GpuState, _is_int, _raise_if, _slug, _unknown_keys

if TYPE_CHECKING:
    from ansible_collections.gpu.mig.plugins.module_utils._catalog import GpuModel

_MP_TOP_KEYS = ("version", "mig-configs")
_MP_ENTRY_KEYS = ("devices", "device-filter", "mig-enabled", "mig-devices")
_MP_CI_RE = re.compile(r"^(\d+)c\.(\d+g\..+)$")


def _mp_filter_matches(filters: Sequence[str], gpu: GpuState, model: GpuModel | None) -> bool:
    ids = {
        i.casefold() for i in ([gpu.pci_device_id] if gpu.pci_device_id else (model.pci_device_ids if model else ()))
    }
    return any(f.split(":", 1)[0].strip().casefold() in ids for f in filters)


def _mp_slots(
    devices: Mapping, gpu: GpuState, model: GpuModel, where: str, problems: list[str]
) -> list[dict[str, Any]]:
    """mig-devices -> slots: plain profiles one slot each; ``Nc.Mg.XXgb`` CIs packed first-fit into ``Mg.XXgb`` GIs."""
    plain: list[str] = []
    packs: dict[str, list[Any]] = {}
    for key, count in devices.items():
        if not _is_int(count) or count < 0:
            problems.append("%s: mig-devices[%r] count must be an integer >= 0, not %r" % (where, key, count))
            continue
        match = _MP_CI_RE.match(str(key))
        gi_profile = model.profile(match.group(2) if match else str(key))
        ci = next((c for c in gi_profile.compute_profiles if c.name == key), None) if gi_profile and match else None
        if match and ci is None:
            problems.append(
                "%s: mig-devices key %r is not a compute instance profile of %s (GPU %d)"
                % (where, key, model.name, gpu.index)
            )
            continue
        if ci is None or ci.default:
            plain.extend([gi_profile.name if gi_profile else str(key)] * count)
        else:
            packs.setdefault(gi_profile.name, []).extend([ci] * count)
    counters: dict[str, int] = {}
    slots: list[dict[str, Any]] = []

    def add(profile: str, cis: list[Any] | None) -> None:
        n = counters[profile] = counters.get(profile, -1) + 1
        slot: dict[str, Any] = {"name": "gpu%d-%s-%d" % (gpu.index, _slug(profile), n), "profile": profile}
        if cis is not None:
            slot["compute_instances"] = [{"profile": c.name} for c in cis]
        slots.append(slot)

    for profile in plain:
        add(profile, None)
    for gi_name, cis in packs.items():
        capacity = model.profile(gi_name).compute_slices
        bins: list[list[Any]] = []
        for ci in sorted(cis, key=lambda c: (-c.slice_count, c.id)):
            target = next(
                (
                    b
                    for b in bins
                    if sum(c.slice_count for c in b) + ci.slice_count <= capacity and b.count(ci) < ci.max_instances
                ),
                None,
            )
            if target is None:
                bins.append([ci])
            else:
                target.append(ci)
        for packed in bins:
            add(gi_name, packed)
    return slots


def layout_from_mig_parted(
    config: Mapping, config_name: str, gpus: Sequence[GpuState], models: Mapping[int, GpuModel | None]
) -> list[dict[str, Any]]:
    """Convert a parsed mig-parted ``v1`` config (one named config) into layout entries, one per matched GPU.

    Unmatched GPUs are untouched; non-MIG GPUs are skipped under ``devices: all``. Slots are named
    ``gpu<index>-<profile>-<n>``. Raise LayoutError listing every problem.
    """
    problems = _unknown_keys(config, _MP_TOP_KEYS, "mig-parted config")
    if config.get("version") != "v1":
        problems.append("mig-parted config: version must be 'v1', not %r" % config.get("version"))
    configs = config.get("mig-configs") or {}
    if config_name not in configs:
        problems.append(
            "mig-parted config: no config named %r; available: %s" % (config_name, ", ".join(sorted(configs)) or "none")
        )
    _raise_if(problems)
    entries: list[dict[str, Any]] = []
    owner: dict[int, str] = {}
    for pos, raw in enumerate(configs[config_name] or []):
        where = "mig-configs.%s[%d]" % (config_name, pos)
        if not isinstance(raw, dict):
            problems.append("%s: must be a mapping with devices and mig-enabled" % where)
            continue
        problems.extend(_unknown_keys(raw, _MP_ENTRY_KEYS, where))
        for key in ("devices", "mig-enabled"):
            if key not in raw:
                problems.append("%s: %r is required" % (where, key))
        devices, enabled = raw.get("devices", "all"), raw.get("mig-enabled", False)
        filters = raw.get("device-filter") or []
        filters = [filters] if isinstance(filters, str) else list(filters)
        mig_devices = raw.get("mig-devices") or {}
        if not isinstance(enabled, bool):
            problems.append("%s: mig-enabled must be true or false" % where)
        if not enabled and mig_devices:
            problems.append("%s: mig-enabled is false but mig-devices is not empty" % where)
        if devices == "all":
            picked = [g for g in gpus if g.mig_supported]
        elif isinstance(devices, list) and all(_is_int(d) for d in devices):
            picked = [g for g in gpus if g.index in devices]
            problems.extend(
                "%s: device %d does not exist on this host" % (where, d)
                for d in devices
                if d not in {g.index for g in gpus}
            )
        else:
            problems.append("%s: devices must be 'all' or a list of GPU indices, not %r" % (where, devices))
            continue
        for gpu in picked:
            model = models.get(gpu.index)
            if filters and not _mp_filter_matches(filters, gpu, model):
                continue
            if gpu.index in owner:
                problems.append(
                    "%s and %s both select GPU %d; mig-parted configs must not overlap"
                    % (owner[gpu.index], where, gpu.index)
                )
                continue
            owner[gpu.index] = where
            slots = _mp_slots(mig_devices, gpu, model, where, problems) if model and enabled else []
            entries.append({"gpus": gpu.index, "mig_enabled": bool(enabled), "slots": slots})
    _raise_if(problems)
    return entries
