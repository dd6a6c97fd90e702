# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""playbooks/plan.yml on a simulated host with two H100s: the plan's host_vars applied by site.yml unchanged converge
the host to the plan (slots at the planned placements, one unit per replica pinned to its slot),
a second site.yml run changes nothing, and planning again on the converged host keeps every slot. Bad services are
refused with every problem before anything is written."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from ansible_collections.gpu.mig.tests.unit.playbooks.simfleet import build, changed_tasks, playbook, recap, stop

HOST = "sim00-h100"


def deploy(name: str, port: int) -> dict:
    return {"command": ["/usr/bin/python3", "/srv/%s.py" % name], "port": port, "backend_port": port + 10000}


SERVICES = [
    {"name": "chat", "class": "fast", "sla": "p95<200ms", "target_rps": 120, "concurrency": 4, "memory_gib": 15,
     "deploy": deploy("chat", 8000)},
    {"name": "classifier", "class": "fast", "sla": "p95<100ms", "target_rps": 150, "concurrency": 2, "memory_gib": 4,
     "min_replicas": 2, "deploy": deploy("classifier", 8100)},
    {"name": "ocr", "class": "background", "sla": "p95<500ms", "target_rps": 30, "concurrency": 2, "memory_gib": 8,
     "deploy": deploy("ocr", 8200)},
    {"name": "tagger", "class": "background", "sla": "p95<1s", "target_rps": 5, "memory_gib": 4,
     "deploy": deploy("tagger", 8300)},
]  # fmt: skip
# chat's and classifier's rows come in a fleet capacity table file, ocr's inline; tagger is never measured.
TABLE = [
    {"service": "chat", "profile": "3g.40gb", "gpu": "H100", "sustained_rps": 65.6, "sla": "p95<200ms"},
    {"service": "classifier", "profile": "1g.10gb", "gpu": "H100", "sustained_rps": 60.6, "sla": "p95<100ms"},
]
INLINE = [{"service": "ocr", "profile": "1g.10gb", "gpu": "H100", "sustained_rps": 22.2, "sla": "p95<500ms"}]


def plan_vars(out: Path, **more) -> dict:
    return {"gpu_mig_plan_services": SERVICES, "gpu_mig_plan_dir": str(out), "gpu_mig_plan_capacity": INLINE,
            "gpu_mig_plan_capacity_files": [str(out.parent / "fleet-capacity.json")], **more}  # fmt: skip


def live(root: Path) -> list[list[tuple[str, int]]]:
    """Per GPU, its GPU instances (profile, start) read through the host's own NVML, as the modules do."""
    code = "import json; from ansible_collections.gpu.mig.plugins.module_utils._mig import nvml; print(json.dumps(nvml.gather()))"
    facts = json.loads(subprocess.run([root / "python", "-c", code], capture_output=True, check=True).stdout)
    return [sorted((gi["profile"], gi["placement"]["start"]) for gi in g["gpu_instances"]) for g in facts["gpus"]]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory):
    """The fleet and the first plan.yml run."""
    base = build(tmp_path_factory.mktemp("plan") / "fleet", "h100")
    (base / "fleet-capacity.json").write_text(json.dumps({"schema": "gpu.mig/capacity-fleet/v1", "rows": TABLE}))
    try:
        out = base / "plan"
        yield base, out, playbook(base, "plan.yml", extra=plan_vars(out, gpu_mig_plan_render_png=True))
    finally:
        stop(base)


