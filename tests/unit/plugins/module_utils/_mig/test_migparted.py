# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""mig-parted configs: shape rules, conversion with mig-parted's semantics, validation without a host."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.gpu.mig.plugins.module_utils._mig import layout as L
from ansible_collections.gpu.mig.plugins.module_utils._mig import migparted as _migparted
from ansible_collections.gpu.mig.tests.unit.plugins.module_utils._mig.test_layout import (
    H100,
    facts,
    models_for,
    plan,
    state,
)

MP_HOST = (facts(0), facts(1, model=H100), facts(2, model=H100), facts(3, model=None, mig=False, supported=False))
MP = {
    "version": "v1",
    "mig-configs": {
        "edge": [
            {
                "devices": [0, 1],
                "device-filter": "0x233010DE",
                "mig-enabled": True,
                "mig-devices": {"3g.40gb": 1, "2g.20gb": 1, "1g.10gb": 2},
            },
            {"devices": [2], "mig-enabled": True, "mig-devices": {"1c.3g.40gb": 4, "2c.3g.40gb": 1}},
            {"devices": [0], "mig-enabled": False},
        ],
        "all-disabled": [{"devices": "all", "mig-enabled": False}],
    },
}


def one(*entries, name="x") -> dict:
    return {"version": "v1", "mig-configs": {name: list(entries)}}


def convert(config, gpus_facts=MP_HOST, name=None):
    gpus = state(*gpus_facts)
    name = name or next(iter(config.get("mig-configs") or {"x": None}))
    return _migparted.layout_from_mig_parted(config, name, gpus, models_for(gpus)), gpus


def refused(config, gpus_facts=MP_HOST) -> str:
    with pytest.raises(L.LayoutError) as info:
        convert(config, gpus_facts)
    return str(info.value)


# ------------------------------------------------------------------------------------------------- conversion


def test_conversion_packs_compute_instances_and_names_slots_per_gpu():
    result, gpus = convert(MP, name="edge")
    assert result.entries == [
        {
            "gpus": 1,
            "mig_enabled": True,
            "slots": [
                {"name": "gpu1-3g-40gb-0", "profile": "3g.40gb"},
                {"name": "gpu1-2g-20gb-0", "profile": "2g.20gb"},
                {"name": "gpu1-1g-10gb-0", "profile": "1g.10gb"},
                {"name": "gpu1-1g-10gb-1", "profile": "1g.10gb"},
            ],
        },
        {
            "gpus": 2,
            "mig_enabled": True,
            "slots": [
                {
                    "name": "gpu2-3g-40gb-0",
                    "profile": "3g.40gb",
                    "compute_instances": [{"profile": "2c.3g.40gb"}, {"profile": "1c.3g.40gb"}],
                },
                {"name": "gpu2-3g-40gb-1", "profile": "3g.40gb", "compute_instances": [{"profile": "1c.3g.40gb"}] * 3},
            ],
        },
        {"gpus": 0, "mig_enabled": False, "slots": []},
    ]
    assert (result.skipped, result.warnings) == ([], [])
    p = plan(result.entries, gpus)
    assert len([a for a in p.actions if a.op == "create_ci" and a.gpu_index == 2]) == 5


def test_devices_all_skips_gpus_without_mig():
    result, _gpus = convert(MP, name="all-disabled")
    assert [e["gpus"] for e in result.entries] == [0, 1, 2]


