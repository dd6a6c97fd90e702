# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""roles/capacity: argument specs mirror the defaults, every module option is passed, fleet templates render."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import jinja2
import yaml

from ansible_collections.gpu.mig.plugins.module_utils._capacity import analysis as cap
from ansible_collections.gpu.mig.plugins.modules.capacity_test import ARGUMENT_SPEC

ROLE = Path(__file__).resolve().parents[3] / "roles" / "capacity"


def test_argument_specs_mirror_defaults():
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    spec = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    assert set(defaults) == set(spec)
    assert all(k.startswith("capacity_") for k in defaults)
    for key, value in defaults.items():
        assert spec[key]["default"] == value, key


def test_run_task_passes_every_module_option():
    task = yaml.safe_load((ROLE / "tasks" / "test.yml").read_text())[0]
    args = task["gpu.mig.capacity_test"]
    assert set(args) == set(ARGUMENT_SPEC)
    # what the role sets itself (the generators and their token: distributed.yml); the rest comes from the test
    role_set = {"host": "inventory_hostname", "output_dir": "capacity_remote_dir",
                "generators": "_capacity_run_generators", "generator_token": "_capacity_run_generator_token"}  # fmt: skip
    for name, value in args.items():
        assert re.search(r"\b%s\b" % re.escape(role_set.get(name, "_capacity_test." + name)), value), name
    assert "async" in task and "poll" in task


def _render(name: str, rows: list, sentences: list, noisy: list | None = None) -> str:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(ROLE / "templates")), trim_blocks=True, keep_trailing_newline=True
    )
    env.filters["to_nice_json"] = lambda v, indent=4: json.dumps(v, indent=indent, sort_keys=True)
    return env.get_template(name).render(
        _capacity_fleet_rows=rows, _capacity_fleet_sentences=sentences, _capacity_fleet_noisy=noisy or []
    )


def _rows():
    sla = cap.parse_sla("p95<300ms")
    capacity = {"sustained_rps": 180.0, "latency_ms": {"p95": 212.0, "p99": 540.0}, "knee_rps": 207.0, "reached": True}
    meta = {
        "host": "n1",
        "service": 'chat "big", v2',
        "profile": "3g.40gb",
        "gpu": "H100",
        "limits": {"max_num_seqs": 64},
    }
    row = cap.table_row(meta, capacity, sla)
    other = cap.table_row(dict(meta, service="ocr|x"), dict(capacity, sustained_rps=None), sla)
    return [row, other], ["chat sustains 180 RPS ..."]


def test_fleet_csv_template_matches_the_python_table():
    rows, sentences = _rows()
    text = _render("fleet.csv.j2", rows, sentences)
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert list(parsed[0].keys()) == cap.TABLE_COLUMNS
    assert parsed[0]["service"] == 'chat "big", v2' and parsed[0]["sustained_rps"] == "180.0"
    assert parsed[1]["sustained_rps"] == "" and len(parsed) == 2
    # the same table as the CLI's fleet command writes
    assert parsed == list(csv.DictReader(io.StringIO(cap.rows_to_csv(rows, cap.TABLE_COLUMNS))))


def test_fleet_markdown_template():
    rows, sentences = _rows()
    text = _render("fleet.md.j2", rows, sentences)
    table = [line for line in text.splitlines() if line.startswith("|")]
    # the same table as the CLI's fleet command writes (rows sorted by service)
    assert table == cap.rows_to_markdown(sorted(rows, key=lambda r: r["service"]), cap.TABLE_COLUMNS).splitlines()
    assert "ocr\\|x" in text and "- chat sustains 180 RPS" in text
    assert "No capacity rows" in _render("fleet.md.j2", [], [])


def _noisy():
    phase = {"a_p95_ms": 40.0, "a_p99_ms": 60.0, "a_errors": 0, "a_within_sla": True, "b_rps": None, "b_p99_ms": None}
    phases = [
        dict(phase, phase="before"),
        dict(phase, phase="during x3", a_p99_ms=900.0, a_within_sla=False, b_rps=60.0, b_p99_ms=1200.0),
        dict(phase, phase="after"),
    ]
    return [{"host": "n1", "within_sla": False, "sentence": "chat at 60 RPS did NOT stay ...", "phases": phases}]


def test_fleet_templates_report_noisy_neighbours():
    rows, sentences = _rows()
    md = _render("fleet.md.j2", rows, sentences, _noisy())
    assert "## Noisy neighbours" in md and "- chat at 60 RPS did NOT stay" in md
    assert "| n1 | during x3 | 40.0 | 900.0 | 0 | NO | 60.0 | 1200.0 |" in md
    assert "## Noisy neighbours" not in _render("fleet.md.j2", rows, sentences)
    data = json.loads(_render("fleet.json.j2", rows, sentences, _noisy()))
    assert data["noisy_neighbour"][0]["within_sla"] is False and len(data["rows"]) == 2


def test_preflight_accepts_noisy_only_tests():
    tasks = yaml.safe_load((ROLE / "tasks" / "preflight.yml").read_text())
    checks = tasks[1]["ansible.builtin.assert"]["that"]
    env = jinja2.Environment()

    def ok(test):
        return all(env.compile_expression(c)(_capacity_test=test) for c in checks)

    base = {"url": "http://x/infer", "sla": {"p95_ms": 100}}
    assert ok(dict(base, start_rps=10))
    assert not ok(base)
    assert ok(dict(base, plan="none", noisy_neighbour={"url": "http://y", "rps": 5, "a_rps": 10}))
    assert not ok(dict(base, plan="none", noisy_neighbour={"url": "http://y", "rps": 5}))
