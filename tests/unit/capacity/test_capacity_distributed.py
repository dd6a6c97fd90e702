# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""One capacity test from several generator hosts: agents in their own processes on 127.0.0.1, the coordinator here."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading

import pytest

from ansible_collections.gpu.mig.plugins.module_utils._capacity import analysis as cap
from ansible_collections.gpu.mig.plugins.module_utils._capacity import loadgen as lg
from ansible_collections.gpu.mig.plugins.module_utils._capacity import remote
from ansible_collections.gpu.mig.tests.unit.process_fixtures import started_processes

TOKEN = "t0k3n-for-the-tests-only"
# an agent process: serve_generator with the given workers and clock skew, printing its port, then what it served
AGENT = (
    "import sys, time\n"
    "from ansible_collections.gpu.mig.plugins.module_utils._capacity import loadgen, remote\n"
    "skew, wait = float(sys.argv[3]), float(sys.argv[4])\n"
    "print(loadgen.run_sync(remote.serve_generator('127.0.0.1', 0, sys.argv[1], 60, int(sys.argv[2]),\n"
    "      clock=lambda: time.time() + skew, ready=lambda port: print('LISTENING', port, flush=True),\n"
    "      connect_timeout=wait)), flush=True)\n"
)
# the collection this process imports, for the agents (ansible-test runs the units without PYTHONPATH)
COLLECTIONS = os.path.dirname(lg.__file__).split(os.sep + "ansible_collections" + os.sep)[0]


@pytest.fixture
def agents():
    """Factory: ``agents(workers=1, skew=0.0, ...)`` -> (process, port) of a generator agent on 127.0.0.1."""
    with started_processes() as spawn:

        def start(workers: int = 1, skew: float = 0.0, token: str = TOKEN, connect_timeout: float = 30.0) -> tuple:
            env = dict(os.environ, PYTHONPATH=COLLECTIONS)
            args = [sys.executable, "-c", AGENT, token, str(workers), str(skew), str(connect_timeout)]
            proc = spawn(args, stdout=subprocess.PIPE, text=True, env=env)
            line = proc.stdout.readline()
            assert line.startswith("LISTENING "), line
            return proc, int(line.split()[1])

        yield start


def _options(url: str, ports: list, **extra) -> dict:
    opts = {"url": url, "payload": {}, "sla": "p95<100ms", "plan": "linear", "start_rps": 100, "step_pct": 100,
            "max_steps": 2, "hold": 1.0, "warmup": 0.2, "initial_warmup": 0.3, "confirm": False, "seed": 3,
            "generators": [{"host": "gen%d" % i, "address": "127.0.0.1", "port": p} for i, p in enumerate(ports)],
            "generator_token": TOKEN}  # fmt: skip
    opts.update(extra)
    return opts


def test_two_generator_hosts_run_one_test_with_merged_steps(capacity_server, agents):
    server = capacity_server(workers=8, mean_ms=3)
    (one, port_one), (two, port_two) = agents(1), agents(2)
    result = lg.run_sync(lg.run_capacity_test(_options(server.url(), [port_one, port_two], record_requests=True)))
    hosts = result["generator"]["hosts"]
    assert [(h["host"], h["workers"], h["shares"]) for h in hosts] == [("gen0", 1, [0, 0]), ("gen1", 2, [1, 2])]
    assert all(abs(h["clock_offset_ms"]) < 50 and h["rtt_ms"] > 0 for h in hosts)
    assert result["generator"]["workers"] == 3
    steps = result["steps"]
    assert [s["offered_rps"] for s in steps] == [100, 200] and all(s["workers"] == 3 for s in steps)
    for s in steps:  # the three shares sent the whole schedule, once
        sent = [row[1] for row in result["requests"] if row[0] == s["index"]]
        assert len(sent) == len(set(sent)) == s["scheduled"] and s["unsent"] == 0 and not s["errors"]
        assert s["verdict"]["passed"] and s["schedule_lag_ms"]["p99"] < 10
    assert "sustains 200 RPS at p95 < 100 ms" in result["sla_sentence"]
    for proc in (one, two):  # each agent served the warm-up and both steps, then ended
        assert proc.wait(20) == 0
        assert "'finished': True, 'steps': 3" in proc.stdout.read()


