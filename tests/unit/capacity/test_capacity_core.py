# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The pure capacity core: histogram, SLA, plans, knee verdicts, Erlang C, Prometheus parsing, sentence and table."""

from __future__ import annotations

import itertools
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.gpu.mig.plugins.module_utils import _capacity as cap

# ---------------------------------------------------------------- histogram


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=1e-5, max_value=50.0), min_size=1, max_size=400), st.sampled_from([50, 90, 95, 99]))
def test_histogram_percentile_within_relative_error(values, pct):
    h = cap.LatencyHistogram()
    for v in values:
        h.record(v)
    exact = cap.percentile(values, pct)
    got = h.percentile(pct)
    assert got == pytest.approx(exact, rel=1.0 / cap.LatencyHistogram.SUB + 1e-9)
    assert h.count == len(values)
    assert h.max == max(values)
    assert h.min == min(values)


def test_histogram_merge_roundtrip_and_empty():
    a, b = cap.LatencyHistogram(), cap.LatencyHistogram()
    assert a.percentile(99) is None
    assert a.summary_ms()["p95"] is None
    for i in range(1, 101):
        (a if i % 2 else b).record(i / 1000.0)
    a.merge(b)
    assert a.count == 100
    assert a.percentile(50) == pytest.approx(0.050, rel=0.005)
    back = cap.LatencyHistogram.from_dict(a.to_dict())
    assert back.summary_ms() == a.summary_ms()


# ---------------------------------------------------------------- SLA


def test_parse_sla_string_and_dict_agree():
    s1 = cap.parse_sla("p95<300ms, p99<1s, errors<=0.1%")
    s2 = cap.parse_sla({"p95_ms": 300, "p99_ms": 1000, "max_error_rate": 0.001})
    assert s1.percentiles == s2.percentiles == {95.0: 300.0, 99.0: 1000.0}
    assert s1.max_error_rate == pytest.approx(0.001)
    assert s1.primary() == (95.0, 300.0)


@pytest.mark.parametrize(
    "spec, match",
    [
        ({"max_error_rate": 0.0}, "no latency percentile"),
        ("errors<1%", "no latency percentile"),
        ({}, "no latency percentile"),
        ({"p95": -3}, "must be > 0"),
        ({"p95_ms": 100, "latency": 3}, "unknown SLA key"),
        ("p95 about 300", "cannot parse"),
        ("p95<3%", "needs ms or s"),
        (42, "must be a mapping"),
    ],
)
def test_parse_sla_rejects_bad_input(spec, match):
    with pytest.raises(cap.CapacityError, match=match):
        cap.parse_sla(spec)


# ---------------------------------------------------------------- plans


def test_linear_plan_rates_and_stop_rules():
    plan = cap.LinearPlan(100, step_pct=10, max_rps=200)
    rates = plan.rates()
    assert rates[:3] == [100.0, 110.0, 121.0]
    assert rates[-1] == 200.0 and all(b > a for a, b in itertools.pairwise(rates))
    hist = []
    assert plan.next_rate(hist) == 100.0
    hist.append(cap.StepOutcome(100, True))
    assert plan.next_rate(hist) == 110.0
    hist.append(cap.StepOutcome(110, False))  # knee: one more step, then stop
    assert plan.next_rate(hist) == 121.0
    hist.append(cap.StepOutcome(121, False))
    assert plan.next_rate(hist) is None
    # a hard break stops at once
    assert plan.next_rate([cap.StepOutcome(100, True), cap.StepOutcome(110, False, hard_break=True)]) is None
    # so does a void step
    assert plan.next_rate([cap.StepOutcome(100, False, void=True)]) is None


def _simulate(plan, true_cap, limit=100):
    hist = []
    for _step in range(limit):
        r = plan.next_rate(hist)
        if r is None:
            break
        hist.append(cap.StepOutcome(r, r <= true_cap))
    return hist


@settings(max_examples=80, deadline=None)
@given(st.floats(min_value=5, max_value=5000), st.floats(min_value=1, max_value=50))
def test_adaptive_plan_brackets_true_capacity(true_cap, start):
    plan = cap.AdaptivePlan(start, max_rps=100000, resolution=0.03)
    hist = _simulate(plan, true_cap)
    assert len(hist) <= plan.worst_case_steps() + 1
    lo, hi = plan.bracket(hist)
    if start > true_cap:
        # the first step failed: the plan walks down until one passes (or gives up below min_rps)
        assert lo is None or lo <= true_cap
    else:
        assert lo <= true_cap < hi
        assert (hi - lo) / lo <= 0.03 + 0.01  # rounding of rates


