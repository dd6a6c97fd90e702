# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Fuzz mig_instances with malformed layouts and mig-parted configs: one field broken at a time, every field.

Each generated input is invalid by construction. The module must fail with a message (never a traceback: an
exception other than the module's exit fails the test) and leave the simulated host byte for byte as it was.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pynvml
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nvmlsim
from ansible_collections.gpu.mig.plugins.module_utils._mig import layout as _layout
from ansible_collections.gpu.mig.plugins.modules import mig_instances
from nvmlsim import models
from nvmlsim.testing import make_sim_host

A100 = models.lookup("A100-SXM4-40GB")
SLOT = {"name": "chat", "profile": "3g.20gb"}
FUZZ = settings(
    max_examples=1000, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)

junk = st.one_of(
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.integers(-(10**12), 10**12),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
    st.lists(st.integers(), max_size=3),
)
not_a_list = st.one_of(
    st.booleans(),
    st.floats(),
    st.text(max_size=6),
    st.integers(),
    st.dictionaries(st.text(), st.integers(), max_size=2),
)
not_a_mapping = st.one_of(
    st.none(), st.booleans(), st.floats(), st.text(max_size=6), st.integers(), st.lists(st.integers(), max_size=2)
)
not_a_bool = st.one_of(
    st.floats(),
    st.text(max_size=6),
    st.integers(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
huge = st.integers(10**6, 10**12)
bad_selector = st.one_of(
    st.booleans(),
    st.floats(),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.integers(max_value=-1),
    st.integers(2, 10**12),  # the host has GPUs 0 and 1
    st.just(""),
    st.just("  "),
    st.text(max_size=8).map(lambda t: "MIG-" + t),
)
bad_gpus = st.one_of(bad_selector, st.just([]), st.lists(bad_selector, min_size=1, max_size=3))
bad_name = st.one_of(
    st.none(), st.text(max_size=70).filter(lambda t: not _layout.SLOT_NAME_RE.match(t)), st.integers(), st.booleans()
)
bad_profile = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(),
    st.just(""),
    st.integers(max_value=-1),
    st.integers(100, 10**12),
    st.text(max_size=10).filter(lambda t: A100.profile(t) is None),
    st.lists(st.text(max_size=3), max_size=2),
)
bad_placement = st.one_of(
    st.integers(max_value=-1),
    st.integers(8, 10**12),
    st.booleans(),
    st.floats(),
    st.text(max_size=4),
    st.lists(st.integers(), max_size=2),
)
bad_ci_profile = st.one_of(
    st.booleans(),
    st.floats(),
    st.integers(max_value=-1),
    st.integers(100, 10**12),
    st.text(max_size=10).filter(lambda t: t not in ("default", "3g.20gb", "1c.3g.20gb", "2c.3g.20gb", "0", "1", "2")),
)
bad_ci = st.one_of(
    bad_ci_profile,
    st.builds(lambda p: {"profile": p}, bad_ci_profile),
    st.builds(lambda n: {"name": n, "profile": "1c.3g.20gb"}, bad_name.filter(lambda n: n is not None)),
    st.builds(lambda k: {k: 1}, st.text(max_size=6).filter(lambda k: k not in ("name", "profile"))),
    st.floats(),
    st.lists(st.integers(), max_size=2),
)
bad_cis = st.one_of(st.just([]), not_a_list, st.lists(bad_ci, min_size=1, max_size=3))
unknown_key = st.text(min_size=1, max_size=8)


def with_slot(**fields):
    return {"layout": [{"gpus": 0, "slots": [dict(SLOT, **fields)]}]}


@st.composite
def broken_layouts(draw) -> dict:
    """mig_instances arguments with exactly one kind of problem, in any field of a layout."""
    field = draw(st.sampled_from(sorted(BROKEN_LAYOUT_FIELDS)))
    return BROKEN_LAYOUT_FIELDS[field](draw)


BROKEN_LAYOUT_FIELDS = {
    "entry.gpus": lambda draw: {"layout": [{"gpus": draw(bad_gpus), "slots": [SLOT]}]},
    "entry.gpus missing": lambda draw: {"layout": [{"slots": [SLOT]}]},
    "entry.mig_enabled": lambda draw: {"layout": [{"gpus": 0, "mig_enabled": draw(not_a_bool), "slots": [SLOT]}]},
    "entry.slots": lambda draw: {"layout": [{"gpus": 0, "slots": draw(not_a_list)}]},
    "entry.slots missing": lambda draw: {"layout": [{"gpus": draw(st.sampled_from([0, 1, "all"]))}]},
    "entry unknown key": lambda draw: {
        "layout": [
            {
                "gpus": 0,
                "slots": [SLOT],
                draw(unknown_key.filter(lambda k: k not in ("gpus", "mig_enabled", "slots"))): draw(junk),
            }
        ]
    },
    "entry": lambda draw: {"layout": [draw(not_a_mapping)]},
    "slot": lambda draw: {"layout": [{"gpus": 0, "slots": [draw(not_a_mapping)]}]},
    "slot.name": lambda draw: with_slot(name=draw(bad_name)),
    "slot.profile": lambda draw: with_slot(profile=draw(bad_profile)),
    "slot.placement": lambda draw: with_slot(placement=draw(bad_placement)),
    "slot.compute_instances": lambda draw: with_slot(compute_instances=draw(bad_cis)),
    "slot unknown key": lambda draw: with_slot(
        **{draw(unknown_key.filter(lambda k: k not in ("name", "profile", "placement", "compute_instances"))): 1}
    ),
    "slot names twice": lambda draw: {"layout": [{"gpus": 0, "slots": [SLOT, dict(SLOT, profile="1g.5gb")]}]},
    "too many slots": lambda draw: {
        "layout": [
            {"gpus": 0, "slots": [{"name": "s%d" % i, "profile": "1g.5gb"} for i in range(draw(st.integers(8, 200)))]}
        ]
    },
    "state absent with a layout": lambda draw: {"state": "absent", "layout": [{"gpus": 0, "slots": [SLOT]}]},
    "gpus with state present": lambda draw: {
        "gpus": [draw(st.sampled_from(["0", "all"]))],
        "layout": [{"gpus": 0, "slots": [SLOT]}],
    },
    "layout": lambda draw: {
        "layout": draw(st.one_of(st.floats(), st.booleans(), st.integers(), st.text(min_size=1, max_size=5)))
    },
}


def config(**entry) -> dict:
    return {
        "version": "v1",
        "mig-configs": {"c": [dict({"devices": "all", "mig-enabled": True, "mig-devices": {"1g.5gb": 1}}, **entry)]},
    }


BROKEN_MIG_PARTED_FIELDS = {
    "version": lambda draw: dict(config(), version=draw(junk.filter(lambda v: v != "v1"))),
    "mig-configs": lambda draw: {"version": "v1", "mig-configs": draw(not_a_mapping)},
    "named config": lambda draw: {
        "version": "v1",
        "mig-configs": {
            "c": draw(
                st.one_of(
                    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), st.text(max_size=4), st.integers()
                )
            )
        },
    },
    "entry": lambda draw: {"version": "v1", "mig-configs": {"c": [draw(not_a_mapping)]}},
    "devices": lambda draw: config(
        devices=draw(
            st.one_of(
                st.just([]),
                st.integers(),
                st.floats(),
                st.text(max_size=4).filter(lambda t: t != "all"),
                st.lists(
                    st.one_of(st.integers(max_value=-1), st.floats(), st.text(max_size=2), st.booleans()),
                    min_size=1,
                    max_size=3,
                ),
            )
        )
    ),
    "device-filter": lambda draw: config(
        **{
            "device-filter": draw(
                st.one_of(
                    st.integers(),
                    st.just(""),
                    st.lists(st.integers(), min_size=1, max_size=2),
                    st.floats(),
                    st.booleans(),
                )
            )
        }
    ),
    "mig-enabled": lambda draw: config(**{"mig-enabled": draw(not_a_bool)}),
    "mig-devices": lambda draw: config(
        **{
            "mig-devices": draw(
                st.one_of(
                    not_a_list.filter(lambda v: not isinstance(v, dict) and v != "" and v != 0 and v is not False),
                    st.lists(st.text(max_size=3), min_size=1, max_size=2),
                )
            )
        }
    ),
    "mig-devices count": lambda draw: config(
        **{
            "mig-devices": {
                "1g.5gb": draw(
                    st.one_of(st.integers(max_value=-1), huge, st.floats(), st.booleans(), st.text(max_size=3))
                )
            }
        }
    ),
    "mig-devices profile": lambda draw: config(
        **{"mig-devices": {draw(st.text(max_size=8).filter(lambda t: A100.profile(t) is None)): 1}}
    ),
    "entry unknown key": lambda draw: config(
        **{draw(unknown_key.filter(lambda k: k not in ("devices", "device-filter", "mig-enabled", "mig-devices"))): 1}
    ),
    "disabled with devices": lambda draw: config(**{"mig-enabled": False}),
}


@st.composite
def broken_configs(draw) -> dict:
    """mig_instances arguments with a mig-parted config broken in one field."""
    field = draw(st.sampled_from(sorted(BROKEN_MIG_PARTED_FIELDS)))
    return {"mig_parted_config": BROKEN_MIG_PARTED_FIELDS[field](draw), "mig_parted_config_name": "c"}


@pytest.fixture(scope="module")
def fuzz_host():
    with tempfile.TemporaryDirectory() as tmp:
        host = make_sim_host(
            Path(tmp) / "fuzz",
            "A100-SXM4-40GB:mig=on",
            "H100-80GB:mig=on",
            instances=["0:3g.20gb@4", "0:2g.10gb@0", "1:1g.10gb@6"],
            init=False,
        )
        yield host
    nvmlsim.uninstall(pynvml)


def assert_refused_unchanged(run_module, snapshot, host, args: dict, check_mode: bool) -> None:
    before = snapshot(host)
    result, failed = run_module(mig_instances, args, check_mode=check_mode)
    assert failed and result.get("changed") is not True, (args, result)
    assert result["msg"] and "Traceback" not in result["msg"], (args, result)
    assert snapshot(host) == before, args


@FUZZ
@given(args=broken_layouts(), check_mode=st.booleans())
def test_malformed_layouts_fail_clearly_and_change_nothing(fuzz_host, run_module, snapshot, args, check_mode):
    assert_refused_unchanged(run_module, snapshot, fuzz_host, args, check_mode)


@settings(FUZZ, max_examples=600)
@given(args=broken_configs(), check_mode=st.booleans())
def test_malformed_mig_parted_configs_fail_clearly_and_change_nothing(
    fuzz_host, run_module, snapshot, args, check_mode
):
    assert_refused_unchanged(run_module, snapshot, fuzz_host, args, check_mode)
