# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The rendered HAProxy admission layer, run for real on 127.0.0.1 in front of the synthetic server.

Overload answers 503 + Retry-After fast (queue full at once, queue timeout after ``queue_timeout``), every admitted
request completes, none is lost; a background flood does not delay the fast class.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ansible_collections.gpu.mig.plugins.plugin_utils import services as _services

SLOTS = {"s0": {"gpu_index": 0, "gpu_uuid": "GPU-0", "profile": "1g.10gb", "memory_mib": 9856}}


@dataclass
class Reply:
    status: int
    seconds: float
    retry_after: str | None
    body: str


def infer(port: int, request_class: str | None = None, barrier: threading.Barrier | None = None) -> Reply:
    """One V2 inference request; the time counts from just before the connection is opened."""
    if barrier is not None:
        barrier.wait()
    start = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Content-Type": "application/json", **({"X-Request-Class": request_class} if request_class else {})}
    body = json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]})
    try:
        conn.request("POST", "/v2/models/m/infer", body=body, headers=headers)
        response = conn.getresponse()
        text = response.read().decode()
        return Reply(response.status, time.monotonic() - start, response.getheader("Retry-After"), text)
    finally:
        conn.close()


def deploy(fixtures: tuple, limits: dict, classes: list | None, mean_ms: float) -> int:
    """Render the service behind the synthetic server, start HAProxy; return the public port."""
    haproxy, synthetic_server, free_port = fixtures
    backend, port, stats = synthetic_server(limits["max_concurrency"], mean_ms), free_port(), free_port()
    spec = {"name": "svc", "slot": "s0", "command": ["/bin/true"], "listen": "127.0.0.1", "port": port,
            "backend_port": backend, "limits": limits, "classes": classes}  # fmt: skip
    services, _warnings = _services.validate([spec], SLOTS, reserved_ports=(stats,))
    haproxy(_services.render_haproxy(services, stats_bind=f"127.0.0.1:{stats}"), stats)
    return port


def test_overload_answers_503_fast_and_loses_nothing(haproxy, synthetic_server, free_port):
    c = 4
    limits = {"max_concurrency": c, "max_queue": c, "queue_timeout": "250ms", "request_timeout": "5s"}
    port = deploy((haproxy, synthetic_server, free_port), limits, None, mean_ms=600)
    barrier = threading.Barrier(3 * c)
    with ThreadPoolExecutor(3 * c) as pool:
        replies = list(pool.map(lambda _i: infer(port, barrier=barrier), range(3 * c)))

    assert len(replies) == 3 * c  # every request got an HTTP answer: none lost or reset
    ok = [r for r in replies if r.status == 200]
    rejected = [r for r in replies if r.status == 503]
    assert len(ok) == c, [(r.status, r.body) for r in replies]
    assert all(json.loads(r.body)["model_name"] == "m" and 0.55 < r.seconds < 2.0 for r in ok)
    assert len(rejected) == 2 * c
    assert all(r.retry_after == "1" and r.seconds < 0.25 + 0.35 for r in rejected), rejected
    full = [r for r in rejected if "queue full" in r.body]
    timed_out = [r for r in rejected if "overloaded" in r.body]
    assert full and timed_out, rejected  # both paths: queue cap at once, queue timeout after 250 ms
    assert max(r.seconds for r in full) < 0.2 <= min(r.seconds for r in timed_out)


def test_background_flood_does_not_delay_fast_requests(haproxy, synthetic_server, free_port):
    limits = {"max_concurrency": 4, "max_queue": 2, "queue_timeout": "1s", "request_timeout": "10s"}
    classes = [{"name": "fast"}, {"name": "background", "max_queue": 50, "queue_timeout": "8s"}]
    port = deploy((haproxy, synthetic_server, free_port), limits, classes, mean_ms=150)
    with ThreadPoolExecutor(20) as pool:
        flood = [pool.submit(infer, port, "background") for _i in range(16)]
        time.sleep(0.3)  # the background queue is now deep: 16 requests, 2 at a time, 150 ms each
        fast = [infer(port, "fast") for _i in range(4)]
        background = [f.result() for f in flood]

    assert [r.status for r in fast] == [200] * 4
    assert max(r.seconds for r in fast) < 0.15 + 0.15, fast
    assert [r.status for r in background] == [200] * 16  # admitted background work still completes
    assert max(r.seconds for r in background) > 1.0  # it really queued (16 / 2 x 150 ms = 1.2 s)
