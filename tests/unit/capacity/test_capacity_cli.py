# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The capacity CLI (plugin_utils/capacity_cli.py): run with plots and report, report/fleet from saved results, noisy
neighbour, predict."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ansible_collections.gpu.mig.plugins.plugin_utils import capacity_cli as cli
from ansible_collections.gpu.mig.tests.unit.process_fixtures import started_processes


def _run_args(server, out, *extra):
    return [
        "run",
        "--url",
        server.url(),
        "--payload",
        '{"inputs": []}',
        "--start-rps",
        "100",
        "--plan",
        "linear",
        "--step-pct",
        "60",
        "--max-steps",
        "3",
        "--warmup",
        "0.3",
        "--hold",
        "0.8",
        "--initial-warmup",
        "0.2",
        "--arrival",
        "constant",
        "--sla",
        '{"p95_ms": 100, "p99_ms": 300, "max_schedule_lag_ms": 50}',  # the test machine is shared: tolerate lag
        "--concurrency",
        "4",
        "--metrics-urls",
        server.url("/metrics"),
        "--metrics-interval",
        "0.2",
        "--limits",
        "maxconn=4,instances=4",
        "--service",
        *extra,
        "--out",
        str(out),
        "--quiet",
    ]


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_writes_results_plots_and_report(capacity_server, tmp_path, capsys):
    server = capacity_server(workers=4, mean_ms=20)
    assert cli.main(_run_args(server, tmp_path, "chat", "--profile", "1g.10gb")) == 0
    out = capsys.readouterr().out
    assert out.startswith("chat on MIG 1g.10gb sustains 160 RPS at p95 < 100 ms (and p99 < 300 ms)")
    for name in ("throughput", "latency", "queue"):
        assert _is_png(tmp_path / ("capacity-chat-%s.png" % name))
    md = (tmp_path / "capacity-chat.md").read_text()
    assert "![achieved vs offered](capacity-chat-throughput.png)" in md
    assert "Knee at 256 RPS because" in md and "Queueing model" in md
    result = json.loads((tmp_path / "capacity-chat.json").read_text())
    assert result["table_row"]["limits"] == "instances=4, maxconn=4"
    steps = [(s["offered_rps"], s["role"]) for s in result["steps"] if s["kind"] == "step"]
    assert steps[:4] == [(100.0, "step"), (160.0, "step"), (256.0, "step"), (160.0, "confirm")]
    assert result["capacity"]["confirmed"] and "confirmed" in out

    # a second service, then one fleet table from both result files
    assert cli.main(_run_args(server, tmp_path, "ocr", "--profile", "2g.20gb", "--no-report", "--max-steps", "1")) == 0
    capsys.readouterr()
    fleet = tmp_path / "fleet"
    assert (
        cli.main(
            ["fleet", str(tmp_path / "capacity-chat.json"), str(tmp_path / "capacity-ocr.json"), "--out", str(fleet)]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "| chat |" in table and "| ocr |" in table
    csv_lines = (fleet / "fleet-capacity.csv").read_text().splitlines()
    assert len(csv_lines) == 3 and csv_lines[0].startswith("host,service,model")
    # report again from the saved JSON (what the role does on the controller)
    rep = tmp_path / "again"
    assert cli.main(["report", str(tmp_path / "capacity-ocr.json"), "--out", str(rep)]) == 0
    assert _is_png(rep / "capacity-ocr-queue.png") and (rep / "capacity-ocr.md").exists()


def test_check_bad_input_and_predict(capacity_server, tmp_path, capsys, free_port):
    server = capacity_server()
    assert cli.main([*_run_args(server, tmp_path, "x"), "--check"]) == 0
    assert "ok: options valid" in capsys.readouterr().out
    args = _run_args(server, tmp_path, "x")
    args[args.index("--sla") + 1] = "errors<1%"
    assert cli.main(args) == 2
    assert "names no latency percentile" in capsys.readouterr().err
    args = _run_args(server, tmp_path, "x")
    args[args.index("--url") + 1] = "http://127.0.0.1:%d/" % free_port
    assert cli.main(args) == 2
    assert "cannot reach" in capsys.readouterr().err
    assert cli.main(["predict", "--c", "4", "--service-ms", "20", "--sla-ms", "90"]) == 0
    assert (
        "M/M/c (Erlang C, exact)" in (out := capsys.readouterr().out) and "p95 stays under 90 ms up to 156.694" in out
    )
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"schema": "x"}))
    assert cli.main(["fleet", str(empty), "--out", str(tmp_path / "f")]) == 2


