# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Filters ``gpu.mig.prometheus_rules``, ``prometheus_targets``, ``prometheus_config`` and ``dcgm_counters``: thin
wrappers over plugin_utils/monitoring.py that turn its problem lists into one filter error."""

from __future__ import annotations

from typing import Callable

from ansible.errors import AnsibleFilterError

from ansible_collections.gpu.mig.plugins.plugin_utils import monitoring as _monitoring


def _refusing(what: str, build: Callable[..., object]) -> Callable[..., object]:
    """``build`` with every MonitoringError raised as one AnsibleFilterError listing the problems."""

    def wrapped(*args: object, **kwargs: object) -> object:
        try:
            return build(*args, **kwargs)
        except _monitoring.MonitoringError as exc:
            raise AnsibleFilterError(f"{what}:\n- " + "\n- ".join(exc.problems)) from None

    wrapped.__doc__ = build.__doc__
    return wrapped


def prometheus_rules(hosts: list, capacity: list | None = None, options: dict | None = None) -> str:
    """The Prometheus rules file (YAML text): a group per service, then slot and host groups."""
    return _monitoring.render_rules(hosts, capacity, options)


def prometheus_targets(hosts: list) -> dict:
    """``files`` (file_sd JSON-ready target groups per file name) and ``warnings``."""
    return _monitoring.targets(hosts)


def prometheus_config(settings: dict) -> str:
    """prometheus.yml text (or only its scrape_configs)."""
    return _monitoring.scrape_config(settings)


def dcgm_counters(extra_fields: list | None = None) -> str:
    """dcgm-exporter's counters CSV text."""
    return _monitoring.dcgm_counters_csv(extra_fields)


class FilterModule:
    """gpu.mig monitoring filters."""

    def filters(self) -> dict:
        return {
            "prometheus_rules": _refusing("Prometheus rules cannot be generated", prometheus_rules),
            "prometheus_targets": _refusing("Prometheus targets cannot be generated", prometheus_targets),
            "prometheus_config": _refusing("the Prometheus configuration cannot be generated", prometheus_config),
            "dcgm_counters": _refusing("the dcgm-exporter counters cannot be generated", dcgm_counters),
        }
