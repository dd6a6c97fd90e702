# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The gpu.mig.capacity_test module: documentation matches the spec, check mode probes only, a run reports."""

from __future__ import annotations

import json

import pytest
import yaml
from ansible.module_utils.testing import patch_module_args

from ansible_collections.gpu.mig.plugins.modules import capacity_test


@pytest.fixture
def run(capsys):
    def runner(args: dict, check_mode: bool = False) -> tuple[dict, bool]:
        with patch_module_args(dict(args, _ansible_check_mode=check_mode)), pytest.raises(SystemExit) as exit_info:
            capacity_test.main()
        return json.loads(capsys.readouterr().out), exit_info.value.code != 0

    return runner


def test_documentation_matches_argument_spec():
    doc = yaml.safe_load(capacity_test.DOCUMENTATION)
    yaml.safe_load(capacity_test.EXAMPLES)
    yaml.safe_load(capacity_test.RETURN)
    options = doc["options"]
    spec = capacity_test.ARGUMENT_SPEC
    assert set(options) == set(spec)
    for name, s in spec.items():
        o = options[name]
        assert o["type"] == s["type"], name
        assert o.get("default") == s.get("default"), name
        assert o.get("choices") == s.get("choices"), name
        assert bool(o.get("required")) == bool(s.get("required")), name
        assert o.get("elements") == s.get("elements"), name
    assert doc["author"] == ["gpu.mig maintainers (@gpu-mig)"]
    assert doc["attributes"]["check_mode"]["support"] == "full"


def _args(server, **kw):
    args = {
        "url": server.url(),
        "payload": {"inputs": []},
        "start_rps": 40,
        "plan": "linear",
        "step_pct": 50,
        "max_steps": 2,
        "warmup": 0.2,
        "hold": 0.8,
        "initial_warmup": 0.2,
        "arrival": "constant",
        "sla": {"p95_ms": 200, "max_schedule_lag_ms": 50},
        "service": "chat",
        "profile": "1g.10gb",
        "gpu": "H100",
        "host": "node1",
        "concurrency": 4,
    }
    args.update(kw)
    return args


def test_check_mode_only_probes(run, capacity_server):
    server = capacity_server(workers=4, mean_ms=5)
    result, failed = run(_args(server), check_mode=True)
    assert not failed and not result["changed"]
    assert result["probe"]["status"] == 200
    assert "steps" not in result and "endpoint answered HTTP 200" in result["msg"]


def test_run_reports_sentence_table_and_files(run, capacity_server, tmp_path):
    server = capacity_server(workers=4, mean_ms=5)
    result, failed = run(_args(server, output_dir=str(tmp_path), record_requests=True))
    assert not failed, result
    assert result["changed"]  # result files were written
    assert result["sla_sentence"].startswith("chat on MIG 1g.10gb (H100) sustains 60 RPS at p95 < 200 ms")
    assert result["table_row"]["host"] == "node1" and result["table_row"]["sustained_rps"] == 60.0
    assert [s["offered_rps"] for s in result["steps"]] == [40.0, 60.0]
    assert all(s["verdict"]["passed"] for s in result["steps"])
    saved = json.loads((tmp_path / "capacity-chat.json").read_text())
    assert saved["capacity"] == result["capacity"]
    assert (tmp_path / "capacity-chat.steps.csv").read_text().splitlines()[0].startswith("index,kind,offered_rps")
    lines = (tmp_path / "capacity-chat.requests.csv").read_text().splitlines()
    assert lines[0].startswith("step,intended_s,send_lag_s,status,latency_s") and len(lines) > 40


@pytest.mark.parametrize(
    "override, message",
    [
        ({"sla": {"max_error_rate": 0.01}}, "names no latency percentile"),
        ({"hold": 60, "max_steps": 20, "time_limit": 60}, "more than time_limit 60 s"),
        ({"url": "http://127.0.0.1:9/none"}, "cannot reach http://127.0.0.1:9/none"),
    ],
)
def test_bad_input_fails_clearly(run, capacity_server, override, message):
    server = capacity_server()
    result, failed = run(_args(server, **override), check_mode=True)
    assert failed and message in result["msg"]


