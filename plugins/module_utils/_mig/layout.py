# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""MIG layout core: spec validation, placement solver and diff planner (PRIVATE to the collection).

Pure: no I/O. Input is plain data (a layout spec, ``mig_facts`` per-GPU facts, catalog models); output is a ``Plan``.
"""

from __future__ import annotations

import functools
import itertools
import re
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, NamedTuple, Sequence

from ansible_collections.gpu.mig.plugins.module_utils._mig import select as _select_mod

if TYPE_CHECKING:
    from ansible_collections.gpu.mig.plugins.module_utils._mig.catalog import GpuInstanceProfile, GpuModel

SLOT_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
DEFAULT_CI = "default"

# Action kinds, in the order a plan runs them.
DESTROY_CI = "destroy_ci"
DESTROY_GI = "destroy_gi"
MIG_MODE = "mig_mode"
CREATE_GI = "create_gi"
CREATE_CI = "create_ci"
_PHASES = (DESTROY_CI, DESTROY_GI, MIG_MODE, CREATE_GI, CREATE_CI)


class LayoutError(ValueError):
    """An invalid, infeasible or unsafe layout; ``problems`` lists every problem found."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = tuple(problems)
        if len(self.problems) == 1:
            text = self.problems[0]
        else:
            text = "%d problems in the MIG layout:\n" % len(self.problems) + "\n".join("- " + p for p in self.problems)
        super().__init__(text)


def raise_if(problems: Sequence[str]) -> None:
    if problems:
        raise LayoutError(problems)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def builtin_type(value: Any) -> str:
    """The name of ``value``'s builtin type (Ansible 2.19 hands the controller tagged subclasses such as
    _AnsibleTaggedDict)."""
    return next(t for t in type(value).__mro__ if t.__module__ == "builtins").__name__


def _shown(value: Any) -> str:
    """A value as a message quotes it: its repr, cut short, with its builtin type when the repr hides it."""
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    kind = builtin_type(value)
    return "%s %s" % (kind, text) if not isinstance(value, (str, int, float)) else text


class Rule(NamedTuple):
    """One key of an input mapping: whether it must be given, and why a given value is invalid (None: valid).

    A key whose value is None (``key:`` with nothing after it in YAML) counts as not given.
    """

    key: str
    required: bool
    check: Callable[[Any], str | None]


def check_mapping(raw: Any, rules: Sequence[Rule], where: str, problems: list[str], closed: bool = True) -> bool:
    """Check ``raw`` against ``rules``, appending every problem found (naming ``where`` and the key).

    Unknown keys are problems too, unless not ``closed`` (a record written by another tool, read for some keys).
    Each rule's check says what a value must be (also for None, when required). Returns False when ``raw`` is not a
    mapping at all.
    """
    keys = [rule.key for rule in rules]
    if not isinstance(raw, Mapping):
        problems.append("%s: must be a mapping with keys %s, not %s" % (where, ", ".join(keys), _shown(raw)))
        return False
    problems.extend(
        "%s: unknown key %r; allowed keys: %s" % (where, key, ", ".join(keys))
        for key in raw
        if closed and key not in keys
    )
    for rule in rules:
        value = raw.get(rule.key)
        if value is None:
            if rule.required:
                problems.append("%s: %r is required; it %s" % (where, rule.key, rule.check(None)))
            continue
        why = rule.check(value)
        if why:
            problems.append("%s: %s is %s; it %s" % (where, rule.key, _shown(value), why))
    return True


def _name(value: Any) -> str | None:
    return (
        None
        if isinstance(value, str) and SLOT_NAME_RE.fullmatch(value)
        else "must match %s (e.g. 'chat')" % (SLOT_NAME_RE.pattern)
    )


def _profile_ref(value: Any) -> str | None:
    ok = (isinstance(value, str) and value.strip()) or (_is_int(value) and value >= 0)
    return None if ok else "must be a profile name such as '3g.20gb' or a profile id (an integer >= 0)"


def _start(value: Any) -> str | None:
    return None if _is_int(value) and value >= 0 else "must be a start memory slice (an integer >= 0)"


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def _selectors(value: Any) -> str | None:
    values = value if isinstance(value, list) else [value]
    if value is None or not values:
        return "must name at least one GPU (%s)" % _select_mod.SELECTOR_FORMS
    return "; ".join(why for why in map(_select_mod.selector_problem, values) if why) or None


def _slot_list(value: Any) -> str | None:
    return None if isinstance(value, list) else "must be a list of slots (slots: [] removes every instance)"


def _ci_list(value: Any) -> str | None:
    if not isinstance(value, list):
        return "must be a list of {name, profile}"
    return None if value else "must not be empty; leave compute_instances out for the one default compute instance"


def _gpu_index(value: Any) -> str | None:
    return None if _is_int(value) and value >= 0 else "must be a GPU index (an integer >= 0)"


def _text(value: Any) -> str | None:
    return None if isinstance(value, str) and value.strip() else "must be a non-empty string"


def _held_placement(value: Any) -> str | None:
    ok = isinstance(value, Mapping) and _is_int(value.get("start")) and value["start"] >= 0
    return (
        None if ok else "must be a mapping with the start memory slice (an integer >= 0), such as {start: 4, size: 4}"
    )


_ENTRY_RULES = (
    Rule("gpus", True, _selectors),
    Rule("mig_enabled", False, _boolean),
    Rule("slots", False, _slot_list),
)
_SLOT_RULES = (
    Rule("name", True, _name),
    Rule("profile", True, _profile_ref),
    Rule("placement", False, _start),
    Rule("compute_instances", False, _ci_list),
)
_CI_RULES = (
    Rule("name", False, _name),
    Rule("profile", False, _profile_ref),
)
# A slot of the last applied slot map (the slot map the roles write): only these keys are read, others are ignored.
_HISTORY_RULES = (
    Rule("gpu_uuid", False, _text),
    Rule("gpu_index", False, _gpu_index),
    Rule("profile", True, _text),
    Rule("placement", True, _held_placement),
)


