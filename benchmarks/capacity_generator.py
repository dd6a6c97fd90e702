# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Benchmark: the open-loop generator against wrk and Locust on one core, its scaling over worker processes, and the
fidelity of the merged latency histogram.

  .venv/bin/python benchmarks/capacity_generator.py [--seconds 1] [--repeats 5] [--scaling-repeats 2] [--json F]

1. Per core: HAProxy (one thread, one core) answers every request itself, so the server is never the limit; the load
   tool gets the other core. Per repeat, interleaved (order rotated): wrk's closed-loop maximum, Locust's
   (FastHttpUser, one process, no wait), and ours: the highest constant rate whose step has p99 send lag < 1 ms
   (and, separately, < 5 ms) with nothing unsent and no errors, searched by doubling then bisection to 5 %, each step
   in a fresh process (a failing step runs twice: one stall by another tenant does not fail a rate), with each event
   loop (--event-loops: asyncio and uvloop). Medians, spread (min-max) and the ratios against the goals (>= 0.5 x wrk,
   >= 8 x Locust).
2. Scaling: the same search (< 5 ms) with 1 and 2 worker processes on every core (HAProxy keeps its core, so on a
   2-core host the second worker shares it), CPU time per request, and the figure expected on a host with C cores.
3. Fidelity: one step at a rate both hold against the synthetic server (exponential service times) with every
   request recorded: the merged histogram's p50/p95/p99 against the exact percentiles of the recorded latencies.

All traffic goes to 127.0.0.1. wrk comes from Debian (apt-get install -y wrk); Locust is installed on first use into
.build/bench-venv. A missing tool is reported, never replaced by a figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _loadbench as bench

CORES = sorted(os.sched_getaffinity(0))
SERVER_CORE = CORES[-1]
LOAD_CORE = CORES[0]
LAG_LIMITS_MS = (1.0, 5.0)
SCALING_LAG_MS = 5.0
GOALS = {"wrk": 0.5, "locust": 8.0}  # ours / theirs, per core, medians
RESOLUTION = 1.0 / 256  # LatencyHistogram.SUB: the merged percentiles' relative resolution
ROUNDING_MS = 0.002  # the step rounds percentiles to 1 us and the recorded latencies to 1 us


def passes(row: dict, limit_ms: float) -> bool:
    return not row["unsent"] and not row["errors"] and row["lag_p99_ms"] is not None and row["lag_p99_ms"] < limit_ms


def search(trial, limits: tuple, start: float, max_rate: float, min_rate: float = 100.0) -> dict:
    """The highest rate passing each lag limit: doubling up from ``start`` (halving down when it fails), then bisection.

    ``trial(rate)`` runs one step; a step that fails the strictest limit runs once more and the better run counts
    (another tenant's burst can stall one step of a shared machine). The first verdict at a rate stands; a bracket is
    [highest pass, lowest fail above it], bisected (geometric middle) until the fail is within 5 % of the pass.
    Returns {limit: rate or None, "capped": limits still passing at ``max_rate``, "steps": rows}.
    """
    good: dict = dict.fromkeys(limits)
    bad: dict = dict.fromkeys(limits)
    rows = []
    loosest, strictest = max(limits), min(limits)

    def run(rate: float) -> dict:
        row = trial(rate)
        rows.append(row)
        if not passes(row, strictest):
            rows.append(trial(rate))
            row = max(rows[-2:], key=lambda r: sum(passes(r, limit) for limit in limits))
        for limit in limits:
            if passes(row, limit):
                if bad[limit] is None or rate < bad[limit]:
                    good[limit] = max(good[limit] or 0.0, rate)
            elif good[limit] is None or rate > good[limit]:
                bad[limit] = min(bad[limit] or float("inf"), rate)
        return row

    rate = start
    for _rung in range(12):  # doubling, until the loosest limit fails
        if rate > max_rate or not passes(run(rate), loosest):
            break
        rate *= 2
    rate = start / 2
    for _rung in range(5):  # halving, until the strictest limit passes (a busy shared core may hold it at no rate)
        if good[strictest] is not None or rate < min_rate:
            break
        run(rate)
        rate /= 2
    for limit in limits:
        for _step in range(8):  # bisection: 8 halvings of log(bad/good) reach 5 % from a factor of 2**12
            if good[limit] is None or bad[limit] is None or bad[limit] / good[limit] <= 1.05:
                break
            run(round((good[limit] * bad[limit]) ** 0.5))
    found = {limit: good[limit] for limit in limits}
    found["capped"] = [limit for limit in limits if good[limit] is not None and bad[limit] is None]
    found["steps"] = rows
    return found


