# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""One answer to "does this host match?": preflight_report's drift and verdict are gpu.mig.mig_instances' plan.

On random simulated hosts (every MIG model of the catalog, MIG on or off, random instances with compute-instance
splits, pending mode changes, processes), random layouts (splits written every way the layout accepts, look-alike
slots in any order, pinned placements, invalid profiles, GPUs left to mig_mode) and random last applied slot maps (none,
slots on the instances there, slots to create again, stale records): the audit says "in sync" exactly when
mig_instances' check mode with the same slot map says "no change", and blocks or defers exactly what mig_instances
refuses.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import json

import pynvml
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ansible_collections.gpu.mig.plugins.filter import preflight
from ansible_collections.gpu.mig.plugins.filter.preflight import preflight_report
from ansible_collections.gpu.mig.plugins.module_utils._mig import apply as _apply
from ansible_collections.gpu.mig.plugins.module_utils._mig import layout as _layout
from ansible_collections.gpu.mig.plugins.module_utils._mig import nvml as _nvml
from ansible_collections.gpu.mig.plugins.modules import mig_instances
from ansible_collections.gpu.mig.tests.unit.plugins.filter import mig_gpu_facts
from nvmlsim import mig, models

A100 = "NVIDIA A100-SXM4-40GB"
MIG_MODELS = sorted(name for name, model in models.all_models().items() if models.is_mig_capable(model))
DRIVER = "580.65.06"  # newer than every model's minimum: the verdict turns on the layout alone
NAMES = ("web", "ocr", "chat", "batch", "embed")
BUSY_FIX_LINE = "stop those processes or re-run with force to destroy the instances anyway"  # _layout.check_busy's
SETTINGS = dict(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))


def report(gpus: list, layout: list, force: bool = False, slot_map: dict | None = None) -> dict:
    driver = {"loaded": True, "error": None, "driver_version": DRIVER}
    facts = {"nvidia_mig": {"driver": driver, "gpus": gpus, "slot_map": slot_map}}
    return preflight_report(facts, "h", layout=layout, force=force)


def check_mode(
    gpus: list, layout: list, force: bool = False, slot_map: dict | None = None
) -> tuple[dict | None, list[str]]:
    """What gpu.mig.mig_instances' action plugin plans from these facts and this slot map: (result, []) or (None, why
    it refuses)."""
    host = _apply.host_from_facts(gpus)
    try:
        return _apply.apply_layout(None, layout, force, check_mode=True, host=host, previous_slots=slot_map), []
    except _layout.LayoutError as err:
        return None, list(err.problems)


# --- the reproduction of issue 14 ------------------------------------------------------------------------------------

SPLITS = [
    ["1c.3g.20gb", "1c.3g.20gb"],  # compute profile names
    [0, 0],  # compute profile ids
    ["0", "0"],  # ids as text (YAML quoted, or a templated value)
    [{"name": "left", "profile": "1c.3g.20gb"}, {"name": "right", "profile": 0}],
    [{"profile": "1c.3g.20gb"}, {"profile": "1c.3g.20gb"}],
]


@pytest.mark.parametrize("split", SPLITS, ids=["names", "ids", "id-text", "named", "unnamed"])
def test_a_compute_instance_split_of_a_converged_gpu_instance_is_drift(sim_host, split):
    """A100-40GB, one 3g.20gb holding its default compute instance; the layout splits it in two 1c.3g.20gb."""
    sim_host("A100-SXM4-40GB:mig=on", instances=["0:3g.20gb"])
    gpus = _nvml.gather()["gpus"]
    layout = [{"gpus": 0, "slots": [{"name": "a", "profile": "3g.20gb", "compute_instances": split}]}]
    planned, refused = check_mode(gpus, layout)
    assert refused == [] and [a["op"] for a in planned["plan"]["actions"]] == ["destroy_ci", "create_ci", "create_ci"]
    found = report(gpus, layout)
    names = [ci["name"] if isinstance(ci, dict) and "name" in ci else f"ci{i}" for i, ci in enumerate(split)]
    where = "slot a (3g.20gb@4, GPU instance 2)"
    assert found["gpus"][0]["drift"] == [
        f"{where}: extra compute instance 0 (3g.20gb)",
        *(f"{where}: compute instance {name} (1c.3g.20gb) missing" for name in names),
    ]
    assert (found["in_sync"], found["verdict"], found["reasons"]) == (False, "ready", [])


