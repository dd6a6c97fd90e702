# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""playbooks/monitoring.yml for real (ansible-playbook) on a fleet of local hosts, each in its own root.

gpu1 runs two services and dcgm-exporter as a process, gpu2 dcgm-exporter as a Quadlet container, mon is the
Prometheus host (no exporters), mon-ext the same in external mode. The files the role writes pass promtool, amtool, systemd-analyze and podman's Quadlet
generator; the targets name every host's exporters with their labels; a second run changes nothing; external mode
writes only the rules, targets and scrape configuration; wrong variables are refused all at once, before any change.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
GPU_UUID = "GPU-11111111-2222-3333-4444-555555555555"
SLOTS = {
    name: {"gpu_index": 0, "gpu_uuid": GPU_UUID, "gpu_name": "NVIDIA A100-SXM4-40GB", "profile": profile,
           "memory_mib": memory, "gpu_instance_id": gi, "compute_instance_id": 0, "mig_uuid": f"MIG-{gi}",
           "placement": {"start": start, "size": size}}
    for name, profile, memory, gi, start, size in (("chat", "3g.20gb", 20096, 2, 4, 4), ("ocr", "1g.5gb", 4864, 13, 0, 1))
}  # fmt: skip
SERVICES = [
    {"name": "chat", "slot": "chat", "server": "triton", "command": ["/opt/tritonserver/bin/tritonserver"],
     "port": 8000, "backend_port": 18000, "model": {"name": "resnet", "dir": "/srv/models"},
     "limits": {"max_concurrency": 8, "max_queue": 16}, "sla": {"p95_ms": 200, "p99_ms": 400}},
    {"name": "ocr", "slot": "ocr", "command": ["/opt/ocr/bin/serve"], "port": 8100, "backend_port": 18100},
]  # fmt: skip
CAPACITY = {"schema": "gpu.mig/capacity/v1", "service": {"service": "chat"},
            "capacity": {"sustained_rps": 180.0, "knee_rps": 207.0}}  # fmt: skip
SERVER_FILES = [
    "etc/default/prometheus", "etc/default/prometheus-alertmanager", "etc/prometheus/alertmanager.yml",
    "etc/prometheus/file_sd/gpu-mig/dcgm.json", "etc/prometheus/file_sd/gpu-mig/haproxy.json",
    "etc/prometheus/file_sd/gpu-mig/node.json", "etc/prometheus/file_sd/gpu-mig/servers.json",
    "etc/prometheus/prometheus.yml", "etc/prometheus/rules.d/gpu-mig/gpu-mig.rules.yml",
    "var/lib/grafana/dashboards/gpu-mig.json",
]  # fmt: skip


def inventory(base: Path, **server_vars: object) -> dict:
    """gpu1 (services, collector, dcgm process), gpu2 (dcgm Quadlet), mon (local Prometheus), mon-ext (external
    mode: rules and targets only): local hosts, one root each."""
    common = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
              "gpu_mig_manage_systemd": False, "monitoring_install_packages": False}  # fmt: skip
    server = {"monitoring_exporters": False, "monitoring_server": True,
              "monitoring_capacity_results": [str(base / "capacity-chat.json")],
              "monitoring_alertmanager_webhook_url": "https://hooks.example.org/gpu-mig", **server_vars}  # fmt: skip
    hosts = {
        "gpu1": {"ansible_host": "10.0.0.11", "gpu_mig_services": SERVICES, "monitoring_dcgm": True,
                 "inference_service_haproxy_stats_bind": "0.0.0.0:8405"},
        "gpu2": {"ansible_host": "10.0.0.12", "monitoring_dcgm": True, "monitoring_dcgm_runner": "quadlet",
                 "monitoring_node_exporter_listen": "10.0.0.12:9100", "monitoring_collector": False},
        "mon": {**server, "monitoring_grafana_dashboard": "/var/lib/grafana/dashboards/gpu-mig.json"},
        "mon-ext": {**server, "monitoring_prometheus": "external"},
    }  # fmt: skip
    for name, host in hosts.items():
        host.update(common, gpu_mig_root=str(base / name))
    return {"all": {"hosts": hosts}}