def test_device_indices_the_host_lacks_are_skipped_and_reported():
    config = one(
        {"devices": [0, 1, 2, 3], "mig-enabled": False},
        {"devices": [4, 5], "mig-enabled": True, "mig-devices": {"1g.5gb": 7}},
        {"devices": [7, 1], "mig-enabled": True, "mig-devices": {"3g.20gb": 2}},
    )
    result, _gpus = convert(config, (facts(0), facts(1)))
    assert [(e["gpus"], e["mig_enabled"], len(e["slots"])) for e in result.entries] == [(0, False, 0), (1, True, 2)]
    assert result.skipped == [
        "mig-configs.x[0]: device 2 is not on this host (GPUs 0, 1); skipped, as mig-parted does",
        "mig-configs.x[0]: device 3 is not on this host (GPUs 0, 1); skipped, as mig-parted does",
        "mig-configs.x[1]: device 4 is not on this host (GPUs 0, 1); skipped, as mig-parted does",
        "mig-configs.x[1]: device 5 is not on this host (GPUs 0, 1); skipped, as mig-parted does",
        "mig-configs.x[2]: device 7 is not on this host (GPUs 0, 1); skipped, as mig-parted does",
    ]
    assert result.warnings == [
        "mig-configs.x[0] and mig-configs.x[2] both select GPU 1; the later entry wins, as in mig-parted"
    ]


def test_overlapping_entries_the_later_wins_with_one_warning_each():
    config = one(
        {"devices": "all", "mig-enabled": True, "mig-devices": {"1g.10gb": 7}},
        {"devices": [1], "device-filter": "0x233010DE", "mig-enabled": True, "mig-devices": {"7g.80gb": 1}},
        {"devices": [1, 2], "mig-enabled": False},
    )
    result, _gpus = convert(config, (facts(0, model=H100), facts(1, model=H100), facts(2, model=H100)))
    assert [(e["gpus"], e["mig_enabled"], [s["profile"] for s in e["slots"]]) for e in result.entries] == [
        (0, True, ["1g.10gb"] * 7),
        (1, False, []),
        (2, False, []),
    ]
    assert result.warnings == [
        "mig-configs.x[0] and mig-configs.x[1] both select GPU 1; the later entry wins, as in mig-parted",
        "mig-configs.x[1] and mig-configs.x[2] both select GPU 1; the later entry wins, as in mig-parted",
        "mig-configs.x[0] and mig-configs.x[2] both select GPU 2; the later entry wins, as in mig-parted",
    ]


@pytest.mark.parametrize(
    ("devices", "profiles"),
    [
        ({"3c.3g.20gb": 1}, ["3g.20gb"]),
        ({"7c.7g.40gb": 1}, ["7g.40gb"]),
        ({"1c.1g.5gb+me": 1, "1c.1g.5gb": 2}, ["1g.5gb+me", "1g.5gb", "1g.5gb"]),
        ({"3g.20gb": 1, "3c.3g.20gb": 1}, ["3g.20gb", "3g.20gb"]),
    ],
)
def test_a_full_compute_split_spelled_out_is_the_plain_profile(devices, profiles):
    result, gpus = convert(one({"devices": [0], "mig-enabled": True, "mig-devices": devices}), (facts(0),))
    (entry,) = result.entries
    assert sorted(s["profile"] for s in entry["slots"]) == sorted(profiles)
    assert all("compute_instances" not in s for s in entry["slots"])
    assert plan(result.entries, gpus).changed


@pytest.mark.parametrize(
    ("device_filter", "subsystem", "selected", "warned"),
    [
        ("0x20B010DE:0x147E10DE", "0x147E10DE", True, False),
        ("0x20b010de:0x147e10de", "0x147E10DE", True, False),  # Go's ParseUint reads hex in either case
        ("0x20B010DE:0x145F10DE", "0x147E10DE", False, False),
        (["0x20B010DE:0x145F10DE", "0x20B010DE"], "0x147E10DE", True, False),
        ("0x20B010DE:0x147E10DE", None, True, True),  # subsystem unknown: the device id alone, with a warning
        ("0x20B010DE:0x147E10DE", "n/a", True, True),
        ("0x233010DE:0x147E10DE", "0x147E10DE", False, False),
    ],
)
def test_device_filter_with_a_subsystem_id_matches_both(device_filter, subsystem, selected, warned):
    gpu = dict(facts(0), pci_subsystem_id=subsystem)
    config = one({"devices": "all", "device-filter": device_filter, "mig-enabled": True, "mig-devices": {"7g.40gb": 1}})
    result, _gpus = convert(config, (gpu,))
    assert [e["gpus"] for e in result.entries] == ([0] if selected else [])
    assert bool(result.warnings) == warned
    if warned:
        assert "PCI subsystem id is unknown" in result.warnings[0]


