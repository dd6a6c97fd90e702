"""Checks on the real systemd test hosts: units, slot env files against live (simulated) NVML, boot ordering.

The inference services of gpu-mig-h1 have their own module (test_services.py)."""

from __future__ import annotations

import json

import pytest

testinfra_hosts = ["ansible://systemd_gpu_hosts"]

UNITS = ("gpu-mig-apply.service", "gpu-mig.target")
SLOTS = ("chat", "classifier", "ocr")


def live_mig_uuids(host) -> set[str]:
    """MIG device UUIDs the (simulated) driver reports now."""
    script = (
        "import pynvml as n\n"
        "n.nvmlInit()\n"
        "out = []\n"
        "for i in range(n.nvmlDeviceGetCount()):\n"
        "    g = n.nvmlDeviceGetHandleByIndex(i)\n"
        "    for m in range(n.nvmlDeviceGetMaxMigDeviceCount(g)):\n"
        "        try:\n"
        "            out.append(n.nvmlDeviceGetUUID(n.nvmlDeviceGetMigDeviceHandleByIndex(g, m)))\n"
        "        except n.NVMLError:\n"
        "            pass\n"
        "print(' '.join(out))\n"
    )
    result = host.run("/opt/gpu-mig/venv/bin/python -c %s", script)
    assert result.rc == 0, result.stderr
    return set(result.stdout.split())


@pytest.mark.parametrize("unit", UNITS)
def test_boot_units_enabled_and_active(host, unit):
    service = host.service(unit)
    assert service.is_enabled
    assert service.is_running or host.run("systemctl is-active %s", unit).stdout.strip() == "active"


def test_units_pass_systemd_analyze_verify(host):
    result = host.run(
        "systemd-analyze verify /etc/systemd/system/gpu-mig-apply.service /etc/systemd/system/gpu-mig.target"
    )
    assert result.rc == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_env_files_point_at_live_mig_devices(host):
    slots = json.loads(host.file("/etc/gpu-mig/slots.json").content_string)
    assert sorted(slots) == sorted(SLOTS)
    live = live_mig_uuids(host)
    for name, slot in slots.items():
        assert slot["mig_uuid"] in live, (name, slot["mig_uuid"], live)
        env = host.file(f"/run/gpu-mig/slots/{name}.env")
        assert env.is_file
        assert f"\nCUDA_VISIBLE_DEVICES={slot['mig_uuid']}\n" in env.content_string
        assert f"\nGPU_MIG_CDI_DEVICE=nvidia.com/gpu={slot['mig_uuid']}\n" in env.content_string


@pytest.mark.parametrize("slot", SLOTS)
def test_pinned_services_run_on_their_slot(host, slot):
    unit = f"slot-service@{slot}.service"
    assert host.service(unit).is_enabled
    assert host.run("systemctl is-active %s", unit).stdout.strip() == "active"
    slots = json.loads(host.file("/etc/gpu-mig/slots.json").content_string)
    assert host.file(f"/run/slot-service-{slot}.uuid").content_string.strip() == slots[slot]["mig_uuid"]


def _monotonic(host, unit: str, prop: str) -> int:
    return int(host.run("systemctl show -P %s %s", prop, unit).stdout.strip() or 0)


def test_services_are_ordered_after_the_applier(host):
    """Before the reboot: the unit ordering. After it (side_effect): the start times of this boot."""
    for slot in SLOTS:
        after = host.run("systemctl show -P After slot-service@%s.service", slot).stdout
        assert "gpu-mig.target" in after or "gpu-mig-apply.service" in after, after
    if not host.file("/var/lib/gpu-mig-test-rebooted").exists:
        return
    applier_done = _monotonic(host, "gpu-mig-apply.service", "ExecMainExitTimestampMonotonic")
    assert applier_done > 0
    for slot in SLOTS:
        started = _monotonic(host, f"slot-service@{slot}.service", "ExecMainStartTimestampMonotonic")
        assert started >= applier_done, (slot, started, applier_done)
    journal = host.run("journalctl -b -u gpu-mig-apply.service --no-pager -o cat").stdout
    assert "gpu-mig-apply: done: 3 slots, changed" in journal, journal


def test_hopper_mig_mode_is_on(host):
    """Set by the mig_mode role before the reboot; after it (Hopper loses the mode) only the boot applier sets it."""
    script = "import pynvml as n\nn.nvmlInit()\nprint(n.nvmlDeviceGetMigMode(n.nvmlDeviceGetHandleByIndex(0))[0])\n"
    assert host.run("/opt/gpu-mig/venv/bin/python -c %s", script).stdout.strip() == "1"
