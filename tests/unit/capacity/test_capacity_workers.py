# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""One step's schedule split over N generator processes: exact shares, merged parts, supervision, uvloop."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys

import pytest

from ansible_collections.gpu.mig.plugins.module_utils._capacity import analysis as cap
from ansible_collections.gpu.mig.plugins.module_utils._capacity import loadgen as lg
from ansible_collections.gpu.mig.plugins.module_utils._capacity import workers as _workers


def _phase(url: str, rate: float, hold: float, workers: int, arrival: str = "constant", **kwargs) -> tuple:
    async def go():
        runner = lg.Runner(lg.build_target({"url": url, "payload": {}}), arrival, seed=7, workers=workers,
                           record_requests=True, **kwargs)  # fmt: skip
        try:
            return await runner.run_phase(rate, 0.2, hold), runner
        finally:
            runner.close()

    return lg.run_sync(go())


@pytest.mark.parametrize("arrival", ["constant", "poisson"])
def test_two_workers_send_exactly_the_one_schedule(capacity_server, arrival):
    server = capacity_server(workers=8, mean_ms=2)
    step, runner = _phase(server.url(), 300, 1.0, 2, arrival)
    # the runner drew the step's schedule from its seed's first draw: the workers sent exactly that one
    expected = cap.schedule_offsets(300, 1.2, arrival, random.Random(random.Random(7).getrandbits(64)))
    sent = [row[1] for row in runner.requests]
    assert sent == [round(o + 0, 6) for o in sorted(sent)] and len(sent) == len(expected) == step["scheduled"]
    assert sent == pytest.approx(expected, abs=2e-6)
    assert step["workers"] == 2 and step["unsent"] == 0 and not step["errors"]
    assert step["measured"] == sum(1 for row in runner.requests if row[7]) == step["ok"]
    assert step["generator_cpu_s"] > 0
    # never a request before its time: send lag and latency count from the intended time, so neither is negative
    assert min(row[2] for row in runner.requests) >= 0 and min(row[4] for row in runner.requests) > 0
    # the merged histogram holds every measured request, its percentiles those of the recorded latencies
    latencies = sorted(row[4] for row in runner.requests if row[7])
    assert step["histogram"]["count"] == len(latencies)
    for pct in (50, 95, 99):
        exact = cap.percentile_sorted(latencies, pct) * 1000.0
        assert step["latency_ms"]["p%d" % pct] == pytest.approx(exact, rel=2.0 / cap.LatencyHistogram.SUB, abs=0.002)


def test_one_and_two_workers_measure_the_same_server_alike(capacity_server):
    server = capacity_server(workers=8, mean_ms=5, service="deterministic")
    one, _runner = _phase(server.url(), 200, 1.5, 1)
    two, _runner = _phase(server.url(), 200, 1.5, 2)
    assert (one["scheduled"], one["workers"], two["workers"]) == (two["scheduled"], 1, 2)
    assert two["latency_ms"]["p50"] == pytest.approx(one["latency_ms"]["p50"], rel=0.15)
    assert two["achieved_rps"] == pytest.approx(one["achieved_rps"], rel=0.05)


def test_a_killed_worker_fails_the_step_naming_it(capacity_server):
    server = capacity_server(workers=8, mean_ms=2)

    async def go():
        runner = lg.Runner(lg.build_target({"url": server.url(), "payload": {}}), "constant", workers=2)
        try:
            await runner.run_phase(100, 0.0, 0.3)  # forks the workers
            victim = runner.shares.processes[1].pid
            asyncio.get_running_loop().call_later(0.5, os.kill, victim, signal.SIGKILL)
            await runner.run_phase(100, 0.2, 2.0, index=4)
        finally:
            runner.close()
        return victim

    with pytest.raises(cap.CapacityError) as err:
        lg.run_sync(go())
    msg = str(err.value)
    assert "step 4 at 100 RPS failed: load generator worker 2 of 2" in msg and "was killed by SIGKILL" in msg
    assert "no capacity is reported" in msg


