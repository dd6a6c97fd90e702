# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Header values are secrets: sent to the endpoint, and nowhere else (results, files, registered vars, -vvv)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ansible.module_utils.testing import patch_module_args

from ansible_collections.gpu.mig.plugins.modules import capacity_test
from ansible_collections.gpu.mig.plugins.plugin_utils import capacity_cli as cli

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def tokens():
    """Random secrets for the service's, the neighbour's and a payload's headers."""
    return {name: "tok-%s-%s" % (name, secrets.token_hex(16)) for name in ("a", "b", "mix")}


def _options(server, tokens: dict, **kw) -> dict:
    """A short test that sends every kind of header: the service's, a payload's, the neighbour's."""
    opts = {
        "url": server.url("/a"),
        "headers": {"Authorization": "Bearer " + tokens["a"]},
        "payload_mix": [{"name": "light", "payload": {"x": 1}, "headers": {"X-Api-Key": tokens["mix"]}}],
        "sla": {"p95_ms": 500},
        "start_rps": 20,
        "max_steps": 1,
        "warmup": 0.1,
        "hold": 0.4,
        "initial_warmup": 0,
        "confirm": False,
        "arrival": "constant",
        "service": "chat",
        "noisy_neighbour": {
            "url": server.url("/b"),
            "rps": 5,
            "a_rps": 10,
            "multipliers": [1],
            "hold": 0.3,
            "warmup": 0.1,
            "headers": {"Authorization": "Bearer " + tokens["b"]},
        },
    }
    opts.update(kw)
    return opts


def _sent(server, tokens: dict) -> None:
    """The endpoint got every secret: they were used, so their absence elsewhere means something."""
    seen = json.dumps([headers for _method, _path, headers in server.requests])
    assert all(token in seen for token in tokens.values())


def _nowhere(tokens: dict, *texts: str) -> None:
    for text in texts:
        for token in tokens.values():
            assert token not in text
            assert token[4:] not in text  # not even a part without the prefix


def test_spec_marks_every_header_option_no_log():
    spec = capacity_test.ARGUMENT_SPEC
    assert spec["headers"]["no_log"] is True
    assert spec["noisy_neighbour"]["options"]["headers"]["no_log"] is True
    assert spec["payload_mix"]["options"]["headers"]["no_log"] is True
    assert spec["noisy_neighbour"]["options"]["payload_mix"]["options"]["headers"]["no_log"] is True


@pytest.mark.parametrize("check_mode", [True, False])
def test_module_result_and_files_hold_no_header_value(recording_server, tokens, tmp_path, capsys, check_mode):
    args = _options(recording_server, tokens, output_dir=str(tmp_path), record_requests=True)
    with patch_module_args(dict(args, _ansible_check_mode=check_mode)), pytest.raises(SystemExit) as exit_info:
        capacity_test.main()
    out = capsys.readouterr().out
    result = json.loads(out)
    assert exit_info.value.code == 0, result
    _sent(recording_server, tokens)
    assert result["invocation"]["module_args"]["headers"]["Authorization"] != "Bearer " + tokens["a"]
    files = sorted(tmp_path.iterdir())
    assert bool(files) is not check_mode and ("steps" in result) is not check_mode
    _nowhere(tokens, out, *(p.read_text() for p in files))
    if files:  # the result file still says which headers were sent
        saved = json.loads((tmp_path / "capacity-chat.json").read_text())
        assert saved["config"]["headers"] == ["Authorization"]
        assert saved["config"]["noisy_neighbour"]["headers"] == ["Authorization"]


def test_cli_output_and_files_hold_no_header_value(recording_server, tokens, tmp_path, capsys):
    opts = _options(recording_server, tokens)
    argv = ["run", "--url", opts["url"], "--header", "Authorization: Bearer " + tokens["a"], "--sla", "p95<500ms"]
    argv += [
        "--payload-mix",
        json.dumps(opts["payload_mix"][0]),
        "--noisy-neighbour",
        json.dumps(opts["noisy_neighbour"]),
    ]
    for name in ("start_rps", "max_steps", "warmup", "hold", "initial_warmup", "arrival", "service"):
        argv += ["--" + name.replace("_", "-"), str(opts[name])]
    argv += ["--no-confirm", "--record-requests", "--out", str(tmp_path), "--quiet"]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    _sent(recording_server, tokens)
    files = sorted(p for p in tmp_path.rglob("*") if p.suffix in (".json", ".csv", ".md"))
    assert {"capacity-chat.json", "capacity-chat.steps.csv", "capacity-chat.requests.csv"} <= {p.name for p in files}
    _nowhere(tokens, captured.out, captured.err, *(p.read_text() for p in files))


def test_playbook_vvv_and_registered_result_hold_no_header_value(recording_server, tokens, tmp_path):
    """A real ansible-playbook run in check mode, on localhost with this venv's python, at -vvv."""
    registered = tmp_path / "registered.json"
    task = {"gpu.mig.capacity_test": _options(recording_server, tokens), "register": "probe"}
    role_test = _options(recording_server, tokens)
    play = {
        "hosts": "all",
        "gather_facts": False,
        "tasks": [
            task,
            {"ansible.builtin.debug": {"var": "probe"}},
            {"ansible.builtin.include_role": {"name": "gpu.mig.capacity"}, "vars": {"capacity_tests": [role_test]}},
            {"ansible.builtin.debug": {"var": "_capacity_runs"}},
            {
                "ansible.builtin.copy": {
                    "content": "{{ {'probe': probe, 'role': _capacity_runs} | to_json }}",
                    "dest": str(registered),
                    "mode": "0600",
                },
                "check_mode": False,
            },
        ],
    }
    playbook = tmp_path / "play.yml"
    playbook.write_text(yaml.safe_dump([play]))
    inventory = tmp_path / "inventory.yml"
    host = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {"localhost": host}}}))
    env = {
        **os.environ,
        "ANSIBLE_COLLECTIONS_PATH": os.environ.get("ANSIBLE_COLLECTIONS_PATH", str(REPO / ".build/collections")),
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp"),
        "ANSIBLE_NOCOLOR": "1",
    }
    argv = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory), "--check", "-vvv"]
    run = subprocess.run([*argv, str(playbook)], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "endpoint answered HTTP 200" in run.stdout
    _sent(recording_server, tokens)
    _nowhere(tokens, run.stdout, run.stderr, registered.read_text())
    assert '"Authorization": "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"' in run.stdout  # -vvv shows module_args, masked
    saved = json.loads(registered.read_text())
    assert saved["probe"]["probe"]["status"] == 200 and saved["role"]["results"][0]["probe"]["status"] == 200
