# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Explain an infeasible MIG layout and propose the nearest feasible one (PRIVATE to the collection).

Split from ``_layout``, which imports it only when a layout does not fit: every module run compiles the sources it
imports, and converged runs never need this. Pure: no I/O.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from ansible_collections.gpu.mig.plugins.module_utils._mig import layout as _layout

if TYPE_CHECKING:
    from ansible_collections.gpu.mig.plugins.module_utils._mig.catalog import GpuInstanceProfile, GpuModel
    from ansible_collections.gpu.mig.plugins.module_utils._mig.layout import _SlotWant, _Target


def _smaller(model: GpuModel, profile: GpuInstanceProfile) -> GpuInstanceProfile | None:
    suffix = profile.name.partition("+")[2]
    size = (profile.compute_slices, profile.memory_slices)
    smaller = [
        p
        for p in model.profiles
        if p.name.partition("+")[2] == suffix and (p.compute_slices, p.memory_slices) < size and p.max_instances > 0
    ]
    return max(smaller, key=lambda p: (p.compute_slices, p.memory_slices, -p.id), default=None)


def _edits(model: GpuModel, slots: Sequence[_SlotWant]) -> list[tuple[str, list[_SlotWant]]]:
    """Single-slot edits, best first: shrink a slot (losing the fewest slices), then drop the smallest slot."""
    shrinks = []
    for i, slot in enumerate(slots):
        smaller = _smaller(model, slot.profile)
        if smaller is not None:
            loss = (
                slot.profile.compute_slices - smaller.compute_slices,
                slot.profile.memory_slices - smaller.memory_slices,
            )
            edit = "shrink '%s' %s -> %s" % (slot.name, slot.profile.name, smaller.name)
            shrinks.append(
                (loss, i, edit, [*slots[:i], slot._replace(profile=smaller, placement=None), *slots[i + 1 :]])
            )
    drops = sorted(
        (
            (s.profile.compute_slices, s.profile.memory_slices),
            i,
            "drop '%s' (%s)" % (s.name, s.profile.name),
            [*slots[:i], *slots[i + 1 :]],
        )
        for i, s in enumerate(slots)
    )
    return [(edit, new) for _unused, _unused2, edit, new in sorted(shrinks, key=lambda t: t[:2])] + [
        (e, n) for _unused3, _unused4, e, n in drops
    ]


def _propose(model: GpuModel, slots: Sequence[_SlotWant]) -> tuple[list[str], list[_SlotWant]]:
    """Nearest feasible layout by greedy single-slot edits (a feasible one-edit fix if any, else drop the largest)."""
    edits: list[str] = []
    current = list(slots)
    while current and not _layout.feasible(model, current):
        options = _edits(model, current)
        fixed = next(((e, n) for e, n in options if _layout.feasible(model, n)), None)
        if fixed is None:  # no single edit fits: drop the largest slot and look again
            fixed = options[-1]
        edits.append(fixed[0])
        current = fixed[1]
    return edits, current


def _describe(slots: Sequence[_SlotWant]) -> str:
    return ", ".join(
        "%s: %s%s" % (s.name, s.profile.name, "" if s.placement is None else "@%d" % s.placement) for s in slots
    )


def infeasible_message(target: _Target) -> str:
    """Why the target's slots do not fit, and the nearest feasible layout (shrink or drop slots)."""
    model, slots = target.model, target.slots
    reason = _layout.capacity_problem(model, [s.profile for s in slots])
    if reason is None:
        pins = " with the pinned placements" if any(s.placement is not None for s in slots) else ""
        reason = "no placement of %s fits%s" % ("+".join(s.profile.name for s in slots), pins)
    edits, proposal = _propose(model, slots)
    return "%s on %s: infeasible layout (%s); nearest feasible layout: %s -> [%s]" % (
        target.entry.label,
        target.gpu.label,
        reason,
        "; ".join(edits),
        _describe(proposal) or "no slots",
    )
