# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The Grafana dashboard generated from the service list: a model the SDK's own types read back unchanged, queries
Prometheus accepts over series that the generated rules record or the collector writes, the same bytes every time."""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ansible_collections.gpu.mig.plugins.plugin_utils import dashboard as _dashboard
from ansible_collections.gpu.mig.plugins.plugin_utils import monitoring as _monitoring
from ansible_collections.gpu.mig.plugins.plugin_utils.dashboard import DashboardError
from ansible_collections.gpu.mig.tests.unit.plugins.plugin_utils.dashboard_specs import (
    CAPACITY_RESULTS,
    HOSTS,
    SLOTS,
    SPECS,
)

REPO = Path(__file__).resolve().parents[4]
COLLECTOR = REPO / "roles" / "monitoring" / "files" / "gpu_mig_metrics.py"
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\{([^}]*)\}")
_MATCHER = re.compile(r'(\w+)=~?"[^"]*"')
_VARIABLE = re.compile(r"\$\{?(\w+)\}?")


@pytest.fixture(scope="module")
def board() -> dict:
    return _dashboard.generate(HOSTS, dcgm=True)


def _panels(board: dict) -> list[dict]:
    return [p for p in board["panels"] if p["type"] != "row"]


def _rows(board: dict) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {}
    for panel in board["panels"]:
        if panel["type"] == "row":
            current = rows.setdefault(panel["title"], [])
        else:
            current.append(panel)
    return rows


def test_the_sdk_reads_the_model_back_unchanged_into_its_own_types(board):
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models import dashboard, prometheus, timeseries

    register_default_plugins()
    model = dashboard.Dashboard.from_json(copy.deepcopy(board))
    assert json.loads(json.dumps(model, cls=JSONEncoder)) == board
    panels = [p for p in model.panels if not isinstance(p, dashboard.RowPanel)]
    assert len(panels) == len(_panels(board)) and all(isinstance(p, dashboard.Panel) for p in panels)
    assert all(isinstance(p.options, timeseries.Options) for p in panels)
    assert all(isinstance(t, prometheus.Dataquery) for p in panels for t in p.targets)
    variables = {v.name: v.type_val for v in model.templating.list_val}
    assert variables == {"datasource": "datasource", "host": "query", "service": "custom"}


def test_the_model_is_consistent(board):
    ids = [p["id"] for p in board["panels"]]
    assert len(set(ids)) == len(ids) and 0 not in ids
    cells = set()
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        area = {
            (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
    declared = {v["name"] for v in board["templating"]["list"]}
    for panel in _panels(board):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [t["refId"] for t in panel["targets"]]
        assert len(set(refs)) == len(refs)
        used = {name for t in panel["targets"] for name in _VARIABLE.findall(t["expr"])}
        assert used <= declared, panel["title"]
    service = next(v for v in board["templating"]["list"] if v["name"] == "service")
    assert (service["query"], service["multi"], service["includeAll"]) == ("chat,ocr,embed", True, True)


def test_prometheus_accepts_every_query(board, tmp_path):
    """promtool parses each query (variables as Grafana's "All" expands them) as a recording rule's expression."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is required (Debian package prometheus)"
    exprs = sorted({_VARIABLE.sub(".+", t["expr"]) for p in _panels(board) for t in p["targets"]})
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"q_{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    (tmp_path / "queries.yml").write_text(yaml.safe_dump(rules))
    check = subprocess.run(
        [promtool, "check", "rules", str(tmp_path / "queries.yml")], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in check.stdout


def _recorded_labels() -> dict[str, set[str] | None]:
    """Series the generated rules record (all services, a capacity result for chat) -> the labels each carries: the
    rule's own and those its first aggregation keeps (None: not read off the expression)."""
    groups = _monitoring.rule_groups(HOSTS, CAPACITY_RESULTS)
    found: dict[str, set[str] | None] = {}
    for rule in (rule for group in groups["groups"] for rule in group["rules"] if "record" in rule):
        by = re.search(r"\bby \(([^)]*)\)", rule["expr"])
        kept = {x.strip() for x in by.group(1).split(",")} - {"le"} if by else set()
        readable = by or rule["expr"].startswith("vector(")
        found[rule["record"]] = (
            (found.get(rule["record"]) or set()) | kept | set(rule.get("labels") or {}) if readable else None
        )
    return found


def test_every_query_reads_series_the_rules_record_or_the_collector_writes(board):
    spec = importlib.util.spec_from_file_location("gpu_mig_metrics", COLLECTOR)
    collector = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(collector)
    recorded = _recorded_labels()
    read = {}
    for panel in _panels(board):
        for target in panel["targets"]:
            legend_labels = set(re.findall(r"\{\{(\w+)\}\}", target["legendFormat"]))
            for name, matchers in _SELECTOR.findall(target["expr"]):
                read.setdefault(name, set()).update(set(_MATCHER.findall(matchers)) | legend_labels)
    assert read, "the panels query series"
    from_rules = {name: labels for name, labels in read.items() if name in recorded}
    from_collector = {name for name in read if name in collector.FAMILIES}
    assert set(read) == set(from_rules) | from_collector, "series nobody defines"
    for name, labels in from_rules.items():
        assert recorded[name] is not None and labels <= recorded[name], (
            f"{name} is recorded with {sorted(recorded[name])}, read with {sorted(labels)}"
        )
    assert from_collector == set(_dashboard.COLLECTOR_SERIES.values())


def _queries(panel: dict) -> list[tuple[str, str]]:
    return [(t["expr"], t["legendFormat"]) for t in panel["targets"]]


def test_each_service_gets_the_panels_of_its_first_days(board):
    rows = _rows(board)
    assert list(rows) == ["Overview", "chat: slot chat, triton", "ocr: slot ocr, vllm", "embed: slot embed, generic"]
    first_days = ["Request rate against capacity", "Queue length", "Queue time and execution time",
                  "Errors, timeouts, rejections", "GPU utilization (DCGM)", "MIG memory"]  # fmt: skip
    assert [p["title"] for p in rows["chat: slot chat, triton"]] == ["Latency p50/p95/p99", *first_days]
    assert [p["title"] for p in rows["ocr: slot ocr, vllm"]] == ["Latency p50/p95/p99", *first_days]
    assert [p["title"] for p in rows["embed: slot embed, generic"]] == first_days  # no latency histogram
    chat = {p["title"]: p for p in rows["chat: slot chat, triton"]}
    s = _monitoring.SERVICE_SERIES
    assert _queries(chat["Latency p50/p95/p99"]) == [
        *(
            (f'{s[f"latency_{q}"]}{{host=~"$host", service="chat"}}', f"{q} {{{{host}}}}")
            for q in ("p50", "p95", "p99")
        ),
        ("vector(0.2)", "SLA p95 200 ms"),
        ("vector(0.4)", "SLA p99 400 ms"),
    ]
    assert _queries(chat["Request rate against capacity"]) == [
        (f'{s["requests"]}{{host=~"$host", service="chat"}}', "requests {{host}}"),
        (f'{s["sustained_rps"]}{{service="chat"}}', "sustained capacity"),
        (f'{s["knee_rps"]}{{service="chat"}}', "knee"),
        ("vector(9)", "SLA target 9 req/s"),
    ]
    assert _queries(chat["Queue length"]) == [
        (f'{s["queue_length"]}{{host=~"$host", service="chat"}}', "admission queue {{host}}"),
        (f'{s["server_queue_length"]}{{host=~"$host", service="chat"}}', "triton queue {{host}}"),
        ("vector(80)", "queue cap 80"),  # 16 (fast) + 64 (background)
    ]
    assert _queries(chat["Queue time and execution time"])[2:] == [
        ("vector(0.5)", "queue timeout 500 ms (fast, background)")
    ]
    assert [e for e, _legend in _queries(chat["MIG memory"])] == [
        'gpu_mig_slot_memory_used_bytes{host=~"$host", slot="chat"}',
        'gpu_mig_slot_memory_total_bytes{host=~"$host", slot="chat"}',
    ]
    # The reference lines (every constant, the recorded capacity) are drawn dashed, the measurements are not.
    dashed = {o["matcher"]["options"] for o in chat["Request rate against capacity"]["fieldConfig"]["overrides"]}
    assert dashed == {"B", "C", "D"}
    embed = {p["title"]: p for p in rows["embed: slot embed, generic"]}
    assert [legend for _expr, legend in _queries(embed["Queue length"])] == [
        "admission queue {{host}}"
    ]  # no cap, no server queue


def test_dcgm_panels_only_where_dcgm_runs(board):
    without = _dashboard.generate(HOSTS)
    titles = [p["title"] for p in _panels(without)]
    assert "GPU utilization (DCGM)" not in titles
    assert len(titles) == len(_panels(board)) - 3
    gpu = next(p for p in _panels(board) if p["title"] == "GPU utilization (DCGM)")
    assert [t["expr"] for t in gpu["targets"]] == [
        f'{_monitoring.SLOT_SERIES[key]}{{host=~"$host", slot="chat"}}'
        for key in ("gr_engine_active", "sm_active", "dram_active")
    ]


def test_the_same_input_gives_the_same_bytes(board):
    text = _dashboard.dumps(board)
    assert _dashboard.dumps(_dashboard.generate(HOSTS, dcgm=True)) == text
    script = (
        "import hashlib, sys\n"
        "from ansible_collections.gpu.mig.plugins.plugin_utils import dashboard\n"
        "from ansible_collections.gpu.mig.tests.unit.plugins.plugin_utils.dashboard_specs import HOSTS\n"
        "sys.stdout.write(hashlib.sha256(dashboard.dumps(dashboard.generate(HOSTS, dcgm=True)).encode()).hexdigest())\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "4242", "PYTHONPATH": os.pathsep.join(sys.path)}  # the collection as here
    other = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert other.stdout == hashlib.sha256(text.encode()).hexdigest()


def test_every_problem_is_named_at_once():
    hosts = copy.deepcopy(HOSTS)
    hosts[0]["services"][0]["port"] = "8000"
    hosts[0]["services"][2]["slot"] = "nowhere"
    hosts.append({"host": "bad host"})
    with pytest.raises(DashboardError) as caught:
        _dashboard.generate(hosts, dcgm="yes", title="two\nlines", uid="no spaces allowed")
    problems = caught.value.problems
    assert len(problems) == 6, problems
    for words in (("host gpu-1", "service chat", "port"), ("host gpu-1", "service embed", "unknown slot 'nowhere'"),
                  ("hosts[2]", "host"), ("dcgm", "'yes'"), ("title", "control character"),
                  ("uid", "1-40 letters")):  # fmt: skip
        assert any(all(w in p for w in words) for p in problems), (words, problems)


def test_a_service_must_show_the_same_panels_on_every_host():
    hosts = copy.deepcopy(HOSTS)
    hosts[1]["services"][0]["sla"]["p99_ms"] = 500
    hosts.append({"host": "gpu-3", "services": SPECS[:1], "slots": SLOTS})
    with pytest.raises(DashboardError) as caught:
        _dashboard.generate(hosts)
    assert caught.value.problems == [
        "service chat: its slot, server, request classes or SLA differ between hosts (gpu-1, gpu-3; gpu-2); the "
        "dashboard has one row per service name: give them the same settings or distinct names"
    ]


def test_without_the_sdk_the_error_names_the_package(monkeypatch):
    for name in [n for n in sys.modules if n.startswith("grafana_foundation_sdk")] + ["grafana_foundation_sdk"]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(
        DashboardError, match=r"needs the Python package grafana-foundation-sdk on the controller.*pip "
    ):
        _dashboard.generate(HOSTS)
