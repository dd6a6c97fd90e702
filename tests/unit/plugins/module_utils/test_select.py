# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""GPU selectors against mig_facts-shaped GPU dicts."""

from __future__ import annotations

import pytest

from ansible_collections.gpu.mig.plugins.module_utils._select import SelectorError, names_one_gpu, select_gpus

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


def test_unknown_selector_names_itself_and_lists_the_gpus():
    with pytest.raises(SelectorError) as err:
        select_gpus(GPUS, [0, "GPU-nope", "arch:volta"])
    msg = str(err.value)
    assert "'GPU-nope'" in msg and "'arch:volta'" in msg
    assert "GPU-aaaa" in msg and "00000000:0F:00.0" in msg
    assert "use an index" in msg


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
        (True, False),
        ("all", False),
        ("arch:hopper", False),
        ("NVIDIA A100-SXM4-40GB", False),
    ],
)
def test_names_one_gpu(selector, named):
    assert names_one_gpu(selector) is named
