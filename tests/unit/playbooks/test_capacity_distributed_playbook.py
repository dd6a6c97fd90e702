# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""roles/capacity with capacity_generators, for real (ansible-playbook): one test sent from two generator "hosts".

The controller and the two generator hosts are local-connection hosts of one inventory, each generator on its own free
port of 127.0.0.1; the service is the ground-truth capacity server. The role starts the generators, the controller's
capacity_test drives them, and the result names both hosts and sums their workers in every step. A generator that
cannot start fails the play with a message naming it, the other is stopped, and no capacity row is written.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ansible_collections.gpu.mig.tests.unit.process_fixtures import started_processes

REPO = Path(__file__).resolve().parents[3]
ROLE = REPO / "roles" / "capacity"
SERVER = REPO / "tests" / "capacity_server" / "server.py"
WORKERS = {"gen1": 1, "gen2": 2}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def service_url():
    """The ground-truth server (4 workers, 5 ms each: 800 RPS) on 127.0.0.1."""
    args = [sys.executable, str(SERVER), "--port", "0", "--workers", "4", "--mean-ms", "5", "--max-seconds", "120"]
    with started_processes() as spawn:
        proc = spawn(args, stdout=subprocess.PIPE, text=True)
        line = proc.stdout.readline()
        assert line.startswith("LISTENING "), line
        yield "http://127.0.0.1:%s/infer" % line.split()[1]


def run_role(
    base: Path, url: str, generators: dict, *options: str, play_hosts: str = "controller", names: list | None = None
) -> subprocess.CompletedProcess:
    """The capacity role on ``play_hosts`` with ``capacity_generators`` = ``names`` (default: the ``generators``
    hosts, name -> host vars); afterwards the play writes the last generator token and the registered test results to
    ``base/after.json``."""
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    hosts = {"controller": local}
    for name, host_vars in generators.items():
        hosts[name] = {**local, "capacity_generator_port": free_port(), "capacity_generator_listen": "127.0.0.1",
                       "capacity_generator_address": "127.0.0.1", "capacity_generator_workers": WORKERS[name],
                       **host_vars}  # fmt: skip
    test = {"service": "echo", "url": url, "sla": {"p95_ms": 500}, "start_rps": 100, "plan": "linear",
            "step_pct": 50, "max_steps": 2, "warmup": 0.2, "hold": 1.0, "initial_warmup": 0, "confirm": False,
            "arrival": "constant", "time_limit": 60}  # fmt: skip
    content = "{{ {'token': _capacity_generator_token | default(''), 'runs': _capacity_runs.results} | to_json }}"
    keep = {"ansible.builtin.copy": {"content": content, "dest": str(base / "after.json"), "mode": "0600"},
            "check_mode": False}  # fmt: skip
    play = {"hosts": play_hosts, "gather_facts": False, "roles": ["gpu.mig.capacity"], "post_tasks": [keep],
            "vars": {"capacity_generators": list(generators) if names is None else names, "capacity_tests": [test],
                     "capacity_remote_dir": str(base / "remote"), "capacity_results_dir": str(base / "results"),
                     "capacity_poll_interval": 2, "capacity_async_timeout": 120}}  # fmt: skip
    (base / "inventory.yml").write_text(yaml.safe_dump({"all": {"hosts": hosts}}))
    (base / "play.yml").write_text(yaml.safe_dump([play]))
    env = {**os.environ, "ANSIBLE_LOCAL_TEMP": str(base / "tmp"), "ANSIBLE_ASYNC_DIR": str(base / "async"),
           "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_COLLECTIONS_PATH": os.environ.get("ANSIBLE_COLLECTIONS_PATH", str(REPO / ".build/collections"))}  # fmt: skip
    argv = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(base / "inventory.yml"), *options,
            str(base / "play.yml")]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=240, check=False)


