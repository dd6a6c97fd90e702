# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""mig-parted config files: shape check, conversion into layout entries, validation without a host (PRIVATE).

Pure: no I/O. Kept apart from the layout core, which every mig_instances run compiles, because only runs given a
mig-parted config need it. The rules follow mig-parted's own parser and apply command (api/spec/v1, pkg/types,
cmd/nvidia-mig-parted/apply); docs/mig-parted.md lists each rule and what gpu.mig does with it.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import TYPE_CHECKING, Any, Mapping, NamedTuple, Sequence

from ansible_collections.gpu.mig.plugins.module_utils._mig import catalog as _catalog
from ansible_collections.gpu.mig.plugins.module_utils._mig.layout import (
    GpuState,
    LayoutError,
    Rule,
    _boolean,
    _is_int,
    _slug,
    capacity_problem,
    check_mapping,
    layout_from_state,
    plan_layout,
    raise_if,
)

if TYPE_CHECKING:
    from ansible_collections.gpu.mig.plugins.module_utils._mig.catalog import (
        ComputeProfile,
        GpuInstanceProfile,
        GpuModel,
    )

# A mig-devices key as mig-parted parses it: [<C>c.]<G>g.<GB>gb, then +attributes or -attributes (comma-separated).
_PROFILE_RE = re.compile(r"([0-9]+c\.)?([0-9]+)g\.([0-9]+)gb(?:([+-])(.*))?", re.ASCII)
_ATTRIBUTE_RE = re.compile(r"[A-Za-z](?:[A-Za-z0-9.]*[A-Za-z0-9])?", re.ASCII)
# A device-filter value: the PCI device id (device, then vendor), optionally ':' and the subsystem id, each written
# as 0x-hex or decimal (mig-parted reads them with Go's ParseUint base 0).
_PCI_ID_RE = re.compile(r"0[xX][0-9a-fA-F]{1,8}|[1-9][0-9]{0,9}", re.ASCII)
_PROFILE_FORM = "[<C>c.]<G>g.<GB>gb[+attribute], e.g. 3g.20gb, 1c.3g.20gb, 1g.5gb+me"


class MigPartedLayout(NamedTuple):
    """One named config converted for a host: layout entries, the absent device indices, and what was resolved."""

    entries: list[dict[str, Any]]
    skipped: list[str]  # one per device index an entry names that the host lacks
    warnings: list[str]  # one per overlap resolved (the later entry wins), and subsystem ids that could not be checked


class ConfigCheck(NamedTuple):
    """A config file checked against the catalog without a host (mig-parted's ``assert --valid-config`` and more)."""

    problems: list[str]
    fits: dict[str, list[str]]  # config name -> the catalog models a host of which it applies to
    unchecked: list[str]  # entries naming device ids or profiles no catalog model has: they could not be checked


class ProfileKey(NamedTuple):
    """A mig-devices key: a ``compute``-slice compute instance in a ``gpu``-slice GPU instance of ``memory_gb``."""

    compute: int
    gpu: int
    memory_gb: int
    suffix: str  # "", "+me", "-me", "+gfx", "+me.all" (attributes sorted, as mig-parted compares them)

    @property
    def gi_name(self) -> str:
        return "%dg.%dgb%s" % (self.gpu, self.memory_gb, self.suffix)

    @property
    def name(self) -> str:
        """mig-parted's own spelling: ``Mg.Xgb`` for the whole GPU instance, else ``Nc.Mg.Xgb``."""
        return self.gi_name if self.compute == self.gpu else "%dc.%s" % (self.compute, self.gi_name)


def parse_profile(key: Any) -> ProfileKey | None:
    """Parse a mig-devices key as mig-parted does (``3c.3g.20gb`` is ``3g.20gb``); None when it is malformed."""
    match = _PROFILE_RE.fullmatch(key) if isinstance(key, str) else None
    if match is None:
        return None
    compute, gpu, memory, sign, attributes = match.groups()
    suffix = ""
    if sign:
        names = attributes.split(",")
        if len(set(names)) != len(names) or not all(_ATTRIBUTE_RE.fullmatch(a) for a in names):
            return None
        suffix = sign + ",".join(sorted(names))
    return ProfileKey(int(compute[:-2]) if compute else int(gpu), int(gpu), int(memory), suffix)


