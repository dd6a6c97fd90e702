# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Filter ``gpu.mig.mig_parted_layout``: the layout entries a named mig-parted config means on one host.

A thin wrapper over what gpu.mig.mig_instances runs (``_apply.host_from_facts``, then
``_migparted.layout_from_mig_parted``), for the roles that need the config's layout before mig_instances applies
it: mig_mode (which GPUs get MIG on) and preflight (drift and verdict).
"""

from __future__ import annotations

from collections.abc import Mapping

import yaml
from ansible.errors import AnsibleFilterError

from ansible_collections.gpu.mig.plugins.module_utils._mig import apply as _apply
from ansible_collections.gpu.mig.plugins.module_utils._mig import layout as _layout
from ansible_collections.gpu.mig.plugins.module_utils._mig import migparted as _migparted

FACTS_FIX = "gather them with gpu.mig.mig_facts and pass ansible_facts.nvidia_mig"


def _facts_problem(nvidia_mig) -> str | None:
    if not isinstance(nvidia_mig, Mapping) or not isinstance(nvidia_mig.get("gpus"), list):
        return f"the input must be the nvidia_mig facts (a mapping with 'driver' and 'gpus'); {FACTS_FIX}"
    driver = nvidia_mig.get("driver")
    if not (isinstance(driver, Mapping) and driver.get("loaded")):
        error = driver.get("error") if isinstance(driver, Mapping) else None
        return (
            f"NVML is not available on this host ({error or 'the facts say the driver is not loaded'}), so which"
            " GPUs the config selects is unknown; install and load the NVIDIA driver, then gather the facts again"
        )
    return None


def _name_problem(config_name) -> str | None:
    if isinstance(config_name, str) and config_name:
        return None
    return f"config_name must be the name of a config under mig-configs, not {config_name!r}"


def _parsed(config) -> tuple[object, str | None]:
    """The config parsed from its YAML text (a parsed config is taken as it is), and why it could not be."""
    if not isinstance(config, str):
        return config, None
    try:
        return yaml.safe_load(config), None
    except yaml.YAMLError as err:
        return None, f"mig-parted config: not valid YAML: {err}"


# One rule per input: (input, its problem or None). The config's own rules are _migparted.check_config's tables.
_INPUT_RULES = (("nvidia_mig", _facts_problem), ("config_name", _name_problem))


def mig_parted_layout(nvidia_mig, config, config_name) -> list:
    """``nvidia_mig`` facts (gpu.mig.mig_facts), a mig-parted v1 config (parsed, or its YAML text) and the name of
    a config in it -> the layout entries gpu.mig.mig_instances would apply for it on that host; AnsibleFilterError
    listing every problem."""
    inputs = {"nvidia_mig": nvidia_mig, "config_name": config_name}
    problems = [why for key, rule in _INPUT_RULES if (why := rule(inputs[key])) is not None]
    config, unparsed = _parsed(config)
    problems.extend([unparsed] if unparsed else _migparted.check_config(config))
    if not problems:
        try:
            _facts, states, models = _apply.host_from_facts(nvidia_mig["gpus"])
        except (KeyError, TypeError, ValueError, AttributeError) as err:  # facts not written by gpu.mig.mig_facts
            problems.append(
                f"the nvidia_mig facts lack what the planner reads ({type(err).__name__}: {err}); {FACTS_FIX}"
            )
        else:
            try:
                return _migparted.layout_from_mig_parted(config, config_name, states, models).entries
            except _layout.LayoutError as err:
                problems.extend(err.problems)
    raise AnsibleFilterError(
        f"mig_parted_layout: config {config_name!r}: {len(problems)} problem(s): " + "; ".join(problems)
    )


class FilterModule:
    """gpu.mig mig-parted conversion filter."""

    def filters(self) -> dict:
        return {"mig_parted_layout": mig_parted_layout}
