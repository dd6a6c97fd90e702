# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""No traceback, ever: an exception no handler expects ends as a failed module result that calls it a bug, says where
to report it, and keeps the traceback for -vvv (the ``exception`` key), not in the message."""

from __future__ import annotations

import pytest
from ansible.module_utils._internal import _traceback

from ansible_collections.gpu.mig.plugins.module_utils._mig import apply as _apply
from ansible_collections.gpu.mig.plugins.module_utils._mig import nvml as _nvml
from ansible_collections.gpu.mig.plugins.modules import mig_facts, mig_instances, mig_mode

LAYOUT = {"layout": [{"gpus": 0, "slots": [{"name": "a", "profile": "1g.5gb"}]}]}


def broken(*_args, **_kwargs):
    raise KeyError("profiles")


@pytest.mark.parametrize(
    ("module", "owner", "name", "args"),
    [
        (mig_facts, _nvml, "gather", {}),
        (mig_mode, mig_mode, "plan_gpu", {"state": "disabled"}),
        (mig_instances, _apply, "read_host", LAYOUT),
    ],
    ids=["mig_facts", "mig_mode", "mig_instances"],
)
def test_an_unexpected_exception_is_a_failed_result_calling_it_a_bug(
    sim_host, run_module, monkeypatch, module, owner, name, args
):
    sim_host("A100-SXM4-40GB:mig=on", init=False)
    monkeypatch.setattr(owner, name, broken)
    monkeypatch.setattr(_traceback, "_is_traceback_enabled", lambda _event: True)  # the controller asked (-vvv)
    for check_mode in (True, False):
        result, failed = run_module(module, args, check_mode=check_mode)
        assert failed
        task = "gpu.mig." + module.__name__.rsplit(".", 1)[1]
        assert f"{task} failed unexpectedly (KeyError: 'profiles')" in result["msg"]
        assert "bug in gpu.mig" in result["msg"] and "https://github.com/gpu-mig/gpu.mig/issues" in result["msg"]
        assert "Traceback" not in result["msg"] and "Traceback" in result["exception"]
