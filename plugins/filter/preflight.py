# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Filter ``gpu.mig.preflight_report``: one host's go/no-go verdict, drift and runtime from its facts and probes.

The gpu.mig.preflight role (``tasks/report.yml``) and playbooks/audit.yml both call it: one implementation of the
verdict. Pure: no I/O, it only reads the facts and registered probe results it is given.

Drift and ``in_sync`` are gpu.mig.mig_instances' own plan, made as its action plugin makes it (``_apply.host_from_facts``
and ``_apply.apply_layout`` in check mode, with the last applied slot map ``nvidia_mig.slot_map`` that gpu.mig.mig_facts
read from ``slot_map_file`` as the previous slots): a host is in sync exactly when mig_instances would change nothing,
and a GPU's drift lists what it would change there. What mig_instances refuses becomes a reason (where ``layout``):

- ``fail``, no drift: a layout refused as it stands (malformed, unknown profile or compute profile, bad or overlapping
  placement, infeasible, a selector naming a GPU that is not here or cannot be read, a GPU without MIG selected, a
  slot name used twice); no earlier role can fix it.
- ``fail`` with drift: instances to destroy that processes hold, unless ``force`` (the mig_layout role's
  ``mig_layout_force``) lets mig_instances terminate them: then ``warn``.
- ``warn`` with drift: a MIG mode change that mig_instances cannot make itself (it waits for a GPU reset, or for the
  processes holding the GPU): the gpu.mig.mig_mode role makes it, and site.yml runs it before mig_layout.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NamedTuple

from ansible.errors import AnsibleFilterError
from ansible.module_utils.compat.version import LooseVersion

from ansible_collections.gpu.mig.plugins.module_utils._mig import apply as _apply
from ansible_collections.gpu.mig.plugins.module_utils._mig import catalog as _catalog
from ansible_collections.gpu.mig.plugins.module_utils._mig import layout as _layout
from ansible_collections.gpu.mig.plugins.module_utils._mig import migparted as _migparted
from ansible_collections.gpu.mig.plugins.module_utils._mig import select as _select

# The gpu.mig.preflight role's defaults (roles/preflight/defaults/main.yml, vars/main.yml): used when the caller
# passes none, as the audit does for hosts that do not override them. A unit test keeps them equal. Minimum drivers
# come from the MIG catalog (_catalog.min_driver_table); the caller's entries are checked before it.
MIN_TOOLKIT_CDI = "1.12.0"
RESET_BLOCKER_UNITS = (
    "nvidia-persistenced.service",
    "nvidia-fabricmanager.service",
    "nvidia-dcgm.service",
    "dcgm-exporter.service",
    "nvsm.service",
)
CONTAINER_TYPES = ("podman", "docker", "container", "containerd", "lxc", "systemd-nspawn", "openvz", "wsl")

NO_FACTS = {"loaded": False, "error": "no NVML facts"}
LAYOUT_FIX = "correct the layout as the message says: gpu.mig.mig_instances refuses it as it is, and changes nothing"
BUSY_FIX = (
    "stop those processes (or the services that own them), or set mig_layout_force: true to let"
    " gpu.mig.mig_instances terminate them"
)
FORCED_FIX = "mig_layout_force is set: gpu.mig.mig_instances terminates these processes (SIGTERM, then SIGKILL)"
MODE_FIX = "the gpu.mig.mig_mode role makes this change (site.yml runs it before mig_layout); then the layout applies"
MIG_PARTED_FIX = (
    "correct the mig-parted config (gpu_mig_parted_config_file) or its name (gpu_mig_parted_config_name) as the"
    " message says: gpu.mig.mig_instances refuses it as it is, and changes nothing"
)
BOTH_FIX = "give the desired layout one way: unset gpu_mig_layout or gpu_mig_parted_config_file for this host"
FAILED_GPU_FIX = "follow the remedy in the message, then gather facts again; the host's other GPUs are read as usual"
_CTK_VERSION_RE = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+")


def _version_ge(version, minimum) -> bool:
    """``version is version(minimum, '>=')`` as Ansible's test computes it (loose versions)."""
    try:
        return LooseVersion(str(version)) >= LooseVersion(str(minimum))
    except (TypeError, ValueError) as exc:  # LooseVersion: TypeError comparing 1.2a with 1.2.3
        raise AnsibleFilterError(f"cannot compare version {version!r} with {minimum!r}: {exc}") from exc


