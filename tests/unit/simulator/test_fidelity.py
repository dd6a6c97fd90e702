"""The simulator behaves like the driver (placements, capacity, modes, reboot, errors, faults)."""

from __future__ import annotations

import ctypes
import os
import signal
import time

import pynvml as n
import pytest

from nvmlsim import hosts, procs

A100_FREE_AFTER_4G = {"1g.5gb": 3, "1g.5gb+me": 1, "1g.10gb": 2, "2g.10gb": 1, "3g.20gb": 1, "4g.20gb": 0, "7g.40gb": 0}


def _profiles(dev):
    found = {}
    for index in range(n.NVML_GPU_INSTANCE_PROFILE_COUNT):
        try:
            info = n.nvmlDeviceGetGpuInstanceProfileInfo(dev, index)
        except (n.NVMLError_NotSupported, n.NVMLError_InvalidArgument):
            continue
        found[info.name.removeprefix("MIG ")] = info.id
    return found


def _free(dev):
    return {name: n.nvmlDeviceGetGpuInstanceRemainingCapacity(dev, pid) for name, pid in _profiles(dev).items()}


def _create(dev, profile_id, start, size):
    return n.nvmlDeviceCreateGpuInstanceWithPlacement(dev, profile_id, n.c_nvmlGpuInstancePlacement_t(start, size))


def _placement(gi):
    info = n.nvmlGpuInstanceGetInfo(gi)
    return info.id, info.placement.start, info.placement.size


def _wait_until_listed(dev, pids, timeout=10.0):
    """Poll NVML (as a caller that killed processes would) until it lists exactly ``pids``."""
    deadline = time.monotonic() + timeout
    while (listed := sorted(p.pid for p in n.nvmlDeviceGetComputeRunningProcesses(dev))) != pids:
        assert time.monotonic() < deadline, f"NVML still lists {listed}"
        time.sleep(0.01)


def test_remaining_capacity_matches_real_a100(sim_host):
    sim_host("A100-SXM4-40GB:mig=on")
    dev = n.nvmlDeviceGetHandleByIndex(0)
    _create(dev, 5, 0, 4)  # 4g.20gb at 0:4
    assert _free(dev) == A100_FREE_AFTER_4G
    _create(dev, 14, 4, 2)  # 2g.10gb at 4:2
    assert _free(dev) == {
        "1g.5gb": 1,
        "1g.5gb+me": 1,
        "1g.10gb": 1,
        "2g.10gb": 0,
        "3g.20gb": 0,
        "4g.20gb": 0,
        "7g.40gb": 0,
    }
    _create(dev, 19, 6, 1)
    assert set(_free(dev).values()) == {0}


def test_profile_enumeration_codes(sim_host):
    sim_host("A100-SXM4-40GB")
    dev = n.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(n.NVMLError_InvalidArgument):
        n.nvmlDeviceGetGpuInstanceProfileInfo(dev, n.NVML_GPU_INSTANCE_PROFILE_COUNT)
    with pytest.raises(n.NVMLError_NotSupported):
        n.nvmlDeviceGetGpuInstanceProfileInfo(dev, n.NVML_GPU_INSTANCE_PROFILE_8_SLICE)
    info = n.nvmlDeviceGetGpuInstanceProfileInfo(dev, n.NVML_GPU_INSTANCE_PROFILE_3_SLICE)
    assert (info.id, info.sliceCount, info.instanceCount, info.name) == (9, 3, 2, "MIG 3g.20gb")


def test_possible_placements_c_contract(sim_host):
    sim_host("A100-SXM4-40GB")
    dev = n.nvmlDeviceGetHandleByIndex(0)
    count = ctypes.c_uint(0)
    n.nvmlDeviceGetGpuInstancePossiblePlacements(dev, 15, None, ctypes.byref(count))
    assert count.value == 4
    array = (n.c_nvmlGpuInstancePlacement_t * count.value)()
    n.nvmlDeviceGetGpuInstancePossiblePlacements(dev, 15, array, ctypes.byref(count))
    assert [(p.start, p.size) for p in array] == [(0, 2), (2, 2), (4, 2), (6, 2)]
    with pytest.raises(n.NVMLError_InsufficientSize):
        n.nvmlDeviceGetGpuInstancePossiblePlacements(dev, 15, (n.c_nvmlGpuInstancePlacement_t * 2)(), count)


