"""The inference services that site.yml deployed on gpu-mig-h1 (role gpu.mig.inference_service), checked for real.

Pinning (env file, MIG UUID of the main process, devices cgroup), hardening (systemd-analyze security), admission
(HAProxy: fast 503 beyond max_concurrency + max_queue or after queue_timeout, nothing lost), isolation (a spike on
one service, CPU-bounded by CPUQuota=, leaves the other's p99 within its SLA) and a real model served by MLServer.
Load comes from files/load.py run on the host itself: every request goes to 127.0.0.1, every loop is bounded.
Before the reboot and again after it (the second verify), when the services started at boot after the applier.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

HOST = "gpu-mig-h1"
testinfra_hosts = [f"ansible://{HOST}"]

HOST_VARS = yaml.safe_load((Path(__file__).parents[1] / "inventory" / "host_vars" / f"{HOST}.yml").read_text())
SERVICES = {spec["name"]: spec for spec in HOST_VARS["gpu_mig_services"]}
# The load script, straight from the repository that hosts.sh mounts into the host.
LOAD = "/usr/bin/python3 /opt/gpu-mig-src/ansible_collections/gpu/mig/extensions/molecule/systemd_hosts/files/load.py"
# Device nodes every slot's services may open besides their own two MIG capability nodes.
COMMON_DEVICES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia0")


def unit(name: str) -> str:
    return f"inference-{name}.service"


def infer_path(name: str) -> str:
    return f"/v2/models/{SERVICES[name].get('model', {}).get('name', 'm')}/infer"


def load(host, *args: object) -> dict | list:
    """Run the load script on the host; its JSON answer."""
    result = host.run(LOAD + " " + " ".join(["%s"] * len(args)), *[str(a) for a in args])
    assert result.rc == 0, result.stderr
    return json.loads(result.stdout)


def show(host, name: str, prop: str) -> str:
    return host.run("systemctl show --property=%s --value %s", prop, unit(name)).stdout.strip()


def slots(host) -> dict:
    return json.loads(host.file("/etc/gpu-mig/slots.json").content_string)


@pytest.fixture(scope="module", autouse=True)
def ready(host):
    """Every service answers through HAProxy, at most 180 s after the first check: MLServer loads its model for a while
    after a start, and on the first verify prepare.yml's background installation may still be running."""
    for name, spec in SERVICES.items():
        reply = load(host, "ready", "--port", spec["port"], "--path", infer_path(name), "--seconds", 180)
        if reply["status"] != 200:
            install = host.run("systemctl status --no-pager gpu-mig-test-mlserver-install.service").stdout
            journal = host.run("journalctl --no-pager -n 30 -u %s", unit(name)).stdout
            pytest.fail(f"{name} not ready: {reply}\n{install}\n{journal}")


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_unit_enabled_active_not_root(host, name):
    assert host.service(unit(name)).is_enabled
    assert show(host, name, "ActiveState") == "active"
    assert show(host, name, "User") == f"gpumig-{name}"
    pid = show(host, name, "MainPID")
    assert host.run("stat -c %%U /proc/%s", pid).stdout.strip() == f"gpumig-{name}"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_pinned_to_the_slot_mig_device(host, name):
    slot = SERVICES[name]["slot"]
    assert show(host, name, "EnvironmentFiles").startswith(f"/run/gpu-mig/slots/{slot}.env ")
    mig_uuid = slots(host)[slot]["mig_uuid"]
    assert f"\nCUDA_VISIBLE_DEVICES={mig_uuid}\n" in host.file(f"/run/gpu-mig/slots/{slot}.env").content_string
    environ = host.run("tr '\\0' '\\n' < /proc/%s/environ", show(host, name, "MainPID")).stdout.splitlines()
    assert f"CUDA_VISIBLE_DEVICES={mig_uuid}" in environ
    assert f"NVIDIA_VISIBLE_DEVICES={mig_uuid}" in environ
    recorded = host.file(f"/var/lib/gpu-mig/services/{name}.mig_uuid").content_string.strip()
    assert recorded == mig_uuid


