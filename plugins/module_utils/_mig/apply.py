# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Apply a MIG layout through NVML: plan, refuse unsafe plans, execute, restore on failure (PRIVATE to the collection).

Shared by the ``mig_instances`` module and the boot applier, so both run exactly the same code.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import NamedTuple

from ansible_collections.gpu.mig.plugins.module_utils._mig import catalog as _catalog
from ansible_collections.gpu.mig.plugins.module_utils._mig import layout as _layout
from ansible_collections.gpu.mig.plugins.module_utils._mig import mode as _mode
from ansible_collections.gpu.mig.plugins.module_utils._mig import nvml as _nvml
from ansible_collections.gpu.mig.plugins.module_utils._mig import select as _select


class ApplyError(Exception):
    """The layout could not be applied; ``result`` says what was done and what state was left behind."""

    def __init__(self, msg: str, result: dict):
        super().__init__(msg)
        self.msg = msg
        self.result = result


def live_model(gpu: dict, shipped: _catalog.GpuModel | None) -> _catalog.GpuModel:
    """The GPU's catalog as NVML reported it in the facts; compute profiles come from ``shipped`` when known."""
    shipped_cis = {p.id: p.compute_profiles for p in shipped.profiles} if shipped else {}
    profiles = tuple(
        _catalog.GpuInstanceProfile(
            id=p["id"],
            nvml_index=p["nvml_index"],
            name=p["name"],
            compute_slices=p["slices"],
            memory_slices=p["memory_slices"],
            memory_mib=p["memory_mib"],
            sm_count=p["sm_count"],
            max_instances=p["total"],
            placement_starts=tuple(p["placement_starts"]),
            placement_size=p["memory_slices"],
            copy_engines=p["copy_engines"],
            decoders=p["decoders"],
            encoders=p["encoders"],
            jpeg=p["jpeg"],
            ofa=p["ofa"],
            compute_profiles=shipped_cis.get(p["id"], ()),
        )
        for p in gpu["profiles"]
    )
    major, minor = (int(x) for x in gpu["compute_capability"].split("."))
    return _catalog.GpuModel(
        name=gpu["name"],
        architecture=gpu["architecture"],
        compute_capability=(major, minor),
        memory_mib=gpu["memory"]["total_mib"],
        memory_slices=max((s + p.placement_size for p in profiles for s in p.placement_starts), default=0),
        compute_slices=max((p.compute_slices for p in profiles), default=0),
        max_gpu_instances=max((p.max_instances for p in profiles), default=0),
        mig_enable_requires_reset=gpu["architecture"] in _mode.RESET_ARCHITECTURES,
        mig_mode_persists_reboot=gpu["architecture"] in _mode.RESET_ARCHITECTURES,
        min_driver=shipped.min_driver if shipped else "0",
        profiles=profiles,
    )


def read_host(nvml: _nvml.Nvml) -> tuple[list[dict], list[_layout.GpuState], dict]:
    """Facts, planner states and catalog models (live from NVML, shipped data when MIG is off) of every GPU."""
    return host_from_facts([nvml.gpu_or_failure(i) for i in range(nvml.count())])


def host_from_facts(facts: list[dict]) -> tuple[list[dict], list[_layout.GpuState], dict]:
    """``read_host`` from facts already read (``nvidia_mig.gpus`` of gpu.mig.mig_facts)."""
    models = {}
    for gpu in facts:
        if not gpu["mig"]["supported"]:  # also a GPU that could not be read (its facts carry "error")
            models[gpu["index"]] = None
            continue
        shipped = _catalog.find_model(gpu["name"])
        live = live_model(gpu, shipped)
        models[gpu["index"]] = (
            live if live.profiles and any(p.compute_profiles for p in live.profiles) else shipped or live
        )
    return facts, [_layout.gpu_state_from_facts(g) for g in facts], models


MIG_INSTANCES_ARGS = {
    "argument_spec": {
        "layout": {"type": "list", "elements": "dict"},
        "mig_parted_config": {"type": "dict"},
        "mig_parted_config_file": {"type": "str"},
        "mig_parted_config_name": {"type": "str"},
        "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
        "gpus": {"type": "list", "elements": "str"},
        "force": {"type": "bool", "default": False},
        "force_grace": {"type": "int", "default": 10},
        "slot_map_file": {"type": "path"},
    },
    "mutually_exclusive": [("layout", "mig_parted_config", "mig_parted_config_file")],
    "required_if": [("state", "present", ("layout", "mig_parted_config", "mig_parted_config_file"), True)],
    "required_by": {"mig_parted_config": "mig_parted_config_name", "mig_parted_config_file": "mig_parted_config_name"},
}
"""The options of gpu.mig.mig_instances, shared by the module and its action plugin."""

