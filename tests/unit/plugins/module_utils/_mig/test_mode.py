# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""MIG mode planning per generation."""

from __future__ import annotations

import pytest

from ansible_collections.gpu.mig.plugins.module_utils._mig.mode import ModeError, plan_gpu


def gpu(arch="ampere", current=False, pending=None, pids=(), instances=()):
    return {
        "index": 0,
        "uuid": "GPU-0",
        "name": "NVIDIA A100-SXM4-40GB" if arch == "ampere" else "NVIDIA H100 80GB HBM3",
        "architecture": arch,
        "mig": {"supported": True, "current": current, "pending": current if pending is None else pending},
        "processes": [{"pid": p} for p in pids],
        "gpu_instances": [{"id": i} for i in instances],
    }


def test_already_in_mode_is_a_noop():
    step = plan_gpu(gpu(current=True), enabled=True, reset=True)
    assert not step.changed and not step.pending_reset and step.after == step.before


def test_idle_ampere_applies_at_once_without_reset():
    step = plan_gpu(gpu(), enabled=True, reset=False)
    assert step.set_mode and not step.reset and not step.pending_reset
    assert step.after == {"current": True, "pending": True}


def test_busy_ampere_stays_pending_and_names_pids():
    step = plan_gpu(gpu(pids=(42, 7, 42)), enabled=True, reset=False)
    assert step.set_mode and step.pending_reset and step.pids == (7, 42)
    assert step.after == {"current": False, "pending": True}


def test_busy_ampere_with_reset_is_refused_before_any_change():
    with pytest.raises(ModeError, match=r"GPU 0 \(GPU-0\).*processes \[42\]"):
        plan_gpu(gpu(pids=(42,)), enabled=True, reset=True)


def test_pending_ampere_is_reset_once_clients_are_gone():
    step = plan_gpu(gpu(current=False, pending=True), enabled=True, reset=True)
    assert not step.set_mode and step.reset and not step.pending_reset
    no_reset = plan_gpu(gpu(current=False, pending=True), enabled=True, reset=False)
    assert not no_reset.changed and no_reset.pending_reset


def test_cancelling_a_pending_change_needs_no_reset():
    step = plan_gpu(gpu(current=True, pending=False, pids=(9,)), enabled=True, reset=True)
    assert step.set_mode and not step.reset and step.after == {"current": True, "pending": True}


def test_hopper_switches_at_once_and_refuses_when_busy():
    step = plan_gpu(gpu("hopper"), enabled=True, reset=False)
    assert step.set_mode and step.after["current"] and not step.pending_reset
    with pytest.raises(ModeError, match=r"processes \[5\]"):
        plan_gpu(gpu("hopper", pids=(5,)), enabled=True, reset=False)


def test_disabling_with_instances_names_them_and_the_fix():
    with pytest.raises(ModeError, match=r"GPU instances 1, 2 exist.*mig_instances \(state: absent\)"):
        plan_gpu(gpu("hopper", current=True, instances=(1, 2)), enabled=False, reset=False)


def test_pending_message_names_the_processes_holding_the_gpu():
    msg = plan_gpu(gpu(pids=(42,)), enabled=True, reset=False).pending_message()
    assert msg.startswith("GPU 0 (GPU-0): turning MIG on waits for a GPU reset; processes [42] hold the GPU")
    assert "reset: true" in msg


def test_pending_message_without_processes_points_at_a_reset_or_a_vm_restart():
    """An idle GPU still pending: NVML could not reset it (VM pass-through), or its clients have gone since."""
    msg = plan_gpu(gpu(current=False, pending=True), enabled=True, reset=False).pending_message()
    assert msg.startswith("GPU 0 (GPU-0): turning MIG on waits for a GPU reset and no process holds it")
    assert "reset: true" in msg and "restart the VM" in msg and "[]" not in msg


def test_reset_unsupported_message_asks_for_a_vm_restart():
    step = plan_gpu(gpu(current=True, pending=False), enabled=False, reset=True)
    msg = step.reset_unsupported_message("nvidia-smi: Resetting GPU 00000000:07:00.0 is not supported.")
    assert msg.startswith("GPU 0 (GPU-0): turning MIG off waits for a GPU reset, and this GPU cannot be reset here")
    assert "is not supported" in msg and "restart the VM" in msg and "mig_mode_allow_reboot: true" in msg
