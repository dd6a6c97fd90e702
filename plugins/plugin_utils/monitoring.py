# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Prometheus rules, file_sd targets, scrape config and dcgm-exporter counters for MIG-pinned services (PRIVATE).

Controller side and pure: the inventory's hosts (their service specs, slot maps and exporter listeners), the
capacity results of ``gpu.mig.capacity_test`` and the options go in; YAML/JSON-ready values come out. Every input is
checked by the rule tables below (the ``services.Rule`` language); all problems are raised at once.

Where each signal comes from (docs/monitoring.md):

- HAProxy's built-in exporter (``haproxy_backend_*{proxy="be_<service>_<class>"}``, HAProxy 2.6): requests, queue
  length, average queue and response time per class; admission 503s (queue full, queue timeout, no server) are the
  backend's 5xx minus the server's own 5xx minus the response errors (server timeouts 504 and bad responses 502),
  checked against a real HAProxy in tests/unit/plugins/plugin_utils/test_monitoring_haproxy.py.
- Each server's own ``/metrics``: latency histograms (vLLM ``vllm:e2e_request_latency_seconds``, MLServer
  ``rest_server_request_duration_seconds``, Triton ``nv_inference_first_response_histogram_ms`` only when started
  with ``--metrics-config histogram_latencies=true``) and the server's queue (Triton, vLLM).
- node_exporter: the NVML textfile collector's ``gpu_mig_*`` series and the systemd collector's
  ``node_systemd_service_restart_total`` (needs ``--collector.systemd --collector.systemd.enable-restarts-metrics``).
- dcgm-exporter (optional): per-GPU-instance profiling fields, joined to ``gpu_mig_slot_info`` on the parent GPU
  UUID and GPU instance id to carry ``slot``/``service``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Callable, Mapping

import yaml

from ansible_collections.gpu.mig.plugins.plugin_utils import services as _services
from ansible_collections.gpu.mig.plugins.plugin_utils.services import Rule, Service

CAPACITY_SCHEMA = "gpu.mig/capacity/v1"
RUNBOOK_URL = "https://github.com/gpu-mig/gpu.mig/blob/main/docs/monitoring.md#overload"
OVERLOAD_STEPS = (
    "Lower max_concurrency, reduce the batch, shift traffic to another slot or host, re-slice to a larger profile, "
    "add a GPU"
)
_STEPS_IN_A_SENTENCE = OVERLOAD_STEPS[0].lower() + OVERLOAD_STEPS[1:]
_DAY_MS = 86_400_000
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*", re.ASCII)
_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,252})", re.ASCII)
_LISTEN = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[0-9A-Za-z.*-]*):([0-9]{1,5})", re.ASCII)
_HOSTPORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[0-9A-Za-z][0-9A-Za-z.-]*):([0-9]{1,5})", re.ASCII)


class MonitoringError(_services.ServiceError):
    """The monitoring inputs are wrong; ``problems`` lists every reason, each naming the input and the fix."""


# ---------------------------------------------------------------------------------------------------------------------
# The series: what the rules record (the dashboard's vocabulary) and where the servers keep theirs
# ---------------------------------------------------------------------------------------------------------------------

