# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Grafana dashboard of the inference services, generated from the service list (PRIVATE to the collection).

The panels are plain values (``Row``, ``Panel``, ``Target``) built from validated services; they query the series
that the rules of plugin_utils/monitoring.py record and the NVML collector writes. The Grafana JSON is made from them
with grafana-foundation-sdk, imported only when a dashboard is built.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Mapping

from ansible_collections.gpu.mig.plugins.plugin_utils import monitoring as _monitoring
from ansible_collections.gpu.mig.plugins.plugin_utils import services as _services
from ansible_collections.gpu.mig.plugins.plugin_utils.services import Service

SDK_PACKAGE = "grafana-foundation-sdk"
TITLE, UID = "gpu.mig inference services", "gpu-mig-services"
DATASOURCE_VARIABLE = "datasource"
# The NVML collector's series (roles/monitoring/files/gpu_mig_metrics.py), labels slot and mig_uuid.
COLLECTOR_SERIES = {"memory_used": "gpu_mig_slot_memory_used_bytes", "memory_total": "gpu_mig_slot_memory_total_bytes"}
SERVICE_SERIES, SLOT_SERIES = _monitoring.SERVICE_SERIES, _monitoring.SLOT_SERIES
PANEL_WIDTH, PANEL_HEIGHT = 8, 8  # three panels per line of Grafana's 24-column grid
OPTION_RULES: Mapping[str, _services.Rule] = {
    "title": _services.Rule("str", TITLE, "one line of text", default=TITLE),
    "uid": _services.Rule("str", UID, "1-40 letters, digits, '-' or '_'", default=UID,
                          pattern=re.compile(r"[A-Za-z0-9_-]{1,40}", re.ASCII)),
}  # fmt: skip


class DashboardError(_services.ServiceError):
    """The dashboard cannot be built; ``problems`` lists every reason, each naming the input and the fix."""


@dataclass(frozen=True)
class Target:
    """One query of a panel: a PromQL expression, its legend (Grafana ``legendFormat``), and whether it is a reference
    line (a limit, an SLA, the measured capacity: drawn dashed) rather than a measurement."""

    expr: str
    legend: str
    reference: bool = False


@dataclass(frozen=True)
class Panel:
    """One time-series panel: title, Grafana unit, queries and what the panel shows."""

    title: str
    unit: str
    targets: tuple[Target, ...]
    description: str


@dataclass(frozen=True)
class Row:
    """A titled group of panels (one per service, after the overview)."""

    title: str
    panels: tuple[Panel, ...]


def _select(name: str, host: bool = True, **labels: str) -> str:
    """``name{host=~"$host", k="v", ...}``; a value naming a variable (``$service``) is matched as a regular
    expression, as Grafana expands multi-value variables. ``host=False`` for series without a host label."""
    matchers = ['host=~"$host"'] if host else []
    matchers += [f'{k}{"=~" if v.startswith("$") else "="}"{v}"' for k, v in labels.items()]
    return f"{name}{{{', '.join(matchers)}}}"


def _line(value: float, legend: str) -> Target:
    """A constant series taken from the service spec (an SLA, a queue cap or timeout)."""
    exact = repr(float(value))  # the shortest text that reads back as the same number
    return Target(f"vector({exact.removesuffix('.0')})", legend, reference=True)


def _latency(service: Service, recorded: Mapping[str, str]) -> list[Panel]:
    """p50/p95/p99 from the server's histogram with the SLA limits; none where the server exports no histogram."""
    if "latency_p99" not in recorded:
        return []
    own = {"service": service.name}
    targets = [Target(_select(recorded[f"latency_{q}"], **own), f"{q} {{{{host}}}}") for q in ("p50", "p95", "p99")]
    targets += [
        _line(ms / 1000, f"SLA {name} {ms:g} ms")
        for name, ms in (("p95", service.p95_ms), ("p99", service.p99_ms))
        if ms is not None
    ]
    text = "End-to-end latency percentiles from the server's histogram, with the SLA limits."
    return [Panel("Latency p50/p95/p99", "s", tuple(targets), text)]


def _gpu(service: Service, dcgm: bool) -> list[Panel]:
    """dcgm-exporter's per-instance activity of the service's slot, where it runs."""
    if not dcgm:
        return []
    slot = {"slot": service.slot}
    fields = (("gr_engine_active", "graphics engine"), ("sm_active", "SM active"), ("dram_active", "DRAM active"))
    targets = tuple(Target(_select(SLOT_SERIES[key], **slot), f"{name} {{{{host}}}}") for key, name in fields)
    text = f"dcgm-exporter's profiling fields of slot {service.slot}'s GPU instance."
    return [Panel("GPU utilization (DCGM)", "percentunit", targets, text)]


