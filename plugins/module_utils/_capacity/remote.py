# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""One capacity test from several generator hosts (PRIVATE to the collection).

Each generator host runs an agent (:func:`serve_generator`, the ``capacity_generator`` module) that listens on TCP for
one coordinator. The coordinator (:class:`RemoteGenerators`, used by ``run_capacity_test`` with ``generators``)
checks each host's clock, hands it the pre-encoded requests and its shares of the schedule, and for every step sends
the common start; each host runs its shares on its own worker processes and answers with one merged step part. The
protocol is JSON lines, authenticated by a shared token; run it on a network you trust, as the request headers cross it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
import random
import time

from ansible_collections.gpu.mig.plugins.module_utils._capacity import loadgen as _loadgen
from ansible_collections.gpu.mig.plugins.module_utils._capacity.analysis import (
    CapacityError,
    LatencyHistogram,
    schedule_offsets,
)
from ansible_collections.gpu.mig.plugins.module_utils._capacity.workers import (
    TIMEOUTS,
    LocalWorkers,
    available_cores,
    default_workers,
)

PROTOCOL = "gpu.mig-generator/1"
LINE_LIMIT = 1 << 28  # a step part with recorded requests can be large
CLOCK_PINGS = 5
DEFAULT_PORT = 9470


# ---------------------------------------------------------------------------------------------------------------------
# Step parts on the wire
# ---------------------------------------------------------------------------------------------------------------------


def part_to_wire(part: dict) -> dict:
    """A step part as JSON: histograms as their bucket counts."""
    out = dict(part)
    for key in ("hist", "lag", "wait"):
        out[key] = part[key].to_dict()
    out["by_payload"] = {str(k): h.to_dict() for k, h in part["by_payload"].items()}
    return out


def part_from_wire(data: dict) -> dict:
    out = dict(data)
    for key in ("hist", "lag", "wait"):
        out[key] = LatencyHistogram.from_dict(data[key])
    out["by_payload"] = {int(k): LatencyHistogram.from_dict(h) for k, h in data["by_payload"].items()}
    out["inflight_samples"] = [tuple(s) for s in data["inflight_samples"]]
    out["requests"] = [tuple(r) for r in data["requests"]]
    return out


async def _send(writer: asyncio.StreamWriter, message: dict) -> None:
    writer.write(json.dumps(message, separators=(",", ":")).encode("utf-8") + b"\n")
    await writer.drain()


async def _receive(reader: asyncio.StreamReader, timeout: float) -> dict:
    line = await asyncio.wait_for(reader.readline(), timeout)
    if not line:
        raise ConnectionError("connection closed")
    return json.loads(line)


# ---------------------------------------------------------------------------------------------------------------------
# The agent on a generator host
# ---------------------------------------------------------------------------------------------------------------------