def test_adaptive_plan_respects_max_rps_and_void():
    plan = cap.AdaptivePlan(10, max_rps=50)
    hist = _simulate(plan, 1e9)
    assert [h.rate for h in hist] == [10.0, 20.0, 40.0, 50.0]
    assert plan.next_rate([cap.StepOutcome(10, True), cap.StepOutcome(20, False, void=True)]) is None


def test_time_budget_rejects_plan_longer_than_limit():
    plan = cap.LinearPlan(10, step_pct=10, max_steps=12)
    with pytest.raises(cap.CapacityError, match=r"12 steps x \(5 s warm-up \+ 10 s hold\).*180 s.*time_limit 120 s"):
        cap.check_time_budget(plan, 5, 10, 120)
    assert cap.check_time_budget(plan, 5, 10, 200) == 180
    with pytest.raises(cap.CapacityError, match="adaptive plan"):
        cap.check_time_budget(cap.AdaptivePlan(1, max_rps=1000), 10, 60, 300)


@pytest.mark.parametrize(
    "kw, match", [({"start_rps": 0}, "start_rps"), ({"start_rps": 10, "max_rps": 5}, "below start")]
)
def test_plans_reject_bad_numbers(kw, match):
    with pytest.raises(cap.CapacityError, match=match):
        cap.build_plan("linear", **kw)
    with pytest.raises(cap.CapacityError, match="unknown plan"):
        cap.build_plan("random", start_rps=1)


def test_schedule_offsets_constant_and_poisson():
    const = cap.schedule_offsets(100, 2.0, "constant")
    assert len(const) == 200 and const[1] - const[0] == pytest.approx(0.01)
    rng = random.Random(3)
    pois = cap.schedule_offsets(1000, 5.0, "poisson", rng)
    assert abs(len(pois) - 5000) < 5 * math.sqrt(5000)
    gaps = [b - a for a, b in itertools.pairwise(pois)]
    mean = sum(gaps) / len(gaps)
    cv2 = sum((g - mean) ** 2 for g in gaps) / len(gaps) / mean**2
    assert mean == pytest.approx(0.001, rel=0.05)
    assert cv2 == pytest.approx(1.0, abs=0.15)  # exponential gaps
    with pytest.raises(cap.CapacityError, match="unknown arrival"):
        cap.schedule_offsets(10, 1, "bursty")


# ---------------------------------------------------------------- knee detection


def _step(rate, achieved=None, p95=20.0, p99=25.0, lag=0.2, errors=None, queue=None, measured=1000):
    return {
        "index": 0,
        "kind": "step",
        "offered_rps": rate,
        "achieved_rps": rate if achieved is None else achieved,
        "measured": measured,
        "latency_ms": {"p50": p95 * 0.8, "p95": p95, "p99": p99},
        "schedule_lag_ms": {"p99": lag},
        "errors": errors or {},
        "queue": queue,
    }


def _queue(series, hold=5.0):
    n = len(series)
    return cap.queue_trend([(hold * i / (n - 1), q) for i, q in enumerate(series)], hold)


def test_queue_trend_detects_growth_and_ignores_noise():
    rng = random.Random(1)
    flat = _queue([4 + rng.choice([-1, 0, 1]) for _step in range(100)])
    assert flat["slope_lower"] <= 0 < flat["slope_upper"] or abs(flat["slope"]) < 0.3
    grow = _queue([4 + 3 * i / 20 + rng.choice([-1, 0, 1]) for i in range(100)])
    assert grow["slope"] == pytest.approx(3.0, rel=0.15)
    assert grow["slope_lower"] > 0
    assert cap.queue_trend([(0, 1), (1, 2)]) is None


def test_verdict_pass_explains_every_check():
    sla = cap.parse_sla("p95<100ms,p99<200ms")
    v = cap.evaluate_step(_step(100, queue=_queue([3, 4, 3, 4, 3, 4, 3, 4, 3, 4])), sla)
    assert v["passed"] and not v["void"] and not v["hard_break"]
    names = {c["name"] for c in v["checks"]}
    assert {"schedule_lag", "errors", "throughput", "queue_growth", "latency_p95", "latency_p99"} <= names
    assert all(c["message"] for c in v["checks"])
    assert v["summary"].startswith("pass:")


