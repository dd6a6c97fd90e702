# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The rules between the rooms of the collection (docs/architecture.md), read from the imports of every plugin file.

- plugins/module_utils holds subsystem packages only: _mig (host-side MIG core) and _capacity (load generation
  and analysis, standard library only); neither imports the other.
- Nothing imports a module (not even another module); module_utils never imports controller code (plugin_utils,
  filters, action plugins, ansible.plugins), since it runs on managed hosts.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = ROOT / "plugins"
PREFIX = "ansible_collections.gpu.mig."
SUBSYSTEMS = ("_mig", "_capacity")


def imports(path: Path) -> set[str]:
    """Every module a Python file imports (absolute names; ``from x import y`` gives ``x.y`` too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def python_files(folder: str) -> list[Path]:
    return sorted((PLUGINS / folder).rglob("*.py"))


def test_module_utils_holds_subsystem_packages_only():
    loose = [
        p.name for p in (PLUGINS / "module_utils").iterdir() if p.name != "__pycache__" and p.name not in SUBSYSTEMS
    ]
    assert loose == [], "module_utils files outside a subsystem folder (_mig, _capacity)"


@pytest.mark.parametrize(("subsystem", "other"), [("_mig", "_capacity"), ("_capacity", "_mig")])
def test_subsystems_never_import_each_other(subsystem, other):
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            i for i in imports(path) if i.startswith(f"{PREFIX}plugins.module_utils.{other}")
        )
        for path in python_files(f"module_utils/{subsystem}")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_capacity_engine_uses_the_standard_library_only():
    # uvloop is optional: imported only when a test asks for event_loop uvloop, with a clear error when missing
    stdlib = set(sys.stdlib_module_names) | {"__future__", "uvloop"}
    third_party = {
        str(path.relative_to(ROOT)): sorted(
            i
            for i in imports(path)
            if i.split(".")[0] not in stdlib and not i.startswith(f"{PREFIX}plugins.module_utils._capacity")
        )
        for path in python_files("module_utils/_capacity")
    }
    assert {k: v for k, v in third_party.items() if v} == {}


def test_host_side_code_never_imports_controller_code():
    controller = (
        f"{PREFIX}plugins.plugin_utils",
        f"{PREFIX}plugins.filter",
        f"{PREFIX}plugins.action",
        "ansible.plugins",
    )
    offenders = {
        str(path.relative_to(ROOT)): sorted(i for i in imports(path) if i.startswith(controller))
        for folder in ("module_utils", "modules")
        for path in python_files(folder)
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_modules_are_no_library():
    """Nothing imports a module, not even another module: what modules share lives in module_utils (the capacity
    CLI takes the capacity_test options from _capacity/options.py)."""
    offenders = {
        str(path.relative_to(ROOT)): sorted(i for i in imports(path) if i.startswith(f"{PREFIX}plugins.modules"))
        for path in sorted(PLUGINS.rglob("*.py"))
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_checks_see_the_imports():
    """The rules above read real imports: the action plugin's view of the MIG core is found."""
    assert f"{PREFIX}plugins.module_utils._mig.apply" in imports(PLUGINS / "action" / "mig_instances.py")
