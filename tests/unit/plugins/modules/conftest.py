# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Fixtures for module tests that read the warnings of a module run."""

from __future__ import annotations

import pytest
from ansible.module_utils import _internal
from ansible.module_utils.common import warnings


@pytest.fixture
def warning_texts(monkeypatch):
    """``warning_texts(result)`` -> the texts of a module result's warnings.

    main() runs in the test process, which may have imported controller code (filter tests do): ansible-core then
    sends module warnings to the controller's display instead of the result. A managed host's module process is
    never the controller, and it starts with no warnings; so does each test using this fixture.
    """
    monkeypatch.setattr(_internal, "is_controller", False)
    monkeypatch.setattr(warnings, "_global_warnings", {})

    def texts(result: dict) -> list[str]:
        return [w["event"]["msg"] if isinstance(w, dict) else w for w in result.get("warnings", [])]

    return texts
