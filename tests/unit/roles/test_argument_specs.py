# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Every role's meta/argument_specs.yml and defaults/main.yml declare the same variables, types and defaults.

A default may be a fallback template such as ``"{{ gpu_mig_root | default('/') }}"``: it is rendered with the role's
own defaults only (no inventory), which is what a user who sets nothing gets, and must equal the spec's default.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template

ROLES = Path(__file__).resolve().parents[3] / "roles"
# Argument spec type -> the Python types a default of that type may have (bool is no int here).
TYPES = {"str": str, "path": str, "bool": bool, "int": int, "float": (int, float), "list": list, "dict": dict}


def _trusted(value):
    """The value with its strings marked as templates, as Ansible treats role defaults."""
    if isinstance(value, str):
        return trust_as_template(value)
    if isinstance(value, list):
        return [_trusted(item) for item in value]
    if isinstance(value, dict):
        return {key: _trusted(item) for key, item in value.items()}
    return value


def _is(value, kind: str) -> bool:
    """Whether ``value`` is of the argument spec type ``kind`` (``raw`` takes anything; a bool is no number)."""
    return isinstance(value, TYPES.get(kind, object)) and not (kind in ("int", "float") and isinstance(value, bool))


def _type_problem(name: str, value, option: dict) -> str | None:
    """Why ``value`` does not fit ``option``'s type, elements and choices, or None."""
    kind, elements = option.get("type", "str"), option.get("elements")
    if not _is(value, kind):
        return f"{name}: default {value!r} is not of type {kind}"
    if elements and not all(_is(item, elements) for item in value):
        return f"{name}: default {value!r} has elements that are not of type {elements}"
    if "choices" in option and value not in option["choices"]:
        return f"{name}: default {value!r} is not one of the choices {option['choices']}"
    return None


def spec_problems(role: Path) -> list[str]:
    """Every disagreement between a role's argument spec (all entry points) and its defaults, one line each."""
    defaults = yaml.safe_load((role / "defaults/main.yml").read_text()) or {}
    entry_points = yaml.safe_load((role / "meta/argument_specs.yml").read_text())["argument_specs"]
    templar = Templar(loader=DataLoader(), variables=_trusted(defaults))
    problems = [
        f"{name}: in defaults/main.yml but not declared in the argument spec's main entry point"
        for name in sorted(set(defaults) - set(entry_points["main"].get("options", {})))
    ]
    for entry_point, spec in entry_points.items():
        for name, option in sorted(spec.get("options", {}).items()):
            where = f"{name} ({entry_point})"
            if name not in defaults:
                problems.append(f"{where}: declared in the argument spec but missing from defaults/main.yml")
                continue
            value = defaults[name]
            if value != option.get("default"):
                value = templar.template(_trusted(value))
            if json.dumps(value, sort_keys=True) != json.dumps(option.get("default"), sort_keys=True):
                problems.append(
                    f"{where}: defaults/main.yml gives {value!r}, the argument spec {option.get('default')!r}"
                )
            problems.append(_type_problem(where, value, option))
    return [problem for problem in problems if problem]


@pytest.mark.parametrize("role", sorted(p.name for p in ROLES.iterdir() if (p / "meta/argument_specs.yml").is_file()))
def test_argument_spec_matches_the_defaults(role):
    assert spec_problems(ROLES / role) == []


def test_every_role_has_an_argument_spec_and_defaults():
    roles = sorted(p for p in ROLES.iterdir() if p.is_dir())
    assert [p.name for p in roles if not (p / "meta/argument_specs.yml").is_file()] == []
    assert [p.name for p in roles if not (p / "defaults/main.yml").is_file()] == []


def test_every_kind_of_drift_is_reported(tmp_path):
    role = tmp_path / "drifted"
    (role / "defaults").mkdir(parents=True)
    (role / "meta").mkdir()
    defaults = {
        "drifted_root": "{{ gpu_mig_root | default('/srv') }}",  # renders to another default than the spec's
        "drifted_count": "3",  # a string for an int
        "drifted_names": ["a", 1],  # an int among strings
        "drifted_mode": "fast",  # not a choice
        "drifted_flag": 1,  # an int for a bool
        "drifted_undeclared": [],
    }
    options = {
        "drifted_root": {"type": "path", "default": "/"},
        "drifted_count": {"type": "int", "default": "3"},
        "drifted_names": {"type": "list", "elements": "str", "default": ["a", 1]},
        "drifted_mode": {"type": "str", "choices": ["slow"], "default": "fast"},
        "drifted_flag": {"type": "bool", "default": True},
        "drifted_missing": {"type": "bool", "default": False},
    }
    (role / "defaults/main.yml").write_text(yaml.safe_dump(defaults))
    (role / "meta/argument_specs.yml").write_text(yaml.safe_dump({"argument_specs": {"main": {"options": options}}}))
    assert spec_problems(role) == [
        "drifted_undeclared: in defaults/main.yml but not declared in the argument spec's main entry point",
        "drifted_count (main): default '3' is not of type int",
        "drifted_flag (main): defaults/main.yml gives 1, the argument spec True",
        "drifted_flag (main): default 1 is not of type bool",
        "drifted_missing (main): declared in the argument spec but missing from defaults/main.yml",
        "drifted_mode (main): default 'fast' is not one of the choices ['slow']",
        "drifted_names (main): default ['a', 1] has elements that are not of type str",
        "drifted_root (main): defaults/main.yml gives '/srv', the argument spec '/'",
    ]