@pytest.mark.parametrize("split", SPLITS, ids=["names", "ids", "id-text", "named", "unnamed"])
def test_every_way_of_writing_a_split_that_is_there_is_in_sync(split):
    held = mig_gpu_facts.gpu_instance(A100, 2, "3g.20gb", 4, ["1c.3g.20gb", "1c.3g.20gb"])
    gpus = [mig_gpu_facts.gpu(0, A100, instances=[held])]
    layout = [{"gpus": 0, "slots": [{"name": "a", "profile": "3g.20gb", "compute_instances": split}]}]
    found = report(gpus, layout)
    assert (found["in_sync"], found["gpus"][0]["drift"]) == (True, [])
    for default in (None, ["3g.20gb"], ["default"], [2]):  # the one default compute instance, written four ways
        slot = {"name": "a", "profile": "3g.20gb", **({} if default is None else {"compute_instances": default})}
        merged = report(gpus, [{"gpus": 0, "slots": [slot]}])
        assert merged["in_sync"] is False
        assert (
            merged["gpus"][0]["drift"][-1]
            == "slot a (3g.20gb@4, GPU instance 2): compute instance ci0 (3g.20gb) missing"
        )


def test_reordering_look_alike_slots_of_a_converged_gpu_is_in_sync():
    held = [mig_gpu_facts.gpu_instance(A100, gi_id, "1g.5gb", start) for gi_id, start in ((13, 6), (14, 5))]
    gpus = [mig_gpu_facts.gpu(0, A100, instances=held)]
    for order in (["web", "ocr"], ["ocr", "web"]):
        found = report(gpus, [{"gpus": 0, "slots": [{"name": n, "profile": "1g.5gb"} for n in order]}])
        assert (found["in_sync"], found["gpus"][0]["desired_slots"]) == (True, order)


def test_the_drift_follows_the_slot_map_in_the_facts():
    """web and ocr on 1g.5gb@6 and @5; ocr is dropped: the slot map (nvidia_mig.slot_map) says which one web keeps,
    and where web comes back after a reboot."""
    held = [mig_gpu_facts.gpu_instance(A100, gi_id, "1g.5gb", start) for gi_id, start in ((13, 6), (14, 5))]
    gpus = [mig_gpu_facts.gpu(0, A100, instances=held)]
    layout = [{"gpus": 0, "slots": [{"name": "web", "profile": "1g.5gb"}]}]
    slot_map = {
        n: {"gpu_index": 0, "profile": "1g.5gb", "placement": {"start": s}} for n, s in (("web", 5), ("ocr", 6))
    }
    assert report(gpus, layout, slot_map=slot_map)["gpus"][0]["drift"] == ["extra GPU instance 13 (1g.5gb@6)"]
    assert report(gpus, layout)["gpus"][0]["drift"] == ["extra GPU instance 14 (1g.5gb@5)"]
    rebooted = [mig_gpu_facts.gpu(0, A100)]
    assert report(rebooted, layout, slot_map=slot_map)["gpus"][0]["drift"] == ["slot web (1g.5gb@5) missing"]
    assert report(rebooted, layout)["gpus"][0]["drift"] != ["slot web (1g.5gb@5) missing"]


def test_a_slot_map_in_the_facts_that_is_not_one_blocks_naming_the_problem():
    gpus = [mig_gpu_facts.gpu(0, A100)]
    found = report(gpus, [{"gpus": 0, "slots": []}], slot_map={"web": {"profile": "1g.5gb"}})
    assert (found["verdict"], found["in_sync"]) == ("blocked", False)
    assert [r["msg"] for r in found["reasons"]] == [
        "slot 'web': 'placement' is required; it must be a mapping with the start memory slice (an integer >= 0),"
        " such as {start: 4, size: 4}",
        "slot 'web': 'gpu_uuid' or 'gpu_index' is required; it names the slot's GPU",
    ]


