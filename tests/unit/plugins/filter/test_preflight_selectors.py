# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""preflight_report with one layout for a mixed fleet: the selector rule of gpu.mig._select decides what a host does."""

from __future__ import annotations

import pytest

from ansible_collections.gpu.mig.plugins.filter.preflight import preflight_report

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