def test_an_unreachable_generator_host_is_named(capacity_server, free_port):
    server = capacity_server(workers=2, mean_ms=3)
    closed = free_port
    gens = remote.RemoteGenerators([{"host": "gen-down", "address": "127.0.0.1", "port": closed}], TOKEN,
                                   connect_timeout=1.0)  # fmt: skip
    target = lg.build_target({"url": server.url(), "payload": {}})
    with pytest.raises(cap.CapacityError, match=r"generator host gen-down \(127.0.0.1:%d\) is unreachable: "
                                                r"Connection refused for 1 s" % closed):  # fmt: skip
        lg.run_sync(gens.open(target, dict(lg.DEFAULTS, seed=1)))


def test_a_generator_host_lost_during_a_step_fails_the_test(capacity_server, agents):
    server = capacity_server(workers=8, mean_ms=3)
    (_one, port_one), (two, port_two) = agents(1), agents(1)

    def kill_later():
        threading.Timer(2.0, os.kill, (two.pid, signal.SIGKILL)).start()

    opts = _options(server.url(), [port_one, port_two], hold=3.0, max_steps=3)
    kill_later()
    with pytest.raises(cap.CapacityError) as err:
        lg.run_sync(lg.run_capacity_test(opts))
    assert "generator host gen1 (127.0.0.1:%d) was lost during step" % port_two in str(err.value)
    assert "no capacity is reported" in str(err.value)


def test_a_clock_too_far_off_is_refused(capacity_server, agents):
    server = capacity_server(workers=2, mean_ms=3)
    _proc, port = agents(1, skew=2.5)
    with pytest.raises(cap.CapacityError, match=r"generator host gen0 .*: its clock is 2[45]\d\d ms ahead of this "
                                                r"host's .* more than max_clock_offset 100 ms"):  # fmt: skip
        lg.run_sync(lg.run_capacity_test(_options(server.url(), [port])))


def test_a_wrong_token_is_refused(capacity_server, agents):
    server = capacity_server(workers=2, mean_ms=3)
    _proc, port = agents(1, token="another-token-entirely")
    with pytest.raises(cap.CapacityError, match=r"generator host gen0 .* during the handshake: wrong token"):
        lg.run_sync(lg.run_capacity_test(_options(server.url(), [port])))


def test_step_parts_survive_the_wire():
    async def one_part():
        hist = cap.LatencyHistogram()
        for ms in (1, 2, 3, 50):
            hist.record(ms / 1000.0)
        return hist

    hist = asyncio.run(one_part())
    part = {"hist": hist, "lag": cap.LatencyHistogram(), "wait": cap.LatencyHistogram(), "by_payload": {1: hist},
            "inflight_samples": [(0.0, 3)], "requests": [(0, 0.1, 0.0, 200, 0.002, "", "p", True)], "ok": 4}  # fmt: skip
    back = remote.part_from_wire(remote.part_to_wire(part))
    assert back["hist"].to_dict() == hist.to_dict() and back["by_payload"][1].summary_ms() == hist.summary_ms()
    assert back["requests"] == part["requests"] and back["inflight_samples"] == [(0.0, 3)] and back["ok"] == 4


def test_a_generator_no_test_reached_ends_by_itself_or_when_stopped(agents, free_port):
    waiting, _port = agents(1, connect_timeout=1.0)
    assert waiting.wait(15) == 0 and "'finished': False, 'steps': 0" in waiting.stdout.read()
    stoppable, port = agents(1)
    assert lg.run_sync(remote.stop_generator("127.0.0.1", port, TOKEN)) is True
    assert stoppable.wait(15) == 0 and "'finished': True, 'steps': 0" in stoppable.stdout.read()
    assert lg.run_sync(remote.stop_generator("127.0.0.1", free_port, TOKEN)) is False  # nothing listens: nothing to do