def test_plan_writes_host_vars_report_and_capacity_tests(fleet):
    _base, out, run = fleet
    assert run.returncode == 0, run.stdout[-4000:]
    plan = json.loads((out / "plan.json").read_text())
    host_vars = yaml.safe_load((out / "inventory/host_vars" / (HOST + ".yml")).read_text())
    assert host_vars == {key: plan["hosts"][HOST][key] for key in ("gpu_mig_layout", "inference_service_specs")}
    assert yaml.safe_load((out / "inventory/hosts.yml").read_text()) == {"all": {"hosts": {HOST: {}}}}
    verdicts = {name: (s["verdict"], s["profile"], s["replicas"]) for name, s in plan["services"].items()}
    assert verdicts["classifier"] == ("placed", "1g.10gb", 3)  # the fleet table file was read
    assert verdicts["ocr"][0] == "estimate" and verdicts["tagger"] == ("measure first", "1g.10gb", 1)
    assert plan["summary"]["gpus_needed"] == plan["summary"]["gpus_available"] == 2
    tests = yaml.safe_load((out / "capacity-tests.yml").read_text())["capacity_tests"]
    assert [(t["service"], t.get("url")) for t in tests] == [
        ("tagger", "http://%s:8300" % HOST), ("chat", "http://%s:8000" % HOST), ("ocr", "http://%s:8200" % HOST)]  # fmt: skip
    report = (out / "plan.md").read_text()
    assert "![each GPU's slices and the services placed](plan-gpus.png)" in report
    assert "revisit slicing at +21.2 % traffic" in report  # classifier: 3 x 60.6 over 150
    for name in ("plan-gpus.png", "plan-services.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert "GPUs: 2 used of 2 available, 2 needed (short: none), lower bound 2." in run.stdout
    changes = plan["hosts"][HOST]["changes"]
    assert [m["gpu"] for m in changes["mig_mode"] if m["enable"]] == [0, 1] and not changes["destroy"]


def test_site_applies_the_plan_and_a_second_run_changes_nothing(fleet):
    base, out, run = fleet
    assert run.returncode == 0
    plan = json.loads((out / "plan.json").read_text())
    first = playbook(base, "site.yml", out / "inventory")
    assert first.returncode == 0 and recap(first, HOST)["failed"] == 0, first.stdout[-4000:]
    root = base / HOST
    planned = [sorted((s["profile"], s["start"]) for s in g["slots"]) for g in plan["hosts"][HOST]["gpus"]]
    assert live(root) == planned
    slot_map = json.loads((root / "etc/gpu-mig/slots.json").read_text())
    specs = plan["hosts"][HOST]["inference_service_specs"]
    assert sorted(slot_map) == sorted(s["slot"] for s in specs)
    for spec in specs:
        unit = (root / ("etc/systemd/system/inference-%s.service" % spec["name"])).read_text()
        assert "EnvironmentFile=/run/gpu-mig/slots/%s.env" % spec["slot"] in unit
        env = (root / ("run/gpu-mig/slots/%s.env" % spec["slot"])).read_text()
        assert "GPU_MIG_PROFILE=%s\n" % slot_map[spec["slot"]]["profile"] in env
    haproxy = (root / "etc/haproxy/haproxy.cfg").read_text()
    assert all("bind 0.0.0.0:%d" % s["port"] in haproxy for s in specs)
    again = playbook(base, "site.yml", out / "inventory")
    assert again.returncode == 0 and recap(again, HOST)["changed"] == 0, changed_tasks(again) or again.stdout[-4000:]


def test_planning_the_converged_host_again_keeps_every_slot(fleet):
    base, out, run = fleet
    assert run.returncode == 0
    before = json.loads((out / "plan.json").read_text())
    again = playbook(base, "plan.yml", extra=plan_vars(base / "replan"))
    assert again.returncode == 0, again.stdout[-4000:]
    plan = json.loads((base / "replan/plan.json").read_text())
    changes = plan["hosts"][HOST]["changes"]
    slots = sorted(s["slot"] for s in before["hosts"][HOST]["inference_service_specs"])
    assert (changes["changed"], changes["create"], changes["destroy"]) == (False, [], [])
    assert sorted(changes["keep"]) == slots
    assert plan["hosts"][HOST]["gpus"] == before["hosts"][HOST]["gpus"]
    assert plan["hosts"][HOST]["inference_service_specs"] == before["hosts"][HOST]["inference_service_specs"]


def test_bad_services_are_refused_with_every_problem_and_nothing_is_written(fleet):
    base, _out, _run = fleet
    services = [{**SERVICES[0], "class": "urgent"}, {**SERVICES[1], "target_rps": 0}]
    out = base / "refused"
    run = playbook(base, "plan.yml", extra={**plan_vars(out), "gpu_mig_plan_services": services})
    assert run.returncode != 0
    assert "services[0].class must be one of fast, background" in run.stdout
    assert "services[1].target_rps must be > 0" in run.stdout
    assert not out.exists()
    unset = playbook(base, "plan.yml", extra={"gpu_mig_plan_dir": str(out)})
    assert unset.returncode != 0 and "gpu_mig_plan_services is not set" in unset.stdout
    assert not out.exists()