def cap_nodes(slot: dict) -> list[str]:
    """The slot's GPU- and compute-instance capability nodes (driver layout for GPU 0: 3 + 9 * gi, + 1 + ci)."""
    gi = 3 + 9 * int(slot["gpu_instance_id"])
    return [
        f"/dev/nvidia-caps/nvidia-cap{gi}",
        f"/dev/nvidia-caps/nvidia-cap{gi + 1 + int(slot['compute_instance_id'])}",
    ]


def cgroup_file(host, hierarchy: str, name: str, v1: str, v2: str) -> str:
    """A cgroup file of unit ``name``: cgroup v1 (this project's hybrid hosts) or v2."""
    path = f"/sys/fs/cgroup/{hierarchy}/system.slice/{unit(name)}/{v1}"
    if not host.file(path).exists:
        path = f"/sys/fs/cgroup/system.slice/{unit(name)}/{v2}"
    return host.file(path).content_string.strip()


OPEN_AS_UNIT = (
    "import errno, os, sys\n"
    "for path in sys.argv[1:]:\n"
    "    try:\n"
    "        os.close(os.open(path, os.O_RDWR))\n"
    "        print(path, 'opened')\n"
    "    except OSError as err:\n"
    "        print(path, errno.errorcode[err.errno])\n"
)


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_only_the_slot_devices_are_allowed(host, name):
    """DeviceAllow= names the slot's nodes only (DevicePolicy=closed), and the kernel enforces it: in the unit's devices
    cgroup, the unit's own nodes open as far as the driver (ENXIO: no driver backs the test nodes), other slots'
    capability nodes are refused (EPERM)."""
    all_slots = slots(host)
    own = [*COMMON_DEVICES, *cap_nodes(all_slots[SERVICES[name]["slot"]])]
    assert show(host, name, "DevicePolicy") == "closed"
    allowed = re.findall(r"(\S+) (\S+)", show(host, name, "DeviceAllow"))
    assert sorted(a for a in allowed if a[0].startswith("/dev/nvidia")) == sorted((path, "rw") for path in own)
    assert {path for path, _mode in allowed} - set(own) <= {"char-rtc"}, allowed  # ProtectClock=yes adds char-rtc r

    others = sorted(
        {n for other, slot in all_slots.items() if other != SERVICES[name]["slot"] for n in cap_nodes(slot)}
    )
    procs = f"/sys/fs/cgroup/devices/system.slice/{unit(name)}/cgroup.procs"
    if not host.file(procs).exists:
        procs = f"/sys/fs/cgroup/system.slice/{unit(name)}/cgroup.procs"
    paths = [*own, *others]
    result = host.run(
        "sh -c 'procs=$1 script=$2; shift 2; echo $$ > \"$procs\" && exec /usr/bin/python3 -I -S -c \"$script\" \"$@\"' "
        "sh" + " %s" * (2 + len(paths)),
        procs, OPEN_AS_UNIT, *paths,
    )  # fmt: skip
    assert result.rc == 0, result.stderr
    outcome = dict(line.split() for line in result.stdout.splitlines())
    assert outcome == {**dict.fromkeys(own, "ENXIO"), **dict.fromkeys(others, "EPERM")}, outcome


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_hardening_and_limits(host, name):
    """systemd-analyze security on the live unit: exposure at most 3.0; CPU and memory limits in the cgroup."""
    result = host.run("systemd-analyze security --no-pager %s", unit(name))
    exposure = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)
    assert exposure and float(exposure.group(1)) <= 3.0, result.stdout[-2000:]
    limits = SERVICES[name]["limits"]
    quota_us = int(limits["cpu_quota"].rstrip("%")) * 1000
    quota = cgroup_file(host, "cpu", name, "cpu.cfs_quota_us", "cpu.max").split()
    if len(quota) == 1:  # v1: the period has its own file
        quota.append(cgroup_file(host, "cpu", name, "cpu.cfs_period_us", "cpu.max"))
    assert quota == [str(quota_us), "100000"]
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    memory = cgroup_file(host, "memory", name, "memory.limit_in_bytes", "memory.max")
    assert int(memory) == int(limits["memory_max"][:-1]) * units[limits["memory_max"][-1]]


