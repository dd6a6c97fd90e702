# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""file_sd targets, prometheus.yml and the dcgm-exporter counters, checked by the real promtool where it applies.

``promtool check config`` reads the generated prometheus.yml with its rule files and its file_sd files (written to a
temporary directory), so targets, rules and configuration are checked as Prometheus would load them.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from ansible_collections.gpu.mig.plugins.plugin_utils import monitoring as _monitoring

PROMTOOL = "/usr/bin/promtool"
SLOTS = {
    "chat": {"gpu_index": 0, "gpu_uuid": "GPU-a", "profile": "3g.20gb", "memory_mib": 20096},
    "det": {"gpu_index": 1, "gpu_uuid": "GPU-b", "profile": "2g.10gb", "memory_mib": 9856},
}
CHAT = {"name": "chat", "slot": "chat", "server": "vllm", "runner": "quadlet", "image": "docker.io/vllm/vllm-openai:v0.10.1",
        "port": 8000, "backend_port": 18000, "model": {"name": "m"}}  # fmt: skip
DET = {"name": "det", "slot": "det", "server": "triton", "command": ["/opt/tritonserver/bin/tritonserver"],
       "port": 8002, "backend_port": 18020, "model": {"name": "det", "dir": "/srv/models"}}  # fmt: skip
HOSTS = [
    {"host": "gpu1", "address": "127.0.0.1", "services": [CHAT, DET], "slots": SLOTS, "dcgm_listen": ":9400",
     "haproxy_stats_bind": "127.0.0.1:8405"},
    {"host": "gpu2", "address": "10.0.0.6", "services": [CHAT], "slots": SLOTS, "node_exporter_listen": "10.0.0.6:9100",
     "haproxy_stats_bind": "0.0.0.0:8405"},
    {"host": "cpu1"},  # no GPU services: node_exporter only
]  # fmt: skip


