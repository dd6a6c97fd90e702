# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""gpu.mig metrics collector: per-slot MIG metrics from NVML, as a node_exporter textfile.

Installed by the gpu.mig.monitoring role as ``<lib_dir>/gpu-mig-metrics`` next to the copy of the collection's
``plugins/module_utils/_mig`` that the boot applier runs, which it imports from its own directory only (``--lib-dir``
names another), and run by a systemd timer; its config is read and checked by ``_mig.host_script``. It reads the host as
gpu.mig.mig_facts does (``_nvml.gather``), joins it with the last applied slot map, counts the actions the planner of
gpu.mig.mig_instances would take for the desired layout (``_layout.plan_layout``) and replaces the textfile atomically.
Exit status 0 when every metric was collected, 1 when some could not be (the file says
``gpu_mig_collector_success 0``), 2 when the collector cannot run; each reason is one ``FAILED:`` journal line naming
the GPU or file and the fix, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time
from types import SimpleNamespace

PROG = "gpu-mig-metrics"
# The core's package, installed next to this script (in HERE) by the gpu.mig.mig_persist role's tasks/core.yml.
CORE = "ansible_collections.gpu.mig.plugins.module_utils._mig"
HERE = os.path.dirname(os.path.realpath(__file__))
CORE_MODULES = ("apply", "host_script", "layout", "nvml", "select")
MIB = 1024 * 1024
ROLE_FIX = "rerun the gpu.mig.monitoring role"
LAYOUT_FIX = (
    "correct the desired layout (gpu_mig_layout, or gpu_mig_parted_config_file and gpu_mig_parted_config_name) as"
    " the message says, then rerun the gpu.mig.monitoring role; gpu.mig.mig_layout refuses it as it is, too"
)

# Every series the collector writes: name -> (type, help). The exposition lists the families in this order.
FAMILIES = {
    "gpu_mig_slot_info": (
        "gauge",
        "A slot of the last applied slot map (gpu.mig.mig_layout): the service pinned to it, its profile, placement"
        " start, GPU, GPU instance id (dcgm-exporter's GPU_I_ID, for joining its series) and MIG device. Always 1.",
    ),
    "gpu_mig_slot_present": (
        "gauge",
        "1 when every MIG device of the slot exists, 0 when NVML no longer has one or a service is pinned to a slot"
        " the slot map lacks.",
    ),
    "gpu_mig_slot_memory_used_bytes": ("gauge", "Memory in use on the slot's MIG device (its GPU instance's)."),
    "gpu_mig_slot_memory_total_bytes": ("gauge", "Memory of the slot's MIG device (its GPU instance's)."),
    "gpu_mig_slot_processes": ("gauge", "Compute processes running on the slot's MIG device."),
    "gpu_mig_mode_current": ("gauge", "1 when MIG mode is enabled on the GPU, else 0."),
    "gpu_mig_mode_pending": ("gauge", "1 when MIG mode is enabled on the GPU after its next reset, else 0."),
    "gpu_mig_layout_drift": (
        "gauge",
        "Actions gpu.mig.mig_instances would take on the GPU to apply the desired layout; 0 when it is in place.",
    ),
    "gpu_mig_collector_success": ("gauge", "1 when the last run collected every metric, else 0 (see its journal)."),
    "gpu_mig_collector_last_run_timestamp_seconds": (
        "gauge",
        "When the collector last ran, in seconds since the epoch.",
    ),
}


class Metrics:
    """Samples of the FAMILIES, rendered in the Prometheus text exposition format."""

    def __init__(self):
        self.samples: dict[str, list[tuple[dict, float]]] = {name: [] for name in FAMILIES}

    def add(self, name: str, labels: dict, value: float) -> None:
        self.samples[name].append((labels, value))

    def text(self) -> str:
        lines = []
        for name, (kind, help_text) in FAMILIES.items():
            if not self.samples[name]:
                continue
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
            lines += sorted(_sample(name, labels, value) for labels, value in self.samples[name])
        return "\n".join(lines) + "\n"


def _sample(name: str, labels: dict, value: float) -> str:
    shown = ",".join(f'{key}="{_escape(labels[key])}"' for key in labels)
    return f"{name}{{{shown}}} {_number(value)}" if shown else f"{name} {_number(value)}"