def test_a_failing_worker_fails_the_step_with_its_reason(capacity_server):
    server = capacity_server(workers=8, mean_ms=2)

    async def broken(*_args):
        raise RuntimeError("socket table full")

    async def go():
        runner = lg.Runner(lg.build_target({"url": server.url(), "payload": {}}), "constant", workers=2)
        runner.run_share = broken  # the forked workers inherit it
        try:
            await runner.run_phase(50, 0.0, 0.5, index=2)
        finally:
            runner.close()
            assert runner.shares is None

    with pytest.raises(cap.CapacityError, match=r"step 2 at 50 RPS failed: load generator worker \d of 2: "
                                                r"RuntimeError: socket table full"):  # fmt: skip
        lg.run_sync(go())


def test_early_stop_in_one_worker_stops_them_all(capacity_server):
    server = capacity_server(workers=2, mean_ms=20)  # 100 RPS at most: 300 RPS breaks a 50 ms limit at once
    rule = {"limit_s": 0.05, "fraction": 0.1, "min_requests": 40, "min_hold_s": 0.5, "reason": "test"}

    async def go():
        runner = lg.Runner(lg.build_target({"url": server.url(), "payload": {}}), "constant", workers=2,
                           record_requests=True)  # fmt: skip
        try:
            return await runner.run_phase(300, 0.0, 4.0, stop_rule=rule), runner.requests
        finally:
            runner.close()

    step, requests = lg.run_sync(go())
    stopped = step["stopped_early"]
    assert "took over 50 ms or failed" in stopped["reason"] and stopped["at_s"] < 2.0
    assert step["hold_s"] < 2.1 and len(requests) < 0.6 * step["scheduled"]
    assert max(r[1] for r in requests) <= stopped["at_s"] + 0.1  # neither worker sent on after the stop


def test_progress_ticks_sum_the_workers(capacity_server):
    server = capacity_server(workers=8, mean_ms=2)
    ticks = []
    step, _runner = _phase(server.url(), 200, 1.2, 2, progress=ticks.append)
    assert len(ticks) >= 2 and ticks[-1]["sent"] <= step["scheduled"]
    assert [t["sent"] for t in ticks] == sorted(t["sent"] for t in ticks) and ticks[-1]["sent"] > 100


def test_uvloop_gives_the_same_results_and_is_recorded(capacity_server):
    server = capacity_server(workers=8, mean_ms=2)

    async def go():
        runner = lg.Runner(lg.build_target({"url": server.url(), "payload": {}}), "constant", workers=2,
                           event_loop="uvloop")  # fmt: skip
        try:
            return await runner.run_phase(200, 0.2, 1.0)
        finally:
            runner.close()

    step = lg.run_sync(go(), "uvloop")
    assert step["workers"] == 2 and step["measured"] == step["ok"] == 200 and not step["errors"]
    result = lg.run_sync(
        lg.run_capacity_test({"url": server.url(), "payload": {}, "sla": "p95<100ms", "plan": "linear",
                              "start_rps": 50, "max_steps": 1, "hold": 0.5, "warmup": 0.1, "initial_warmup": 0,
                              "confirm": False, "event_loop": "uvloop", "workers": 2}), "uvloop")  # fmt: skip
    assert result["generator"] == {"workers": 2, "event_loop": "uvloop"} and result["steps"][0]["workers"] == 2


def test_uvloop_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvloop", None)

    async def never():
        raise AssertionError("must not run")

    with pytest.raises(
        cap.CapacityError, match=r"event_loop uvloop: uvloop is not installed for .*use event_loop asyncio"
    ):
        lg.run_sync(never(), "uvloop")


def test_worker_options_are_checked():
    problems = cap.option_problems(dict(lg.DEFAULTS, url="http://x/", sla="p95<1s", workers=-1, event_loop="trio",
                                        generators=[{"address": "a b", "port": 0}], max_clock_offset=0))  # fmt: skip
    text = "\n".join(problems)
    for part in ("workers must be", "event_loop must be one of", "generators[0].address must be a host name",
                 "generators[0].port must be", "max_clock_offset must be", "needs generator_token"):  # fmt: skip
        assert part in text, text


def test_default_workers_leave_a_core_above_two(monkeypatch):
    for cores, expected in ((1, 1), (2, 2), (3, 2), (16, 15)):
        monkeypatch.setattr(_workers, "available_cores", lambda cores=cores: cores)
        assert _workers.default_workers() == expected
