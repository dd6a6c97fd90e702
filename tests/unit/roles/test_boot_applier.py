# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The boot applier (roles/mig_persist/files/gpu_mig_apply.py) on simulated hosts: its settings checked all at once,
every failure as ``FAILED:`` journal lines with exit status 1 (2 when it cannot run) and never a traceback, a
mig-parted config converted as gpu.mig.mig_instances converts it, and the last slot map keeping look-alike slots on
their instances."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ansible_collections.gpu.mig.plugins.module_utils._mig import apply as _apply
from ansible_collections.gpu.mig.plugins.module_utils._mig import layout as _layout

REPO = Path(__file__).resolve().parents[3]
SLOT_MAP, ENV_DIR = "/etc/gpu-mig/slots.json", "/run/gpu-mig/slots"
SETTINGS = {"slot_map": SLOT_MAP, "env_dir": ENV_DIR, "cdi": "never"}
PREFIX = "gpu-mig-apply: "


@pytest.fixture
def applier(monkeypatch):
    """The applier script as a module; the sys.path entry it adds for its lib_dir is dropped afterwards."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    spec = importlib.util.spec_from_file_location("gpu_mig_apply", REPO / "roles/mig_persist/files/gpu_mig_apply.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def boot(applier, root: Path, capsys, settings: dict | str) -> tuple[int, list[str]]:
    """Write applier.json under ``root`` and run the applier; its exit status and journal lines (no prefix)."""
    path = root / "etc/gpu-mig/applier.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(settings if isinstance(settings, str) else json.dumps(settings))
    status = applier.main(["--config", "/etc/gpu-mig/applier.json", "--root", str(root)])
    journal = capsys.readouterr().err
    assert "Traceback" not in journal
    lines = journal.splitlines()
    assert all(line.startswith(PREFIX) for line in lines), journal
    return status, [line.removeprefix(PREFIX) for line in lines]


def failed(lines: list[str]) -> list[str]:
    return [line.removeprefix("FAILED: ") for line in lines if line.startswith("FAILED: ")]


def test_every_problem_in_the_settings_is_named_at_once_and_nothing_changes(applier, sim_host, tmp_path, capsys):
    host = sim_host("A100-SXM4-40GB:mig=on", instances=["0:3g.20gb@4"])
    before = host.state().snapshot()
    settings = {
        "layout": "chat",
        "mig_parted_config_name": "all-1g.5gb",
        "slot_map": "etc/slots.json",
        "cdi": "sometimes",
        "reboot": True,
    }
    status, lines = boot(applier, tmp_path, capsys, settings)
    assert status == 2
    problems = failed(lines)
    for named in ("layout is 'chat'", "'env_dir' is required", "slot_map is 'etc/slots.json'", "cdi is 'sometimes'",
                  "unknown key 'reboot'", "'mig_parted_config' and 'mig_parted_config_name' go together"):  # fmt: skip
        assert [p for p in problems if named in p and p.endswith("rerun the gpu.mig.mig_persist role")], named
    assert len(problems) == 6, problems
    assert host.state().snapshot() == before
    assert not (tmp_path / SLOT_MAP[1:]).exists()


def test_both_a_layout_and_a_mig_parted_config_is_refused(applier, sim_host, tmp_path, capsys):
    sim_host("A100-SXM4-40GB:mig=on")
    config = {"version": "v1", "mig-configs": {"all-disabled": [{"devices": "all", "mig-enabled": False}]}}
    settings = {**SETTINGS, "layout": [], "mig_parted_config": config, "mig_parted_config_name": "all-disabled"}
    status, lines = boot(applier, tmp_path, capsys, settings)
    assert status == 2
    assert failed(lines) == [
        "/etc/gpu-mig/applier.json: needs exactly one of 'layout' and 'mig_parted_config', not ['layout',"
        " 'mig_parted_config']; rerun the gpu.mig.mig_persist role"
    ]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"layout": [],', "cannot read /etc/gpu-mig/applier.json: "),
        ("[1, 2]", "/etc/gpu-mig/applier.json holds a JSON list, not the applier's settings"),
    ],
)
def test_settings_the_applier_cannot_read_exit_2(applier, sim_host, tmp_path, capsys, text, reason):
    sim_host("A100-SXM4-40GB:mig=on")
    status, lines = boot(applier, tmp_path, capsys, text)
    assert status == 2
    assert len(failed(lines)) == 1 and failed(lines)[0].startswith(reason), lines
    assert failed(lines)[0].endswith("; rerun the gpu.mig.mig_persist role")


def test_an_applier_without_its_core_says_so_in_one_line(tmp_path):
    """Run as the unit runs it, in a clean interpreter, with ``--lib-dir`` naming a directory that has no core."""
    script = REPO / "roles/mig_persist/files/gpu_mig_apply.py"
    argv = [sys.executable, "-I", script, "--lib-dir", tmp_path / "lib", "--root", tmp_path]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert done.stderr == (
        f"{PREFIX}FAILED: cannot load the gpu.mig core from {tmp_path / 'lib'}: No module named 'ansible_collections';"
        " rerun the gpu.mig.mig_persist role\n"
    )


@pytest.mark.parametrize(
    ("where", "function", "status"),
    [(_apply, "apply_layout", 1), (_apply, "read_host", 1), (_layout, "check_mapping", 2)],
    ids=["while applying", "while reading the host", "while loading the settings"],
)
def test_an_unexpected_exception_ends_as_failed_lines(applier, sim_host, tmp_path, capsys, monkeypatch, where,
                                                      function, status):  # fmt: skip
    """A bug in the core (any exception it does not raise by design) is named as one, with no traceback."""
    sim_host("A100-SXM4-40GB:mig=on")

    def broken(*_args, **_kwargs):
        raise KeyError("gpu_uuid")

    monkeypatch.setattr(where, function, broken)
    code, lines = boot(applier, tmp_path, capsys, {**SETTINGS, "layout": []})
    assert code == status
    assert failed(lines)[0].startswith("unexpected KeyError: 'gpu_uuid' (a gpu.mig bug: please report it")
    if status == 1:
        assert failed(lines)[-1] == f"the MIG layout is not in place; {applier.FIX}"


@pytest.mark.parametrize("slot_map", ["{not json", '{"chat": 5}', '["chat"]'])
def test_a_corrupt_slot_map_fails_naming_the_file_and_changes_nothing(applier, sim_host, tmp_path, capsys, slot_map):
    host = sim_host("A100-SXM4-40GB:mig=on")
    before = host.state().snapshot()
    (tmp_path / "etc/gpu-mig").mkdir(parents=True)
    (tmp_path / SLOT_MAP[1:]).write_text(slot_map)
    layout = [{"gpus": 0, "slots": [{"name": "chat", "profile": "3g.20gb"}]}]
    status, lines = boot(applier, tmp_path, capsys, {**SETTINGS, "layout": layout})
    assert status == 1
    assert failed(lines)[0].startswith(f"slot_map_file {tmp_path}{SLOT_MAP}"), lines
    assert any("remove it to apply the layout without history" in line for line in failed(lines)), lines
    assert host.state().snapshot() == before
    assert (tmp_path / SLOT_MAP[1:]).read_text() == slot_map


def test_reordered_look_alike_slots_keep_their_instances(applier, sim_host, tmp_path, capsys):
    """The issue's reorder reproduction at boot: the last slot map breaks the tie between look-alike instances."""
    sim_host("A100-SXM4-40GB:mig=on")
    web, ocr = {"name": "web", "profile": "1g.5gb"}, {"name": "ocr", "profile": "1g.5gb"}
    assert boot(applier, tmp_path, capsys, {**SETTINGS, "layout": [{"gpus": 0, "slots": [web, ocr]}]})[0] == 0
    first = json.loads((tmp_path / SLOT_MAP[1:]).read_text())
    status, lines = boot(applier, tmp_path, capsys, {**SETTINGS, "layout": [{"gpus": 0, "slots": [ocr, web]}]})
    assert status == 0
    assert lines[-1] == "done: 2 slots, already in place"
    assert json.loads((tmp_path / SLOT_MAP[1:]).read_text()) == first
    for name in ("web", "ocr"):
        env = (tmp_path / ENV_DIR[1:] / f"{name}.env").read_text()
        assert f"CUDA_VISIBLE_DEVICES={first[name]['mig_uuid']}\n" in env