def test_one_test_from_two_generator_hosts(tmp_path, service_url):
    # gen2 has no capacity_generator_address: the role reaches it at its ansible_host
    run = run_role(
        tmp_path,
        service_url,
        {"gen1": {}, "gen2": {"capacity_generator_address": "", "ansible_host": "127.0.0.1"}},
        "-vvv",
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    result = json.loads((tmp_path / "results" / "controller" / "capacity-echo.json").read_text())
    hosts = result["generator"]["hosts"]
    assert [(h["host"], h["address"], h["workers"]) for h in hosts] == [
        ("gen1", "127.0.0.1", 1),
        ("gen2", "127.0.0.1", 2),
    ]
    assert all(isinstance(h["clock_offset_ms"], float) and abs(h["clock_offset_ms"]) < 100 for h in hosts)
    assert result["generator"]["workers"] == 3
    assert len(result["steps"]) == 2 and all(step["workers"] == 3 for step in result["steps"])
    # every request of each hold was sent (by the two hosts together) and answered
    assert all(step["measured"] == step["ok"] >= 0.9 * step["offered_rps"] for step in result["steps"])
    assert result["sla_sentence"].startswith("echo")
    fleet = json.loads((tmp_path / "results" / "fleet-capacity.json").read_text())
    assert [row["service"] for row in fleet["rows"]] == ["echo"]
    token = json.loads((tmp_path / "after.json").read_text())["token"]
    assert len(token) == 32 and token.isalnum()
    assert token not in run.stdout + run.stderr  # not even at -vvv


def test_without_generators_the_play_host_sends_the_load_as_before(tmp_path, service_url):
    run = run_role(tmp_path, service_url, {})
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "Start the load generators" not in run.stdout
    result = json.loads((tmp_path / "results" / "controller" / "capacity-echo.json").read_text())
    assert "hosts" not in result["generator"] and result["generator"]["workers"] >= 1
    assert len(result["steps"]) == 2 and all(s["workers"] == result["generator"]["workers"] for s in result["steps"])
    fleet = json.loads((tmp_path / "results" / "fleet-capacity.json").read_text())
    assert [row["service"] for row in fleet["rows"]] == ["echo"]


def test_check_mode_connects_to_the_generators_and_ends_them(tmp_path, service_url):
    run = run_role(tmp_path, service_url, {"gen1": {}, "gen2": {}}, "--check")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    (checked,) = json.loads((tmp_path / "after.json").read_text())["runs"]
    assert [(h["host"], h["workers"]) for h in checked["generator"]["hosts"]] == [("gen1", 1), ("gen2", 2)]
    assert "still runs" not in run.stdout and not (tmp_path / "results").exists()


def test_a_generator_that_cannot_start_fails_the_play_naming_it(tmp_path, service_url):
    """gen1 cannot listen (an address this machine lacks): the test fails naming it; gen2, never reached, is stopped."""
    run = run_role(tmp_path, service_url, {"gen1": {"capacity_generator_listen": "192.0.2.1"}, "gen2": {}})
    assert run.returncode != 0
    assert "from generator hosts gen1, gen2 failed: generator host gen1 (127.0.0.1:" in run.stdout, run.stdout[-4000:]
    assert "is unreachable" in run.stdout and "generator host gen1: cannot listen on 192.0.2.1:" in run.stdout
    assert "still runs" not in run.stdout  # gen2 was stopped, not left holding its port
    assert not (tmp_path / "results" / "fleet-capacity.json").exists()
    assert not list((tmp_path / "remote").glob("*.json"))


def test_unknown_generators_and_several_play_hosts_are_refused_before_any_test(tmp_path):
    run = run_role(tmp_path, "http://127.0.0.1:9/infer", {"gen1": {}}, play_hosts="controller,gen1",
                   names=["gen1", "nope"])  # fmt: skip
    assert run.returncode != 0
    assert "capacity_generators names hosts that are not in the inventory: nope; add them" in run.stdout, run.stdout
    assert "but this play runs on controller, gen1 at once; run it with serial: 1" in run.stdout
    assert "Start the load generators" not in run.stdout and not (tmp_path / "async").exists()