def _on_off(value) -> str:
    return "on" if value else "off"


def _mapping(value) -> Mapping:
    """A registered result or fact dict, or {} for None, a missing probe or a skipped one."""
    return value if isinstance(value, Mapping) else {}


def _stat_exists(result) -> bool:
    return bool(_mapping(_mapping(result).get("stat")).get("exists", False))


class _Planned(NamedTuple):
    """gpu.mig.mig_instances' plan of a host (its check mode), and what it refuses."""

    actions: list  # the plan's actions (Action.to_dict), in the order mig_instances runs them
    gpus: dict  # GPU index -> the plan's summary of that GPU (GpuPlan.to_dict), for each GPU the layout plans
    slots: dict  # slot name -> where it lives (apply.slot_map)
    refused: list  # why mig_instances refuses the layout itself
    busy: list  # instances to destroy that processes hold
    waits: list  # MIG mode changes that mig_instances leaves to gpu.mig.mig_mode


NOT_PLANNED = _Planned([], {}, {}, [], [], [])


def _planned(layout: list, gpus: list, previous) -> _Planned:
    """The plan of the gpu.mig.mig_instances action plugin: ``apply_layout`` in check mode on ``host_from_facts``,
    with ``previous`` (the slot map from the facts, or None) as the last applied slot map.

    Planned with ``force`` so that busy instances come back as messages rather than a refusal. apply_layout refuses
    after planning only a MIG mode change that waits for a GPU reset or for processes holding the GPU: then the
    layout is planned without that check (``plan_layout``, the planner apply_layout calls) to report the drift, and a
    layout refused before planning is refused again there.
    """
    try:
        host = _apply.host_from_facts(gpus)
    except (KeyError, TypeError, ValueError, AttributeError) as err:  # facts not written by gpu.mig.mig_facts
        why = f"the NVML facts lack what mig_instances plans from ({type(err).__name__}: {err})"
        return NOT_PLANNED._replace(
            refused=[f"{why}; gather them again with gpu.mig.mig_facts (not from a fact cache)"]
        )
    try:
        done = _apply.apply_layout(None, layout, force=True, check_mode=True, host=host, previous_slots=previous)
    except _layout.LayoutError as err:
        waits = list(err.problems)
    else:
        plan = done["plan"]
        return _Planned(plan["actions"], {g["index"]: g for g in plan["gpus"]}, done["slots"], [], done["warnings"], [])
    facts, states, models = host
    try:
        plan = _layout.plan_layout(layout, states, models, previous)
    except _layout.LayoutError as err:
        return NOT_PLANNED._replace(refused=list(err.problems))
    return _Planned(
        [a.to_dict() for a in plan.actions],
        {g.index: g.to_dict() for g in plan.gpus},
        _apply.slot_map(plan, facts),
        [],
        list(_layout.check_busy(plan, force=True)),
        waits,
    )


def _from_mig_parted(config, name, gpus: list, loaded: bool) -> tuple[list, list[str], list[str]]:
    """(layout entries, refusals, notes) of a mig-parted config on this host, converted as gpu.mig.mig_instances
    converts it (``_migparted.layout_from_mig_parted``). Without NVML the GPUs it selects are unknown: one entry stands
    for them, so that the host counts as managed and is blocked for the missing driver, as a host given a layout is."""
    if not loaded:
        return [{"gpus": "all", "slots": []}], [], []
    try:
        _facts, states, models = _apply.host_from_facts(gpus)
    except (KeyError, TypeError, ValueError, AttributeError):
        return [{"gpus": "all", "slots": []}], [], []  # _planned refuses these facts, naming the fix
    try:
        converted = _migparted.layout_from_mig_parted(config, name, states, models)
    except _layout.LayoutError as err:
        return [], list(err.problems), []
    return converted.entries, [], [*converted.skipped, *converted.warnings]