def run_playbook(base: Path, inventory_data: dict, *extra: str) -> subprocess.CompletedProcess:
    (base / "inventory.json").write_text(json.dumps(inventory_data))
    env = {**os.environ, "ANSIBLE_LOCAL_TEMP": str(base / "ansible-tmp"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_PIPELINING": "1",
           "ANSIBLE_COLLECTIONS_PATH": os.environ.get("ANSIBLE_COLLECTIONS_PATH", str(REPO / ".build/collections"))}  # fmt: skip
    argv = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(base / "inventory.json"), *extra,
            str(REPO / "playbooks/monitoring.yml")]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, check=False)


def prepare(base: Path) -> None:
    (base / "gpu1/etc/gpu-mig").mkdir(parents=True)
    (base / "gpu1/etc/gpu-mig/slots.json").write_text(json.dumps(SLOTS))
    (base / "capacity-chat.json").write_text(json.dumps(CAPACITY))


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def recap(stdout: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP counters per host."""
    return {
        host: {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", counters)}
        for host, counters in re.findall(r"^(\S+)\s+:\s+(ok=.*)$", stdout, re.M)
    }


def verify_unit(fake: Path, name: str, unit: str, binary: str) -> None:
    """``systemd-analyze verify`` the unit in a root holding the system's units and a stub of its binary."""
    shutil.copytree("/lib/systemd/system", fake / "usr/lib/systemd/system", symlinks=True)
    (fake / "etc/systemd/system").mkdir(parents=True)
    (fake / "etc/systemd/system" / name).write_text(unit)
    stub = fake / binary.lstrip("/")
    stub.parent.mkdir(parents=True, exist_ok=True)
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    verify = subprocess.run(["systemd-analyze", "verify", f"--root={fake}", name], capture_output=True, text=True,
                            check=False)  # fmt: skip
    assert verify.returncode == 0 and "Unknown key" not in verify.stderr, verify.stderr


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess, dict]:
    base = tmp_path_factory.mktemp("monitoring")
    prepare(base)
    data = inventory(base)
    return base, run_playbook(base, data), data