def generator_trial(url: str, args: argparse.Namespace, workers: int, core: int | None, event_loop: str = "asyncio"):
    def trial(rate: float) -> dict:
        row = bench.run_step(url, rate, args.warmup, args.seconds, workers, core, event_loop=event_loop)
        print(
            "    ours x%d %-7s %8.0f RPS: send lag p99 %8.3f ms, %5.1f us CPU/request%s%s"
            % (
                workers,
                event_loop,
                rate,
                row["lag_p99_ms"] if row["lag_p99_ms"] is not None else -1,
                row["cpu_us_per_request"],
                "  unsent %d" % row["unsent"] if row["unsent"] else "",
                "  errors %s" % row["errors"] if row["errors"] else "",
            ),
            flush=True,
        )
        return row

    return trial


def rate_text(rate: float | None) -> str:
    return "none" if rate is None else "%.0f" % rate


def median(values: list) -> float | None:
    """The median of the repeats that have a figure (None: that repeat had none)."""
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def spread(values: list, digits: int = 0) -> str:
    """Median, min and max of the repeats' figures (None: that repeat had none)."""
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    low, mid, high = ("%.*f" % (digits, v) for v in (min(values), median(values), max(values)))
    return "median %s (min %s, max %s; n=%d)" % (mid, low, high, len(values))


def per_core(url: str, args: argparse.Namespace) -> dict:
    """Interleaved repeats of wrk, Locust and our search, each on LOAD_CORE; the rates of every repeat."""
    ours = {"asyncio": "ours", "uvloop": "ours-uvloop"}
    tools = ["wrk", "locust", *(ours[name] for name in args.event_loops)]
    figures: dict = {"unavailable": {}, "capped": []}
    for tool in tools:
        figures.update(
            {tool: []} if not tool.startswith("ours") else {"%s_%gms" % (tool, lim): [] for lim in LAG_LIMITS_MS}
        )
    starts = dict.fromkeys(tools, args.start)
    for repeat in range(args.repeats):
        order = tools[repeat % len(tools) :] + tools[: repeat % len(tools)]
        print(
            "  repeat %d/%d (%s), load average %.2f" % (repeat + 1, args.repeats, ", ".join(order), os.getloadavg()[0])
        )
        for tool in order:
            try:
                if tool == "wrk":
                    figures["wrk"].append(bench.run_wrk(url, args.seconds, args.wrk_connections, LOAD_CORE))
                    print("    wrk (1 thread, %d connections): %.0f RPS" % (args.wrk_connections, figures["wrk"][-1]))
                elif tool == "locust":
                    figures["locust"].append(bench.run_locust(url, args.seconds, args.locust_users, LOAD_CORE))
                    print("    locust (FastHttpUser, %d users): %.0f RPS" % (args.locust_users, figures["locust"][-1]))
                else:
                    loop = "uvloop" if tool.endswith("uvloop") else "asyncio"
                    trial = generator_trial(url, args, 1, LOAD_CORE, loop)
                    found = search(trial, LAG_LIMITS_MS, starts[tool], args.max_rate)
                    for limit in LAG_LIMITS_MS:
                        figures["%s_%gms" % (tool, limit)].append(found[limit] or 0.0)  # 0: no rate tried held it
                    figures["capped"] += found["capped"]
                    print(
                        "    %s: %s"
                        % (tool, ", ".join("< %g ms: %s RPS" % (lim, rate_text(found[lim])) for lim in LAG_LIMITS_MS))
                    )
                    # later repeats start near the (steadier) 5 ms figure, not at --start: fewer doubling steps
                    starts[tool] = 0.7 * (found[5.0] or args.start / 0.7)
            except bench.Unavailable as exc:
                figures["unavailable"][tool] = str(exc)
                for key in figures:
                    if key.startswith(tool):
                        figures[key].append(None)  # one entry per repeat: the ratios pair repeats
                print("    %s: NOT AVAILABLE: %s" % (tool, exc))
            sys.stdout.flush()
    return figures


