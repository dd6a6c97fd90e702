# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Filters gpu.mig.mig_parted_problems and gpu.mig.mig_parted_check: a mig-parted file checked without a host."""

from __future__ import annotations

from pathlib import Path

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.gpu.mig.plugins.filter.mig_parted_validate import (
    FilterModule,
    mig_parted_check,
    mig_parted_problems,
)

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures" / "mig-parted"


def test_the_filters_are_registered():
    assert sorted(FilterModule().filters()) == ["mig_parted_check", "mig_parted_problems"]


def test_yaml_text_and_parsed_config_give_the_same_answer():
    text = (FIXTURES / "deepops-nvidia-mig-config.yml.published").read_text()
    problems = mig_parted_problems(text)
    assert len(problems) == 3 and all("mig-configs.all-7g.80gb[0] on NVIDIA" in p for p in problems)
    checked = mig_parted_check(text, models=["NVIDIA A100-SXM4-40GB"])
    assert checked["fits"]["all-balanced-a100-40"] == ["NVIDIA A100-SXM4-40GB"]
    assert checked["fits"]["all-balanced-a100-80"] == []
    assert any("all-balanced-a100-80[0] on NVIDIA A100-SXM4-40GB" in p for p in checked["problems"])


def test_a_valid_file_has_no_problems():
    assert mig_parted_problems((FIXTURES / "mig-parted-examples-config.yaml.published").read_text()) == []


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ("version: v1\nmig-configs: [", "mig-parted config: not valid YAML"),
        ("just text", "mig-parted config: must be a mapping with keys version, mig-configs"),
        ({"version": "v1", "mig-configs": {"x": [{"devices": "all"}]}}, "mig-configs.x[0]: 'mig-enabled' is required"),
    ],
)
def test_broken_input_is_a_problem_not_an_error(config, problem):
    assert mig_parted_problems(config)[0].startswith(problem)


def test_models_must_be_a_list_of_names():
    with pytest.raises(AnsibleFilterError, match="models must be a list of GPU product names"):
        mig_parted_problems({}, models="NVIDIA A100-SXM4-40GB")