MIG_PARTED = {
    "version": "v1",
    "mig-configs": {
        "mixed": [
            {"devices": [0], "mig-enabled": True, "mig-devices": {"3g.20gb": 1, "1g.5gb": 2}},
            {"devices": [1, 2, 3], "mig-enabled": True, "mig-devices": {"7g.40gb": 1}},
        ],
        "typo": [{"devices": "all", "mig-enabled": True, "mig-devices": {"3g.21gb": 1}}],
    },
}


def test_a_mig_parted_config_is_applied_with_the_devices_the_host_lacks_logged(applier, sim_host, tmp_path, capsys):
    sim_host("A100-SXM4-40GB:mig=on", "A100-SXM4-40GB")
    settings = {**SETTINGS, "mig_parted_config": MIG_PARTED, "mig_parted_config_name": "mixed"}
    status, lines = boot(applier, tmp_path, capsys, settings)
    assert status == 0, lines
    assert lines[0] == "applying the mig-parted config 'mixed' from /etc/gpu-mig/applier.json"
    assert len([line for line in lines if line.startswith("skipped: ")]) == 2, lines
    slots = json.loads((tmp_path / SLOT_MAP[1:]).read_text())
    counts = sorted((slot["gpu_index"], slot["profile"]) for slot in slots.values())
    assert counts == [(0, "1g.5gb"), (0, "1g.5gb"), (0, "3g.20gb"), (1, "7g.40gb")]
    assert sorted(p.name for p in (tmp_path / ENV_DIR[1:]).iterdir()) == sorted(f"{name}.env" for name in slots)


def test_a_mig_parted_config_the_host_refuses_fails_naming_the_key(applier, sim_host, tmp_path, capsys):
    host = sim_host("A100-SXM4-40GB:mig=on")
    before = host.state().snapshot()
    settings = {**SETTINGS, "mig_parted_config": MIG_PARTED, "mig_parted_config_name": "typo"}
    status, lines = boot(applier, tmp_path, capsys, settings)
    assert status == 1
    assert any("3g.21gb" in line and "GPU 0" in line for line in failed(lines)), lines
    assert failed(lines)[-1] == f"the MIG layout is not in place; {applier.FIX}"
    assert host.state().snapshot() == before