def scaling(url: str, args: argparse.Namespace) -> dict:
    """Our highest rate at p99 send lag < 5 ms with 1 and 2 worker processes, unpinned, interleaved repeats; the CPU
    time per request at that rate."""
    out = {workers: {"rate": [], "cpu_us_per_request": [], "capped": [], "unavailable": None} for workers in (1, 2)}
    for repeat in range(args.scaling_repeats):
        for workers in (1, 2) if repeat % 2 == 0 else (2, 1):
            row = out[workers]
            start = 0.7 * (median(row["rate"]) or args.start / 0.7)
            try:
                found = search(generator_trial(url, args, workers, None), (SCALING_LAG_MS,), start, args.max_rate)
            except bench.Unavailable as exc:
                row["unavailable"] = str(exc)
                row["rate"].append(None)
                row["cpu_us_per_request"].append(None)
                print("    ours x%d: NOT AVAILABLE: %s" % (workers, exc))
                continue
            best = found[SCALING_LAG_MS]
            at_best = [r["cpu_us_per_request"] for r in found["steps"] if r["rate"] == best]
            row["rate"].append(best or 0.0)  # 0: no rate tried held it
            row["cpu_us_per_request"].append(at_best[0] if at_best else None)
            row["capped"] += found["capped"]
            print("    ours x%d: < %g ms: %s RPS" % (workers, SCALING_LAG_MS, rate_text(best)), flush=True)
    return out


def fidelity(args: argparse.Namespace) -> dict:
    """One step at ``--fidelity-rate`` against the synthetic server, recorded, with 1 and with 2 workers."""
    out = {}
    with bench.CapacityServer(workers=128, service="exponential", mean_ms=5.0, max_seconds=600) as server:
        for workers in (1, 2):
            row = bench.run_step(
                server.url, args.fidelity_rate, args.warmup, args.fidelity_seconds, workers, None, True
            )
            checks = {}
            for name, exact in row["exact_ms"].items():
                merged = row["latency_ms"][name]
                checks[name] = abs(merged - exact) <= exact * RESOLUTION + ROUNDING_MS
            row["agree"] = all(checks.values()) and row["recorded"] == row["histogram_count"]
            out[workers] = row
            print(
                "    x%d at %g RPS: %d recorded, histogram count %d, send lag p99 %.3f ms%s%s"
                % (
                    workers,
                    args.fidelity_rate,
                    row["recorded"],
                    row["histogram_count"],
                    row["lag_p99_ms"],
                    "  unsent %d" % row["unsent"] if row["unsent"] else "",
                    "  errors %s" % row["errors"] if row["errors"] else "",
                )
            )
    return out


def ratio_lines(figures: dict) -> list:
    """Ours / wrk and ours / Locust per event loop and lag limit: ratio of the medians, the per-repeat range, the
    goal's verdict."""
    lines = []
    for name in sorted({key.rsplit("_", 1)[0] for key in figures if key.startswith("ours")}):
        for limit in LAG_LIMITS_MS:
            ours = figures["%s_%gms" % (name, limit)]
            for tool, goal in GOALS.items():
                paired = [o / t for o, t in zip(ours, figures[tool], strict=True) if o is not None and t]
                if not paired:
                    missing = figures["unavailable"].get(tool) or figures["unavailable"].get(name) or "no figure"
                    lines.append("%s(<%g ms)/%s: n/a (%s)" % (name, limit, tool, missing))
                    continue
                ratio = median(ours) / median(figures[tool])
                lines.append(
                    "%s(<%g ms)/%-6s = %5.2f (medians; per-repeat %.2f-%.2f), goal >= %g: %s"
                    % (name, limit, tool, ratio, min(paired), max(paired), goal, "MET" if ratio >= goal else "NOT MET")
                )
    return lines


