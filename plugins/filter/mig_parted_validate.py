# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Filters ``gpu.mig.mig_parted_problems`` and ``gpu.mig.mig_parted_check``: a mig-parted config checked without a host.

Thin wrappers over ``_migparted.validate_config`` (the rule tables and the planner that mig_instances uses);
playbooks/validate_mig_parted.yml runs them on a file.
"""

from __future__ import annotations

import yaml
from ansible.errors import AnsibleFilterError

from ansible_collections.gpu.mig.plugins.module_utils._mig import migparted as _migparted


def _checked(config, models) -> _migparted.ConfigCheck:
    if models is not None and not (isinstance(models, list) and all(isinstance(m, str) for m in models)):
        raise AnsibleFilterError(f"models must be a list of GPU product names, not {models!r}")
    if isinstance(config, str):
        try:
            config = yaml.safe_load(config)
        except yaml.YAMLError as err:
            return _migparted.ConfigCheck([f"mig-parted config: not valid YAML: {err}"], {}, [])
    return _migparted.validate_config(config, models)


def mig_parted_problems(config, models=None) -> list:
    """A mig-parted config (parsed, or its YAML text) -> every problem found, checked against the MIG catalog."""
    return _checked(config, models).problems


def mig_parted_check(config, models=None) -> dict:
    """The same check -> ``{problems, fits, unchecked}``."""
    return dict(_checked(config, models)._asdict())


class FilterModule:
    """gpu.mig mig-parted validation filters."""

    def filters(self) -> dict:
        return {"mig_parted_problems": mig_parted_problems, "mig_parted_check": mig_parted_check}