def test_noisy_neighbour_sharing_workers_breaks_a(capacity_server, tmp_path, capsys):
    """A and B share one 4-worker server (capacity 200 RPS): B at 3 x 60 RPS pushes A past its SLA."""
    server = capacity_server(workers=4, mean_ms=20)
    rc = cli.main(
        [
            "noisy",
            "--url-a",
            server.url("/a"),
            "--url-b",
            server.url("/b"),
            "--payload-a",
            "{}",
            "--payload-b",
            "{}",
            "--rps-a",
            "60",
            "--rps-b",
            "60",
            "--sla",
            '{"p99_ms": 150, "max_schedule_lag_ms": 50}',
            "--arrival",
            "constant",
            "--hold",
            "1.0",
            "--warmup",
            "0.3",
            "--out",
            str(tmp_path),
            "--quiet",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 1  # A did not stay within its SLA
    assert out.startswith("A at 60 RPS did NOT stay within its SLA while B stepped to 3x 60 RPS")
    phases = json.loads((tmp_path / "noisy-neighbour.json").read_text())["phases"]
    assert [p["phase"] for p in phases] == ["before", "during x1", "during x2", "during x3", "after"]
    ok = {p["phase"]: p["a_within_sla"] for p in phases}
    assert ok["before"] and ok["during x1"] and ok["after"]  # 120 RPS of 200: fine; back to normal afterwards
    assert not ok["during x3"]  # 240 RPS offered to a 200 RPS server
    assert _is_png(tmp_path / "noisy-neighbour.png")


def test_run_plan_none_prints_noisy_neighbour(capacity_server, tmp_path, capsys):
    """``run --plan none --noisy-neighbour``: no capacity search, A's p95/p99 per phase and the SLA verdict."""
    server = capacity_server(workers=4, mean_ms=20)
    neighbour = {"url": server.url("/b"), "rps": 60, "a_rps": 60, "multipliers": [1, 3], "hold": 1.0, "warmup": 0.3}
    args = _run_args(server, tmp_path, "A", "--plan", "none", "--noisy-neighbour", json.dumps(neighbour))
    args[args.index("--sla") + 1] = '{"p99_ms": 150, "max_schedule_lag_ms": 50}'
    out_at = args.index("--out")
    assert cli.main(args[:out_at] + args[out_at + 2 :]) == 0
    out = capsys.readouterr().out
    assert out.startswith("A at 60 RPS did NOT stay within its SLA while %s stepped to 3x 60 RPS" % server.url("/b"))
    lines = out.splitlines()
    for phase, verdict in (("before", "ok"), ("during x1", "ok"), ("during x3", "SLA BROKEN"), ("after", "ok")):
        row = next(line for line in lines if line.strip().startswith(phase + " "))
        assert " A p95 " in row and " p99 " in row and row.endswith(verdict), row
    printed = json.loads(out[out.index("\n{") :])
    assert "capacity" not in printed and not printed["noisy_neighbour"]["within_sla"]

    assert cli.main(args) == 0  # with --out: the noisy-neighbour plot and report, no capacity report
    out = capsys.readouterr().out
    assert "SLA BROKEN" in out and "capacity-A.json" in out
    assert _is_png(tmp_path / "capacity-A-noisy.png") and (tmp_path / "capacity-A-noisy.md").exists()
    assert not (tmp_path / "capacity-A-throughput.png").exists()

    # the report again from the saved result, as the role renders it: the noisy-neighbour report only
    again = tmp_path / "again"
    assert cli.main(["report", str(tmp_path / "capacity-A.json"), "--out", str(again)]) == 0
    assert "noisy_png" in capsys.readouterr().out and _is_png(again / "capacity-A-noisy.png")
    assert not (again / "capacity-A-throughput.png").exists()


def test_run_from_a_generator_host_started_with_the_cli(capacity_server, tmp_path, capsys):
    server = capacity_server(workers=4, mean_ms=2)
    token = tmp_path / "token"
    token.write_text("a-token-of-twenty-chars\n")
    collections = str(Path(cli.__file__).parents[5])  # the collection this process imports (no PYTHONPATH here)
    with started_processes() as spawn:
        generator = spawn([sys.executable, "-m", cli.__name__, "generator", "--listen", "127.0.0.1", "--port", "0",
                           "--token-file", str(token), "--workers", "2", "--connect-timeout", "60"],
                          stdout=subprocess.PIPE, text=True, env={"PYTHONPATH": collections})  # fmt: skip
        line = generator.stdout.readline()
        assert line.startswith("listening on 127.0.0.1:"), line
        port = line.strip().rsplit(":", 1)[1]
        args = [*_run_args(server, tmp_path, "cli-remote"), "--generators", "host=gen,address=127.0.0.1,port=" + port,
                "--generator-token", "@" + str(token)]  # fmt: skip
        assert cli.main(args) == 0, capsys.readouterr().err
        assert generator.wait(20) == 0
        served = json.loads(generator.stdout.read())
    result = json.loads((tmp_path / "capacity-cli-remote.json").read_text())
    assert served["finished"] and served["steps"] == len(result["steps"]) + 1  # the warm-up and every step
    assert [(h["host"], h["workers"]) for h in result["generator"]["hosts"]] == [("gen", 2)]
    assert all(s["workers"] == 2 for s in result["steps"]) and "cli-remote sustains" in result["sla_sentence"]
    assert "a-token-of-twenty-chars" not in (tmp_path / "capacity-cli-remote.json").read_text()
