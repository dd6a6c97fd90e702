# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Synthetic V2-protocol inference server: ``c`` workers, real-time service delay (deterministic or exponential).

Stdlib asyncio, HTTP/1.1 with keep-alive, 127.0.0.1 only. Routes: ``POST /v2/models/<m>/infer`` (queued work, V2 JSON
answer), ``GET /v2/health/ready``, ``GET /metrics`` (Prometheus text: in-flight and queue gauges, request counter).
Prints ``LISTENING <port>`` once ready, so ``--port 0`` works for tests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re

_INFER = re.compile(r"^/v2/models/([^/]+)/infer$")


class Server:
    """Admits every request into one FIFO served by ``workers`` coroutines; answers when its service time is over."""

    def __init__(self, workers: int, mean_ms: float, law: str, seed: int) -> None:
        self.mean = mean_ms / 1000
        self.law = law
        self.rng = random.Random(seed)
        self.slots = asyncio.Semaphore(workers)
        self.waiting = 0
        self.in_flight = 0
        self.served = 0

    def service_time(self) -> float:
        return self.rng.expovariate(1 / self.mean) if self.law == "exponential" else self.mean

    async def infer(self, model: str, body: bytes) -> dict:
        request = json.loads(body or b"{}")
        self.waiting += 1
        async with self.slots:
            self.waiting -= 1
            self.in_flight += 1
            try:
                await asyncio.sleep(self.service_time())
            finally:
                self.in_flight -= 1
        self.served += 1
        inputs = request.get("inputs", [])
        return {
            "model_name": model,
            "id": request.get("id", ""),
            "outputs": [{"name": "output0", "datatype": "FP32", "shape": [1], "data": [float(len(inputs))]}],
        }

    def metrics(self) -> str:
        return (
            "# TYPE synthetic_in_flight gauge\n"
            f"synthetic_in_flight {self.in_flight}\n"
            "# TYPE synthetic_queue gauge\n"
            f"synthetic_queue {self.waiting}\n"
            "# TYPE synthetic_requests_total counter\n"
            f"synthetic_requests_total {self.served}\n"
        )

    async def route(self, method: str, path: str, body: bytes) -> tuple[int, str, bytes]:
        match = _INFER.match(path)
        if method == "POST" and match:
            return 200, "application/json", json.dumps(await self.infer(match.group(1), body)).encode()
        if path == "/v2/health/ready":
            return 200, "application/json", b"{}"
        if path == "/metrics":
            return 200, "text/plain; version=0.0.4", self.metrics().encode()
        return 404, "application/json", b'{"error": "not found"}'

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path = lines[0].split(" ")[:2]
                headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in lines[1:] if ":" in h)}
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                status, ctype, payload = await self.route(method, path.split("?")[0], body)
                writer.write(
                    f"HTTP/1.1 {status} {'OK' if status == 200 else 'Not Found'}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(payload)}\r\n\r\n".encode()
                    + payload
                )
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()


async def serve(args: argparse.Namespace) -> None:
    server = Server(args.workers, args.mean_ms, args.service, args.seed)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", args.port, backlog=1024)
    print(f"LISTENING {listener.sockets[0].getsockname()[1]}", flush=True)
    async with listener:
        await listener.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="requests served at once")
    parser.add_argument("--mean-ms", type=float, default=50.0, help="mean service time")
    parser.add_argument("--service", choices=["deterministic", "exponential"], default="deterministic")
    parser.add_argument("--seed", type=int, default=1)
    asyncio.run(serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