CONFIG_SOURCES = ("layout", "mig_parted_config", "mig_parted_config_file")


class DesiredLayout(NamedTuple):
    """The layout to apply, with what its source left out: device indices the host lacks and the warnings."""

    layout: list
    skipped: list
    warnings: list


def _contradictions(params: dict) -> list[str]:
    """Options that contradict each other: each would otherwise be silently ignored, with instances destroyed."""
    problems = []
    if params.get("mig_parted_config_name") is not None and not any(
        params.get(key) is not None for key in ("mig_parted_config", "mig_parted_config_file")
    ):
        problems.append(
            "mig_parted_config_name names a config of mig_parted_config or mig_parted_config_file, and neither is"
            " given: give one of them, or drop mig_parted_config_name"
        )
    if params["state"] == "absent":
        given = [key for key in CONFIG_SOURCES if params.get(key) is not None]
        problems.extend(
            "state=absent removes every instance on the GPUs in 'gpus' and takes no %s; drop %s to clear GPUs, or use"
            " state=present to apply it" % (key, key)
            for key in given
        )
    elif params.get("gpus") is not None:
        problems.append(
            "'gpus' selects the GPUs to clear with state=absent only; with state=present each layout entry selects"
            " its GPUs (layout: [{gpus: ..., slots: [...]}]): drop 'gpus'"
        )
    return problems


def desired_layout(params: dict, host: tuple) -> DesiredLayout:
    """The layout mig_instances applies: as given, converted from mig-parted, or 'no instances' for state=absent;
    with the device indices a mig-parted config names that the host lacks (skipped) and the converter's warnings.

    Raises LayoutError when options contradict each other (``state: absent`` with a layout, ``gpus`` with
    ``state: present``), before anything is read into a plan.
    """
    _layout.raise_if(_contradictions(params))
    facts, states, models = host
    if params["state"] == "absent":
        selected = [g for g in _select.select_gpus(facts, params["gpus"] or ["all"]) if g["mig"]["current"]]
        return DesiredLayout([{"gpus": g["uuid"], "slots": []} for g in selected], [], [])
    if params.get("mig_parted_config_file") is not None:
        raise _layout.LayoutError(
            [
                "mig_parted_config_file %s is a file on the controller, which the gpu.mig.mig_instances action reads;"
                " this module ran without it: run the task through Ansible, or pass the parsed file as"
                " mig_parted_config" % params["mig_parted_config_file"]
            ]
        )
    if params["mig_parted_config"] is not None:
        # Imported here: the module compiles every module_utils it imports on each run, and only this path needs it.
        from ansible_collections.gpu.mig.plugins.module_utils._mig import migparted as _migparted

        converted = _migparted.layout_from_mig_parted(
            params["mig_parted_config"], params["mig_parted_config_name"], states, models
        )
        return DesiredLayout(list(converted.entries), list(converted.skipped), list(converted.warnings))
    return DesiredLayout(params["layout"], [], [])


def read_slot_map(path: str | None) -> dict | None:
    """The last applied slot map at ``path`` on this host (JSON, as the roles write it), checked by
    ``_layout.slot_history``; None when no path is given or the file does not exist. LayoutError naming the file,
    every problem and the fix when it cannot be read or is not a slot map."""
    if path is None:
        return None
    try:
        with open(path, "rb") as stream:
            data = stream.read()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise _layout.LayoutError(
            [
                "slot_map_file %s cannot be read (%s); run the task as a user that can read it (become: true), or point"
                " slot_map_file at the slot map the mig_layout role writes" % (path, err.strerror or err)
            ]
        ) from err
    fix = (
        "slot_map_file %s must be the JSON slot map the mig_layout role writes (slot name -> {gpu_uuid, profile,"
        " placement: {start}}): repair it, or remove it to apply the layout without history (look-alike slots may"
        " then swap instances)" % path
    )
    try:
        previous = json.loads(data.decode("utf-8"))
    except ValueError as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise _layout.LayoutError(["slot_map_file %s is not JSON (%s)" % (path, err), fix]) from err
    try:
        _layout.slot_history(previous)
    except _layout.LayoutError as err:
        raise _layout.LayoutError(["slot_map_file %s: %s" % (path, p) for p in err.problems] + [fix]) from err
    return previous


