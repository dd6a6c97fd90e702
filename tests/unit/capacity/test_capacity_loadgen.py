# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The open-loop generator against the test server on 127.0.0.1: HTTP, error kinds, protocols, metrics, bad input."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json

import pytest

from ansible_collections.gpu.mig.plugins.module_utils._capacity import analysis as cap
from ansible_collections.gpu.mig.plugins.module_utils._capacity import loadgen as lg


def _run(coro):
    return asyncio.run(coro)


def _feed(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


@pytest.mark.parametrize(
    "raw, status, body, keep",
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", 200, b"hello", True),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
            200,
            b"abcde",
            True,
        ),
        (b"HTTP/1.1 503 Busy\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", 503, b"", False),
        (b"HTTP/1.0 200 OK\r\n\r\nuntil-eof", 200, b"until-eof", False),
        (b"HTTP/1.1 204 No Content\r\n\r\n", 204, b"", True),
    ],
)
def test_read_response(raw, status, body, keep):
    async def go():
        return await lg.read_response(_feed(raw), keep_body=True)

    assert _run(go()) == (status, body, keep)


def test_read_response_rejects_garbage():
    async def go():
        return await lg.read_response(_feed(b"SSH-2.0-OpenSSH\r\n\r\n"))

    with pytest.raises(ConnectionError, match="malformed status line"):
        _run(go())


def test_constant_schedule_is_kept_and_latency_counts_from_intended_time(capacity_server):
    server = capacity_server(workers=4, mean_ms=5)

    async def go():
        runner = lg.Runner(
            lg.build_target({"url": server.url(), "payload": {"x": 1}}), "constant", record_requests=True
        )
        try:
            return await runner.run_phase(100, 0.2, 1.0), runner.requests
        finally:
            runner.close()

    step, reqs = _run(go())
    assert step["scheduled"] == 120 and step["measured"] == 100 and step["ok"] == 100
    assert step["achieved_rps"] == pytest.approx(100, rel=0.05)
    assert step["latency_ms"]["p50"] >= 5.0  # service time is a floor: latency includes it
    measured = [r for r in reqs if r[7]]
    intended = sorted(r[1] for r in measured)
    gaps = [b - a for a, b in itertools.pairwise(intended)]
    assert all(g == pytest.approx(0.01, abs=1e-6) for g in gaps)
    assert all(r[3] == 200 and r[5] == "" for r in measured)
    # every latency is at least its own send lag: the clock starts at the intended time
    assert all(r[4] >= r[2] for r in reqs)


def test_error_kinds_are_classified(capacity_server):
    server = capacity_server(workers=1, mean_ms=400)

    async def go(url, timeout=5.0):
        runner = lg.Runner(lg.build_target({"url": url, "payload": {}, "request_timeout": timeout}), "constant")
        try:
            return await runner.run_phase(40, 0.0, 0.5)
        finally:
            runner.close()

    assert _run(go(server.url("/status/503")))["errors"] == {"rejected_503": 20}
    assert _run(go(server.url("/status/429")))["errors"] == {"rejected_429": 20}
    assert _run(go(server.url("/status/500")))["errors"] == {"http_5xx": 20}
    assert _run(go(server.url("/status/404")))["errors"] == {"http_4xx": 20}
    assert _run(go(server.url("/close")))["errors"] == {"connection": 20}
    slow = _run(go(server.url("/infer"), timeout=0.15))
    assert slow["errors"].get("timeout", 0) >= 19
    assert slow["latency_ms"]["p50"] >= 150.0  # timeouts stay in the percentiles at their waiting time


def test_unreachable_endpoint_is_a_clear_error(free_port):
    with pytest.raises(
        cap.CapacityError, match=r"cannot reach http://127.0.0.1:%d/infer: .*is the service up" % free_port
    ):
        lg.run_sync(
            lg.run_capacity_test({"url": "http://127.0.0.1:%d/infer" % free_port, "sla": "p95<100ms", "hold": 1})
        )