def service_row(service: Service, dcgm: bool = False) -> Row:
    """The "first days" panels of one service: latency, traffic against capacity, queue, errors, its MIG slot."""
    recorded = _monitoring.recorded_series(service)
    own = {"service": service.name}
    traffic = [
        Target(_select(recorded["requests"], **own), "requests {{host}}"),
        Target(_select(recorded["sustained_rps"], host=False, **own), "sustained capacity", reference=True),
        Target(_select(recorded["knee_rps"], host=False, **own), "knee", reference=True),
    ]
    if service.target_rps is not None:
        traffic.append(_line(service.target_rps, f"SLA target {service.target_rps:g} req/s"))
    queue = [Target(_select(recorded["queue_length"], **own), "admission queue {{host}}")]
    if "server_queue_length" in recorded:
        queue.append(Target(_select(recorded["server_queue_length"], **own), f"{service.server} queue {{{{host}}}}"))
    queue_cap = sum(c.max_queue for c in service.classes)
    if queue_cap:
        queue.append(_line(queue_cap, f"queue cap {queue_cap}"))
    by_timeout: dict[int, list[str]] = {}
    for request_class in service.classes:
        by_timeout.setdefault(request_class.queue_timeout_ms, []).append(request_class.name)
    slot = {"slot": service.slot}
    panels = (
        *_latency(service, recorded),
        Panel(
            "Request rate against capacity",
            "reqps",
            tuple(traffic),
            "Requests per second beside the sustained rate and the knee measured by gpu.mig.capacity_test (recorded "
            "by the rules when a capacity result was given).",
        ),
        Panel(
            "Queue length",
            "short",
            tuple(queue),
            "Requests waiting in the admission queues (HAProxy; beyond the cap they get 503 at once) and in the server.",
        ),
        Panel(
            "Queue time and execution time",
            "s",
            (
                Target(_select(recorded["queue_time"], **own), "queue time {{class}} {{host}}"),
                Target(_select(recorded["response_time"], **own), "execution time {{class}} {{host}}"),
                *(
                    _line(ms / 1000, f"queue timeout {ms:g} ms ({', '.join(names)})")
                    for ms, names in sorted(by_timeout.items())
                ),
            ),
            "Average time per request class waiting for admission, apart from the time the server takes.",
        ),
        Panel(
            "Errors, timeouts, rejections",
            "reqps",
            (
                Target(_select(recorded["errors"], **own), "server errors {{host}}"),
                Target(_select(recorded["timeouts"], **own), "timeouts {{host}}"),
                Target(_select(recorded["rejected"], **own), "rejected 503 {{host}}"),
            ),
            "Server errors (5xx), timeouts, and requests the admission layer turned away (backpressure).",
        ),
        *_gpu(service, dcgm),
        Panel(
            "MIG memory",
            "bytes",
            (
                Target(_select(COLLECTOR_SERIES["memory_used"], **slot), "used {{mig_uuid}} {{host}}"),
                Target(_select(COLLECTOR_SERIES["memory_total"], **slot), "total {{mig_uuid}} {{host}}"),
            ),
            f"GPU memory of slot {service.slot}'s MIG devices (gpu.mig's NVML collector).",
        ),
    )
    return Row(f"{service.name}: slot {service.slot}, {service.server}", panels)


def overview_row() -> Row:
    """Every service the ``service`` variable selects, side by side."""

    def each(key: str) -> tuple[Target, ...]:
        return (Target(_select(SERVICE_SERIES[key], service="$service"), "{{service}} {{host}}"),)

    return Row(
        "Overview",
        (
            Panel("Request rate per service", "reqps", each("requests"), "Requests per second of each service."),
            Panel("p99 latency per service", "s", each("latency_p99"), "Where the server has a latency histogram."),
            Panel("Queue length per service", "short", each("queue_length"), "Requests in each admission queue."),
        ),
    )


def rows(services: list[Service], dcgm: bool = False) -> list[Row]:
    """The overview, then one row per service in the order given."""
    return [overview_row(), *(service_row(s, dcgm) for s in services)]


def fleet_services(hosts: object, dcgm: bool, problems: list[str]) -> list[Service]:
    """The services of the monitored hosts (``monitoring.check_hosts``: each host's specs on its slot map), each name
    once in order of appearance; a name whose panels would differ between hosts (slot, server, classes, SLA) is a
    problem naming the hosts."""
    try:
        parsed = _monitoring.check_hosts(hosts)
    except _monitoring.MonitoringError as exc:
        problems += exc.problems
        return []
    first: dict[str, Service] = {}
    hosts_by_row: dict[str, dict[Row, list[str]]] = {}
    for host in parsed:
        for service in host.services:
            first.setdefault(service.name, service)
            hosts_by_row.setdefault(service.name, {}).setdefault(service_row(service, dcgm), []).append(host.host)
    for name, variants in hosts_by_row.items():
        if len(variants) > 1:
            problems.append(
                f"service {name}: its slot, server, request classes or SLA differ between hosts "
                f"({'; '.join(', '.join(h) for h in variants.values())}); the dashboard has one row per service name: "
                "give them the same settings or distinct names"
            )
    return list(first.values())


