# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Replay a plan on planner states: an independent model of what executing a plan does, for the planner's tests."""

from __future__ import annotations

import itertools
import operator
from typing import Iterable, Sequence

from ansible_collections.gpu.mig.plugins.module_utils._mig import layout as L


def _next_id(used: Iterable[int], first: int) -> int:
    taken = set(used)
    return next(i for i in itertools.count(first) if i not in taken)


def _apply_action(gpu: L.GpuState, action: L.Action) -> L.GpuState:
    gis = {g.id: g for g in gpu.gpu_instances}
    if action.op == L.MIG_MODE:
        if gis and not action.enable:
            raise L.LayoutError(["GPU %d: MIG disabled while GPU instances %s exist" % (gpu.index, sorted(gis))])
        return gpu._replace(mig_current=action.enable, mig_pending=action.enable)
    if action.op == L.DESTROY_GI:
        gi = gis.pop(action.gi_id)
        if gi.compute_instances:
            raise L.LayoutError(
                ["GPU %d: GPU instance %d destroyed while it has compute instances" % (gpu.index, gi.id)]
            )
    elif action.op == L.CREATE_GI:
        start, size = action.placement
        if not gpu.mig_current or any(g.start < start + size and start < g.start + g.size for g in gis.values()):
            raise L.LayoutError(
                ["GPU %d: cannot create %s at %d (MIG off or overlap)" % (gpu.index, action.profile, start)]
            )
        new = L.GpuInstanceState(_next_id(gis, 1), action.profile_id, action.profile, start, size)
        gis[new.id] = new
    else:
        gi = (
            gis.get(action.gi_id)
            if action.gi_id is not None
            else next(
                g
                for g in gis.values()
                if (g.start, g.size) == action.placement and g.profile_id == action.gi_profile_id
            )
        )
        cis = {c.id: c for c in gi.compute_instances}
        if action.op == L.DESTROY_CI:
            cis.pop(action.ci_id)
        else:
            new_ci = L.ComputeInstanceState(_next_id(cis, 0), action.profile_id, action.profile)
            cis[new_ci.id] = new_ci
        gis[gi.id] = gi._replace(compute_instances=tuple(sorted(cis.values(), key=operator.attrgetter("id"))))
    return gpu._replace(gpu_instances=tuple(sorted(gis.values(), key=operator.attrgetter("id"))))


def apply_plan_to_state(gpus: Sequence[L.GpuState], plan: L.Plan) -> tuple[L.GpuState, ...]:
    """Predict the GPUs after ``plan`` runs (mode changes take effect, i.e. any reset happened; new CIs have no UUID).

    Raises LayoutError when an action is impossible on the given state (the plan does not belong to it).
    """
    by_index = {g.index: g for g in gpus}
    for action in plan.actions:
        try:
            by_index[action.gpu_index] = _apply_action(by_index[action.gpu_index], action)
        except (KeyError, StopIteration) as exc:
            raise L.LayoutError(["%s on GPU %d: no such GPU or instance" % (action.op, action.gpu_index)]) from exc
    return tuple(by_index[g.index] for g in gpus)