class _Agent:
    """Serves one coordinator at a time; ends after the first session that passed the handshake, or at the deadline."""

    def __init__(self, token: str, workers: int, event_loop: str, clock=time.time) -> None:
        self.token = token
        self.workers = workers or default_workers()
        self.event_loop = event_loop
        self.clock = clock
        self.done = asyncio.Event()
        self.busy = False
        self.claimed = asyncio.Event()  # a coordinator passed the handshake: one test a generator
        self.runner = None
        self.share = (0, 1)  # this host's first share, of all the test's shares
        self.steps = 0
        self.failures: list = []

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.busy or self.claimed.is_set():
            writer.close()
            return
        self.busy = True
        try:
            hello = await _receive(reader, 30.0)
            if hello.get("protocol") != PROTOCOL or not hmac.compare_digest(
                str(hello.get("token", "")).encode(), self.token.encode()
            ):
                await _send(
                    writer, {"op": "error", "msg": "wrong token or protocol; this generator expects %s" % PROTOCOL}
                )
                return
            await _send(
                writer,
                {"op": "hello", "workers": self.workers, "cores": available_cores(), "event_loop": self.event_loop},
            )
            self.claimed.set()
            await self._serve(reader, writer)
        except (OSError, ValueError, KeyError, *TIMEOUTS) as exc:
            self.failures.append("session ended: %s" % (exc or type(exc).__name__))
        finally:
            if self.runner is not None:
                self.runner.close()
                self.runner = None
            self.busy = False
            writer.close()
            if self.claimed.is_set():
                self.done.set()

    async def _serve(self, reader, writer) -> None:
        for _message in range(1_000_000):  # bounded: one message a pass
            msg = await _receive(reader, 3600.0)
            op = msg.get("op")
            if op == "ping":
                await _send(writer, {"op": "pong", "time": self.clock()})
            elif op == "setup" and self.runner is None:
                if not await self._setup(msg, writer):
                    return
            elif op == "phase" and self.runner is not None:
                await self._phase(msg["spec"], writer)
            elif op == "close":
                await _send(writer, {"op": "bye", "steps": self.steps})
                return
            else:
                await _send(writer, {"op": "error", "msg": "unexpected message %r" % op})
                return

    async def _setup(self, msg: dict, writer) -> bool:
        target = _loadgen.Target.from_wire(msg["target"])
        first, of = int(msg["first"]), int(msg["of"])
        try:
            await _loadgen.http_once(target.url, "GET", timeout=min(target.timeout, 10.0),
                                     validate_certs=target.validate_certs)  # fmt: skip
        except CapacityError as exc:
            await _send(writer, {"op": "error", "msg": "this generator host cannot reach the service: %s" % exc})
            return False
        self.runner = _loadgen.Runner(target, msg["arrival"], int(msg["seed"]),
                                      max(1, int(msg["max_connections"]) * self.workers // of),
                                      float(msg["sample_interval"]), record_requests=bool(msg["record_requests"]),
                                      workers=self.workers, event_loop=self.event_loop)  # fmt: skip
        self.share = (first, of)
        if self.workers > 1:
            self.runner.shares = LocalWorkers(self.runner, self.workers, self._loop_factory, first, of)
        await _send(writer, {"op": "ready"})
        return True

    def _loop_factory(self):
        return _loadgen.new_event_loop(self.event_loop)

    async def _phase(self, spec: dict, writer) -> None:
        runner = self.runner
        offsets = schedule_offsets(
            spec["rate"], spec["warmup"] + spec["hold"], runner.arrival, random.Random(spec["seed"])
        )
        first, of = self.share
        try:
            if runner.shares is not None:
                parts = await runner.shares.run(spec, offsets, runner.target.timeout)
            else:
                parts = [await runner.run_share(spec, offsets[first::of], first, of)]
        except CapacityError as exc:
            await _send(writer, {"op": "error", "msg": str(exc)})
            raise ConnectionError(str(exc)) from None
        self.steps += 1
        part = _loadgen.merge_parts(parts, runner.keep_samples)
        await _send(writer, {"op": "part", "part": part_to_wire(part)})


async def serve_generator(listen: str, port: int, token: str, timeout: float, workers: int = 0,
                          event_loop: str = "asyncio", clock=time.time, ready=None,
                          connect_timeout: float | None = None) -> dict:  # fmt: skip
    """Listen on ``listen:port`` until a coordinator has run its test (or ``timeout`` seconds); what was served.

    Without a coordinator within ``connect_timeout`` seconds it ends too (a test that failed before reaching it, an
    interrupted play). ``ready`` (a callable) gets the bound port once listening.
    """
    if not token or len(token) < 16:
        raise CapacityError("generator token must be at least 16 characters; let the capacity role generate it")
    agent = _Agent(token, workers, event_loop, clock)
    try:
        server = await asyncio.start_server(agent.session, listen, port, limit=LINE_LIMIT)
    except OSError as exc:
        raise CapacityError(
            "cannot listen on %s:%d: %s; choose another port or address" % (listen, port, exc.strerror)
        ) from None
    bound = server.sockets[0].getsockname()[1]
    if ready is not None:
        ready(bound)
    started = time.monotonic()
    try:
        await asyncio.wait_for(agent.claimed.wait(), min(timeout, connect_timeout or timeout))
        await asyncio.wait_for(agent.done.wait(), max(0.0, timeout - (time.monotonic() - started)))
        finished = True
    except TIMEOUTS:
        finished = False
    finally:
        server.close()
        await server.wait_closed()
    return {"port": bound, "finished": finished, "steps": agent.steps, "workers": agent.workers,
            "failures": agent.failures}  # fmt: skip


async def stop_generator(address: str, port: int, token: str, timeout: float = 5.0) -> bool:
    """End a generator that no coordinator reached, as a coordinator that ran no test; False when none listens."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(address, port), timeout)
    except (OSError, *TIMEOUTS):
        return False
    try:
        await _send(writer, {"op": "hello", "protocol": PROTOCOL, "token": token})
        if (await _receive(reader, timeout)).get("op") != "hello":
            return False
        await _send(writer, {"op": "close"})
        return (await _receive(reader, timeout)).get("op") == "bye"
    except (OSError, ValueError, *TIMEOUTS):
        return False
    finally:
        writer.close()


# ---------------------------------------------------------------------------------------------------------------------
# The coordinator
# ---------------------------------------------------------------------------------------------------------------------


class RemoteGenerators:
    """The generator hosts of one test, as the runner's shares: every phase runs on all of them from one start."""

    def __init__(
        self, hosts: list, token: str, max_clock_offset_ms: float = 100.0, connect_timeout: float = 30.0
    ) -> None:
        self.hosts = [dict(h) for h in hosts]
        self.token = token
        self.max_offset = max_clock_offset_ms / 1000.0
        self.connect_timeout = connect_timeout
        self.links: list = []  # (host, reader, writer) per connected host

    def _name(self, host: dict) -> str:
        return "generator host %s (%s:%d)" % (host.get("host") or host["address"], host["address"], host["port"])

    async def open(self, target, cfg: dict) -> list:
        """Connect, check each clock, set up the test on every host; the hosts' records (workers, clock offset)."""
        try:
            for host in self.hosts:
                self.links.append((host, *await self._connect(host)))
            for host, reader, writer in self.links:
                await self._clock(host, reader, writer)
            total = sum(h["workers"] for h in self.hosts)
            first = 0
            for host, reader, writer in self.links:
                await _send(writer, {"op": "setup", "target": target.to_wire(), "first": first, "of": total,
                                     "arrival": cfg["arrival"], "seed": int(cfg["seed"]),
                                     "max_connections": int(cfg["max_connections"]),
                                     "sample_interval": float(cfg["sample_interval"]),
                                     "record_requests": bool(cfg["record_requests"])})  # fmt: skip
                await self._expect(host, reader, "ready", 30.0, "setting up the test")
                host["shares"] = [first, first + host["workers"] - 1]
                first += host["workers"]
        except BaseException:
            self.close()
            raise
        return [{k: h[k] for k in ("host", "address", "port", "workers", "cores", "event_loop", "clock_offset_ms", "rtt_ms", "shares")}
                for h in self.hosts]  # fmt: skip

    async def _connect(self, host: dict) -> tuple:
        deadline = time.monotonic() + self.connect_timeout
        error = None
        for _attempt in range(10_000):  # bounded by the deadline: the agents may still be starting
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host["address"], host["port"], limit=LINE_LIMIT), 5.0)  # fmt: skip
                break
            except (OSError, *TIMEOUTS) as exc:
                error = os.strerror(exc.errno) if getattr(exc, "errno", None) else "no answer"
                if time.monotonic() > deadline:
                    raise CapacityError(
                        "%s is unreachable: %s for %.0f s; is its capacity_generator running and the port open "
                        "from here?" % (self._name(host), error, self.connect_timeout)
                    ) from None
                await asyncio.sleep(0.2)
        await _send(writer, {"op": "hello", "protocol": PROTOCOL, "token": self.token})
        hello = await self._expect(host, reader, "hello", 30.0, "the handshake")
        host["workers"], host["cores"], host["event_loop"] = (
            int(hello["workers"]),
            int(hello["cores"]),
            hello["event_loop"],
        )
        return reader, writer

    async def _clock(self, host: dict, reader, writer) -> None:
        """The host's clock offset from the best of a few pings (least round trip); refused above the limit."""
        best = None
        for _ping in range(CLOCK_PINGS):
            sent = time.time()
            await _send(writer, {"op": "ping"})
            pong = await self._expect(host, reader, "pong", 10.0, "the clock check")
            back = time.time()
            sample = (back - sent, float(pong["time"]) - (sent + back) / 2.0)
            best = sample if best is None or sample[0] < best[0] else best
        rtt, offset = best
        host["clock_offset_ms"], host["rtt_ms"] = round(offset * 1000.0, 3), round(rtt * 1000.0, 3)
        host["offset_s"] = offset
        if abs(offset) > self.max_offset:
            raise CapacityError(
                "%s: its clock is %.0f ms %s this host's (round trip %.1f ms), more than max_clock_offset %.0f ms; "
                "synchronise the clocks (chrony or systemd-timesyncd) or raise max_clock_offset"
                % (self._name(host), abs(offset) * 1000.0, "ahead of" if offset > 0 else "behind", rtt * 1000.0,
                   self.max_offset * 1000.0)
            )  # fmt: skip

    async def _expect(self, host: dict, reader, op: str, timeout: float, during: str) -> dict:
        try:
            msg = await _receive(reader, timeout)
        except (OSError, *TIMEOUTS) as exc:
            raise CapacityError(
                "%s was lost during %s (%s); no capacity is reported from a step that lost part of its load"
                % (self._name(host), during, exc or "no answer within %.0f s" % timeout)
            ) from None
        except ValueError:
            raise CapacityError("%s sent a malformed message during %s" % (self._name(host), during)) from None
        if msg.get("op") == "error":
            raise CapacityError("%s, during %s: %s" % (self._name(host), during, msg.get("msg")))
        if msg.get("op") != op:
            raise CapacityError("%s answered %r during %s, expected %r" % (self._name(host), msg.get("op"), during, op))
        return msg

    def lead(self, scheduled: int) -> float:
        """Seconds from now to the common start: the message, the hosts' schedule and the slowest round trip."""
        return 0.5 + 2e-6 * scheduled + max(h["rtt_ms"] for h in self.hosts) / 1000.0

    def totals(self):
        return None  # the hosts report at the end of each step

    async def run(self, spec: dict, offsets: list, timeout: float) -> list:
        """Every host's part of one phase, each started at the common instant on its own clock."""
        during = "step %d at %g RPS" % (spec["index"], spec["rate"])
        limit = spec["start"] - time.time() + spec["warmup"] + spec["hold"] + timeout + 60.0
        try:
            for host, _reader, writer in self.links:
                await _send(writer, {"op": "phase", "spec": dict(spec, start=spec["start"] + host["offset_s"])})
            replies = await asyncio.gather(*(self._expect(host, reader, "part", limit, during)
                                             for host, reader, _writer in self.links))  # fmt: skip
        except OSError:  # a send to a host that is gone
            self.close()
            raise CapacityError("a generator host was lost during %s; the step is failed" % during) from None
        except BaseException:
            self.close()
            raise
        return [part_from_wire(reply["part"]) for reply in replies]

    def close(self) -> None:
        for _host, _reader, writer in self.links:
            with contextlib.suppress(OSError, RuntimeError):
                writer.write(b'{"op":"close"}\n')
            writer.close()
        self.links = []
