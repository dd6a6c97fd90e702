# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""mig_facts: one namespaced facts key, selectors, require_mig, clear failures."""

from __future__ import annotations

import pynvml

from ansible_collections.gpu.mig.plugins.modules import mig_facts


def test_reports_every_gpu_under_one_key(sim_host, run_module):
    sim_host("A100-SXM4-40GB:mig=on", "H100-80GB", "L4", instances=["0:3g.20gb"], init=False)
    result, failed = run_module(mig_facts, {})
    assert not failed and result["changed"] is False
    assert list(result["ansible_facts"]) == ["nvidia_mig"]
    facts = result["ansible_facts"]["nvidia_mig"]
    assert [g["name"] for g in facts["gpus"]] == ["NVIDIA A100-SXM4-40GB", "NVIDIA H100 80GB HBM3", "NVIDIA L4"]
    assert facts["summary"]["gpu_instances"] == 1 and facts["summary"]["mig_capable"] == 2


def test_check_mode_returns_the_same_facts(sim_host, run_module):
    host = sim_host("A100-SXM4-40GB:mig=on", instances=["0:1g.5gb"], init=False)
    normal, _unused = run_module(mig_facts, {})
    checked, _unused = run_module(mig_facts, {}, check_mode=True)
    assert checked["ansible_facts"] == normal["ansible_facts"]
    assert host.state().live(0)["gpu_instances"]  # nothing was removed


def test_selectors_filter_and_summary_follows(sim_host, run_module):
    sim_host("A100-SXM4-40GB", "H100-80GB", "H100-80GB", init=False)
    result, failed = run_module(mig_facts, {"gpus": ["arch:hopper"]})
    assert not failed
    facts = result["ansible_facts"]["nvidia_mig"]
    assert [g["index"] for g in facts["gpus"]] == [1, 2] and facts["summary"]["gpu_count"] == 2


def test_unknown_selector_fails_with_the_fix(sim_host, run_module):
    sim_host("A100-SXM4-40GB", init=False)
    result, failed = run_module(mig_facts, {"gpus": ["GPU-does-not-exist"]})
    assert failed and "'GPU-does-not-exist' match no GPU" in result["msg"] and "use an index" in result["msg"]


def test_no_driver_is_reported_not_failed(sim_host, run_module):
    sim_host("A100-SXM4-40GB", driver_state="no_library", init=False)
    result, failed = run_module(mig_facts, {})
    assert not failed
    assert result["ansible_facts"]["nvidia_mig"]["driver"]["loaded"] is False


def test_require_mig_fails_without_driver_or_mig_gpu(sim_host, run_module):
    sim_host("L4", init=False)
    result, failed = run_module(mig_facts, {"require_mig": True})
    assert failed and "no selected GPU supports MIG" in result["msg"] and "GPU 0 (NVIDIA L4)" in result["msg"]
    sim_host("A100-SXM4-40GB", driver_state="not_loaded", init=False)
    result, failed = run_module(mig_facts, {"require_mig": True})
    assert failed and "driver is not loaded" in result["msg"]


def test_gpu_lost_mid_call_is_a_message_not_a_traceback(sim_host, run_module):
    host = sim_host("A100-SXM4-40GB:mig=on", init=False)
    host.fault("nvmlDeviceGetGpuInstanceRemainingCapacity", pynvml.NVML_ERROR_GPU_IS_LOST)
    result, failed = run_module(mig_facts, {})
    assert failed and "GPU lost" in result["msg"] and "exception" not in result
