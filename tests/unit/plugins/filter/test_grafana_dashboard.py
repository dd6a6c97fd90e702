# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Filter gpu.mig.grafana_dashboard: a thin wrapper over plugin_utils/dashboard.py, documented as it is called."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import pytest
import yaml
from ansible.errors import AnsibleFilterError

from ansible_collections.gpu.mig.plugins.filter.dashboard import FilterModule
from ansible_collections.gpu.mig.plugins.plugin_utils import dashboard as _dashboard
from ansible_collections.gpu.mig.tests.unit.plugins.plugin_utils.dashboard_specs import HOSTS, SLOTS

DOC = Path(__file__).resolve().parents[4] / "plugins" / "filter" / "grafana_dashboard.yml"
grafana_dashboard = FilterModule().filters()["grafana_dashboard"]


def test_the_filter_returns_the_generated_dashboard():
    board = grafana_dashboard(HOSTS, dcgm=True, title="GPU fleet", uid="gpu-fleet")
    assert board == _dashboard.generate(HOSTS, True, "GPU fleet", "gpu-fleet")
    assert (board["title"], board["uid"]) == ("GPU fleet", "gpu-fleet")


def test_every_problem_comes_back_in_one_filter_error(monkeypatch):
    with pytest.raises(AnsibleFilterError) as caught:
        grafana_dashboard([{"host": "gpu-1", "services": [{"name": "chat"}], "slots": SLOTS}], dcgm=1)
    text = str(caught.value)
    assert text.startswith("the Grafana dashboard cannot be generated:\n- ")
    assert "slot is required" in text and "port is required" in text and "dcgm must be true" in text
    monkeypatch.setitem(sys.modules, "grafana_foundation_sdk", None)
    for name in [n for n in sys.modules if n.startswith("grafana_foundation_sdk.")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(AnsibleFilterError, match="pip install grafana-foundation-sdk"):
        grafana_dashboard(HOSTS)


def test_the_documentation_lists_the_filter_s_options():
    doc = yaml.safe_load(DOC.read_text())["DOCUMENTATION"]
    assert doc["name"] == "grafana_dashboard"
    parameters = inspect.signature(grafana_dashboard).parameters
    options = doc["options"]
    assert list(options) == ["_input", *list(parameters)[1:]]
    for name, parameter in list(parameters.items())[1:]:
        expected = parameter.default if parameter.default is not inspect.Parameter.empty else None
        assert options[name].get("default") == expected, name
        assert options[name].get("required", False) == (expected is None), name