def test_gpu_without_mig_named_by_index():
    host = (facts(0), facts(1, model=None, mig=False, supported=False))
    result, _gpus = convert(one({"devices": [0, 1], "mig-enabled": False}), host)
    assert [e["gpus"] for e in result.entries] == [0]  # mig-parted skips it when MIG is to be off
    message = refused(one({"devices": [1], "mig-enabled": True, "mig-devices": {"1g.5gb": 1}}), host)
    assert "mig-configs.x[0] on GPU 1 (GPU-00000001-aaaa, NVIDIA L4): the GPU does not support MIG" in message


def test_unreadable_gpu_named_by_index_is_refused_with_its_error():
    lost = dict(facts(1), error="GPU 1: the GPU has fallen off the bus", mig={"supported": False})
    message = refused(one({"devices": [1], "mig-enabled": False}), (facts(0), lost))
    assert "the GPU cannot be read: GPU 1: the GPU has fallen off the bus" in message
    result, _gpus = convert(one({"devices": "all", "mig-enabled": False}), (facts(0), lost))
    assert [e["gpus"] for e in result.entries] == [0]


# ------------------------------------------------------------------------------ counts equal: left as it is


def test_gpu_with_the_configs_counts_is_left_as_it_is():
    """mig-parted compares counts only: [1c, 1c] + [1c] in two 3g GIs already is three 1c.3g.20gb devices."""
    split = [(0, "1c.3g.20gb", []), (1, "1c.3g.20gb", [])]
    gpu = facts(0, gis=[(1, "3g.20gb", 0, split), (2, "3g.20gb", 4, [(0, "1c.3g.20gb", [])])])
    result, gpus = convert(one({"devices": "all", "mig-enabled": True, "mig-devices": {"1c.3g.20gb": 3}}), (gpu,))
    assert result.entries == L.layout_from_state(gpus)
    assert not plan(result.entries, gpus).changed


def test_default_compute_instances_count_as_the_plain_profile():
    gpu = facts(0, model=H100, gis=[(1, "3g.40gb", 4), (2, "1g.10gb", 0)])
    config = one({"devices": "all", "mig-enabled": True, "mig-devices": {"3c.3g.40gb": 1, "1g.10gb": 1}})
    result, gpus = convert(config, (gpu,))
    assert not plan(result.entries, gpus).changed


def test_other_counts_are_planned_from_the_config():
    gpu = facts(0, gis=[(1, "3g.20gb", 4, [(0, "1c.3g.20gb", []), (1, "1c.3g.20gb", [])])])
    result, gpus = convert(one({"devices": "all", "mig-enabled": True, "mig-devices": {"1c.3g.20gb": 3}}), (gpu,))
    assert result.entries[0]["slots"] == [
        {"name": "gpu0-3g-20gb-0", "profile": "3g.20gb", "compute_instances": [{"profile": "1c.3g.20gb"}] * 3}
    ]
    assert [a.op for a in plan(result.entries, gpus).actions] == ["create_ci"]


def test_mig_off_or_an_instance_without_compute_instances_is_not_equal():
    config = one({"devices": "all", "mig-enabled": True, "mig-devices": {}})
    result, gpus = convert(config, (facts(0, mig=False),))
    assert result.entries == [{"gpus": 0, "mig_enabled": True, "slots": []}]
    empty_gi = facts(0, gis=[(1, "3g.20gb", 4, [])])
    result, gpus = convert(config, (empty_gi,))
    assert result.entries == [{"gpus": 0, "mig_enabled": True, "slots": []}]
    assert [a.op for a in plan(result.entries, gpus).actions] == ["destroy_gi"]


# ---------------------------------------------------------------------------------------------------- packing


