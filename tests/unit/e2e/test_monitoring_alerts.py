# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""End to end on loopback: the monitoring role's files, run by the real Prometheus, Alertmanager and node_exporter.

One ansible-playbook run renders the inference_service role's HAProxy admission layer (two services, chat and ocr, in
front of two synthetic servers: 2 workers x 100 ms, so 20 RPS each) and the monitoring role's Prometheus
configuration, file_sd targets, rules (chat's capacity result: 10 RPS sustained, knee 14), Alertmanager configuration
(a webhook receiver) and the daemons' arguments. The test then runs haproxy, prometheus-node-exporter,
prometheus-alertmanager and prometheus with exactly those files (scrape and evaluation every second, ``for: 2s``)
and drives chat, 127.0.0.1 only, every phase bounded in requests and time:

1. quiet, both at 4 RPS: no alert;
2. chat at 12 RPS, above 80 % of its measured 10 RPS but within what it serves: GpuMigTrafficNearCapacity fires,
   no backpressure;
3. a 3x spike, chat at 60 RPS: GpuMigBackpressure and GpuMigQueueNotDraining fire, in Prometheus within their
   condition window + ``for`` + one scrape + one evaluation of the first 503, then in Alertmanager and at the webhook;
4. chat back to 4 RPS: every chat alert resolves, in Prometheus, in Alertmanager and at the webhook.

ocr stays at 4 RPS throughout and none of its alerts is ever pending or firing.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import pytest

from ansible_collections.gpu.mig.tests.unit import process_fixtures

processes = process_fixtures.processes  # the fixture, for the tests here

REPO = Path(__file__).resolve().parents[3]
SERVER = REPO / "tests/servers/synthetic_server.py"
DAEMONS = ("haproxy", "prometheus", "prometheus-alertmanager", "prometheus-node-exporter")
SCRAPE_S = EVAL_S = 1.0
FOR_S = 2.0
RATE_WINDOW_S = 3.0
QUEUE_WINDOW_S = 2.0
SUSTAINED_RPS, KNEE_RPS, CAPACITY_PERCENT = 10.0, 14.0, 80
SERVED_RPS = 20.0  # 2 workers x 100 ms
SLACK_S = 1.5  # polling every 0.2 s, HTTP round trips and a loaded 2-core machine
SLOTS = {
    name: {"gpu_index": 0, "gpu_uuid": "GPU-11111111-2222-3333-4444-555555555555", "gpu_name": "NVIDIA A100-SXM4-40GB",
           "profile": "1g.5gb", "memory_mib": 4864, "gpu_instance_id": gi, "compute_instance_id": 0,
           "mig_uuid": f"MIG-{gi:08d}-aaaa-bbbb-cccc-dddddddddddd", "placement": {"start": gi, "size": 1}}
    for gi, name in ((7, "chat"), (8, "ocr"))
}  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def wait_until(what: str, check: Callable[[], object], deadline_s: float, every_s: float = 0.2) -> object:
    """Poll ``check`` until it returns something true (returned) or the deadline passes (assertion naming ``what``)."""
    end = time.monotonic() + deadline_s
    last: object = None
    while time.monotonic() < end:
        try:
            last = check()
        except OSError as exc:  # a daemon not listening yet
            last = exc
        if last and not isinstance(last, OSError):
            return last
        time.sleep(every_s)
    raise AssertionError(f"{what}: not within {deadline_s:g} s (last: {last!r})")


class Webhook(http.server.ThreadingHTTPServer):
    """Alertmanager's webhook receiver on 127.0.0.1: every notification, with when it came."""

    def __init__(self) -> None:
        self.notifications: list[tuple[float, dict]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.notifications.append((time.monotonic(), json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                return

        super().__init__(("127.0.0.1", 0), Handler)

    def seen(self, status: str, alertname: str, service: str) -> bool:
        return any(
            alert["status"] == status and alert["labels"].get("alertname") == alertname
            and alert["labels"].get("service") == service
            for _when, note in self.notifications for alert in note["alerts"]
        )  # fmt: skip


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    server = Webhook()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def synthetic(processes: Callable[..., subprocess.Popen]) -> int:
    proc = processes([sys.executable, str(SERVER), "--port", "0", "--workers", "2", "--mean-ms", "100"],
                     stdout=subprocess.PIPE, text=True)  # fmt: skip
    line = proc.stdout.readline()
    assert line.startswith("LISTENING "), f"synthetic server did not start: {line!r}"
    return int(line.split()[1])


def service(name: str, port: int, backend_port: int) -> dict:
    return {"name": name, "slot": name, "server": "generic", "command": ["/usr/bin/true"], "listen": "127.0.0.1",
            "port": port, "backend_port": backend_port,
            "limits": {"max_concurrency": 2, "max_queue": 4, "queue_timeout": "500ms", "request_timeout": "5s"},
            "sla": {"p95_ms": 300, "p99_ms": 500, "target_rps": 8}}  # fmt: skip


def deploy(tmp: Path, ports: dict, backends: dict, webhook_url: str) -> subprocess.CompletedProcess:
    """Both roles in one run, as site.yml's services and monitoring stages run them; every file under ``tmp``."""
    services_root = tmp / "services-root"
    (services_root / "etc/gpu-mig").mkdir(parents=True)
    slot_map = services_root / "etc/gpu-mig/slots.json"
    slot_map.write_text(json.dumps(SLOTS))
    capacity = tmp / "capacity-chat.json"
    capacity.write_text(json.dumps({
        "schema": "gpu.mig/capacity/v1", "service": {"service": "chat", "profile": "1g.5gb"},
        "sla": {"percentiles_ms": {"p95": 300, "p99": 500}},
        "capacity": {"sustained_rps": SUSTAINED_RPS, "knee_rps": KNEE_RPS, "latency_ms": {"p95": 101, "p99": 104},
                     "reached": True},
    }))  # fmt: skip
    mon = tmp / "monitoring"
    host_vars = {
        "ansible_connection": "local", "ansible_host": "127.0.0.1", "ansible_python_interpreter": sys.executable,
        "gpu_mig_services": [service("chat", ports["chat"], backends["chat"]),
                             service("ocr", ports["ocr"], backends["ocr"])],
        "inference_service_root": str(services_root), "inference_service_manage_systemd": False,
        "inference_service_manage_users": False, "inference_service_haproxy_stats_bind": f"127.0.0.1:{ports['stats']}",
        "inference_service_haproxy_global": ["maxconn 512"],
        "monitoring_root": "/", "monitoring_server": True, "monitoring_install_packages": False,
        "monitoring_manage_systemd": False, "monitoring_collector": False,
        "monitoring_slot_map": str(slot_map), "monitoring_textfile_dir": str(mon / "textfile"),
        "monitoring_defaults_dir": str(mon / "default"), "monitoring_unit_dir": str(mon / "units"),
        "monitoring_prometheus_config": str(mon / "prometheus.yml"), "monitoring_rules_dir": str(mon / "rules"),
        "monitoring_targets_dir": str(mon / "targets"), "monitoring_alertmanager_config": str(mon / "alertmanager.yml"),
        "monitoring_node_exporter_listen": f"127.0.0.1:{ports['node']}",
        "monitoring_prometheus_listen": f"127.0.0.1:{ports['prometheus']}",
        "monitoring_alertmanager_listen": f"127.0.0.1:{ports['alertmanager']}",
        "monitoring_scrape_interval": f"{SCRAPE_S:g}s", "monitoring_evaluation_interval": f"{EVAL_S:g}s",
        "monitoring_capacity_results": [str(capacity)],
        "monitoring_rule_options": {"for": f"{FOR_S:g}s", "rate_window": f"{RATE_WINDOW_S:g}s",
                                    "queue_window": f"{QUEUE_WINDOW_S:g}s", "capacity_percent": CAPACITY_PERCENT},
        "monitoring_alertmanager_webhook_url": webhook_url, "monitoring_alertmanager_group_wait": "1s",
        "monitoring_alertmanager_group_interval": "1s",
    }  # fmt: skip
    inventory = {"all": {"hosts": {"gpu1": host_vars}}}
    play = {"hosts": "gpu1", "gather_facts": False,
            "roles": ["gpu.mig.inference_service", "gpu.mig.monitoring"]}  # fmt: skip
    (tmp / "inventory.json").write_text(json.dumps(inventory))
    (tmp / "play.yml").write_text(json.dumps([play]))
    env = {**os.environ, "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible-tmp"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_COLLECTIONS_PATH": os.environ.get("ANSIBLE_COLLECTIONS_PATH", str(REPO / ".build/collections"))}  # fmt: skip
    argv = [
        str(Path(sys.executable).parent / "ansible-playbook"),
        "-i",
        str(tmp / "inventory.json"),
        str(tmp / "play.yml"),
    ]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=180, check=False)


def daemon_args(path: Path) -> list[str]:
    """The ARGS the role wrote for a Debian unit (``ExecStart=/usr/bin/<daemon> $ARGS``)."""
    line = next(line for line in path.read_text().splitlines() if line.startswith("ARGS="))
    (value,) = shlex.split(line[len("ARGS=") :])  # the quoted value, which $ARGS splits at whitespace
    return value.split()


class Load:
    """Open-loop traffic on 127.0.0.1: each port gets requests at its rate on a fixed schedule, for a bounded time."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(96)
        self.first_503: dict[int, float] = {}
        self.sent: dict[int, int] = {}
        self.statuses: dict[int, list[int]] = {}

    def _one(self, port: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request(
                "POST", "/v2/models/m/infer", body=b'{"inputs": []}', headers={"Content-Type": "application/json"}
            )
            status = conn.getresponse().status
        except OSError:
            status = 0
        finally:
            conn.close()
        if status == 503:
            self.first_503.setdefault(port, time.monotonic())
        self.statuses.setdefault(port, []).append(status)

    def run(self, rates: dict[int, float], seconds: float) -> None:
        """Send ``rates[port]`` requests per second to each port for ``seconds``; return when the last is sent."""
        start = time.monotonic()
        schedule = sorted((start + i / rps, port) for port, rps in rates.items() for i in range(int(rps * seconds)))
        for due, port in schedule:
            time.sleep(max(0.0, due - time.monotonic()))
            self.sent[port] = self.sent.get(port, 0) + 1
            self.pool.submit(self._one, port)

    def close(self) -> None:
        self.pool.shutdown(wait=True)


class Watch:
    """Prometheus' and Alertmanager's alerts, polled in a thread: when each (alert, service) was first pending,
    first firing and last seen, and every service seen in any alert."""

    def __init__(self, prometheus: str, alertmanager: str) -> None:
        self.prometheus, self.alertmanager = prometheus, alertmanager
        self.first: dict[tuple[str, str, str], float] = {}
        self.active_at: dict[tuple[str, str], float] = {}
        self.services_seen: set[str] = set()
        self.current: list[dict] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self.stop.wait(0.2):
            try:
                alerts = get_json(f"{self.prometheus}/api/v1/alerts")["data"]["alerts"]
                managed = get_json(f"{self.alertmanager}/api/v2/alerts?active=true")
            except OSError:
                continue
            now = time.monotonic()
            for alert in alerts:
                key = (alert["labels"]["alertname"], alert["labels"].get("service", ""))
                self.services_seen.add(key[1])
                self.first.setdefault((*key, alert["state"]), now)
                self.active_at.setdefault(key, now - (time.time() - _epoch(alert["activeAt"])))
            for alert in managed:
                key = (alert["labels"]["alertname"], alert["labels"].get("service", ""))
                self.services_seen.add(key[1])
                self.first.setdefault((*key, "alertmanager"), now)
            self.current = [*alerts, *({"labels": a["labels"], "state": "alertmanager"} for a in managed)]

    def active(self, service: str) -> set[tuple[str, str]]:
        """(alertname, state) of the service's alerts as last polled; Alertmanager's have state ``alertmanager``."""
        return {(a["labels"]["alertname"], a["state"]) for a in self.current if a["labels"].get("service") == service}


def _epoch(stamp: str) -> float:
    """Prometheus' RFC 3339 activeAt (UTC, nanoseconds) in seconds since the epoch."""
    head, _dot, fraction = stamp.rstrip("Z").partition(".")
    return datetime.fromisoformat(head + "+00:00").timestamp() + float("0." + (fraction or "0"))


def test_a_spike_fires_its_services_alerts_and_only_those(tmp_path: Path, processes, webhook: Webhook):
    missing = [daemon for daemon in DAEMONS if not shutil.which(daemon)]
    assert not missing, f"apt-get install -y --no-install-recommends {' '.join(missing)} (Debian's packages)"
    ports = {key: free_port() for key in ("stats", "chat", "ocr", "node", "prometheus", "alertmanager")}
    backends = {"chat": synthetic(processes), "ocr": synthetic(processes)}
    run = deploy(tmp_path, ports, backends, f"http://127.0.0.1:{webhook.server_address[1]}/hook")
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]

    mon = tmp_path / "monitoring"
    rules = (mon / "rules/gpu-mig.rules.yml").read_text()
    assert f"> {SUSTAINED_RPS * CAPACITY_PERCENT / 100:g}" in rules  # the threshold came from the capacity result
    logs = tmp_path / "logs"
    logs.mkdir()

    def daemon(name: str, argv: list[str]) -> None:
        with (logs / f"{name}.log").open("w") as log:
            processes(argv, stdout=log, stderr=subprocess.STDOUT)

    daemon("haproxy", ["haproxy", "-db", "-f", str(tmp_path / "services-root/etc/haproxy/haproxy.cfg")])
    daemon("node", ["prometheus-node-exporter", *daemon_args(mon / "default/prometheus-node-exporter")])
    daemon("alertmanager", ["prometheus-alertmanager", *daemon_args(mon / "default/prometheus-alertmanager"),
                            f"--storage.path={tmp_path / 'am-data'}"])  # fmt: skip
    daemon("prometheus", ["prometheus", *daemon_args(mon / "default/prometheus"),
                          f"--storage.tsdb.path={tmp_path / 'tsdb'}"])  # fmt: skip
    prometheus, alertmanager = (f"http://127.0.0.1:{ports[k]}" for k in ("prometheus", "alertmanager"))

    def targets_up() -> list:
        active = get_json(f"{prometheus}/api/v1/targets")["data"]["activeTargets"]
        # node_exporter, HAProxy and both servers' /metrics, all labelled with the host.
        return len(active) == 4 and all(t["health"] == "up" and t["labels"]["host"] == "gpu1" for t in active)

    wait_until("every target scraped and up", targets_up, 20)
    wait_until("Alertmanager ready", lambda: get_json(f"{alertmanager}/api/v2/status"), 10)

    load, watch = Load(), Watch(prometheus, alertmanager)
    watch.thread.start()
    try:
        load.run({ports["chat"]: 4, ports["ocr"]: 4}, 4)
        assert watch.active("chat") == set(), watch.current

        load.run({ports["chat"]: 12, ports["ocr"]: 4}, RATE_WINDOW_S + FOR_S + EVAL_S + 2)
        wait_until("GpuMigTrafficNearCapacity firing for chat at 12 RPS",
                   lambda: ("GpuMigTrafficNearCapacity", "firing") in watch.active("chat"), 4)  # fmt: skip
        assert not {name for name, _state in watch.active("chat")} & {"GpuMigBackpressure", "GpuMigQueueNotDraining"}
        assert 503 not in load.statuses[ports["chat"]]

        spike = threading.Thread(target=load.run, args=({ports["chat"]: 3 * SERVED_RPS, ports["ocr"]: 4}, 9))
        spike.start()
        for name, condition_s in (("GpuMigBackpressure", 0.0), ("GpuMigQueueNotDraining", QUEUE_WINDOW_S)):
            wait_until(f"{name} firing for chat", lambda n=name: (n, "firing") in watch.active("chat"), 9)
            fired = watch.first[(name, "chat", "firing")]
            # Firing within the condition's own window + for + one scrape + one evaluation of the first 503.
            assert fired - load.first_503[ports["chat"]] <= condition_s + FOR_S + SCRAPE_S + EVAL_S + SLACK_S, name
            assert fired - watch.active_at[(name, "chat")] <= FOR_S + EVAL_S + SLACK_S, name
            wait_until(f"{name} in Alertmanager", lambda n=name: (n, "alertmanager") in watch.active("chat"), 3)
        spike.join()

        load.run({ports["chat"]: 4, ports["ocr"]: 4}, RATE_WINDOW_S + EVAL_S)
        wait_until("every chat alert resolved in Prometheus and Alertmanager",
                   lambda: watch.active("chat") == set(), RATE_WINDOW_S + EVAL_S + 2 * SLACK_S)  # fmt: skip
        wait_until("the resolved notification at the webhook",
                   lambda: webhook.seen("resolved", "GpuMigBackpressure", "chat"), 4)  # fmt: skip
    finally:
        watch.stop.set()
        watch.thread.join()
        load.close()

    for name in ("GpuMigBackpressure", "GpuMigQueueNotDraining"):
        assert webhook.seen("firing", name, "chat"), webhook.notifications
    assert "ocr" not in watch.services_seen, [key for key in watch.first if key[1] == "ocr"]
    ocr = load.statuses[ports["ocr"]]
    assert set(ocr) == {200} and len(ocr) == load.sent[ports["ocr"]], sorted(set(ocr))  # the neighbour: all served
    assert load.statuses[ports["chat"]].count(503) > 100  # the spike really hit the admission limits
