# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Ground-truth inference server for capacity tests: c workers, known service-time law, optional periodic stalls.

Queueing runs in virtual time (a worker starts a request at max(arrival, the moment it became free)), so the true
capacity is exactly ``workers / mean service time`` whatever the scheduler jitter. Listens on 127.0.0.1 only.

Routes: any path -> queued work (200 JSON); ``/metrics`` -> Prometheus text; ``/status/<code>`` -> that status at once;
``/close`` -> drop the connection; ``/v2/models/<m>`` -> V2 metadata; ``/v2/models/<m>/infer`` -> queued work.
Prints ``LISTENING <port>`` on stdout once ready; exits after ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import time


class Server:
    STRATA = 200

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.strata: list = []
        self.rng = random.Random(args.seed)
        self.queue: asyncio.Queue = asyncio.Queue()
        self.t0 = 0.0
        self.busy = 0
        self.queue_time_us = 0.0
        self.compute_us = 0.0
        self.success = 0
        self.rejected = 0

    def service_time(self) -> float:
        mean = self.args.mean_ms / 1000.0
        if self.args.service == "exponential":
            # stratified (Latin hypercube) draws: each block of STRATA values has one draw per 1/STRATA quantile band,
            # shuffled. The marginal law is exactly exponential and draws are independent up to O(1/STRATA), but the
            # realised mean is precise, so the true capacity c/E[S] holds over a few seconds, not a few minutes.
            if not self.strata:
                n = self.STRATA
                self.strata = [(k + self.rng.random()) / n for k in range(n)]
                self.rng.shuffle(self.strata)
            return -mean * math.log1p(-self.strata.pop())
        return mean

    def after_stall(self, t: float) -> float:
        """Push a start time out of a stall window [k*every + offset, ... + stall)."""
        every, stall = self.args.stall_every, self.args.stall_ms / 1000.0
        if every <= 0 or stall <= 0:
            return t
        rel = t - self.t0 - self.args.stall_offset
        if rel < 0:
            return t
        k = int(rel // every)
        if rel - k * every < stall:
            return self.t0 + self.args.stall_offset + k * every + stall
        return t

    async def worker(self) -> None:
        loop = asyncio.get_running_loop()
        free_at = 0.0
        while True:
            arrival, fut = await self.queue.get()
            start = self.after_stall(max(arrival, free_at))
            s = self.service_time()
            end = start + s
            free_at = end
            self.busy += 1
            delay = end - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self.busy -= 1
            self.queue_time_us += (start - arrival) * 1e6
            self.compute_us += s * 1e6
            self.success += 1
            if not fut.done():
                fut.set_result(None)

    def metrics(self) -> str:
        style = self.args.metrics_style
        waiting = self.queue.qsize()
        if style == "triton":
            lab = '{model="m",version="1"}'
            return (
                "# HELP nv_inference_pending_request_count Instantaneous number of pending requests\n"
                "# TYPE nv_inference_pending_request_count gauge\n"
                "nv_inference_pending_request_count%s %d\n"
                "nv_inference_queue_duration_us%s %.0f\n"
                "nv_inference_compute_infer_duration_us%s %.0f\n"
                "nv_inference_request_success%s %d\n"
                % (lab, waiting, lab, self.queue_time_us, lab, self.compute_us, lab, self.success)
            )
        if style == "vllm":
            lab = '{model_name="m"}'
            return "vllm:num_requests_waiting%s %d\nvllm:num_requests_running%s %d\n" % (lab, waiting, lab, self.busy)
        return "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total %.3f\n" % time.process_time()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        try:
            for _step in range(10_000_000):
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.split(b"\r\n")
                method, path = lines[0].split()[:2]
                path = path.decode()
                length = 0
                for line in lines[1:]:
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if length:
                    await reader.readexactly(length)
                arrival = loop.time()
                status, body, ctype = 200, b'{"ok":true}', "application/json"
                if path == "/metrics":
                    body, ctype = self.metrics().encode(), "text/plain; version=0.0.4"
                elif path.startswith("/status/"):
                    status = int(path.rsplit("/", 1)[1])
                    body = b'{"error":"status requested"}'
                elif path == "/close":
                    writer.close()
                    return
                elif path.startswith("/v2/models/") and not path.endswith("/infer") and method == b"GET":
                    body = json.dumps(
                        {
                            "name": "m",
                            "versions": ["1"],
                            "platform": "test",
                            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
                            "outputs": [],
                        }
                    ).encode()
                elif self.args.max_queue and self.queue.qsize() >= self.args.max_queue:
                    status, body = 503, b'{"error":"queue full"}'
                    self.rejected += 1
                else:
                    fut = loop.create_future()
                    self.queue.put_nowait((arrival, fut))
                    await fut
                    body = b'{"outputs":[{"name":"y","datatype":"FP32","shape":[1],"data":[0.0]}]}'
                reason = {200: "OK", 503: "Service Unavailable"}.get(status, "Status")
                writer.write(
                    b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s"
                    % (status, reason.encode(), ctype.encode(), len(body), body)
                )
                await writer.drain()
        except (ConnectionError, OSError):
            return
        finally:
            writer.close()

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        self.t0 = loop.time()
        workers = [asyncio.ensure_future(self.worker()) for _step in range(self.args.workers)]
        server = await asyncio.start_server(self.handle, "127.0.0.1", self.args.port, backlog=4096)
        port = server.sockets[0].getsockname()[1]
        sys.stdout.write("LISTENING %d\n" % port)
        sys.stdout.flush()
        try:
            await asyncio.sleep(self.args.max_seconds)
        finally:
            server.close()
            for w in workers:
                w.cancel()


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--service", choices=["deterministic", "exponential"], default="deterministic")
    ap.add_argument("--mean-ms", type=float, default=20.0)
    ap.add_argument("--stall-every", type=float, default=0.0, help="seconds between stalls (0: none)")
    ap.add_argument("--stall-ms", type=float, default=0.0)
    ap.add_argument("--stall-offset", type=float, default=0.0)
    ap.add_argument("--max-queue", type=int, default=0, help="reject with 503 when this many wait (0: unbounded)")
    ap.add_argument("--metrics-style", choices=["triton", "vllm", "none"], default="triton")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--max-seconds", type=float, default=600.0)
    return ap.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(Server(parse_args()).main())
