# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Fixtures for the plugin tests: run a module's main() in-process, snapshot a simulated host."""

from __future__ import annotations

import json

import pytest
from ansible.module_utils.common import warnings
from ansible.module_utils.testing import patch_module_args


@pytest.fixture
def run_module(capsys, monkeypatch):
    """``run_module(module, args)`` -> (result dict, failed) for a module's main().

    Each run starts with no warnings or deprecations left by an earlier one, as a module process on a host does.
    """

    def runner(module, args: dict, check_mode: bool = False, diff: bool = False) -> tuple[dict, bool]:
        monkeypatch.setattr(warnings, "_global_warnings", {})
        monkeypatch.setattr(warnings, "_global_deprecations", {})
        args = dict(args, _ansible_check_mode=check_mode, _ansible_diff=diff)
        with patch_module_args(args), pytest.raises(SystemExit) as exit_info:
            module.main()
        result = json.loads(capsys.readouterr().out)
        return result, exit_info.value.code != 0

    return runner


@pytest.fixture
def snapshot():
    """``snapshot(host)`` -> every state file of a simulated host, byte for byte."""

    def take(host) -> dict:
        return {p.relative_to(host.root): p.read_bytes() for p in sorted(host.root.rglob("*")) if p.is_file()}

    return take