def test_overlap_and_max_instances_are_insufficient_resources(sim_host):
    sim_host("A100-SXM4-40GB:mig=on")
    dev = n.nvmlDeviceGetHandleByIndex(0)
    _create(dev, 9, 4, 4)
    with pytest.raises(n.NVMLError_InsufficientResources):
        _create(dev, 14, 4, 2)
    _create(dev, 20, 0, 1)  # 1g.5gb+me: max one per GPU
    with pytest.raises(n.NVMLError_InsufficientResources):
        _create(dev, 20, 1, 1)
    with pytest.raises(n.NVMLError_InvalidArgument):
        _create(dev, 19, 7, 1)  # not a legal start


def test_default_placements_match_documented_driver_choices(sim_host):
    sim_host("A100-SXM4-40GB:mig=on")
    dev = n.nvmlDeviceGetHandleByIndex(0)
    # MIG user guide: -cgi 9,19,14,19 -> 3g@4 (GI 2), 1g@0 (GI 7), 2g@2 (GI 4), 1g@1 (GI 8)
    made = [_placement(n.nvmlDeviceCreateGpuInstance(dev, p)) for p in (9, 19, 14, 19)]
    assert made == [(2, 4, 4), (7, 0, 1), (4, 2, 2), (8, 1, 1)]


def test_documented_order_failure_19_19_14_9(sim_host):
    sim_host("A100-SXM4-40GB:mig=on")
    dev = n.nvmlDeviceGetHandleByIndex(0)
    for profile_id in (19, 19, 14):
        n.nvmlDeviceCreateGpuInstance(dev, profile_id)
    with pytest.raises(n.NVMLError_InsufficientResources):
        n.nvmlDeviceCreateGpuInstance(dev, 9)


def test_h100_1g_fill_order_and_ids(sim_host):
    sim_host("H100-80GB:mig=on")
    dev = n.nvmlDeviceGetHandleByIndex(0)
    made = [_placement(n.nvmlDeviceCreateGpuInstance(dev, 19)) for _count in range(7)]
    assert [gi_id for gi_id, _s, _z in made] == [13, 11, 12, 7, 8, 9, 10]
    assert [start for _i, start, _z in made] == [6, 4, 5, 0, 1, 2, 3]


def test_compute_instances_split_and_capacity(sim_host):
    sim_host("A100-SXM4-40GB:mig=on")
    dev = n.nvmlDeviceGetHandleByIndex(0)
    gi = _create(dev, 9, 0, 4)
    shared = n.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED
    one = n.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, n.NVML_COMPUTE_INSTANCE_PROFILE_1_SLICE, shared)
    assert (one.sliceCount, one.instanceCount, one.name) == (1, 3, "MIG 1c.3g.20gb")
    assert n.nvmlGpuInstanceGetComputeInstanceRemainingCapacity(gi, one.id) == 3
    cis = [n.nvmlGpuInstanceCreateComputeInstance(gi, one.id) for _count in range(3)]
    assert [(i.id, i.placement.start) for i in map(n.nvmlComputeInstanceGetInfo, cis)] == [(0, 0), (1, 1), (2, 2)]
    with pytest.raises(n.NVMLError_InsufficientResources):
        n.nvmlGpuInstanceCreateComputeInstance(gi, one.id)
    assert n.nvmlGpuInstanceGetComputeInstanceRemainingCapacity(gi, 2) == 0
    array, count = (n.c_nvmlComputeInstance_t * 3)(), ctypes.c_uint()
    n.nvmlGpuInstanceGetComputeInstances(gi, one.id, array, ctypes.byref(count))
    assert count.value == 3
    with pytest.raises(n.NVMLError_InUse):
        n.nvmlGpuInstanceDestroy(gi)  # compute instances present
    assert n.nvmlDeviceGetMaxMigDeviceCount(dev) == 7
    names = [n.nvmlDeviceGetName(n.nvmlDeviceGetMigDeviceHandleByIndex(dev, i)) for i in range(3)]
    assert names == ["NVIDIA A100-SXM4-40GB MIG 1c.3g.20gb"] * 3
    with pytest.raises(n.NVMLError_NotFound):
        n.nvmlDeviceGetMigDeviceHandleByIndex(dev, 3)