# Per service (labels host, service, slot; queue/response time also class). Latency only where the server has a
# histogram; sustained/knee only where a capacity result was given.
SERVICE_SERIES = {
    "requests": "gpu_mig_service:requests:rate",
    "rejected": "gpu_mig_service:rejected:rate",
    "rejected_ratio": "gpu_mig_service:rejected:ratio",
    "errors": "gpu_mig_service:errors:rate",
    "timeouts": "gpu_mig_service:timeouts:rate",
    "error_ratio": "gpu_mig_service:errors:ratio",
    "queue_length": "gpu_mig_service:queue_length:sum",
    "queue_time": "gpu_mig_service:queue_time_seconds:avg",
    "response_time": "gpu_mig_service:response_time_seconds:avg",
    "server_queue_length": "gpu_mig_service:server_queue_length:sum",
    "latency_p50": "gpu_mig_service:latency_seconds:p50",
    "latency_p95": "gpu_mig_service:latency_seconds:p95",
    "latency_p99": "gpu_mig_service:latency_seconds:p99",
    "sustained_rps": "gpu_mig_service:sustained_rps",
    "knee_rps": "gpu_mig_service:knee_rps",
}
# Per slot (labels host, slot; the DCGM ones also service, gpu_uuid, gpu_instance_id).
SLOT_SERIES = {
    "memory_used_ratio": "gpu_mig_slot:memory_used:ratio",
    "gr_engine_active": "gpu_mig_slot:dcgm_gr_engine_active:ratio",
    "sm_active": "gpu_mig_slot:dcgm_sm_active:ratio",
    "sm_occupancy": "gpu_mig_slot:dcgm_sm_occupancy:ratio",
    "dram_active": "gpu_mig_slot:dcgm_dram_active:ratio",
    "fb_used_bytes": "gpu_mig_slot:dcgm_fb_used:bytes",
    "fb_free_bytes": "gpu_mig_slot:dcgm_fb_free:bytes",
}
# dcgm-exporter counters file: field, Prometheus type, help; the per-instance fields that work on MIG
# (DCGM_FI_DEV_GPU_UTIL does not) and the slot series each becomes (FB in MiB, recorded in bytes).
DCGM_COUNTERS = (
    ("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "gauge", "Ratio of time the graphics engine is active.", "gr_engine_active", 1),
    ("DCGM_FI_PROF_SM_ACTIVE", "gauge", "Ratio of cycles an SM has at least one warp assigned.", "sm_active", 1),
    ("DCGM_FI_PROF_SM_OCCUPANCY", "gauge", "Ratio of warps resident on an SM to its maximum.", "sm_occupancy", 1),
    ("DCGM_FI_PROF_DRAM_ACTIVE", "gauge", "Ratio of cycles the device memory interface is active.", "dram_active", 1),
    ("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB).", "fb_used_bytes", 1048576),
    ("DCGM_FI_DEV_FB_FREE", "gauge", "Framebuffer memory free (in MiB).", "fb_free_bytes", 1048576),
)


@dataclass(frozen=True)
class Histogram:
    """A server's request-latency histogram: bucket series, extra selector, factor to seconds, the argument it needs."""

    bucket: str
    selector: str = ""
    to_seconds: float = 1.0
    needs_arg: str = ""


LATENCY_HISTOGRAMS = {
    "vllm": Histogram("vllm:e2e_request_latency_seconds_bucket"),
    "mlserver": Histogram("rest_server_request_duration_seconds_bucket", 'path=~".*/infer"'),
    "triton": Histogram("nv_inference_first_response_histogram_ms_bucket", "", 0.001, "histogram_latencies=true"),
}
SERVER_QUEUES = {"triton": "nv_inference_pending_request_count", "vllm": "vllm:num_requests_waiting"}
# Where each server kind serves /metrics: offset from backend_port (services.server_argv, mlserver_settings).
METRICS_PORT_OFFSET = {"triton": 2, "mlserver": 2, "vllm": 0, "generic": 0}


def latency_histogram(service: Service) -> Histogram | None:
    """The latency histogram ``service``'s server exports (None: none, or not enabled by its arguments)."""
    histogram = LATENCY_HISTOGRAMS.get(service.server)
    if histogram and histogram.needs_arg and not any(histogram.needs_arg in arg for arg in service.extra_args):
        return None
    return histogram


def recorded_series(service: Service) -> dict[str, str]:
    """The recording rules' series names for ``service`` (keys of SERVICE_SERIES it has); filter with ``service=``."""
    skip = set() if latency_histogram(service) else {"latency_p50", "latency_p95", "latency_p99"}
    if service.server not in SERVER_QUEUES:
        skip.add("server_queue_length")
    return {key: name for key, name in SERVICE_SERIES.items() if key not in skip}


# ---------------------------------------------------------------------------------------------------------------------
# The inputs' rules
# ---------------------------------------------------------------------------------------------------------------------

_DURATION = {"minimum": 1000, "maximum": _DAY_MS}
OPTION_RULES: Mapping[str, Rule] = {
    "rate_window": Rule("duration", "2m", "range of rate() and histogram_quantile()", default="2m", **_DURATION),
    "for": Rule("duration", "5m", "how long a condition holds before its alert fires", default="5m", minimum=0,
                maximum=_DAY_MS),
    "queue_window": Rule("duration", "10m", "a queue that never drains to the baseline in this window is growing",
                         default="10m", **_DURATION),
    "queue_baseline": Rule("int", 0, "requests queued at rest", default=0, minimum=0),
    "queue_time_percent": Rule("number", 50, "of each class's queue_timeout", default=50, maximum=100),
    "backpressure_percent": Rule("number", 1, "of requests answered 503 by the admission layer", default=1,
                                 maximum=100),
    "error_budget_percent": Rule("number", 1, "of requests failed by the server or timed out", default=1,
                                 maximum=100),
    "capacity_percent": Rule("number", 80, "of the measured sustained rate", default=80, maximum=100),
    "memory_percent": Rule("number", 90, "of the slice's GPU memory", default=90, maximum=100),
    "restart_window": Rule("duration", "15m", "a service restarted within it alerts", default="15m", **_DURATION),
    "collector_stale": Rule("duration", "5m", "age of the collector's last run", default="5m", **_DURATION),
    "unit_prefix": Rule("str", "inference-", "the inference_service role's unit prefix", default="inference-",
                        pattern=re.compile(r"[A-Za-z0-9@._-]*", re.ASCII)),
    "runbook_url": Rule("str", RUNBOOK_URL, "a URL or path without spaces; its #fragment is replaced per alert",
                        default=RUNBOOK_URL, pattern=re.compile(r"\S+", re.ASCII)),
}  # fmt: skip
HOST_RULES: Mapping[str, Rule] = {
    "host": Rule("str", "gpu1", "the inventory host name (letters, digits, . _ -)", required=True, pattern=_HOST),
    "address": Rule("str", "10.0.0.5", "how Prometheus reaches the host: a host name or IP address",
                    pattern=re.compile(r"[0-9A-Za-z][0-9A-Za-z.:-]*", re.ASCII)),
    "haproxy_stats_bind": Rule("str", "127.0.0.1:8405", "the HAProxy stats listener (inference_service role)",
                               default="127.0.0.1:8405", pattern=_LISTEN),
    "node_exporter_listen": Rule("str", ":9100", "node_exporter's --web.listen-address", default=":9100",
                                 pattern=_LISTEN),
    "dcgm_listen": Rule("str", ":9400", "dcgm-exporter's --address; leave out where it does not run",
                        pattern=_LISTEN),
}  # fmt: skip
# Each host also has ``services`` (specs, checked by services.validate) and ``slots`` (its slot map).
_HOST_DATA = ("services", "slots")
# The fields of a capacity_test result that the rules read, by their path in the result.
CAPACITY_RULES: Mapping[str, Rule] = {
    "schema": Rule("str", CAPACITY_SCHEMA, required=True, choices=(CAPACITY_SCHEMA,)),
    "service.service": Rule("str", "chat", "the service the test measured (capacity_test's service option)",
                            required=True),
    "capacity.sustained_rps": Rule("number", 180, "the sustained rate; a run that found none gives no threshold",
                                   required=True),
    "capacity.knee_rps": Rule("number", 207),
    "capacity.latency_ms.p95": Rule("number", 212, "p95 measured at the sustained rate"),
    "capacity.latency_ms.p99": Rule("number", 540, "p99 measured at the sustained rate"),
    "sla.percentiles_ms.p95": Rule("number", 300, "the SLA the test judged by"),
    "sla.percentiles_ms.p99": Rule("number", 800, "the SLA the test judged by"),
}  # fmt: skip
# prometheus_config's settings, besides external_labels (label name -> text) and scrape_configs_only (bool: only
# the scrape_configs section, for a Prometheus of one's own).
CONFIG_RULES: Mapping[str, Rule] = {
    "targets_dir": Rule("str", "/etc/prometheus/file_sd/gpu-mig", "an absolute directory", required=True,
                        pattern=re.compile(r"/[^\s*?]*", re.ASCII)),
    "rules_dir": Rule("str", "/etc/prometheus/rules.d/gpu-mig", "an absolute directory", required=True,
                      pattern=re.compile(r"/[^\s*?]*", re.ASCII)),
    "alertmanagers": Rule("strings", ["127.0.0.1:9093"], "host:port", default=[], pattern=_HOSTPORT),
    "scrape_interval": Rule("duration", "15s", default="15s", **_DURATION),
    "evaluation_interval": Rule("duration", "15s", default="15s", **_DURATION),
}  # fmt: skip


def _check(data: object, rules: Mapping[str, Rule], where: str, problem: Callable[[str], None]) -> dict:
    """``data`` (a mapping, or None for all defaults) by ``rules``; None marks a wrong value (reported)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problem(f"{where} must be a mapping with keys {', '.join(rules)}, got {_services._shown(data)}")
        data = {}
    return _services._check(data, rules, where, problem)


def _flatten(result: Mapping, paths: list[str]) -> dict:
    """``{"a.b": result["a"]["b"]}`` for each path; missing or non-mapping steps give None."""
    flat = {}
    for path in paths:
        value: object = result
        for step in path.split("."):
            value = value.get(step) if isinstance(value, dict) else None
        flat[path] = value
    return flat


@dataclass(frozen=True)
class Capacity:
    """The thresholds a capacity result gives one service."""

    sustained_rps: float
    knee_rps: float | None
    measured_ms: Mapping[str, float]  # p95/p99 measured at the sustained rate
    sla_ms: Mapping[str, float]  # p95/p99 of the SLA the test judged by


@dataclass(frozen=True)
class Host:
    """A validated host entry: its services and slot map, and the listeners Prometheus scrapes."""

    host: str
    address: str
    services: tuple[Service, ...]
    slots: Mapping
    haproxy_stats_bind: str
    node_exporter_listen: str
    dcgm_listen: str | None


def check_options(options: object) -> dict:
    """The rule options with defaults filled in (durations in ms), or MonitoringError naming every wrong one."""
    problems: list[str] = []
    values = _check(options, OPTION_RULES, "options", problems.append)
    if problems:
        raise MonitoringError(problems)
    return values


def check_hosts(hosts: object) -> list[Host]:
    """The host entries, each host's services validated against its slot map; MonitoringError lists every problem."""
    if not isinstance(hosts, list) or not hosts:
        raise MonitoringError([f"hosts must be a non-empty list of host mappings, got {_services._shown(hosts)}"])
    problems: list[str] = []
    parsed = []
    for index, entry in enumerate(hosts):
        label = f"hosts[{index}]"
        if isinstance(entry, dict) and isinstance(entry.get("host"), str) and _HOST.fullmatch(entry["host"]):
            label = f"host {entry['host']}"
        before = len(problems)

        def problem(text: str, label: str = label) -> None:
            problems.append(f"{label}: {text}")

        if not isinstance(entry, dict):
            problem(
                f"must be a mapping with keys {', '.join([*HOST_RULES, *_HOST_DATA])}, got {_services._shown(entry)}"
            )
            continue
        unknown = sorted(map(repr, set(entry) - set(HOST_RULES) - set(_HOST_DATA)))
        if unknown:
            problem(f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join([*HOST_RULES, *_HOST_DATA])}")
        fields = _services._check({k: v for k, v in entry.items() if k in HOST_RULES}, HOST_RULES, "", problem)
        for key in ("haproxy_stats_bind", "node_exporter_listen", "dcgm_listen"):
            if fields[key] and not 1 <= int(fields[key].rsplit(":", 1)[1]) <= 65535:
                problem(f"{key}: port {fields[key].rsplit(':', 1)[1]} is not a TCP port 1-65535")
        services = _host_services(entry, fields["haproxy_stats_bind"], problem)
        if len(problems) == before:
            parsed.append(
                Host(fields["host"], fields["address"] or fields["host"], services, entry.get("slots") or {},
                     fields["haproxy_stats_bind"], fields["node_exporter_listen"], fields["dcgm_listen"])
            )  # fmt: skip
    for name, owners in _services._duplicates([(h.host, h.host) for h in parsed]).items():
        problems.append(f"host {name}: listed {len(owners)} times; list each host once")
    if problems:
        raise MonitoringError(problems)
    return parsed


def _host_services(entry: dict, stats_bind: str | None, problem: Callable[[str], None]) -> tuple[Service, ...]:
    """The host's services by services.validate (its slot map; the HAProxy stats port reserved)."""
    specs, slots = entry.get("services", []), entry.get("slots", {})
    if specs == []:
        return ()
    port = int(stats_bind.rsplit(":", 1)[1]) if stats_bind else None
    try:
        services, _warnings = _services.validate(specs, slots, reserved_ports=(port,) if port else ())
    except _services.ServiceError as exc:
        for text in exc.problems:
            problem(text)
        return ()
    return tuple(services)


def check_capacity(results: object, services: Mapping[str, Service] | None) -> dict[str, Capacity]:
    """capacity_test results (JSON files or registered results) -> {service: Capacity}; MonitoringError otherwise.

    ``services`` (None: unknown, as when the hosts are wrong) are the names a result may measure.
    """
    if results is None:
        return {}
    if not isinstance(results, list):
        raise MonitoringError(
            [f"capacity must be a list of gpu.mig.capacity_test results, got {_services._shown(results)}"]
        )
    problems: list[str] = []
    found: dict[str, Capacity] = {}
    for index, result in enumerate(results):
        where = f"capacity[{index}]"
        if not isinstance(result, dict):
            problems.append(
                f"{where} must be a gpu.mig.capacity_test result (a mapping), got {_services._shown(result)}"
            )
            continue
        before = len(problems)
        values = _services._check(_flatten(result, list(CAPACITY_RULES)), CAPACITY_RULES, where, problems.append)
        name, sustained, knee = values["service.service"], values["capacity.sustained_rps"], values["capacity.knee_rps"]
        if sustained and knee and knee < sustained:
            problems.append(f"{where}: capacity.knee_rps {knee:g} is below capacity.sustained_rps {sustained:g}")
        if name and services is not None and name not in services:
            problems.append(
                f"{where}: service {name!r} is none of the services ({', '.join(sorted(services)) or 'none'}); "
                "run the capacity test with service set to the service's name"
            )
        elif name in found:
            problems.append(f"{where}: a second result for service {name}; give one result per service")
        if len(problems) == before:
            found[name] = Capacity(
                sustained,
                knee,
                {p: values[f"capacity.latency_ms.{p}"] for p in ("p95", "p99") if values[f"capacity.latency_ms.{p}"]},
                {p: values[f"sla.percentiles_ms.{p}"] for p in ("p95", "p99") if values[f"sla.percentiles_ms.{p}"]},
            )
    if problems:
        raise MonitoringError(problems)
    return found


# ---------------------------------------------------------------------------------------------------------------------
# Rules
# ---------------------------------------------------------------------------------------------------------------------


def _duration(millis: int) -> str:
    """A Prometheus duration in the largest unit that divides ``millis``: ``5m``, ``90s``, ``250ms``, ``0s``."""
    unit, size = next((u, n) for u, n in (("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)) if millis % n == 0)
    return f"{millis // size}{unit}" if millis else "0s"


@dataclass(frozen=True)
class _Alert:
    """One alerting rule: expression, severity, runbook anchor, summary tail, description (may use $value)."""

    name: str
    expr: str
    severity: str
    anchor: str
    summary: str
    description: str
    hold_ms: int | None = None  # None: the "for" option


def _runbook(options: dict, anchor: str) -> str:
    return options["runbook_url"].split("#", 1)[0] + "#" + anchor


def _alert_rule(alert: _Alert, options: dict, labels: dict, subject: str) -> dict:
    hold = options["for"] if alert.hold_ms is None else alert.hold_ms
    return {
        "alert": alert.name,
        "expr": alert.expr,
        "for": _duration(hold),
        "labels": {"severity": alert.severity, **labels},
        "annotations": {
            "summary": f"{subject} ({{{{ $labels.host }}}}): {alert.summary}",
            "description": alert.description,
            "runbook_url": _runbook(options, alert.anchor),
        },
    }


def _service_records(service: Service, capacity: Capacity | None, window: str) -> list[tuple[str, str]]:
    """(series key, expression) of the service's recording rules."""
    backends = "|".join(_services.backend_name(service, c) for c in service.classes)
    be = f'proxy=~"{backends}"'
    own = f'service="{service.name}"'

    def rate(metric: str, extra: str = "") -> str:
        return f"sum by (host) (rate({metric}{{{be}{extra}}}[{window}]))"

    def per_class(metric: str) -> str:
        named = f'label_replace({metric}{{{be}}}, "class", "$1", "proxy", "be_{service.name}_(.+)")'
        return f"max by (host, class) ({named})"

    five = ',code="5xx"'
    answered_5xx, server_5xx = (
        rate("haproxy_backend_http_responses_total", five),
        rate("haproxy_server_http_responses_total", five),
    )
    records = [
        ("requests", rate("haproxy_backend_http_requests_total")),
        ("errors", server_5xx),
        ("timeouts", rate("haproxy_backend_response_errors_total")),
        ("rejected", f"clamp_min({answered_5xx} - {server_5xx} - {rate('haproxy_backend_response_errors_total')}, 0)"),
        ("rejected_ratio", f"{SERVICE_SERIES['rejected']}{{{own}}} / ({SERVICE_SERIES['requests']}{{{own}}} > 0)"),
        ("error_ratio", f"({SERVICE_SERIES['errors']}{{{own}}} + {SERVICE_SERIES['timeouts']}{{{own}}}) / "
                        f"({SERVICE_SERIES['requests']}{{{own}}} > 0)"),
        ("queue_length", f"sum by (host) (haproxy_backend_current_queue{{{be}}})"),
        ("queue_time", per_class("haproxy_backend_queue_time_average_seconds")),
        ("response_time", per_class("haproxy_backend_response_time_average_seconds")),
    ]  # fmt: skip
    if service.server in SERVER_QUEUES:
        records.append(("server_queue_length", f"sum by (host) ({SERVER_QUEUES[service.server]}{{{own}}})"))
    histogram = latency_histogram(service)
    if histogram:
        selector = ",".join(s for s in (own, histogram.selector) if s)
        for quantile in ("50", "95", "99"):
            buckets = f"sum by (host, le) (rate({histogram.bucket}{{{selector}}}[{window}]))"
            expr = f"histogram_quantile(0.{quantile}, {buckets})"
            records.append(
                (f"latency_p{quantile}", expr if histogram.to_seconds == 1 else f"{expr} * {histogram.to_seconds:g}")
            )
    if capacity:
        records.append(("sustained_rps", f"vector({capacity.sustained_rps:g})"))
        if capacity.knee_rps:
            records.append(("knee_rps", f"vector({capacity.knee_rps:g})"))
    return records


def _service_alerts(service: Service, capacity: Capacity | None, options: dict) -> list[_Alert]:
    """The service's alerts, each only where its signal and threshold exist."""
    name, own = service.name, f'service="{service.name}"'
    series = {key: f"{metric}{{{own}}}" for key, metric in SERVICE_SERIES.items()}
    queue_window = _duration(options["queue_window"])
    budget = options["queue_time_percent"] / 100
    queue_terms = " or ".join(
        f'{SERVICE_SERIES["queue_time"]}{{{own},class="{c.name}"}} > {c.queue_timeout_ms * budget / 1000:g}'
        for c in service.classes
    )
    backends = "|".join(_services.backend_name(service, c) for c in service.classes)
    unit = f"{options['unit_prefix']}{name}.service"
    alerts = [
        _Alert("GpuMigQueueNotDraining", f"min_over_time({series['queue_length']}[{queue_window}]) > {options['queue_baseline']}",
               "warning", "overload", "admission queue not draining",
               f"The HAProxy queue of {name} stayed above {options['queue_baseline']} requests for {queue_window} "
               "(lowest {{ $value | humanize }}): arrivals exceed what the slot serves. " + OVERLOAD_STEPS + "."),
        _Alert("GpuMigQueueTimeOverBudget", queue_terms, "warning", "overload", "queue time over budget",
               f"Requests of {name} class {{{{ $labels.class }}}} wait {{{{ $value | humanizeDuration }}}} on average in "
               f"the admission queue, over {options['queue_time_percent']:g}% of the class's queue_timeout. "
               + OVERLOAD_STEPS + "."),
        _Alert("GpuMigBackpressure", f"{series['rejected_ratio']} > {options['backpressure_percent'] / 100:g}",
               "warning", "overload", "backpressure active (503 from the admission layer)",
               f"{{{{ $value | humanizePercentage }}}} of the requests of {name} are answered 503 + Retry-After "
               f"(queue full or queue timeout). " + OVERLOAD_STEPS + "."),
        _Alert("GpuMigErrorBudget", f"{series['error_ratio']} > {options['error_budget_percent'] / 100:g}",
               "critical", "errors", "errors and timeouts over the error budget",
               f"{{{{ $value | humanizePercentage }}}} of the requests of {name} failed in the server (5xx) or timed "
               f"out (504), over the {options['error_budget_percent']:g}% budget. Read the server's log; when it is "
               "overloaded: " + _STEPS_IN_A_SENTENCE + "."),
        _Alert("GpuMigServiceUnavailable", f'max by (host) (haproxy_backend_active_servers{{proxy=~"{backends}"}}) == 0',
               "critical", "errors", "no healthy server behind the admission layer",
               f"HAProxy's health check finds the server of {name} not ready: every request is answered 503. "
               f"Check systemctl status {unit} and its journal."),
    ]  # fmt: skip
    if latency_histogram(service):
        for quantile, limit in (("p95", service.p95_ms), ("p99", service.p99_ms)):
            limit = limit or (capacity.sla_ms.get(quantile) if capacity else None)
            measured = capacity.measured_ms.get(quantile) if capacity else None
            seen = (
                f" (the capacity test measured {measured:g} ms at {capacity.sustained_rps:g} RPS)" if measured else ""
            )
            if limit:
                alerts.append(_Alert(
                    f"GpuMigLatency{quantile.upper()}OverSla", f"{series[f'latency_{quantile}']} > {limit / 1000:g}",
                    "warning", "overload", f"{quantile} latency over the SLA",
                    f"The server's {quantile} latency of {name} is {{{{ $value | humanizeDuration }}}}, over the SLA's "
                    f"{limit:g} ms{seen}. " + OVERLOAD_STEPS + "."))  # fmt: skip
    if capacity:
        near = capacity.sustained_rps * options["capacity_percent"] / 100
        alerts.append(_Alert(
            "GpuMigTrafficNearCapacity", f"{series['requests']} > {near:g}", "warning", "overload",
            "traffic near the measured capacity: revisit slicing",
            f"{name} receives {{{{ $value | humanize }}}} requests/s, above {options['capacity_percent']:g}% of the "
            f"{capacity.sustained_rps:g} RPS its slot sustained in the capacity test. Plan ahead: " + _STEPS_IN_A_SENTENCE + "."))  # fmt: skip
        if capacity.knee_rps:
            alerts.append(_Alert(
                "GpuMigTrafficAboveKnee", f"{series['requests']} > {capacity.knee_rps:g}", "critical", "overload",
                "traffic above the knee of the capacity test",
                f"{name} receives {{{{ $value | humanize }}}} requests/s, above the knee at {capacity.knee_rps:g} RPS "
                "where the capacity test saw its queue stop draining. " + OVERLOAD_STEPS + "."))  # fmt: skip
    slot = f'slot="{service.slot}"'
    alerts += [
        _Alert("GpuMigSliceMemoryNearLimit",
               f"max by (host, slot) (gpu_mig_slot_memory_used_bytes{{{slot}}} / gpu_mig_slot_memory_total_bytes{{{slot}}}) "
               f"> {options['memory_percent'] / 100:g}", "warning", "memory", "GPU memory of the slice near its limit",
               f"Slot {service.slot} uses {{{{ $value | humanizePercentage }}}} of its GPU memory: the next batch or "
               "KV-cache growth may fail with out-of-memory. Reduce the batch or the KV cache, or re-slice to a "
               "larger profile."),
        _Alert("GpuMigServiceRestarting",
               f'max by (host) (increase(node_systemd_service_restart_total{{name="{unit}"}}[{_duration(options["restart_window"])}])) > 0',
               "warning", "restarts", "service restarting",
               f"systemd restarted {unit} within {_duration(options['restart_window'])} (a crash or an out-of-memory "
               "kill): read its journal; lower the batch or the model's memory if it ran out.", hold_ms=0),
        _Alert("GpuMigSlotMissing", f"max by (host) (gpu_mig_slot_present{{{slot}}}) == 0", "critical", "layout",
               f"slot {service.slot} is missing",
               f"The MIG device of slot {service.slot}, which {name} is pinned to, is gone: apply the layout again "
               "(gpu.mig.mig_layout or the boot applier), then restart the service."),
    ]  # fmt: skip
    return alerts


_HOST_ALERTS = (
    _Alert("GpuMigLayoutDrift", "max by (host, gpu_index, gpu_uuid) (gpu_mig_layout_drift) > 0", "warning", "layout",
           "MIG layout drift on GPU {{ $labels.gpu_index }}",
           "The MIG devices of GPU {{ $labels.gpu_index }} ({{ $labels.gpu_uuid }}) differ from the desired layout: "
           "run the mig_layout role (or reslice.yml) to converge it."),
    _Alert("GpuMigModePending", "max by (host, gpu_index, gpu_uuid) (gpu_mig_mode_pending != gpu_mig_mode_current)",
           "warning", "layout", "MIG mode change pending on GPU {{ $labels.gpu_index }}",
           "The MIG mode of GPU {{ $labels.gpu_index }} ({{ $labels.gpu_uuid }}) waits for a GPU reset or reboot: "
           "run the mig_mode role with a reset allowed, or reboot the host."),
)  # fmt: skip


def _host_alerts(options: dict) -> list[_Alert]:
    stale = _duration(options["collector_stale"])
    return [
        *_HOST_ALERTS,
        _Alert("GpuMigCollectorFailing",
               f"max by (host) (gpu_mig_collector_success) == 0 or "
               f"max by (host) (time() - gpu_mig_collector_last_run_timestamp_seconds) > {options['collector_stale'] / 1000:g}",
               "warning", "collector", "per-slice GPU metrics collector failing",
               f"The NVML collector failed or has not run for {stale}: slot, memory and drift alerts are blind. "
               "Check systemctl status gpu-mig-metrics.service (its timer runs it) and its journal."),
    ]  # fmt: skip


def _slot_records() -> list[dict]:
    """Slot memory ratio from the collector; dcgm-exporter fields joined to the slot map's GPU instances."""
    records = [{
        "record": SLOT_SERIES["memory_used_ratio"],
        "expr": "max by (host, slot) (gpu_mig_slot_memory_used_bytes / gpu_mig_slot_memory_total_bytes)",
    }]  # fmt: skip
    for field, _kind, _help, key, factor in DCGM_COUNTERS:
        uuid = f'label_replace({field}, "gpu_uuid", "$1", "UUID", "(.+)")'
        ids = f'label_replace({uuid}, "gpu_instance_id", "$1", "GPU_I_ID", "(.+)")'
        scaled = f"{ids} * {factor}" if factor != 1 else ids
        joined = (
            f"({scaled}) * on (host, gpu_uuid, gpu_instance_id) group_left (slot, service) (gpu_mig_slot_info == 1)"
        )
        records.append({
            "record": SLOT_SERIES[key],
            "expr": f"max by (host, slot, service, gpu_uuid, gpu_instance_id) ({joined})",
        })  # fmt: skip
    return records


def service_group(service: Service, capacity: Capacity | None, options: dict) -> dict:
    """The rule group of one service: its recording rules, then its alerts (labels service and slot)."""
    labels = {"service": service.name, "slot": service.slot}
    window = _duration(options["rate_window"])
    subject = f"{service.name} on slot {service.slot}"
    rules: list[dict] = [
        {"record": SERVICE_SERIES[key], "expr": expr, "labels": labels}
        for key, expr in _service_records(service, capacity, window)
    ]
    rules += [_alert_rule(a, options, labels, subject) for a in _service_alerts(service, capacity, options)]
    return {"name": f"gpu-mig-service-{service.name}", "rules": rules}


def rule_groups(hosts: object, capacity: object = None, options: object = None) -> dict:
    """The rules file: one group per service (the same on every host that runs it), then slots and hosts.

    A service name on several hosts must have the same slot, classes, limits and SLA there (rules are per service).
    """
    problems: list[str] = []

    def checked(check: Callable, *args: object) -> object:
        try:
            return check(*args)
        except MonitoringError as exc:
            problems.extend(exc.problems)
            return None

    parsed_options = checked(check_options, options)
    parsed_hosts = checked(check_hosts, hosts)
    by_name: dict[str, list[tuple[str, Service]]] = {}
    for host in parsed_hosts or ():
        for service in host.services:
            by_name.setdefault(service.name, []).append((host.host, service))
    known = None if parsed_hosts is None else {name: runs[0][1] for name, runs in by_name.items()}
    capacities = checked(check_capacity, capacity, known)
    if problems:
        raise MonitoringError(problems)
    groups = []
    for name, runs in sorted(by_name.items()):
        variants = {}
        for host, service in runs:
            group = service_group(service, capacities.get(name), parsed_options)
            variants.setdefault(_yaml(group), (group, []))[1].append(host)
        if len(variants) > 1:
            problems.append(
                f"service {name}: its slot, server, classes, limits or SLA differ between hosts "
                f"({'; '.join(', '.join(h) for _g, h in variants.values())}); rules are per service name: give them "
                "the same settings or distinct names"
            )
        groups.append(next(iter(variants.values()))[0])
    if problems:
        raise MonitoringError(problems)
    host_labels: dict = {}
    groups.append({"name": "gpu-mig-slots", "rules": _slot_records()})
    groups.append({
        "name": "gpu-mig-hosts",
        "rules": [_alert_rule(a, parsed_options, host_labels, "GPU host") for a in _host_alerts(parsed_options)],
    })  # fmt: skip
    return {"groups": groups}


def render_rules(hosts: object, capacity: object = None, options: object = None) -> str:
    """The Prometheus rules file (YAML) of :func:`rule_groups`."""
    return _yaml(rule_groups(hosts, capacity, options))


class _Dumper(yaml.SafeDumper):
    """Writes shared values out in full (no ``&id001`` anchors in files people read), and the subclasses of the
    builtin types that Ansible hands the controller (its tagged str, dict, list ...) as those types."""

    def ignore_aliases(self, data: object) -> bool:
        return True


for _base in (str, int, float, dict, list, tuple):
    _Dumper.add_multi_representer(_base, _Dumper.yaml_representers[_base])


def _yaml(data: object) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=10_000, allow_unicode=True)


# ---------------------------------------------------------------------------------------------------------------------
# Targets and scrape config
# ---------------------------------------------------------------------------------------------------------------------

TARGET_FILES = ("node.json", "haproxy.json", "servers.json", "dcgm.json")
JOBS = {"node.json": "gpu-mig-node", "haproxy.json": "gpu-mig-haproxy", "servers.json": "gpu-mig-servers",
        "dcgm.json": "gpu-mig-dcgm"}  # fmt: skip


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _target(listen: str, address: str) -> tuple[str, bool]:
    """(scrape address, loopback only) of a listener such as ``:9100``, ``0.0.0.0:8405`` or ``127.0.0.1:8405``."""
    bind, port = listen.rsplit(":", 1)
    wildcard = bind in ("", "*", "0.0.0.0", "[::]", "::")
    host = address if wildcard or _is_loopback(bind) else bind
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}", _is_loopback(bind)


def targets(hosts: object) -> dict:
    """file_sd target groups per file (``files``: all of TARGET_FILES, empty ones too, so none goes stale) and
    ``warnings`` (listeners Prometheus cannot reach).

    Labels: ``host`` everywhere; the servers' also ``service``, ``slot``, ``server``, ``profile``, ``gpu`` (index)
    and ``gpu_uuid`` from the host's slot map.
    """
    files: dict[str, list] = {name: [] for name in TARGET_FILES}
    warnings = []
    for host in check_hosts(hosts):
        local = _is_loopback(host.address)

        def add(file: str, listen: str, labels: dict, what: str, host: Host = host, local: bool = local) -> None:
            target, loopback = _target(listen, host.address)
            if loopback and not local:
                warnings.append(
                    f"host {host.host}: {what} listens on loopback only ({listen}), Prometheus cannot reach it at "
                    f"{host.address}: run Prometheus on the host (address 127.0.0.1) or bind the listener wider"
                )
            files[file].append({"targets": [target], "labels": {"host": host.host, **labels}})

        add("node.json", host.node_exporter_listen, {}, "node_exporter")
        if host.dcgm_listen:
            add("dcgm.json", host.dcgm_listen, {}, "dcgm-exporter")
        if host.services:
            add("haproxy.json", host.haproxy_stats_bind, {}, "HAProxy's exporter")
        for service in host.services:
            slot = host.slots.get(service.slot, {})
            labels = {"service": service.name, "slot": service.slot, "server": service.server}
            for label, key in (("profile", "profile"), ("gpu", "gpu_index"), ("gpu_uuid", "gpu_uuid")):
                if slot.get(key) is not None:
                    labels[label] = str(slot[key])
            port = service.backend_port + METRICS_PORT_OFFSET[service.server]
            add("servers.json", f"127.0.0.1:{port}", labels, f"the /metrics of {service.name}'s server")
    return {"files": files, "warnings": warnings}


def scrape_config(settings: object) -> str:
    """prometheus.yml: one file_sd job per targets file, the rules directory and Alertmanager (CONFIG_RULES); with
    ``scrape_configs_only: true`` only the ``scrape_configs`` section, for a Prometheus of one's own."""
    problems: list[str] = []
    raw = dict(settings) if isinstance(settings, dict) else settings
    labels, only_scrape = {}, False
    if isinstance(raw, dict):
        labels, only_scrape = raw.pop("external_labels", None) or {}, raw.pop("scrape_configs_only", False)
    values = _check(raw, CONFIG_RULES, "prometheus_config", problems.append)
    if not isinstance(only_scrape, bool):
        problems.append(
            f"prometheus_config.scrape_configs_only must be true or false, got {_services._shown(only_scrape)}"
        )
    if not isinstance(labels, dict):
        problems.append(f"external_labels must be a mapping of label name to text, got {_services._shown(labels)}")
        labels = {}
    for key, value in labels.items():
        if not isinstance(key, str) or not _LABEL_NAME.fullmatch(key) or key.startswith("__"):
            problems.append(f"external_labels: {key!r} is not a label name ([a-zA-Z_][a-zA-Z0-9_]*, not starting __)")
        elif not isinstance(value, str) or _services._control_problem(value) or not value:
            problems.append(f"external_labels.{key} must be one line of non-empty text, got {_services._shown(value)}")
    if problems:
        raise MonitoringError(problems)
    jobs = [
        {"job_name": JOBS[name], "file_sd_configs": [{"files": [f"{values['targets_dir'].rstrip('/')}/{name}"]}]}
        for name in TARGET_FILES
    ]
    if only_scrape:
        return _yaml({"scrape_configs": jobs})
    config: dict = {"global": {"scrape_interval": _duration(values["scrape_interval"]),
                               "evaluation_interval": _duration(values["evaluation_interval"])}}  # fmt: skip
    if labels:
        config["global"]["external_labels"] = dict(labels)
    config["rule_files"] = [f"{values['rules_dir'].rstrip('/')}/*.yml"]
    if values["alertmanagers"]:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": list(values["alertmanagers"])}]}]}
    config["scrape_configs"] = jobs
    return _yaml(config)


def dcgm_counters_csv(extra_fields: object = None) -> str:
    """dcgm-exporter's counters file (``-f``): the per-instance fields the rules join to slots, plus ``extra_fields``."""
    extra = extra_fields or []
    problems = []
    if not isinstance(extra, list):
        raise MonitoringError([f"extra DCGM fields must be a list of field names, got {_services._shown(extra)}"])
    known = {field for field, *_rest in DCGM_COUNTERS}
    for index, field in enumerate(extra):
        if not isinstance(field, str) or not re.fullmatch(r"DCGM_FI_[A-Z0-9_]+", field, re.ASCII):
            problems.append(
                f"extra DCGM field [{index}] must be a DCGM field name such as DCGM_FI_PROF_PIPE_TENSOR_ACTIVE, "
                f"got {_services._shown(field)}"
            )
        elif field in known:
            problems.append(f"extra DCGM field [{index}] {field} is already in the counters file; remove it")
    if problems:
        raise MonitoringError(problems)
    lines = ["# gpu.mig: dcgm-exporter counters (DCGM field, Prometheus type, help)",
             *(f"{field}, {kind}, {text}" for field, kind, text, _key, _factor in DCGM_COUNTERS),
             *(f"{field}, gauge, {field} (gpu.mig extra field)." for field in extra)]  # fmt: skip
    return "\n".join(lines) + "\n"
