# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""MIG mode planning per GPU generation (PRIVATE to the collection). Pure: no I/O.

Ampere: a mode change needs a GPU reset. NVML resets an idle GPU itself; while clients hold it the
change stays pending until a reset or reboot, and the mode persists in the GPU over reboot.
Hopper and later: the mode switches at once (refused while clients hold the GPU) and is lost on reboot.
"""

from __future__ import annotations

from typing import NamedTuple

RESET_ARCHITECTURES = frozenset({"ampere"})


class ModeError(ValueError):
    """A mode change that must not be attempted, with the reason and the fix."""


class ModeStep(NamedTuple):
    """What happens to one GPU: the NVML call (if any), the reset (if any) and the predicted state."""

    index: int
    uuid: str
    name: str
    before: dict  # {"current": bool, "pending": bool}
    after: dict
    set_mode: bool  # call nvmlDeviceSetMigMode
    reset: bool  # reset the GPU (Ampere, reset requested)
    pending_reset: bool  # the change waits for a reset or reboot after this run
    pids: tuple[int, ...]

    @property
    def changed(self) -> bool:
        return self.set_mode or self.reset

    def _waits(self) -> str:
        return f"GPU {self.index} ({self.uuid}): turning MIG {_on_off(self.after['pending'])} waits for a GPU reset"

    def pending_message(self) -> str:
        """Why this change waits for a reset, and the fix: the processes holding the GPU, or, with none, a reset
        (which a GPU passed through to a VM cannot have: there only a restart of the VM applies the mode)."""
        if self.pids:
            return (
                f"{self._waits()}; processes {list(self.pids)} hold the GPU: stop them (or the services that own them),"
                " then run gpu.mig.mig_mode with reset: true, or reboot"
            )
        return (
            f"{self._waits()} and no process holds it: run gpu.mig.mig_mode with reset: true (the mig_mode role does),"
            " or, if the GPU is passed through to a VM (no GPU reset there), restart the VM"
        )

    def reset_unsupported_message(self, detail: str) -> str:
        """The fix when the GPU cannot be reset at all, as in a VM with GPU pass-through: restart the VM."""
        return (
            f"{self._waits()}, and this GPU cannot be reset here ({detail}). A GPU passed through to a VM takes the new"
            " MIG mode only when the VM restarts: restart the VM (on bare metal, reboot the host), or set"
            " mig_mode_allow_reboot: true for the mig_mode role to reboot it once"
        )

    def to_dict(self) -> dict:
        return {
            "index": self.index,
            "uuid": self.uuid,
            "name": self.name,
            "before": self.before,
            "after": self.after,
            "set_mode": self.set_mode,
            "reset": self.reset,
            "pending_reset": self.pending_reset,
            "pids": list(self.pids),
            "changed": self.changed,
        }


def _label(gpu: dict) -> str:
    return f"GPU {gpu['index']} ({gpu['uuid']})"


def _on_off(enabled: bool) -> str:
    return "on" if enabled else "off"


def plan_gpu(gpu: dict, enabled: bool, reset: bool) -> ModeStep:
    """Plan one MIG-capable GPU; raises ModeError for changes NVML would refuse."""
    mig = gpu["mig"]
    before = {"current": mig["current"], "pending": mig["pending"]}
    pids = tuple(sorted({p["pid"] for p in gpu["processes"]}))
    needs_reset = gpu["architecture"] in RESET_ARCHITECTURES
    set_mode = mig["pending"] != enabled
    if mig["current"] == enabled and not set_mode:
        return ModeStep(gpu["index"], gpu["uuid"], gpu["name"], before, dict(before), False, False, False, pids)
    if not enabled and gpu["gpu_instances"]:
        ids = ", ".join(str(gi["id"]) for gi in gpu["gpu_instances"])
        raise ModeError(
            f"{_label(gpu)}: cannot disable MIG while GPU instances {ids} exist; "
            "remove them first with gpu.mig.mig_instances (state: absent)"
        )
    if not needs_reset:
        if pids and set_mode:
            raise ModeError(
                f"{_label(gpu)}: cannot switch MIG {_on_off(enabled)} while processes {list(pids)} use the GPU; "
                "stop them (or the services that own them) and retry"
            )
        after = {"current": enabled, "pending": enabled}
        return ModeStep(gpu["index"], gpu["uuid"], gpu["name"], before, after, set_mode, False, False, pids)
    # Ampere: NVML resets an idle GPU itself when the mode is set; otherwise the change waits for a reset.
    if pids and reset and mig["current"] != enabled:
        raise ModeError(
            f"{_label(gpu)}: MIG mode change needs a GPU reset, but processes {list(pids)} hold the GPU; "
            "stop them (list their systemd units in the mig_mode role's clients) and retry, or reboot"
        )
    applied_by_nvml = set_mode and not pids
    do_reset = reset and mig["current"] != enabled and not applied_by_nvml
    current = enabled if (mig["current"] == enabled or applied_by_nvml or do_reset) else mig["current"]
    after = {"current": current, "pending": enabled}
    return ModeStep(gpu["index"], gpu["uuid"], gpu["name"], before, after, set_mode, do_reset, current != enabled, pids)
