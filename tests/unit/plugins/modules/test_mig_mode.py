# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""mig_mode against the simulated NVML: Hopper switches at once, Ampere waits for a reset of only the changed GPUs."""

from __future__ import annotations

from pathlib import Path

import pytest

from ansible_collections.gpu.mig.plugins.modules import mig_mode

SIM_BIN = Path(__file__).resolve().parents[3] / "simulator" / "bin"


@pytest.fixture
def reset_tool(monkeypatch, tmp_path):
    """Put the simulator's nvidia-smi stand-in (GPU reset only) on PATH for the host created next."""
    monkeypatch.setenv("PATH", f"{SIM_BIN}:{Path('/usr/bin')}:{Path('/bin')}")

    def point_at(host):
        monkeypatch.setenv("MIGSIM_ROOT", str(host.root))
        return host

    return point_at


def modes(result):
    return [(g["index"], g["after"]["current"], g["after"]["pending"]) for g in result["gpus"]]


def test_hopper_switches_at_once_and_is_idempotent(sim_host, run_module):
    sim_host("H100-80GB", "H100-80GB:mig=on", init=False)
    result, failed = run_module(mig_mode, {"state": "enabled"})
    assert not failed and result["changed"] and not result["pending_reset"]
    assert modes(result) == [(0, True, True), (1, True, True)]
    assert [g["changed"] for g in result["gpus"]] == [True, False]
    again, _unused = run_module(mig_mode, {"state": "enabled"})
    assert again["changed"] is False


def test_check_mode_predicts_and_changes_nothing(sim_host, run_module, snapshot):
    host = sim_host("H100-80GB", "A100-SXM4-40GB", processes=["1:100"], init=False)
    before = snapshot(host)
    checked, _unused = run_module(mig_mode, {"state": "enabled"}, check_mode=True, diff=True)
    assert snapshot(host) == before
    real, _unused = run_module(mig_mode, {"state": "enabled"})
    assert modes(checked) == modes(real) == [(0, True, True), (1, False, True)]
    assert checked["changed"] is real["changed"] is True
    assert checked["diff"]["after"]["GPU 1"] == {"current": False, "pending": True}


def test_busy_ampere_stays_pending_with_pids_then_reset_applies_it(sim_host, run_module, reset_tool):
    host = reset_tool(sim_host("A100-SXM4-40GB", "A100-SXM4-40GB", processes=["0:100"], init=False))
    pid = host.state().live(0)["processes"][0]["pid"]
    result, failed = run_module(mig_mode, {"state": "enabled"})
    assert not failed and result["pending_reset"] is True
    busy, idle = result["gpus"]
    assert busy["pids"] == [pid] and busy["pending_reset"] and idle["after"]["current"] is True
    again, _unused = run_module(mig_mode, {"state": "enabled"})
    assert again["changed"] is False and again["pending_reset"] is True
    refused, failed = run_module(mig_mode, {"state": "enabled", "reset": True})
    assert failed and str(pid) in refused["msg"] and "GPU 0" in refused["msg"]
    with host.edit() as state:
        state.live(0)["processes"].clear()
    reset, failed = run_module(mig_mode, {"state": "enabled", "reset": True})
    assert not failed, reset.get("msg")
    assert reset["changed"] and not reset["pending_reset"]
    assert [g["reset"] for g in reset["gpus"]] == [True, False]  # only the GPU whose change was pending


def test_non_mig_gpu_is_skipped_under_all_and_an_error_by_index(sim_host, run_module):
    sim_host("H100-80GB", "L4", init=False)
    result, failed = run_module(mig_mode, {"state": "enabled"})
    assert not failed and result["skipped"] == [{"index": 1, "name": "NVIDIA L4"}]
    result, failed = run_module(mig_mode, {"gpus": ["1"], "state": "enabled"})
    assert failed and "does not support MIG" in result["msg"]


def test_disable_with_instances_is_refused(sim_host, run_module):
    sim_host("H100-80GB:mig=on", instances=["0:1g.10gb"], init=False)
    result, failed = run_module(mig_mode, {"state": "disabled"})
    assert failed and "mig_instances (state: absent)" in result["msg"]
