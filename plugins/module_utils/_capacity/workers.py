# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Generator processes on one load host: a step's schedule split over N forked workers (PRIVATE to the collection).

Worker k of N sends every N-th request of the one arrival process (so a constant or Poisson schedule keeps its exact
statistics) on its own event loop and connections, from a common start; the parent merges their step parts. A worker
that dies or fails ends the step with a CapacityError that names it: a lost worker never reads as a lower rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import os
import random
import signal
import time

from ansible_collections.gpu.mig.plugins.module_utils._capacity.analysis import CapacityError

# asyncio.TimeoutError is not the builtin TimeoutError before Python 3.11 (modules run on older hosts); the capacity
# engine's one spelling of "a wait timed out"
TIMEOUTS = (asyncio.TimeoutError, TimeoutError)
# counters each worker publishes for the progress ticks: sent, done, in flight, errors
_COUNTERS = 4


def available_cores() -> int:
    """CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_workers() -> int:
    """Generator processes for ``workers: 0``: every available core, leaving one to the system above two."""
    cores = available_cores()
    return cores - 1 if cores > 2 else cores


class SharedState:
    """What a host's workers share: the early-stop flag (1 + the worker whose rule fired) and their live counters."""

    def __init__(self, context, workers: int) -> None:
        self.workers = workers
        self.stop = context.RawValue("i", 0)
        self.counters = context.RawArray("d", _COUNTERS * workers)

    def publish(self, slot: int, sent: int, done: int, inflight: int, errors: int) -> None:
        base = _COUNTERS * slot
        self.counters[base : base + _COUNTERS] = [sent, done, inflight, errors]

    def totals(self) -> tuple:
        values = self.counters[:]
        return tuple(sum(values[i::_COUNTERS]) for i in range(_COUNTERS))

    def reset(self) -> None:
        self.stop.value = 0
        self.counters[:] = [0.0] * len(self.counters)


class LocalWorkers:
    """``count`` forked generator processes serving the runner's phases; they take shares ``first`` to
    ``first + count - 1`` of ``of`` (all of them on a single load host).
    """

    def __init__(self, runner, count: int, loop_factory, first: int = 0, of: int | None = None) -> None:
        context = multiprocessing.get_context("fork")
        self.count = count
        self.first = first
        self.of = of or count
        self.shared = SharedState(context, count)
        self.processes: list = []
        self.conns: list = []
        for slot in range(count):
            parent_end, child_end = context.Pipe()
            process = context.Process(
                target=_serve,
                args=(runner, child_end, slot, first + slot, self.of, self.shared, loop_factory),
                name="gpu-mig-loadgen-%d" % slot,
                daemon=True,
            )
            process.start()
            child_end.close()
            self.processes.append(process)
            self.conns.append(parent_end)

    def totals(self) -> tuple:
        return self.shared.totals()

    @staticmethod
    def lead(scheduled: int) -> float:
        """Seconds from now to the common start: the time to hand each worker its share of the schedule."""
        return 0.05 + 2e-7 * scheduled

    async def run(self, spec: dict, offsets: list, timeout: float) -> list:
        """Every worker's part of one phase; a worker that dies, fails or hangs fails the phase (CapacityError)."""
        self.shared.reset()
        tasks: list = []
        try:
            for slot, conn in enumerate(self.conns):
                share = self.first + slot
                try:
                    conn.send(("phase", spec, offsets[share :: self.of]))
                except OSError:
                    raise CapacityError(self._lost(slot, spec)) from None
            limit = spec["start"] - time.time() + spec["warmup"] + spec["hold"] + timeout + 30.0
            tasks = [asyncio.ensure_future(self._part(slot, spec)) for slot in range(self.count)]
            try:
                return await asyncio.wait_for(asyncio.gather(*tasks), limit)
            except TIMEOUTS:
                raise CapacityError(
                    "step %d at %g RPS: the load generator workers did not report within %.0f s; the step is failed"
                    % (spec["index"], spec["rate"], limit)
                ) from None
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.close()
            raise

    async def _part(self, slot: int, spec: dict) -> dict:
        conn = self.conns[slot]
        await _readable(conn)
        try:
            kind, value = conn.recv()
        except (EOFError, OSError):
            raise CapacityError(self._lost(slot, spec)) from None
        if kind == "error":
            raise CapacityError(
                "step %d at %g RPS failed: load generator worker %d of %d: %s"
                % (spec["index"], spec["rate"], slot + 1, self.count, value)
            )
        return value

    def _lost(self, slot: int, spec: dict) -> str:
        process = self.processes[slot]
        process.join(1.0)
        code = process.exitcode
        if code is None:
            how = "stopped answering"
        elif code < 0:
            try:
                how = "was killed by %s" % signal.Signals(-code).name
            except ValueError:
                how = "was killed by signal %d" % -code
        else:
            how = "exited with code %d" % code
        return (
            "step %d at %g RPS failed: load generator worker %d of %d (pid %s) %s; no capacity is reported from a "
            "step that lost part of its load. Check the load host (memory, the OOM killer in dmesg, ulimits) and "
            "run again, or set workers: 1" % (spec["index"], spec["rate"], slot + 1, self.count, process.pid, how)
        )

    def close(self) -> None:
        """Ask the workers to exit, then end any that do not."""
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(("close", None, None))
        for process in self.processes:
            process.join(2.0)
            if process.is_alive():
                process.kill()
                process.join(2.0)
        for conn in self.conns:
            conn.close()
        self.conns = []
        self.processes = []
        self.count = 0


async def _readable(conn) -> None:
    """Wait, without blocking the event loop, until ``conn`` (a pipe end) has a message or is closed."""
    fd = conn.fileno()
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_reader(fd, _resolve, ready)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


def _resolve(future) -> None:
    if not future.done():
        future.set_result(None)


def _serve(runner, conn, slot: int, share: int, of: int, shared: SharedState, loop_factory) -> None:
    """A worker process: run each phase's share on a fresh event loop of its own and send back the part."""
    runner.payload_rng = random.Random(runner.seed + 1 + share)
    runner.pool.max = max(1, math.ceil(runner.pool.max / shared.workers))  # this worker's part of the connections
    runner.shares = None
    runner.progress = None
    runner.scraper = None
    loop = loop_factory()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(_serve_phases(runner, conn, slot, share, of, shared))
    finally:
        runner.pool.close()
        loop.close()
        conn.close()


async def _serve_phases(runner, conn, slot: int, share: int, of: int, shared: SharedState) -> None:
    for _phase in range(1_000_000):  # bounded: one phase a message
        await _readable(conn)
        try:
            kind, spec, offsets = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if kind == "close":
            return
        try:
            part = await runner.run_share(spec, offsets, share, of, shared, slot)
        except Exception as exc:  # the parent fails the step with it
            conn.send(("error", "%s: %s" % (type(exc).__name__, exc)))
            return
        conn.send(("part", part))