def generate(hosts: object, dcgm: object = False, title: object = None, uid: object = None) -> dict:
    """The Grafana dashboard of the monitored hosts' services (the ``hosts`` of gpu.mig.prometheus_rules); every input
    checked by its rules, every problem raised at once (DashboardError)."""
    problems: list[str] = []
    options = _services._check({"title": title, "uid": uid}, OPTION_RULES, "", problems.append)
    if not isinstance(dcgm, bool):
        problems.append(
            f"dcgm must be true (dcgm-exporter runs: add the GPU utilization panels) or false, got {dcgm!r}"
        )
    services = fleet_services(hosts, dcgm is True, problems)
    if problems:
        raise DashboardError(problems)
    return build(services, dcgm, options["title"], options["uid"])


# ---------------------------------------------------------------------------------------------------------------------
# Grafana JSON (grafana-foundation-sdk)
# ---------------------------------------------------------------------------------------------------------------------


def _sdk() -> SimpleNamespace:
    """The SDK's modules, or DashboardError naming the package to install on the controller."""
    try:
        from grafana_foundation_sdk.builders import common, prometheus, timeseries
        from grafana_foundation_sdk.builders import dashboard as builders
        from grafana_foundation_sdk.cog.encoder import JSONEncoder
        from grafana_foundation_sdk.models import common as common_models
        from grafana_foundation_sdk.models import dashboard as models
    except ImportError as exc:
        raise DashboardError(
            [
                f"the Grafana dashboard needs the Python package {SDK_PACKAGE} on the controller "
                f"(the Python that runs Ansible): pip install {SDK_PACKAGE} ({exc})"
            ]
        ) from None
    return SimpleNamespace(
        builders=builders,
        common=common,
        common_models=common_models,
        encoder=JSONEncoder,
        models=models,
        prometheus=prometheus,
        timeseries=timeseries,
    )


def _panel(sdk: SimpleNamespace, panel: Panel, panel_id: int, source: object):
    """One time-series panel; its constant series (limits, SLA, capacity) drawn dashed."""
    built = (
        sdk.timeseries.Panel()
        .id(panel_id)
        .title(panel.title)
        .description(panel.description)
        .unit(panel.unit)
        .datasource(source)
        .span(PANEL_WIDTH)
        .height(PANEL_HEIGHT)
        .legend(
            sdk.common.VizLegendOptions()
            .show_legend(True)
            .display_mode(sdk.common_models.LegendDisplayMode.LIST)
            .placement(sdk.common_models.LegendPlacement.BOTTOM)
        )
        .tooltip(sdk.common.VizTooltipOptions().mode(sdk.common_models.TooltipDisplayMode.MULTI))
        .line_width(1)
        .fill_opacity(0)
        .show_points(sdk.common_models.VisibilityMode.NEVER)
        .span_nulls(False)
    )
    dashed = sdk.models.DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]})
    for index, target in enumerate(panel.targets):
        ref = chr(ord("A") + index)
        built = built.with_target(sdk.prometheus.Dataquery().expr(target.expr).legend_format(target.legend).ref_id(ref))
        if target.reference:
            built = built.override_by_query(ref, [dashed])
    return built


def build(services: list[Service], dcgm: bool = False, title: str = TITLE, uid: str = UID) -> dict:
    """The Grafana dashboard model (JSON-ready dict): variables datasource/host/service, overview, a row per service."""
    sdk = _sdk()
    builders = sdk.builders
    source = sdk.models.DataSourceRef(type_val="prometheus", uid="${%s}" % DATASOURCE_VARIABLE)
    names = [s.name for s in services]
    board = (
        builders.Dashboard(title)
        .uid(uid)
        .tags(["gpu.mig", "mig", "inference"])
        .time("now-6h", "now")
        .refresh("30s")
        .with_variable(builders.DatasourceVariable(DATASOURCE_VARIABLE).label("Prometheus").type("prometheus"))
        .with_variable(
            builders.QueryVariable("host")
            .label("host")
            .datasource(source)
            .query(f"label_values({SERVICE_SERIES['requests']}, host)")
            .refresh(sdk.models.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .multi(True)
            .include_all(True)
            .all_value(".+")
        )
        .with_variable(
            builders.CustomVariable("service").label("service").values(",".join(names)).multi(True).include_all(True)
        )
    )
    panel_id = 0
    for row in rows(services, dcgm):
        panel_id += 1
        board = board.with_row(builders.Row(row.title).id(panel_id))
        for panel in row.panels:
            panel_id += 1
            board = board.with_panel(_panel(sdk, panel, panel_id, source))
    return json.loads(json.dumps(board.build(), cls=sdk.encoder))


def dumps(dashboard: dict) -> str:
    """The dashboard as deterministic JSON text (sorted keys), as it is written to disk."""
    return json.dumps(dashboard, indent=2, sort_keys=True) + "\n"