def test_non_2xx_first_probe_is_a_clear_error(capacity_server):
    server = capacity_server()
    with pytest.raises(cap.CapacityError, match=r"first probe of POST .*/status/404 returned HTTP 404"):
        lg.run_sync(
            lg.run_capacity_test({"url": server.url("/status/404"), "payload": {}, "sla": "p95<100ms", "hold": 1})
        )


def test_bad_options_fail_before_any_traffic(capacity_server):
    server = capacity_server()
    base = {"url": server.url(), "payload": {}, "hold": 1}
    with pytest.raises(cap.CapacityError, match="no latency percentile"):
        lg.run_sync(lg.run_capacity_test(dict(base, sla={"max_error_rate": 0})))
    with pytest.raises(cap.CapacityError, match="more than time_limit 10 s"):
        lg.run_sync(lg.run_capacity_test(dict(base, sla="p95<1s", hold=5, warmup=1, max_steps=5, time_limit=10)))
    with pytest.raises(cap.CapacityError, match="sla is required"):
        lg.run_sync(lg.run_capacity_test(dict(base)))
    with pytest.raises(cap.CapacityError, match="must be http"):
        lg.run_sync(lg.run_capacity_test(dict(base, url="ftp://127.0.0.1/x", sla="p95<1s")))


def test_check_only_probes_without_load(capacity_server):
    server = capacity_server()
    res = lg.run_sync(
        lg.run_capacity_test({"url": server.url(), "payload": {}, "sla": "p95<1s", "hold": 1}, check_only=True)
    )
    assert res["checked"] and res["probe"]["status"] == 200 and "steps" not in res


def test_metrics_without_known_metric_warns_and_unreachable_fails(capacity_server, free_port):
    server = capacity_server(metrics_style="none", workers=4, mean_ms=5)
    opts = {
        "url": server.url(),
        "payload": {},
        "sla": "p95<500ms",
        "plan": "linear",
        "start_rps": 20,
        "max_steps": 1,
        "warmup": 0.1,
        "hold": 0.6,
        "initial_warmup": 0,
        "metrics_urls": [server.url("/metrics")],
        "metrics_interval": 0.1,
    }
    res = lg.run_sync(lg.run_capacity_test(opts))
    assert any("none of the known queue metrics" in w for w in res["warnings"])
    assert any("judged from client in-flight" in w for w in res["warnings"])
    assert res["steps"] and res["steps"][0]["queue"]["source"] == "client in-flight"
    with pytest.raises(cap.CapacityError, match="cannot reach http://127.0.0.1:%d/metrics" % free_port):
        lg.run_sync(lg.run_capacity_test(dict(opts, metrics_urls=["http://127.0.0.1:%d/metrics" % free_port])))


@pytest.mark.parametrize(
    "style, name", [("triton", "nv_inference_pending_request_count"), ("vllm", "vllm:num_requests_waiting")]
)
def test_server_queue_metrics_are_scraped(capacity_server, style, name):
    server = capacity_server(metrics_style=style, workers=2, mean_ms=20)

    async def go():
        scraper = lg.Scraper([server.url("/metrics")], 0.1)
        assert await scraper.probe() == []
        runner = lg.Runner(lg.build_target({"url": server.url(), "payload": {}}), "constant", scraper=scraper)
        try:
            return await runner.run_phase(150, 0.2, 1.5)  # 1.5 x capacity: the server queue grows
        finally:
            runner.close()

    step = _run(go())
    srv = step["server"]
    assert srv["available"] and name in srv["names"]
    assert srv["queue_max"] >= 10
    assert step["queue"]["source"].startswith("server queue") and step["queue"]["slope_lower"] > 0
    if style == "triton":
        assert srv["exec_ms"] == pytest.approx(20.0, rel=0.01)  # queue wait kept apart from execution time
        assert srv["queue_wait_ms"] > 50