def module_returns(result: dict, driver: dict, diff: bool, desired: DesiredLayout) -> dict:
    """mig_instances' return values from an apply_layout result and the ``desired_layout`` it applied; the
    before/after rendering only in diff mode."""
    gpus = result["facts"]
    returns = {
        "changed": result["changed"],
        "slots": result["slots"],
        "plan": result["plan"],
        "restored": result["restored"],
        "restore_changes": result["restore_changes"],
        "warnings_busy": result["warnings"],
        "skipped_devices": desired.skipped,
        "ansible_facts": {"nvidia_mig": {"driver": driver, "gpus": gpus, "summary": _nvml.summarize(gpus)}},
    }
    warnings = desired.skipped + desired.warnings + result["unread_gpus"]
    if warnings:
        returns["warnings"] = warnings
    if diff:
        returns["diff"] = result["diff"]
    return returns


def _after_destroys(gpu: dict, plan: _layout.Plan) -> dict:
    """``gpu``'s facts as the plan leaves it before its mode changes: destroyed GPU instances and the processes
    that held them (terminated with force; a plan destroying busy instances is refused otherwise) are gone."""
    destroys = [
        a for a in plan.actions if a.gpu_index == gpu["index"] and a.op in (_layout.DESTROY_CI, _layout.DESTROY_GI)
    ]
    gone = {a.gi_id for a in destroys if a.op == _layout.DESTROY_GI}
    freed = {pid for a in destroys for pid in a.busy_pids}
    return dict(
        gpu,
        gpu_instances=[gi for gi in gpu["gpu_instances"] if gi["id"] not in gone],
        processes=[p for p in gpu["processes"] if p["pid"] not in freed],
    )


def _mode_problems(plan: _layout.Plan, facts: list[dict]) -> list[str]:
    """MIG mode changes that NVML would refuse or leave pending (Ampere: gpu.mig.mig_mode with reset must run
    first), judged on each GPU as the plan leaves it: MIG is disabled after its instances are destroyed."""
    by_index = {g["index"]: g for g in facts}
    problems = []
    for action in plan.actions:
        if action.op != _layout.MIG_MODE:
            continue
        try:
            step = _mode.plan_gpu(_after_destroys(by_index[action.gpu_index], plan), action.enable, reset=False)
        except _mode.ModeError as err:
            problems.append(str(err))
            continue
        if step.pending_reset:
            problems.append(step.pending_message())
    return problems


def _execute(nvml: _nvml.Nvml, plan: _layout.Plan, created: dict[tuple[str | None, str | None], int]) -> None:
    """Run the plan's actions in order; compute instances of new GIs find their GI by placement.

    ``created`` receives the id NVML gives each new compute instance, keyed by (slot, compute-instance name), also
    when a later action fails.
    """
    new_gi: dict[tuple[int, int, int], int] = {}
    for action in plan.actions:
        index = action.gpu_index
        if action.op == _layout.DESTROY_CI:
            nvml.destroy_compute_instance(index, action.gi_id, action.ci_id)
        elif action.op == _layout.DESTROY_GI:
            nvml.destroy_gpu_instance(index, action.gi_id)
        elif action.op == _layout.MIG_MODE:
            nvml.set_mig_mode(index, action.enable)
            if nvml.mig_mode(index)["current"] != action.enable:
                raise _nvml.NvmlError(
                    f"{nvml.label(index)}: MIG mode change is pending a GPU reset; run gpu.mig.mig_mode with reset: true"
                )
        elif action.op == _layout.CREATE_GI:
            start, size = action.placement
            new_gi[(index, action.profile_id, start)] = nvml.create_gpu_instance(index, action.profile_id, start, size)
        else:
            gi_id = action.gi_id
            if gi_id is None:
                gi_id = new_gi[(index, action.gi_profile_id, action.placement[0])]
            # Compute-instance profile ids equal their NVML_COMPUTE_INSTANCE_PROFILE_* index.
            created[(action.slot, action.ci_name)] = nvml.create_compute_instance(index, gi_id, action.profile_id)


