# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A FIFO M/M/c queue in virtual time, producing step dicts the capacity core judges like real ones.

Each step starts with an empty queue (the runner drains between steps), sends Poisson arrivals for warm-up + hold,
measures the requests sent in the hold, samples the waiting queue like a metrics scrape, and applies the runner's
early-stop rule. With it the step plans can be run hundreds of times in seconds: their error against the exact
Erlang-C SLA rate is a property of the plan and the hold lengths, not of how busy the test machine is.
"""

from __future__ import annotations

import heapq
import math
import random

from ansible_collections.gpu.mig.plugins.module_utils._capacity import analysis as cap


def virtual_step(
    rng, rate, warmup, hold, c, mean_s, index=0, stop_rule=None, scrape_s=0.2, overhead_s=0.0, carry=None, state=None
):
    """One step of ``rate`` RPS on M/M/c; ``(step dict, seconds it took)``.

    ``state`` (a list) carries the workers' busy times into the next step when ``carry`` is set and the step was
    not stopped early (the runner bridges a stable step into the next one instead of draining).
    """
    free = sorted(state) if (carry and state) else [0.0] * c
    t = 0.0
    arrivals = []  # (intended, latency)
    events = []  # (time, +1 arrival / -1 departure) for the queue samples
    end_all = warmup + hold
    for _step in range(int(rate * end_all * 3) + 100):
        t += rng.expovariate(rate)
        if t >= end_all:
            break
        start = max(t, heapq.heappop(free))
        done = start + rng.expovariate(1.0 / mean_s)
        heapq.heappush(free, done)
        arrivals.append((t, done - t + overhead_s))
        events.append((t, 1))
        events.append((start, -1))  # leaves the waiting queue when a worker takes it
    cut = end_all
    stopped = None
    if stop_rule:
        limit = stop_rule["limit_s"]
        tick = warmup + stop_rule.get("min_hold_s", 1.0)
        measured = [(a, lat) for a, lat in arrivals if a >= warmup]
        for _step in range(int(hold / 0.25) + 2):
            if tick >= end_all:
                break
            old = [lat for a, lat in measured if a <= tick - limit]
            bad = sum(1 for lat in old if lat > limit)
            if len(old) >= stop_rule.get("min_requests", 100) and bad > stop_rule["fraction"] * len(old):
                cut = tick
                stopped = {"at_s": round(tick - warmup, 3), "reason": "stopped early (virtual)"}
                break
            tick += 0.25
    held = cut - warmup
    hist = cap.LatencyHistogram()
    n_offered = 0
    ok_in_window = 0
    for a, lat in arrivals:
        if warmup <= a < cut:
            n_offered += 1
            hist.record(lat)
        if warmup <= a + lat < cut and a < cut:
            ok_in_window += 1
    events.sort()
    samples = []
    level = 0
    j = 0
    for k in range(int(held / scrape_s) + 1):
        at = warmup + k * scrape_s
        while j < len(events) and events[j][0] <= at:
            level += events[j][1]
            j += 1
        samples.append((k * scrape_s, level))
    trend = cap.queue_trend(samples, held, blocks=6)
    if trend:
        trend["source"] = "server queue (virtual)"
    step = {
        "index": index,
        "kind": "step",
        "offered_rps": rate,
        "offered_actual_rps": round(n_offered / held, 3),
        "achieved_rps": round(ok_in_window / held, 3),
        "hold_s": round(held, 3),
        "hold_planned_s": hold,
        "measured": hist.count,
        "ok": hist.count,
        "errors": {},
        "latency_ms": hist.summary_ms(),
        "histogram": hist.to_dict(),
        "schedule_lag_ms": {"p99": 0.1},
        "queue": trend,
    }
    if stopped:
        step["stopped_early"] = stopped
    if state is not None:
        state[:] = [max(0.0, f - end_all) for f in free] if (carry and not stopped) else []
    # the real runner also waits for the requests still out after the window: about one latency
    return step, warmup + held + (hist.mean() or 0.0)


def run_plan(plan, sla, holds, warmup, c, mean_s, seed, overhead_s=0.0, early_stop=True, carry=False):
    """Drive ``plan`` like the runner does; ``(steps, capacity, seconds)``."""
    rng = random.Random(seed)
    steps, history = [], []
    baseline = None
    seconds = 0.0
    rule = None
    if early_stop:
        pct, limit = sla.primary()
        tail = 1.0 - pct / 100.0
        rule = {
            "limit_s": sla.hard_factor * limit / 1000.0,
            "fraction": max(2.0 * tail, tail + 0.02),
            "min_requests": max(100, math.ceil(20.0 / tail)),
            "min_hold_s": 1.0,
        }
    state: list = []
    for index in range(200):
        nxt = plan.next_step(history)
        if nxt is None:
            break
        rate, role = nxt
        warm = warmup[role] if isinstance(warmup, dict) else warmup
        step, took = virtual_step(
            rng, rate, warm, holds[role], c, mean_s, index, rule, overhead_s=overhead_s, carry=carry, state=state
        )
        seconds += took
        outcome = cap.judge_step(step, steps, sla, baseline, role)
        if baseline is None:
            baseline = step
        steps.append(step)
        history.append(outcome)
    return steps, cap.summarize_capacity(steps, sla), seconds