@pytest.mark.parametrize(
    ("devices", "splits"),
    [
        # largest compute instance first, each into the GPU instance created last while it has room
        ({"1c.3g.20gb": 4, "2c.3g.20gb": 1}, [["2c.3g.20gb", "1c.3g.20gb"], ["1c.3g.20gb"] * 3]),
        ({"1c.7g.40gb": 3, "4c.7g.40gb": 1}, [["4c.7g.40gb", "1c.7g.40gb", "1c.7g.40gb", "1c.7g.40gb"]]),
        ({"2c.3g.20gb": 1, "1c.3g.20gb": 1}, [["2c.3g.20gb", "1c.3g.20gb"]]),
        # the last-created order needs three 3g instances (A100 holds two): mig-parted tries other orders
        ({"2c.3g.20gb": 2, "1c.3g.20gb": 2}, [["2c.3g.20gb", "1c.3g.20gb"], ["2c.3g.20gb", "1c.3g.20gb"]]),
    ],
)
def test_compute_instances_are_packed_as_mig_parted_creates_them(devices, splits):
    result, gpus = convert(one({"devices": [0], "mig-enabled": True, "mig-devices": devices}), (facts(0),))
    assert [[c["profile"] for c in s["compute_instances"]] for s in result.entries[0]["slots"]] == splits
    assert plan(result.entries, gpus).changed


# ---------------------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({**MP, "extra": 1}, "mig-parted config: unknown key 'extra'"),
        ({**MP, "version": "v2"}, "version is 'v2'; it must be 'v1'"),
        ({"mig-configs": MP["mig-configs"]}, "'version' is required"),
        ({"version": "v1", "mig-configs": {}}, "must map config names to non-empty lists"),
        ({"version": "v1", "mig-configs": {"x": []}}, "wrong: 'x'"),
        (one({"devices": "all", "mig-enabled": True, "mig-device": {}}), "mig-configs.x[0]: unknown key 'mig-device'"),
        (
            one({"devices": [0], "mig-enabled": False, "mig-devices": {"1g.5gb": 1}}),
            "mig-configs.x[0]: mig-enabled is false but mig-devices is not empty",
        ),
        (
            one({"devices": [0], "mig-enabled": True}),
            "mig-configs.x[0]: mig-enabled is true but mig-devices is missing",
        ),
        (
            one({"devices": [0], "mig-enabled": True, "mig-devices": None}),
            "mig-configs.x[0]: mig-enabled is true but mig-devices is missing",
        ),
        (
            one({"devices": [0], "mig-enabled": True, "mig-devices": {"1g.5gb": 0, "2g.10gb": 0}}),
            "must not have every count 0 (mig-parted refuses it)",
        ),
        (
            one({"devices": [0], "mig-enabled": True, "mig-devices": {"19": 1, "1G.5GB": 1, " 1g.5gb": 1}}),
            "wrong: '19', '1G.5GB', ' 1g.5gb'",
        ),
        (
            one({"devices": [0], "mig-enabled": True, "mig-devices": {"1g.5gb+me-x": 1, "1g.5gb+me,me": 1}}),
            "wrong: '1g.5gb+me-x', '1g.5gb+me,me'",
        ),
        (
            one({"devices": "all", "device-filter": "0x20B010DE:0x1:0x2", "mig-enabled": False}),
            "wrong: '0x20B010DE:0x1:0x2'",
        ),
        (
            one({"devices": "all", "device-filter": ["0x20B010DE", "A100"], "mig-enabled": False}),
            "wrong: 'A100'",
        ),
        (one({"mig-enabled": True, "mig-devices": {}}), "'devices' is required"),
        (
            one({"devices": [0], "mig-enabled": True, "mig-devices": {"5c.3g.20gb": 1}}),
            "5c.3g.20gb is not a compute instance profile of 3g.20gb on NVIDIA A100-SXM4-40GB",
        ),
        (
            one({"devices": [0], "mig-enabled": True, "mig-devices": {"3g.40gb": 1}}),
            "mig-configs.x[0] on GPU 0 (GPU-00000000-aaaa, NVIDIA A100-SXM4-40GB): mig-devices: 3g.40gb is not a MIG"
            " profile of NVIDIA A100-SXM4-40GB",
        ),
        (
            one({"devices": [0], "mig-enabled": True, "mig-devices": {"1g.5gb": 10**9}}),
            "1g.5gb asks for 1000000000, a NVIDIA A100-SXM4-40GB holds at most 7",
        ),
    ],
)
def test_refused_with_the_key_named(config, message):
    assert message in refused(config)


