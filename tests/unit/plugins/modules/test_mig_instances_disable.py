# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""mig_instances turning MIG off on GPUs that hold instances (mig-parted's all-disabled): destroy, then disable.

The mode change used to be judged on the GPU as found, instances included, and ended in a ModeError traceback.
"""

from __future__ import annotations

import pytest

from ansible_collections.gpu.mig.plugins.modules import mig_instances

ALL_DISABLED = {
    "mig_parted_config": {"version": "v1", "mig-configs": {"all-disabled": [{"devices": "all", "mig-enabled": False}]}},
    "mig_parted_config_name": "all-disabled",
}
PLAIN_OFF = {"layout": [{"gpus": 0, "mig_enabled": False, "slots": []}]}


@pytest.mark.parametrize("args", [PLAIN_OFF, ALL_DISABLED], ids=["layout", "mig-parted"])
@pytest.mark.parametrize("model", ["A100-SXM4-40GB", "H100-80GB"])
def test_disabling_destroys_the_instances_then_mig_and_check_mode_predicts_it(
    sim_host, run_module, snapshot, args, model
):
    host = sim_host(f"{model}:mig=on", instances=["0:1g.10gb" if model == "H100-80GB" else "0:1g.5gb"] * 2, init=False)
    before = snapshot(host)
    checked, failed = run_module(mig_instances, args, check_mode=True)
    assert not failed, checked.get("msg")
    assert snapshot(host) == before
    real, failed = run_module(mig_instances, args)
    assert not failed, real.get("msg")
    assert checked["plan"] == real["plan"] and real["changed"] is True
    assert [a["op"] for a in real["plan"]["actions"]] == ["destroy_ci"] * 2 + ["destroy_gi"] * 2 + ["mig_mode"]
    assert real["plan"]["actions"][-1]["enable"] is False
    gpu = real["ansible_facts"]["nvidia_mig"]["gpus"][0]
    assert gpu["mig"]["current"] is False and gpu["gpu_instances"] == [] and real["slots"] == {}
    again, failed = run_module(mig_instances, args)
    assert not failed and again["changed"] is False


def test_busy_instances_are_refused_before_mig_is_disabled_unless_force(sim_host, run_module, snapshot):
    host = sim_host("A100-SXM4-40GB:mig=on", instances=["0:3g.20gb"], init=False)
    gi_id = host.state().live(0)["gpu_instances"][0]["id"]
    pid = host.add_process(f"0:{gi_id}:0:512")
    before = snapshot(host)
    for check_mode in (True, False):
        refused, failed = run_module(mig_instances, PLAIN_OFF, check_mode=check_mode)
        assert failed and refused["changed"] is False
        assert str(pid) in refused["msg"] and "GPU 0 (GPU-" in refused["msg"] and "force" in refused["msg"]
    assert snapshot(host) == before
    forced, failed = run_module(mig_instances, dict(PLAIN_OFF, force=True, force_grace=1))
    assert not failed, forced.get("msg")
    assert forced["ansible_facts"]["nvidia_mig"]["gpus"][0]["mig"]["current"] is False
    assert str(pid) in forced["warnings_busy"][0]


def test_hopper_mode_change_while_processes_hold_the_gpu_is_a_message_naming_the_gpu(sim_host, run_module, snapshot):
    host = sim_host("H100-80GB", processes=["0:100"], init=False)
    pid = host.state().live(0)["processes"][0]["pid"]
    before = snapshot(host)
    for check_mode in (True, False):
        result, failed = run_module(
            mig_instances, {"layout": [{"gpus": 0, "slots": [{"name": "a", "profile": "1g.10gb"}]}]}, check_mode
        )
        assert failed and result["changed"] is False
        assert "GPU 0 (GPU-" in result["msg"] and f"processes [{pid}]" in result["msg"] and "stop them" in result["msg"]
    assert snapshot(host) == before
