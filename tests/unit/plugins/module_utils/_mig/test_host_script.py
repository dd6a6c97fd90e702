# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""_mig.host_script: a host script's config checked (every problem at once, each with the fix), the defaults filled
in, and the exit status and journal lines of every outcome of its work, never a traceback."""

from __future__ import annotations

import json
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.gpu.mig.plugins.module_utils._mig import apply as _apply
from ansible_collections.gpu.mig.plugins.module_utils._mig import host_script
from ansible_collections.gpu.mig.plugins.module_utils._mig import layout as _layout
from ansible_collections.gpu.mig.plugins.module_utils._mig import nvml as _nvml
from ansible_collections.gpu.mig.plugins.module_utils._mig import select as _select

FIX = "rerun the example role"
OWN = _layout.Rule("out_dir", True, host_script.absolute_path)
SCRIPT = host_script.HostScript(fix=FIX, settings="the example's settings", rules=(OWN,), defaults={"mode": "auto"})
VALID = {"slot_map": "/etc/gpu-mig/slots.json", "out_dir": "/run/out", "layout": []}
PARTED = {"version": "v1", "mig-configs": {"all-disabled": [{"devices": "all", "mig-enabled": False}]}}
# A config giving the desired layout as a mig-parted config, a bad value of each of its keys, and the words of the
# problem that value makes.
GOOD = {"slot_map": "/s.json", "out_dir": "/o", "mig_parted_config": PARTED, "mig_parted_config_name": "all-disabled"}
BAD = {
    "slot_map": ("slots.json", "slot_map is 'slots.json'; it must be an absolute path"),
    "out_dir": (7, "out_dir is 7; it must be an absolute path"),
    "mig_parted_config": (["v1"], "mig_parted_config is list ['v1']; it must be a parsed mig-parted config"),
    "mig_parted_config_name": (" ", "mig_parted_config_name is ' '; it must be the name of a config"),
}


@settings(max_examples=60, deadline=None)
@given(st.sets(st.sampled_from(sorted(BAD))), st.booleans())
def test_every_bad_key_is_named_at_once(bad, needs_layout):
    script = host_script.HostScript(fix=FIX, settings="", rules=(OWN,), needs_layout=needs_layout)
    problems = script.check({**GOOD, **{key: BAD[key][0] for key in bad}}, "cfg")
    for key in bad:
        assert [p for p in problems if p.startswith("cfg: ") and BAD[key][1] in p], (key, problems)
    assert len(problems) == len(bad), problems


@pytest.mark.parametrize(
    ("desired", "needs_layout", "problem"),
    [
        ({}, True, "cfg: needs exactly one of 'layout' and 'mig_parted_config', not neither"),
        ({}, False, None),
        ({"layout": []}, True, None),
        ({"mig_parted_config": PARTED, "mig_parted_config_name": "all-disabled"}, True, None),
        (
            {"layout": [], "mig_parted_config": PARTED, "mig_parted_config_name": "all-disabled"},
            True,
            "cfg: needs exactly one of 'layout' and 'mig_parted_config', not ['layout', 'mig_parted_config']",
        ),
        (
            {"layout": [], "mig_parted_config": PARTED, "mig_parted_config_name": "all-disabled"},
            False,
            "cfg: takes at most one of 'layout' and 'mig_parted_config', not ['layout', 'mig_parted_config']",
        ),
        ({"mig_parted_config": PARTED}, False, "cfg: 'mig_parted_config' and 'mig_parted_config_name' go together"),
        ({"layout": [], "mig_parted_config_name": "x"}, True, "cfg: 'mig_parted_config' and"),
    ],
)
def test_one_desired_layout_at_most_or_exactly(desired, needs_layout, problem):
    script = host_script.HostScript(fix=FIX, settings="", needs_layout=needs_layout)
    problems = script.check({"slot_map": "/s.json", **desired}, "cfg")
    assert problems == ([] if problem is None else [p for p in problems if p.startswith(problem)]), problems
    assert len(problems) == (problem is not None)


def write(tmp_path, content) -> str:
    (tmp_path / "etc").mkdir(exist_ok=True)
    (tmp_path / "etc/example.json").write_text(content if isinstance(content, str) else json.dumps(content))
    return "/etc/example.json"


def test_load_fills_in_the_defaults_and_drops_the_keys_given_as_null(tmp_path):
    path = write(tmp_path, {**VALID, "mig_parted_config": None, "mig_parted_config_name": None})
    assert SCRIPT.load(path, str(tmp_path)) == {**VALID, "mode": "auto"}


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "cannot read /etc/example.json: [Errno 2]"),
        ('{"slot_map": ', "cannot read /etc/example.json: Expecting value"),
        ('"text"', "/etc/example.json holds a JSON str, not the example's settings"),
        ({**VALID, "extra": 1}, "/etc/example.json: unknown key 'extra'"),
        ({**VALID, "layout": "chat"}, "/etc/example.json: layout is 'chat'; it must be a list of layout entries"),
    ],
)
def test_load_refuses_a_config_naming_the_file_and_the_fix(tmp_path, content, reason):
    path = "/etc/example.json" if content is None else write(tmp_path, content)
    with pytest.raises(host_script.CannotRun) as refused:
        SCRIPT.load(path, str(tmp_path))
    assert [p for p in refused.value.problems if p.startswith(reason)], refused.value.problems
    assert all(p.endswith(f"; {FIX}") for p in refused.value.problems)


def test_load_refuses_to_run_without_nvidia_ml_py(tmp_path, monkeypatch):
    monkeypatch.setattr(_nvml, "HAS_PYNVML", False)
    with pytest.raises(host_script.CannotRun) as refused:
        SCRIPT.load(write(tmp_path, VALID), str(tmp_path))
    assert refused.value.problems[0].startswith("nvidia-ml-py is not installed for ")


BUG = "unexpected KeyError: 'gpu_uuid' (a gpu.mig bug: please report it with these journal lines)"


@pytest.mark.parametrize(
    ("err", "lines"),
    [
        (_layout.LayoutError(["GPU 0: first", "GPU 1: second"]), ["GPU 0: first", "GPU 1: second"]),
        (_apply.ApplyError("apply failed on GPU 0", {}), ["apply failed on GPU 0"]),
        (_nvml.NvmlError("GPU 0: NVML said no"), ["GPU 0: NVML said no"]),
        (_select.SelectorError("no GPU matches 'A200'"), ["no GPU matches 'A200'"]),
        (OSError(28, "No space left on device"), ["[Errno 28] No space left on device"]),
        (subprocess.TimeoutExpired(["nvidia-smi"], 60), ["Command '['nvidia-smi']' timed out after 60 seconds"]),
        (KeyError("gpu_uuid"), [BUG + "; check the host"]),
    ],
    ids=["layout", "apply", "nvml", "selector", "os", "subprocess", "bug"],
)
def test_failure_lines_name_what_went_wrong_and_a_bug_as_one(err, lines):
    assert host_script.failure_lines(err, "; check the host") == lines


def broken(*_args, **_kwargs):
    raise KeyError("gpu_uuid")


@pytest.mark.parametrize(
    ("work", "outcome"),
    [
        (lambda config: [], (0, [])),
        (lambda config: [f"GPU 0 of {config['out_dir']} is lost"], (1, ["GPU 0 of /run/out is lost"])),
        (broken, (1, [BUG])),
    ],
    ids=["done", "problems", "bug"],
)
def test_run_returns_the_status_and_the_problems_of_the_work(tmp_path, work, outcome):
    assert SCRIPT.run(write(tmp_path, VALID), str(tmp_path), work) == outcome


def test_run_exits_2_before_the_work_when_the_config_is_bad_or_its_check_breaks(tmp_path, monkeypatch):
    path, worked = write(tmp_path, {"layout": []}), []
    assert SCRIPT.run(path, str(tmp_path), worked.append) == (
        2,
        [f"{path}: 'slot_map' is required; it must be an absolute path; {FIX}",
         f"{path}: 'out_dir' is required; it must be an absolute path; {FIX}"],
    )  # fmt: skip
    monkeypatch.setattr(_layout, "check_mapping", broken)
    assert SCRIPT.run(path, str(tmp_path), worked.append) == (2, [BUG])
    assert worked == []