def test_the_server_gets_the_fleet_s_targets_and_rules_checked_by_promtool(fleet):
    base, run, _data = fleet
    assert run.returncode == 0, run.stdout[-5000:]
    mon = base / "mon"
    assert files(mon) == SERVER_FILES
    targets = {name: json.loads((mon / "etc/prometheus/file_sd/gpu-mig" / name).read_text())
               for name in ("node.json", "haproxy.json", "servers.json", "dcgm.json")}  # fmt: skip
    assert targets["node.json"] == [{"targets": ["10.0.0.11:9100"], "labels": {"host": "gpu1"}},
                                    {"targets": ["10.0.0.12:9100"], "labels": {"host": "gpu2"}}]  # fmt: skip
    assert targets["dcgm.json"] == [{"targets": ["10.0.0.11:9400"], "labels": {"host": "gpu1"}},
                                    {"targets": ["10.0.0.12:9400"], "labels": {"host": "gpu2"}}]  # fmt: skip
    assert targets["haproxy.json"] == [{"targets": ["10.0.0.11:8405"], "labels": {"host": "gpu1"}}]
    chat = {"host": "gpu1", "service": "chat", "slot": "chat", "server": "triton", "profile": "3g.20gb", "gpu": "0",
            "gpu_uuid": GPU_UUID}  # fmt: skip
    assert targets["servers.json"][0] == {"targets": ["10.0.0.11:18002"], "labels": chat}  # Triton's metrics port
    # The servers listen on 127.0.0.1 of gpu1: the role says that a Prometheus on another host cannot reach them.
    assert "the /metrics of chat's server listens on loopback only" in run.stdout

    rules_file = mon / "etc/prometheus/rules.d/gpu-mig/gpu-mig.rules.yml"
    check = subprocess.run(["promtool", "check", "rules", str(rules_file)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    alerts = {
        r["alert"]: r for g in yaml.safe_load(rules_file.read_text())["groups"] for r in g["rules"] if "alert" in r
    }
    assert alerts["GpuMigTrafficNearCapacity"]["expr"].endswith("> 144")  # 80 % of the measured 180 RPS
    assert alerts["GpuMigBackpressure"]["annotations"]["runbook_url"].endswith("docs/monitoring.md#overload")

    prometheus = yaml.safe_load((mon / "etc/prometheus/prometheus.yml").read_text())
    assert prometheus["rule_files"] == ["/etc/prometheus/rules.d/gpu-mig/*.yml"]
    assert prometheus["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["127.0.0.1:9093"]
    config = subprocess.run(["promtool", "check", "config", str(mon / "etc/prometheus/prometheus.yml")],
                            capture_output=True, text=True, check=False)  # fmt: skip
    assert config.returncode == 0, config.stdout + config.stderr
    alertmanager = mon / "etc/prometheus/alertmanager.yml"
    amtool = subprocess.run(["amtool", "check-config", str(alertmanager)], capture_output=True, text=True, check=False)
    assert amtool.returncode == 0, amtool.stdout + amtool.stderr
    receiver = yaml.safe_load(alertmanager.read_text())["receivers"][0]
    assert receiver["webhook_configs"] == [{"url": "https://hooks.example.org/gpu-mig", "send_resolved": True}]
    dashboard = json.loads((mon / "var/lib/grafana/dashboards/gpu-mig.json").read_text())
    assert dashboard["uid"] == "gpu-mig-services" and "chat" in json.dumps(dashboard["panels"])
    assert (
        "--config.file=/etc/prometheus/prometheus.yml --web.listen-address=127.0.0.1:9090"
        in (mon / "etc/default/prometheus").read_text()
    )


def test_gpu_hosts_get_node_exporter_the_collector_and_dcgm_exporter(fleet):
    base, run, _data = fleet
    assert run.returncode == 0, run.stdout[-5000:]
    gpu1 = base / "gpu1"
    node_args = (gpu1 / "etc/default/prometheus-node-exporter").read_text()
    assert "--collector.textfile.directory=/var/lib/prometheus/node-exporter" in node_args
    assert "--collector.systemd.enable-restarts-metrics" in node_args
    assert (gpu1 / "var/lib/prometheus/node-exporter").is_dir()
    assert json.loads((gpu1 / "etc/gpu-mig/metrics.json").read_text())["slot_services"] == {
        "chat": "chat",
        "ocr": "ocr",
    }
    assert (gpu1 / "etc/systemd/system/gpu-mig-metrics.timer").is_file()
    counters = (gpu1 / "etc/dcgm-exporter/gpu-mig-counters.csv").read_text()
    assert "DCGM_FI_PROF_GR_ENGINE_ACTIVE, gauge" in counters
    unit = (gpu1 / "etc/systemd/system/gpu-mig-dcgm-exporter.service").read_text()
    assert "ExecStart=/usr/bin/dcgm-exporter -f /etc/dcgm-exporter/gpu-mig-counters.csv -a :9400" in unit
    verify_unit(base / "fake-process", "gpu-mig-dcgm-exporter.service", unit, "/usr/bin/dcgm-exporter")

    quadlet = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpu-mig/quadlet/quadlet"
    assert quadlet.is_file(), "podman's Quadlet generator is required: run hacking/quadlet.sh (make quadlet)"
    generated = subprocess.run([str(quadlet), "-dryrun"], capture_output=True, text=True, check=False,
                               env={**os.environ, "QUADLET_UNIT_DIRS": str(base / "gpu2/etc/containers/systemd")})  # fmt: skip
    assert generated.returncode == 0 and not re.search(r"(?i)error|warning", generated.stderr), generated.stderr
    exec_start = re.search(r"^ExecStart=(.*)$", generated.stdout, re.M).group(1).split()
    assert exec_start[exec_start.index("--cap-add") + 1] == "sys_admin"  # the profiling counters need it
    assert exec_start[exec_start.index("--device") + 1] == "nvidia.com/gpu=all"  # CDI: every MIG device
    assert exec_start[-4:] == ["-f", "/etc/dcgm-exporter/gpu-mig-counters.csv", "-a", ":9400"]
    service = generated.stdout.split("---gpu-mig-dcgm-exporter.service---\n", 1)[1]
    verify_unit(base / "fake-quadlet", "gpu-mig-dcgm-exporter.service", service, "/usr/bin/podman")
    assert not (base / "gpu2/etc/default/prometheus").exists()  # no server there


def test_a_second_run_changes_nothing(fleet):
    base, first, data = fleet
    assert first.returncode == 0, first.stdout[-5000:]
    again = run_playbook(base, data)
    assert again.returncode == 0, again.stdout[-5000:]
    assert {host: counters["changed"] for host, counters in recap(again.stdout).items()} == {
        "gpu1": 0,
        "gpu2": 0,
        "mon": 0,
        "mon-ext": 0,
    }, again.stdout[-5000:]


def test_external_mode_writes_only_rules_targets_and_scrape_configs(fleet):
    base, run, _data = fleet
    assert run.returncode == 0, run.stdout[-5000:]
    mon = base / "mon-ext"
    assert files(mon) == [
        "etc/prometheus/file_sd/gpu-mig/dcgm.json", "etc/prometheus/file_sd/gpu-mig/haproxy.json",
        "etc/prometheus/file_sd/gpu-mig/node.json", "etc/prometheus/file_sd/gpu-mig/scrape_configs.yml",
        "etc/prometheus/file_sd/gpu-mig/servers.json", "etc/prometheus/rules.d/gpu-mig/gpu-mig.rules.yml",
    ]  # fmt: skip
    for name in ("etc/prometheus/rules.d/gpu-mig/gpu-mig.rules.yml", "etc/prometheus/file_sd/gpu-mig/node.json"):
        assert (mon / name).read_text() == (base / "mon" / name).read_text()  # the same as the local Prometheus'
    scrape = yaml.safe_load((mon / "etc/prometheus/file_sd/gpu-mig/scrape_configs.yml").read_text())
    assert list(scrape) == ["scrape_configs"]
    assert [job["job_name"] for job in scrape["scrape_configs"]] == [
        "gpu-mig-node", "gpu-mig-haproxy", "gpu-mig-servers", "gpu-mig-dcgm"
    ]  # fmt: skip


def test_wrong_variables_are_refused_all_at_once_before_any_change(tmp_path: Path):
    prepare(tmp_path)
    data = inventory(
        tmp_path,
        monitoring_scrape_interval="fast",
        monitoring_prometheus_listen="9090",
        monitoring_prometheus_args=["--web.page-title=GPU fleet"],
        monitoring_alertmanager_webhook_url="ftp://hooks.example.org",
        monitoring_capacity_results=[str(tmp_path / "missing.json")],
        monitoring_scrape_hosts=["gpu1", "gpu9"],
    )
    run = run_playbook(tmp_path, data, "--limit", "mon")
    assert run.returncode != 0
    for expected in (
        "monitoring_scrape_interval must be Prometheus durations",
        "monitoring_prometheus_listen must be address:port",
        "the daemon arguments ['--web.page-title=GPU fleet'] hold whitespace",
        "monitoring_alertmanager_webhook_url must be empty (no notifications) or an http(s):// URL",
        f"not a readable file: {tmp_path / 'missing.json'}",
        "monitoring_scrape_hosts names hosts that are not in the inventory: gpu9",
    ):
        assert expected in run.stdout, (expected, run.stdout[-5000:])
    assert files(tmp_path / "mon") == []