def test_busy_instances_in_the_way_block_unless_force():
    busy = mig_gpu_facts.gpu_instance(A100, 1, "4g.20gb", 0, processes=[4242])
    gpus = [mig_gpu_facts.gpu(0, A100, instances=[busy], processes=[4242])]
    layout = [{"gpus": 0, "slots": [{"name": "a", "profile": "3g.20gb", "placement": 0}]}]
    drift = ["GPU instance 1 (4g.20gb@0) is in the way of slot a", "slot a (3g.20gb@0) missing"]
    for force, level, fix, verdict in (
        (False, "fail", preflight.BUSY_FIX, "blocked"),
        (True, "warn", preflight.FORCED_FIX, "warn"),
    ):
        found = report(gpus, layout, force=force)
        assert (found["verdict"], found["in_sync"], found["gpus"][0]["drift"]) == (verdict, False, drift)
        assert [(r["level"], r["where"], r["fix"]) for r in found["reasons"]] == [(level, "layout", fix)] * 2
        assert "compute instance 0 in GPU instance 1 (4g.20gb) has running processes 4242" in found["reasons"][0]["msg"]


def test_a_refused_layout_blocks_with_the_planners_message_and_no_drift():
    gpus = [mig_gpu_facts.gpu(0, A100, instances=[mig_gpu_facts.gpu_instance(A100, 1, "7g.40gb", 0)])]
    layout = [{"gpus": 0, "slots": [{"name": "a", "profile": "4g.20gb"}, {"name": "b", "profile": "4g.20gb"}]}]
    _unused, refused = check_mode(gpus, layout)
    found = report(gpus, layout)
    assert (found["verdict"], found["in_sync"], found["gpus"][0]["drift"]) == ("blocked", False, [])
    assert [(r["level"], r["where"], r["msg"], r["fix"]) for r in found["reasons"]] == [
        ("fail", "layout", why, preflight.LAYOUT_FIX) for why in refused
    ]
    assert "too many 4g.20gb instances (2: a, b)" in refused[0]


def test_facts_the_planner_cannot_read_block_instead_of_failing():
    broken = mig_gpu_facts.gpu(0, A100)
    del broken["profiles"]  # facts an older mig_facts wrote, say, kept in a fact cache
    found = report([broken], [{"gpus": 0, "slots": []}])
    assert found["verdict"] == "blocked" and found["in_sync"] is False
    assert [r["msg"] for r in found["reasons"]] == [
        "the NVML facts lack what mig_instances plans from (KeyError: 'profiles'); gather them again with"
        " gpu.mig.mig_facts (not from a fact cache)"
    ]


# --- the property --------------------------------------------------------------------------------------------------


@st.composite
def host_specs(draw) -> list[tuple]:
    """Per GPU: (model, MIG on, pending mode flipped, [(GI profile, compute profiles or None: the default)])."""
    gpus = []
    for model in draw(st.lists(st.sampled_from(MIG_MODELS), min_size=1, max_size=2)):
        found = models.lookup(model)
        on = draw(st.sampled_from([True, True, True, False]))
        instances = []
        for profile in draw(st.lists(st.sampled_from(found.profiles), max_size=4)) if on else ():
            cis = [c.name for c in profile.compute_profiles]
            instances.append((profile.name, draw(st.none() | st.lists(st.sampled_from(cis), min_size=1, max_size=3))))
        gpus.append((model, on, draw(st.sampled_from([False] * 5 + [True])), instances))
    return gpus


def build(sim_host, spec: list[tuple]) -> list[dict]:
    """The simulated host of ``spec`` (instances placed where the driver puts them, as many as fit), read as facts."""
    host = sim_host(*(f"{model}:mig={'on' if on else 'off'}" for model, on, _unused, _unused2 in spec), driver=DRIVER)
    with host.edit() as state:
        for index, (model, on, flip, instances) in enumerate(spec):
            found = models.lookup(model)
            for profile, cis in instances:
                prof = found.profile(profile)
                try:
                    gi = mig.create_gpu_instance(state, index, prof.id)
                except pynvml.NVMLError:
                    continue
                for name in cis or [next(c.name for c in prof.compute_profiles if c.default)]:
                    with contextlib.suppress(pynvml.NVMLError):  # a split that does not fit: the CIs that do
                        mig.create_compute_instance(
                            state, index, gi["id"], next(c.id for c in prof.compute_profiles if c.name == name)
                        )
            if flip:
                mig.mode_record(state, index)["pending"] = 0 if on else 1
    return _nvml.gather()["gpus"]