def _terminate(nvml: _nvml.Nvml, plan: _layout.Plan, grace: float) -> None:
    """force: SIGTERM the processes holding instances to destroy, SIGKILL after ``grace`` s, until NVML drops them."""
    gpus = sorted({a.gpu_index for a in plan.actions if a.busy_pids})
    pids = sorted({pid for a in plan.actions for pid in a.busy_pids})
    alive = pids
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        for pid in alive:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
            except PermissionError as err:
                raise _nvml.NvmlError(
                    f"force: cannot signal process {pid} ({err}); run the task as root (become: true)"
                ) from err
        deadline = time.monotonic() + wait
        while alive and time.monotonic() < deadline:
            time.sleep(0.05)
            held = {p["pid"] for index in gpus for p in nvml.gpu(index)["processes"]}
            alive = [pid for pid in alive if pid in held]
        if not alive:
            return
    raise _nvml.NvmlError(
        f"force: processes {alive} still hold their MIG instances after SIGKILL; nothing was destroyed"
    )


def slot_map(
    plan: _layout.Plan, facts: list[dict], created: dict[tuple[str | None, str | None], int] | None = None
) -> dict[str, dict]:
    """Slot name -> where it lives, with the MIG device UUID of each compute instance in the layout's order.

    ``facts`` is the host after the run, ``created`` the ids of the compute instances it created. In check mode
    (``facts`` from before, nothing created) instances still to be created have no id or UUID yet: the same map a real
    run returns, with None wherever NVML has yet to hand out an id or UUID.
    """
    by_index = {g["index"]: g for g in facts}
    created = created or {}
    slots = {}
    for slot in plan.slots:
        gpu = by_index[slot.gpu_index]
        gi = next(
            (
                g
                for g in gpu["gpu_instances"]
                if g["profile_id"] == slot.profile_id and g["placement"]["start"] == slot.start
            ),
            None,
        )
        have = {c["id"]: c for c in gi["compute_instances"]} if gi else {}
        cis = []
        for want in slot.compute_instances:
            ci = have.get(want.ci_id if want.ci_id is not None else created.get((slot.name, want.name)))
            cis.append(
                {
                    "name": want.name,
                    "id": ci["id"] if ci else None,
                    "profile": ci["profile"] if ci else want.profile,
                    "mig_uuid": ci["uuid"] if ci else None,
                }
            )
        memory = (
            gi["memory_mib"] if gi else next(p["memory_mib"] for p in gpu["profiles"] if p["id"] == slot.profile_id)
        )
        slots[slot.name] = {
            "gpu_index": slot.gpu_index,
            "gpu_uuid": slot.gpu_uuid,
            "gpu_name": gpu["name"],
            "profile": slot.profile,
            "placement": {"start": slot.start, "size": slot.size},
            "gpu_instance_id": gi["id"] if gi else None,
            "compute_instance_id": cis[0]["id"] if cis else None,
            "mig_uuid": cis[0]["mig_uuid"] if cis else None,
            "memory_mib": memory,
            "compute_instances": cis,
        }
    return slots


def _restore(nvml: _nvml.Nvml, states: list[_layout.GpuState]) -> str | None:
    """Bring the host back to the layout found at the start (``states``); None when done, else why not."""
    try:
        _facts, now, models = read_host(nvml)
        _execute(nvml, _layout.plan_layout(_layout.layout_from_state(states), now, models), {})
    except (_nvml.NvmlError, _layout.LayoutError) as err:
        _facts, now, _models = read_host(nvml)
        return f"restoring the layout found at the start failed too ({err}); left behind: {_describe(now)}"
    return None