def parse_pci_filter(value: Any) -> tuple[int, int | None] | None:
    """A device-filter value -> (device id, subsystem id or None); None when it is not a PCI id."""
    if not isinstance(value, str):
        return None
    parts = value.split(":")
    if len(parts) > 2 or not all(_PCI_ID_RE.fullmatch(p) for p in parts):
        return None
    ids = [int(p, 0) for p in parts]
    if any(i > 0xFFFFFFFF for i in ids):
        return None
    return ids[0], ids[1] if len(ids) == 2 else None


def _filters(raw: Mapping) -> list[tuple[int, int | None]]:
    values = raw.get("device-filter") or []
    return [parse_pci_filter(v) for v in ([values] if isinstance(values, str) else values)]


# ---------------------------------------------------------------------------------------------------------------------
# Shape: the rule tables


def _version(value: Any) -> str | None:
    return None if value == "v1" else "must be 'v1' (the only mig-parted config version)"


def _named_configs(value: Any) -> str | None:
    if not isinstance(value, Mapping) or not value:
        return "must map config names to non-empty lists of entries {devices, mig-enabled, mig-devices}"
    bad = [
        name
        for name, entries in value.items()
        if not isinstance(name, str) or not isinstance(entries, list) or not entries
    ]
    return "must map config names to non-empty lists of entries; wrong: %s" % ", ".join(map(repr, bad)) if bad else None


def _devices(value: Any) -> str | None:
    ok = value == "all" or (isinstance(value, list) and value and all(_is_int(d) and d >= 0 for d in value))
    return None if ok else "must be 'all' or a non-empty list of GPU indices (integers >= 0)"


def _device_filter(value: Any) -> str | None:
    values = value if isinstance(value, list) else [value]
    if any(_is_int(v) for v in values):
        return "must be PCI device ids as strings; quote them in YAML ('0x20B010DE'), or the hex is read as a number"
    bad = [v for v in values if parse_pci_filter(v) is None]
    if not values or bad:
        return (
            "must be a PCI device id such as '0x20B010DE' (device, then vendor), optionally with a subsystem id"
            " ('0x20B010DE:0x147E10DE'), or a list of them; wrong: %s" % ", ".join(map(repr, bad))
        )
    return None


def _mig_devices(value: Any) -> str | None:
    if not isinstance(value, Mapping):
        return "must map profile names to counts, e.g. {1g.10gb: 2, 3g.40gb: 1} ({} for MIG on with no instances)"
    malformed = [key for key in value if parse_profile(key) is None]
    if malformed:
        return "must have profile names of the form %s; wrong: %s" % (_PROFILE_FORM, ", ".join(map(repr, malformed)))
    bad = [key for key, count in value.items() if not (_is_int(count) and count >= 0)]
    if bad:
        return "counts must be integers >= 0; wrong: %s" % ", ".join(map(repr, bad))
    if value and not any(value.values()):
        return "must not have every count 0 (mig-parted refuses it); write mig-devices: {} for MIG on with no instances"
    return None


_MP_TOP_RULES = (Rule("version", True, _version), Rule("mig-configs", True, _named_configs))
_MP_ENTRY_RULES = (
    Rule("devices", True, _devices),
    Rule("device-filter", False, _device_filter),
    Rule("mig-enabled", True, _boolean),
    Rule("mig-devices", False, _mig_devices),
)
# Rules between the keys of one entry: (broken when, why), as mig-parted's parser refuses them.
_MP_ENTRY_PAIR_RULES = (
    (
        lambda raw: raw.get("mig-enabled") is True and raw.get("mig-devices") is None,
        "mig-enabled is true but mig-devices is missing (mig-parted requires it); write mig-devices: {} for MIG on"
        " with no instances",
    ),
    (
        lambda raw: raw.get("mig-enabled") is False and bool(raw.get("mig-devices")),
        "mig-enabled is false but mig-devices is not empty",
    ),
)


def _entry_problems(raw: Any, where: str) -> list[str]:
    problems: list[str] = []
    if check_mapping(raw, _MP_ENTRY_RULES, where, problems) and not problems:
        problems.extend("%s: %s" % (where, why) for broken, why in _MP_ENTRY_PAIR_RULES if broken(raw))
    return problems


def check_config(config: Any) -> list[str]:
    """Every problem with the shape of a parsed mig-parted config (all named configs), by ``_MP_*_RULES``."""
    problems: list[str] = []
    if not check_mapping(config, _MP_TOP_RULES, "mig-parted config", problems) or problems:
        return problems
    for name, entries in config["mig-configs"].items():
        for pos, raw in enumerate(entries):
            problems.extend(_entry_problems(raw, "mig-configs.%s[%d]" % (name, pos)))
    return problems