def test_mlserver_serves_the_trained_model(host):
    """MLServer behind HAProxy predicts the first iris sample (a setosa: class 0) with the model prepare.yml trained."""
    reply = load(host, "request", "--port", SERVICES["classifier"]["port"], "--path", infer_path("classifier"))
    assert reply["status"] == 200, reply
    body = json.loads(reply["body"])
    assert body["model_name"] == "iris" and body["outputs"][0]["data"] == [0], body


def test_overload_answers_503_within_queue_timeout_and_loses_nothing(host):
    """3 x max_concurrency at once on chat (400 ms per request): max_concurrency served, the rest 503 + Retry-After,
    either at once (queue full) or when queue_timeout (250 ms) ran out; every request answered."""
    spec = SERVICES["chat"]
    concurrency = spec["limits"]["max_concurrency"]
    replies = load(host, "burst", "--port", spec["port"], "--count", 3 * concurrency)

    assert len(replies) == 3 * concurrency
    assert all(r["status"] in (200, 503) for r in replies), replies  # none lost, reset or timed out
    ok = [r for r in replies if r["status"] == 200]
    rejected = [r for r in replies if r["status"] == 503]
    assert len(ok) == concurrency, replies
    assert all(json.loads(r["body"])["model_name"] == "m" and 0.39 <= r["seconds"] < 3.0 for r in ok), ok
    assert all(r["retry_after"] == "1" and r["seconds"] < 0.25 + 0.5 for r in rejected), rejected
    full = [r for r in rejected if "queue full" in r["body"]]
    timed_out = [r for r in rejected if "overloaded" in r["body"]]
    assert len(full) + len(timed_out) == len(rejected), rejected
    assert full and timed_out, rejected  # both paths: queue cap at once, queue timeout after 250 ms
    assert min(r["seconds"] for r in timed_out) >= 0.24, timed_out


def test_spike_on_one_service_leaves_the_other_within_its_sla(host):
    """3 x max_concurrency closed-loop clients on MLServer for 4 s, ocr probed at 20/s meanwhile: ocr's p99 within its
    SLA with no error; the spiked service answers every request (200 or a fast 503) and stays within its CPUQuota."""
    spiked, probed = SERVICES["classifier"], SERVICES["ocr"]
    result = load(
        host, "spike",
        "--spike-port", spiked["port"], "--spike-path", infer_path("classifier"),
        "--spike-clients", 3 * spiked["limits"]["max_concurrency"], "--spike-unit", unit("classifier"),
        "--probe-port", probed["port"], "--probe-rps", 20, "--seconds", 4,
    )  # fmt: skip
    spike, probe = result["spike"], result["probe"]
    assert spike["sent"] > 0 and set(spike["status"]) <= {"200", "503"}, spike
    assert spike["status"].get("200", 0) > 0, spike
    quota = int(spiked["limits"]["cpu_quota"].rstrip("%")) / 100
    assert spike["cpu_cores"] is not None and spike["cpu_cores"] <= quota + 0.1, spike
    assert probe["status"] == {"200": probe["sent"]} and probe["sent"] == 80, probe
    assert probe["p99_ms"] <= probed["sla"]["p99_ms"], probe


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_ordered_after_the_applier(host, name):
    """Requires= and After= gpu-mig.target; after the reboot (second verify), started once the applier was done."""
    assert "gpu-mig.target" in show(host, name, "Requires").split()
    assert "gpu-mig.target" in show(host, name, "After").split()
    assert host.service("haproxy.service").is_running
    if not host.file("/var/lib/gpu-mig-test-rebooted").exists:
        return
    applier_done = int(host.run("systemctl show -P ExecMainExitTimestampMonotonic gpu-mig-apply.service").stdout)
    assert 0 < applier_done <= int(show(host, name, "ExecMainStartTimestampMonotonic"))