def test_every_shape_problem_is_listed_at_once():
    config = one(
        {"devices": [0], "mig-enabled": True},
        {"devices": "some", "mig-enabled": "yes", "mig-devices": {"1g.5gb": -1}},
    )
    problems = _migparted.check_config(config)
    assert len(problems) == 4, problems


def test_unknown_config_name_lists_available():
    gpus = state(*MP_HOST)
    with pytest.raises(L.LayoutError, match="no config named 'nope'; available: all-disabled, edge"):
        _migparted.layout_from_mig_parted(MP, "nope", gpus, models_for(gpus))


@pytest.mark.parametrize(
    ("key", "parsed"),
    [
        ("3g.20gb", (3, 3, 20, "")),
        ("3c.3g.20gb", (3, 3, 20, "")),
        ("1c.3g.20gb", (1, 3, 20, "")),
        ("1g.5gb+me", (1, 1, 5, "+me")),
        ("1g.24gb-me", (1, 1, 24, "-me")),
        ("1g.24gb+me.all", (1, 1, 24, "+me.all")),
        ("1g.24gb+me,gfx", (1, 1, 24, "+gfx,me")),
        ("1g.5gb+", None),
        ("1g.5gb+me.", None),
        ("1g.5gb+1me", None),
        ("1g.5gb+me-gfx", None),
        ("g.5gb", None),
        ("1g.5GB", None),
        (7, None),
    ],
)
def test_profile_keys_parse_as_mig_parted_parses_them(key, parsed):
    result = _migparted.parse_profile(key)
    assert (tuple(result) if result else None) == parsed


# ---------------------------------------------------------------------------------------- validation, no host


def test_validation_lists_every_problem_on_every_model_a_filter_names():
    config = {
        "version": "v1",
        "mig-configs": {
            "good": [
                {"devices": "all", "device-filter": "0x20B010DE", "mig-enabled": True, "mig-devices": {"1g.5gb": 7}}
            ],
            "bad": [
                {
                    "devices": "all",
                    "device-filter": ["0x20B010DE", "0x233010DE"],
                    "mig-enabled": True,
                    "mig-devices": {"3g.20gb": 2, "1g.5gb": 2},
                },
                {"devices": [0], "device-filter": "0x294110DE", "mig-enabled": True, "mig-devices": {"1g.23gb": 7}},
            ],
        },
    }
    check = _migparted.validate_config(config)
    assert len(check.problems) == 3, check.problems
    assert check.problems[0].startswith("mig-configs.bad[0] on NVIDIA A100-SXM4-40GB: ")
    assert "infeasible layout (needs 8 compute slices, the GPU has 7)" in check.problems[0]
    assert all(p.startswith("mig-configs.bad[0] on NVIDIA H100 80GB HBM3: ") for p in check.problems[1:])
    assert check.fits == {"good": ["NVIDIA A100-SXM4-40GB"], "bad": []}
    assert check.unchecked == [
        "mig-configs.bad[1]: device-filter 0x294110DE is no GPU model of the catalog; not checked"
    ]