def ci_ref(draw, profile, position: int):
    """A compute-profile reference as a layout may write it: name, id, id as text, {name, profile} or {profile}."""
    cp = draw(st.sampled_from(profile.compute_profiles))
    ref = draw(st.sampled_from([cp.name, cp.id, str(cp.id)]))
    return draw(st.sampled_from([ref, {"name": f"c{position}", "profile": ref}, {"profile": ref}]))


def slot_for(draw, name: str, profile, placement=None, held=None) -> dict:
    """A slot of ``profile``; ``held``: the compute profiles of an instance it mirrors (None: a random split)."""
    slot: dict = {"name": name, "profile": draw(st.sampled_from([profile.name, profile.id]))}
    if placement is not None and draw(st.booleans()):
        slot["placement"] = placement
    if held is not None and held != [next(c.name for c in profile.compute_profiles if c.default)]:
        slot["compute_instances"] = held
    elif held is None and draw(st.booleans()):
        slot["compute_instances"] = [ci_ref(draw, profile, i) for i in range(draw(st.integers(1, 3)))]
    return slot


def slots_for(draw, gpu: dict) -> list[dict]:
    """Random slots for one GPU: mirrors of its instances (shuffled, maybe one changed), or random ones."""
    model = models.lookup(gpu["name"])
    names = draw(st.permutations(NAMES))
    if gpu["gpu_instances"] and draw(st.booleans()):
        held = draw(st.permutations(gpu["gpu_instances"]))
        slots = [
            slot_for(
                draw,
                names[i],
                model.profile(gi["profile"]),
                gi["placement"]["start"],
                [c["profile"] for c in gi["compute_instances"]],
            )
            for i, gi in enumerate(held[: len(names)])
        ]
        if slots and draw(st.booleans()):
            changed = draw(st.integers(0, len(slots) - 1))
            slots[changed] = slot_for(draw, names[changed], draw(st.sampled_from(model.profiles)))
    else:
        chosen = draw(st.lists(st.sampled_from(model.profiles), max_size=4))
        slots = [
            slot_for(draw, names[i], p, draw(st.sampled_from((None, *p.placement_starts))))
            for i, p in enumerate(chosen)
        ]
    oddity = draw(st.sampled_from([None] * 16 + ["profile", "ci", "twin"]))
    if slots and oddity == "profile":
        slots[0] = {**slots[0], "profile": "9g.99gb"}
    elif slots and oddity == "ci":
        slots[0] = {**slots[0], "compute_instances": ["5c.9g.99gb"]}
    elif slots and oddity == "twin":
        slots.append({**slots[0]})
    return slots


@st.composite
def layouts(draw, gpus: list[dict]) -> list[dict]:
    """One entry per GPU (by index or UUID), or one 'all' entry; MIG disabled now and then."""
    same_model = len({g["name"] for g in gpus}) == 1
    if same_model and draw(st.sampled_from([False] * 4 + [True])):
        return [{"gpus": "all", "slots": slots_for(draw, gpus[0])}]
    entries = []
    for gpu in gpus:
        selector = draw(st.sampled_from([gpu["index"], gpu["uuid"]]))
        if draw(st.sampled_from([False] * 9 + [True])):
            entries.append({"gpus": selector, "mig_enabled": False, "slots": []})
        else:
            entries.append({"gpus": selector, "slots": slots_for(draw, gpu)})
    return entries


def with_processes(draw, gpus: list[dict]) -> list[dict]:
    """The facts with processes in some instances (MIG on) or on the whole GPU (MIG off), as NVML lists them."""
    gpus = copy.deepcopy(gpus)
    for pid, gpu in enumerate(gpus, 4242):
        if not draw(st.sampled_from([False] * 3 + [True])):
            continue
        if gpu["mig"]["current"] and gpu["gpu_instances"]:
            gi = draw(st.sampled_from(gpu["gpu_instances"]))
            held = [{"pid": pid, "used_memory_mib": 100}]
            gi["processes"] = held
            for ci in gi["compute_instances"]:
                ci["processes"] = held
            gpu["processes"] = [p for g in gpu["gpu_instances"] for p in g["processes"]]
        elif not gpu["mig"]["current"]:
            gpu["processes"] = [{"pid": pid, "used_memory_mib": 100}]
    return gpus


