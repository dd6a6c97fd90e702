# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The planner with the last applied slot map (``previous``): which instance each look-alike slot keeps."""

from __future__ import annotations

import pytest

from ansible_collections.gpu.mig.plugins.module_utils._mig import layout as L
from ansible_collections.gpu.mig.tests.unit.plugins.module_utils._mig.test_layout import facts, models_for, state

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