def summary(args: argparse.Namespace, core: dict, scale: dict, fid: dict) -> list:
    lines = [
        "cores %s; per core: HAProxy (1 thread) on core %d, load tool on core %d; %d repeats, %g s each"
        % (CORES, SERVER_CORE, LOAD_CORE, args.repeats, args.seconds),
        "wrk (-t1 -c%d, closed loop):          %s" % (args.wrk_connections, spread(core["wrk"])),
        "locust %s (FastHttpUser, %d users): %s" % (bench.LOCUST_VERSION, args.locust_users, spread(core["locust"])),
    ]
    for name in sorted({key.rsplit("_", 1)[0] for key in core if key.startswith("ours")}):
        for limit in LAG_LIMITS_MS:
            lines.append(
                "%-11s (open loop, p99 send lag < %g ms):  %s" % (name, limit, spread(core["%s_%gms" % (name, limit)]))
            )
    if core["capped"]:
        lines.append("  (some searches still passed at --max-rate %g: raise it)" % args.max_rate)
    lines += ratio_lines(core)
    lines.append(
        "scaling (no pinning, HAProxy on core %d, p99 send lag < %g ms, %d interleaved repeats):"
        % (SERVER_CORE, SCALING_LAG_MS, args.scaling_repeats)
    )
    for workers, row in scale.items():
        lines.append(
            "  %d worker(s): %s RPS; CPU/request (all generator processes, at that rate) %s us%s"
            % (
                workers,
                spread(row["rate"]),
                spread(row["cpu_us_per_request"], 1),
                "  (capped)" if row["capped"] else "  (%s)" % row["unavailable"] if row["unavailable"] else "",
            )
        )
    per_worker, two = median(scale[1]["rate"]), median(scale[2]["rate"])
    if per_worker:
        lines.append(
            "  expected on a host with C cores, the server elsewhere: %.0f x (C-1) RPS, assuming one worker per core"
            " with one core left to the system, each holding the 1-worker median (workers share nothing during a"
            " step); C=4: %.0f, C=8: %.0f, C=16: %.0f" % (per_worker, 3 * per_worker, 7 * per_worker, 15 * per_worker)
        )
    if per_worker and two:
        lines.append(
            "  measured here (HAProxy shares a core with a worker), 2 workers / 1 worker: %.2f" % (two / per_worker)
        )
    if not fid:
        lines.append("fidelity: n/a (the synthetic server or a step failed, see above)")
        return lines
    lines.append(
        "fidelity at %g RPS, exponential service (mean 5 ms), ms, merged histogram / exact (tolerance 1/256 relative"
        " + %g ms rounding):" % (args.fidelity_rate, ROUNDING_MS)
    )
    names = list(fid[1]["exact_ms"])
    for workers, row in fid.items():
        pairs = ", ".join("%s %.3f/%.3f" % (n, row["latency_ms"][n], row["exact_ms"][n]) for n in names)
        lines.append(
            "  x%d: %s; %d requests; %s" % (workers, pairs, row["recorded"], "AGREE" if row["agree"] else "DISAGREE")
        )
    lines.append(
        "  x1 vs x2 (separate runs: sampling noise applies): "
        + ", ".join("%s %.3f vs %.3f" % (n, fid[1]["latency_ms"][n], fid[2]["latency_ms"][n]) for n in names)
    )
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="wrk/Locust duration and our hold per step")
    ap.add_argument("--warmup", type=float, default=0.5, help="our unmeasured warm-up per step")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved per-core repeats")
    ap.add_argument("--start", type=float, default=4000.0, help="first rate of the search")
    ap.add_argument("--max-rate", type=float, default=400000.0)
    ap.add_argument("--wrk-connections", type=int, default=64)
    ap.add_argument("--locust-users", type=int, default=32)
    ap.add_argument("--scaling-repeats", type=int, default=2, help="interleaved 1- and 2-worker searches")
    ap.add_argument("--fidelity-rate", type=float, default=2000.0)
    ap.add_argument("--fidelity-seconds", type=float, default=4.0)
    ap.add_argument(
        "--event-loops",
        type=lambda text: [name for name in text.split(",") if name],
        default=["asyncio", "uvloop"],
        help="our generator's event loops to measure per core, comma-separated (default asyncio,uvloop)",
    )
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    unknown = set(args.event_loops) - {"asyncio", "uvloop"}
    if unknown:
        ap.error("unknown event loops %s: choose from asyncio, uvloop" % ", ".join(sorted(unknown)))
    if len(CORES) < 2:
        print("this benchmark needs 2 cores (server and load tool apart); have %s" % CORES)
        return 2
    print("cores %s, load average %s" % (CORES, os.getloadavg()), flush=True)
    try:
        with bench.HAProxy(SERVER_CORE) as haproxy:
            print("per core (HAProxy on core %d at %s):" % (SERVER_CORE, haproxy.url), flush=True)
            core = per_core(haproxy.url, args)
            print("scaling:", flush=True)
            scale = scaling(haproxy.url, args)
    except bench.Unavailable as exc:
        print("the server is NOT AVAILABLE, no figures: %s" % exc)
        return 1
    print("fidelity:", flush=True)
    try:
        fid = fidelity(args)
    except bench.Unavailable as exc:
        fid = {}
        print("    NOT AVAILABLE: %s" % exc)
    lines = summary(args, core, scale, fid)
    print("\n===== summary (load average now %.2f) =====" % os.getloadavg()[0])
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({"per_core": core, "scaling": scale, "fidelity": fid}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