def test_non_2xx_probe_fails(run, capacity_server):
    server = capacity_server()
    result, failed = run(_args(server, url=server.url("/status/500")))
    assert failed and "returned HTTP 500" in result["msg"]


def test_noisy_neighbour_after_the_search(run, capacity_server, tmp_path):
    """The search finds A's rate; A is then held there while B (sharing A's 4 workers) steps to 3x."""
    server = capacity_server(workers=4, mean_ms=20)  # 200 RPS in all
    result, failed = run(
        _args(
            server,
            url=server.url("/a"),
            start_rps=60,
            max_steps=1,
            confirm=False,
            sla={"p99_ms": 150, "max_schedule_lag_ms": 50},
            output_dir=str(tmp_path),
            noisy_neighbour={
                "url": server.url("/b"),
                "payload": {},
                "rps": 60,
                "multipliers": [1, 3],
                "service": "ocr",
                "hold": 1.0,
                "warmup": 0.3,
            },
        )
    )
    assert not failed, result
    nn = result["noisy_neighbour"]
    assert [p["phase"] for p in nn["phases"]] == ["before", "during x1", "during x3", "after"]
    assert all(p["a_rps"] == 60.0 for p in nn["phases"])  # held at the sustained rate the search found
    ok = {p["phase"]: p["a_within_sla"] for p in nn["phases"]}
    assert ok["before"] and ok["during x1"] and ok["after"]  # 120 of 200 RPS: fine
    assert not ok["during x3"] and not nn["within_sla"]  # 240 RPS offered to a 200 RPS server
    assert nn["sentence"].startswith("chat at 60 RPS did NOT stay within its SLA while ocr stepped to 3x 60 RPS")
    assert result["sla_sentence"].startswith("chat on MIG 1g.10gb (H100) sustains 60 RPS")
    saved = json.loads((tmp_path / "capacity-chat.json").read_text())
    assert saved["noisy_neighbour"]["within_sla"] is False


def test_noisy_neighbour_only(run, capacity_server):
    server = capacity_server(workers=4, mean_ms=5)
    nn = {"url": server.url("/b"), "payload": {}, "rps": 20, "multipliers": [2], "hold": 0.6, "warmup": 0.2}
    args = _args(server, sla={"p95_ms": 200, "max_schedule_lag_ms": 50}, plan="none", noisy_neighbour=nn)
    del args["start_rps"]
    result, failed = run(args)
    assert failed and "needs noisy_neighbour with a_rps" in result["msg"]
    result, failed = run(dict(args, noisy_neighbour=dict(nn, a_rps=30)))
    assert not failed, result
    assert "steps" not in result and "capacity" not in result
    assert result["noisy_neighbour"]["within_sla"] and result["sla_sentence"] == result["noisy_neighbour"]["sentence"]
    assert [p["phase"] for p in result["noisy_neighbour"]["phases"]] == ["before", "during x2", "after"]
    # a plan that searches needs its start rate
    result, failed = run(dict(args, plan="linear"))
    assert failed and "start_rps" in result["msg"]


def test_header_values_stay_out_of_the_results(run, capacity_server, tmp_path):
    server = capacity_server(workers=4, mean_ms=5)
    nn = {"url": server.url("/b"), "payload": {}, "rps": 20, "multipliers": [1], "hold": 0.4, "warmup": 0.1}
    nn["headers"] = {"Authorization": "Bearer b-secret"}
    args = _args(server, max_steps=1, confirm=False, output_dir=str(tmp_path), noisy_neighbour=nn)
    result, failed = run(dict(args, headers={"Authorization": "Bearer a-secret"}))
    assert not failed, result
    text = (tmp_path / "capacity-chat.json").read_text()
    assert "a-secret" not in text and "b-secret" not in text and "Authorization" in text