def test_validation_of_an_entry_without_filter():
    config = one({"devices": "all", "mig-enabled": True, "mig-devices": {"7g.80gb": 2}})
    check = _migparted.validate_config(config)  # H100 and A100-80GB have 7g.80gb, but one each
    assert check.problems and all("7g.80gb asks for 2" in p for p in check.problems)
    assert _migparted.validate_config(one({"devices": "all", "mig-enabled": True, "mig-devices": {"1g.5gb": 7}})) == (
        [],
        {"x": ["NVIDIA A100-SXM4-40GB"]},
        [],
    )
    unknown = _migparted.validate_config(
        one({"devices": "all", "mig-enabled": True, "mig-devices": {"1g.24gb+gfx": 4}})
    )
    assert unknown.problems == [] and unknown.unchecked == [
        "mig-configs.x[0]: its profiles are on no GPU model of the catalog; not checked"
    ]
    strict = _migparted.validate_config(
        one({"devices": "all", "mig-enabled": True, "mig-devices": {"1g.5gb": 7}}),
        models=["NVIDIA A100-SXM4-40GB", "NVIDIA H100 80GB HBM3"],
    )
    assert (
        len(strict.problems) == 1 and "on NVIDIA H100 80GB HBM3: mig-devices: 1g.5gb is not a MIG" in strict.problems[0]
    )


def test_validation_reports_shape_problems_and_unknown_models():
    check = _migparted.validate_config(one({"devices": "all", "mig-enabled": True}), models=["NVIDIA Z9"])
    assert check.problems[0] == (
        "mig-configs.x[0]: mig-enabled is true but mig-devices is missing (mig-parted requires it); write"
        " mig-devices: {} for MIG on with no instances"
    )
    assert check.problems[1].startswith("models: not in the catalog: NVIDIA Z9; known: NVIDIA A100-SXM4-40GB")
    assert _migparted.validate_config([1, 2]).problems == [
        "mig-parted config: must be a mapping with keys version, mig-configs, not list [1, 2]"
    ]


# ------------------------------------------------------------------------------------------- no traceback, ever

WORDS = ["version", "mig-configs", "devices", "device-filter", "mig-enabled", "mig-devices", "all", "v1", "x"]
PROFILE_KEYS = ["1g.5gb", "3c.3g.20gb", "1c.3g.20gb", "7g.80gb", "1g.5gb+me", "1g.24gb-me", "2c.7g.40gb", "0x20B010DE"]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 9),
    st.sampled_from(WORDS + PROFILE_KEYS + ["0x20B010DE:0x147E10DE", "0x233010DE"]),
    st.text(max_size=6),
)
JUNK = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(WORDS + PROFILE_KEYS), inner, max_size=4),
    ),
    max_leaves=12,
)
ENTRY = st.fixed_dictionaries(
    {
        "devices": st.one_of(st.just("all"), st.lists(st.integers(0, 9), min_size=1, max_size=3)),
        "mig-enabled": st.booleans(),
    },
    optional={
        "mig-devices": st.dictionaries(st.sampled_from(PROFILE_KEYS), st.integers(0, 8), max_size=3),
        "device-filter": st.sampled_from(["0x20B010DE", "0x233010DE:0x147E10DE", ["0x20B010DE", "0x233010DE"]]),
    },
)
CONFIGS = st.one_of(
    JUNK,
    st.builds(
        lambda entries: {"version": "v1", "mig-configs": {"x": entries}}, st.lists(ENTRY, min_size=1, max_size=4)
    ),
)


@settings(max_examples=400, derandomize=True, database=None, deadline=None)
@given(config=CONFIGS)
def test_any_input_is_converted_or_refused_with_a_message(config):
    check = _migparted.validate_config(config)
    assert all(isinstance(p, str) and p for p in check.problems)
    gpus = state(
        facts(0), facts(1, model=H100, gis=[(1, "1g.10gb", 0)]), facts(2, model=None, mig=False, supported=False)
    )
    try:
        result = _migparted.layout_from_mig_parted(config, "x", gpus, models_for(gpus))
    except L.LayoutError as exc:
        assert exc.problems and all(exc.problems)
        return
    try:
        L.plan_layout(result.entries, gpus, models_for(gpus))
    except L.LayoutError as exc:
        assert exc.problems and all(exc.problems)
