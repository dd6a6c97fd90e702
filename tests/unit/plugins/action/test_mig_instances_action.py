# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The mig_instances action plugin against the simulated NVML: it answers a converged host and check mode from
gpu.mig.mig_facts exactly as the module would, and runs the module on the host whenever something must change."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path
from unittest import mock

import pytest
import yaml
from ansible.module_utils.testing import patch_module_args
from ansible.parsing.dataloader import DataLoader

from ansible_collections.gpu.mig.plugins.action.mig_instances import ActionModule
from ansible_collections.gpu.mig.plugins.module_utils._mig import apply as _apply
from ansible_collections.gpu.mig.plugins.module_utils._mig import slot_files
from ansible_collections.gpu.mig.plugins.modules import mig_facts, mig_instances

SEED = [{"name": "chat", "profile": "3g.20gb"}, {"name": "ocr", "profile": "1g.5gb"}]
MODULE_RESULT = {"changed": True, "from": "the module"}


def mig_facts_on_host(module_args: dict) -> dict:
    """gpu.mig.mig_facts run on the (simulated, local) host, its result as the action gets it."""
    out = io.StringIO()
    with patch_module_args(dict(module_args)), contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        mig_facts.main()
    return json.loads(out.getvalue())


def run_action(
    args: dict,
    check_mode: bool = False,
    diff: bool = False,
    facts: dict | None = None,
    async_val: int = 0,
    module=None,
    search_path: Path | None = None,
):
    """Run the action with ``args``; returns (result, names of the modules it executed on the host, their args).

    ``module(module_args, check_mode)`` runs gpu.mig.mig_instances on the host (default: a canned result);
    gpu.mig.mig_facts runs on the host unless ``facts`` stand in for its facts; ``search_path``: where the controller
    finds files (mig_parted_config_file), read with Ansible's own loader.
    """
    task = mock.MagicMock(args=args, check_mode=check_mode, diff=diff, async_val=async_val)
    task.action = "gpu.mig.mig_instances"
    task.get_search_path.return_value = [str(search_path)] if search_path else []
    action = ActionModule(task, mock.MagicMock(has_native_async=False), mock.MagicMock(), DataLoader(), None, None)
    calls = []

    def execute_module(module_name=None, module_args=None, task_vars=None, wrap_async=False):
        module_name, module_args = module_name or task.action, task.args if module_args is None else module_args
        calls.append((module_name, module_args, wrap_async))
        if module_name == "gpu.mig.mig_facts":
            return (
                {"changed": False, "ansible_facts": {"nvidia_mig": facts}} if facts else mig_facts_on_host(module_args)
            )
        return module(module_args, check_mode) if module else dict(MODULE_RESULT)

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
        # Every option explicit, whatever mig_facts' module_defaults: every GPU, no slot map.
        assert calls[0][1] == {"gpus": [], "require_mig": False, "slot_map_file": None}
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


# ------------------------------------------------------------------------ MIG off on a GPU holding instances
@pytest.fixture
def on_host(run_module):
    """gpu.mig.mig_instances run on the simulated host, as the action's _execute_module runs it."""
    return lambda module_args, check_mode: run_module(mig_instances, module_args, check_mode=check_mode)[0]


MIG_OFF = {"layout": [{"gpus": 0, "mig_enabled": False, "slots": []}]}


def test_disabling_mig_on_a_gpu_holding_instances_plans_destroy_then_disable(sim_host, run_module, on_host, snapshot):
    host = sim_host("A100-SXM4-40GB:mig=on", instances=["0:3g.20gb", "0:1g.5gb"], init=False)
    before = snapshot(host)
    module_result, _unused = run_module(mig_instances, MIG_OFF, check_mode=True)
    checked, executed, _calls = run_action(MIG_OFF, check_mode=True, module=on_host)
    assert executed == ["gpu.mig.mig_facts"] and checked == module_result and snapshot(host) == before
    assert [a["op"] for a in checked["plan"]["actions"]][-1] == "mig_mode" and checked["changed"] is True
    real, executed, _calls = run_action(MIG_OFF, module=on_host)
    assert executed == ["gpu.mig.mig_facts", "gpu.mig.mig_instances"] and not real.get("failed"), real.get("msg")
    assert real["plan"] == checked["plan"]
    assert real["ansible_facts"]["nvidia_mig"]["gpus"][0]["mig"]["current"] is False