def _drift_line(action: Mapping, mig: Mapping, destroyed: set, slots: Mapping) -> str | None:
    """One action of the plan as the report says it (slot, GPU instance, profile, placement); None for the compute
    instances of a GPU instance created or destroyed, which that instance's line covers."""
    op, slot, start = action["op"], action["slot"], (action["placement"] or {}).get("start")
    if op == _layout.MIG_MODE:
        pending = "" if mig["pending"] == mig["current"] else f" (pending {_on_off(mig['pending'])})"
        return f"MIG mode {_on_off(mig['current'])}{pending}, desired {_on_off(action['enable'])}"
    if op == _layout.DESTROY_GI:
        instance = f"GPU instance {action['gi_id']} ({action['profile']}@{start})"
        return f"extra {instance}" if slot is None else f"{instance} is in the way of slot {slot}"
    if op == _layout.CREATE_GI:
        return f"slot {slot} ({action['profile']}@{start}) missing"
    if action["gi_id"] is None or action["gi_id"] in destroyed:
        return None
    where = f"slot {slot} ({slots[slot]['profile']}@{start}, GPU instance {action['gi_id']})"
    if op == _layout.DESTROY_CI:
        return f"{where}: extra compute instance {action['ci_id']} ({action['profile']})"
    return f"{where}: compute instance {action['ci_name']} ({action['profile']}) missing"


def _drift(gpu: Mapping, planned: _Planned) -> list[str]:
    """What mig_instances would change on one GPU, in the order it would."""
    actions = [a for a in planned.actions if a["gpu_index"] == gpu["index"]]
    destroyed = {a["gi_id"] for a in actions if a["op"] == _layout.DESTROY_GI}
    lines = (_drift_line(a, gpu["mig"], destroyed, planned.slots) for a in actions)
    return [line for line in lines if line]


def _min_driver(gpu: Mapping, table) -> str | None:
    if gpu.get("min_driver") is not None:
        return gpu["min_driver"]
    return next((m["version"] for m in table if m["match"] in (gpu["name"] or "")), None)


def _gpu_row(gpu: Mapping, layout: list, planned: _Planned, driver: Mapping, resets: Mapping, min_driver) -> dict:
    """One GPU of the report: identity, MIG state, driver minimum, desired layout and drift (from the plan)."""
    minimum = _min_driver(gpu, min_driver)
    summary = planned.gpus.get(gpu["index"])
    instances = gpu.get("gpu_instances") or []
    return {
        "index": gpu["index"],
        "name": gpu["name"],
        "uuid": gpu["uuid"],
        "pci_bus_id": gpu["pci_bus_id"],
        "architecture": gpu.get("architecture", "unknown"),
        "compute_capability": gpu.get("compute_capability"),
        "memory": gpu.get("memory"),
        "mig": gpu["mig"],
        "min_driver": minimum,
        "driver_ok": minimum is None or _version_ge(driver.get("driver_version") or "0", minimum),
        "reset_available": resets.get(str(gpu["index"])),
        "managed": any(_select.entry_picks(gpu, entry.get("gpus")) for entry in layout),
        "desired_mig": summary["mig_enabled"]["after"] if summary else None,
        "desired_slots": [name for name, slot in planned.slots.items() if slot["gpu_index"] == gpu["index"]],
        "layout": "+".join(f"{gi['profile']}@{gi['placement']['start']}" for gi in instances),
        "gpu_instances": len(instances),
        "processes": gpu.get("processes") or [],
        "drift": _drift(gpu, planned),
        "error": gpu.get("error"),
    }


def _reset_files(result) -> dict:
    """GPU index (text) -> whether sysfs has its reset file, from the registered stat loop."""
    return {
        str(_mapping(r.get("item")).get("index")): _mapping(r["stat"]).get("exists")
        for r in _mapping(result).get("results") or []
        if isinstance(r, Mapping) and isinstance(r.get("stat"), Mapping)
    }


def _runtime_kind(probed: bool, facts: Mapping, container_types) -> str:
    if not probed:
        return "unknown"
    if facts.get("virtualization_role", "NA") == "guest":
        return "container" if facts.get("virtualization_type", "NA") in container_types else "vm"
    return "bare-metal"


def _toolkit_version(ctk) -> str | None:
    """The NVIDIA Container Toolkit version from ``nvidia-ctk --version`` (registered), None when it did not run."""
    ctk = _mapping(ctk)
    if ctk.get("rc", 1) != 0:
        return None
    found = _CTK_VERSION_RE.search(str(ctk.get("stdout") or ""))
    return found.group() if found else None


def _reason(level: str, where: str, msg: str, fix: str) -> dict:
    return {"level": level, "where": where, "msg": msg, "fix": fix}


