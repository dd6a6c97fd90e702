# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The rules' HAProxy arithmetic against a real HAProxy (2.6, Debian 12) on 127.0.0.1.

Two services behind the rendered admission layer: ``slow`` (the synthetic server: 1 s per request, request timeout
800 ms, concurrency 2 and queue 2) gets 12 requests at once and answers 2 times 504 (server timeout) and 10 times 503
(8 queue full, 2 queue timeout); ``fail`` (a stub that answers 500) gets 5 requests one after another, with a queue of 4
(with no queue, a request that arrives while HAProxy still counts the previous one on the server gets the 503 that a zero
queue promises; seen on CI). HAProxy's exporter is scraped, its counters become promtool input series (the scraped count
per second, so the rates are exact), and the generated recording rules must give exactly what the clients saw: admission
503s as ``rejected``, 504s as ``timeouts``, the server's 500s as ``errors``.
"""

from __future__ import annotations

import http.client
import importlib.util
import math
import subprocess
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

from ansible_collections.gpu.mig.plugins.module_utils._capacity.analysis import parse_prometheus
from ansible_collections.gpu.mig.plugins.plugin_utils import monitoring as _monitoring
from ansible_collections.gpu.mig.plugins.plugin_utils import services as _services

# The fixtures that run the synthetic server and HAProxy (tests/unit/services/conftest.py), shared, not copied.
_spec = importlib.util.spec_from_file_location(
    "services_fixtures", Path(__file__).parents[2] / "services" / "conftest.py"
)
_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixtures)
free_port, processes, synthetic_server, haproxy = (
    _fixtures.free_port, _fixtures.processes, _fixtures.synthetic_server, _fixtures.haproxy)  # fmt: skip

PROMTOOL = "/usr/bin/promtool"
SLOTS = {"s0": {"gpu_index": 0, "gpu_uuid": "GPU-a", "profile": "1g.10gb", "memory_mib": 9856},
         "s1": {"gpu_index": 0, "gpu_uuid": "GPU-a", "profile": "1g.10gb", "memory_mib": 9856}}  # fmt: skip
COUNTERS = ("haproxy_backend_http_requests_total", "haproxy_backend_http_responses_total",
            "haproxy_server_http_responses_total", "haproxy_backend_response_errors_total")  # fmt: skip


class _Failing(BaseHTTPRequestHandler):
    """Ready for the health check, 500 for every inference."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = b'{"error": "model crashed"}'
        self.send_response(500)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return


def _infer(port: int, barrier: threading.Barrier | None = None) -> int:
    if barrier is not None:
        barrier.wait()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/v2/models/m/infer", body="{}", headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def test_rejected_timeouts_and_errors_match_what_clients_saw(haproxy, synthetic_server, free_port, tmp_path):
    stub = ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    try:
        slow_port, fail_port, stats = free_port(), free_port(), free_port()
        specs = [
            {"name": "slow", "slot": "s0", "command": ["/bin/true"], "listen": "127.0.0.1", "port": slow_port,
             "backend_port": synthetic_server(2, 1000),
             "limits": {"max_concurrency": 2, "max_queue": 2, "queue_timeout": "200ms", "request_timeout": "800ms"}},
            {"name": "fail", "slot": "s1", "command": ["/bin/true"], "listen": "127.0.0.1", "port": fail_port,
             "backend_port": stub.server_address[1], "limits": {"max_queue": 4}},
        ]  # fmt: skip
        hosts = [{"host": "h", "address": "127.0.0.1", "services": specs, "slots": SLOTS,
                  "haproxy_stats_bind": f"127.0.0.1:{stats}"}]  # fmt: skip
        services = _monitoring.check_hosts(hosts)[0].services
        haproxy(_services.render_haproxy(list(services), stats_bind=f"127.0.0.1:{stats}"), stats)
        barrier = threading.Barrier(12)
        with ThreadPoolExecutor(12) as pool:
            slow = list(pool.map(lambda _i: _infer(slow_port, barrier), range(12)))
        fail = [_infer(fail_port) for _i in range(5)]
        with urllib.request.urlopen(f"http://127.0.0.1:{stats}/metrics", timeout=5) as response:
            scraped = parse_prometheus(response.read().decode())
    finally:
        stub.shutdown()
        stub.server_close()
    assert sorted(slow) == [503] * 10 + [504] * 2 and fail == [500] * 5

    inputs = []
    for name, labels, value in scraped:
        ours = name.startswith(("haproxy_backend_", "haproxy_server_")) and labels.get("proxy", "").startswith("be_")
        if ours and not math.isnan(value):
            values = f"0+{value * 60:g}x20" if name in COUNTERS else f"{value:g}x20"
            text = ",".join(f'{k}="{v}"' for k, v in {**labels, "host": "h"}.items())
            inputs.append({"series": f"{name}{{{text}}}", "values": values})
    seen = {  # as the clients counted them, one such burst per second
        ("slow", "requests"): 12, ("slow", "rejected"): 10, ("slow", "timeouts"): 2, ("slow", "errors"): 0,
        ("fail", "requests"): 5, ("fail", "rejected"): 0, ("fail", "timeouts"): 0, ("fail", "errors"): 5,
    }  # fmt: skip
    exprs = [
        {"expr": f'{_monitoring.SERVICE_SERIES[key]}{{service="{service}"}}', "eval_time": "10m",
         "exp_samples": [{"labels": f'{_monitoring.SERVICE_SERIES[key]}{{host="h", service="{service}", slot="{slot}"}}',
                          "value": count}]}
        for (service, key), count in seen.items()
        for slot in ({"slow": "s0", "fail": "s1"}[service],)
    ]  # fmt: skip
    (tmp_path / "rules.yml").write_text(_monitoring.render_rules(hosts))
    test = {"interval": "1m", "input_series": inputs, "promql_expr_test": exprs}
    (tmp_path / "test.yml").write_text(yaml.safe_dump({"rule_files": ["rules.yml"], "tests": [test]}))
    result = subprocess.run([PROMTOOL, "test", "rules", str(tmp_path / "test.yml")], capture_output=True, text=True,
                            timeout=60, check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