def _escape(value) -> str:
    """A label value as the exposition format quotes it: backslash, double quote and newline escaped."""
    text = "" if value is None else str(value)
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def write_atomically(path: str, text: str) -> None:
    """Replace ``path`` with ``text`` through a temporary file in its directory: node_exporter never reads half a
    file, and the temporary name (a dot first, no .prom last) is one it does not read."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o755, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


# --------------------------------------------------------------------------------------------------- configuration
def _slot_services(value) -> str | None:
    names = isinstance(value, dict) and all(isinstance(v, str) and v for v in [*value, *value.values()])
    return None if names else "must map slot names to service names (non-empty strings)"


def collector(core: SimpleNamespace):
    """The collector's config as the monitoring role writes it: the shared keys and the services pinned to slots."""
    return core.host_script.HostScript(
        fix=ROLE_FIX,
        settings="the collector's settings",
        rules=(core.layout.Rule("slot_services", False, _slot_services),),
    )


# ------------------------------------------------------------------------------------------------------ collection
def mig_devices(gpus: list[dict]) -> dict[str, dict]:
    """MIG device UUID -> its compute instance in the facts (memory, processes)."""
    return {
        ci["uuid"]: ci
        for gpu in gpus
        for gi in gpu["gpu_instances"]
        for ci in gi["compute_instances"]
        if ci.get("uuid")
    }


def slot_uuids(slot: dict) -> list[str | None]:
    """The MIG devices a slot map entry names: one per compute instance (its first is the slot's ``mig_uuid``); None
    for one it names no UUID for (the slot is then not present). The core's check of the slot map reads only the keys
    the planner needs, so these are read defensively."""
    cis = slot.get("compute_instances")
    named = [ci.get("mig_uuid") for ci in cis if isinstance(ci, dict)] if isinstance(cis, list) else []
    return [uuid if isinstance(uuid, str) else None for uuid in named or [slot.get("mig_uuid")]]


def add_slots(metrics: Metrics, slots: dict, services: dict, devices: dict[str, dict]) -> None:
    """Info and presence of every slot of the slot map (and of every slot a service is pinned to); memory and
    processes of each of their MIG devices NVML has."""
    for name in sorted({*slots, *services}):
        slot = slots.get(name)
        if slot is None:
            metrics.add("gpu_mig_slot_present", {"slot": name}, 0)
            continue
        metrics.add(
            "gpu_mig_slot_info",
            {
                "slot": name,
                "service": services.get(name, ""),
                "profile": slot.get("profile"),
                "gpu_index": slot.get("gpu_index"),
                "gpu_uuid": slot.get("gpu_uuid"),
                "gpu_instance_id": slot.get("gpu_instance_id"),
                "mig_uuid": slot.get("mig_uuid"),
                "placement": (slot.get("placement") or {}).get("start"),
            },
            1,
        )
        uuids = slot_uuids(slot)
        metrics.add("gpu_mig_slot_present", {"slot": name}, int(all(uuid in devices for uuid in uuids)))
        for uuid in uuids:
            device = devices.get(uuid)
            if device is None:
                continue
            labels = {"slot": name, "mig_uuid": uuid}
            metrics.add("gpu_mig_slot_memory_used_bytes", labels, device["memory_used_mib"] * MIB)
            metrics.add("gpu_mig_slot_memory_total_bytes", labels, device["memory_mib"] * MIB)
            metrics.add("gpu_mig_slot_processes", labels, len(device["processes"]))


def add_modes(metrics: Metrics, gpus: list[dict]) -> None:
    """MIG mode, current and pending, of every GPU that supports MIG."""
    for gpu in gpus:
        if gpu["mig"]["supported"]:
            labels = {"gpu_index": gpu["index"], "gpu_uuid": gpu["uuid"]}
            metrics.add("gpu_mig_mode_current", labels, int(gpu["mig"]["current"]))
            metrics.add("gpu_mig_mode_pending", labels, int(gpu["mig"]["pending"]))


