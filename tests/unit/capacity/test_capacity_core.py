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

from ansible_collections.gpu.mig.plugins.module_utils._capacity import analysis as cap

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


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=-0.001, max_value=100.0, allow_nan=False), max_size=50))
def test_record_many_is_record_for_each(values):
    one, many = cap.LatencyHistogram(), cap.LatencyHistogram()
    for v in values:
        one.record(v)
    many.record_many(values)
    assert (many.counts, many.count, many.min, many.max) == (one.counts, one.count, one.min, one.max)
    assert many.total == pytest.approx(one.total, abs=1e-9)


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
    assert plan.next_step(hist) == (100.0, "step")
    hist.append(cap.StepOutcome(100, True))
    assert plan.next_rate(hist) == 110.0
    hist.append(cap.StepOutcome(110, False))  # knee: one more step, then confirm the last pass
    assert plan.next_rate(hist) == 121.0
    hist.append(cap.StepOutcome(121, False))
    assert plan.next_step(hist) == (100, "confirm")
    hist.append(cap.StepOutcome(100, True, role="confirm"))
    assert plan.next_step(hist) == (110, "confirm")  # the knee failed softly: one more look
    hist.append(cap.StepOutcome(110, False, role="confirm"))
    assert plan.next_step(hist) is None
    # a hard break stops the search at once, and the last pass is still confirmed
    assert plan.next_step([cap.StepOutcome(100, True), cap.StepOutcome(110, False, hard_break=True)]) == (
        100,
        "confirm",
    )
    # a void step is run once more; a second void at the same rate stops everything
    void = cap.StepOutcome(100, False, void=True)
    assert plan.next_step([void]) == (100, "step")
    assert plan.next_step([void, void]) is None
    assert plan.next_step([void, cap.StepOutcome(100, True)]) == (110, "step")
    # without confirmation the knee ends the plan
    bare = cap.LinearPlan(100, step_pct=10, max_rps=200, confirm=False)
    assert (
        bare.next_rate([cap.StepOutcome(100, True), cap.StepOutcome(110, False), cap.StepOutcome(121, False)]) is None
    )


def test_failed_confirmation_moves_the_result_down():
    plan = cap.LinearPlan(100, step_pct=10, max_rps=200, steps_after_knee=0)
    hist = [cap.StepOutcome(100, True), cap.StepOutcome(110, True), cap.StepOutcome(121, False)]
    assert plan.next_step(hist) == (110, "confirm")
    hist.append(cap.StepOutcome(110, False, role="confirm"))  # pooled over both runs, 110 fails after all
    assert cap.effective_outcomes(hist)[110].passed is False
    assert plan.next_step(hist) == (100, "confirm")
    hist.append(cap.StepOutcome(100, True, role="confirm"))
    assert plan.next_step(hist) is None  # 110 (the new lowest failure) was itself a confirmation
    # the adaptive plan bisects again below a candidate that failed its confirmation
    ad = cap.AdaptivePlan(100, max_rps=1000, resolution=0.05)
    hist = [cap.StepOutcome(r, r <= 300) for r in (100, 200, 400)]
    for _step in range(10):
        nxt = ad.next_step(hist)
        if nxt[1] == "confirm":
            break
        hist.append(cap.StepOutcome(nxt[0], nxt[0] <= 300, role=nxt[1]))
    lo, hi = ad.bracket(hist)
    assert nxt == (lo, "confirm") and (hi - lo) / lo <= 0.05
    assert {h.role for h in hist if 300 < h.rate < 400} <= {"knee", "step"}
    hist.append(cap.StepOutcome(lo, False, role="confirm"))
    assert ad.bracket(hist)[1] == lo  # the confirmation's verdict replaces the earlier pass
    nxt = ad.next_step(hist)
    assert lo > nxt[0] > ad.bracket(hist)[0]


def _simulate(plan, true_cap, limit=100):
    hist = []
    for _step in range(limit):
        nxt = plan.next_step(hist)
        if nxt is None:
            break
        hist.append(cap.StepOutcome(nxt[0], nxt[0] <= true_cap, role=nxt[1]))
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
        # both ends of the bracket were confirmed before the plan ended (on top of max_steps search steps)
        assert {h.rate for h in hist if h.role == "confirm"} == {lo, hi}