def test_mig_device_handles(sim_host):
    host = sim_host("A100-SXM4-40GB:mig=on", instances=["0:3g.20gb@4"], processes=["0:2:0:500:vllm"])
    (record,) = host.state().live(0)["processes"]
    dev = n.nvmlDeviceGetHandleByIndex(0)
    mig = n.nvmlDeviceGetMigDeviceHandleByIndex(dev, 0)
    assert n.nvmlDeviceIsMigDeviceHandle(mig).value == 1 and n.nvmlDeviceIsMigDeviceHandle(dev).value == 0
    assert n.nvmlDeviceGetUUID(mig).startswith("MIG-") and n.nvmlDeviceGetUUID(dev).startswith("GPU-")
    assert (n.nvmlDeviceGetGpuInstanceId(mig), n.nvmlDeviceGetComputeInstanceId(mig)) == (2, 0)
    assert n.nvmlDeviceGetMemoryInfo(mig).total < n.nvmlDeviceGetMemoryInfo(dev).total
    assert n.nvmlDeviceGetMemoryInfo(mig).used == 500 * 1024 * 1024
    assert n.nvmlDeviceGetUUID(n.nvmlDeviceGetHandleByUUID(n.nvmlDeviceGetUUID(mig))) == n.nvmlDeviceGetUUID(mig)
    assert n.nvmlDeviceGetIndex(n.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(mig)) == 0
    (proc,) = n.nvmlDeviceGetComputeRunningProcesses(mig)
    assert (proc.pid, proc.gpuInstanceId, proc.computeInstanceId) == (record["pid"], 2, 0)
    assert record["name"] == "vllm"
    with pytest.raises(n.NVMLError_NotSupported):
        n.nvmlDeviceGetGpuInstanceId(dev)


def test_busy_instances_are_in_use(sim_host):
    sim_host("A100-SXM4-40GB:mig=on", instances=["0:3g.20gb@0"], processes=["0:1:0:100"])
    dev = n.nvmlDeviceGetHandleByIndex(0)
    gi = n.nvmlDeviceGetGpuInstanceById(dev, 1)
    ci = n.nvmlGpuInstanceGetComputeInstanceById(gi, 0)
    with pytest.raises(n.NVMLError_InUse):
        n.nvmlComputeInstanceDestroy(ci)
    with pytest.raises(n.NVMLError_InUse):
        n.nvmlDeviceSetMigMode(dev, n.NVML_DEVICE_MIG_DISABLE)  # instances present


def test_ampere_pending_flow_and_persistence(sim_host):
    host = sim_host("A100-SXM4-40GB", processes=["0:100:nv-hostengine"])
    (record,) = host.state().live(0)["processes"]
    dev = n.nvmlDeviceGetHandleByIndex(0)
    assert n.nvmlDeviceSetMigMode(dev, n.NVML_DEVICE_MIG_ENABLE) == n.NVML_ERROR_IN_USE
    assert n.nvmlDeviceGetMigMode(dev) == [0, 1]
    host.reboot()
    assert not procs.alive(record)  # a reboot ends every process
    assert n.nvmlDeviceGetMigMode(dev) == [1, 1]  # pending applied at boot
    n.nvmlDeviceCreateGpuInstance(dev, 19)
    host.reboot()
    assert n.nvmlDeviceGetMigMode(dev) == [1, 1]  # mode persists (InfoROM) ...
    assert n.nvmlDeviceGetMaxMigDeviceCount(dev) == 7
    with pytest.raises(n.NVMLError_NotFound):
        n.nvmlDeviceGetMigDeviceHandleByIndex(dev, 0)  # ... instances do not