def test_an_async_task_disabling_mig_runs_the_module_which_succeeds(sim_host, on_host):
    sim_host("H100-80GB:mig=on", instances=["0:1g.10gb"], init=False)
    result, executed, calls = run_action(MIG_OFF, async_val=600, module=on_host)
    assert executed == ["gpu.mig.mig_instances"] and calls[0][2] is True
    assert not result.get("failed"), result.get("msg")
    assert result["changed"] is True and result["ansible_facts"]["nvidia_mig"]["gpus"][0]["mig"]["current"] is False


# ------------------------------------------------------------------------------------ no traceback, ever
def test_an_unexpected_error_on_the_controller_is_a_failed_result_calling_it_a_bug(sim_host, monkeypatch):
    sim_host("A100-SXM4-40GB:mig=on", init=False)

    def broken(*_args, **_kwargs):
        raise KeyError("profiles")

    monkeypatch.setattr(_apply, "host_from_facts", broken)
    result, _executed, _calls = run_action({"layout": [{"gpus": 0, "slots": SEED}]})
    assert result["failed"] is True
    assert "gpu.mig.mig_instances failed unexpectedly (KeyError: 'profiles')" in result["msg"]
    assert "bug in gpu.mig" in result["msg"] and "github.com/gpu-mig/gpu.mig/issues" in result["msg"]
    assert "Traceback" not in result["msg"] and "Traceback" in result["exception"]


# ------------------------------------------------------------------- the slot map: the same history as the module
LOOK_ALIKES = [{"name": "web", "profile": "1g.5gb"}, {"name": "ocr", "profile": "1g.5gb"}]
REORDERED = [{"gpus": 0, "slots": LOOK_ALIKES[::-1]}]


@pytest.fixture
def slot_map(sim_host, run_module, tmp_path):
    """An A100 converged on [web, ocr] and its slot map file, as the mig_layout role writes it."""
    sim_host("A100-SXM4-40GB:mig=on", init=False)
    applied, _unused = run_module(mig_instances, {"layout": [{"gpus": 0, "slots": LOOK_ALIKES}]})
    path = tmp_path / "slots.json"
    path.write_text(slot_files.slot_map_text(applied["slots"]))
    return applied, str(path)


@pytest.mark.parametrize("check_mode", [True, False])
def test_the_controller_plans_with_the_hosts_slot_map_as_the_module_does(slot_map, run_module, check_mode):
    """One module run on the host: mig_facts reads the slot map with the facts (no separate fetch)."""
    applied, path = slot_map
    args = {"layout": REORDERED, "slot_map_file": path}
    module_result, _unused = run_module(mig_instances, args, check_mode=check_mode)
    result, executed, calls = run_action(args, check_mode=check_mode)
    assert executed == ["gpu.mig.mig_facts"] and calls[0][1]["slot_map_file"] == path
    assert result == module_result and result["changed"] is False and result["slots"] == applied["slots"]


def test_check_mode_with_a_slot_map_predicts_the_real_run(slot_map, run_module, on_host):
    applied, path = slot_map
    args = {"layout": [{"gpus": 0, "slots": [{"name": "x", "profile": "1g.5gb"}, *LOOK_ALIKES[::-1]]}]}
    args["slot_map_file"] = path
    checked, executed, _calls = run_action(args, check_mode=True)
    assert executed == ["gpu.mig.mig_facts"] and checked["changed"] is True
    real, _executed, _calls = run_action(args, module=on_host)
    assert real["plan"] == checked["plan"]
    for name in ("web", "ocr"):
        assert real["slots"][name] == checked["slots"][name] == applied["slots"][name]


def test_a_missing_slot_map_is_no_history_on_the_controller_too(slot_map, run_module, tmp_path):
    applied, _path = slot_map
    args = {"layout": [{"gpus": 0, "slots": LOOK_ALIKES}], "slot_map_file": str(tmp_path / "absent.json")}
    module_result, _unused = run_module(mig_instances, args, check_mode=True)
    result, executed, _calls = run_action(args, check_mode=True)
    assert executed == ["gpu.mig.mig_facts"] and result == module_result
    assert result["changed"] is False and result["slots"] == applied["slots"]


@pytest.mark.parametrize("broken", ["malformed", "a directory"])
def test_a_slot_map_mig_facts_cannot_read_fails_as_in_the_module(slot_map, run_module, on_host, snapshot, broken):
    _applied, path = slot_map
    if broken == "malformed":
        Path(path).write_text('{"web": {"profile": "1g.5gb"}}')
        expected = f"slot_map_file {path}: slot 'web'"
    else:
        Path(path).unlink()
        Path(path).mkdir()
        expected = f"slot_map_file {path} cannot be read"
    args = {"layout": REORDERED, "slot_map_file": path}
    module_result, _unused = run_module(mig_instances, args, check_mode=True)
    result, executed, _calls = run_action(args, module=on_host)
    assert executed == ["gpu.mig.mig_facts", "gpu.mig.mig_instances"]
    assert result["failed"] is True and result["changed"] is False
    assert result["msg"] == module_result["msg"] and expected in result["msg"]