def test_adaptive_plan_respects_max_rps_and_void():
    plan = cap.AdaptivePlan(10, max_rps=50)
    hist = _simulate(plan, 1e9)
    assert [h.rate for h in hist] == [10.0, 20.0, 40.0, 50.0]
    void = cap.StepOutcome(20, False, void=True, role="knee")
    assert plan.next_step([cap.StepOutcome(10, True), void]) == (20, "knee")  # once more
    assert plan.next_rate([cap.StepOutcome(10, True), void, void]) is None
    # a void confirmation replaces nothing: the candidate keeps its earlier pass
    hist = [
        cap.StepOutcome(10, True),
        cap.StepOutcome(20, False),
        cap.StepOutcome(10, False, void=True, role="confirm"),
    ]
    assert cap.effective_outcomes(hist)[10].passed and plan.bracket(hist) == (10, 20)


def test_time_budget_rejects_plan_longer_than_limit():
    plan = cap.LinearPlan(10, step_pct=10, max_steps=12)
    # 12 search steps and up to 3 confirmations
    with pytest.raises(cap.CapacityError, match=r"15 steps x \(5 s warm-up \+ 10 s hold\).*225 s.*time_limit 120 s"):
        cap.check_time_budget(plan, 5, 10, 120)
    assert cap.check_time_budget(plan, 5, 10, 300) == 225
    assert cap.check_time_budget(cap.LinearPlan(10, step_pct=10, max_steps=12, confirm=False), 5, 10, 200) == 180
    # longer knee and confirmation holds count in full
    assert cap.check_time_budget(plan, 5, 10, 1000, knee_hold_s=20, confirm_hold_s=40) == 12 * 25 + 3 * 45
    with pytest.raises(cap.CapacityError, match=r"knee steps 20 s, confirmations 40 s"):
        cap.check_time_budget(plan, 5, 10, 100, knee_hold_s=20, confirm_hold_s=40)
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


# ---------------------------------------------------------------- exact M/M/c, pooling, confirmation


def test_mmc_response_tail_matches_a_simulated_queue():
    """The closed form against a long FIFO M/M/3 simulation (200k requests): every quantile within 2 %."""
    import heapq

    rng = random.Random(7)
    c, mean, rate = 3, 0.010, 240.0  # rho = 0.8
    free = [0.0] * c
    t = 0.0
    sojourn = []
    for _step in range(200_000):
        t += rng.expovariate(rate)
        start = max(t, heapq.heappop(free))
        done = start + rng.expovariate(1.0 / mean)
        heapq.heappush(free, done)
        sojourn.append(done - t)
    sojourn.sort()
    for p in (0.5, 0.9, 0.95, 0.99):
        simulated = sojourn[int(p * len(sojourn))]
        assert cap.mmc_response_quantile(rate, c, mean, p) == pytest.approx(simulated, rel=0.02), p
    assert cap.mmc_response_tail(0.0, rate, c, mean) == 1.0
    assert cap.mmc_response_quantile(300.0, c, mean, 0.95) == math.inf  # at saturation


def test_mmc_sla_rate_is_exact_and_monotone():
    rate = cap.mmc_sla_rate(16, 0.010, 0.040, 0.95)
    assert rate == pytest.approx(1476.0, abs=0.5)
    assert cap.mmc_response_quantile(rate, 16, 0.010, 0.95) == pytest.approx(0.040, rel=1e-6)
    assert cap.mmc_sla_rate(16, 0.010, 0.050, 0.95) > rate > cap.mmc_sla_rate(16, 0.010, 0.035, 0.95)
    assert cap.mmc_sla_rate(4, 0.020, 0.050, 0.95) == 0.0  # the service's own p95 (60 ms) breaks 50 ms
    # the prediction uses the closed form for exact M/M/c inputs
    pred = cap.predict_capacity(16, 0.010, 40, 0.95, cs2=1.0, ca2=1.0)
    assert pred["model"] == "M/M/c (Erlang C, exact)" and pred["rate_rps"] == pytest.approx(rate, abs=0.01)


def _judged(rate, p95, hold=2.0, index=0, queue=None, achieved=None, tail=6):
    """A judged-ready step whose histogram holds 100 requests, ``tail`` of them at about ``p95``."""
    s = _step(rate, p95=p95, achieved=achieved, queue=queue)
    h = cap.LatencyHistogram()
    for _i in range(100 - tail):
        h.record(p95 * 0.5 / 1000.0)
    for _i in range(tail):
        h.record(p95 * 1.01 / 1000.0)
    s.update(index=index, hold_s=hold, histogram=h.to_dict(), measured=100, ok=100, offered_actual_rps=rate)
    return s