def add_drift(metrics: Metrics, core: SimpleNamespace, config: dict, gpus: list[dict], previous: dict | None) -> None:
    """Per GPU the desired layout plans: how many actions gpu.mig.mig_instances would take there.

    The desired layout as mig_instances reads it (``_apply.desired_layout``: a mig-parted config converted), planned by
    the planner mig_instances runs (``_layout.plan_layout``, with the slot map as ``previous``), so the count is the
    number of actions mig_instances' check mode lists, also where it would refuse to run them (busy instances, a MIG
    mode change waiting for a reset). Devices a mig-parted config names that the host lacks are left out, as
    mig_instances leaves them out.
    """
    params = {key: config.get(key) for key in ("layout", "mig_parted_config", "mig_parted_config_name")}
    host = core.apply.host_from_facts(gpus)
    desired = core.apply.desired_layout({**params, "state": "present", "gpus": None}, host)
    _facts, states, models = host
    plan = core.layout.plan_layout(desired.layout, states, models, previous)
    for summary in plan.gpus:
        actions = sum(1 for action in plan.actions if action.gpu_index == summary.index)
        metrics.add("gpu_mig_layout_drift", {"gpu_index": summary.index, "gpu_uuid": summary.uuid}, actions)


def collect(config: dict, core: SimpleNamespace, root: str, metrics: Metrics) -> list[str]:
    """Every metric that can be read; returns the problems with the others (each naming the GPU or file and the fix)."""
    problems: list[str] = []
    slot_map_path = root + config["slot_map"]
    try:
        slots = core.apply.read_slot_map(slot_map_path)
    except core.layout.LayoutError as err:
        problems += err.problems
        slots = None
    try:
        facts = core.nvml.gather()
    except core.nvml.NvmlError as err:  # NVML on the host as a whole (gather puts a GPU's failure in its facts)
        facts = {"driver": {"loaded": False, "error": err.msg}, "gpus": []}
    if not facts["driver"]["loaded"]:
        problems.append(facts["driver"]["error"])
    gpus = facts["gpus"]
    problems += [gpu["error"] for gpu in gpus if gpu.get("error")]
    add_slots(metrics, slots or {}, config.get("slot_services") or {}, mig_devices(gpus))
    add_modes(metrics, gpus)
    if facts["driver"]["loaded"] and any(config.get(key) is not None for key in ("layout", "mig_parted_config")):
        try:
            add_drift(metrics, core, config, gpus, slots)
        except (core.layout.LayoutError, core.select.SelectorError) as err:
            found = core.host_script.failure_lines(err)
            problems += [f"layout drift: {problem}" for problem in found] + [f"layout drift: {LAYOUT_FIX}"]
    return problems


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 collected, 1 some metrics missing, 2 cannot run; every failure as FAILED lines, no traceback."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="/etc/gpu-mig/metrics.json", help="collector configuration (JSON)")
    parser.add_argument(
        "--output", default="/var/lib/prometheus/node-exporter/gpu_mig.prom", help="the textfile to replace"
    )
    parser.add_argument("--root", default="", help="prefix for the files read and written (tests); default: /")
    parser.add_argument(
        "--lib-dir", default=HERE, help="directory holding ansible_collections/ (the core); default: this script's"
    )
    args = parser.parse_args(argv)
    root, metrics = args.root.rstrip("/"), Metrics()
    sys.path.insert(0, args.lib_dir)  # first: the core installed there is the only copy imported
    try:
        core = SimpleNamespace(**{name: importlib.import_module(f"{CORE}.{name}") for name in CORE_MODULES})
    except ImportError as err:  # no core, no metrics but these two: the textfile says the collector failed
        status, problems = 2, [f"cannot load the gpu.mig core from {args.lib_dir}: {err}; {ROLE_FIX}"]
    else:
        status, problems = collector(core).run(args.config, root, lambda config: collect(config, core, root, metrics))
    metrics.add("gpu_mig_collector_success", {}, int(status == 0))
    metrics.add("gpu_mig_collector_last_run_timestamp_seconds", {}, round(time.time(), 3))
    try:
        write_atomically(root + args.output, metrics.text())
    except OSError as err:
        status = 2
        problems = [
            *problems,
            f"cannot write {args.output}: {err}; make its directory writable for this unit ({ROLE_FIX})",
        ]
    for problem in problems:  # one journal line each (stderr goes to the journal under systemd)
        print(f"{PROG}: FAILED: {problem}", file=sys.stderr, flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
