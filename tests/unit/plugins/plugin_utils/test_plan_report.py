# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The plan report: rows with "revisit slicing", GPU grids at the placements mig_instances creates, the tests that
check the plan, Markdown/CSV/PNG files, the filters and the CLI, and malformed plans refused with every problem."""

from __future__ import annotations

import copy
import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.gpu.mig.plugins.filter.plan_report import FilterModule
from ansible_collections.gpu.mig.plugins.module_utils._mig import apply as _apply
from ansible_collections.gpu.mig.plugins.module_utils._mig import layout as _layout
from ansible_collections.gpu.mig.plugins.plugin_utils import plan_report as pr
from ansible_collections.gpu.mig.plugins.plugin_utils import service_planner as sp
from ansible_collections.gpu.mig.tests.unit.plugins.filter import mig_gpu_facts

H100 = "NVIDIA H100 80GB HBM3"
FILTERS = FilterModule().filters()


def service(name, memory_gib, target, cls="fast", sla="p95<100ms", port=None, **extra):
    deploy = {"port": port, "backend_port": port + 10000, "command": ["/usr/bin/python3"]} if port else {}
    return {"name": name, "class": cls, "sla": sla, "target_rps": target, "headroom_pct": 20, "memory_gib": memory_gib,
            "deploy": deploy, **extra}  # fmt: skip


def rows(name, rates, sla="p95<100ms"):
    return [{"service": name, "profile": p, "gpu": "H100", "sustained_rps": r, "sla": sla} for p, r in rates.items()]


@pytest.fixture(scope="module")
def facts():
    """Host h: GPU 0 holds a busy 1g.10gb at slice 6 nobody names, GPU 1 is empty; host p: an L4 without MIG."""
    busy = [mig_gpu_facts.gpu_instance(H100, 9, "1g.10gb", 6, processes=[4242])]
    return {
        "h": {"gpus": [mig_gpu_facts.gpu(0, H100, instances=busy), mig_gpu_facts.gpu(1, H100)]},
        "p": {"gpus": [mig_gpu_facts.gpu(0, "NVIDIA L4", mig=None)]},
    }


@pytest.fixture(scope="module")
def plan(facts):
    """chat measured on each profile that holds it (placed on 3g.40gb), ocr measured on 1g.10gb (estimated on a larger profile), tagger never
    measured (measure first), and embed with a whole-GPU measurement (the L4)."""
    services = [
        service("chat", 30, 100, port=8000),
        service("ocr", 6, 60, cls="background", sla="p95<500ms", port=8100),
        service("tagger", 3, 10, port=8200),
        service("embed", 10, 5, port=8300, dedicated=True),
    ]
    capacity = (
        rows("chat", {"3g.40gb": 70, "4g.40gb": 75, "7g.80gb": 100})
        + rows("ocr", {"1g.10gb": 20}, "p95<500ms")
        + [{"service": "embed", "profile": "whole", "gpu": "NVIDIA L4", "sustained_rps": 8, "sla": "p95<100ms"}]
    )
    return sp.plan_services(services, facts, capacity)


def test_rows_state_capacity_headroom_and_when_to_revisit(plan):
    by_name = {r["service"]: r for r in pr.plan_rows(plan)}
    assert list(by_name) == ["chat", "embed", "ocr", "tagger"]
    chat, ocr, tagger = by_name["chat"], by_name["ocr"], by_name["tagger"]
    assert (chat["verdict"], chat["kind"], chat["profile"], chat["replicas"]) == ("placed", "measured", "3g.40gb", 2)
    assert chat["capacity_rps"] == pytest.approx(140) and chat["demand_rps"] == pytest.approx(120)
    assert chat["headroom_pct"] == pytest.approx(40) and chat["revisit"] == "revisit slicing at +40 % traffic"
    assert ocr["verdict"] == "estimate" and ocr["revisit"].endswith("% traffic (estimate)")
    assert ocr["revisit"] == "revisit slicing at %+g %% traffic (estimate)" % plan["services"]["ocr"]["headroom_pct"]
    assert ocr["basis"].startswith("estimate from measured on NVIDIA H100 80GB HBM3 1g.10gb")
    assert (tagger["verdict"], tagger["revisit"], tagger["capacity_rps"]) == ("measure first", "measure first", None)
    assert by_name["embed"]["verdict"] == "dedicated GPU" and by_name["embed"]["sla"] == "p95<100ms"


def test_each_gpu_grid_shows_its_slots_where_mig_instances_creates_them(plan, facts):
    grids = {(g["host"], g["index"]): g for g in pr.gpu_grids(plan)}
    assert list(grids) == [("h", 0), ("h", 1), ("p", 0)]
    for grid in grids.values():
        covered = [k for box in grid["boxes"] for k in range(box["start"], box["start"] + box["size"])]
        assert covered == list(range(grid["slices"])), grid  # no gap, no overlap
    # The starts are those mig_instances' planner picks for the host's layout on the same facts.
    _facts, states, models = _apply.host_from_facts(facts["h"]["gpus"])
    applied = _layout.plan_layout(plan["hosts"]["h"]["gpu_mig_layout"], states, models)
    drawn = {(g["index"], b["label"].split("\n")[0], b["start"]) for g in grids.values() if g["host"] == "h"
             for b in g["boxes"] if b["kind"] in ("fast", "background")}  # fmt: skip
    assert drawn == {(s.gpu_index, s.name, s.start) for s in applied.slots if s.gi_id is None}  # the new slots
    assert {name for _gpu, name, _start in drawn} == {"chat-1", "chat-2", "ocr-1", "tagger-1"}
    busy = [b for b in grids[("h", 0)]["boxes"] if b["kind"] == "kept"]
    assert [(b["start"], b["size"], b["label"]) for b in busy] == [(6, 1, "busy\n1g.10gb")]
    assert [b["kind"] for b in grids[("p", 0)]["boxes"]] == ["whole"]
    assert grids[("p", 0)]["boxes"][0]["label"] == "embed"
    frees = [b for g in grids.values() for b in g["boxes"] if b["kind"] == "free"]
    assert sum(b["size"] for b in frees) == sum(
        r["free_memory_slices"] for r in plan["hosts"]["h"]["gpus"]
    )  # free runs are the planner's free slices


def test_capacity_tests_measure_first_then_check_every_estimate(plan):
    tests = pr.capacity_tests(plan)
    assert tests[: len(plan["capacity_tests"])] == plan["capacity_tests"]
    assert [t["service"] for t in tests] == ["tagger", "ocr"]
    ocr, report = tests[1], plan["services"]["ocr"]
    place = report["placements"][0]
    spec = next(s for s in plan["hosts"]["h"]["inference_service_specs"] if s["slot"] == place["slot"])
    assert ocr == {
        "service": "ocr",
        "profile": report["profile"],
        "gpu": H100,
        "sla": "p95<500ms",
        "target_rps": round(report["demand_rps"] / report["replicas"], 3),
        "start_rps": round(report["demand_rps"] / report["replicas"] / 4, 3),
        "concurrency": 1,
        "host": "h",
        "url": "http://h:%d" % spec["port"],
    }
    assert FILTERS["plan_capacity_tests"](plan) == tests


def test_markdown_states_summary_rows_gpus_changes_and_tests(plan):
    text = FILTERS["plan_report"](plan)
    summary = plan["summary"]
    assert text.startswith("# MIG plan\n\n> 4 services on %d of 3 GPUs" % summary["gpus_used"])
    assert "![" not in text
    for row in pr.plan_rows(plan):
        assert "| %s | %s | %s |" % (row["service"], row["class"], row["verdict"]) in text
        assert row["revisit"] in text
    for slot in plan["hosts"]["h"]["gpus"][0]["slots"]:
        assert "%s %s @%d" % (slot["slot"] or "busy", slot["profile"], slot["start"]) in text
    assert "| p | 0 | NVIDIA L4 | whole GPU: embed |" in text
    assert "| tagger | h | %s | 1g.10gb | p95<100ms |" % H100 in text
    linked = FILTERS["plan_report"](plan, images=True, name="fleet")
    assert "![target vs capacity per service](fleet-services.png)" in linked
    assert "![each GPU's slices and the services placed](fleet-gpus.png)" in linked


def test_render_writes_markdown_csv_and_two_pngs(plan, tmp_path):
    files = pr.render(plan, str(tmp_path), "fleet")
    assert sorted(files) == ["csv", "gpus_png", "markdown", "services_png"]
    for key in ("gpus_png", "services_png"):
        data = (tmp_path / ("fleet-%s.png" % key.split("_", maxsplit=1)[0])).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    table = list(csv.DictReader(io.StringIO((tmp_path / "fleet.csv").read_text())))
    assert [r["service"] for r in table] == ["chat", "embed", "ocr", "tagger"]
    assert table[0]["revisit"] == "revisit slicing at +40 % traffic"
    assert (tmp_path / "fleet.md").read_text() == pr.render_markdown(plan, pr.image_names("fleet"))
    assert sorted(pr.render(plan, str(tmp_path / "text"), png=False)) == ["csv", "markdown"]


def test_a_malformed_plan_is_refused_with_every_problem_at_once(plan):
    broken = copy.deepcopy(plan)
    broken["summary"]["gpus_used"] = -1
    broken["summary"]["gpus_short"] = {H100: 0}
    broken["hosts"]["h"]["gpus"][0]["slots"][0]["start"] = "zero"
    del broken["hosts"]["h"]["gpus"][1]["free_memory_slices"]
    broken["services"]["chat"]["verdict"] = "great"
    broken["services"]["ocr"]["sla"] = "p95<fast"
    broken["services"]["tagger"]["placements"] = [{"slot": "tagger-1"}]
    broken["capacity_tests"][0]["sla"] = 5
    with pytest.raises(pr.PlanReportError) as err:
        pr.render_markdown(broken)
    assert err.value.problems == [
        "plan.summary.gpus_used must be >= 0, got -1",
        "plan.summary.gpus_short.%s must be >= 1, got 0" % H100,
        "plan.hosts.h.gpus[0].slots[0].start must be an integer from 0 to 63, got 'zero'",
        "plan.hosts.h.gpus[1].free_memory_slices is required",
        "plan.capacity_tests[0].sla must be a mapping such as {p95_ms: 300, p99_ms: 800} or a string 'p95<300ms'",
        "plan.services.chat.verdict must be one of %s, got 'great'" % ", ".join(pr.VERDICTS),
        "plan.services.ocr.sla: cannot parse the term 'p95<fast'; write terms like 'p95<300ms', 'p99<1s' or "
        "'errors<=0.1%'",
        "plan.services.ocr.sla names no latency percentile; give at least one, e.g. p95_ms: 300 (and p99_ms: 800). "
        "A capacity without a latency bound is just the saturation throughput.",
        "plan.services.tagger.placements[0].host is required",
    ]
    with pytest.raises(AnsibleFilterError, match=r"cannot be reported .*:\n- plan must be a mapping"):
        FILTERS["plan_report"](["not", "a", "plan"])
    with pytest.raises(AnsibleFilterError, match=r"\n- plan.capacity_tests is required"):
        FILTERS["plan_capacity_tests"]({k: v for k, v in plan.items() if k != "capacity_tests"})


def cli(*args):
    collections = Path(pr.__file__).parents[5]  # <dir>/ansible_collections/gpu/mig/plugins/plugin_utils
    env = dict(os.environ, PYTHONPATH=str(collections))
    argv = [sys.executable, "-m", pr.__name__, *args]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, check=False)


def test_cli_renders_a_plan_file_and_refuses_bad_ones_without_a_traceback(plan, tmp_path):
    good = tmp_path / "plan.json"
    good.write_text(json.dumps(plan))
    run = cli(str(good), "--out", str(tmp_path / "out"), "--no-png")
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        "csv: %s" % (tmp_path / "out/plan.csv"),
        "markdown: %s" % (tmp_path / "out/plan.md"),
    ]
    bad = tmp_path / "bad.json"
    bad.write_text('{"hosts": {}, "services": {}')
    for path, why in ((bad, "Expecting"), (tmp_path / "missing.json", "No such file"), (good, "gpus_used")):
        if path is good:
            good.write_text(json.dumps({**plan, "summary": {**plan["summary"], "gpus_used": "two"}}))
        run = cli(str(path), "--out", str(tmp_path / "x"))
        assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
        assert run.stderr.startswith("%s: cannot report %s: " % (pr.PROG, path)) and why in run.stderr