def test_protocols_build_the_right_requests(capacity_server, tmp_path):
    server = capacity_server()
    t = lg.build_target({"url": server.base, "protocol": "openai", "model": "llama", "prompt": "hi", "max_tokens": 8})
    assert t.url.endswith("/v1/completions")
    body = json.loads(t.requests[0][0].split(b"\r\n\r\n", 1)[1])
    assert body == {"model": "llama", "max_tokens": 8, "stream": False, "prompt": "hi"}
    chat = lg.build_target({"url": server.base, "protocol": "openai_chat", "model": "llama"})
    assert chat.url.endswith("/v1/chat/completions")
    with pytest.raises(cap.CapacityError, match="needs the model name"):
        lg.build_target({"url": server.base, "protocol": "v2"})
    # V2 with no payload: a zero-filled request shaped from the model metadata
    v2 = _run(
        lg.prepare_target(
            {"batch": 2}, lg.build_target({"url": server.base, "protocol": "v2", "model": "m", "model_version": "1"})
        )
    )
    assert v2.url == server.base + "/v2/models/m/versions/1/infer"
    req = json.loads(v2.requests[0][0].split(b"\r\n\r\n", 1)[1])
    assert req == {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [0.0] * 8}]}
    # payload mix with a template and a heavy payload from a file
    heavy = tmp_path / "heavy.json"
    heavy.write_text(json.dumps({"inputs": [0] * 1000}))
    mixed = lg.build_target(
        {
            "url": server.url(),
            "payload_mix": [
                {"name": "light", "weight": 3, "template": '{"id": $seq, "r": $rand}', "variants": 4},
                {"name": "heavy", "weight": 1, "payload_file": str(heavy)},
            ],
        }
    )
    assert mixed.names == ["light", "heavy"] and len(mixed.requests[0]) == 4
    assert json.loads(mixed.requests[0][2].split(b"\r\n\r\n", 1)[1])["id"] == 2
    with pytest.raises(cap.CapacityError, match="unknown or bad placeholder"):
        lg.render_template('{"a": $nope}', 1)
    with pytest.raises(cap.CapacityError, match="cannot read payload file"):
        lg.build_target({"url": server.url(), "payload_file": str(tmp_path / "missing.json")})


def test_payload_mix_follows_weights(capacity_server):
    server = capacity_server(workers=8, mean_ms=2)
    target = lg.build_target(
        {
            "url": server.url(),
            "payload_mix": [
                {"name": "light", "weight": 3, "payload": {}},
                {"name": "heavy", "weight": 1, "payload": {"big": [0] * 500}},
            ],
        }
    )

    async def go():
        runner = lg.Runner(target, "constant", seed=4)
        try:
            return await runner.run_phase(200, 0.0, 1.0)
        finally:
            runner.close()

    step = _run(go())
    light, heavy = step["by_payload"]["light"]["count"], step["by_payload"]["heavy"]["count"]
    assert light + heavy == 200
    assert light / 200 == pytest.approx(0.75, abs=0.08)


def test_rejections_by_admission_control_are_counted(capacity_server):
    """A server that sheds load (503 when 4 wait) shows rejections, not a latency blow-up."""
    server = capacity_server(workers=2, mean_ms=20, max_queue=4)

    async def go():
        runner = lg.Runner(lg.build_target({"url": server.url(), "payload": {}}), "constant")
        try:
            return await runner.run_phase(200, 0.2, 1.0)  # 2 x capacity
        finally:
            runner.close()

    step = _run(go())
    v = cap.evaluate_step(step, cap.parse_sla("p95<500ms"))
    assert step["errors"].get("rejected_503", 0) > 50
    assert not v["passed"] and "rejected_503" in v["summary"]
    assert step["latency_ms"]["p99"] < 200  # admitted requests waited at most ~4 x 20 ms / 2 workers + service


@pytest.mark.parametrize(
    "raw, parsed",
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", (200, True, "all")),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", None),  # body not complete yet
        (b"HTTP/1.1 200 OK\r\nContent-", None),  # head not complete yet
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", (200, True, "all")),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n", None),
        (b"HTTP/1.1 503 Busy\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", (503, False, "all")),
        (b"HTTP/1.0 200 OK\r\n\r\nuntil-eof", (200, False, -1)),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", (200, True, "all")),
        (b"HTTP/1.1 204 No Content\r\n\r\n", (204, True, "all")),
    ],
)
def test_parse_response_fast_path(raw, parsed):
    if parsed and parsed[2] == "all":  # complete: the response ends where the bytes end
        parsed = (*parsed[:2], len(raw))
    assert lg.parse_response(raw) == parsed
    if parsed and parsed[2] > 0:  # a second response behind it does not change where the first one ends
        assert lg.parse_response(raw + b"HTTP/1.1 200 OK\r\n") == parsed


