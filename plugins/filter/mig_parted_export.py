# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Filters ``gpu.mig.mig_parted_export``, ``gpu.mig.mig_parted_configmap`` and ``gpu.mig.mig_parted_node_labels``.

A fleet's MIG layouts as one mig-parted v1 config, and the GPU Operator's ConfigMap and node labels that apply it
(``plugins/plugin_utils/mig_parted_export.py``). playbooks/export_mig_parted.yml and k8s_mig_config.yml use them.
"""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.gpu.mig.plugins.plugin_utils import mig_parted_export as _export


def _failing(problems: list[str]) -> AnsibleFilterError:
    return AnsibleFilterError("\n- ".join(["%d problems:" % len(problems), *problems]))


def mig_parted_export(facts, layouts=None, names=None) -> dict:
    """``{host: nvidia_mig facts}`` -> ``{config, text, hosts, warnings}``: one mig-parted config for the fleet."""
    try:
        return _export.export_fleet(facts, layouts, names)
    except _export.ExportError as err:
        raise _failing(err.problems) from err


def mig_parted_configmap(config, name=_export.CONFIGMAP_NAME, namespace=_export.CONFIGMAP_NAMESPACE) -> dict:
    """A mig-parted config (parsed or YAML text) -> the ConfigMap manifest the GPU Operator's mig-manager reads."""
    try:
        return _export.configmap(config, name, namespace)
    except _export.ExportError as err:
        raise _failing(err.problems) from err


def mig_parted_node_labels(hosts, nodes=None, config=None) -> list:
    """``{host: config name}`` -> Node patches setting ``nvidia.com/mig.config``, one per node."""
    try:
        return _export.node_labels(hosts, nodes, config)
    except _export.ExportError as err:
        raise _failing(err.problems) from err


class FilterModule:
    """gpu.mig mig-parted export filters."""

    def filters(self) -> dict:
        return {
            "mig_parted_export": mig_parted_export,
            "mig_parted_configmap": mig_parted_configmap,
            "mig_parted_node_labels": mig_parted_node_labels,
        }