# ---------------------------------------------------------------------------------------------------------------------
# GPU selectors (matching itself is _select.matches, shared with mig_mode)


def _facts_view(gpu: GpuState) -> dict[str, Any]:
    return {
        "index": gpu.index,
        "uuid": gpu.uuid,
        "pci_bus_id": gpu.pci_bus_id,
        "name": gpu.name,
        "architecture": gpu.architecture,
        "mig": {"supported": gpu.mig_supported},
    }


# ---------------------------------------------------------------------------------------------------------------------
# Layout spec


class ComputeSpec(NamedTuple):
    """A compute instance wanted inside a slot's GPU instance."""

    name: str
    profile: str | int  # "default", a CI profile name ("1c.3g.20gb") or a CI profile id


class SlotSpec(NamedTuple):
    """A named GPU instance wanted on a GPU."""

    name: str
    profile: str | int  # GI profile name ("3g.20gb") or id (9)
    placement: int | None = None  # pinned start memory slice
    compute_instances: tuple[ComputeSpec, ...] | None = None  # None: the GI's default (whole) compute instance


class EntrySpec(NamedTuple):
    """One layout entry: which GPUs, their MIG mode and their slots."""

    position: int  # 1-based, for messages
    gpus: tuple[int | str, ...]  # selectors as written
    mig_enabled: bool
    slots: tuple[SlotSpec, ...]

    @property
    def label(self) -> str:
        return "entry %d (gpus: %s)" % (self.position, ", ".join(str(g) for g in self.gpus))


class LayoutSpec(NamedTuple):
    """A validated (GPU-independent) desired layout."""

    entries: tuple[EntrySpec, ...]


def _parse_cis(raw: Any, where: str, problems: list[str]) -> tuple[ComputeSpec, ...] | None:
    if not isinstance(raw, list):  # None: the default CI; anything else is reported by the slot's rules
        return None
    cis = []
    for pos, item in enumerate(raw):
        if isinstance(item, str) or _is_int(item):
            item = {"profile": item}
        if check_mapping(item, _CI_RULES, "%s compute instance %d" % (where, pos + 1), problems):
            cis.append(ComputeSpec(str(item.get("name") or "ci%d" % pos), item.get("profile", DEFAULT_CI)))
    names = [ci.name for ci in cis]
    problems.extend(
        "%s: compute instance name %r is used twice" % (where, n) for n in sorted(set(names)) if names.count(n) > 1
    )
    return tuple(cis)


def _parse_slot(raw: Any, where: str, problems: list[str]) -> SlotSpec | None:
    name = raw.get("name") if isinstance(raw, Mapping) else None
    if not _name(name):
        where = "%s ('%s')" % (where, name)
    if not check_mapping(raw, _SLOT_RULES, where, problems) or _name(name):
        return None
    cis = _parse_cis(raw.get("compute_instances"), where, problems)
    return SlotSpec(name, raw["profile"], raw.get("placement"), cis)


def _parse_entry(raw: Any, position: int, problems: list[str]) -> EntrySpec | None:
    where = "entry %d" % position
    if not check_mapping(raw, _ENTRY_RULES, where, problems):
        return None
    enabled = raw.get("mig_enabled") is not False
    raw_slots = raw.get("slots")
    if raw_slots is None and enabled:
        problems.append(
            "%s: 'slots' is required when MIG is enabled: list the slots, or give slots: [] to remove every instance"
            % where
        )
    if not isinstance(raw_slots, list):
        raw_slots = []
    if not enabled and raw_slots:
        problems.append(
            "%s: mig_enabled is false but %d slots are given; drop the slots or enable MIG" % (where, len(raw_slots))
        )
    slots = [_parse_slot(s, "%s slot %d" % (where, i + 1), problems) for i, s in enumerate(raw_slots)]
    gpus = raw.get("gpus") if isinstance(raw.get("gpus"), list) else [raw.get("gpus")]
    return EntrySpec(position, tuple(gpus), enabled, tuple(s for s in slots if s))


def parse_layout(data: Any) -> LayoutSpec:
    """Validate the GPU-independent shape of a layout (a list of entries); raise LayoutError listing every problem.

    Every key is checked by type and range (``_ENTRY_RULES``, ``_SLOT_RULES``, ``_CI_RULES``) before anything is
    planned: a wrong type is an error, never read as "empty" (``slots: {}`` does not remove every instance).
    """
    if isinstance(data, LayoutSpec):
        return data
    if not isinstance(data, list):
        raise LayoutError(["the layout must be a list of entries {gpus, mig_enabled, slots}, not %s" % _shown(data)])
    problems: list[str] = []
    entries = [_parse_entry(raw, pos + 1, problems) for pos, raw in enumerate(data)]
    raise_if(problems)
    return LayoutSpec(tuple(e for e in entries if e))


class SlotRecord(NamedTuple):
    """Where a slot lived after the last apply: its GPU (by UUID, else index), GI profile and start."""

    gpu_uuid: str | None
    gpu_index: int | None
    profile: str
    start: int

    def held(self, gpu: GpuState, profile: str) -> bool:
        """Whether the slot held a GI of ``profile`` on ``gpu``."""
        same_gpu = self.gpu_uuid.casefold() == gpu.uuid.casefold() if self.gpu_uuid else self.gpu_index == gpu.index
        return same_gpu and self.profile == profile


