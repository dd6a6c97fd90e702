# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Services, slots and capacity results for the dashboard tests: Triton with its latency histogram on, an SLA and a
capacity result; vLLM (a histogram of its own) without either; a generic server without a histogram."""

from __future__ import annotations

import copy

SLOTS = {
    "chat": {"gpu_uuid": "GPU-a", "profile": "3g.40gb", "memory_mib": 40192, "mig_uuid": "MIG-chat"},
    "ocr": {"gpu_uuid": "GPU-a", "profile": "1g.10gb", "memory_mib": 9856, "mig_uuid": "MIG-ocr"},
    "embed": {"gpu_uuid": "GPU-a", "profile": "1g.10gb", "memory_mib": 9856, "mig_uuid": "MIG-embed"},
}
SPECS = [
    {
        "name": "chat",
        "slot": "chat",
        "server": "triton",
        "command": ["/opt/tritonserver/bin/tritonserver"],
        "port": 8000,
        "backend_port": 18000,
        "model": {"name": "resnet", "dir": "/srv/models"},
        "limits": {"max_concurrency": 8, "max_queue": 16, "queue_timeout": "500ms"},
        "classes": [{"name": "fast", "weight": 3}, {"name": "background", "max_queue": 64}],
        "sla": {"p95_ms": 200, "p99_ms": 400, "target_rps": 9},
        "extra_args": ["--metrics-config", "histogram_latencies=true"],
    },
    {
        "name": "ocr",
        "slot": "ocr",
        "server": "vllm",
        "command": ["/usr/bin/vllm"],
        "port": 8001,
        "backend_port": 18010,
        "model": {"name": "ocr-model"},
    },
    {"name": "embed", "slot": "embed", "command": ["/usr/local/bin/embedder"], "port": 8002, "backend_port": 18020},
]
# The monitored hosts, as gpu.mig.prometheus_rules takes them: gpu-2 runs chat and ocr only.
HOSTS = [
    {"host": "gpu-1", "services": SPECS, "slots": SLOTS},
    {"host": "gpu-2", "services": copy.deepcopy(SPECS[:2]), "slots": SLOTS},
]
# As gpu.mig.capacity_test writes them (the parts the rules read).
CAPACITY_RESULTS = [
    {
        "schema": "gpu.mig/capacity/v1",
        "service": {"service": "chat"},
        "capacity": {"sustained_rps": 12.5, "knee_rps": 15, "latency_ms": {"p95": 150, "p99": 300}},
    }
]
