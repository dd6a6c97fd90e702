# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Filter ``gpu.mig.preflight_report``: one host's go/no-go verdict, drift and runtime from its facts and probes.

The gpu.mig.preflight role (``tasks/report.yml``) and playbooks/audit.yml both call it: one implementation of the
verdict. Pure: no I/O, it only reads the facts and registered probe results it is given.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ansible.errors import AnsibleFilterError
from ansible.module_utils.compat.version import LooseVersion

from ansible_collections.gpu.mig.plugins.module_utils._mig import catalog as _catalog
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
SELECTOR_FIX = f"correct the layout entry's gpus: {_select.SELECTOR_FORMS} (a product name or arch: fits a mixed fleet)"
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


def _entry_selectors(entry: Mapping) -> list:
    selectors = entry.get("gpus")
    return list(selectors) if isinstance(selectors, (list, tuple)) else [selectors]


def _owner(gpu: Mapping, layout: list) -> Mapping | None:
    """The first layout entry whose selectors pick the GPU (gpu.mig.mig_instances' rule: _select.entry_picks)."""
    return next((e for e in layout if _select.entry_picks(gpu, _entry_selectors(e))), None)


def _per_gpu_names(entry: Mapping, gpus: list) -> bool:
    """Slot names get ``-gpu<index>`` when the entry picks several MIG GPUs of the host (gpu.mig.mig_instances'
    naming, so that drift names the slots the slot map holds)."""
    return sum(1 for g in gpus if g["mig"]["supported"] and _select.entry_picks(g, _entry_selectors(entry))) > 1


def _selector_reasons(layout: list, gpus: list) -> list[dict]:
    """Each entry's malformed selectors, and those naming one GPU that is not here: gpu.mig.mig_instances fails."""
    reasons = []
    for position, entry in enumerate(layout, 1):
        selectors = _entry_selectors(entry)
        whys = ["gpus is empty; name at least one GPU"] if not selectors else []
        whys += [why for why in map(_select.selector_problem, selectors) if why] + [
            f"selector {s!r} names no GPU of this host (present: {_select.describe_gpus(gpus)})"
            for s in _select.missing(gpus, selectors)
            if _select.selector_problem(s) is None
        ]
        reasons += [_reason("fail", f"layout entry {position}", why, SELECTOR_FIX) for why in whys]
    return reasons


def _min_driver(gpu: Mapping, table) -> str | None:
    if gpu.get("min_driver") is not None:
        return gpu["min_driver"]
    return next((m["version"] for m in table if m["match"] in (gpu["name"] or "")), None)


def _drift(gpu: Mapping, entry: Mapping, want_mig: bool, per_gpu: bool) -> tuple[list[str], list[str]]:
    """(drift lines, desired slot names) of one managed MIG GPU."""
    drift: list[str] = []
    names: list[str] = []
    if want_mig != gpu["mig"]["current"]:
        drift.append(f"MIG mode {_on_off(gpu['mig']['current'])}, desired {_on_off(want_mig)}")
    instances = gpu.get("gpu_instances") or []
    used: list = []
    for slot in (entry.get("slots") or []) if want_mig else []:
        name = f"{slot['name']}-gpu{gpu['index']}" if per_gpu else slot["name"]
        names.append(name)
        profile, placement = str(slot["profile"]), slot.get("placement")
        match = next(
            (
                gi
                for gi in instances
                if gi["id"] not in used
                and profile in (gi["profile"], str(gi["profile_id"]))
                and (placement is None or placement == gi["placement"]["start"])
            ),
            None,
        )
        if match is None:
            at = "" if placement is None else f"@{placement}"
            drift.append(f"slot {name} ({slot['profile']}{at}) missing")
        else:
            used.append(match["id"])
    drift.extend(
        f"extra GPU instance {gi['id']} ({gi['profile']}@{gi['placement']['start']})"
        for gi in instances
        if gi["id"] not in used
    )
    return drift, names


def _gpu_row(gpu: Mapping, layout: list, gpus: list, driver: Mapping, resets: Mapping, min_driver) -> dict:
    """One GPU of the report: identity, MIG state, driver minimum, desired layout and drift."""
    entry = _owner(gpu, layout)
    minimum = _min_driver(gpu, min_driver)
    want_mig = entry is not None and entry.get("mig_enabled", True)
    drift: list[str] = []
    names: list[str] = []
    if entry is not None and gpu["mig"]["supported"]:
        drift, names = _drift(gpu, entry, want_mig, _per_gpu_names(entry, gpus))
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
        "managed": entry is not None,
        "desired_mig": want_mig if entry is not None else None,
        "desired_slots": names,
        "layout": "+".join(f"{gi['profile']}@{gi['placement']['start']}" for gi in instances),
        "gpu_instances": len(instances),
        "processes": gpu.get("processes") or [],
        "drift": drift,
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
    if row["managed"] and not mig["supported"]:
        reasons.append(
            _reason(
                "fail",
                where,
                "the layout selects this GPU but it does not support MIG",
                "narrow the layout entry selector to the MIG-capable GPUs (index, UUID, product name or arch:)",
            )
        )
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
) -> dict:
    """The fact ``preflight_report`` of one host from its ``ansible_facts`` (``nvidia_mig`` from gpu.mig.mig_facts;
    distribution, virtualization, kernel and services when the host was probed) and the registered probe results."""
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
    rows = [_gpu_row(g, layout, gpus, driver, resets, min_driver) for g in gpus]
    selector_reasons = _selector_reasons(layout, gpus) if driver.get("loaded") else []

    # The layout concerns this host when it selects one of its GPUs, names one GPU (an index, UUID or bus id: it must
    # be here), or a GPU or the driver could not be read (a selector may mean it); a mixed fleet's product names and
    # arch: that match nothing here leave the host alone (gpu.mig._select's rule).
    managed = bool(layout) and (
        not driver.get("loaded")
        or bool(selector_reasons)
        or any(r["managed"] or r["error"] for r in rows)
        or any(_select.names_one_gpu(s) for e in layout for s in _entry_selectors(e))
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
    elif managed and not any(r["mig"]["supported"] or r["error"] for r in rows):
        models = ", ".join(dict.fromkeys(r["name"] for r in rows)) or "no GPUs"
        reasons.append(
            _reason(
                "fail",
                "host",
                f"a MIG layout is set but no GPU supports MIG ({models})",
                "remove gpu_mig_layout for this host or move it to a group of A100/A30/H100/H200/B200 hosts",
            )
        )
    else:
        reasons.extend(selector_reasons)
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
        "in_sync": not any(r["drift"] for r in rows),
    }


class FilterModule:
    """gpu.mig preflight filters."""

    def filters(self) -> dict:
        return {"preflight_report": preflight_report}