def slot_history(previous: Any) -> dict[str, SlotRecord]:
    """Validate the last applied slot map (slot name -> {gpu_uuid, gpu_index, profile, placement: {start}}, other
    keys ignored) by ``_HISTORY_RULES``; raise LayoutError listing every problem."""
    if not isinstance(previous, Mapping):
        raise LayoutError(["the slot map must be a mapping of slot name -> slot, not %s" % _shown(previous)])
    problems: list[str] = []
    history = {}
    for name, raw in previous.items():
        where = "slot %r" % (name,)
        known = len(problems)
        if not isinstance(name, str):
            problems.append("%s: the slot name must be a string" % where)
        mapping = check_mapping(raw, _HISTORY_RULES, where, problems, closed=False)
        if mapping and raw.get("gpu_uuid") is None and raw.get("gpu_index") is None:
            problems.append("%s: 'gpu_uuid' or 'gpu_index' is required; it names the slot's GPU" % where)
        if len(problems) == known:
            history[name] = SlotRecord(
                raw.get("gpu_uuid"), raw.get("gpu_index"), raw["profile"], raw["placement"]["start"]
            )
    raise_if(problems)
    return history


# ---------------------------------------------------------------------------------------------------------------------
# Current state (from mig_facts)


class ComputeInstanceState(NamedTuple):
    """An existing compute instance."""

    id: int
    profile_id: int | None
    profile: str
    uuid: str | None = None
    processes: tuple[int, ...] | None = None  # None: unknown, the GPU instance's processes count


class GpuInstanceState(NamedTuple):
    """An existing GPU instance with its placement and compute instances."""

    id: int
    profile_id: int
    profile: str
    start: int
    size: int
    compute_instances: tuple[ComputeInstanceState, ...] = ()
    processes: tuple[int, ...] = ()

    def occupies(self) -> frozenset[int]:
        """Memory slices this instance occupies."""
        return frozenset(range(self.start, self.start + self.size))

    def busy_pids(self) -> tuple[int, ...]:
        """PIDs running in this GPU instance or any of its compute instances."""
        pids = set(self.processes)
        for ci in self.compute_instances:
            pids.update(ci.processes or ())
        return tuple(sorted(pids))


class GpuState(NamedTuple):
    """One GPU as ``mig_facts`` reports it (only what the planner needs)."""

    index: int
    uuid: str
    name: str
    pci_bus_id: str = ""
    architecture: str = ""
    pci_device_id: str | None = None  # "0x20B010DE", for mig-parted device-filter
    pci_subsystem_id: str | None = None  # "0x147E10DE", for a device-filter's subsystem part
    error: str | None = None  # why the GPU could not be read (mig_facts' failure record); planned around
    mig_supported: bool = False
    mig_current: bool = False
    mig_pending: bool = False
    gpu_instances: tuple[GpuInstanceState, ...] = ()

    @property
    def label(self) -> str:
        return "GPU %d (%s)" % (self.index, ", ".join(x for x in (self.uuid, self.name) if x) or "unreadable")


