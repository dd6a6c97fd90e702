# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Controller-side capacity reports: PNG plots (matplotlib) and a Markdown report that embeds them."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ansible_collections.gpu.mig.plugins.module_utils._capacity.analysis import (
    STEP_COLUMNS,
    TABLE_COLUMNS,
    rows_to_csv,
    rows_to_markdown,
    step_rows,
)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _steps(result: dict) -> list:
    return sorted(
        (s for s in result.get("steps") or [] if s.get("kind") in ("step", "baseline")), key=lambda s: s["offered_rps"]
    )


def _colour(step: dict) -> str:
    v = step.get("verdict") or {}
    if v.get("void"):
        return "grey"
    return "tab:green" if v.get("passed") else "tab:red"


def _mark_knee(ax, capacity: dict) -> None:
    if capacity.get("sustained_rps") is not None:
        ax.axvline(
            capacity["sustained_rps"],
            color="tab:green",
            ls="--",
            lw=1,
            label="sustained %g RPS" % capacity["sustained_rps"],
        )
    if capacity.get("knee_rps") is not None:
        ax.axvline(capacity["knee_rps"], color="tab:red", ls=":", lw=1.5, label="knee %g RPS" % capacity["knee_rps"])


def plot_throughput(result: dict, path: str) -> str:
    """Achieved versus offered rate; pass/fail/void colours, the y = x line, knee and saturation marked."""
    plt = _plt()
    steps = _steps(result)
    cap = result.get("capacity") or {}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [s["offered_rps"] for s in steps]
    ax.plot(xs, [s["achieved_rps"] for s in steps], color="0.6", lw=1, zorder=1)
    ax.scatter(xs, [s["achieved_rps"] for s in steps], c=[_colour(s) for s in steps], zorder=2)
    top = max([*xs, 1.0])
    ax.plot([0, top], [0, top], color="0.8", ls="--", lw=1, label="achieved = offered")
    if cap.get("saturation_rps"):
        ax.axhline(cap["saturation_rps"], color="tab:orange", lw=1, label="saturation %g RPS" % cap["saturation_rps"])
    _mark_knee(ax, cap)
    ax.set_xlabel("offered rate (RPS)")
    ax.set_ylabel("achieved rate (RPS)")
    ax.set_title("Throughput: %s" % (result.get("service") or {}).get("service", ""))
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_latency(result: dict, path: str) -> str:
    """p50/p95/p99 versus offered rate (log scale) with the SLA limits and the knee."""
    plt = _plt()
    steps = _steps(result)
    cap = result.get("capacity") or {}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [s["offered_rps"] for s in steps]
    for name, style in (("p50", "-"), ("p95", "-"), ("p99", "--")):
        ys = [(s.get("latency_ms") or {}).get(name) for s in steps]
        pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", ms=3, label=name)
    for name, limit in sorted(((result.get("sla") or {}).get("percentiles_ms") or {}).items()):
        ax.axhline(limit, color="tab:red", lw=0.8, alpha=0.6)
        ax.text(xs[0] if xs else 0, limit, " SLA %s %g ms" % (name, limit), va="bottom", fontsize=7, color="tab:red")
    _mark_knee(ax, cap)
    ax.set_yscale("log")
    ax.set_xlabel("offered rate (RPS)")
    ax.set_ylabel("latency from intended send (ms)")
    ax.set_title("Latency percentiles")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_queue(result: dict, path: str) -> str:
    """Queue length over each step's time (client in-flight; server queue dashed where scraped), knee step bold."""
    plt = _plt()
    steps = _steps(result)
    cap = result.get("capacity") or {}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    cmap = plt.get_cmap("viridis")
    n = max(1, len(steps) - 1)
    for i, s in enumerate(steps):
        colour = cmap(i / n)
        knee = cap.get("knee_rps") is not None and s["offered_rps"] == cap["knee_rps"]
        pts = s.get("inflight_samples") or []
        if pts:
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                color=colour,
                lw=2.2 if knee else 0.9,
                label="%g RPS%s" % (s["offered_rps"], " (knee)" if knee else ""),
            )
        srv = (s.get("server") or {}).get("queue_samples") or []
        if srv:
            ax.plot([p[0] for p in srv], [p[1] for p in srv], color=colour, ls="--", lw=1.6 if knee else 0.8)
    ax.axvline(0, color="0.5", lw=0.8)
    ax.text(0, ax.get_ylim()[1] * 0.95, " hold starts", fontsize=7, color="0.4", va="top")
    ax.set_xlabel("seconds from the start of the hold (warm-up < 0)")
    ax.set_ylabel("requests in flight (solid) / server queue (dashed)")
    ax.set_title("Queue length per step")
    if steps:
        ax.legend(fontsize=7, ncol=2, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "%g" % round(v, 2)
    return str(v)


def render_report(result: dict, out_dir: str, name: str = "capacity") -> dict:
    """Write ``<name>-throughput.png``, ``-latency.png``, ``-queue.png``, ``<name>.md``, ``<name>.steps.csv``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not result.get("steps"):
        raise ValueError("the result has no steps (a check-mode run?): nothing to report")
    files = {
        "throughput": plot_throughput(result, str(out / ("%s-throughput.png" % name))),
        "latency": plot_latency(result, str(out / ("%s-latency.png" % name))),
        "queue": plot_queue(result, str(out / ("%s-queue.png" % name))),
    }
    steps_csv = out / ("%s.steps.csv" % name)
    steps_csv.write_text(rows_to_csv(step_rows(result["steps"]), STEP_COLUMNS))
    files["steps_csv"] = str(steps_csv)
    svc = result.get("service") or {}
    cap = result.get("capacity") or {}
    pred = result.get("prediction") or {}
    lines = [
        "# Capacity: %s" % (svc.get("service") or svc.get("url")),
        "",
        "> %s" % result.get("sla_sentence", ""),
        "",
        "- Endpoint: `%s` (%s), payloads: %s"
        % (svc.get("url"), svc.get("protocol"), ", ".join(svc.get("payloads") or [])),
        "- MIG profile: %s, GPU: %s, batch: %s, limits: %s"
        % (
            svc.get("profile") or "n/a",
            svc.get("gpu") or "n/a",
            _fmt(svc.get("batch")) or "n/a",
            svc.get("limits") or "n/a",
        ),
        "- Plan: %s; started %s, took %s s"
        % ((result.get("plan") or {}).get("description"), result.get("started_at"), result.get("duration_s")),
        "- Capacity: %s" % cap.get("note", ""),
    ]
    if cap.get("knee_reasons"):
        lines.append("- Knee at %g RPS because: %s" % (cap["knee_rps"], "; ".join(cap["knee_reasons"])))
    if cap.get("saturation_rps"):
        lines.append("- Saturation throughput (mean of the saturated steps): %g RPS" % cap["saturation_rps"])
    if pred.get("available"):
        lines.append(
            "- Queueing model (%s, c=%s%s, service %s ms, cv^2 %s, %s): p%s crosses %s ms at **%s RPS**; measured %s RPS (%+.1f%%)."
            % (
                pred.get("model"),
                pred.get("c"),
                " estimated" if pred.get("c_estimated") else "",
                pred.get("service_ms"),
                pred.get("cs2"),
                pred.get("service_source"),
                _fmt(pred.get("percentile")),
                pred.get("limit_ms"),
                pred.get("rate_rps"),
                _fmt(cap.get("sustained_rps")),
                pred.get("error_pct") or 0.0,
            )
        )
    elif pred:
        lines.append("- Queueing model: not available (%s)" % pred.get("warning", "no data"))
    if result.get("warnings"):
        lines += ["", "## Warnings", ""] + ["- %s" % w for w in result["warnings"]]
    lines += [
        "",
        "## Plots",
        "",
        "![achieved vs offered](%s)" % os.path.basename(files["throughput"]),
        "",
        "![latency percentiles vs offered](%s)" % os.path.basename(files["latency"]),
        "",
        "![queue length per step](%s)" % os.path.basename(files["queue"]),
        "",
        "## Steps",
        "",
        "| # | offered | achieved | p50 ms | p95 ms | p99 ms | max ms | lag p99 ms | queue slope /s | errors | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in step_rows(result["steps"]):
        if r["kind"] == "warmup":
            continue
        verdict = (r["verdict"] or "").replace("|", "\\|")
        cells = [
            _fmt(r[k])
            for k in (
                "index",
                "offered_rps",
                "achieved_rps",
                "p50_ms",
                "p95_ms",
                "p99_ms",
                "max_ms",
                "lag_p99_ms",
                "queue_slope",
                "errors",
            )
        ]
        lines.append("| " + " | ".join([*cells, verdict]) + " |")
    if result.get("table_row"):
        lines += ["", "## Capacity table row", "", rows_to_markdown([result["table_row"]], TABLE_COLUMNS)]
    md = out / ("%s.md" % name)
    md.write_text("\n".join(lines) + "\n")
    files["markdown"] = str(md)
    return files


def render_noisy(result: dict, out_dir: str, name: str = "noisy-neighbour") -> dict:
    """A's p95/p99 per phase (before, during x1..x3, after) and the verdict, as PNG and Markdown."""
    plt = _plt()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    phases = result["phases"]
    fig, ax = plt.subplots(figsize=(7, 4))
    labels = [p["phase"] for p in phases]
    ax.bar(
        labels,
        [p["a_p99_ms"] or 0 for p in phases],
        color=["tab:green" if p["a_within_sla"] else "tab:red" for p in phases],
        label="A p99",
    )
    ax.plot(labels, [p["a_p95_ms"] or 0 for p in phases], "ko-", label="A p95")
    for name_, limit in sorted((result.get("sla") or {}).get("percentiles_ms", {}).items()):
        ax.axhline(limit, color="tab:red", lw=0.8, ls="--")
        ax.text(0, limit, " SLA %s" % name_, fontsize=7, va="bottom", color="tab:red")
    ax.set_ylabel("ms")
    ax.set_title("Noisy neighbour: %s while %s steps up" % (result.get("a"), result.get("b")))
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = out / ("%s.png" % name)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    cols = [
        "phase",
        "a_rps",
        "a_achieved_rps",
        "a_p95_ms",
        "a_p99_ms",
        "a_errors",
        "a_within_sla",
        "b_rps",
        "b_achieved_rps",
        "b_p99_ms",
    ]
    md = out / ("%s.md" % name)
    md.write_text(
        "# Noisy neighbour\n\n> %s\n\n![A latency per phase](%s)\n\n%s"
        % (result["sentence"], png.name, rows_to_markdown(phases, cols))
    )
    (out / ("%s.json" % name)).write_text(json.dumps(result, indent=1))
    return {"png": str(png), "markdown": str(md)}


def fleet_table(results: list, out_dir: str, name: str = "fleet-capacity") -> dict:
    """One capacity table from many result files' rows: JSON, CSV and Markdown."""
    rows = [r["table_row"] for r in results if r.get("table_row")]
    if not rows:
        raise ValueError("none of the results has a capacity row (failed or check-mode runs)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows.sort(key=lambda r: (r.get("service") or "", r.get("profile") or "", r.get("host") or ""))
    paths = {"json": out / (name + ".json"), "csv": out / (name + ".csv"), "markdown": out / (name + ".md")}
    sentences = [r.get("sla_sentence") for r in results if r.get("sla_sentence")]
    paths["json"].write_text(
        json.dumps({"schema": "gpu.mig/capacity-fleet/v1", "rows": rows, "sentences": sentences}, indent=1)
    )
    paths["csv"].write_text(rows_to_csv(rows, TABLE_COLUMNS))
    paths["markdown"].write_text(
        "# Fleet capacity\n\n" + rows_to_markdown(rows, TABLE_COLUMNS) + "\n" + "".join("- %s\n" % s for s in sentences)
    )
    return {k: str(v) for k, v in paths.items()}