# --------------------------------------------------- mig_parted_config_file: read and parsed on the controller
BALANCED = """\
version: v1
mig-configs:
  balanced:
    - devices: all
      mig-enabled: true
      mig-devices: {"1g.5gb": 2, "2g.10gb": 1, "3g.20gb": 1}
"""


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "mig-config.yaml"
    path.write_text(BALANCED)
    return path


@pytest.mark.parametrize("check_mode", [True, False])
def test_a_config_file_is_planned_on_the_controller_and_handed_to_the_module_parsed(
    sim_host, run_module, on_host, config_file, check_mode
):
    sim_host("A100-SXM4-40GB:mig=on", init=False)
    args = {"mig_parted_config_file": config_file.name, "mig_parted_config_name": "balanced"}
    result, executed, calls = run_action(args, check_mode=check_mode, module=on_host, search_path=config_file.parent)
    assert not result.get("failed"), result.get("msg")
    assert sorted(s["profile"] for s in result["slots"].values()) == ["1g.5gb", "1g.5gb", "2g.10gb", "3g.20gb"]
    assert executed == ["gpu.mig.mig_facts"] + ([] if check_mode else ["gpu.mig.mig_instances"])
    if not check_mode:
        parsed = {"mig_parted_config": yaml.safe_load(BALANCED), "mig_parted_config_name": "balanced"}
        assert calls[1][1] == parsed


def test_an_async_task_gets_the_config_file_parsed(sim_host, on_host, config_file):
    sim_host("A100-SXM4-40GB:mig=on", init=False)
    args = {"mig_parted_config_file": str(config_file), "mig_parted_config_name": "balanced"}
    result, executed, calls = run_action(args, async_val=600, module=on_host)
    assert executed == ["gpu.mig.mig_instances"] and calls[0][2] is True
    assert calls[0][1] == {"mig_parted_config": yaml.safe_load(BALANCED), "mig_parted_config_name": "balanced"}
    assert not result.get("failed") and len(result["slots"]) == 4


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "Could not find or access"),
        ("version: v1\nmig-configs: {balanced: [", "mig_parted_config_file {path}: "),
        ("", "holds nothing, not a mig-parted config"),
        ("- devices: all", "holds a list, not a mig-parted config"),
    ],
    ids=["missing", "yaml", "empty", "list"],
)
@pytest.mark.parametrize("async_val", [0, 600])
def test_a_bad_config_file_fails_on_the_controller_naming_it(
    sim_host, snapshot, tmp_path, content, expected, async_val
):
    host = sim_host("A100-SXM4-40GB:mig=on", instances=["0:1g.5gb"], init=False)
    before = snapshot(host)
    path = tmp_path / "mig-config.yaml"
    if content is not None:
        path.write_text(content)
    args = {"mig_parted_config_file": str(path), "mig_parted_config_name": "balanced"}
    result, executed, _calls = run_action(args, async_val=async_val)
    assert result["failed"] is True and result["changed"] is False and executed == []
    assert f"mig_parted_config_file {path}" in result["msg"] and expected.format(path=path) in result["msg"]
    assert snapshot(host) == before


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({"mig_parted_config_file": "x.yaml"}, "missing parameter(s) required by 'mig_parted_config_file'"),
        ({"mig_parted_config_file": "x.yaml", "layout": [], "mig_parted_config_name": "a"}, "mutually exclusive"),
    ],
)
def test_config_file_options_are_checked_before_anything_runs(args, expected):
    with pytest.raises(Exception, match=re.escape(expected)):
        run_action(args)


def test_a_config_name_without_a_config_is_refused_on_the_controller(sim_host, snapshot):
    host = sim_host("A100-SXM4-40GB:mig=on", instances=["0:1g.5gb"], init=False)
    before = snapshot(host)
    result, executed, _calls = run_action({"layout": [{"gpus": 0, "slots": []}], "mig_parted_config_name": "a"})
    assert result["failed"] is True and executed == ["gpu.mig.mig_facts"]
    assert "mig_parted_config_name names a config of mig_parted_config or mig_parted_config_file" in result["msg"]
    assert snapshot(host) == before