def _mode(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().casefold() in ("enabled", "enable", "true", "on", "1", "yes")
    return bool(value)


def _pids(raw: Any) -> tuple[int, ...]:
    return tuple(sorted({int(p["pid"]) if isinstance(p, dict) else int(p) for p in raw or ()}))


def _ci_from_facts(d: Mapping) -> ComputeInstanceState:
    procs = d.get("processes")
    return ComputeInstanceState(
        id=int(d["id"]),
        profile_id=None if d.get("profile_id") is None else int(d["profile_id"]),
        profile=str(d.get("profile") or ""),
        uuid=d.get("uuid"),
        processes=None if procs is None else _pids(procs),
    )


def _gi_from_facts(d: Mapping) -> GpuInstanceState:
    placement = d.get("placement") or {}
    return GpuInstanceState(
        id=int(d["id"]),
        profile_id=int(d["profile_id"]),
        profile=str(d.get("profile") or ""),
        start=int(placement["start"]),
        size=int(placement["size"]),
        compute_instances=tuple(sorted((_ci_from_facts(c) for c in d.get("compute_instances") or ()), key=_by_id)),
        processes=_pids(d.get("processes")),
    )


def _by_id(obj: Any) -> int:
    return obj.id


def gpu_state_from_facts(d: Mapping) -> GpuState:
    """Build a GpuState from one GPU of ``mig_facts`` (``{index, uuid, name, pci_bus_id, architecture, mig, ...}``)."""
    try:
        mig = d.get("mig") or {}
        return GpuState(
            index=int(d["index"]),
            uuid=str(d["uuid"] or ""),
            name=str(d.get("name") or ""),
            pci_bus_id=str(d.get("pci_bus_id") or ""),
            architecture=str(d.get("architecture") or ""),
            pci_device_id=d.get("pci_device_id"),
            pci_subsystem_id=d.get("pci_subsystem_id"),
            error=d.get("error"),
            mig_supported=bool(mig.get("supported", False)),
            mig_current=_mode(mig.get("current")),
            mig_pending=_mode(mig.get("pending", mig.get("current"))),
            gpu_instances=tuple(sorted((_gi_from_facts(g) for g in d.get("gpu_instances") or ()), key=_by_id)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise LayoutError(["GPU facts %r are malformed (%s: %s)" % (d.get("index"), type(exc).__name__, exc)]) from exc


# ---------------------------------------------------------------------------------------------------------------------
# Resolution: spec x GPUs x models -> per-GPU targets


class _CiWant(NamedTuple):
    name: str
    profile: str
    profile_id: int | None  # None: the GI's default CI, id unknown to the catalog
    slices: int

    def matches(self, ci: ComputeInstanceState) -> bool:
        if self.profile_id is not None and ci.profile_id is not None:
            return self.profile_id == ci.profile_id
        return self.profile == ci.profile


class _SlotWant(NamedTuple):
    name: str
    profile: GpuInstanceProfile
    placement: int | None
    cis: tuple[_CiWant, ...]


class _Target(NamedTuple):
    gpu: GpuState
    model: GpuModel
    entry: EntrySpec
    slots: tuple[_SlotWant, ...]
    valid: bool  # every slot resolved without a problem: worth checking capacity and placement


def _profile_names(items: Iterable[Any]) -> str:
    return ", ".join("%s (id %d)" % (p.name, p.id) for p in items)


def _default_ci(profile: GpuInstanceProfile, name: str) -> _CiWant:
    for cp in profile.compute_profiles:
        if cp.default:
            return _CiWant(name, cp.name, cp.id, cp.slice_count)
    return _CiWant(name, profile.name, None, profile.compute_slices)


def _resolve_cis(slot: SlotSpec, profile: GpuInstanceProfile, where: str, problems: list[str]) -> tuple[_CiWant, ...]:
    if slot.compute_instances is None:
        return (_default_ci(profile, "ci0"),)
    wants = []
    for ci in slot.compute_instances:
        if ci.profile == DEFAULT_CI or ci.profile == profile.name:
            wants.append(_default_ci(profile, ci.name))
            continue
        found = next(
            (
                cp
                for cp in profile.compute_profiles
                if ci.profile in (cp.name, cp.id) or (isinstance(ci.profile, str) and ci.profile == str(cp.id))
            ),
            None,
        )
        if found is None:
            valid = _profile_names(profile.compute_profiles) or "none in the catalog; use 'default'"
            problems.append(
                "%s: compute instance profile %r is not valid in %s; valid: %s"
                % (where, ci.profile, profile.name, valid)
            )
            continue
        wants.append(_CiWant(ci.name, found.name, found.id, found.slice_count))
    for cp in profile.compute_profiles:
        count = sum(1 for w in wants if w.profile_id == cp.id)
        if count > cp.max_instances:
            problems.append(
                "%s: %d compute instances of %s, at most %d fit in %s"
                % (where, count, cp.name, cp.max_instances, profile.name)
            )
    slices = sum(w.slices for w in wants)
    if slices > profile.compute_slices:
        problems.append(
            "%s: compute instances need %d compute slices, %s has %d; use fewer or smaller compute instances"
            % (where, slices, profile.name, profile.compute_slices)
        )
    return tuple(wants)


def _resolve_slot(
    slot: SlotSpec, entry: EntrySpec, gpu: GpuState, model: GpuModel, problems: list[str], per_gpu: bool
) -> _SlotWant | None:
    """``per_gpu``: the entry selects several MIG GPUs on this host, so each gets ``<name>-gpu<index>``."""
    name = "%s-gpu%d" % (slot.name, gpu.index) if per_gpu else slot.name
    where = "%s slot '%s' on %s" % (entry.label, name, gpu.label)
    if not SLOT_NAME_RE.fullmatch(name):
        problems.append("%s: the per-GPU slot name is longer than 63 characters; shorten '%s'" % (where, slot.name))
    profile = model.profile(slot.profile)
    if profile is None:
        problems.append(
            "%s: unknown profile %r for %s; valid: %s"
            % (where, slot.profile, model.name, _profile_names(model.profiles))
        )
        return None
    if slot.placement is not None and slot.placement not in profile.placement_starts:
        problems.append(
            "%s: placement %d is not a valid start for %s; valid starts: %s"
            % (where, slot.placement, profile.name, ", ".join(str(s) for s in profile.placement_starts))
        )
    return _SlotWant(name, profile, slot.placement, _resolve_cis(slot, profile, where, problems))


def _select(entry: EntrySpec, gpus: Sequence[GpuState], problems: list[str]) -> list[GpuState]:
    """GPUs an entry picks (``_select.entry_picks``); a single-GPU selector matching nothing is a problem."""
    views = [(g, _facts_view(g)) for g in gpus]
    for sel in _select_mod.missing([v for _unused, v in views], entry.gpus):
        have = ", ".join("%d (%s, %s)" % (g.index, g.uuid, g.pci_bus_id) for g in gpus) or "none"
        problems.append("%s: no GPU on this host matches selector %r; GPUs: %s" % (entry.label, sel, have))
    return [g for g, v in views if _select_mod.entry_picks(v, entry.gpus)]


def _resolve(
    spec: LayoutSpec, gpus: Sequence[GpuState], models: Mapping[int, GpuModel | None]
) -> tuple[list[_Target], list[str]]:
    problems: list[str] = []
    owner: dict[int, EntrySpec] = {}
    targets: list[_Target] = []
    for entry in spec.entries:
        picked = _select(entry, gpus, problems)
        per_gpu = sum(1 for g in picked if g.mig_supported) > 1
        for gpu in picked:
            if gpu.index in owner:
                problems.append(
                    "%s is selected by both %s and %s; each GPU may be selected by one entry, narrow a selector"
                    % (gpu.label, owner[gpu.index].label, entry.label)
                )
                continue
            owner[gpu.index] = entry
            if gpu.error:
                if _select_mod.naming(_facts_view(gpu), entry.gpus) is not None:
                    problems.append(
                        "%s names %s, which cannot be read: %s; remove it from the selector to apply the layout to the"
                        " other GPUs" % (entry.label, gpu.label, gpu.error)
                    )
                continue  # picked by a class selector: left alone, and reported by the caller
            model = models.get(gpu.index)
            if not gpu.mig_supported:
                if entry.mig_enabled:
                    problems.append(
                        "%s selects %s, which does not support MIG; remove it from the selector"
                        % (entry.label, gpu.label)
                    )
                continue
            if model is None:
                problems.append(
                    "%s: no MIG profile table for %s; the caller must pass its catalog model" % (entry.label, gpu.label)
                )
                continue
            known = len(problems)
            slots = [_resolve_slot(s, entry, gpu, model, problems, per_gpu) for s in entry.slots]
            targets.append(_Target(gpu, model, entry, tuple(s for s in slots if s), len(problems) == known))
    uses: dict[str, list[str]] = {}
    for target in targets:
        for slot in target.slots:
            uses.setdefault(slot.name, []).append("entry %d on GPU %d" % (target.entry.position, target.gpu.index))
    problems.extend(
        "slot name '%s' is used %d times (%s); slot names must be unique on a host because services are pinned by"
        " slot name" % (name, len(where), ", ".join(where))
        for name, where in uses.items()
        if len(where) > 1
    )
    return sorted(targets, key=lambda t: t.gpu.index), problems


# ---------------------------------------------------------------------------------------------------------------------
# Placement solver


def _profile_key(profile: GpuInstanceProfile) -> tuple[int, int, int]:
    return (-profile.memory_slices, -profile.compute_slices, profile.id)


def capacity_problem(model: GpuModel, profiles: Sequence[GpuInstanceProfile]) -> str | None:
    """Why a multiset of profiles cannot fit on ``model`` by counting alone, or None."""
    for prof in {p.id: p for p in profiles}.values():
        count = sum(1 for p in profiles if p.id == prof.id)
        if count > prof.max_instances:
            return "%d instances of %s requested, at most %d fit" % (count, prof.name, prof.max_instances)
    if len(profiles) > model.max_gpu_instances:
        return "needs %d GPU instances, the GPU allows %d" % (len(profiles), model.max_gpu_instances)
    compute = sum(p.compute_slices for p in profiles)
    if compute > model.compute_slices:
        return "needs %d compute slices, the GPU has %d" % (compute, model.compute_slices)
    memory = sum(p.placement_size for p in profiles)
    if memory > model.memory_slices:
        return "needs %d memory slices, the GPU has %d" % (memory, model.memory_slices)
    return None


@functools.lru_cache(maxsize=64)
def _ranked(model: GpuModel) -> tuple[GpuInstanceProfile, ...]:
    return tuple(sorted(model.profiles, key=_profile_key))


def _free_score(model: GpuModel, used: frozenset[int], chosen: Sequence[GpuInstanceProfile]) -> tuple[int, ...]:
    """How much is still placeable afterwards: free starts per profile, biggest profiles first."""
    compute_left = model.compute_slices - sum(p.compute_slices for p in chosen)
    room = len(chosen) < model.max_gpu_instances
    score = []
    for prof in _ranked(model):
        fits = (
            room
            and prof.compute_slices <= compute_left
            and sum(1 for p in chosen if p.id == prof.id) < prof.max_instances
        )
        score.append(sum(1 for s in prof.placement_starts if not prof.occupies(s) & used) if fits else 0)
    return tuple(score)


@functools.lru_cache(maxsize=4096)
def _solve(
    model: GpuModel,
    demands: tuple[tuple[int, int | None], ...],
    existing: frozenset[tuple[int, int]],
    preferred: frozenset[tuple[int, int]],
) -> tuple[int, ...] | None:
    profiles = {p.id: p for p in model.profiles}
    wanted = [profiles[pid] for pid, _unused in demands]
    if capacity_problem(model, wanted):
        return None
    used: frozenset[int] = frozenset()
    for pid, pin in demands:
        if pin is not None:
            occ = profiles[pid].occupies(pin)
            if occ & used or pin not in profiles[pid].placement_starts:
                return None
            used |= occ
    groups: dict[int, list[int]] = {}
    for i, (pid, pin) in enumerate(demands):
        if pin is None:
            groups.setdefault(pid, []).append(i)
    order = sorted(groups, key=lambda pid: (-profiles[pid].placement_size, len(profiles[pid].placement_starts), pid))
    best: list[Any] = [None, None]  # score, starts

    def search(level: int, used: frozenset[int], starts: dict[int, int]) -> None:
        if level == len(order):
            final = [starts.get(i, pin) for i, (_unused, pin) in enumerate(demands)]
            placed = [(pid, final[i]) for i, (pid, _unused) in enumerate(demands)]
            kept = [gi for gi in placed if gi in existing]
            recreated = [gi for gi in placed if gi in preferred and gi not in existing]
            score = (
                len(kept),
                sum(1 for gi in kept if gi in preferred),
                len(recreated),
                _free_score(model, used, wanted),
            )
            if best[0] is None or score > best[0]:
                best[0], best[1] = score, tuple(final)
            return
        prof = profiles[order[level]]
        idxs = groups[order[level]]
        free = [s for s in prof.placement_starts if not prof.occupies(s) & used]
        for combo in itertools.combinations(free, len(idxs)):
            occ = [prof.occupies(s) for s in combo]
            union = frozenset().union(*occ)
            if len(union) == sum(len(o) for o in occ):
                search(level + 1, used | union, {**starts, **{i: combo[k] for k, i in enumerate(idxs)}})

    search(0, used, {})
    return best[1]


def solve_placements(
    model: GpuModel,
    demands: Sequence[tuple[GpuInstanceProfile, int | None]],
    existing: Iterable[tuple[int, int]] = (),
    preferred: Iterable[tuple[int, int]] = (),
) -> tuple[int, ...] | None:
    """Choose a start for each (profile, pinned start or None); None when no placement fits.

    Exact search: maximizes the demands that land on an ``existing`` (profile id, start) instance, then those that
    land on a ``preferred`` one of those (an instance a slot held in the last applied slot map), then the instances
    to create that land on a ``preferred`` (profile id, start) (where the slot map puts a slot whose instance is gone,
    after a reboot, say), then the room left for the biggest profiles; same-profile unpinned demands take ascending
    starts in the order given. Memoized.
    """
    key = tuple((prof.id, pin) for prof, pin in demands)
    return _solve(model, key, frozenset(existing), frozenset(preferred))


def feasible(model: GpuModel, slots: Sequence[_SlotWant]) -> bool:
    """Whether the slots fit on ``model`` in some placement (pins respected)."""
    return solve_placements(model, [(s.profile, s.placement) for s in slots]) is not None


def _target_problems(target: _Target) -> list[str]:
    problems = []
    pinned = [s for s in target.slots if s.placement is not None]
    for a, b in itertools.combinations(pinned, 2):
        if a.profile.occupies(a.placement) & b.profile.occupies(b.placement):
            problems.append(
                "%s on %s: slots '%s' (%s@%d) and '%s' (%s@%d) have overlapping placements; move or unpin one"
                % (
                    target.entry.label,
                    target.gpu.label,
                    a.name,
                    a.profile.name,
                    a.placement,
                    b.name,
                    b.profile.name,
                    b.placement,
                )
            )
    by_profile: dict[int, list[_SlotWant]] = {}
    for slot in target.slots:
        by_profile.setdefault(slot.profile.id, []).append(slot)
    for group in by_profile.values():
        prof = group[0].profile
        if len(group) > prof.max_instances:
            problems.append(
                "%s on %s: too many %s instances (%d: %s); %s allows at most %d, remove %d"
                % (
                    target.entry.label,
                    target.gpu.label,
                    prof.name,
                    len(group),
                    ", ".join(s.name for s in group),
                    target.model.name,
                    prof.max_instances,
                    len(group) - prof.max_instances,
                )
            )
    if not problems and not feasible(target.model, target.slots):
        # Imported here: only an infeasible layout needs the explanation, and each run compiles what it imports.
        from ansible_collections.gpu.mig.plugins.module_utils._mig import proposal as _proposal

        problems.append(_proposal.infeasible_message(target))
    return problems


# ---------------------------------------------------------------------------------------------------------------------
# Plan


class Action(NamedTuple):
    """One step of a plan. For CI actions ``placement``/``gi_profile_id`` identify the parent GI (``gi_id`` None: new)."""

    op: str  # destroy_ci | destroy_gi | mig_mode | create_gi | create_ci
    gpu_index: int
    gpu_uuid: str
    slot: str | None = None
    gi_id: int | None = None
    ci_id: int | None = None
    ci_name: str | None = None
    profile: str | None = None
    profile_id: int | None = None
    placement: tuple[int, int] | None = None  # (start, size) of the GI
    gi_profile_id: int | None = None
    enable: bool | None = None
    needs_reset: bool = False
    busy_pids: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "gpu_index": self.gpu_index,
            "gpu_uuid": self.gpu_uuid,
            "slot": self.slot,
            "gi_id": self.gi_id,
            "ci_id": self.ci_id,
            "ci_name": self.ci_name,
            "profile": self.profile,
            "profile_id": self.profile_id,
            "placement": None if self.placement is None else {"start": self.placement[0], "size": self.placement[1]},
            "gi_profile_id": self.gi_profile_id,
            "enable": self.enable,
            "needs_reset": self.needs_reset,
            "busy_pids": list(self.busy_pids),
        }


class CiAssignment(NamedTuple):
    """A compute instance a slot has after the plan, in the order the layout lists them; ``ci_id`` None: created."""

    name: str
    profile: str
    ci_id: int | None


class SlotAssignment(NamedTuple):
    """Where a slot lives after the plan: GPU, profile, placement, its GI id when it already exists, and its CIs."""

    name: str
    gpu_index: int
    gpu_uuid: str
    profile: str
    profile_id: int
    start: int
    size: int
    gi_id: int | None
    compute_instances: tuple[CiAssignment, ...] = ()


class GpuPlan(NamedTuple):
    """Per-GPU summary: mode change, GI ids kept and destroyed, slots created, and the diff rendering."""

    index: int
    uuid: str
    name: str
    mig_before: bool
    mig_after: bool
    needs_reset: bool
    keep: tuple[int, ...]
    destroy: tuple[int, ...]
    create: tuple[str, ...]
    before: tuple[str, ...]
    after: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "uuid": self.uuid,
            "name": self.name,
            "mig_enabled": {"before": self.mig_before, "after": self.mig_after},
            "needs_reset": self.needs_reset,
            "keep": list(self.keep),
            "destroy": list(self.destroy),
            "create": list(self.create),
        }


class Plan(NamedTuple):
    """Ordered actions (destroys, mode changes, creates) plus slot mapping and per-GPU summaries."""

    actions: tuple[Action, ...]
    slots: tuple[SlotAssignment, ...]
    gpus: tuple[GpuPlan, ...]

    @property
    def changed(self) -> bool:
        return bool(self.actions)

    def diff(self) -> dict[str, Any]:
        """Ansible diff-mode ``{before, after}``: per selected GPU, its mode and one line per GPU instance."""

        def side(after: bool) -> str:
            lines = []
            for g in self.gpus:
                enabled = g.mig_after if after else g.mig_before
                lines.append("GPU %d %s: mig %s" % (g.index, g.uuid, "enabled" if enabled else "disabled"))
                lines.extend("  " + line for line in (g.after if after else g.before))
            return "\n".join(lines) + "\n"

        return {"before": side(False), "after": side(True)}

    def to_dict(self) -> dict[str, Any]:
        return {
            "changed": self.changed,
            "actions": [a.to_dict() for a in self.actions],
            "gpus": [g.to_dict() for g in self.gpus],
        }


def _render(profile: str, start: int, gi_id: int | None, slot: str | None, ci_profiles: Iterable[str]) -> str:
    return "%s @%d gi=%s slot=%s ci=[%s]" % (
        profile,
        start,
        "new" if gi_id is None else gi_id,
        slot or "-",
        ", ".join(sorted(ci_profiles)),
    )


def _ci_diff(
    wants: Sequence[_CiWant], have: Sequence[ComputeInstanceState]
) -> tuple[list[tuple[_CiWant, ComputeInstanceState | None]], list[ComputeInstanceState]]:
    """Pair wanted CIs with existing ones (by profile, lowest id first); return pairs and the CIs left to destroy."""
    free = list(have)
    pairs: list[tuple[_CiWant, ComputeInstanceState | None]] = []
    for want in wants:
        match = next((ci for ci in free if want.matches(ci)), None)
        if match is not None:
            free.remove(match)
        pairs.append((want, match))
    return pairs, free


def _same_split(slot: _SlotWant, gi: GpuInstanceState) -> bool:
    pairs, extra = _ci_diff(slot.cis, gi.compute_instances)
    return not extra and all(ci is not None for _unused, ci in pairs)


def _pair_by_split(
    slots: Sequence[_SlotWant],
    starts: Sequence[int],
    existing: Mapping[tuple[int, int], GpuInstanceState],
    claims: Mapping[int, int],
) -> list[int]:
    """Reassign starts among same-profile unpinned slots.

    A slot takes the start the last applied slot map gives it (``claims``: slot position -> start) when the solver
    chose it: the existing GI the slot held, or where it is created again. Then an existing GI goes to the first
    other slot whose CI split it already has, and the other starts pair up with the other slots; unclaimed slots with
    equal splits take ascending starts in the order written, so without history a converged GPU maps back to the
    same slots and writing order never causes changes."""
    result = list(starts)
    groups: dict[int, list[int]] = {}
    for i, slot in enumerate(slots):
        if slot.placement is None:
            groups.setdefault(slot.profile.id, []).append(i)
    for pid, idxs in groups.items():
        free = sorted(starts[i] for i in idxs)
        todo, spare = [], []
        for i in idxs:
            if claims.get(i) in free:
                free.remove(claims[i])
                result[i] = claims[i]
            else:
                todo.append(i)
        unclaimed = list(todo)
        for start in free:
            gi = existing.get((pid, start))
            match = next((i for i in todo if gi is not None and _same_split(slots[i], gi)), None)
            if match is None:
                spare.append(start)
            else:
                todo.remove(match)
                result[match] = start
        for i, start in zip(todo, spare):  # noqa: B905 - same length by construction; strict= needs Python 3.10
            result[i] = start
        by_split: dict[tuple, list[int]] = {}
        for i in unclaimed:
            by_split.setdefault(tuple(sorted((w.profile, w.profile_id or -1) for w in slots[i].cis)), []).append(i)
        for same in by_split.values():  # canonical: equal slots take ascending starts in the order written
            for i, start in zip(same, sorted(result[i] for i in same)):  # noqa: B905 - same length
                result[i] = start
    return result


class _GpuPlanner:
    """Builds the actions, slot assignments and summary of one selected GPU."""

    def __init__(self, target: _Target, history: Mapping[str, SlotRecord]) -> None:
        self.gpu, self.model, self.target, self.history = target.gpu, target.model, target, history
        self.actions: dict[str, list[Action]] = {phase: [] for phase in _PHASES}
        self.slots: list[SlotAssignment] = []

    def act(self, op: str, **fields: Any) -> None:
        self.actions[op].append(Action(op, self.gpu.index, self.gpu.uuid, **fields))

    def destroy_ci(self, gi: GpuInstanceState, ci: ComputeInstanceState, slot: str | None) -> None:
        busy = ci.processes if ci.processes is not None else gi.processes
        self.act(DESTROY_CI, slot=slot, gi_id=gi.id, ci_id=ci.id, profile=ci.profile, profile_id=ci.profile_id,
                 placement=(gi.start, gi.size), gi_profile_id=gi.profile_id, busy_pids=busy)  # fmt: skip

    def destroy_gi(self, gi: GpuInstanceState, slot: str | None) -> None:
        for ci in gi.compute_instances:
            self.destroy_ci(gi, ci, slot)
        self.act(DESTROY_GI, slot=slot, gi_id=gi.id, profile=gi.profile, profile_id=gi.profile_id,
                 placement=(gi.start, gi.size), busy_pids=gi.busy_pids())  # fmt: skip

    def place_slot(self, slot: _SlotWant, start: int, gi: GpuInstanceState | None) -> str:
        """Keep or create the slot's GI at ``start`` and reconcile its CIs; return its diff line."""
        prof, placement = slot.profile, (start, slot.profile.placement_size)
        pairs, extra = _ci_diff(slot.cis, gi.compute_instances if gi else ())
        gi_id = gi.id if gi else None
        if gi is None:
            self.act(CREATE_GI, slot=slot.name, profile=prof.name, profile_id=prof.id, placement=placement)
        for ci in extra:
            self.destroy_ci(gi, ci, slot.name)
        for want, _unused in sorted((p for p in pairs if p[1] is None), key=lambda p: -p[0].slices):
            self.act(CREATE_CI, slot=slot.name, gi_id=gi_id, ci_name=want.name, profile=want.profile,
                     profile_id=want.profile_id, placement=placement, gi_profile_id=prof.id)  # fmt: skip
        self.slots.append(
            SlotAssignment(
                slot.name,
                self.gpu.index,
                self.gpu.uuid,
                prof.name,
                prof.id,
                start,
                placement[1],
                gi_id,
                tuple(CiAssignment(want.name, want.profile, ci.id if ci else None) for want, ci in pairs),
            )
        )
        return _render(slot.profile.name, start, gi_id, slot.name, (w.profile for w in slot.cis))

    def claims(self, slots: Sequence[_SlotWant]) -> dict[int, int]:
        """Unpinned slots the last applied slot map places on this GPU with the same profile: slot position -> the
        recorded start (its GI when that is still there, else where to create it if it is free and the rest fits)."""
        claims = {}
        for i, slot in enumerate(slots):
            record = self.history.get(slot.name)
            if slot.placement is None and record is not None and record.held(self.gpu, slot.profile.name):
                claims[i] = record.start
        return claims

    def plan(self) -> GpuPlan:
        gpu, want_on = self.gpu, self.target.entry.mig_enabled
        slots = self.target.slots if want_on else ()
        existing = {(g.profile_id, g.start): g for g in (gpu.gpu_instances if gpu.mig_current else ())}
        claims = self.claims(slots)
        solved = solve_placements(
            self.model,
            [(s.profile, s.placement) for s in slots],
            existing,
            ((slots[i].profile.id, start) for i, start in claims.items()),
        )
        starts = _pair_by_split(slots, solved, existing, claims)
        placed = [(slot, starts[i], existing.get((slot.profile.id, starts[i]))) for i, slot in enumerate(slots)]
        kept = {gi.id: slot.name for slot, _unused, gi in placed if gi is not None}
        for gi in existing.values():
            if gi.id not in kept:
                displacing = (s.name for s, start, _unused in placed if s.profile.occupies(start) & gi.occupies())
                self.destroy_gi(gi, next(displacing, None))
        needs_reset = gpu.mig_current != want_on and self.model.mig_enable_requires_reset
        if (gpu.mig_current, gpu.mig_pending) != (want_on, want_on):
            self.act(MIG_MODE, enable=want_on, needs_reset=needs_reset)
        after = sorted((start, self.place_slot(slot, start, gi)) for slot, start, gi in placed)
        before = sorted(
            (g.start, _render(g.profile, g.start, g.id, kept.get(g.id), (c.profile for c in g.compute_instances)))
            for g in existing.values()
        )
        return GpuPlan(
            gpu.index,
            gpu.uuid,
            gpu.name,
            gpu.mig_current,
            want_on,
            needs_reset,
            tuple(sorted(kept)),
            tuple(g.id for g in existing.values() if g.id not in kept),
            tuple(slot.name for slot, _unused, gi in placed if gi is None),
            tuple(line for _unused, line in before),
            tuple(line for _unused, line in after),
        )


def plan_layout(
    layout: LayoutSpec | list,
    gpus: Sequence[GpuState],
    models: Mapping[int, GpuModel | None],
    previous: Mapping | None = None,
) -> Plan:
    """Validate ``layout`` against the host's GPUs and plan the minimal change; raise LayoutError listing every problem.

    ``models`` maps GPU index to its catalog model (read live from NVML on real hardware); GPUs no entry selects are
    left untouched, and on a selected GPU every instance no slot asks for is destroyed. ``previous``: the last applied
    slot map (``slot_history``); a slot keeps the GPU instance it names when that instance is still there, so
    look-alike slots keep their MIG UUIDs across reorders and edits to other slots, and a slot whose instance is gone
    (after a reboot) is created where the slot map puts it when that start is free and the other slots still fit.
    """
    history = slot_history(previous) if previous is not None else {}
    spec = parse_layout(layout)
    targets, problems = _resolve(spec, gpus, models)
    for target in targets:
        if target.valid:
            problems.extend(_target_problems(target))
    raise_if(problems)
    planners = [_GpuPlanner(t, history) for t in targets]
    summaries = tuple(p.plan() for p in planners)
    actions = tuple(a for phase in _PHASES for p in planners for a in p.actions[phase])
    return Plan(actions, tuple(s for p in planners for s in p.slots), summaries)


def check_busy(plan: Plan, force: bool = False) -> tuple[str, ...]:
    """Refuse a plan that destroys instances with running processes (LayoutError naming them) unless ``force``.

    With ``force`` the same messages come back, for the caller to print as warnings.
    """
    messages = tuple(
        "GPU %d (%s): %s %s%s (%s) has running processes %s; %s"
        % (
            a.gpu_index,
            a.gpu_uuid,
            "compute instance" if a.op == DESTROY_CI else "GPU instance",
            a.ci_id if a.op == DESTROY_CI else a.gi_id,
            " in GPU instance %d" % a.gi_id if a.op == DESTROY_CI else "",
            a.profile,
            ", ".join(str(p) for p in a.busy_pids),
            "slot '%s' needs it destroyed" % a.slot if a.slot else "no slot asks for it",
        )
        for a in plan.actions
        if a.busy_pids
    )
    if messages and not force:
        raise LayoutError([*messages, "stop those processes or re-run with force to destroy the instances anyway"])
    return messages


# ---------------------------------------------------------------------------------------------------------------------
# The current state as a layout


def _slug(profile: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", profile.casefold()).strip("-")


def layout_from_state(gpus: Sequence[GpuState]) -> list[dict[str, Any]]:
    """Render the current state as a layout (one entry per MIG-capable GPU, slots ``gpu<i>-<profile>-<n>`` pinned).

    Planning this layout against the same state is a no-op. The default CI is the one named like its GI profile.
    """
    entries = []
    for gpu in gpus:
        if not gpu.mig_supported:
            continue
        counters: dict[str, int] = {}
        slots = []
        for gi in sorted(gpu.gpu_instances, key=lambda g: g.start) if gpu.mig_current else ():
            n = counters[gi.profile] = counters.get(gi.profile, -1) + 1
            slot: dict[str, Any] = {
                "name": "gpu%d-%s-%d" % (gpu.index, _slug(gi.profile), n),
                "profile": gi.profile,
                "placement": gi.start,
            }
            if [c.profile for c in gi.compute_instances] != [gi.profile]:
                slot["compute_instances"] = [
                    {"profile": c.profile_id if c.profile_id is not None else c.profile} for c in gi.compute_instances
                ]
            slots.append(slot)
        entries.append({"gpus": gpu.index, "mig_enabled": gpu.mig_current, "slots": slots})
    return entries