# ---------------------------------------------------------------------------------------------------------------------
# Profiles of one model


class _Want(NamedTuple):
    key: ProfileKey
    gi: GpuInstanceProfile
    ci: ComputeProfile
    count: int


def _wanted(mig_devices: Mapping, model: GpuModel) -> tuple[list[_Want], list[str]]:
    """mig-devices resolved on ``model`` (keys naming one profile summed, zero counts dropped), and the problems."""
    counts: Counter[ProfileKey] = Counter()
    for key, count in mig_devices.items():
        counts[parse_profile(key)] += count
    wants, problems = [], []
    for key, count in counts.items():
        if not count:
            continue
        gi = model.profile(key.gi_name)
        ci = next((c for c in gi.compute_profiles if c.slice_count == key.compute), None) if gi else None
        if gi is None:
            problems.append(
                "%s is not a MIG profile of %s; valid: %s (and their compute splits <N>c.<profile>)"
                % (key.name, model.name, ", ".join(p.name for p in model.profiles))
            )
        elif ci is None:
            problems.append(
                "%s is not a compute instance profile of %s on %s; valid: %s"
                % (key.name, gi.name, model.name, ", ".join(c.name for c in gi.compute_profiles))
            )
        elif count > gi.max_instances * ci.max_instances:  # checked before the count is expanded into slots
            problems.append(
                "%s asks for %d, a %s holds at most %d; lower the count"
                % (key.name, count, model.name, gi.max_instances * ci.max_instances)
            )
        else:
            wants.append(_Want(key, gi, ci, count))
    return wants, problems


def _pack(order: Sequence[_Want], last_only: bool) -> list[tuple[GpuInstanceProfile, list[ComputeProfile]]]:
    """GPU instances with their compute instances: each one joins the last GPU instance (``last_only``) or the first
    one of its profile with room for it, else a new one."""
    bins: list[tuple[GpuInstanceProfile, list[ComputeProfile]]] = []
    for want in order:
        for _unused in range(want.count):
            target = next(
                (
                    b
                    for b in (bins[-1:] if last_only else bins)
                    if b[0] == want.gi
                    and sum(c.slice_count for c in b[1]) + want.ci.slice_count <= want.gi.compute_slices
                    and b[1].count(want.ci) < want.ci.max_instances
                ),
                None,
            )
            if target is None:
                bins.append((want.gi, [want.ci]))
            else:
                target[1].append(want.ci)
    return bins


def _slots(wants: Sequence[_Want], model: GpuModel, index: int) -> list[dict[str, Any]]:
    """Slots ``gpu<index>-<profile>-<n>`` for resolved mig-devices, compute instances packed as mig-parted creates them.

    mig-parted creates the devices largest GPU instance first, then largest compute instance first, and puts a compute
    instance into the GPU instance it created last while that has the same profile and room for it. When that does
    not fit the GPU it tries other orders; here: each compute instance into the first GPU instance with room.
    """
    order = sorted(wants, key=lambda w: (-w.key.gpu, -w.key.compute, w.key.suffix, -w.key.memory_gb))
    bins = _pack(order, last_only=True)
    if capacity_problem(model, [gi for gi, _cis in bins]):
        first_fit = _pack(order, last_only=False)
        bins = bins if capacity_problem(model, [gi for gi, _cis in first_fit]) else first_fit
    counters: Counter[str] = Counter()
    slots = []
    for gi, cis in bins:
        slot: dict[str, Any] = {"name": "gpu%d-%s-%d" % (index, _slug(gi.name), counters[gi.name]), "profile": gi.name}
        counters[gi.name] += 1
        if not (len(cis) == 1 and cis[0].default):
            slot["compute_instances"] = [{"profile": c.name} for c in cis]
        slots.append(slot)
    return slots


def _current_counts(gpu: GpuState) -> Counter[ProfileKey] | None:
    """The GPU's MIG devices counted as mig-parted counts them (one per compute instance); None when not comparable
    (MIG off, a GPU instance without compute instances, a profile name mig-parted would not write)."""
    if not gpu.mig_current:
        return None
    counts: Counter[ProfileKey] = Counter()
    for gi in gpu.gpu_instances:
        if not gi.compute_instances:
            return None
        for ci in gi.compute_instances:
            key = parse_profile(ci.profile)
            if key is None:
                return None
            counts[key] += 1
    return counts


