# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""preflight_report with one layout for a mixed fleet: the selector rule of gpu.mig._select decides what a host does,
and what gpu.mig.mig_instances refuses blocks the host with mig_instances' own words."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.gpu.mig.plugins.filter.preflight import preflight_report
from ansible_collections.gpu.mig.plugins.module_utils._mig import apply as _apply
from ansible_collections.gpu.mig.plugins.module_utils._mig import layout as _layout
from ansible_collections.gpu.mig.plugins.module_utils._mig import nvml as _nvml
from ansible_collections.gpu.mig.plugins.module_utils._mig.select import selector_problem
from ansible_collections.gpu.mig.tests.unit.plugins.filter import mig_gpu_facts

DRIVER = {"loaded": True, "error": None, "driver_version": "550.90.07", "cuda_driver_version": "12.4"}
L4 = {
    "index": 0,
    "name": "NVIDIA L4",
    "uuid": "GPU-0000-l4",
    "pci_bus_id": "00000000:07:00.0",
    "architecture": "ada",
    "mig": {"supported": False, "current": None, "pending": None},
    "gpu_instances": [],
    "processes": [],
}
MIXED_FLEET = [
    {"gpus": "NVIDIA A100-SXM4-40GB", "slots": [{"name": "chat", "profile": "4g.20gb"}]},
    {"gpus": "arch:hopper", "slots": [{"name": "chat", "profile": "3g.40gb"}]},
]


def report(layout: list) -> dict:
    return preflight_report({"nvidia_mig": {"driver": DRIVER, "gpus": [L4]}}, "l4-host", layout=layout)


def test_layout_for_other_models_leaves_a_host_without_mig_alone():
    found = report(MIXED_FLEET)
    assert found["verdict"] == "skip" and found["reasons"] == []
    assert found["gpus"][0]["managed"] is False


@pytest.mark.parametrize("selector", [0, "GPU-0000-l4", "07:00.0", "NVIDIA L4", "arch:ada", 3])
def test_layout_naming_a_gpu_here_still_blocks(selector):
    """An entry that selects the L4 (any kind of selector), or names one GPU that is not here, concerns the host."""
    found = report([*MIXED_FLEET, {"gpus": selector, "slots": []}])
    assert found["verdict"] == "blocked"
    assert "a MIG layout is set but no GPU supports MIG (NVIDIA L4)" in [r["msg"] for r in found["reasons"]]


# --- one rule: preflight_report picks what gpu.mig.mig_instances (_layout) picks ----------------------------------

MODELS = [
    ("NVIDIA A100-SXM4-40GB", "ampere", True),
    ("NVIDIA H100 80GB HBM3", "hopper", True),
    ("NVIDIA L4", "ada", False),
]
SELECTORS = [
    "all", "ALL", 0, 1, 2, 5, "1", "GPU-0001", "gpu-0009", "07:00.0", "0000:0F:00.0", "00000000:17:00.0", "99:00.0",
    "NVIDIA L4", "nvidia a100-sxm4-40gb", "H100 80GB HBM3", "NVIDIA A30", "arch:hopper", "arch:ada", "arch:AMPERE",
]  # fmt: skip
MALFORMED = ["arch:hoper", "MIG-0001", "-1", "07:00.9", ""]


def fact_gpu(index: int, model: tuple | None) -> dict:
    """A mig_facts GPU of a model of MODELS (MIG on, no instances), or (None) one that could not be read."""
    if model is None:
        return _nvml.failed_gpu(index, f"GPU {index}: lost")
    name, arch, mig = model
    found = mig_gpu_facts.gpu(index, name, (True, True) if mig else None)
    return {**found, "uuid": f"GPU-{index:04d}", "architecture": arch}


host_gpus = st.lists(st.sampled_from([*MODELS, None]), min_size=1, max_size=4).map(
    lambda models: [fact_gpu(i, m) for i, m in enumerate(models)]
)
entry_selectors = st.one_of(st.sampled_from(SELECTORS), st.lists(st.sampled_from(SELECTORS), min_size=1, max_size=3))
layouts = st.lists(
    st.builds(lambda gpus, on: {"gpus": gpus, "mig_enabled": on, "slots": []}, entry_selectors, st.booleans()),
    min_size=1,
    max_size=3,
)


