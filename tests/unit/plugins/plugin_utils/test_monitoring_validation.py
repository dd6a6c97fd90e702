# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Bad monitoring inputs are refused with one error that names every problem.

Driven by the rule tables (OPTION_RULES, HOST_RULES, CAPACITY_RULES, CONFIG_RULES): every field of every table gets
the wrong values of its kind, so a field added to a table is covered here; then the relations no single field shows,
and a fuzz of malformed inputs that must end in MonitoringError and nothing else.
"""

from __future__ import annotations

import copy

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ansible_collections.gpu.mig.plugins.plugin_utils import monitoring as _monitoring
from ansible_collections.gpu.mig.plugins.plugin_utils.monitoring import MonitoringError, Rule

SLOTS = {"chat": {"gpu_index": 0, "gpu_uuid": "GPU-a", "profile": "3g.20gb", "memory_mib": 20096}}
CHAT = {"name": "chat", "slot": "chat", "command": ["/usr/local/bin/srv"], "port": 8000, "backend_port": 18000}
HOST = {"host": "gpu1", "services": [CHAT], "slots": SLOTS}
RESULT = {"schema": "gpu.mig/capacity/v1", "service": {"service": "chat"},
          "capacity": {"sustained_rps": 10.0, "knee_rps": 12.0, "latency_ms": {"p95": 150.0, "p99": 210.0}},
          "sla": {"percentiles_ms": {"p95": 200.0, "p99": 400.0}}}  # fmt: skip
CONFIG = {"targets_dir": "/etc/prometheus/file_sd/gpu-mig", "rules_dir": "/etc/prometheus/rules.d/gpu-mig"}


def wrong_values(rule: Rule) -> list:
    """Values a field of this kind must refuse."""
    values = {
        "str": [5, "", "two\nlines", ["x"]],
        "int": [-1, "8", 8.0, True],
        "number": [0, -3, "x", True, float("nan")],
        "duration": ["soon", -1, True, "5 parsecs"],
        "strings": ["x", [5], ["two\nlines"]],
    }[rule.kind]
    if rule.kind in ("number", "int") and rule.maximum < 2**31 - 1:
        values.append(rule.maximum + 1)
    if rule.choices:
        values.append("none-of-them")
    return values


def set_path(data: dict, path: str, value: object) -> dict:
    data = copy.deepcopy(data)
    *parents, last = path.split(".")
    node = data
    for step in parents:
        node = node.setdefault(step, {})
    node[last] = value
    return data


def problems_of(call, *args) -> list[str]:
    with pytest.raises(MonitoringError) as info:
        call(*args)
    return info.value.problems


# Per table: how to feed one field's value in, and how the problem names the field.
TABLES = {
    "options": (_monitoring.OPTION_RULES, lambda k, v: problems_of(_monitoring.check_options, {k: v}),
                lambda k: f"options.{k} "),
    "hosts": (_monitoring.HOST_RULES, lambda k, v: problems_of(_monitoring.check_hosts, [{**HOST, k: v}]),
              lambda k: f": {k} "),
    "capacity": (_monitoring.CAPACITY_RULES,
                 lambda k, v: problems_of(_monitoring.check_capacity, [set_path(RESULT, k, v)], {"chat": None}),
                 lambda k: f"capacity[0].{k} "),
    "config": (_monitoring.CONFIG_RULES, lambda k, v: problems_of(_monitoring.scrape_config, {**CONFIG, k: v}),
               lambda k: f"prometheus_config.{k}"),
}  # fmt: skip
FIELD_CASES = [
    pytest.param(table, key, value, id=f"{table}-{key}-{value!r}")
    for table, (rules, _feed, _named) in TABLES.items()
    for key, rule in rules.items()
    for value in wrong_values(rule)
]


@pytest.mark.parametrize(("table", "key", "value"), FIELD_CASES)
def test_each_field_refuses_wrong_values_by_name(table: str, key: str, value: object):
    _rules, feed, named = TABLES[table]
    problems = feed(key, value)
    assert len(problems) == 1 and named(key) in problems[0], problems


@pytest.mark.parametrize("table", sorted(TABLES))
def test_all_wrong_fields_are_reported_at_once(table: str):
    rules, _feed, named = TABLES[table]
    broken = {key: wrong_values(rule)[0] for key, rule in rules.items()}
    if table == "options":
        problems = problems_of(_monitoring.check_options, broken)
    elif table == "hosts":
        problems = problems_of(_monitoring.check_hosts, [{**broken, "services": [CHAT], "slots": SLOTS}])
    elif table == "capacity":
        result = RESULT
        for key, value in broken.items():
            result = set_path(result, key, value)
        problems = problems_of(_monitoring.check_capacity, [result], {"chat": None})
    else:
        problems = problems_of(_monitoring.scrape_config, broken)
    for key in rules:
        assert any(named(key) in p for p in problems), (key, problems)


def test_rules_refuse_options_hosts_and_capacity_in_one_error():
    problems = problems_of(_monitoring.render_rules, [{**HOST, "address": "no spaces allowed"}],
                           [{**RESULT, "schema": "other/v9"}], {"for": "soon"})  # fmt: skip
    assert [p.split(" ", 1)[0] for p in problems] == ["options.for", "host", "capacity[0].schema"], problems


@pytest.mark.parametrize(
    ("hosts", "expected"),
    [
        ("gpu1", "hosts must be a non-empty list of host mappings, got 'gpu1'"),
        ([], "hosts must be a non-empty list of host mappings, got list []"),
        (["gpu1"], "hosts[0]: must be a mapping with keys host, address"),
        ([{"services": []}], "hosts[0]: host is required"),
        ([HOST, HOST], "host gpu1: listed 2 times; list each host once"),
        ([{**HOST, "sevrices": []}], "host gpu1: unknown key(s) 'sevrices'; allowed: host, address"),
        ([{**HOST, "node_exporter_listen": ":70000"}], "host gpu1: node_exporter_listen: port 70000 is not a TCP port"),
        ([{**HOST, "services": [{**CHAT, "port": "8000"}]}], "host gpu1: service chat: port must be an integer"),
        ([{**HOST, "services": [{**CHAT, "slot": "ocr"}]}], "host gpu1: service chat: unknown slot 'ocr'"),
        (
            [{**HOST, "services": [{**CHAT, "backend_port": 8405}]}],
            "host gpu1: service (reserved), chat: port 8405 is taken more than once",
        ),
    ],
)
def test_host_entries(hosts: object, expected: str):
    problems = problems_of(_monitoring.check_hosts, hosts)
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    ("results", "expected"),
    [
        ({"capacity": {}}, "capacity must be a list of gpu.mig.capacity_test results"),
        (["capacity-chat.json"], "capacity[0] must be a gpu.mig.capacity_test result (a mapping)"),
        ([set_path(RESULT, "capacity.sustained_rps", None)], "capacity[0].capacity.sustained_rps is required"),
        ([set_path(RESULT, "capacity.knee_rps", 8.0)], "capacity[0]: capacity.knee_rps 8 is below capacity.sustained_rps 10"),
        ([set_path(RESULT, "service.service", "http://127.0.0.1:8000")], "capacity[0]: service 'http://127.0.0.1:8000' is none of the services (chat)"),
        ([RESULT, RESULT], "capacity[1]: a second result for service chat"),
        ([{**RESULT, "capacity": "fast"}], "capacity[0].capacity.sustained_rps is required"),
    ],
)  # fmt: skip
def test_capacity_results(results: object, expected: str):
    problems = problems_of(_monitoring.render_rules, [HOST], results)
    assert any(expected in p for p in problems), problems


def test_a_service_configured_differently_on_two_hosts_is_refused():
    other = {**HOST, "host": "gpu2", "services": [{**CHAT, "limits": {"queue_timeout": "2s"}}]}
    problems = problems_of(_monitoring.render_rules, [HOST, other])
    assert problems == [
        "service chat: its slot, server, classes, limits or SLA differ between hosts (gpu1; gpu2); rules are per "
        "service name: give them the same settings or distinct names"
    ]
    same_elsewhere = {**HOST, "host": "gpu2", "services": [{**CHAT, "port": 9000}]}  # what rules do not read
    groups = _monitoring.rule_groups([HOST, same_elsewhere])["groups"]
    assert [g["name"] for g in groups] == ["gpu-mig-service-chat", "gpu-mig-slots", "gpu-mig-hosts"]


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ("/etc/prometheus", "prometheus_config must be a mapping with keys targets_dir"),
        ({**CONFIG, "external_labels": {"0x": "a"}}, "external_labels: '0x' is not a label name"),
        ({**CONFIG, "external_labels": {"__x": "a"}}, "external_labels: '__x' is not a label name"),
        ({**CONFIG, "external_labels": {"dc": "a\nb"}}, "external_labels.dc must be one line of non-empty text"),
        ({**CONFIG, "external_labels": ["dc"]}, "external_labels must be a mapping of label name to text"),
        ({**CONFIG, "scrape_configs_only": "yes"}, "prometheus_config.scrape_configs_only must be true or false"),
        ({"rules_dir": "relative"}, "prometheus_config.targets_dir is required"),
    ],
)
def test_config_settings(settings: object, expected: str):
    problems = problems_of(_monitoring.scrape_config, settings)
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "extra DCGM fields must be a list of field names"),
        (["pipe_tensor"], "extra DCGM field [0] must be a DCGM field name"),
        (["DCGM_FI_DEV_FB_USED"], "extra DCGM field [0] DCGM_FI_DEV_FB_USED is already in the counters file"),
    ],
)
def test_dcgm_extra_fields(extra: object, expected: str):
    assert any(expected in p for p in problems_of(_monitoring.dcgm_counters_csv, extra))


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70000) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


def mutated(base: dict, keys: list[str]) -> st.SearchStrategy:
    """``base`` with some of ``keys`` replaced by junk or removed, and maybe a junk key added."""
    return st.fixed_dictionaries({k: st.one_of(st.just(base.get(k)), JSONISH) for k in keys}).map(
        lambda d: {k: v for k, v in d.items() if v is not None}
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    hosts=st.lists(mutated(HOST, [*_monitoring.HOST_RULES, "services", "slots"]), max_size=2) | JSONISH,
    capacity=st.lists(mutated(RESULT, ["schema", "service", "capacity", "sla"]), max_size=2) | JSONISH,
    options=mutated({}, list(_monitoring.OPTION_RULES)) | JSONISH,
)
def test_malformed_inputs_end_in_monitoring_error_only(hosts, capacity, options):
    try:
        text = _monitoring.render_rules(hosts, capacity, options)
    except MonitoringError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
    else:
        assert text.startswith("groups:")
    try:
        _monitoring.targets(hosts)
    except MonitoringError as exc:
        assert exc.problems