def test_parse_response_rejects_garbage():
    with pytest.raises(ValueError, match="malformed status line"):
        lg.parse_response(b"SSH-2.0-OpenSSH\r\n\r\n")


def test_idle_connection_closed_by_the_server_is_retried_once():
    """A server that drops each kept-alive connection when the second request arrives on it, unanswered (the race
    of an idle-timeout close): that request is sent again on a new connection instead of counting as a connection
    error; its clock keeps running from its intended send time."""

    async def go():
        accepted = []

        async def handle(reader, writer):
            accepted.append(1)
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                await reader.readuntil(b"\r\n\r\n")
            writer.close()  # the second request goes unanswered

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        runner = lg.Runner(lg.build_target({"url": "http://127.0.0.1:%d/x" % port}), "constant")
        try:
            step = await runner.run_phase(10, 0.0, 1.0)  # one request every 100 ms: each finds its connection closed
        finally:
            runner.close()
            server.close()
        return step, len(accepted)

    step, connections = _run(go())
    assert step["errors"] == {} and step["ok"] == 10
    assert connections >= 10  # every request after the first was dropped once and retried on a new connection


def test_early_stop_rule_ends_an_overloaded_hold(capacity_server):
    """Three times the capacity: once most requests older than the limit took longer, the hold ends, nothing more is
    sent, the hold and achieved rate count up to the stop, and the verdict is a hard break."""
    server = capacity_server(workers=1, mean_ms=20)  # 50 RPS
    rule = {"limit_s": 0.1, "fraction": 0.5, "min_hold_s": 0.5, "min_requests": 20, "reason": "p95 limit 100 ms"}

    async def go():
        runner = lg.Runner(lg.build_target({"url": server.url(), "payload": {}}), "constant", record_requests=True)
        try:
            return await runner.run_phase(150, 0.0, 4.0, stop_rule=rule), runner.requests
        finally:
            runner.close()

    step, reqs = _run(go())
    stopped = step["stopped_early"]
    assert 0.5 <= stopped["at_s"] < 3.0 and stopped["at_s"] <= step["hold_s"] < stopped["at_s"] + 0.5
    assert "took over 100 ms or failed (p95 limit 100 ms)" in stopped["reason"]
    assert step["hold_planned_s"] == 4.0 and step["unsent"] == 0 and step["scheduled"] == 600
    assert len(reqs) < 600 and all(r[1] <= stopped["at_s"] + 0.05 for r in reqs)  # nothing sent after the stop
    assert step["achieved_rps"] <= 60  # successes inside the shortened window, over its length
    verdict = cap.evaluate_step(step, cap.parse_sla("p95<100ms"))
    assert verdict["hard_break"] and verdict["checks"][1]["name"] == "early_stop"


def test_progress_ticks_report_the_running_counts(capacity_server):
    server = capacity_server(workers=4, mean_ms=5)
    ticks = []

    async def go():
        runner = lg.Runner(lg.build_target({"url": server.url(), "payload": {}}), "constant", progress=ticks.append)
        try:
            return await runner.run_phase(100, 0.2, 1.0, index=3, kind="knee")
        finally:
            runner.close()

    step = _run(go())
    assert len(ticks) >= 2
    assert {(t["event"], t["index"], t["kind"], t["rate"], t["duration"]) for t in ticks} == {
        ("tick", 3, "knee", 100, 1.2)
    }
    assert [t["sent"] for t in ticks] == sorted(t["sent"] for t in ticks) and ticks[-1]["sent"] <= step["scheduled"]
    assert all(t["done"] + t["inflight"] == t["sent"] and t["errors"] == 0 for t in ticks)
    assert ticks[-1]["p95_ms"] is not None and ticks[0]["elapsed"] < ticks[-1]["elapsed"]