def test_ampere_idle_switches_at_once_and_passthrough_needs_reset(sim_host):
    sim_host("A100-SXM4-40GB")
    dev = n.nvmlDeviceGetHandleByIndex(0)
    assert n.nvmlDeviceSetMigMode(dev, n.NVML_DEVICE_MIG_ENABLE) == n.NVML_SUCCESS
    assert n.nvmlDeviceGetMigMode(dev) == [1, 1]
    sim_host("A100-SXM4-40GB", vm_passthrough=True)
    dev = n.nvmlDeviceGetHandleByIndex(0)
    assert n.nvmlDeviceSetMigMode(dev, n.NVML_DEVICE_MIG_ENABLE) == n.NVML_ERROR_RESET_REQUIRED
    assert n.nvmlDeviceGetMigMode(dev) == [0, 1]


def test_hopper_switches_at_once_and_loses_mode_on_reboot(sim_host):
    host = sim_host("H100-80GB")
    dev = n.nvmlDeviceGetHandleByIndex(0)
    assert n.nvmlDeviceSetMigMode(dev, n.NVML_DEVICE_MIG_ENABLE) == n.NVML_SUCCESS
    assert n.nvmlDeviceGetMigMode(dev) == [1, 1]
    host.reboot()
    assert n.nvmlDeviceGetMigMode(dev) == [0, 0]
    pid = host.add_process("0:10")
    with pytest.raises(n.NVMLError_InUse):
        n.nvmlDeviceSetMigMode(dev, n.NVML_DEVICE_MIG_ENABLE)
    os.kill(pid, signal.SIGTERM)  # what a caller forcing the change sends first
    _wait_until_listed(dev, [])
    assert n.nvmlDeviceSetMigMode(dev, n.NVML_DEVICE_MIG_ENABLE) == n.NVML_SUCCESS


# --- processes are real processes --------------------------------------------------------------------


def test_exited_process_releases_its_instance(sim_host):
    host = sim_host("A100-SXM4-40GB:mig=on", instances=["0:3g.20gb@0", "0:3g.20gb@4"])
    dev = n.nvmlDeviceGetHandleByIndex(0)
    pid = host.add_process("0:1:0:100:python3")
    other = host.add_process("0:2:0:200")
    assert (procs.PROC / str(pid) / "cmdline").read_bytes().split(b"\0")[0] == b"sleep"
    gi = n.nvmlDeviceGetGpuInstanceById(dev, 1)
    ci = n.nvmlGpuInstanceGetComputeInstanceById(gi, 0)
    with pytest.raises(n.NVMLError_InUse):
        n.nvmlComputeInstanceDestroy(ci)
    os.kill(pid, signal.SIGKILL)
    _wait_until_listed(dev, [other])  # our child stays a zombie until reaped: NVML drops it anyway
    assert [p["pid"] for p in host.state().live(0)["processes"]] == [other]
    n.nvmlComputeInstanceDestroy(ci)  # succeeds now, and prunes the dead record on disk
    n.nvmlGpuInstanceDestroy(gi)
    with pytest.raises(n.NVMLError_InUse):
        n.nvmlGpuInstanceDestroy(n.nvmlDeviceGetGpuInstanceById(dev, 2))  # compute instance, process
    assert "start_time" in host.state().live(0)["processes"][0]


def test_reused_or_unverifiable_pid_is_not_ours(sim_host):
    host = sim_host("A100-SXM4-40GB")
    me = procs.stat(os.getpid())
    assert me is not None
    with host.edit() as state:  # same PID, other start time (a reused PID), and a record without one
        state.live(0)["processes"] += [
            {"pid": os.getpid(), "start_time": me[1] + 1, "used_mib": 1, "name": "x"},
            {"pid": os.getpid(), "used_mib": 1, "name": "x"},
        ]
    assert n.nvmlDeviceGetComputeRunningProcesses(n.nvmlDeviceGetHandleByIndex(0)) == []
    assert n.nvmlDeviceSetMigMode(n.nvmlDeviceGetHandleByIndex(0), n.NVML_DEVICE_MIG_ENABLE) == n.NVML_SUCCESS
    host.reboot()  # kills only processes it can prove it spawned: we are still here


