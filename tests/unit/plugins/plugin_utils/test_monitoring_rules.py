# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The generated Prometheus rules, run by the real promtool (Debian's prometheus package).

Every alerting rule the generator writes for a fleet of three services (vLLM with SLA and capacity result, a generic
server, Triton with latency histograms) gets a ``promtool test rules`` file of its own: input series that must fire
it (with the exact labels and rendered annotations) and input series that must leave it silent. The cases are keyed
by alert name, so a new alert without cases fails here; the recorded series (the dashboard's vocabulary) are checked
for their values too.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from ansible_collections.gpu.mig.plugins.plugin_utils import monitoring as _monitoring
from ansible_collections.gpu.mig.plugins.plugin_utils import services as _services

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
HOST = "gpu1"
SLOTS = {
    "chat": {"gpu_index": 0, "gpu_uuid": "GPU-a", "profile": "3g.20gb", "memory_mib": 20096, "gpu_instance_id": 2},
    "ocr": {"gpu_index": 0, "gpu_uuid": "GPU-a", "profile": "1g.5gb", "memory_mib": 4864, "gpu_instance_id": 9},
    "det": {"gpu_index": 1, "gpu_uuid": "GPU-b", "profile": "2g.10gb", "memory_mib": 9856, "gpu_instance_id": 3},
}
SERVICES = [
    {"name": "chat", "slot": "chat", "server": "vllm", "runner": "quadlet", "image": "docker.io/vllm/vllm-openai:v0.10.1",
     "port": 8000, "backend_port": 18000, "model": {"name": "m"}, "sla": {"p95_ms": 200, "p99_ms": 400},
     "limits": {"max_concurrency": 4, "max_queue": 8, "queue_timeout": "500ms"},
     "classes": [{"name": "fast", "weight": 3}, {"name": "background", "queue_timeout": "10s"}]},
    {"name": "ocr", "slot": "ocr", "command": ["/usr/local/bin/ocr-server"], "port": 8001, "backend_port": 18010},
    {"name": "det", "slot": "det", "server": "triton", "command": ["/opt/tritonserver/bin/tritonserver"], "port": 8002,
     "backend_port": 18020, "model": {"name": "det", "dir": "/srv/models"},
     "extra_args": ["--metrics-config=histogram_latencies=true"], "sla": {"p95_ms": 100}},
]  # fmt: skip
HOSTS = [{"host": HOST, "address": "127.0.0.1", "services": SERVICES, "slots": SLOTS}]
# A capacity_test result as its JSON file holds it (the keys the rules read, and some they ignore).
CAPACITY = [{
    "schema": "gpu.mig/capacity/v1", "service": {"service": "chat", "url": "http://127.0.0.1:8000"},
    "sla": {"percentiles_ms": {"p95": 200.0}, "max_error_rate": 0.0},
    "capacity": {"sustained_rps": 10.0, "knee_rps": 12.0, "latency_ms": {"p50": 40.0, "p95": 150.0, "p99": 210.0},
                 "reached": True},
    "steps": [], "table_row": {"sustained_rps": 10.0},
}]  # fmt: skip
# Minutes, so a promtool test evaluates every minute; production uses the defaults.
OPTIONS = {"rate_window": "2m", "for": "2m", "queue_window": "5m", "restart_window": "10m", "collector_stale": "5m"}
EVAL_AT = "10m"
SAMPLES = 20  # minutes of input, beyond EVAL_AT


def counter(per_minute: float) -> str:
    return f"0+{per_minute:g}x{SAMPLES}"


def gauge(value: float) -> str:
    return f"{value:g}x{SAMPLES}"


def series(metric: str, values: str, **labels: str) -> dict:
    text = ",".join(f'{k}="{v}"' for k, v in {"host": HOST, "instance": "x:1", "job": "j", **labels}.items())
    return {"series": f"{metric}{{{text}}}", "values": values}


@dataclass(frozen=True)
class Traffic:
    """What HAProxy's exporter shows for a service, per minute; it all goes to the first class."""

    requests: float = 60
    answered_5xx: float = 0  # every 5xx the backend answered (admission 503s, server 5xx, 504s)
    server_5xx: float = 0
    response_errors: float = 0
    queue: str | None = None  # values of the first class's haproxy_backend_current_queue
    queue_time: float = 0
    response_time: float = 0
    active_servers: int = 1


def haproxy(service: _services.Service, traffic: Traffic) -> list[dict]:
    out = []
    for index, request_class in enumerate(service.classes):
        share = 1 if index == 0 else 0
        proxy = {"proxy": _services.backend_name(service, request_class)}
        server = {**proxy, "server": service.name}
        out += [
            series("haproxy_backend_http_requests_total", counter(traffic.requests * share), **proxy),
            series("haproxy_backend_http_responses_total", counter(traffic.answered_5xx * share), code="5xx", **proxy),
            series("haproxy_server_http_responses_total", counter(traffic.server_5xx * share), code="5xx", **server),
            series("haproxy_backend_response_errors_total", counter(traffic.response_errors * share), **proxy),
            series("haproxy_backend_current_queue", (traffic.queue or gauge(0)) if share else gauge(0), **proxy),
            series("haproxy_backend_queue_time_average_seconds", gauge(traffic.queue_time * share), **proxy),
            series("haproxy_backend_response_time_average_seconds", gauge(traffic.response_time * share), **proxy),
            series("haproxy_backend_active_servers", gauge(traffic.active_servers), **proxy),
        ]
    return out


def histogram(service: _services.Service, bucket_seconds: float) -> list[dict]:
    """The service's latency histogram with every request (one per second) in the bucket ending at ``bucket_seconds``
    (bounds 0.1, 0.5, 1 s and +Inf; Triton's in milliseconds)."""
    spec = _monitoring.LATENCY_HISTOGRAMS[service.server]
    bounds = (0.1, 0.5, 1.0)
    labels = {"service": service.name, "slot": service.slot}
    if spec.selector:
        labels["path"] = f"/v2/models/{service.model}/infer"
    out = []
    for bound in (*bounds, float("inf")):
        le = "+Inf" if bound == float("inf") else f"{bound / spec.to_seconds:g}"
        out.append(series(spec.bucket, counter(60 if bound >= bucket_seconds else 0), le=le, **labels))
    return out


@dataclass(frozen=True)
class Context:
    service: _services.Service | None
    capacity: _monitoring.Capacity | None
    options: dict


@dataclass(frozen=True)
class Case:
    """Input series that fire the alert (with its value as the description shows it, and extra labels) and input
    series that must not."""

    firing: Callable[[Context], list[list[dict]]]
    silent: Callable[[Context], list[list[dict]]]
    value: Callable[[Context], str] = lambda _c: ""
    labels: Callable[[Context], dict] = lambda _c: {}


def humanize_duration(seconds: float) -> str:
    """Prometheus' humanizeDuration for values below a minute."""
    if seconds >= 1:
        return f"{seconds:.4g}s"
    return f"{seconds * 1000:.4g}ms"


def budget_s(c: Context) -> float:
    """The first class's queue-time budget."""
    return c.service.classes[0].queue_timeout_ms * c.options["queue_time_percent"] / 100 / 1000


def p_latency(quantile: float, low: float, high: float) -> float:
    """histogram_quantile's answer when every request fell into the bucket (low, high]."""
    return low + (high - low) * quantile


def sla_s(c: Context, name: str) -> float:
    limit = getattr(c.service, f"{name}_ms") or c.capacity.sla_ms[name]
    return limit / 1000


CASES: dict[str, Case] = {
    "GpuMigQueueNotDraining": Case(
        firing=lambda c: [haproxy(c.service, Traffic(queue=gauge(5)))],
        silent=lambda c: [haproxy(c.service, Traffic(queue=" ".join(["5", "0"] * SAMPLES)))],
        value=lambda c: "5",
    ),
    "GpuMigQueueTimeOverBudget": Case(
        firing=lambda c: [haproxy(c.service, Traffic(queue_time=2 * budget_s(c)))],
        silent=lambda c: [haproxy(c.service, Traffic(queue_time=budget_s(c) / 2))],
        value=lambda c: humanize_duration(2 * budget_s(c)),
        labels=lambda c: {"class": c.service.classes[0].name},
    ),
    # Half the requests answered 503 by HAProxy itself; silent: as many 5xx, all from the server or timeouts.
    "GpuMigBackpressure": Case(
        firing=lambda c: [haproxy(c.service, Traffic(answered_5xx=30))],
        silent=lambda c: [haproxy(c.service, Traffic(answered_5xx=30, server_5xx=12, response_errors=18)), haproxy(c.service, Traffic())],
        value=lambda c: "50%",
    ),
    "GpuMigErrorBudget": Case(
        firing=lambda c: [haproxy(c.service, Traffic(answered_5xx=30, server_5xx=12, response_errors=18))],
        silent=lambda c: [haproxy(c.service, Traffic(answered_5xx=30)), haproxy(c.service, Traffic(requests=0))],
        value=lambda c: "50%",
    ),
    "GpuMigServiceUnavailable": Case(
        firing=lambda c: [haproxy(c.service, Traffic(active_servers=0))],
        silent=lambda c: [haproxy(c.service, Traffic())],
    ),
    "GpuMigLatencyP95OverSla": Case(
        firing=lambda c: [histogram(c.service, 1.0)],
        silent=lambda c: [histogram(c.service, 0.1)],
        value=lambda c: humanize_duration(p_latency(0.95, 0.5, 1.0)),
    ),
    "GpuMigLatencyP99OverSla": Case(
        firing=lambda c: [histogram(c.service, 1.0)],
        silent=lambda c: [histogram(c.service, 0.1)],
        value=lambda c: humanize_duration(p_latency(0.99, 0.5, 1.0)),
    ),
    "GpuMigTrafficNearCapacity": Case(
        firing=lambda c: [haproxy(c.service, Traffic(requests=60 * (c.capacity.sustained_rps - 1)))],
        silent=lambda c: [haproxy(c.service, Traffic(requests=60 * c.capacity.sustained_rps * c.options["capacity_percent"] / 100 - 60))],
        value=lambda c: f"{c.capacity.sustained_rps - 1:g}",
    ),
    "GpuMigTrafficAboveKnee": Case(
        firing=lambda c: [haproxy(c.service, Traffic(requests=60 * (c.capacity.knee_rps + 1)))],
        silent=lambda c: [haproxy(c.service, Traffic(requests=60 * (c.capacity.knee_rps - 1)))],
        value=lambda c: f"{c.capacity.knee_rps + 1:g}",
    ),
    "GpuMigSliceMemoryNearLimit": Case(
        firing=lambda c: [slot_memory(c, 95)],
        silent=lambda c: [slot_memory(c, c.options["memory_percent"] - 5), slot_memory(c, 95, slot="elsewhere")],
        value=lambda c: "95%",
    ),
    "GpuMigServiceRestarting": Case(
        firing=lambda c: [[series("node_systemd_service_restart_total", "0 0 0 0 0 1 1 1 1 1 1 1", name=unit(c))]],
        silent=lambda c: [[series("node_systemd_service_restart_total", gauge(3), name=unit(c))],
                          [series("node_systemd_service_restart_total", counter(1), name="inference-other.service")]],
    ),
    "GpuMigSlotMissing": Case(
        firing=lambda c: [[series("gpu_mig_slot_present", gauge(0), slot=c.service.slot)]],
        silent=lambda c: [[series("gpu_mig_slot_present", gauge(1), slot=c.service.slot),
                           series("gpu_mig_slot_present", gauge(0), slot="elsewhere")]],
    ),
    "GpuMigLayoutDrift": Case(
        firing=lambda c: [[series("gpu_mig_layout_drift", gauge(1), gpu_index="0", gpu_uuid="GPU-a")]],
        silent=lambda c: [[series("gpu_mig_layout_drift", gauge(0), gpu_index="0", gpu_uuid="GPU-a")]],
        labels=lambda c: {"gpu_index": "0", "gpu_uuid": "GPU-a"},
    ),
    "GpuMigModePending": Case(
        firing=lambda c: [mig_mode(current=0, pending=1)],
        silent=lambda c: [mig_mode(current=1, pending=1), mig_mode(current=0, pending=0)],
        labels=lambda c: {"gpu_index": "0", "gpu_uuid": "GPU-a"},
    ),
    # Failed runs, or a collector that stopped running (its last run ten minutes old at the evaluation).
    "GpuMigCollectorFailing": Case(
        firing=lambda c: [collector(success=0, stale=False), collector(success=1, stale=True)],
        silent=lambda c: [collector(success=1, stale=False)],
    ),
}  # fmt: skip


def slot_memory(c: Context, percent: float, slot: str | None = None) -> list[dict]:
    labels = {"slot": slot or c.service.slot, "mig_uuid": "MIG-1"}
    return [series("gpu_mig_slot_memory_used_bytes", gauge(percent), **labels),
            series("gpu_mig_slot_memory_total_bytes", gauge(100), **labels)]  # fmt: skip


def unit(c: Context) -> str:
    return f"{c.options['unit_prefix']}{c.service.name}.service"


def mig_mode(current: int, pending: int) -> list[dict]:
    gpu = {"gpu_index": "0", "gpu_uuid": "GPU-a"}
    return [
        series("gpu_mig_mode_current", gauge(current), **gpu),
        series("gpu_mig_mode_pending", gauge(pending), **gpu),
    ]


def collector(success: int, stale: bool) -> list[dict]:
    last_run = gauge(0) if stale else "0+60x20"  # seconds since the epoch, as promtool's clock runs
    return [series("gpu_mig_collector_success", gauge(success)),
            series("gpu_mig_collector_last_run_timestamp_seconds", last_run)]  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------------


def generated() -> tuple[dict, dict[str, Context]]:
    """The rules of the fleet above, and the context (service, capacity, options) of each group."""
    rules = _monitoring.rule_groups(HOSTS, CAPACITY, OPTIONS)
    options = _monitoring.check_options(OPTIONS)
    services = {s.name: s for s in _monitoring.check_hosts(HOSTS)[0].services}
    capacity = _monitoring.check_capacity(CAPACITY, services)
    contexts = {f"gpu-mig-service-{name}": Context(s, capacity.get(name), options) for name, s in services.items()}
    contexts["gpu-mig-hosts"] = Context(None, None, options)
    return rules, contexts


RULES, CONTEXTS = generated()
ALERTS = [(group["name"], rule) for group in RULES["groups"] for rule in group["rules"] if "alert" in rule]


@pytest.fixture(scope="module")
def rules_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rules") / "gpu-mig.yml"
    path.write_text(_monitoring.render_rules(HOSTS, CAPACITY, OPTIONS))
    return path


def promtool(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=60, check=False)


def rendered(template: str, labels: dict, value: str) -> str:
    """An annotation as Prometheus expands it, for the templates the generator uses ($labels.x, $value | fn)."""
    for key, text in labels.items():
        template = template.replace(f"{{{{ $labels.{key} }}}}", text)
    for function in ("humanize", "humanizeDuration", "humanizePercentage"):
        template = template.replace(f"{{{{ $value | {function} }}}}", value)
    assert "{{" not in template, f"a template the test does not expand: {template}"
    return template


def test_promtool_checks_the_rules(rules_file: Path):
    result = promtool("check", "rules", rules_file)
    assert result.returncode == 0, result.stdout + result.stderr
    rules = sum(len(g["rules"]) for g in RULES["groups"])
    assert f"SUCCESS: {rules} rules found" in result.stdout


def test_every_alert_has_a_firing_and_a_silent_case():
    """A new alert without input series that fire it and that must not fails here."""
    names = {rule["alert"] for _group, rule in ALERTS}
    assert sorted(names - set(CASES)) == [], "alerts without promtool cases: add them to CASES"
    assert sorted(set(CASES) - names) == [], "cases of alerts the generator no longer writes"
    context = CONTEXTS["gpu-mig-service-chat"]  # has every input: SLA, histogram, capacity
    for name, case in CASES.items():
        assert case.firing(context) and case.silent(context), name


def test_the_fleet_exercises_every_kind_of_alert():
    """The capacity, both latency alerts and the Triton histogram are generated only where their inputs exist."""
    by_group = {}
    for group, rule in ALERTS:
        by_group.setdefault(group, set()).add(rule["alert"])
    capacity_and_latency = {"GpuMigTrafficNearCapacity", "GpuMigTrafficAboveKnee", "GpuMigLatencyP95OverSla",
                            "GpuMigLatencyP99OverSla"}  # fmt: skip
    assert capacity_and_latency <= by_group["gpu-mig-service-chat"]
    assert not capacity_and_latency & by_group["gpu-mig-service-ocr"]  # no SLA, no histogram, no capacity
    assert by_group["gpu-mig-service-det"] & capacity_and_latency == {"GpuMigLatencyP95OverSla"}
    assert by_group["gpu-mig-hosts"] == {"GpuMigLayoutDrift", "GpuMigModePending", "GpuMigCollectorFailing"}


def test_alerts_name_service_slot_and_host_and_link_the_runbook():
    for group, rule in ALERTS:
        context = CONTEXTS[group]
        summary = rule["annotations"]["summary"]
        assert "{{ $labels.host }}" in summary, rule["alert"]
        assert rule["annotations"]["runbook_url"].startswith(_monitoring.RUNBOOK_URL.split("#", maxsplit=1)[0] + "#")
        if context.service:
            assert rule["labels"]["service"] == context.service.name and rule["labels"]["slot"] == context.service.slot
            assert summary.startswith(f"{context.service.name} on slot {context.service.slot} (")
    overload = [r["alert"] for _g, r in ALERTS if r["annotations"]["runbook_url"].endswith("#overload")]
    assert {"GpuMigQueueNotDraining", "GpuMigBackpressure", "GpuMigTrafficNearCapacity"} <= set(overload)


@dataclass
class PromtoolTests:
    tests: list = field(default_factory=list)

    def add(self, inputs: list[dict], alert: str, expected: list[dict]) -> None:
        self.tests.append({
            "interval": "1m", "input_series": inputs,
            "alert_rule_test": [{"eval_time": EVAL_AT, "alertname": alert, "exp_alerts": expected}],
        })  # fmt: skip


@pytest.mark.parametrize(
    ("group", "rule"), ALERTS, ids=[f"{g.removeprefix('gpu-mig-')}-{r['alert']}" for g, r in ALERTS]
)
def test_alert_fires_on_its_signal_and_stays_silent_otherwise(group: str, rule: dict, rules_file: Path, tmp_path: Path):
    case = CASES.get(rule["alert"])
    assert case, f"{rule['alert']} has no firing/silent case"
    context = CONTEXTS[group]
    labels = {**rule["labels"], "host": HOST, **case.labels(context)}
    annotations = {key: rendered(text, labels, case.value(context)) for key, text in rule["annotations"].items()}
    tests = PromtoolTests()
    for inputs in case.firing(context):
        tests.add(inputs, rule["alert"], [{"exp_labels": labels, "exp_annotations": annotations}])
    for inputs in case.silent(context):
        tests.add(inputs, rule["alert"], [])
    test_file = tmp_path / "test.yml"
    test_file.write_text(yaml.safe_dump({"rule_files": [str(rules_file)], "evaluation_interval": "1m",
                                         "tests": tests.tests}, sort_keys=False))  # fmt: skip
    result = promtool("test", "rules", test_file)
    assert result.returncode == 0, result.stdout + result.stderr


def test_recorded_series_hold_what_haproxy_and_the_servers_report(rules_file: Path, tmp_path: Path):
    """Per minute: 60 requests, 30 answered 5xx of which 6 by the server and 9 timeouts, so 15 admission 503s."""
    chat = CONTEXTS["gpu-mig-service-chat"].service
    inputs = haproxy(
        chat,
        Traffic(answered_5xx=30, server_5xx=6, response_errors=9, queue=gauge(3), queue_time=0.2, response_time=0.05),
    )
    inputs += [*histogram(chat, 0.5), series("vllm:num_requests_waiting", gauge(2), service="chat", slot="chat")]
    own = {"host": HOST, "service": "chat", "slot": "chat"}
    expected = {
        "requests": 1, "rejected": 0.25, "rejected_ratio": 0.25, "errors": 0.1, "timeouts": 0.15, "error_ratio": 0.25,
        "queue_length": 3, "server_queue_length": 2, "latency_p50": p_latency(0.5, 0.1, 0.5),
        "latency_p95": p_latency(0.95, 0.1, 0.5), "latency_p99": p_latency(0.99, 0.1, 0.5),
    }  # fmt: skip
    exprs = [
        {"expr": _monitoring.SERVICE_SERIES[key], "eval_time": EVAL_AT, "exp_samples": [{"labels": _labels(key, own), "value": value}]}
        for key, value in expected.items()
    ]  # fmt: skip
    exprs += [
        {"expr": _monitoring.SERVICE_SERIES["queue_time"], "eval_time": EVAL_AT, "exp_samples": [
            {"labels": _labels("queue_time", {**own, "class": "fast"}), "value": 0.2},
            {"labels": _labels("queue_time", {**own, "class": "background"}), "value": 0}]},
        {"expr": _monitoring.SERVICE_SERIES["response_time"], "eval_time": EVAL_AT, "exp_samples": [
            {"labels": _labels("response_time", {**own, "class": "fast"}), "value": 0.05},
            {"labels": _labels("response_time", {**own, "class": "background"}), "value": 0}]},
        {"expr": _monitoring.SERVICE_SERIES["sustained_rps"], "eval_time": EVAL_AT, "exp_samples": [
            {"labels": _labels("sustained_rps", {"service": "chat", "slot": "chat"}), "value": 10}]},
        {"expr": _monitoring.SERVICE_SERIES["knee_rps"], "eval_time": EVAL_AT, "exp_samples": [
            {"labels": _labels("knee_rps", {"service": "chat", "slot": "chat"}), "value": 12}]},
    ]  # fmt: skip
    assert set(_monitoring.recorded_series(chat)) == {
        *expected,
        "queue_time",
        "response_time",
        "sustained_rps",
        "knee_rps",
    }
    _run_expr_test(rules_file, tmp_path, inputs, exprs)


def _labels(key: str, labels: dict) -> str:
    name = _monitoring.SERVICE_SERIES.get(key) or _monitoring.SLOT_SERIES[key]
    return name + "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def _run_expr_test(rules_file: Path, tmp_path: Path, inputs: list[dict], exprs: list[dict]) -> None:
    test_file = tmp_path / "test.yml"
    test = {"interval": "1m", "input_series": inputs, "promql_expr_test": exprs}
    test_file.write_text(
        yaml.safe_dump({"rule_files": [str(rules_file)], "evaluation_interval": "1m", "tests": [test]})
    )
    result = promtool("test", "rules", test_file)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dcgm_fields_and_collector_memory_are_recorded_per_slot(rules_file: Path, tmp_path: Path):
    """dcgm-exporter's UUID (parent GPU) + GPU_I_ID find the slot in gpu_mig_slot_info; FB in MiB becomes bytes."""
    dcgm = {"gpu": "0", "UUID": "GPU-a", "GPU_I_PROFILE": "3g.20gb", "modelName": "NVIDIA A100", "Hostname": "c1"}
    info = {"gpu_index": "0", "gpu_uuid": "GPU-a", "profile": "3g.20gb", "mig_uuid": "MIG-1", "placement": "4:4"}
    inputs = [
        series("DCGM_FI_PROF_GR_ENGINE_ACTIVE", gauge(0.7), GPU_I_ID="2", **dcgm),
        series("DCGM_FI_PROF_GR_ENGINE_ACTIVE", gauge(0.1), GPU_I_ID="9", **{**dcgm, "GPU_I_PROFILE": "1g.5gb"}),
        series("DCGM_FI_DEV_FB_USED", gauge(1024), GPU_I_ID="2", **dcgm),
        series("gpu_mig_slot_info", gauge(1), slot="chat", service="chat", gpu_instance_id="2", **info),
        series("gpu_mig_slot_info", gauge(1), slot="ocr", service="ocr", gpu_instance_id="9", **{**info, "mig_uuid": "MIG-2"}),
        series("gpu_mig_slot_memory_used_bytes", gauge(50), slot="chat", mig_uuid="MIG-1"),
        series("gpu_mig_slot_memory_total_bytes", gauge(200), slot="chat", mig_uuid="MIG-1"),
    ]  # fmt: skip
    slot = {"host": HOST, "gpu_uuid": "GPU-a"}
    exprs = [
        {"expr": _monitoring.SLOT_SERIES["gr_engine_active"], "eval_time": EVAL_AT, "exp_samples": [
            {"labels": _labels("gr_engine_active", {**slot, "slot": "chat", "service": "chat", "gpu_instance_id": "2"}), "value": 0.7},
            {"labels": _labels("gr_engine_active", {**slot, "slot": "ocr", "service": "ocr", "gpu_instance_id": "9"}), "value": 0.1}]},
        {"expr": _monitoring.SLOT_SERIES["fb_used_bytes"], "eval_time": EVAL_AT, "exp_samples": [
            {"labels": _labels("fb_used_bytes", {**slot, "slot": "chat", "service": "chat", "gpu_instance_id": "2"}), "value": 1024 * 2**20}]},
        {"expr": _monitoring.SLOT_SERIES["memory_used_ratio"], "eval_time": EVAL_AT, "exp_samples": [
            {"labels": _labels("memory_used_ratio", {"host": HOST, "slot": "chat"}), "value": 0.25}]},
    ]  # fmt: skip
    _run_expr_test(rules_file, tmp_path, inputs, exprs)