# ---------------------------------------------------------------------------------------------------------------------
# One named config on a host


def _hex(text: Any) -> int | None:
    """A PCI id as the facts give it ("0x20B010DE"); None when unknown or unreadable."""
    try:
        return int(text, 16)
    except (TypeError, ValueError):
        return None


def _gpu_ids(gpu: GpuState, model: GpuModel | None) -> set[int | None]:
    ids = [gpu.pci_device_id] if gpu.pci_device_id else (model.pci_device_ids if model else ())
    return {_hex(i) for i in ids}


def _selects(raw: Mapping, gpu: GpuState, model: GpuModel | None) -> tuple[bool, bool]:
    """(whether the entry selects the GPU, whether a subsystem id in its filter could not be checked).

    As mig-parted: the device filter (any value: the device id, and the subsystem id when the value gives one),
    then ``devices``; ``all`` leaves out GPUs without MIG.
    """
    if raw["devices"] == "all" and not gpu.mig_supported:
        return False, False
    if raw["devices"] != "all" and gpu.index not in raw["devices"]:
        return False, False
    filters = _filters(raw)
    if not filters:
        return True, False
    ids = _gpu_ids(gpu, model)
    subsystem = _hex(gpu.pci_subsystem_id)
    hits = [sub for device, sub in filters if device in ids and (sub is None or subsystem in (None, sub))]
    return bool(hits), bool(hits) and subsystem is None and all(sub is not None for sub in hits)


def _entry_for(gpu: GpuState, model: GpuModel | None, raw: Mapping, where: str, problems: list[str]) -> dict | None:
    """The layout entry for one GPU an entry selects (``where`` names both); None when mig-parted leaves it alone."""
    if gpu.error is not None:
        problems.append("%s: the GPU cannot be read: %s; remove it from devices or repair the GPU" % (where, gpu.error))
        return None
    if not raw["mig-enabled"]:
        return {"gpus": gpu.index, "mig_enabled": False, "slots": []} if gpu.mig_supported else None
    if not gpu.mig_supported or model is None:
        problems.append("%s: the GPU does not support MIG, and mig-enabled is true; remove it from devices" % where)
        return None
    wants, wrong = _wanted(raw.get("mig-devices") or {}, model)
    problems.extend("%s: mig-devices: %s" % (where, why) for why in wrong)
    if wrong:
        return None
    if _current_counts(gpu) == Counter({w.key: w.count for w in wants}):
        return layout_from_state([gpu])[0]  # mig-parted leaves a GPU whose counts match alone
    return {"gpus": gpu.index, "mig_enabled": True, "slots": _slots(wants, model, gpu.index)}


def layout_from_mig_parted(
    config: Mapping, config_name: str, gpus: Sequence[GpuState], models: Mapping[int, GpuModel | None]
) -> MigPartedLayout:
    """Convert one named config of a parsed mig-parted ``v1`` file into layout entries, one per selected GPU.

    mig-parted's semantics: one file serves a fleet, so device indices the host lacks are skipped (and reported);
    where entries overlap on a GPU the later one wins (one warning each); a GPU whose MIG devices already have the
    config's counts is rendered as it is (no change). GPUs no entry selects are untouched. Slots are named
    ``gpu<index>-<profile>-<n>``. Raise LayoutError listing every problem.
    """
    raise_if(check_config(config))
    configs = config["mig-configs"]
    if config_name not in configs:
        raise_if(["mig-parted config: no config named %r; available: %s" % (config_name, ", ".join(sorted(configs)))])
    present = {g.index for g in gpus}
    chosen: dict[int, tuple[str, Mapping]] = {}
    skipped, warnings, problems = [], [], []
    for pos, raw in enumerate(configs[config_name]):
        where = "mig-configs.%s[%d]" % (config_name, pos)
        if raw["devices"] != "all":
            skipped.extend(
                "%s: device %d is not on this host (GPUs %s); skipped, as mig-parted does"
                % (where, d, ", ".join(map(str, sorted(present))) or "none")
                for d in sorted(set(raw["devices"]) - present)
            )
        for gpu in gpus:
            selected, unchecked = _selects(raw, gpu, models.get(gpu.index))
            if not selected:
                continue
            if unchecked:
                warnings.append(
                    "%s: GPU %d's PCI subsystem id is unknown; its device-filter matched on the device id alone"
                    % (where, gpu.index)
                )
            if gpu.index in chosen:
                warnings.append(
                    "%s and %s both select GPU %d; the later entry wins, as in mig-parted"
                    % (chosen[gpu.index][0], where, gpu.index)
                )
            chosen[gpu.index] = (where, raw)
    by_index = {g.index: g for g in gpus}
    entries = []
    for index, (where, raw) in chosen.items():
        gpu = by_index[index]
        entry = _entry_for(gpu, models.get(index), raw, "%s on %s" % (where, gpu.label), problems)
        if entry is not None:
            entries.append(entry)
    raise_if(problems)
    return MigPartedLayout(entries, skipped, warnings)


