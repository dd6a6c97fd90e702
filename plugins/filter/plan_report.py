# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Filters ``gpu.mig.plan_report`` and ``gpu.mig.plan_capacity_tests``: thin wrappers over plugin_utils/plan_report.py
(the Markdown report of a gpu.mig.plan_services result, and the capacity tests that check the plan)."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.gpu.mig.plugins.plugin_utils import plan_report as _report


def _refused(exc: _report.PlanReportError) -> AnsibleFilterError:
    return AnsibleFilterError("the plan cannot be reported (give the result of gpu.mig.plan_services):\n- "
                              + "\n- ".join(exc.problems))  # fmt: skip


def plan_report(plan: dict, images: bool = False, name: str = "plan") -> str:
    """The plan as Markdown; ``images`` links ``<name>-gpus.png`` and ``<name>-services.png`` (the report CLI's)."""
    try:
        return _report.render_markdown(plan, _report.image_names(name) if images else None)
    except _report.PlanReportError as exc:
        raise _refused(exc) from None


def plan_capacity_tests(plan: dict) -> list:
    """The capacity role's ``capacity_tests`` that check the plan: "measure first", then every estimate."""
    try:
        return _report.capacity_tests(plan)
    except _report.PlanReportError as exc:
        raise _refused(exc) from None


class FilterModule:
    """gpu.mig plan report filters."""

    def filters(self) -> dict:
        return {"plan_report": plan_report, "plan_capacity_tests": plan_capacity_tests}
