# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""GPU selectors against mig_facts-shaped GPU dicts."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.gpu.mig.plugins.module_utils._mig.select import (
    SelectorError,
    entry_picks,
    kind,
    matches,
    missing,
    names_one_gpu,
    select_gpus,
    selector_problem,
    unmatched,
)

GPUS = [
    {
        "index": 0,
        "uuid": "GPU-aaaa",
        "pci_bus_id": "00000000:07:00.0",
        "name": "NVIDIA A100-SXM4-40GB",
        "architecture": "ampere",
    },
    {
        "index": 1,
        "uuid": "GPU-bbbb",
        "pci_bus_id": "00000000:0F:00.0",
        "name": "NVIDIA H100 80GB HBM3",
        "architecture": "hopper",
    },
    {
        "index": 2,
        "uuid": "GPU-cccc",
        "pci_bus_id": "00000000:47:00.0",
        "name": "NVIDIA H100 80GB HBM3",
        "architecture": "hopper",
    },
]


def indices(selectors):
    return [g["index"] for g in select_gpus(GPUS, selectors)]


@pytest.mark.parametrize(
    ("selectors", "expected"),
    [
        ([], [0, 1, 2]),
        (None, [0, 1, 2]),
        (["all"], [0, 1, 2]),
        ([1], [1]),
        (["2"], [2]),
        (["GPU-BBBB"], [1]),
        (["0f:00.0"], [1]),
        (["00000000:47:00.0"], [2]),
        (["0000:47:00.0"], [2]),
        (["NVIDIA H100 80GB HBM3"], [1, 2]),
        (["a100-sxm4-40gb"], [0]),
        (["arch:hopper"], [1, 2]),
        (["arch:AMPERE", 2], [0, 2]),
        ("1", [1]),
    ],
)
def test_selectors_pick_the_right_gpus(selectors, expected):
    assert indices(selectors) == expected


def test_single_gpu_selectors_matching_nothing_are_named_with_the_gpus_present():
    with pytest.raises(SelectorError) as err:
        select_gpus(GPUS, [0, "GPU-nope", 7, "arch:volta"])
    msg = str(err.value)
    assert "'GPU-nope', 7 match no GPU" in msg and "volta" not in msg
    assert "GPU-aaaa" in msg and "00000000:0F:00.0" in msg
    assert "use all, an index" in msg


def test_class_selectors_matching_nothing_select_nothing():
    """A mixed fleet shares one layout: an A30 or an Ada GPU named on a Hopper host is nothing to do there."""
    selectors = ["NVIDIA A30", "arch:ada", "arch:hopper"]
    assert [g["index"] for g in select_gpus(GPUS, selectors)] == [1, 2]
    assert select_gpus(GPUS[:1], ["arch:hopper"]) == []
    assert unmatched(GPUS, selectors) == ["NVIDIA A30", "arch:ada"]


@pytest.mark.parametrize("selector", ["07:00.9", "0000:zz:00.0", "07:20.0", "07:00", "0000:07:00.0.1", "1:2:3:4.0"])
def test_malformed_bus_ids_are_refused_with_the_valid_form(selector):
    assert kind(selector) == "bus_id" and names_one_gpu(selector)
    why = selector_problem(selector)
    assert f"{selector!r} is not a valid PCI bus id" in why
    assert "0000:07:00.0 or 07:00.0" in why and "function 0-7" in why and "hex digits" in why
    with pytest.raises(SelectorError, match="not a valid PCI bus id"):
        select_gpus(GPUS, [selector])


@pytest.mark.parametrize(
    ("selector", "why"),
    [
        ("arch:hoper", "names no GPU architecture; use arch: with one of kepler"),
        ("MIG-1234", "is a MIG device UUID"),
        ("-1", "GPU index -1 is negative"),
        (-1, "GPU index -1 is negative"),
        ("", "is not a GPU selector"),
        (True, "is not a GPU selector"),
        (None, "is not a GPU selector"),
        (1.5, "is not a GPU selector"),
    ],
)
def test_other_malformed_selectors(selector, why):
    assert why in selector_problem(selector)


def test_every_problem_is_listed_at_once():
    with pytest.raises(SelectorError) as err:
        select_gpus(GPUS, ["07:00.9", "arch:hoper", "GPU-nope"])
    assert all(text in str(err.value) for text in ("'07:00.9'", "'arch:hoper'", "'GPU-nope'"))