def _gpu_reasons(row: Mapping, managed: bool, driver: Mapping, blockers: list, kind: str) -> list[dict]:
    where = f"GPU {row['index']} ({row['name']}, {row['uuid']})"
    if row["error"]:  # NVML could not read the GPU: blocking only when the layout selects it (by index)
        return [_reason("fail" if row["managed"] else "warn", f"GPU {row['index']}", row["error"], FAILED_GPU_FIX)]
    mig = row["mig"]
    reasons = []
    if mig["supported"] and not row["driver_ok"]:
        reasons.append(
            _reason(
                "fail" if managed else "warn",
                where,
                f"driver {driver.get('driver_version')} is older than {row['min_driver']}, the minimum for MIG on"
                " this model",
                f"upgrade the NVIDIA driver to {row['min_driver']} or later and reboot",
            )
        )
    if mig["supported"] and mig["current"] != mig["pending"]:
        reasons.append(
            _reason(
                "warn",
                where,
                f"MIG mode change pending ({_on_off(mig['pending'])})",
                "stop the GPU clients and reset the GPU (gpu.mig.mig_mode role), or reboot",
            )
        )
    if (
        row["managed"]
        and row["desired_mig"]
        and mig["supported"]
        and not mig["pending"]
        and row["architecture"] == "ampere"
    ):
        why = [f"pid {p['pid']}" for p in row["processes"]] + list(blockers)
        if row["reset_available"] is False and kind == "vm":
            why.append("no GPU reset in this VM (pass-through)")
        reasons.append(
            _reason(
                "warn",
                where,
                "enabling MIG on Ampere needs a GPU reset" + (f": blocked by {', '.join(why)}" if why else ""),
                "list the GPU clients in mig_mode_clients, or set mig_mode_allow_reboot: true for VMs without reset",
            )
        )
    return reasons


