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

from ansible_collections.gpu.mig.plugins.module_utils._mig.layout import (
    GpuState,
    Rule,
    _boolean,
    _is_int,
    _slug,
    check_mapping,
    raise_if,
)

if TYPE_CHECKING:
    from ansible_collections.gpu.mig.plugins.module_utils._mig.catalog import GpuModel

_MP_CI_RE = re.compile(r"^(\d+)c\.(\d+g\..+)$")


def _version(value: Any) -> str | None:
    return None if value == "v1" else "must be 'v1' (the only mig-parted config version)"


def _named_configs(value: Any) -> str | None:
    if not isinstance(value, Mapping):
        return "must map config names to lists of entries {devices, mig-enabled, mig-devices}"
    bad = [name for name, entries in value.items() if not isinstance(name, str) or not isinstance(entries, list)]
    return "must map config names to lists of entries; not a list: %s" % ", ".join(map(repr, bad)) if bad else None


def _devices(value: Any) -> str | None:
    ok = value == "all" or (isinstance(value, list) and value and all(_is_int(d) and d >= 0 for d in value))
    return None if ok else "must be 'all' or a non-empty list of GPU indices (integers >= 0)"


def _device_filter(value: Any) -> str | None:
    values = value if isinstance(value, list) else [value]
    if any(_is_int(v) for v in values):
        return "must be PCI device ids as strings; quote them in YAML ('0x20B010DE'), or the hex is read as a number"
    ok = values and all(isinstance(v, str) and v.strip() for v in values)
    return None if ok else "must be a PCI device id such as '0x20B010DE' or a list of them"


def _mig_devices(value: Any) -> str | None:
    if not isinstance(value, Mapping):
        return "must map profile names to counts, e.g. {1g.10gb: 2, 3g.40gb: 1}"
    bad = [key for key, count in value.items() if not isinstance(key, str) or not (_is_int(count) and count >= 0)]
    return "counts must be integers >= 0 under profile names; wrong: %s" % ", ".join(map(repr, bad)) if bad else None


_MP_TOP_RULES = (Rule("version", True, _version), Rule("mig-configs", True, _named_configs))
_MP_ENTRY_RULES = (
    Rule("devices", True, _devices),
    Rule("device-filter", False, _device_filter),
    Rule("mig-enabled", True, _boolean),
    Rule("mig-devices", False, _mig_devices),
)


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
        match = _MP_CI_RE.match(key)
        gi_profile = model.profile(match.group(2) if match else key)
        if gi_profile is None:
            problems.append(
                "%s: mig-devices key %r is not a MIG profile of %s (GPU %d); valid: %s"
                % (where, key, model.name, gpu.index, ", ".join(p.name for p in model.profiles))
            )
            continue
        ci = next((c for c in gi_profile.compute_profiles if c.name == key), None) if match else None
        if match and ci is None:
            problems.append(
                "%s: mig-devices key %r is not a compute instance profile of %s (GPU %d)"
                % (where, key, model.name, gpu.index)
            )
            continue
        most = gi_profile.max_instances * (ci.max_instances if ci else 1)
        if count > most:  # checked before the count is expanded into slots
            problems.append(
                "%s: mig-devices[%r] asks for %d, a %s holds at most %d (GPU %d)"
                % (where, key, count, model.name, most, gpu.index)
            )
        elif ci is None or ci.default:
            plain.extend([gi_profile.name] * count)
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


def check_config(config: Any) -> list[str]:
    """Every problem with the shape of a parsed mig-parted config (all named configs), by ``_MP_*_RULES``."""
    problems: list[str] = []
    if not check_mapping(config, _MP_TOP_RULES, "mig-parted config", problems) or problems:
        return problems
    for name, entries in config["mig-configs"].items():
        for pos, raw in enumerate(entries):
            where = "mig-configs.%s[%d]" % (name, pos)
            valid = check_mapping(raw, _MP_ENTRY_RULES, where, problems)
            if valid and raw.get("mig-enabled") is False and raw.get("mig-devices"):
                problems.append("%s: mig-enabled is false but mig-devices is not empty" % where)
    return problems


def layout_from_mig_parted(
    config: Mapping, config_name: str, gpus: Sequence[GpuState], models: Mapping[int, GpuModel | None]
) -> list[dict[str, Any]]:
    """Convert a parsed mig-parted ``v1`` config (one named config) into layout entries, one per matched GPU.

    Unmatched GPUs are untouched; non-MIG GPUs are skipped under ``devices: all``. Slots are named
    ``gpu<index>-<profile>-<n>``. Raise LayoutError listing every problem.
    """
    problems = check_config(config)
    raise_if(problems)
    configs = config["mig-configs"]
    if config_name not in configs:
        raise_if(["mig-parted config: no config named %r; available: %s" % (config_name, ", ".join(sorted(configs)))])
    entries: list[dict[str, Any]] = []
    owner: dict[int, str] = {}
    for pos, raw in enumerate(configs[config_name]):
        where = "mig-configs.%s[%d]" % (config_name, pos)
        devices, enabled = raw["devices"], raw["mig-enabled"]
        filters = raw.get("device-filter") or []
        filters = [filters] if isinstance(filters, str) else filters
        mig_devices = raw.get("mig-devices") or {}
        if devices == "all":
            picked = [g for g in gpus if g.mig_supported]
        else:
            picked = [g for g in gpus if g.index in devices]
            problems.extend(
                "%s: device %d does not exist on this host" % (where, d)
                for d in devices
                if d not in {g.index for g in gpus}
            )
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
            entries.append({"gpus": gpu.index, "mig_enabled": enabled, "slots": slots})
    raise_if(problems)
    return entries