def test_process_syntax_has_no_pid(sim_host):
    assert hosts.Process.parse("0:1:2:300:vllm") == hosts.Process(0, 300, 1, 2, "vllm")
    assert hosts.Process.parse("1:300") == hosts.Process(1, 300, None, None, "python3")
    with pytest.raises(ValueError, match="GPU\\[:GI\\[:CI\\]\\]:MIB"):
        hosts.Process.parse("0:1:0:4242:512")  # the old syntax with a PID
    host = sim_host("A100-SXM4-40GB:mig=on")
    before = dict(procs.SPAWNED)
    with pytest.raises(n.NVMLError_NotFound):
        host.add_process("0:3:0:100")  # no such instance: nothing spawned
    with pytest.raises(IndexError):
        host.add_process("5:100")
    assert before == procs.SPAWNED  # nothing was spawned


def test_volatile_and_persistent_files(sim_host):
    host = sim_host("A100-SXM4-40GB:mig=on", "H200:mig=on", instances=["0:7g.40gb"])
    assert (host.root / "var/lib/migsim/host.json").is_file()
    assert (host.root / "run/migsim/state.json").is_file()
    (host.root / "run/migsim/state.json").unlink()  # what a real reboot of ROOT=/ does to /run
    state = host.state()
    assert state.gpus[0]["mig"]["current"] == 1
    assert state.live(1)["mig"]["current"] == 0
    assert state.live(0)["gpu_instances"] == []
    assert state.persistent["boots"] == 2


def test_non_mig_gpu(sim_host):
    sim_host("L4")
    dev = n.nvmlDeviceGetHandleByIndex(0)
    assert n.nvmlDeviceGetName(dev) == "NVIDIA L4"
    assert n.nvmlDeviceGetCudaComputeCapability(dev) == (8, 9)
    assert n.nvmlDeviceGetMemoryInfo(dev).total == 23034 * 1024 * 1024
    assert n.nvmlDeviceGetMaxMigDeviceCount(dev) == 0
    for call in (
        n.nvmlDeviceGetMigMode,
        lambda d: n.nvmlDeviceSetMigMode(d, 1),
        lambda d: n.nvmlDeviceCreateGpuInstance(d, 19),
    ):
        with pytest.raises(n.NVMLError_NotSupported):
            call(dev)


def test_mig_disabled_refuses_instances(sim_host):
    sim_host("A100-SXM4-40GB")
    with pytest.raises(n.NVMLError_NotSupported):
        n.nvmlDeviceCreateGpuInstance(n.nvmlDeviceGetHandleByIndex(0), 19)


@pytest.mark.parametrize(
    ("driver_state", "error"),
    [("no_library", n.NVMLError_LibraryNotFound), ("not_loaded", n.NVMLError_DriverNotLoaded)],
)
def test_no_driver(sim_host, driver_state, error):
    with pytest.raises(error):
        sim_host("A100-SXM4-40GB", driver_state=driver_state)


def test_calls_before_init_are_uninitialized(sim_host):
    sim_host("A100-SXM4-40GB", init=False)
    with pytest.raises(n.NVMLError_Uninitialized):
        n.nvmlDeviceGetCount()
    n.nvmlInit()
    n.nvmlShutdown()
    with pytest.raises(n.NVMLError_Uninitialized):
        n.nvmlDeviceGetCount()


def test_versions(sim_host):
    sim_host("A100-SXM4-40GB", driver="535.183.01")
    assert n.nvmlSystemGetDriverVersion() == "535.183.01"
    assert n.nvmlSystemGetNVMLVersion() == "12.535.183.01"
    assert n.nvmlSystemGetCudaDriverVersion_v2() == 12020
    sim_host("A100-SXM4-40GB", driver="450.80.02")
    assert n.nvmlDeviceGetName(n.nvmlDeviceGetHandleByIndex(0)) == "A100-SXM4-40GB"  # pre-R510 name


def test_unprivileged_mutations(sim_host):
    sim_host("A100-SXM4-40GB:mig=on", unprivileged=True)
    dev = n.nvmlDeviceGetHandleByIndex(0)
    assert n.nvmlDeviceGetGpuInstanceRemainingCapacity(dev, 19) == 7
    with pytest.raises(n.NVMLError_NoPermission):
        n.nvmlDeviceCreateGpuInstance(dev, 19)


