# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The NVML adapter against the simulated NVML: facts, changes and error messages."""

from __future__ import annotations

import pynvml
import pytest

from ansible_collections.gpu.mig.plugins.module_utils._mig import apply as _apply
from ansible_collections.gpu.mig.plugins.module_utils._mig import catalog as _catalog
from ansible_collections.gpu.mig.plugins.module_utils._mig import nvml as _nvml


def facts(gpu: int = 0) -> dict:
    with _nvml.Nvml() as nvml:
        return nvml.gpu(gpu)


def free_counts(gpu: dict) -> dict:
    return {p["name"]: p["free"] for p in gpu["profiles"]}


def test_free_counts_after_4g_match_a_real_a100(sim_host):
    sim_host("A100-SXM4-40GB:mig=on", instances=["0:4g.20gb@0"])
    counts = free_counts(facts())
    assert {k: counts[k] for k in ("1g.5gb", "1g.10gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb")} == {
        "1g.5gb": 3,
        "1g.10gb": 2,
        "2g.10gb": 1,
        "3g.20gb": 1,
        "4g.20gb": 0,
        "7g.40gb": 0,
    }


def test_gpu_facts_identity_instances_and_mig_uuids(sim_host):
    sim_host("A100-SXM4-40GB:mig=on", instances=["0:3g.20gb@4", "0:1g.5gb@0"])
    gpu = facts()
    assert gpu["name"] == "NVIDIA A100-SXM4-40GB"
    assert gpu["architecture"] == "ampere" and gpu["compute_capability"] == "8.0"
    assert gpu["uuid"].startswith("GPU-") and gpu["pci_bus_id"].startswith("00000000:")
    assert gpu["mig"] == {"supported": True, "current": True, "pending": True}
    assert [(gi["profile"], gi["placement"]) for gi in gpu["gpu_instances"]] == [
        ("1g.5gb", {"start": 0, "size": 1}),
        ("3g.20gb", {"start": 4, "size": 4}),
    ]
    cis = [ci for gi in gpu["gpu_instances"] for ci in gi["compute_instances"]]
    assert [ci["profile"] for ci in cis] == ["1g.5gb", "3g.20gb"]
    assert all(ci["uuid"].startswith("MIG-") for ci in cis) and len({ci["uuid"] for ci in cis}) == 2
    assert cis[1]["memory_mib"] == gpu["gpu_instances"][1]["memory_mib"] > cis[0]["memory_mib"]


def test_processes_carry_their_instance(sim_host):
    host = sim_host("A100-SXM4-40GB:mig=on", instances=["0:3g.20gb@0"])
    gi_id = host.state().live(0)["gpu_instances"][0]["id"]
    pid = host.add_process(f"0:{gi_id}:0:1024")
    gpu = facts()
    assert gpu["processes"] == [
        {"pid": pid, "used_memory_mib": 1024, "gpu_instance_id": gi_id, "compute_instance_id": 0}
    ]
    assert gpu["gpu_instances"][0]["processes"] == gpu["processes"]


def test_live_catalog_agrees_with_the_shipped_one(sim_host):
    sim_host("A100-SXM4-40GB:mig=on")
    gpu = facts()
    live = _apply.live_model(gpu, _catalog.find_model(gpu["name"]))
    shipped = _catalog.find_model("NVIDIA A100-SXM4-40GB")
    assert (live.memory_slices, live.compute_slices, live.max_gpu_instances) == (8, 7, 7)
    assert live.mig_enable_requires_reset
    for prof in shipped.profiles:
        got = live.profile(prof.id)
        assert (got.name, got.placement_starts, got.placement_size, got.max_instances) == (
            prof.name,
            prof.placement_starts,
            prof.placement_size,
            prof.max_instances,
        )


def test_non_mig_gpu_reports_unsupported(sim_host):
    sim_host("L4")
    gpu = facts()
    assert gpu["mig"] == {"supported": False, "current": None, "pending": None}
    assert gpu["profiles"] == [] and gpu["gpu_instances"] == []


