# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The capacity CLI's usage: every subcommand's --help, one flag per module option with the module's words, and a
clear error (never a traceback) for what it cannot use. The runs against a server are in tests/unit/capacity."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest
import yaml

from ansible_collections.gpu.mig.plugins.module_utils._capacity.options import ARGUMENT_SPEC
from ansible_collections.gpu.mig.plugins.modules import capacity_test
from ansible_collections.gpu.mig.plugins.plugin_utils import capacity_cli as cli

ROLE = Path(__file__).resolve().parents[4] / "roles" / "capacity"


def _subparsers(parser: argparse.ArgumentParser) -> dict:
    """The subcommands as the parser knows them (name -> parser)."""
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


SUBCOMMANDS = sorted(_subparsers(cli.build_parser()))


def test_the_subcommands_are_found():
    assert SUBCOMMANDS == ["fleet", "generator", "noisy", "predict", "report", "run"]


def test_a_generator_without_its_secret_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("GPU_MIG_GENERATOR_TOKEN", raising=False)
    assert cli.main(["generator", "--port", "0"]) == 2
    assert "give the shared secret with --token-file FILE or GPU_MIG_GENERATOR_TOKEN" in capsys.readouterr().err
    assert cli.main(["generator", "--port", "0", "--token-file", str(tmp_path / "absent")]) == 2
    assert "cannot read --token-file %s: No such file or directory" % (tmp_path / "absent") in capsys.readouterr().err
    (tmp_path / "short").write_text("too-short\n")
    assert cli.main(["generator", "--port", "0", "--token-file", str(tmp_path / "short")]) == 2
    assert "generator token must be at least 16 characters" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [[], *([name] for name in SUBCOMMANDS)], ids=["main", *SUBCOMMANDS])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main([*argv, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m ansible_collections.gpu.mig.plugins.plugin_utils.capacity_cli")
    parser = cli.build_parser() if not argv else _subparsers(cli.build_parser())[argv[0]]
    for action in parser._actions:  # every option is explained
        assert action.help, action.option_strings or action.dest


def test_run_has_one_flag_per_module_option_with_the_module_words():
    run = _subparsers(cli.build_parser())["run"]
    flags = {action.dest: action for action in run._actions}
    assert set(ARGUMENT_SPEC) - set(flags) == {"output_dir"}  # --out instead
    docs = yaml.safe_load(capacity_test.DOCUMENTATION)["options"]
    assert cli.module_documentation() == yaml.safe_load(capacity_test.DOCUMENTATION)
    first = docs["knee_hold"]["description"][0].split(". ")[0]  # a help text with a % (argparse formats help)
    assert "%" in first and flags["knee_hold"].help.startswith(first.replace("%", "%%").replace("O(hold)", "hold"))
    assert flags["step_pct"].help.endswith("(default 15.0)") and "C(" not in flags["sla"].help
    assert "O(" not in " ".join(a.help for a in run._actions)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["report", "/nonexistent/capacity-x.json"], "cannot read /nonexistent/capacity-x.json"),
        (["report", "{bad}"], "is not a gpu.mig capacity result"),
        (["report", "{empty}"], "holds no steps and no noisy-neighbour run"),
        (["report", "{truncated}"], "is not a complete gpu.mig capacity result (KeyError"),
        (["fleet", "{bad}", "--out", "{tmp}/f"], "is not a gpu.mig capacity result"),
        (["fleet", "{empty}", "--out", "{tmp}/f"], "none of the results has a capacity row"),
        (["run", "--url", "http://127.0.0.1:9/", "--sla", "p95<1s"], "--start-rps is required with --plan linear"),
        (["run", "--url", "http://127.0.0.1:9/", "--sla", "p95<1s", "--plan", "adaptive"], "--start-rps is required"),
    ],
)
def test_what_it_cannot_use_is_an_error_not_a_traceback(argv, message, tmp_path, capsys):
    files = {"bad": "[1, 2]", "empty": json.dumps({"schema": "gpu.mig/capacity/v1"})}
    files["truncated"] = json.dumps({"phases": [{"phase": "before"}]})
    for name, text in files.items():
        (tmp_path / (name + ".json")).write_text(text)
    paths = {name: str(tmp_path / (name + ".json")) for name in files}
    assert cli.main([a.format(tmp=tmp_path, **paths) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_missing_matplotlib_is_named(tmp_path):
    def no_matplotlib(*_args):
        raise ImportError("No module named 'matplotlib'")

    with pytest.raises(cli.cap.CapacityError, match=r"plots need matplotlib on .*--no-report"):
        cli._plotted(no_matplotlib, {}, str(tmp_path), "x")


def test_help_texts_come_from_the_documentation_without_markup():
    helps = cli.option_help()
    assert set(helps) == set(ARGUMENT_SPEC)
    assert helps["time_limit"] == "Upper bound on the test, in seconds"
    assert not [name for name, text in helps.items() if re.search(r"\b(?:RV|[BCIOVR])\(", text)]


def test_a_reader_that_leaves_early_gets_no_traceback():
    """``capacity_cli predict ... | true``: the pipe closes before the CLI writes; it stops quietly."""
    collections = Path(cli.__file__).parents[5]  # <dir>/ansible_collections/gpu/mig/plugins/plugin_utils
    env = dict(os.environ, PYTHONPATH=str(collections))
    argv = [sys.executable, "-m", cli.__name__, "predict", "--c", "2", "--service-ms", "10", "--sla-ms", "100"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # before the interpreter has even started
    _unused, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and b"Traceback" not in err, err.decode()


@pytest.mark.parametrize(("outer", "expected"), [("", "/srv/c"), ("/opt/site", "/srv/c:/opt/site")])
def test_the_capacity_role_renders_reports_with_this_cli(outer, expected):
    """The role runs ``python -m <this module>`` with the collections directory it was loaded from first on the path."""
    tasks = yaml.safe_load((ROLE / "tasks" / "collect.yml").read_text(encoding="utf-8"))
    task = next(t for t in tasks if "report" in t.get("ansible.builtin.command", {}).get("argv", []))
    assert task["ansible.builtin.command"]["argv"][1:4] == ["-m", cli.__name__, "report"]
    env = jinja2.Environment()
    env.filters["dirname"] = os.path.dirname
    pythonpath = env.from_string(task["environment"]["PYTHONPATH"])
    role_path = "/srv/c/ansible_collections/gpu/mig/roles/capacity"
    assert pythonpath.render(role_path=role_path, lookup=lambda *_args: outer) == expected