@pytest.mark.parametrize(
    "step, failing, text",
    [
        (_step(200, achieved=180), "throughput", "achieved 180.0 of 200.0"),
        (_step(200, p95=150), "latency_p95", "p95 150 ms > SLA 100 ms"),
        (_step(200, errors={"rejected_503": 5}), "errors", "5 rejected_503"),
        (_step(200, queue=_queue([2 + i for i in range(30)])), "queue_growth", "does not return to baseline"),
    ],
)
def test_verdict_knee_names_its_reason(step, failing, text):
    sla = cap.parse_sla({"p95_ms": 100})
    v = cap.evaluate_step(step, sla)
    assert not v["passed"]
    failed = [c for c in v["checks"] if not c["passed"]]
    assert [c["name"] for c in failed] == [failing]
    assert text in failed[0]["message"]
    assert text in v["summary"]


def test_verdict_baseline_factor_and_hard_break_and_void():
    sla = cap.parse_sla({"p95_ms": 1000, "baseline_factor": 3})
    base = _step(10, p95=20)
    v = cap.evaluate_step(_step(100, p95=59), sla, base)
    assert v["passed"]
    v = cap.evaluate_step(_step(100, p95=61), sla, base)
    assert not v["passed"] and "3 x low-load p95 20.0 ms" in v["summary"]
    hard = cap.evaluate_step(_step(100, p95=2500), sla, None)
    assert hard["hard_break"] and hard["summary"].startswith("hard break")
    void = cap.evaluate_step(_step(100, lag=50), sla, None)
    assert void["void"] and not void["passed"] and "VOID" in void["summary"]
    empty = cap.evaluate_step(_step(100, measured=0), sla, None)
    assert empty["void"]


def test_summarize_capacity_sustained_knee_and_saturation():
    sla = cap.parse_sla({"p95_ms": 100})
    steps = []
    for i, (rate, ach, p95) in enumerate(
        [(100, 100, 20), (150, 150, 30), (200, 199, 60), (250, 205, 400), (300, 204, 900)]
    ):
        s = _step(rate, achieved=ach, p95=p95)
        s["index"] = i
        s["verdict"] = cap.evaluate_step(s, sla)
        steps.append(s)
    c = cap.summarize_capacity(steps, sla)
    assert c["sustained_rps"] == 200 and c["knee_rps"] == 250 and c["reached"]
    assert c["saturation_rps"] == 204.5  # mean of the two saturated steps (205, 204)
    assert any("p95" in r for r in c["knee_reasons"])
    # a later passing step above the knee does not raise the capacity
    fluke = _step(280, p95=10)
    fluke["verdict"] = cap.evaluate_step(fluke, sla)
    assert cap.summarize_capacity([*steps, fluke], sla)["sustained_rps"] == 200


# ---------------------------------------------------------------- queueing model


def test_erlang_c_known_values():
    assert cap.erlang_c(1, 0.5) == pytest.approx(0.5)  # M/M/1: P(wait) = rho
    assert cap.erlang_c(2, 1.0) == pytest.approx(1.0 / 3.0)
    assert cap.erlang_c(4, 3.0) == pytest.approx(0.5094, abs=1e-4)
    assert cap.erlang_c(4, 4.0) == 1.0 and cap.erlang_c(3, 0) == 0.0


def test_mm1_response_quantile_is_exponential():
    # M/M/1 sojourn time is Exp(mu - lambda): the p-quantile is -ln(1-p)/(mu-lambda)
    lam, mu = 30.0, 50.0
    got = cap.response_quantile(lam, 1, 1 / mu, 0.95, cs2=1.0, ca2=1.0)
    assert got == pytest.approx(-math.log(0.05) / (mu - lam), rel=0.01)


def test_predict_capacity_deterministic_is_saturation_and_monotone_in_sla():
    d = cap.predict_capacity(4, 0.020, 100, 0.95, cs2=0.0, ca2=0.0)
    assert d["rate_rps"] == pytest.approx(200.0, rel=1e-3)  # D/D/c: no waiting below saturation
    p1 = cap.predict_capacity(4, 0.020, 80, 0.95)["rate_rps"]
    p2 = cap.predict_capacity(4, 0.020, 120, 0.95)["rate_rps"]
    assert 100 < p1 < p2 < 200
    # Allen-Cunneen: less variable service -> more capacity at the same SLA
    assert cap.predict_capacity(4, 0.020, 80, 0.95, cs2=0.25)["rate_rps"] > p1
    assert cap.predict_capacity(4, 0.020, 10, 0.95)["rate_rps"] == 0.0


def test_service_stats():
    m, cs2 = cap.service_stats([0.02] * 10)
    assert m == pytest.approx(0.02) and cs2 == pytest.approx(0.0)
    rng = random.Random(5)
    m, cs2 = cap.service_stats([rng.expovariate(50) for _step in range(20000)])
    assert m == pytest.approx(0.02, rel=0.03) and cs2 == pytest.approx(1.0, rel=0.08)