def uuid_changes(before: list[dict], after: list[dict], plan: _layout.Plan) -> list[dict]:
    """MIG devices found at the start whose UUID is gone after a restore, named by the slot the plan kept them for."""
    names = {(s.gpu_index, s.gi_id): s.name for s in plan.slots if s.gi_id is not None}
    now = {(g["index"], gi["profile_id"], gi["placement"]["start"]): gi for g in after for gi in g["gpu_instances"]}
    changes = []
    for gpu in before:
        for gi in gpu["gpu_instances"]:
            new = now.get((gpu["index"], gi["profile_id"], gi["placement"]["start"]), {"compute_instances": []})
            new_uuids = [c["uuid"] for c in new["compute_instances"]]
            for pos, ci in enumerate(gi["compute_instances"]):
                if ci["uuid"] not in new_uuids:
                    changes.append(
                        {
                            "slot": names.get((gpu["index"], gi["id"])),
                            "gpu_index": gpu["index"],
                            "gpu_uuid": gpu["uuid"],
                            "profile": gi["profile"],
                            "placement": gi["placement"],
                            "old_mig_uuid": ci["uuid"],
                            "new_mig_uuid": new_uuids[pos] if pos < len(new_uuids) else None,
                        }
                    )
    return changes


def _describe_changes(changes: list[dict]) -> str:
    if not changes:
        return "the layout found at the start was restored with every MIG UUID unchanged"
    return (
        "the layout found at the start was restored, but %d MIG devices have new UUIDs; repoint what used them: %s"
        % (
            len(changes),
            "; ".join(
                "%sGPU %d %s@%d: %s -> %s"
                % (
                    "slot '%s' on " % c["slot"] if c["slot"] else "",
                    c["gpu_index"],
                    c["profile"],
                    c["placement"]["start"],
                    c["old_mig_uuid"],
                    c["new_mig_uuid"] or "none",
                )
                for c in changes
            ),
        )
    )


def _describe(states: list[_layout.GpuState]) -> str:
    return "; ".join(
        f"GPU {s.index}: "
        + (", ".join(f"{g.profile}@{g.start} (GI {g.id})" for g in s.gpu_instances) or "no instances")
        for s in states
        if s.mig_supported
    )


def apply_layout(
    nvml: _nvml.Nvml | None,
    layout: list,
    force: bool = False,
    check_mode: bool = False,
    grace: float = 10.0,
    host: tuple | None = None,
    previous_slots: dict | None = None,
) -> dict:
    """Plan ``layout`` against the host and (unless check mode) execute it.

    Everything is validated before the first change. With ``force``, processes holding instances to destroy are
    terminated first (SIGTERM, then SIGKILL after ``grace`` seconds). Raises LayoutError for invalid, infeasible or unsafe layouts
    (nothing changed) and ApplyError when NVML fails midway (after restoring the layout found at the start, or
    saying exactly what was left behind). ``host``: a ``read_host`` result the caller already has; with it, check mode
    needs no NVML (``nvml`` may be None: the mig_instances action plugin plans on the controller).
    ``previous_slots``: the last applied slot map, which keeps each slot on the GPU instance it had
    (``_layout.plan_layout``'s ``previous``).
    """
    facts, states, models = host or read_host(nvml)
    plan = _layout.plan_layout(layout, states, models, previous_slots)
    warnings = list(_layout.check_busy(plan, force))
    problems = _mode_problems(plan, facts)
    if problems:
        raise _layout.LayoutError(problems)
    result = {
        "changed": plan.changed,
        "plan": plan.to_dict(),
        "diff": plan.diff(),
        "warnings": warnings,
        "restored": False,
        "restore_changes": [],
        "unread_gpus": ["%s; the layout was not applied to it" % g["error"] for g in facts if g.get("error")],
    }
    if check_mode or not plan.changed:
        result.update(slots=slot_map(plan, facts), facts=facts)
        return result
    created: dict[tuple[str | None, str | None], int] = {}
    try:
        if warnings:
            _terminate(nvml, plan, grace)
        _execute(nvml, plan, created)
    except _nvml.NvmlError as err:
        failed_restore = _restore(nvml, states)
        after, after_states, _models = read_host(nvml)
        changes = uuid_changes(facts, after, plan)
        # Changed unless the restore put back every instance with its MIG UUID (a failure at the first action).
        changed = bool(failed_restore or changes) or _layout.layout_from_state(
            after_states
        ) != _layout.layout_from_state(states)
        result.update(restored=failed_restore is None, restore_changes=changes, facts=after, changed=changed)
        # After a restore the instances created by this run are gone: only kept ones can be named.
        result["slots"] = slot_map(plan, after, created if failed_restore else None)
        raise ApplyError(f"{err.msg}; {failed_restore or _describe_changes(changes)}", result) from err
    after, _states, _models = read_host(nvml)
    result.update(slots=slot_map(plan, after, created), facts=after)
    return result
