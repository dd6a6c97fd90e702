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
    assert not failed and result["skipped_gpus"] == [
        {"index": 1, "name": "NVIDIA L4", "reason": "does not support MIG"}
    ]
    result, failed = run_module(mig_mode, {"gpus": ["1"], "state": "enabled"})
    assert failed and "does not support MIG" in result["msg"]


def test_disable_with_instances_is_refused(sim_host, run_module):
    sim_host("H100-80GB:mig=on", instances=["0:1g.10gb"], init=False)
    result, failed = run_module(mig_mode, {"state": "disabled"})
    assert failed and "mig_instances (state: absent)" in result["msg"]


MIXED_FLEET = ["NVIDIA A100-SXM4-40GB", "arch:hopper", "NVIDIA A30"]


def test_mixed_fleet_selectors_pass_over_the_models_a_host_lacks(sim_host, run_module):
    """One layout for A100, H100 and A30 hosts: the mig_mode role passes every entry's selector to every host."""
    sim_host("H100-80GB", "H100-80GB", init=False)
    result, failed = run_module(mig_mode, {"gpus": MIXED_FLEET, "state": "enabled"})
    assert not failed, result.get("msg")
    assert modes(result) == [(0, True, True), (1, True, True)]
    assert result["unmatched"] == ["NVIDIA A100-SXM4-40GB", "NVIDIA A30"]


def test_host_without_mig_and_without_a_matching_selector_is_left_alone(sim_host, run_module, snapshot):
    host = sim_host("L4", init=False)
    before = snapshot(host)
    result, failed = run_module(mig_mode, {"gpus": MIXED_FLEET, "state": "enabled"})
    assert not failed and not result["changed"]
    assert result["gpus"] == [] and result["skipped_gpus"] == [] and result["unmatched"] == MIXED_FLEET
    assert snapshot(host) == before


def test_selector_naming_one_absent_gpu_stays_an_error(sim_host, run_module, snapshot):
    host = sim_host("H100-80GB", init=False)
    before = snapshot(host)
    result, failed = run_module(mig_mode, {"gpus": ["arch:hopper", "GPU-nope", "5", "00000000:99:00.0"]})
    assert failed and "'GPU-nope', '5', '00000000:99:00.0' match no GPU on this host" in result["msg"]
    assert snapshot(host) == before


@pytest.mark.parametrize("selector", ["07:00.9", "0000:zz:00.0"])
def test_malformed_pci_bus_id_is_refused_with_the_valid_form(sim_host, run_module, snapshot, selector):
    host = sim_host("H100-80GB", init=False)
    before = snapshot(host)
    result, failed = run_module(mig_mode, {"gpus": [selector]})
    assert failed and f"{selector!r} is not a valid PCI bus id" in result["msg"]
    assert "0000:07:00.0 or 07:00.0" in result["msg"] and "function 0-7" in result["msg"]
    assert snapshot(host) == before


@pytest.fixture
def lost_gpu1(sim_host):
    """Three H100s, MIG off; GPU 1 fell off the bus (migsim fault --lost --gpu 1)."""
    host = sim_host("H100-80GB", "H100-80GB", "H100-80GB", init=False)
    with host.edit() as state:
        state.live(1)["lost"] = True
    return host


@pytest.mark.parametrize("selectors", [["all"], ["arch:hopper"], ["0", "2"]])
def test_lost_gpu_does_not_block_the_healthy_ones(lost_gpu1, run_module, warning_texts, selectors):
    result, failed = run_module(mig_mode, {"gpus": selectors, "state": "enabled"})
    assert not failed, result.get("msg")
    assert modes(result) == [(0, True, True), (2, True, True)]
    [skipped] = result["skipped_gpus"]
    assert skipped["index"] == 1 and "GPU 1" in skipped["reason"] and "lost" in skipped["reason"]
    assert f"{skipped['reason']}; its MIG mode was left as it is" in warning_texts(result)


def test_selector_naming_the_lost_gpu_is_refused_with_the_gpu_and_the_fix(lost_gpu1, run_module, snapshot):
    before = snapshot(lost_gpu1)
    result, failed = run_module(mig_mode, {"gpus": ["0", "1"], "state": "enabled"})
    assert failed and result["msg"].startswith("GPU 1")
    assert "lost" in result["msg"] and "reboot" in result["msg"]
    assert "selector '1' names this GPU: remove it from gpus to work on the other GPUs" in result["msg"]
    assert snapshot(lost_gpu1) == before


def test_uuid_that_may_be_the_lost_gpus_says_which_gpu_could_not_be_read(lost_gpu1, run_module):
    result, failed = run_module(mig_mode, {"gpus": ["GPU-unknown"]})
    assert failed and "1: could not be read (GPU 1" in result["msg"]


def test_vm_pass_through_asks_for_a_vm_restart_not_for_stopping_clients(sim_host, run_module, reset_tool):
    """In a VM the GPU cannot be reset: the mode stays pending whatever the processes, until the VM restarts."""
    host = reset_tool(sim_host("A100-SXM4-40GB", vm_passthrough=True, init=False))
    result, failed = run_module(mig_mode, {"state": "enabled"})
    assert not failed and result["pending_reset"] and result["gpus"][0]["pids"] == []
    refused, failed = run_module(mig_mode, {"state": "enabled", "reset": True})
    uuid = host.state().gpus[0]["uuid"]
    assert failed and refused["reset_not_supported"] is True
    assert refused["msg"].startswith(f"GPU 0 ({uuid}): turning MIG on waits for a GPU reset")
    assert "not supported" in refused["msg"] and "restart the VM" in refused["msg"]
    assert "[]" not in refused["msg"] and "stop the GPU's clients" not in refused["msg"]
