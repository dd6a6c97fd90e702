# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Filter ``gpu.mig.plan_services``: plan MIG profiles, replicas and per-host layouts from SLAs and measured capacity."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.gpu.mig.plugins.plugin_utils import service_planner as _planner


def plan_services(
    services: list,
    fleet: dict,
    capacity: list | None = None,
    slot_maps: dict | None = None,
    separate_classes: bool = False,
    estimate: bool = True,
) -> dict:
    """The fleet plan (``plugin_utils.service_planner``); every problem of the inputs is raised at once."""
    try:
        return _planner.plan_services(
            services,
            fleet,
            capacity,
            slot_maps,
            {"separate_classes": separate_classes, "estimate": estimate},
        )
    except _planner.PlanError as exc:
        raise AnsibleFilterError("the services cannot be planned:\n- " + "\n- ".join(exc.problems)) from exc


class FilterModule:
    """gpu.mig fleet planner filter."""

    def filters(self) -> dict:
        return {"plan_services": plan_services}