# ---------------------------------------------------------------- Prometheus

PROM = """# HELP nv_inference_pending_request_count Pending
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="a",version="1"} 3
nv_inference_pending_request_count{model="b",version="1"} 4
nv_inference_queue_duration_us{model="a",version="1"} 2000000
nv_inference_request_success{model="a",version="1"} 100
vllm:num_requests_waiting{model_name="x \\"q\\""} 7
junk line here
other_metric 1.5e3
"""


def test_parse_prometheus_and_known_metrics():
    samples = cap.parse_prometheus(PROM)
    assert ("other_metric", {}, 1500.0) in samples
    assert ("vllm:num_requests_waiting", {"model_name": 'x "q"'}, 7.0) in samples
    known = cap.extract_known(samples)
    assert known["queue"] == 14.0  # 3 + 4 (Triton) + 7 (vLLM)
    only_a = cap.extract_known(samples, {"model": "a"})
    assert only_a["queue"] == 3.0 and only_a["queue_time_sum"] == pytest.approx(2.0)
    assert cap.extract_known(cap.parse_prometheus("other_metric 1\n"))["names"] == []


def test_summarize_server_metrics_queue_wait():
    scrapes = [
        (0.0, {"names": ["x"], "queue": 1.0, "queue_time_sum": 1.0, "requests": 100.0, "exec_time_sum": 2.0}),
        (1.0, {"names": ["x"], "queue": 5.0, "queue_time_sum": 1.5, "requests": 200.0, "exec_time_sum": 4.0}),
    ]
    s = cap.summarize_server_metrics(scrapes)
    assert s["queue_max"] == 5.0
    assert s["queue_wait_ms"] == pytest.approx(5.0)  # 0.5 s over 100 requests
    assert s["exec_ms"] == pytest.approx(20.0)
    assert cap.summarize_server_metrics([])["available"] is False


# ---------------------------------------------------------------- outputs


def _capacity(sustained=200.0, knee=210.0):
    return {
        "sustained_rps": sustained,
        "latency_ms": {"p95": 25.7, "p99": 31.2},
        "knee_rps": knee,
        "knee_reasons": ["p95 140 ms > SLA 100 ms"],
        "saturation_rps": 201.0,
        "max_queue": 2.0,
        "reached": knee is not None,
    }


def test_sla_sentence_forms():
    sla = cap.parse_sla("p95<100ms, p99<300ms")
    s = cap.sla_sentence("chat", _capacity(), sla, "1g.10gb", "H100")
    assert s.startswith(
        "chat on MIG 1g.10gb (H100) sustains 200 RPS at p95 < 100 ms (and p99 < 300 ms), with no errors"
    )
    assert "without queue growth" in s and "knee is at 210 RPS" in s
    lower = cap.sla_sentence("chat", _capacity(knee=None), sla)
    assert "lower bound" in lower
    fail = cap.sla_sentence("chat", _capacity(sustained=None), sla)
    assert "does not meet the SLA" in fail and "210 RPS" in fail and "p95 140 ms" in fail
    assert "errors <= 0.1%" in cap.sla_sentence("x", _capacity(), cap.parse_sla("p95<1s,errors<=0.1%"))


def test_table_row_csv_markdown():
    sla = cap.parse_sla("p95<100ms,p99<300ms")
    meta = {
        "service": "chat",
        "model": "llama",
        "version": 3,
        "profile": "3g.40gb",
        "gpu": "H100",
        "batch": 8,
        "limits": {"max_num_seqs": 64, "maxconn": 32},
    }
    row = cap.table_row(meta, _capacity(), sla, {"rate_rps": 190.4}, target_rps=150)
    assert list(row) == cap.TABLE_COLUMNS
    assert (
        row["sustained_rps"] == 200.0
        and row["predicted_rps"] == 190.4
        and row["limits"] == "max_num_seqs=64, maxconn=32"
    )
    assert row["headroom_pct"] == pytest.approx(33.3) and row["verdict"] == "capacity found"
    csv_text = cap.rows_to_csv([row], cap.TABLE_COLUMNS)
    assert csv_text.splitlines()[0] == ",".join(cap.TABLE_COLUMNS)
    assert "3g.40gb" in csv_text.splitlines()[1]
    md = cap.rows_to_markdown([row])
    assert md.count("\n") == 3 and "| chat |" in md
    with pytest.raises(cap.CapacityError, match="no capacity rows"):
        cap.rows_to_markdown([])