def test_fault_injection_counts_down(sim_host):
    host = sim_host("A100-SXM4-40GB:mig=on", "A100-SXM4-40GB:mig=on")
    host.fault("nvmlDeviceCreateGpuInstanceWithPlacement", n.NVML_ERROR_INSUFFICIENT_RESOURCES, times=2, gpu=1)
    dev0, dev1 = n.nvmlDeviceGetHandleByIndex(0), n.nvmlDeviceGetHandleByIndex(1)
    _create(dev0, 19, 0, 1)  # other GPU unaffected
    for _attempt in range(2):
        with pytest.raises(n.NVMLError_InsufficientResources):
            _create(dev1, 19, 0, 1)
    assert host.state().persistent["faults"][0]["times"] == 0
    _create(dev1, 19, 0, 1)


def test_fault_on_alias_and_gpu_lost(sim_host):
    host = sim_host("A100-SXM4-40GB")
    host.fault("nvmlDeviceGetComputeRunningProcesses", n.NVML_ERROR_UNKNOWN)
    dev = n.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(n.NVMLError_Unknown):
        n.nvmlDeviceGetComputeRunningProcesses(dev)
    with host.edit() as state:
        state.live(0)["lost"] = True
    with pytest.raises(n.NVMLError_GpuIsLost):
        n.nvmlDeviceGetName(dev)
    host.reboot()
    assert n.nvmlDeviceGetName(dev) == "NVIDIA A100-SXM4-40GB"


def test_fault_on_one_kind_of_handle(sim_host):
    host = sim_host("A100-SXM4-40GB:mig=on", instances=["0:7g.40gb"])
    host.fault("nvmlDeviceGetUUID", n.NVML_ERROR_UNKNOWN, handle="mig")
    dev = n.nvmlDeviceGetHandleByIndex(0)
    mig_device = n.nvmlDeviceGetMigDeviceHandleByIndex(dev, 0)
    assert n.nvmlDeviceGetUUID(dev).startswith("GPU-")  # the GPU's own handle: not this fault's
    with pytest.raises(n.NVMLError_Unknown):
        n.nvmlDeviceGetUUID(mig_device)
    assert n.nvmlDeviceGetUUID(mig_device).startswith("MIG-")


def test_uuids_deterministic_and_distinct(sim_host, tmp_path):
    uuids = []
    for name in ("alpha", "beta", "alpha"):
        sim_host("A100-SXM4-40GB", "A100-SXM4-40GB", hostname=name)
        uuids.append([n.nvmlDeviceGetUUID(n.nvmlDeviceGetHandleByIndex(i)) for i in range(2)])
    assert uuids[0] == uuids[2]
    assert len({*uuids[0], *uuids[1]}) == 4


def test_recreated_instance_gets_new_mig_uuid(sim_host):
    sim_host("A100-SXM4-40GB:mig=on", instances=["0:7g.40gb"])
    dev = n.nvmlDeviceGetHandleByIndex(0)
    first = n.nvmlDeviceGetUUID(n.nvmlDeviceGetMigDeviceHandleByIndex(dev, 0))
    gi = n.nvmlDeviceGetGpuInstanceById(dev, 0)
    n.nvmlComputeInstanceDestroy(n.nvmlGpuInstanceGetComputeInstanceById(gi, 0))
    n.nvmlGpuInstanceCreateComputeInstance(gi, n.NVML_COMPUTE_INSTANCE_PROFILE_7_SLICE)
    assert n.nvmlDeviceGetUUID(n.nvmlDeviceGetMigDeviceHandleByIndex(dev, 0)) != first


def test_handle_lookups(sim_host):
    sim_host("A100-SXM4-40GB", "L4")
    dev = n.nvmlDeviceGetHandleByIndex(1)
    assert n.nvmlDeviceGetIndex(n.nvmlDeviceGetHandleByUUID(n.nvmlDeviceGetUUID(dev))) == 1
    assert n.nvmlDeviceGetIndex(n.nvmlDeviceGetHandleByPciBusId("0000:0f:00.0")) == 1
    assert n.nvmlDeviceGetPciInfo(dev).busId == "00000000:0F:00.0"
    with pytest.raises(n.NVMLError_InvalidArgument):
        n.nvmlDeviceGetHandleByIndex(2)
    with pytest.raises(n.NVMLError_NotFound):
        n.nvmlDeviceGetHandleByUUID("GPU-00000000-0000-0000-0000-000000000000")
