# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Filter ``gpu.mig.grafana_dashboard``: the Grafana dashboard of the monitored hosts' inference services."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.gpu.mig.plugins.plugin_utils import dashboard as _dashboard


def grafana_dashboard(
    hosts: list,
    dcgm: bool = False,
    title: str = _dashboard.TITLE,
    uid: str = _dashboard.UID,
) -> dict:
    """The dashboard model (write it with ``to_nice_json``); every problem of the inputs raised at once."""
    try:
        return _dashboard.generate(hosts, dcgm, title, uid)
    except _dashboard.DashboardError as exc:
        raise AnsibleFilterError("the Grafana dashboard cannot be generated:\n- " + "\n- ".join(exc.problems)) from None


class FilterModule:
    """gpu.mig dashboard filters."""

    def filters(self) -> dict:
        return {"grafana_dashboard": grafana_dashboard}