@pytest.mark.parametrize(
    ("driver_state", "expected"),
    [("no_library", "install the NVIDIA driver"), ("not_loaded", "modprobe nvidia")],
)
def test_missing_driver_is_a_fact_not_a_failure(sim_host, driver_state, expected):
    sim_host("A100-SXM4-40GB", driver_state=driver_state, init=False)
    result = _nvml.gather()
    assert result["driver"]["loaded"] is False and expected in result["driver"]["error"]
    assert result["gpus"] == [] and result["summary"]["gpu_count"] == 0


def test_gathered_versions_and_summary(sim_host):
    sim_host("H100-80GB", "A100-SXM4-40GB:mig=on", "L4", driver="550.90.07", init=False)
    result = _nvml.gather()
    assert result["driver"]["driver_version"] == "550.90.07"
    assert result["driver"]["cuda_driver_version"] == "12.4"
    assert result["driver"]["nvml_version"].endswith("550.90.07")
    assert result["summary"]["gpu_count"] == 3
    assert result["summary"]["mig_capable"] == 2 and result["summary"]["mig_enabled"] == 1


def test_lost_gpu_names_the_gpu_and_the_remedy(sim_host):
    host = sim_host("H100-80GB")
    host.fault("nvmlDeviceGetMemoryInfo", pynvml.NVML_ERROR_GPU_IS_LOST)
    with pytest.raises(_nvml.NvmlError) as err:
        facts()
    uuid = host.state().gpus[0]["uuid"]
    assert f"GPU 0 ({uuid})" in err.value.msg and "GPU lost" in err.value.msg and "reboot" in err.value.msg


def test_create_and_destroy_round_trip(sim_host):
    sim_host("H100-80GB:mig=on")
    with _nvml.Nvml() as nvml:
        prof = next(p for p in nvml.profiles(0) if p["name"] == "3g.40gb")
        gi_id = nvml.create_gpu_instance(0, prof["id"], 4, 4)
        ci_id = nvml.create_compute_instance(0, gi_id, pynvml.NVML_COMPUTE_INSTANCE_PROFILE_3_SLICE)
        created = nvml.gpu(0)["gpu_instances"]
        nvml.destroy_compute_instance(0, gi_id, ci_id)
        nvml.destroy_gpu_instance(0, gi_id)
        assert nvml.gpu(0)["gpu_instances"] == []
    assert [(gi["id"], gi["placement"]["start"], gi["compute_instances"][0]["id"]) for gi in created] == [
        (gi_id, 4, ci_id)
    ]


def test_busy_instance_refuses_destroy_with_a_clear_message(sim_host):
    host = sim_host("A100-SXM4-40GB:mig=on", instances=["0:7g.40gb"])
    gi_id = host.state().live(0)["gpu_instances"][0]["id"]
    host.add_process(f"0:{gi_id}:0:100")
    with _nvml.Nvml() as nvml, pytest.raises(_nvml.NvmlError) as err:
        nvml.destroy_compute_instance(0, gi_id, 0)
    assert err.value.code == pynvml.NVML_ERROR_IN_USE
    assert f"destroying compute instance 0 of GPU instance {gi_id} failed" in err.value.msg
    assert "stop the processes" in err.value.msg


def test_no_permission_says_become(sim_host):
    sim_host("H100-80GB", unprivileged=True)
    with (
        _nvml.Nvml() as nvml,
        pytest.raises(_nvml.NvmlError, match=r"enabling MIG failed: no permission.*become: true"),
    ):
        nvml.set_mig_mode(0, True)


def test_hopper_mode_switches_at_once(sim_host):
    sim_host("H100-80GB")
    with _nvml.Nvml() as nvml:
        nvml.set_mig_mode(0, True)
        assert nvml.mig_mode(0) == {"supported": True, "current": True, "pending": True}