def test_gpu_that_could_not_be_read_matches_only_by_index_or_all():
    failed = {"index": 3, "uuid": None, "name": None, "pci_bus_id": None, "architecture": None, "error": "GPU 3: lost"}
    gpus = [*GPUS, failed]
    assert [g["index"] for g in select_gpus(gpus, ["3"])] == [3]
    assert [g["index"] for g in select_gpus(gpus, ["all"])] == [0, 1, 2, 3]
    assert select_gpus(gpus, ["NVIDIA A30", "arch:ada"]) == []
    with pytest.raises(SelectorError, match=r"3: could not be read \(GPU 3: lost\)"):
        select_gpus(gpus, ["GPU-dddd"])


_HEX = "0123456789abcdefABCDEF"


@settings(max_examples=400, deadline=None)
@given(
    domain=st.integers(0, 0xFFFF),
    bus=st.integers(0, 0xFF),
    device=st.integers(0, 0x1F),
    function=st.integers(0, 7),
    style=st.sampled_from(["nvml", "lspci", "short"]),
    upper=st.booleans(),
)
def test_every_spelling_of_a_valid_bus_id_matches_its_gpu(domain, bus, device, function, style, upper):
    gpu = {**GPUS[0], "pci_bus_id": f"{domain:08X}:{bus:02X}:{device:02X}.{function}"}
    prefix = {"nvml": f"{domain:08x}:", "lspci": f"{domain:04x}:", "short": ""}[style]
    selector = f"{prefix}{bus:02x}:{device:02x}.{function}"
    selector = selector.upper() if upper else selector
    if style == "short" and domain:
        assert not matches(gpu, selector)  # no domain means domain 0
    else:
        assert selector_problem(selector) is None and matches(gpu, selector)


@settings(max_examples=1500, deadline=None)
@given(st.one_of(st.text(alphabet=_HEX + ":.-xyzGPUarch ", max_size=20), st.integers(), st.none(), st.booleans()))
def test_any_input_is_valid_or_refused_never_a_crash(selector):
    why = selector_problem(selector)
    assert why is None or repr(selector) in why or str(selector) in why
    if why is None:
        assert isinstance(matches(GPUS[0], selector), bool)
    else:
        with pytest.raises(SelectorError):
            select_gpus(GPUS, [selector])


def test_bool_is_not_an_index():
    with pytest.raises(SelectorError):
        select_gpus(GPUS, [True])


@pytest.mark.parametrize(
    ("selector", "named"),
    [
        (0, True),
        ("3", True),
        ("GPU-aaaa", True),
        ("07:00.0", True),
        ("0000:0f:00.0", True),
        ("07:00.9", True),
        (True, False),
        ("all", False),
        ("arch:hopper", False),
        ("NVIDIA A100-SXM4-40GB", False),
    ],
)
def test_names_one_gpu(selector, named):
    assert names_one_gpu(selector) is named


def with_mig(gpu: dict, supported: bool) -> dict:
    return {**gpu, "mig": {"supported": supported}}


@pytest.mark.parametrize(
    ("selectors", "picked"),
    [
        ("all", [1, 2]),
        (["ALL"], [1, 2]),
        ([0], [0]),
        ([0, "all"], [0, 1, 2]),  # the index names the GPU without MIG; all adds the MIG GPUs
        (["NVIDIA A100-SXM4-40GB", "all"], [0, 1, 2]),
        (["arch:hopper"], [1, 2]),
        (["GPU-cccc", "arch:ampere"], [0, 2]),
        (["NVIDIA A30"], []),
    ],
)
def test_entry_picks_all_means_every_gpu_with_mig(selectors, picked):
    gpus = [with_mig(GPUS[0], False), with_mig(GPUS[1], True), with_mig(GPUS[2], True)]
    assert [g["index"] for g in gpus if entry_picks(g, selectors)] == picked


def test_missing_lists_only_single_gpu_selectors_that_match_nothing():
    selectors = [0, 7, "GPU-nope", "GPU-aaaa", "99:00.0", "NVIDIA A30", "arch:ada", "all"]
    assert missing(GPUS, selectors) == [7, "GPU-nope", "99:00.0"]
    assert missing([], [0, "all"]) == [0]