def layout_picks(layout: list, gpus: list) -> tuple[set, list]:
    """(indices the layout's entries pick, per entry: how many selector problems) as gpu.mig.mig_instances sees it."""
    states = [_layout.gpu_state_from_facts(g) for g in gpus]
    picked, problems = set(), []
    for entry in _layout.parse_layout(layout).entries:
        found: list = []
        picked.update(g.index for g in _layout._select(entry, states, found))
        problems.append(len(found))
    return picked, problems


def refusal(layout: list, gpus: list) -> list[str]:
    """What gpu.mig.mig_instances refuses in ``layout`` on this host (its action plugin's check mode), or []."""
    try:
        _apply.apply_layout(None, layout, check_mode=True, host=_apply.host_from_facts(gpus))
    except _layout.LayoutError as err:
        return list(err.problems)
    return []


def layout_reasons(found: dict) -> list[str]:
    return [r["msg"] for r in found["reasons"] if r["where"] == "layout"]


@settings(max_examples=300, deadline=None)
@given(gpus=host_gpus, layout=layouts)
def test_preflight_picks_the_gpus_the_layout_module_picks(gpus, layout):
    picked, _problems = layout_picks(layout, gpus)
    refused = refusal(layout, gpus)
    found = preflight_report({"nvidia_mig": {"driver": DRIVER, "gpus": gpus}}, "h", layout=layout)
    assert {r["index"] for r in found["gpus"] if r["managed"]} == picked
    assert layout_reasons(found) == refused
    assert (found["verdict"] == "blocked") == bool(refused)


@settings(max_examples=100, deadline=None)
@given(gpus=host_gpus, layout=layouts, bad=st.sampled_from(MALFORMED))
def test_a_selector_the_layout_module_refuses_blocks_the_host(gpus, layout, bad):
    layout = [*layout, {"gpus": [bad], "slots": []}]
    with pytest.raises(_layout.LayoutError, match=re.escape(repr(bad))):
        _layout.parse_layout(layout)
    found = preflight_report({"nvidia_mig": {"driver": DRIVER, "gpus": gpus}}, "h", layout=layout)
    assert found["verdict"] == "blocked"
    assert [m for m in layout_reasons(found) if m.startswith(f"entry {len(layout)}:")] == [
        f"entry {len(layout)}: gpus is list [{bad!r}]; it {selector_problem(bad)}"
    ]


def test_all_beside_a_selector_naming_a_gpu_without_mig_picks_it():
    """[0, all] with an L4 at 0: the index names the L4 (mig_instances refuses it), all adds the MIG GPUs."""
    gpus = [fact_gpu(0, MODELS[2]), fact_gpu(1, MODELS[1])]
    layout = [{"gpus": [0, "all"], "slots": []}]
    assert layout_picks(layout, gpus) == ({0, 1}, [0])
    with pytest.raises(_layout.LayoutError, match=r"selects GPU 0 .*which does not support MIG"):
        _layout.plan_layout(layout, [_layout.gpu_state_from_facts(g) for g in gpus], {1: None})
    found = preflight_report({"nvidia_mig": {"driver": DRIVER, "gpus": gpus}}, "h", layout=layout)
    assert [r["managed"] for r in found["gpus"]] == [True, True]
    assert layout_reasons(found) == [
        "entry 1 (gpus: 0, all) selects GPU 0 (GPU-0000, NVIDIA L4), which does not support MIG; remove it from the"
        " selector"
    ]


def test_a_selector_naming_a_gpu_that_is_not_here_blocks_a_mig_host():
    found = preflight_report(
        {"nvidia_mig": {"driver": DRIVER, "gpus": [fact_gpu(0, MODELS[1])]}},
        "h",
        layout=[{"gpus": [0, 3], "slots": []}],
    )
    assert found["verdict"] == "blocked"
    assert layout_reasons(found) == [
        "entry 1 (gpus: 0, 3): no GPU on this host matches selector 3; GPUs: 0 (GPU-0000, 00000000:07:00.0)"
    ]


def test_an_entry_without_selectors_blocks_the_host():
    found = preflight_report(
        {"nvidia_mig": {"driver": DRIVER, "gpus": [fact_gpu(0, MODELS[1])]}}, "h", layout=[{"gpus": [], "slots": []}]
    )
    assert found["verdict"] == "blocked"
    assert layout_reasons(found) == [
        "entry 1: gpus is list []; it must name at least one GPU (all, an index, GPU-<uuid>, a PCI bus id, a product"
        " name or arch:<generation>)"
    ]