def test_one_session_reads_each_models_profile_table_once_with_per_gpu_free_counts(sim_host, monkeypatch):
    sim_host(
        "H100-80GB:mig=on",
        "H100-80GB:mig=on",
        "H100-80GB",
        "A100-SXM4-40GB:mig=on",
        instances=["0:3g.40gb@4", "1:1g.10gb@0", "1:1g.10gb@1", "3:7g.40gb"],
        init=False,
    )
    separate = []
    for index in range(4):
        with _nvml.Nvml() as nvml:
            separate.append(nvml.gpu(index))
    reads, ci_reads = [], []
    profile_info = pynvml.nvmlDeviceGetGpuInstanceProfileInfo
    ci_profile_info = pynvml.nvmlGpuInstanceGetComputeInstanceProfileInfo
    monkeypatch.setattr(
        pynvml,
        "nvmlDeviceGetGpuInstanceProfileInfo",
        lambda handle, index: reads.append(index) or profile_info(handle, index),
    )
    monkeypatch.setattr(
        pynvml,
        "nvmlGpuInstanceGetComputeInstanceProfileInfo",
        lambda gi, index, engines: ci_reads.append(index) or ci_profile_info(gi, index, engines),
    )
    together = _nvml.gather()["gpus"]
    assert together == separate
    # one table per (model, MIG mode): H100 on, H100 off, A100 on
    assert len(reads) == 3 * pynvml.NVML_GPU_INSTANCE_PROFILE_COUNT
    # compute-instance profiles up to the GI's size, once per (model, GI profile): H100 3g.40gb (0, 1, 2, 7),
    # H100 1g.10gb (0, 7; both instances on GPU 1 share it), A100 7g.40gb (all but the 8-slice index 5)
    assert sorted(ci_reads) == sorted([0, 1, 2, 7, 0, 7, 0, 1, 2, 3, 4, 6, 7, 8])
    assert free_counts(together[0])["1g.10gb"] == 4 and free_counts(together[1])["1g.10gb"] == 5
    assert [len(g["gpu_instances"]) for g in together] == [1, 2, 0, 1]


@pytest.mark.parametrize(
    "code", [*sorted(getattr(pynvml, name) for name in dir(pynvml) if name.startswith("NVML_ERROR_")), 12345]
)
def test_every_nvml_code_gets_the_gpu_what_failed_and_a_remedy(code):
    msg = _nvml.describe(pynvml.NVMLError(code), "GPU 3 (GPU-x)", "reading PCI info").msg
    where_and_problem, remedy = msg.split("); ", 1)
    assert where_and_problem.startswith("GPU 3 (GPU-x): reading PCI info failed: ") and len(remedy) > 20
    assert not where_and_problem.endswith("failed: Unknown Error (NVML: Unknown Error")


def test_unknown_and_unmapped_codes_point_at_the_driver_logs():
    unknown = _nvml.describe(pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN), "GPU 0").msg
    assert unknown.startswith("GPU 0: NVML reported an unknown error (NVML: Unknown Error); check dmesg")
    unmapped = _nvml.describe(pynvml.NVMLError(pynvml.NVML_ERROR_NO_DATA), "GPU 0").msg
    assert unmapped.startswith("GPU 0: NVML error 21 (NVML: ") and "; check dmesg and journalctl -k" in unmapped


def test_gpu_or_failure_of_a_healthy_gpu_is_its_facts(sim_host):
    sim_host("A100-SXM4-40GB:mig=on", instances=["0:3g.20gb@4"])
    with _nvml.Nvml() as nvml:
        assert nvml.gpu_or_failure(0) == nvml.gpu(0)
        assert "error" not in nvml.gpu_or_failure(0)


def test_gather_reports_a_lost_gpu_beside_the_healthy_ones(sim_host):
    host = sim_host("H100-80GB:mig=on", "H100-80GB", "L4", init=False)
    with host.edit() as state:
        state.live(1)["lost"] = True
    result = _nvml.gather()
    assert [g.get("error", "").split(":")[0] for g in result["gpus"]] == ["", "GPU 1", ""]
    assert result["gpus"][1]["uuid"] is None and result["gpus"][2]["name"] == "NVIDIA L4"
    assert result["summary"]["failed_gpus"] == 1 and result["summary"]["mig_capable"] == 1


def test_a_driver_that_cannot_tell_the_architecture_is_not_an_error(sim_host):
    host = sim_host("A100-SXM4-40GB")
    host.fault("nvmlDeviceGetArchitecture", pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
    with _nvml.Nvml() as nvml:
        gpu = nvml.gpu_or_failure(0)
    assert gpu["architecture"] == "unknown" and "error" not in gpu