# ---------------------------------------------------------------------------------------------------------------------
# Without a host


def _targets(raw: Mapping, models: Sequence[GpuModel]) -> tuple[list[GpuModel], list[int]]:
    """The catalog models an entry's device filter names (all of ``models`` without a filter), and the ids unknown."""
    devices = {device for device, _subsystem in _filters(raw)}
    if not devices:
        return list(models), []
    known = {int(i, 16) for m in _catalog.all_models().values() for i in m.pci_device_ids}
    return [m for m in models if devices & {int(i, 16) for i in m.pci_device_ids}], sorted(devices - known)


def _model_problems(raw: Mapping, model: GpuModel, where: str) -> list[str]:
    """Why the entry cannot be applied to a GPU of ``model``: its profiles and counts, then the planner's check."""
    gpu = GpuState(index=0, uuid="", name=model.name, mig_supported=True, mig_current=True, mig_pending=True)
    problems: list[str] = []
    entry = _entry_for(gpu, model, raw, where, problems)
    if entry is not None and not problems:
        try:
            plan_layout([entry], [gpu], {0: model})
        except LayoutError as exc:
            problems.extend("%s: %s" % (where, why) for why in exc.problems)
    return problems


def _knows(model: GpuModel, raw: Mapping) -> bool:
    """Whether ``model`` has the GPU instance profile of every mig-devices key of an entry."""
    return all(
        model.profile(parse_profile(key).gi_name) for key, count in (raw.get("mig-devices") or {}).items() if count
    )


def validate_config(config: Any, models: Sequence[str] | None = None) -> ConfigCheck:
    """Check every named config of a parsed mig-parted file against the catalog, without a host; every problem at once.

    An entry is checked on each catalog model (only ``models``, product names, when given) its device filter names:
    profiles, counts, and whether the instances fit one GPU of the model. An entry without a device filter is meant
    for whatever GPUs a host has: without ``models`` it is a problem only when it fits no model, on the models that
    have its profiles (profiles no model has are reported in ``unchecked``); ``fits`` says which models each config
    serves. With ``models`` it must fit each of them.
    """
    problems = check_config(config)
    catalog = _catalog.all_models()
    wrong = [m for m in models or () if m not in catalog]
    if wrong:
        problems.append("models: not in the catalog: %s; known: %s" % (", ".join(wrong), ", ".join(catalog)))
    if not isinstance(config, Mapping) or not isinstance(config.get("mig-configs"), Mapping):
        return ConfigCheck(problems, {}, [])
    pool = [m for name, m in catalog.items() if models is None or name in models]
    fits: dict[str, list[str]] = {}
    unchecked: list[str] = []
    for name, entries in config["mig-configs"].items():
        targeted: set[str] = set()
        failed: set[str] = set()
        for pos, raw in enumerate(entries if isinstance(entries, list) else ()):
            where = "mig-configs.%s[%d]" % (name, pos)
            if _entry_problems(raw, where):
                continue
            targets, unknown = _targets(raw, pool)
            unchecked.extend(
                "%s: device-filter 0x%08X is no GPU model of the catalog; not checked" % (where, d) for d in unknown
            )
            found = {m: _model_problems(raw, m, "%s on %s" % (where, m.name)) for m in targets}
            targeted.update(m.name for m in found)
            failed.update(m.name for m, why in found.items() if why)
            if raw.get("device-filter") or models is not None:
                problems.extend(why for each in found.values() for why in each)
            elif all(found.values()):  # meant for some GPU: wrong where a model has its profiles, else unknown
                knowing = [m for m in found if _knows(m, raw)]
                problems.extend(why for m in knowing for why in found[m])
                if not knowing:
                    unchecked.append("%s: its profiles are on no GPU model of the catalog; not checked" % where)
        fits[name] = sorted(targeted - failed)
    return ConfigCheck(problems, fits, unchecked)