def promtool(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def installed(tmp_path: Path) -> dict[str, Path]:
    """The generated files where a Prometheus would read them: targets, rules and prometheus.yml in their own dirs."""
    dirs = {name: tmp_path / name for name in ("targets", "rules", "etc")}
    for path in dirs.values():
        path.mkdir()
    for name, groups in _monitoring.targets(HOSTS)["files"].items():
        (dirs["targets"] / name).write_text(json.dumps(groups))
    (dirs["rules"] / "gpu-mig.yml").write_text(_monitoring.render_rules(HOSTS))
    settings = {"targets_dir": str(dirs["targets"]), "rules_dir": str(dirs["rules"]), "alertmanagers": ["127.0.0.1:9093"],
                "scrape_interval": "5s", "evaluation_interval": 5, "external_labels": {"cluster": "lab"}}  # fmt: skip
    (dirs["etc"] / "prometheus.yml").write_text(_monitoring.scrape_config(settings))
    return dirs


def test_promtool_checks_the_config_with_its_rules_and_targets(installed: dict[str, Path]):
    result = promtool("check", "config", installed["etc"] / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout
    config = yaml.safe_load((installed["etc"] / "prometheus.yml").read_text())
    assert config["global"] == {
        "scrape_interval": "5s",
        "evaluation_interval": "5s",
        "external_labels": {"cluster": "lab"},
    }
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["127.0.0.1:9093"]
    jobs = {job["job_name"]: job["file_sd_configs"][0]["files"] for job in config["scrape_configs"]}
    assert jobs == {_monitoring.JOBS[name]: [str(installed["targets"] / name)] for name in _monitoring.TARGET_FILES}


def test_promtool_check_config_reads_the_target_files(installed: dict[str, Path]):
    """The check above covers the file_sd files (JSON, label names): a broken one fails it."""
    (installed["targets"] / "servers.json").write_text('[{"targets": ["127.0.0.1:1"], "labels": {"0slot": "x"}}]')
    result = promtool("check", "config", installed["etc"] / "prometheus.yml")
    assert result.returncode != 0 and "servers.json" in result.stdout + result.stderr


def test_scrape_configs_only_is_a_fragment_promtool_accepts(tmp_path: Path):
    text = _monitoring.scrape_config({"targets_dir": "/etc/prometheus/file_sd/gpu-mig", "rules_dir": "/r",
                                      "scrape_configs_only": True})  # fmt: skip
    assert list(yaml.safe_load(text)) == ["scrape_configs"]
    (tmp_path / "fragment.yml").write_text(text)
    result = promtool("check", "config", tmp_path / "fragment.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_targets_carry_host_service_slot_profile_and_gpu():
    files = _monitoring.targets(HOSTS)["files"]
    assert sorted(files) == sorted(_monitoring.TARGET_FILES)
    assert files["node.json"] == [
        {"targets": ["127.0.0.1:9100"], "labels": {"host": "gpu1"}},
        {"targets": ["10.0.0.6:9100"], "labels": {"host": "gpu2"}},
        {"targets": ["cpu1:9100"], "labels": {"host": "cpu1"}},  # address defaults to the host name
    ]
    assert files["haproxy.json"] == [
        {"targets": ["127.0.0.1:8405"], "labels": {"host": "gpu1"}},
        {"targets": ["10.0.0.6:8405"], "labels": {"host": "gpu2"}},  # a wildcard bind: the host's address
    ]
    assert files["dcgm.json"] == [{"targets": ["127.0.0.1:9400"], "labels": {"host": "gpu1"}}]
    chat = {"service": "chat", "slot": "chat", "server": "vllm", "profile": "3g.20gb", "gpu": "0", "gpu_uuid": "GPU-a"}
    assert files["servers.json"] == [
        {"targets": ["127.0.0.1:18000"], "labels": {"host": "gpu1", **chat}},  # vLLM: /metrics on its HTTP port
        {"targets": ["127.0.0.1:18022"], "labels": {"host": "gpu1", "service": "det", "slot": "det", "server": "triton",
                                                    "profile": "2g.10gb", "gpu": "1", "gpu_uuid": "GPU-b"}},  # +2
        {"targets": ["10.0.0.6:18000"], "labels": {"host": "gpu2", **chat}},
    ]  # fmt: skip


def test_loopback_listeners_that_prometheus_cannot_reach_are_warned_about():
    warnings = _monitoring.targets(HOSTS)["warnings"]
    assert warnings == [
        "host gpu2: the /metrics of chat's server listens on loopback only (127.0.0.1:18000), Prometheus cannot reach "
        "it at 10.0.0.6: run Prometheus on the host (address 127.0.0.1) or bind the listener wider",
    ]


def test_an_ipv6_address_is_bracketed():
    files = _monitoring.targets([{"host": "v6", "address": "fd00::5"}])["files"]
    assert files["node.json"] == [{"targets": ["[fd00::5]:9100"], "labels": {"host": "v6"}}]


def test_dcgm_counters_file_has_the_per_instance_fields_and_the_extras():
    text = _monitoring.dcgm_counters_csv(["DCGM_FI_PROF_PIPE_TENSOR_ACTIVE"])
    rows = [[cell.strip() for cell in line.split(",", 2)] for line in text.splitlines() if not line.startswith("#")]
    assert [r[0] for r in rows] == [
        "DCGM_FI_PROF_GR_ENGINE_ACTIVE", "DCGM_FI_PROF_SM_ACTIVE", "DCGM_FI_PROF_SM_OCCUPANCY",
        "DCGM_FI_PROF_DRAM_ACTIVE", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE", "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
    ]  # fmt: skip
    assert all(len(r) == 3 and r[1] == "gauge" and r[2] for r in rows)
    assert text.endswith("\n")
    fields = {r[0] for r in rows}
    joined = {field for field, *_rest in _monitoring.DCGM_COUNTERS}
    rules = _monitoring.render_rules([{"host": "h"}])
    assert joined <= fields and all(f"({field}," in rules for field in joined)  # every counter reaches a slot series
