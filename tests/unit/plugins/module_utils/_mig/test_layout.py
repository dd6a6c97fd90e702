# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Layout core: validation, selectors, placement solver, diff planner, simulation (mig-parted: test_migparted.py)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ansible_collections.gpu.mig.plugins.module_utils._mig import layout as L
from ansible_collections.gpu.mig.plugins.module_utils._mig.catalog import find_model
from ansible_collections.gpu.mig.tests.unit.plugins.module_utils._mig.plan_replay import apply_plan_to_state

A100 = find_model("NVIDIA A100-SXM4-40GB")
H100 = find_model("NVIDIA H100 80GB HBM3")
PROPERTY = settings(
    max_examples=150, derandomize=True, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def facts(index=0, model=A100, gis=(), mig=True, pending=None, supported=True, bus=None):
    """mig_facts-shaped GPU; ``gis`` items: (id, profile, start[, [(ci_id, ci_profile, [pids])...]])."""
    instances = []
    for gi in gis:
        gi_id, name, start = gi[:3]
        prof = model.profile(name)
        cis = gi[3] if len(gi) > 3 else [(0, name, [])]
        instances.append(
            {
                "id": gi_id,
                "profile_id": prof.id,
                "profile": prof.name,
                "placement": {"start": start, "size": prof.placement_size},
                "compute_instances": [
                    {
                        "id": ci_id,
                        "profile_id": _ci_id(prof, ci_name),
                        "profile": ci_name,
                        "uuid": "MIG-%d-%d-%d" % (index, gi_id, ci_id),
                        "processes": [{"pid": p} for p in pids],
                    }
                    for ci_id, ci_name, pids in cis
                ],
                "processes": [{"pid": p} for _unused, _unused2, pids in cis for p in pids],
            }
        )
    return {
        "index": index,
        "uuid": "GPU-%08d-aaaa" % index,
        "pci_bus_id": bus or "00000000:%02X:00.0" % (7 + index),
        "pci_device_id": model.pci_device_ids[0] if model else "0x27B810DE",
        "name": model.name if model else "NVIDIA L4",
        "architecture": model.architecture if model else "ada",
        "mig": {"supported": supported, "current": mig, "pending": mig if pending is None else pending},
        "gpu_instances": instances,
    }


def _ci_id(prof, name):
    return next(c.id for c in prof.compute_profiles if c.name == name)


def state(*gpus):
    return [L.gpu_state_from_facts(g) for g in gpus]


def models_for(gpus):
    return {g.index: find_model(g.name) for g in gpus}


def plan(layout, gpus):
    return L.plan_layout(layout, gpus, models_for(gpus))


def one(*profiles, gpus=0, **slot_extra):
    """A one-entry layout with slots s0, s1, ... (profile or (profile, placement))."""
    slots = []
    for i, p in enumerate(profiles):
        prof, pin = p if isinstance(p, tuple) else (p, None)
        slot = {"name": "s%d" % i, "profile": prof, **slot_extra}
        if pin is not None:
            slot["placement"] = pin
        slots.append(slot)
    return [{"gpus": gpus, "slots": slots}]


def errors(layout, gpus):
    with pytest.raises(L.LayoutError) as info:
        plan(layout, gpus)
    return info.value


def gi_by_start(gpu):
    return {gi.start: gi for gi in gpu.gpu_instances}


# --------------------------------------------------------------------------------------------------- validation


def test_unknown_profile_names_the_slot_gpu_and_valid_profiles():
    err = errors(one("3g.40gb"), state(facts()))
    assert "slot 's0'" in str(err) and "GPU 0 (GPU-00000000-aaaa" in str(err)
    assert "unknown profile '3g.40gb' for NVIDIA A100-SXM4-40GB" in str(err)
    assert "3g.20gb (id 9)" in str(err) and "1g.5gb (id 19)" in str(err)


def test_profile_by_numeric_id_is_accepted():
    p = plan(one(9, "5"), state(facts()))
    assert [s.profile for s in p.slots] == ["3g.20gb", "4g.20gb"]


def test_too_many_instances_names_slots_and_limit():
    err = errors(one(*["1g.5gb"] * 8), state(facts()))
    assert "too many 1g.5gb instances (8: s0, s1, s2, s3, s4, s5, s6, s7)" in str(err)
    assert "at most 7, remove 1" in str(err)


def test_infeasible_compute_says_why_and_proposes_a_shrink():
    err = errors(one("4g.20gb", "3g.20gb", "1g.5gb"), state(facts()))
    assert "needs 8 compute slices, the GPU has 7" in str(err)
    assert "shrink 's1' 3g.20gb -> 2g.10gb" in str(err)
    assert "[s0: 4g.20gb, s1: 2g.10gb, s2: 1g.5gb]" in str(err)
    plan(one("4g.20gb", "2g.10gb", "1g.5gb"), state(facts()))  # the proposal is indeed feasible


def test_infeasible_memory_says_why_and_prefers_shrinking_to_dropping():
    err = errors(one("3g.20gb", "3g.20gb", "1g.5gb"), state(facts()))
    assert "needs 9 memory slices, the GPU has 8" in str(err)
    assert "shrink 's0' 3g.20gb -> 2g.10gb -> [s0: 2g.10gb, s1: 3g.20gb, s2: 1g.5gb]" in str(err)


def test_infeasible_without_a_shrink_drops_the_smallest_slot():
    err = errors(one("1g.5gb+me", *["1g.5gb"] * 7), state(facts()))
    assert "needs 8 GPU instances, the GPU allows 7" in str(err)
    assert "drop 's0' (1g.5gb+me) -> [s1: 1g.5gb, s2: 1g.5gb," in str(err)


def test_infeasible_placement_with_pins_is_explained():
    err = errors(one("4g.20gb", ("3g.20gb", 0)), state(facts()))
    assert "no placement of 4g.20gb+3g.20gb fits with the pinned placements" in str(err)
    assert "nearest feasible layout" in str(err)


def test_placement_must_be_a_valid_start():
    err = errors(one(("3g.20gb", 2)), state(facts()))
    assert "placement 2 is not a valid start for 3g.20gb; valid starts: 0, 4" in str(err)


def test_overlapping_pins_are_named():
    err = errors(one(("3g.20gb", 0), ("2g.10gb", 2)), state(facts()))
    assert "slots 's0' (3g.20gb@0) and 's1' (2g.10gb@2) have overlapping placements" in str(err)


def test_duplicate_slot_names_across_gpus():
    gpus = state(facts(0), facts(1))
    layout = [
        {"gpus": 0, "slots": [{"name": "chat", "profile": "3g.20gb"}]},
        {"gpus": 1, "slots": [{"name": "chat", "profile": "1g.5gb"}]},
    ]
    err = errors(layout, gpus)
    assert "slot name 'chat' is used 2 times (entry 1 on GPU 0, entry 2 on GPU 1)" in str(err)


def test_overlapping_selectors_name_both_entries():
    gpus = state(facts(0), facts(1))
    err = errors([{"gpus": "all", "slots": []}, {"gpus": 1, "slots": []}], gpus)
    assert (
        "GPU 1 (GPU-00000001-aaaa, NVIDIA A100-SXM4-40GB) is selected by both entry 1 (gpus: all) and entry 2 (gpus: 1)"
        in str(err)
    )


def test_slots_on_a_gpu_without_mig_are_refused():
    gpus = state(facts(0, model=None, mig=False, supported=False))
    with pytest.raises(L.LayoutError, match="does not support MIG; remove it from the selector"):
        L.plan_layout(one("1g.5gb"), gpus, {0: None})
    assert not L.plan_layout([{"gpus": 0, "mig_enabled": False}], gpus, {0: None}).changed


def test_mig_disabled_with_slots_and_unknown_keys_are_all_reported():
    layout = [{"gpus": 0, "mig_enabled": False, "slot": [], "slots": [{"name": "a", "profile": "1g.5gb", "size": 1}]}]
    err = errors(layout, state(facts()))
    assert len(err.problems) == 3
    assert "entry 1: unknown key 'slot'" in str(err)
    assert "entry 1 slot 1 ('a'): unknown key 'size'" in str(err)
    assert "mig_enabled is false but 1 slots are given" in str(err)


@pytest.mark.parametrize("name", ["Chat", "-x", "a" * 64, "a.b", "", None, "chat\n", "chat\nx"])
def test_slot_names_must_match_the_pattern(name):
    assert "must match" in str(errors([{"gpus": 0, "slots": [{"name": name, "profile": "1g.5gb"}]}], state(facts())))


def test_compute_instance_problems():
    layout = [
        {
            "gpus": 0,
            "slots": [
                {
                    "name": "a",
                    "profile": "3g.20gb",
                    "compute_instances": [
                        {"profile": "2c.3g.20gb"},
                        {"profile": "2c.3g.20gb"},
                        {"profile": "5c.3g.20gb"},
                    ],
                }
            ],
        }
    ]
    err = errors(layout, state(facts()))
    assert "compute instance profile '5c.3g.20gb' is not valid in 3g.20gb; valid: 1c.3g.20gb (id 0)" in str(err)
    assert "2 compute instances of 2c.3g.20gb, at most 1 fit in 3g.20gb" in str(err)
    assert "compute instances need 4 compute slices, 3g.20gb has 3" in str(err)


def test_layout_must_be_a_list_and_error_lists_all():
    with pytest.raises(L.LayoutError, match="must be a list"):
        L.parse_layout({"gpus": 0})
    err = L.LayoutError(["a", "b"])
    assert str(err) == "2 problems in the MIG layout:\n- a\n- b"


# --------------------------------------------------------------------------------------------------- selectors

HOST = (facts(0), facts(1, model=H100), facts(2, model=H100, bus="00000000:8A:00.0"))


@pytest.mark.parametrize(
    ("selector", "picked"),
    [
        ("all", [0, 1, 2]),
        (1, [1]),
        ("2", [2]),
        ("gpu-00000001-AAAA", [1]),
        ("00000000:8a:00.0", [2]),
        ("8A:00.0", [2]),
        ("NVIDIA H100 80GB HBM3", [1, 2]),
        ("a100-sxm4-40gb", [0]),
        ("arch:Hopper", [1, 2]),
        ([0, "arch:hopper"], [0, 1, 2]),
        ("NVIDIA B200", []),
    ],
)
def test_selectors(selector, picked):
    p = plan([{"gpus": selector, "mig_enabled": True, "slots": [{"name": "x", "profile": 19}]}], state(*HOST))
    assert [g.index for g in p.gpus] == picked
    assert [s.gpu_index for s in p.slots] == picked


def test_multi_gpu_selector_suffixes_slot_names_single_does_not():
    p = plan(
        [
            {"gpus": "arch:hopper", "slots": [{"name": "chat", "profile": "3g.40gb"}]},
            {"gpus": "GPU-00000000-aaaa", "slots": [{"name": "ocr", "profile": "1g.5gb"}]},
        ],
        state(*HOST),
    )
    assert sorted(s.name for s in p.slots) == ["chat-gpu1", "chat-gpu2", "ocr"]


@pytest.mark.parametrize("selector", [7, "GPU-nope", "00000000:99:00.0"])
def test_single_gpu_selector_matching_nothing_is_an_error(selector):
    err = errors([{"gpus": selector, "slots": []}], state(*HOST))
    assert "no GPU on this host matches selector" in str(err) and "GPU-00000002-aaaa" in str(err)


@pytest.mark.parametrize("selector", ["MIG-1234", True, "", None, -1])
def test_bad_selectors(selector):
    assert "entry 1" in str(errors([{"gpus": selector}], state(*HOST)))


def test_all_skips_gpus_without_mig():
    gpus = state(facts(0), facts(1, model=None, mig=False, supported=False))
    p = L.plan_layout([{"gpus": "all", "slots": [{"name": "a", "profile": "1g.5gb"}]}], gpus, {0: A100, 1: None})
    assert [s.name for s in p.slots] == ["a"]  # one MIG GPU selected: the name is used as written


# --------------------------------------------------------------------------------------------------- solver


@pytest.mark.parametrize("order", [["3g.20gb", "4g.20gb"], ["4g.20gb", "3g.20gb"]])
def test_solver_any_order(order):
    starts = L.solve_placements(A100, [(A100.profile(p), None) for p in order])
    assert dict(zip(order, starts, strict=True)) == {"4g.20gb": 0, "3g.20gb": 4}


def _first_fit(model, names):
    used = set()
    for name in names:
        prof = model.profile(name)
        start = next((s for s in prof.placement_starts if not prof.occupies(s) & used), None)
        if start is None:
            return False
        used |= prof.occupies(start)
    return True


def test_mix_that_fails_first_fit_in_written_order_solves():
    order = ["3g.20gb", "1g.5gb", "1g.5gb", "2g.10gb"]
    assert not _first_fit(A100, order)
    p = plan(one(*order), state(facts()))
    after = apply_plan_to_state(state(facts()), p)[0]
    assert sorted(gi.profile for gi in after.gpu_instances) == sorted(order)


def test_new_small_instance_keeps_big_profiles_placeable():
    starts = L.solve_placements(A100, [(A100.profile("1g.5gb"), None)])
    assert starts == (6,)  # leaves 4g.20gb, 3g.20gb@0 and three 2g.10gb starts free


def test_infeasible_returns_none():
    assert L.solve_placements(A100, [(A100.profile("7g.40gb"), None), (A100.profile("1g.5gb"), None)]) is None


def test_existing_matching_instances_are_kept():
    gpus = state(facts(gis=[(2, "3g.20gb", 4), (1, "1g.5gb", 0)]))
    p = plan(one("4g.20gb", "3g.20gb"), gpus)
    assert p.gpus[0].keep == (2,) and p.gpus[0].destroy == (1,)
    assert {s.name: s.gi_id for s in p.slots} == {"s0": None, "s1": 2}


def test_changing_one_slot_of_three_keeps_the_other_two():
    gpus = state(facts(gis=[(1, "3g.20gb", 4), (2, "2g.10gb", 0), (3, "1g.5gb", 2)]))
    p = plan(
        [
            {
                "gpus": 0,
                "slots": [
                    {"name": "chat", "profile": "3g.20gb"},
                    {"name": "cls", "profile": "2g.10gb"},
                    {"name": "ocr", "profile": "1g.10gb"},
                ],
            }
        ],
        gpus,
    )
    assert p.gpus[0].keep == (1, 2) and p.gpus[0].destroy == (3,)
    assert [(a.op, a.gi_id, a.placement) for a in p.actions if a.op.endswith("_gi")] == [
        ("destroy_gi", 3, (2, 1)),
        ("create_gi", None, (2, 2)),
    ]
    after = apply_plan_to_state(gpus, p)[0]
    assert {1, 2} <= {gi.id for gi in after.gpu_instances}


def test_same_profile_slots_with_different_splits_are_order_independent():
    split = {"name": "batch", "profile": "2g.10gb", "compute_instances": [{"profile": "1c.2g.10gb"}] * 2}
    whole = {"name": "chat", "profile": "2g.10gb"}
    gpus = apply_plan_to_state(state(facts()), plan([{"gpus": 0, "slots": [split, whole]}], state(facts())))
    again = plan([{"gpus": 0, "slots": [whole, split]}], gpus)
    assert not again.changed
    cis = {gi.id: len(gi.compute_instances) for gi in gpus[0].gpu_instances}
    assert {s.name: cis[s.gi_id] for s in again.slots} == {"chat": 1, "batch": 2}


def test_pinned_placement_moves_an_instance():
    gpus = state(facts(gis=[(1, "3g.20gb", 0)]))
    p = plan(one(("3g.20gb", 4)), gpus)
    assert [(a.op, a.placement) for a in p.actions if a.op.endswith("_gi")] == [
        ("destroy_gi", (0, 4)),
        ("create_gi", (4, 4)),
    ]


# --------------------------------------------------------------------------------------------------- planner


def test_noop_on_converged_state():
    gpus = state(facts(gis=[(1, "3g.20gb", 4), (2, "1g.5gb", 0), (3, "1g.5gb", 1)]))
    p = plan(one("1g.5gb", "3g.20gb", "1g.5gb"), gpus)
    assert not p.changed and p.actions == ()
    assert p.diff()["before"] == p.diff()["after"]
    assert next(s for s in p.slots if s.name == "s1").gi_id == 1


def test_ci_split_change_keeps_the_gpu_instance():
    gpus = state(facts(gis=[(1, "3g.20gb", 4)]))
    layout = [
        {
            "gpus": 0,
            "slots": [
                {
                    "name": "chat",
                    "profile": "3g.20gb",
                    "compute_instances": [{"profile": "1c.3g.20gb"}, {"name": "b", "profile": "2c.3g.20gb"}],
                }
            ],
        }
    ]
    p = plan(layout, gpus)
    assert [(a.op, a.gi_id, a.profile) for a in p.actions] == [
        ("destroy_ci", 1, "3g.20gb"),
        ("create_ci", 1, "2c.3g.20gb"),
        ("create_ci", 1, "1c.3g.20gb"),
    ]
    assert p.gpus[0].keep == (1,)
    assert [a.ci_name for a in p.actions if a.op == "create_ci"] == ["b", "ci0"]
    after = apply_plan_to_state(gpus, p)
    assert sorted(c.profile for c in after[0].gpu_instances[0].compute_instances) == ["1c.3g.20gb", "2c.3g.20gb"]
    assert not plan(layout, after).changed


def test_actions_are_ordered_destroys_first():
    gpus = state(
        facts(0, gis=[(1, "7g.40gb", 0, [(0, "1c.7g.40gb", []), (1, "1c.7g.40gb", [])])]),
        facts(1, model=H100, mig=False),
    )
    p = plan([{"gpus": "all", "slots": [{"name": "a", "profile": 9}, {"name": "b", "profile": 9}]}], gpus)
    ops = [(a.op, a.gpu_index) for a in p.actions]
    assert ops[:3] == [("destroy_ci", 0), ("destroy_ci", 0), ("destroy_gi", 0)]
    assert ops[3] == ("mig_mode", 1)
    assert [o for o, _unused in ops[4:]] == ["create_gi"] * 4 + ["create_ci"] * 4
    mode = p.actions[3]
    assert mode.enable is True and mode.needs_reset is False  # Hopper switches without reset


def test_ampere_enable_needs_reset_and_disable_destroys_first():
    p = plan(one("1g.5gb"), state(facts(mig=False)))
    assert p.actions[0].op == "mig_mode" and p.actions[0].needs_reset is True and p.gpus[0].needs_reset
    p = plan([{"gpus": 0, "mig_enabled": False}], state(facts(gis=[(1, "4g.20gb", 0)])))
    assert [a.op for a in p.actions] == ["destroy_ci", "destroy_gi", "mig_mode"] and p.actions[-1].enable is False


def test_pending_mode_is_reconciled():
    p = plan(one("1g.5gb"), state(facts(mig=True, pending=False)))
    assert p.actions[0].op == "mig_mode" and p.actions[0].enable and not p.actions[0].needs_reset


def test_unselected_gpus_are_untouched():
    gpus = state(facts(0), facts(1, gis=[(1, "1g.5gb", 0)]))
    p = plan(one("7g.40gb"), gpus)
    assert {a.gpu_index for a in p.actions} == {0} and [g.index for g in p.gpus] == [0]


def test_busy_destroy_is_refused_with_pids_unless_forced():
    gpus = state(facts(gis=[(3, "3g.20gb", 4, [(0, "3g.20gb", [4242, 77])])]))
    p = plan([{"gpus": 0, "slots": [{"name": "big", "profile": "7g.40gb"}]}], gpus)
    assert [a.busy_pids for a in p.actions if a.op.startswith("destroy")] == [(77, 4242), (77, 4242)]
    with pytest.raises(L.LayoutError) as info:
        L.check_busy(p)
    text = str(info.value)
    assert "GPU 0 (GPU-00000000-aaaa): GPU instance 3 (3g.20gb) has running processes 77, 4242" in text
    assert "compute instance 0 in GPU instance 3" in text and "slot 'big' needs it destroyed" in text
    assert len(L.check_busy(p, force=True)) == 2
    assert L.check_busy(plan(one("3g.20gb"), gpus)) == ()


def test_plan_to_dict_is_json_and_has_the_documented_shape():
    gpus = state(facts(gis=[(1, "1g.5gb", 0)]))
    p = plan(one("3g.20gb"), gpus)
    d = json.loads(json.dumps(p.to_dict()))
    assert set(d) == {"changed", "actions", "gpus"} and d["changed"] is True
    assert d["actions"][0]["op"] == "destroy_ci" and d["actions"][2] == {
        "op": "create_gi",
        "gpu_index": 0,
        "gpu_uuid": "GPU-00000000-aaaa",
        "slot": "s0",
        "gi_id": None,
        "ci_id": None,
        "ci_name": None,
        "profile": "3g.20gb",
        "profile_id": 9,
        "placement": {"start": 4, "size": 4},
        "gi_profile_id": None,
        "enable": None,
        "needs_reset": False,
        "busy_pids": [],
    }
    assert (p.slots[0].name, p.slots[0].start, p.slots[0].size, p.slots[0].gi_id) == ("s0", 4, 4, None)
    assert d["gpus"][0]["destroy"] == [1] and d["gpus"][0]["create"] == ["s0"]
    assert "1g.5gb @0 gi=1" in p.diff()["before"] and "3g.20gb @4 gi=new slot=s0" in p.diff()["after"]


def test_layout_from_state_round_trips_to_a_noop():
    gpus = state(
        facts(0, gis=[(1, "3g.20gb", 4, [(0, "1c.3g.20gb", []), (1, "2c.3g.20gb", [])]), (2, "1g.5gb", 0)]),
        facts(1, mig=False),
    )
    layout = L.layout_from_state(gpus)
    assert layout[0]["slots"][0] == {"name": "gpu0-1g-5gb-0", "profile": "1g.5gb", "placement": 0}
    assert layout[0]["slots"][1]["compute_instances"] == [{"profile": 0}, {"profile": 1}]
    assert layout[1] == {"gpus": 1, "mig_enabled": False, "slots": []}
    assert not plan(layout, gpus).changed


def test_gpu_state_from_facts():
    g = state(facts(gis=[(1, "3g.20gb", 4, [(0, "3g.20gb", [9])])]))[0]
    assert (g.index, g.mig_supported, g.mig_current, g.pci_device_id) == (0, True, True, "0x20B010DE")
    assert g.gpu_instances[0].busy_pids() == (9,) and g.gpu_instances[0].compute_instances[0].processes == (9,)
    assert L.gpu_state_from_facts(
        {"index": 1, "uuid": "GPU-x", "mig": {"supported": True, "current": "Enabled"}}
    ).mig_current
    with pytest.raises(L.LayoutError, match="malformed"):
        L.gpu_state_from_facts({"index": 0, "uuid": "GPU-x", "gpu_instances": [{"id": 1}]})


def test_simulation_rejects_a_plan_for_another_state():
    p = plan(one(("3g.20gb", 0)), state(facts()))
    with pytest.raises(L.LayoutError, match=r"cannot create 3g\.20gb at 0"):
        apply_plan_to_state(state(facts(gis=[(1, "1g.5gb", 1)])), p)


# --------------------------------------------------------------------------------------------------- properties


@st.composite
def configurations(draw, model):
    """A random valid set of GPU instances: [(profile, start, [ci profile names])]."""
    used, compute, out = set(), 0, []
    for _unused in range(draw(st.integers(0, 7))):
        prof = draw(st.sampled_from(model.profiles))
        start = draw(st.sampled_from(prof.placement_starts))
        count = sum(1 for p, _unused, _unused2 in out if p.id == prof.id)
        if (
            prof.occupies(start) & used
            or compute + prof.compute_slices > model.compute_slices
            or count >= prof.max_instances
        ):
            continue
        used |= prof.occupies(start)
        compute += prof.compute_slices
        cis, left = [], prof.compute_slices
        if draw(st.booleans()):
            for cp in draw(st.lists(st.sampled_from(prof.compute_profiles), max_size=4)):
                if cp.slice_count <= left and cis.count(cp.name) < cp.max_instances:
                    cis.append(cp.name)
                    left -= cp.slice_count
        out.append((prof, start, cis or [next(c.name for c in prof.compute_profiles if c.default)]))
    return out


@st.composite
def scenarios(draw):
    model = draw(st.sampled_from([A100, H100]))
    current = draw(configurations(model))
    gis = [(i + 1, p.name, s, [(j, c, []) for j, c in enumerate(cis)]) for i, (p, s, cis) in enumerate(current)]
    wanted = draw(configurations(model))
    slots = []
    for i, (prof, start, cis) in enumerate(wanted):
        slot = {"name": "slot%d" % i, "profile": prof.name}
        if draw(st.booleans()):
            slot["placement"] = start
        if cis != [prof.name]:
            slot["compute_instances"] = [{"profile": c} for c in cis]
        slots.append(slot)
    slots = draw(st.permutations(slots))
    return state(facts(0, model=model, gis=gis)), [{"gpus": 0, "slots": slots}]


def satisfies(gpu, layout, p):
    slots = layout[0]["slots"]
    assert len(gpu.gpu_instances) == len(slots)
    by_start = gi_by_start(gpu)
    for slot in slots:
        where = next(s for s in p.slots if s.name == slot["name"])
        gi = by_start[where.start]
        assert gi.profile == slot["profile"] and slot.get("placement", gi.start) == gi.start
        want = [c["profile"] for c in slot.get("compute_instances", [{"profile": slot["profile"]}])]
        assert Counter(c.profile for c in gi.compute_instances) == Counter(want)


@PROPERTY
@given(scenarios())
def test_property_apply_converges_and_keeps_ids(scenario):
    gpus, layout = scenario
    p = plan(layout, gpus)
    after = apply_plan_to_state(gpus, p)
    satisfies(after[0], layout, p)
    for slot in p.slots:
        if slot.gi_id is not None:
            gi = next(g for g in after[0].gpu_instances if g.id == slot.gi_id)
            assert (gi.profile, gi.start) == (slot.profile, slot.start)
    again = plan(layout, after)
    assert not again.changed and again.actions == ()
    assert {s.name: s.start for s in again.slots} == {s.name: s.start for s in p.slots}
    assert not plan([{"gpus": 0, "slots": list(reversed(layout[0]["slots"]))}], after).changed


def _max_kept(model, slots, existing):
    """Brute force: the most slots that can sit on an existing (profile, start) in any valid placement."""

    def best(i, used):
        if i == len(slots):
            return 0
        prof, pin = slots[i]
        options = [s for s in ([pin] if pin is not None else prof.placement_starts) if not prof.occupies(s) & used]
        scores = [((prof.name, s) in existing) + best(i + 1, used | prof.occupies(s)) for s in options]
        return max(scores, default=-100)

    return best(0, frozenset())


@PROPERTY
@given(scenarios())
def test_property_kept_count_is_maximal(scenario):
    gpus, layout = scenario
    model = find_model(gpus[0].name)
    slots = [(model.profile(s["profile"]), s.get("placement")) for s in layout[0]["slots"]]
    existing = {(gi.profile, gi.start) for gi in gpus[0].gpu_instances}
    assert len(plan(layout, gpus).gpus[0].keep) == _max_kept(model, slots, existing)


def _oracle(model, profiles):
    """Brute force: can these profiles be placed together?"""
    if len(profiles) > model.max_gpu_instances or sum(p.compute_slices for p in profiles) > model.compute_slices:
        return False
    if any(profiles.count(p) > p.max_instances for p in profiles):
        return False

    def place(i, used):
        if i == len(profiles):
            return True
        return any(
            place(i + 1, used | profiles[i].occupies(s))
            for s in profiles[i].placement_starts
            if not profiles[i].occupies(s) & used
        )

    return place(0, frozenset())


@PROPERTY
@given(
    st.sampled_from([A100, H100]).flatmap(
        lambda m: st.tuples(st.just(m), st.lists(st.sampled_from(m.profiles), max_size=8))
    )
)
def test_property_plan_succeeds_iff_feasible(model_profiles):
    model, profiles = model_profiles
    gpus = state(facts(0, model=model))
    layout = one(*[p.name for p in profiles])
    if _oracle(model, profiles):
        after = apply_plan_to_state(gpus, plan(layout, gpus))
        assert Counter(gi.profile for gi in after[0].gpu_instances) == Counter(p.name for p in profiles)
    else:
        with pytest.raises(L.LayoutError, match=r"infeasible|too many"):
            plan(layout, gpus)
