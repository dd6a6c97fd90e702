# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""playbooks/validate_mig_parted.yml on published files: OK with the models each config serves, or every problem."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
FIXTURES = REPO / "tests" / "fixtures" / "mig-parted"


def validate(tmp_path: Path, *extra: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "ANSIBLE_COLLECTIONS_PATH": os.environ.get("ANSIBLE_COLLECTIONS_PATH", str(REPO / ".build/collections")),
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCALHOST_WARNING": "0",
        "PWD": str(cwd),  # as a shell sets it: a relative mig_parted_file is read from there
    }
    argv = [str(Path(sys.executable).parent / "ansible-playbook"), str(REPO / "playbooks/validate_mig_parted.yml")]
    return subprocess.run([*argv, *extra], capture_output=True, text=True, env=env, cwd=cwd, timeout=300, check=False)


def test_a_valid_file_prints_ok_with_the_models_each_config_serves(tmp_path):
    result = validate(
        tmp_path, "-e", "mig_parted_file=mig-parted/mig-parted-examples-config.yaml.published", cwd=FIXTURES.parent
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: mig-parted/mig-parted-examples-config.yaml.published, 9 configs" in result.stdout
    assert '"all-balanced: NVIDIA A100-SXM4-40GB"' in result.stdout


def test_a_file_with_problems_fails_listing_each(tmp_path):
    result = validate(
        tmp_path,
        *("-e", f"mig_parted_file={FIXTURES / 'deepops-nvidia-mig-config.yml.published'}"),
        *("-e", '{"mig_parted_models": ["NVIDIA H100 80GB HBM3"]}'),
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "deepops-nvidia-mig-config.yml.published: " in result.stdout
    assert (
        "mig-configs.all-1g.5gb[0] on NVIDIA H100 80GB HBM3: mig-devices: 1g.5gb is not a MIG profile" in result.stdout
    )
    assert "mig-configs.all-7g.80gb[0] on NVIDIA H100 80GB HBM3: mig-devices: 7g.80gb asks for 2" in result.stdout


def test_without_a_file_it_says_how_to_give_one(tmp_path):
    result = validate(tmp_path)
    assert result.returncode == 2 and "-e mig_parted_file=path/to/config.yaml" in result.stdout
