# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The planner with the last applied slot map (``previous``): which instance each look-alike slot keeps, and where a
slot whose instance is gone (after a reboot) is created again; the module after a simulated reboot."""

from __future__ import annotations

from pathlib import Path

import pytest

from ansible_collections.gpu.mig.plugins.module_utils._mig import layout as L
from ansible_collections.gpu.mig.plugins.module_utils._mig import migparted as _migparted
from ansible_collections.gpu.mig.plugins.module_utils._mig import slot_files
from ansible_collections.gpu.mig.plugins.modules import mig_instances
from ansible_collections.gpu.mig.tests.unit.plugins.module_utils._mig.test_layout import (
    H100,
    facts,
    models_for,
    state,
)

# Three 1g.5gb instances on GPU 0; in the slot map, web holds the one at 6, ocr at 5, x at 4.
GPU = state(facts(gis=[(1, "1g.5gb", 4), (2, "1g.5gb", 5), (3, "1g.5gb", 6)]))
UUID = GPU[0].uuid
HISTORY = {
    name: {"gpu_index": 0, "gpu_uuid": UUID, "profile": "1g.5gb", "placement": {"start": start, "size": 1}}
    for name, start in (("web", 6), ("ocr", 5), ("x", 4))
}


def starts(names, previous, gpus=GPU, profile="1g.5gb"):
    layout = [{"gpus": 0, "slots": [{"name": n, "profile": profile} for n in names]}]
    plan = L.plan_layout(layout, gpus, models_for(gpus), previous)
    return {s.name: s.start for s in plan.slots}, plan


@pytest.mark.parametrize("names", [["web", "ocr", "x"], ["x", "ocr", "web"], ["ocr", "web", "x"]])
def test_every_order_keeps_each_slot_on_its_instance(names):
    placed, plan = starts(names, HISTORY)
    assert placed == {"web": 6, "ocr": 5, "x": 4} and not plan.changed


def test_without_history_look_alikes_take_ascending_starts_in_the_order_written():
    placed, plan = starts(["web", "ocr", "x"], None)
    assert placed == {"web": 4, "ocr": 5, "x": 6} and not plan.changed


def test_removing_a_look_alike_destroys_its_instance_not_another_slots():
    placed, plan = starts(["web", "x"], HISTORY)
    assert placed == {"web": 6, "x": 4}
    assert [(a.op, a.gi_id) for a in plan.actions if a.op == L.DESTROY_GI] == [(L.DESTROY_GI, 2)]


def test_a_new_slot_takes_a_free_start_and_the_others_stay():
    gpus = state(facts(gis=[(2, "1g.5gb", 5), (3, "1g.5gb", 6)]))
    placed, plan = starts(["new", "web", "ocr"], HISTORY, gpus)
    assert placed["web"] == 6 and placed["ocr"] == 5 and placed["new"] not in (5, 6)
    assert {a.op for a in plan.actions} == {L.CREATE_GI, L.CREATE_CI}


@pytest.mark.parametrize(
    "record",
    [
        {"gpu_uuid": "GPU-elsewhere", "gpu_index": 0},  # another GPU (by UUID, which wins over the index)
        {"gpu_uuid": None, "gpu_index": 1},  # another GPU by index
        {"profile": "1g.10gb"},  # the slot changed profile since
        {"placement": {"start": 0}},  # no instance there any more
    ],
)
def test_history_that_no_longer_matches_the_gpu_is_ignored(record):
    previous = {"ocr": dict(HISTORY["ocr"], **record), "web": HISTORY["web"]}
    placed, _plan = starts(["ocr", "web"], previous, state(facts(gis=[(2, "1g.5gb", 5), (3, "1g.5gb", 6)])))
    assert placed == {"web": 6, "ocr": 5}  # web's claim stands; ocr takes what is left
    placed, _plan = starts(
        ["ocr", "web"], {"ocr": previous["ocr"]}, state(facts(gis=[(2, "1g.5gb", 5), (3, "1g.5gb", 6)]))
    )
    assert placed == {"ocr": 5, "web": 6}  # no valid claim: ascending starts in the order written


def test_a_pinned_slot_ignores_history():
    layout = [{"gpus": 0, "slots": [{"name": "web", "profile": "1g.5gb", "placement": 4}]}]
    plan = L.plan_layout(layout, GPU, models_for(GPU), HISTORY)
    assert [s.start for s in plan.slots] == [4]


def test_a_slot_keeps_its_instance_over_a_look_alike_with_the_same_split():
    """History beats split matching: ocr keeps its GI (its CIs are re-made), the new slot gets the one left."""
    split = [(0, "1c.3g.20gb", []), (1, "1c.3g.20gb", [])]
    gpus = state(facts(gis=[(1, "3g.20gb", 0, split), (2, "3g.20gb", 4)]))
    previous = {"ocr": {"gpu_uuid": UUID, "profile": "3g.20gb", "placement": {"start": 0}}}
    layout = [
        {
            "gpus": 0,
            "slots": [
                {"name": "new", "profile": "3g.20gb", "compute_instances": ["1c.3g.20gb", "1c.3g.20gb"]},
                {"name": "ocr", "profile": "3g.20gb"},
            ],
        }
    ]
    plan = L.plan_layout(layout, gpus, models_for(gpus), previous)
    assert {s.name: s.start for s in plan.slots} == {"new": 4, "ocr": 0}
    without = L.plan_layout(layout, gpus, models_for(gpus))
    assert {s.name: s.start for s in without.slots} == {"new": 0, "ocr": 4}


def test_every_problem_in_a_slot_map_is_listed_and_unknown_keys_are_ignored():
    previous = {
        "a": {"gpu_uuid": "", "profile": 7, "placement": {"size": 1}, "mig_uuid": "MIG-x"},
        "b": [],
        "c": {"profile": "1g.5gb", "placement": {"start": 0}},
        "d": {"gpu_index": True, "profile": "1g.5gb", "placement": {"start": -1}, "anything": 1},
        "ok": dict(HISTORY["web"], gpu_name="NVIDIA A100-SXM4-40GB", compute_instances=[]),
    }
    with pytest.raises(L.LayoutError) as info:
        L.slot_history(previous)
    assert info.value.problems == (
        "slot 'a': gpu_uuid is ''; it must be a non-empty string",
        "slot 'a': profile is 7; it must be a non-empty string",
        "slot 'a': placement is dict {'size': 1}; it must be a mapping with the start memory slice (an integer >= 0),"
        " such as {start: 4, size: 4}",
        "slot 'b': must be a mapping with keys gpu_uuid, gpu_index, profile, placement, not list []",
        "slot 'c': 'gpu_uuid' or 'gpu_index' is required; it names the slot's GPU",
        "slot 'd': gpu_index is True; it must be a GPU index (an integer >= 0)",
        "slot 'd': placement is dict {'start': -1}; it must be a mapping with the start memory slice (an integer >= 0),"
        " such as {start: 4, size: 4}",
    )
    assert L.slot_history({"ok": previous["ok"]}) == {"ok": L.SlotRecord(UUID, 0, "1g.5gb", 6)}


# --- recorded placements: a slot whose instance is gone is created where the slot map puts it ----------------------

# Helper C2's reproduction: an H100 holding 1g.10gb@6, 1g.10gb@5 and 3g.40gb@0, and a mig-parted config of the same
# counts, which keeps them (slots named by placement); after a reboot every instance is gone.
CONFIG = {"version": "v1", "mig-configs": {"c": [{"devices": "all", "mig-enabled": True,
                                                  "mig-devices": {"1g.10gb": 2, "3g.40gb": 1}}]}}  # fmt: skip
CONVERGED = state(facts(model=H100, gis=[(1, "1g.10gb", 6), (2, "1g.10gb", 5), (3, "3g.40gb", 0)]))
REBOOTED = state(facts(model=H100))


def recorded(plan: L.Plan) -> dict:
    """The slot map of a plan, as the roles write it (the keys the planner reads)."""
    return {
        s.name: {"gpu_uuid": s.gpu_uuid, "gpu_index": s.gpu_index, "profile": s.profile,
                 "placement": {"start": s.start, "size": s.size}}
        for s in plan.slots
    }  # fmt: skip


def mig_parted_plan(gpus, previous=None) -> L.Plan:
    layout = _migparted.layout_from_mig_parted(CONFIG, "c", gpus, models_for(gpus)).entries
    return L.plan_layout(layout, gpus, models_for(gpus), previous)


def test_after_a_reboot_each_slot_is_created_where_the_slot_map_puts_it():
    applied = mig_parted_plan(CONVERGED)
    assert not applied.changed
    history = recorded(applied)
    assert {n: r["placement"]["start"] for n, r in history.items()} == {
        "gpu0-1g-10gb-0": 5,
        "gpu0-1g-10gb-1": 6,
        "gpu0-3g-40gb-0": 0,
    }
    again = mig_parted_plan(REBOOTED, history)
    assert {s.name: s.start for s in again.slots} == {n: r["placement"]["start"] for n, r in history.items()}
    assert [(a.slot, a.placement[0]) for a in again.actions if a.op == L.CREATE_GI] == [
        ("gpu0-3g-40gb-0", 0),
        ("gpu0-1g-10gb-0", 5),
        ("gpu0-1g-10gb-1", 6),
    ]


def test_after_a_reboot_without_history_the_placement_is_unchanged():
    without = mig_parted_plan(REBOOTED)
    assert {s.name: s.start for s in without.slots} == {"gpu0-3g-40gb-0": 4, "gpu0-1g-10gb-0": 0, "gpu0-1g-10gb-1": 1}


def h100_slots(*slots):
    return [{"gpus": 0, "slots": [dict(zip(("name", "profile"), slot, strict=True)) for slot in slots]}]


def record(start, profile="1g.10gb", **keys):
    return {"gpu_uuid": REBOOTED[0].uuid, "profile": profile, "placement": {"start": start}, **keys}


def test_a_recorded_start_the_other_slots_need_is_given_up():
    """4g.40gb fits only at 0: the 3g.40gb recorded at 0 goes to 4, the layout stays feasible."""
    layout = h100_slots(("big", "4g.40gb"), ("x", "3g.40gb"))
    plan = L.plan_layout(layout, REBOOTED, models_for(REBOOTED), {"x": record(0, "3g.40gb")})
    assert {s.name: s.start for s in plan.slots} == {"big": 0, "x": 4}


def test_a_recorded_start_held_by_a_kept_instance_is_not_taken():
    gpus = state(facts(model=H100, gis=[(1, "1g.10gb", 5)]))
    history = {"a": record(5), "b": record(5), "c": record(6)}
    plan = L.plan_layout(
        h100_slots(("b", "1g.10gb"), ("a", "1g.10gb"), ("c", "1g.10gb")), gpus, models_for(gpus), history
    )
    placed = {s.name: s.start for s in plan.slots}
    assert placed["b"] == 5 and placed["c"] == 6 and placed["a"] not in (5, 6)  # b claimed GI 1 first
    assert {a.op for a in plan.actions} == {L.CREATE_GI, L.CREATE_CI}  # nothing destroyed


@pytest.mark.parametrize(
    "stale",
    [
        record(2, "3g.40gb"),  # not a start of 3g.40gb
        record(0, "3g.40gb", gpu_uuid="GPU-elsewhere"),  # another GPU
        record(0, "4g.40gb"),  # another profile
    ],
    ids=["illegal-start", "other-gpu", "other-profile"],
)
def test_a_recorded_start_that_does_not_fit_the_slot_is_ignored(stale):
    layout = h100_slots(("x", "3g.40gb"), ("y", "1g.10gb"))
    plan = L.plan_layout(layout, REBOOTED, models_for(REBOOTED), {"x": stale})
    assert {s.name: s.start for s in plan.slots} == {
        s.name: s.start for s in L.plan_layout(layout, REBOOTED, models_for(REBOOTED)).slots
    }


# --- through the module, after a simulated reboot ---------------------------------------------------------------


def test_the_module_recreates_each_slot_where_it_was_after_a_reboot(sim_host, run_module, tmp_path: Path):
    host = sim_host("H100-80GB:mig=on", instances=["0:1g.10gb@6", "0:1g.10gb@5", "0:3g.40gb@0"], init=False)
    args = {"mig_parted_config": CONFIG, "mig_parted_config_name": "c", "slot_map_file": str(tmp_path / "slots.json")}
    applied, failed = run_module(mig_instances, args)
    assert not failed and applied["changed"] is False, applied.get("msg")
    (tmp_path / "slots.json").write_text(slot_files.slot_map_text(applied["slots"]))
    host.reboot()
    checked, failed = run_module(mig_instances, args, check_mode=True)
    assert not failed and checked["changed"] is True, checked.get("msg")
    again, failed = run_module(mig_instances, args)
    assert not failed, again.get("msg")
    where = {name: slot["placement"] for name, slot in applied["slots"].items()}
    assert {name: slot["placement"] for name, slot in again["slots"].items()} == where
    assert {name: slot["placement"] for name, slot in checked["slots"].items()} == where
    assert sorted(p["start"] for p in where.values()) == [0, 5, 6]
    live = again["ansible_facts"]["nvidia_mig"]["gpus"][0]["gpu_instances"]
    assert sorted((gi["profile"], gi["placement"]["start"]) for gi in live) == [
        ("1g.10gb", 5),
        ("1g.10gb", 6),
        ("3g.40gb", 0),
    ]