def preflight_report(
    ansible_facts,
    host: str,
    layout=None,
    reset_files=None,
    nvidia_drm=None,
    kubelet=None,
    ctk=None,
    min_driver=None,
    min_toolkit_cdi=None,
    reset_blocker_units=None,
    container_types=None,
    force=False,
    mig_parted_config=None,
    mig_parted_config_name=None,
) -> dict:
    """The fact ``preflight_report`` of one host from its ``ansible_facts`` (``nvidia_mig`` from gpu.mig.mig_facts,
    with ``slot_map`` when it read one; distribution, virtualization, kernel and services when the host was probed) and
    the registered probe results.

    ``force``: mig_instances will run with force (the mig_layout role's ``mig_layout_force``), so busy instances in
    its way only warn. ``mig_parted_config`` (parsed) and ``mig_parted_config_name`` give the desired layout instead of
    ``layout``, converted for this host's GPUs as mig_instances converts them; a config it refuses is a ``fail``
    reason, devices it skips and overlaps it resolves are ``info``."""
    facts = _mapping(ansible_facts)
    layout = [] if layout is None else layout
    if not isinstance(layout, (list, tuple)) or not all(isinstance(e, Mapping) for e in layout):
        raise AnsibleFilterError(f"preflight_report: layout must be a list of entries (mappings), not {layout!r}")
    min_driver = [*(min_driver or ()), *_catalog.min_driver_table()]
    min_cdi = MIN_TOOLKIT_CDI if min_toolkit_cdi is None else min_toolkit_cdi
    units = RESET_BLOCKER_UNITS if reset_blocker_units is None else reset_blocker_units
    container_types = CONTAINER_TYPES if container_types is None else container_types

    nvidia_mig = facts.get("nvidia_mig")
    nvidia_mig = nvidia_mig if isinstance(nvidia_mig, Mapping) else {"driver": NO_FACTS, "gpus": []}
    driver = _mapping(nvidia_mig.get("driver"))
    gpus = list(nvidia_mig.get("gpus") or [])
    resets = _reset_files(reset_files)
    wanted = bool(layout) or mig_parted_config is not None
    both = bool(layout) and mig_parted_config is not None
    refused: list[str] = []
    notes: list[str] = []
    if mig_parted_config is not None:
        layout, refused, notes = _from_mig_parted(
            mig_parted_config, mig_parted_config_name, gpus, bool(driver.get("loaded"))
        )
    if refused:
        planned = NOT_PLANNED._replace(refused=refused)
    elif driver.get("loaded"):
        planned = _planned(list(layout), gpus, nvidia_mig.get("slot_map"))
    else:
        planned = NOT_PLANNED
    rows = [_gpu_row(g, layout, planned, driver, resets, min_driver) for g in gpus]

    # The layout concerns this host when it selects one of its GPUs, when mig_instances refuses it here (a selector
    # naming one GPU that is not here, say), or when a GPU or the driver could not be read (a selector may mean it);
    # a mixed fleet's product names and arch: that match nothing here leave the host alone (gpu.mig._select's rule).
    managed = wanted and (
        both or not driver.get("loaded") or bool(planned.refused) or any(r["managed"] or r["error"] for r in rows)
    )
    probed = "distribution" in facts
    services = _mapping(facts.get("services"))
    blockers = [u for u in units if _mapping(services.get(u)).get("state", "") == "running"]
    if _stat_exists(nvidia_drm):
        blockers.append("nvidia_drm kernel module")
    kube = _stat_exists(kubelet) or _mapping(services.get("kubelet.service")).get("state", "") == "running"
    kind = _runtime_kind(probed, facts, container_types)
    toolkit = _toolkit_version(ctk)
    toolkit_cdi = toolkit is not None and _version_ge(toolkit, min_cdi)

    reasons = []
    if not driver.get("loaded"):
        reasons.append(
            _reason(
                "fail" if managed else "info",
                "host",
                f"NVML is not available: {driver.get('error')}",
                "install and load the NVIDIA driver, and nvidia-ml-py for the Python that runs the modules",
            )
        )
    elif planned.refused and not any(r["mig"]["supported"] or r["error"] for r in rows):
        models = ", ".join(dict.fromkeys(r["name"] for r in rows)) or "no GPUs"
        reasons.append(
            _reason(
                "fail",
                "host",
                f"a MIG layout is set but no GPU supports MIG ({models})",
                "remove gpu_mig_layout for this host or move it to a group of A100/A30/H100/H200/B200 hosts",
            )
        )
    if both:
        reasons.append(_reason("fail", "layout", "both a layout and a mig-parted config are given", BOTH_FIX))
    fix = LAYOUT_FIX if mig_parted_config is None else MIG_PARTED_FIX
    reasons.extend(_reason("fail", "layout", why, fix) for why in planned.refused)
    reasons.extend(
        _reason("info", "layout", note, "none needed: mig-parted applies one file to a fleet") for note in notes
    )
    reasons.extend(
        _reason("warn" if force else "fail", "layout", why, FORCED_FIX if force else BUSY_FIX) for why in planned.busy
    )
    reasons.extend(_reason("warn", "layout", why, MODE_FIX) for why in planned.waits)
    for row in rows:
        reasons.extend(_gpu_reasons(row, managed, driver, blockers, kind))
    if probed and managed and not toolkit_cdi:
        reasons.append(
            _reason(
                "warn",
                "host",
                f"NVIDIA Container Toolkit {toolkit} cannot generate CDI specs"
                if toolkit
                else "NVIDIA Container Toolkit not found: no CDI spec",
                f"install nvidia-container-toolkit {min_cdi} or later to run slots in containers",
            )
        )

    levels = {r["level"] for r in reasons}
    verdict = "skip" if not managed else "blocked" if "fail" in levels else "warn" if "warn" in levels else "ready"
    reset_known = [r["reset_available"] for r in rows if r["reset_available"] is not None]
    return {
        "host": host,
        "verdict": verdict,
        "reasons": reasons,
        "driver": driver,
        "os": f"{facts['distribution']} {facts.get('distribution_version')}" if probed else None,
        "kernel": facts.get("kernel"),
        "runtime": {
            "kind": kind,
            "virtualization_type": facts.get("virtualization_type", "NA") if probed else None,
            "gpu_reset": all(reset_known) if reset_known else None,
            "kubernetes": kube,
        },
        "toolkit": {"version": toolkit, "cdi": toolkit_cdi},
        "reset_blockers": blockers,
        "gpus": rows,
        # mig_instances would change nothing: no layout, or one it plans here without a single action.
        "in_sync": not wanted or (bool(driver.get("loaded")) and not planned.refused and not planned.actions),
    }


class FilterModule:
    """gpu.mig preflight filters."""

    def filters(self) -> dict:
        return {"preflight_report": preflight_report}
