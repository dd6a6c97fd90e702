# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The mig_instances action plugin against the simulated NVML: it answers a converged host and check mode from
gpu.mig.mig_facts exactly as the module would, and runs the module on the host whenever something must change."""

from __future__ import annotations

from unittest import mock

import pytest

from ansible_collections.gpu.mig.plugins.action.mig_instances import ActionModule
from ansible_collections.gpu.mig.plugins.module_utils._mig import nvml as _nvml
from ansible_collections.gpu.mig.plugins.modules import mig_instances

SEED = [{"name": "chat", "profile": "3g.20gb"}, {"name": "ocr", "profile": "1g.5gb"}]
MODULE_RESULT = {"changed": True, "from": "the module"}


def run_action(args: dict, check_mode: bool = False, diff: bool = False, facts: dict | None = None, async_val: int = 0):
    """Run the action with ``args``; returns (result, names of the modules it executed on the host, their args)."""
    task = mock.MagicMock(args=args, check_mode=check_mode, diff=diff, async_val=async_val)
    task.action = "gpu.mig.mig_instances"
    action = ActionModule(task, mock.MagicMock(has_native_async=False), mock.MagicMock(), None, None, None)
    calls = []

    def execute_module(module_name=None, module_args=None, task_vars=None, wrap_async=False):
        module_name, module_args = module_name or task.action, task.args if module_args is None else module_args
        calls.append((module_name, module_args, wrap_async))
        if module_name == "gpu.mig.mig_facts":
            return {"changed": False, "ansible_facts": {"nvidia_mig": facts or _nvml.gather()}}
        return dict(MODULE_RESULT)

    with (
        mock.patch.object(action, "_execute_module", side_effect=execute_module),
        mock.patch.object(action, "_remove_tmp_path") as remove_tmp_path,
    ):
        result = action.run(task_vars={})
    if not async_val:  # the remote temporary directory never outlives the task (async: the job's wrapper owns it)
        remove_tmp_path.assert_called_once()
    return result, [call[0] for call in calls], calls


def test_a_converged_host_is_answered_from_facts_exactly_as_the_module_answers(sim_host, run_module):
    sim_host("A100-SXM4-40GB:mig=on", init=False)
    args = {"layout": [{"gpus": 0, "slots": SEED}]}
    applied, _unused = run_module(mig_instances, args)
    assert applied["changed"] is True
    for diff in (False, True):
        module_result, _unused = run_module(mig_instances, args, diff=diff)
        result, executed, calls = run_action(args, diff=diff)
        assert executed == ["gpu.mig.mig_facts"]
        assert calls[0][1] == {"gpus": [], "require_mig": False}  # every GPU, whatever mig_facts' module_defaults
        assert result == module_result
        assert result["changed"] is False and result["slots"] == applied["slots"]


def test_check_mode_plans_on_the_controller_and_runs_nothing_else(sim_host, run_module, snapshot):
    host = sim_host("H100-80GB:mig=on", instances=["0:1g.10gb@6"], init=False)
    args = {"layout": [{"gpus": 0, "slots": [{"name": "chat", "profile": "3g.40gb"}]}]}
    before = snapshot(host)
    module_result, _unused = run_module(mig_instances, args, check_mode=True, diff=True)
    result, executed, _calls = run_action(args, check_mode=True, diff=True)
    assert executed == ["gpu.mig.mig_facts"]
    assert result == module_result and result["changed"] is True and result["plan"]["actions"]
    assert snapshot(host) == before


def test_a_change_runs_the_module_on_the_host_with_the_task_args(sim_host):
    sim_host("A100-SXM4-40GB:mig=on", init=False)
    args = {"layout": [{"gpus": 0, "slots": SEED}], "force": True}
    result, executed, calls = run_action(args)
    assert executed == ["gpu.mig.mig_facts", "gpu.mig.mig_instances"]
    assert calls[1][1] == args and result["from"] == "the module"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({"layout": [{"gpus": 0, "slots": [{"name": "a", "profile": "9g.99gb"}]}]}, "unknown profile '9g.99gb'"),
        ({"state": "absent", "gpus": ["7"]}, "7"),
    ],
)
def test_a_bad_layout_fails_on_the_controller_and_changes_nothing(sim_host, snapshot, args, expected):
    host = sim_host("A100-SXM4-40GB:mig=on", instances=["0:1g.5gb@0"], init=False)
    before = snapshot(host)
    result, executed, _calls = run_action(args)
    assert result["failed"] is True and result["changed"] is False and expected in result["msg"]
    assert executed == ["gpu.mig.mig_facts"]
    assert snapshot(host) == before


def test_without_a_driver_the_module_reports_the_problem(sim_host):
    sim_host("A100-SXM4-40GB:mig=on", init=False)
    facts = {"driver": {"loaded": False, "error": "the NVIDIA driver is not loaded"}, "gpus": [], "summary": {}}
    result, executed, _calls = run_action({"layout": [{"gpus": 0, "slots": SEED}]}, facts=facts)
    assert executed == ["gpu.mig.mig_facts", "gpu.mig.mig_instances"] and result["from"] == "the module"


def test_invalid_options_fail_before_anything_runs():
    with pytest.raises(Exception, match="mutually exclusive"):
        run_action({"layout": [], "mig_parted_config": {}, "mig_parted_config_name": "x"})


def test_an_async_task_runs_the_module_as_before(sim_host):
    sim_host("A100-SXM4-40GB:mig=on", init=False)
    args = {"layout": [{"gpus": 0, "slots": SEED}]}
    result, executed, calls = run_action(args, async_val=600)
    assert executed == ["gpu.mig.mig_instances"] and calls[0][2] is True and result["from"] == "the module"


def test_a_lost_gpu_in_the_facts_is_planned_around_as_the_module_does(sim_host, run_module):
    host = sim_host("A100-SXM4-40GB:mig=on", "A100-SXM4-40GB:mig=on", init=False)
    args = {"layout": [{"gpus": 0, "slots": SEED}]}
    run_module(mig_instances, args)
    with host.edit() as state:
        state.live(1)["lost"] = True
    module_result, _unused = run_module(mig_instances, args)
    result, executed, _calls = run_action(args)
    assert executed == ["gpu.mig.mig_facts"] and result == module_result and result["changed"] is False
    assert any("GPU 1" in w for w in result["warnings"])