@st.composite
def slot_maps(draw, gpus: list[dict], planned: dict) -> dict | None:
    """None (no slot map) or a last applied slot map. Its slots are mostly those the layout plans without one
    (``planned``, slot name -> where), on their GPU with their profile, else any of NAMES on any GPU; each is recorded
    on an instance of its profile there (a claim), at a start where it could be created, or stale (a GPU gone, a profile
    the GPU lacks, a start that is not one)."""
    if draw(st.sampled_from([False, False, True])):
        return None
    by_index = {g["index"]: g for g in gpus}
    slot_map = {}
    for name in draw(st.lists(st.sampled_from([*planned, *NAMES]), unique=True, min_size=1, max_size=6)):
        gpu = by_index[planned[name]["gpu_index"]] if name in planned else draw(st.sampled_from(gpus))
        found = models.lookup(gpu["name"])
        profile = found.profile(planned[name]["profile"]) if name in planned else draw(st.sampled_from(found.profiles))
        held = [gi["placement"]["start"] for gi in gpu["gpu_instances"] if gi["profile"] == profile.name]
        kind = draw(st.sampled_from(["held", "held", "create", "create", "stale"]))
        starts = held if kind == "held" and held else list(profile.placement_starts)
        elsewhere = [x for x in starts if name not in planned or x != planned[name]["placement"]["start"]]
        start = draw(st.sampled_from(elsewhere or starts))  # mostly not where the slot goes without a slot map
        record = {
            "gpu_uuid": gpu["uuid"],
            "gpu_index": gpu["index"],
            "profile": profile.name,
            "placement": {"start": start},
        }
        if draw(st.booleans()):
            record["gpu_uuid"] = None  # a slot map that names the GPU by index only
        if kind == "stale":
            record.update(
                draw(
                    st.sampled_from(
                        [{"gpu_uuid": "GPU-gone"}, {"gpu_uuid": None, "gpu_index": 7}, {"profile": "9g.99gb"},
                         {"placement": {"start": 99}}]
                    )
                )
            )  # fmt: skip
        slot_map[name] = record
    return slot_map


def agreement(gpus: list, layout: list, force: bool, slot_map: dict | None) -> list[str]:
    """Assert that the audit agrees with mig_instances' check mode (with the same slot map); return the answers seen:
    "in sync", "drift", the fixes of the layout's reasons, and "history" when the slot map changed the plan."""
    planned, refused = check_mode(gpus, layout, force, slot_map)
    found = report(gpus, layout, force, slot_map)

    assert found["in_sync"] == (planned is not None and not planned["changed"])
    if planned is not None:  # a GPU drifts exactly where the plan acts, naming what it creates and destroys
        acting = {a["gpu_index"] for a in planned["plan"]["actions"]}
        assert {g["index"] for g in found["gpus"] if g["drift"]} == acting
        assert [s for g in found["gpus"] for s in g["desired_slots"]] == list(planned["slots"])
        drift = {g["index"]: g["drift"] for g in found["gpus"]}
        for a in planned["plan"]["actions"]:
            where = "%s@%d" % (a["profile"], a["placement"]["start"]) if a["placement"] else None
            if a["op"] == "create_gi":
                assert f"slot {a['slot']} ({where}) missing" in drift[a["gpu_index"]]
            elif a["op"] == "destroy_gi":
                assert any(f"GPU instance {a['gi_id']} ({where})" in line for line in drift[a["gpu_index"]])
    on_layout = [r for r in found["reasons"] if r["where"] == "layout"]
    stops = [r for r in on_layout if r["level"] == "fail" or r["fix"] == preflight.MODE_FIX]
    assert bool(stops) == bool(refused)  # what mig_instances refuses, the audit blocks or leaves to mig_mode
    assert set(refused) - {BUSY_FIX_LINE} <= {r["msg"] for r in on_layout}
    assert (found["verdict"] == "blocked") == any(r["level"] == "fail" for r in on_layout)
    without, _unused = check_mode(gpus, layout, force)
    history = planned is not None and (planned["plan"], planned["slots"]) != (without["plan"], without["slots"])
    return (
        ["in sync"] * found["in_sync"]
        + ["drift"] * any(g["drift"] for g in found["gpus"])
        + ["history"] * history
        + sorted({r["fix"] for r in on_layout})
    )