def test_confirmation_pools_runs_and_replaces_the_earlier_verdict():
    sla = cap.parse_sla({"p95_ms": 100, "baseline_factor": 0})
    steps = []
    for i, (rate, p95) in enumerate([(100, 50), (200, 90), (300, 400)]):
        s = _judged(rate, p95, index=i)
        cap.judge_step(s, steps, sla, None)
        steps.append(s)
    assert cap.summarize_capacity(steps, sla)["sustained_rps"] == 200
    # the confirmation at 200 sees p95 130 ms (a fifth of its requests): pooled with the first run (90 ms) over
    # 2 + 6 s, a tenth of all requests took 131 ms, so the pooled p95 fails too
    confirm = _judged(200, 130, hold=6.0, index=3, tail=20)
    outcome = cap.judge_step(confirm, steps, sla, None, role="confirm")
    steps.append(confirm)
    pooled = confirm["pooled"]
    assert pooled["runs"] == [1, 3] and pooled["hold_s"] == 8.0 and pooled["measured"] == 200
    assert pooled["latency_ms"]["p95"] == pytest.approx(131.3, rel=0.01)  # merged histograms
    assert not outcome.passed and outcome.role == "confirm"
    capacity = cap.summarize_capacity(steps, sla)
    assert capacity["sustained_rps"] == 100 and capacity["knee_rps"] == 200 and not capacity["confirmed"]
    # a confirmation that holds makes the result "confirmed" and says how long it was measured
    ok = _judged(100, 40, hold=6.0, index=4)
    cap.judge_step(ok, steps, sla, None, role="confirm")
    steps.append(ok)
    capacity = cap.summarize_capacity(steps, sla)
    assert capacity["confirmed"] and capacity["measured_s"] == 8.0
    assert "over 8 s, confirmed" in cap.sla_sentence("chat", capacity, sla)
    rows = cap.step_rows(steps)
    assert rows[3]["role"] == "confirm" and rows[3]["pooled_runs"] == "1 3" and rows[3]["pooled_passed"] is False


def test_pooled_queue_trends_gain_power():
    rng = random.Random(3)
    # two runs each with a weak upward drift that neither shows with 99 % confidence alone
    runs = [_queue([5 + 0.4 * i / 10 + rng.choice([-2, 0, 2]) for i in range(60)], hold=3.0) for _run in range(4)]
    combined = cap.combine_trends(runs)
    assert combined["runs"] == 4 and combined["df"] == sum(r["df"] for r in runs)
    assert combined["slope_se"] < min(r["slope_se"] for r in runs)
    assert combined["slope"] == pytest.approx(sum(r["slope"] for r in runs) / 4, rel=0.5)
    assert cap.combine_trends([None, runs[0]]) == runs[0]
    assert cap.combine_trends([]) is None


def test_queue_growth_needs_a_share_of_the_offered_rate():
    sla = cap.parse_sla({"p95_ms": 100})
    # +0.5/s over 16 s: significant, 8 requests of growth, but 0.05 % of 1000 RPS: a stable queue wandering
    wander = _queue([10 + 0.5 * 16 * i / 99 + random.Random(i).choice([-0.2, 0.2]) for i in range(100)], hold=16.0)
    assert wander["slope_lower99"] > 0 and wander["growth"] > 2
    assert cap.evaluate_step(_step(1000, queue=wander), sla)["passed"]
    # the same drift at 50 RPS is 1 % of the arrivals: growth
    v = cap.evaluate_step(_step(50, queue=wander), sla)
    assert not v["passed"] and "99% lower bound" in v["summary"]


def test_early_stopped_step_is_a_hard_break():
    sla = cap.parse_sla({"p95_ms": 100})
    s = _step(300, p95=90)
    s["stopped_early"] = {"at_s": 1.2, "reason": "stopped 1.2 s into the 4 s hold: 300 of 700 requests took over"}
    v = cap.evaluate_step(s, sla)
    assert not v["passed"] and v["hard_break"] and "stopped 1.2 s into the 4 s hold" in v["summary"]