def planned_slots(gpus: list, layout: list) -> dict:
    """Slot name -> where mig_instances puts it without a slot map ({} when it refuses the layout)."""
    without, _unused = check_mode(gpus, layout, force=True)
    return without["slots"] if without else {}


# Each answer the audit gives, and how often the random cases must meet it.
LEAST = {
    "in sync": 60,
    "drift": 150,
    preflight.LAYOUT_FIX: 30,
    preflight.BUSY_FIX: 10,
    preflight.FORCED_FIX: 5,
    preflight.MODE_FIX: 10,
}


def test_the_audit_says_in_sync_exactly_when_mig_instances_changes_nothing(sim_host):
    seen: collections.Counter = collections.Counter()

    @settings(max_examples=600, **SETTINGS)
    @given(spec=host_specs(), data=st.data())
    def agree(spec, data):
        gpus = with_processes(data.draw, build(sim_host, spec))
        layout = data.draw(layouts(gpus))
        force = data.draw(st.booleans())
        slot_map = data.draw(slot_maps(gpus, planned_slots(gpus, layout)))
        seen.update(agreement(gpus, layout, force, slot_map))

    agree()
    assert {kind: seen[kind] >= least for kind, least in LEAST.items()} == dict.fromkeys(LEAST, True), seen


@st.composite
def look_alike_hosts(draw) -> tuple[list[tuple], str]:
    """(one MIG GPU holding up to as many instances of one profile as fit (none: after a reboot), maybe one of
    another profile; that profile)."""
    name = draw(st.sampled_from(MIG_MODELS))
    model = models.lookup(name)
    profile = draw(st.sampled_from([p for p in model.profiles if p.max_instances >= 2]))
    instances = [(profile.name, None)] * draw(st.integers(0, profile.max_instances))
    if draw(st.booleans()):
        instances.append((draw(st.sampled_from(model.profiles)).name, None))
    return [(name, True, False, instances)], profile.name


def test_with_a_slot_map_the_audit_agrees_on_look_alike_slots(sim_host):
    """Where the slot map decides (look-alike slots, slots to create again after a reboot), the audit plans with it
    as mig_instances does; stale records are ignored by both."""
    seen: collections.Counter = collections.Counter()

    @settings(max_examples=150, **SETTINGS)
    @given(host=look_alike_hosts(), data=st.data())
    def agree(host, data):
        spec, profile = host
        gpus = build(sim_host, spec)
        names = data.draw(st.permutations(NAMES))[: data.draw(st.integers(0, 4))]
        layout = [{"gpus": 0, "slots": [{"name": name, "profile": profile} for name in names]}]
        slot_map = data.draw(slot_maps(gpus, planned_slots(gpus, layout)))
        seen.update(agreement(gpus, layout, data.draw(st.booleans()), slot_map))

    agree()
    assert seen["history"] >= 40 and seen["in sync"] >= 20 and seen["drift"] >= 40, seen


@settings(max_examples=80, **SETTINGS)
@given(spec=host_specs(), data=st.data())
def test_the_module_in_check_mode_agrees_with_the_audit(sim_host, run_module, tmp_path, spec, data):
    """The module itself, on the simulated host (no injected processes: the simulator's state is what it reads), with
    the slot map in a file and in the facts as gpu.mig.mig_facts reads it."""
    gpus = build(sim_host, spec)
    layout = data.draw(layouts(gpus))
    without, _unused = check_mode(gpus, layout)
    slot_map = data.draw(slot_maps(gpus, without["slots"] if without else {}))
    args = {"layout": layout}
    if slot_map is not None:
        args["slot_map_file"] = str(tmp_path / "slots.json")
        (tmp_path / "slots.json").write_text(json.dumps(slot_map))
    found = report(gpus, layout, slot_map=slot_map)
    result, failed = run_module(mig_instances, args, check_mode=True)
    stops = [
        r
        for r in found["reasons"]
        if r["where"] == "layout" and (r["level"] == "fail" or r["fix"] == preflight.MODE_FIX)
    ]
    assert failed == bool(stops), result.get("msg")
    assert found["in_sync"] == (not failed and result["changed"] is False)
