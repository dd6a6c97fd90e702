# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Fleet plan reports (controller only): what ``gpu.mig.plan_services`` decided, as Markdown, PNG and CSV, and the
capacity tests that check it.

* ``plan_rows``: the plan's capacity-table rows, one per service: GPU model, profile, replicas, rate per replica
  (measured or estimated), capacity, target, headroom and "revisit slicing at +X % traffic" (the traffic growth
  that uses the headroom up).
* ``gpu_grids``: each GPU of the fleet as its memory-slice grid with the slots placed (what the PNG draws).
* ``capacity_tests``: the plan's "measure first" tests, then one per estimated service on its first planned replica:
  an estimate holds once measured where it runs.
* ``render_markdown``, ``render`` (Markdown, CSV and PNG) and a CLI::

    python -m ansible_collections.gpu.mig.plugins.plugin_utils.plan_report plan.json --out plan/ [--name plan]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Mapping

from ansible_collections.gpu.mig.plugins.module_utils._capacity import analysis as _analysis
from ansible_collections.gpu.mig.plugins.module_utils._capacity.analysis import Rule
from ansible_collections.gpu.mig.plugins.plugin_utils import service_planner as _planner

PROG = "python -m ansible_collections.gpu.mig.plugins.plugin_utils.plan_report"
PLAN_COLUMNS = [
    "service",
    "class",
    "verdict",
    "gpu",
    "profile",
    "replicas",
    "sla",
    "rate_per_replica_rps",
    "kind",
    "capacity_rps",
    "target_rps",
    "demand_rps",
    "headroom_pct",
    "revisit",
]
VERDICTS = ("placed", "estimate", "measure first", "dedicated GPU", "no MIG here", "not placed")
# Box kinds of a GPU grid and their colours: a slot's service class, an instance the plan keeps with no service of
# its own (busy), a GPU given whole to one service, a GPU without MIG, free memory slices.
COLOURS = {
    "fast": "tab:blue",
    "background": "tab:orange",
    "kept": "0.55",
    "whole": "tab:purple",
    "no MIG": "0.8",
    "free": "white",
}


class PlanReportError(ValueError):
    """The plan cannot be reported; ``problems`` lists every problem, each naming the field."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


# ---------------------------------------------------------------------------------------------------------------------
# The plan's shape: one table per record kind (open records: only the keys the report reads are checked)

_COUNT = Rule("int", 0)


def _gpu_counts(name: str, value: Mapping) -> list[str]:
    return [p for model, n in value.items() for p in Rule("int", 1).problems("%s.%s" % (name, model), n)]


PLAN_RULES = {
    "hosts": Rule("dict", words="a mapping of host names to their plans"),
    "services": Rule("dict", words="a mapping of service names to their reports"),
    "summary": Rule("dict", words="the plan's summary mapping"),
    "capacity_tests": Rule("list"),
    "warnings": Rule("list", elements=Rule("str")),
}
HOST_RULES = {
    "gpu_mig_layout": Rule("list"),
    "inference_service_specs": Rule("list", elements=Rule("dict")),
    "gpus": Rule("list", elements=Rule("dict")),
    "changes": Rule("dict"),
}
GPU_RULES = {
    "index": _COUNT,
    "name": Rule("str", non_empty=True),
    "mig": Rule("bool"),
    "used": Rule("bool"),
    "dedicated_to": Rule("str"),
    "slots": Rule("list", elements=Rule("dict")),
    "free_compute_slices": _COUNT,
    "free_memory_slices": _COUNT,
    "note": Rule("str"),
}
SLOT_RULES = {
    "slot": Rule("str"),
    "service": Rule("str"),
    "class": Rule("str", choices=_planner.CLASSES),
    "profile": Rule("str", non_empty=True),
    "compute_slices": Rule("int", 1, 64),
    "memory_slices": Rule("int", 1, 64),
    "start": Rule("int", 0, 63),
}
SERVICE_RULES = {
    "verdict": Rule("str", choices=VERDICTS),
    "class": Rule("str", choices=_planner.CLASSES),
    "sla": Rule("raw", check=_analysis.sla_problems, words="the service's SLA"),
    "target_rps": Rule("float", 0, low_open=True),
    "demand_rps": Rule("float", 0, low_open=True),
    "concurrency": Rule("int", 1),
    "gpu_model": Rule("str"),
    "profile": Rule("str"),
    "replicas": _COUNT,
    "rate_per_replica_rps": Rule("float", 0),
    "capacity_rps": Rule("float", 0),
    "headroom_pct": Rule("float"),
    "capacity": Rule("dict", options={"kind": Rule("str"), "basis": Rule("str")}),
    "reasons": Rule("list", elements=Rule("str")),
    "placements": Rule("list", elements=Rule("dict")),
}
SERVICE_REQUIRED = ("verdict", "class", "sla", "target_rps", "demand_rps", "replicas", "capacity")
PLACEMENT_RULES = {"host": Rule("str", non_empty=True), "slot": Rule("str", non_empty=True)}  # slot: MIG only
TEST_RULES = {"service": Rule("str", non_empty=True), "sla": SERVICE_RULES["sla"]}
SUMMARY_RULES = {
    "gpus_available": _COUNT,
    "gpus_used": _COUNT,
    "gpus_needed": _COUNT,
    "gpus_short": Rule("dict", check=_gpu_counts, words="a mapping of GPU models to how many more are needed"),
    "lower_bound_gpus": _COUNT,
    "spare": Rule("dict", options={"gpus": _COUNT, "compute_slices": _COUNT, "memory_slices": _COUNT}),
    "moved_slots": _COUNT,
    "options_ranked_by": Rule("str"),
}


def _records(raw: Any, rules: Mapping[str, Rule], where: str, problems: list[str], required: tuple = ()) -> None:
    problems.extend(_planner._open_problems(raw, rules, where, required))


def check_plan(plan: Any) -> None:
    """Raise PlanReportError listing every problem of ``plan`` (a ``gpu.mig.plan_services`` result)."""
    problems: list[str] = []
    _records(plan, PLAN_RULES, "plan", problems, tuple(PLAN_RULES))
    if problems:
        raise PlanReportError(problems)
    _records(plan["summary"], SUMMARY_RULES, "plan.summary", problems, tuple(SUMMARY_RULES))
    for host, data in plan["hosts"].items():
        where = "plan.hosts.%s" % host
        _records(data, HOST_RULES, where, problems, tuple(HOST_RULES))
        gpus = data.get("gpus") if isinstance(data, Mapping) and isinstance(data.get("gpus"), list) else []
        for i, gpu in enumerate(gpus):
            required = ("index", "name", "mig", "used", "slots", "free_compute_slices", "free_memory_slices")
            _records(gpu, GPU_RULES, "%s.gpus[%d]" % (where, i), problems, required)
            slots = gpu.get("slots") if isinstance(gpu, Mapping) and isinstance(gpu.get("slots"), list) else []
            for k, slot in enumerate(slots):
                required = ("profile", "compute_slices", "memory_slices", "start")
                _records(slot, SLOT_RULES, "%s.gpus[%d].slots[%d]" % (where, i, k), problems, required)
    for i, test in enumerate(plan["capacity_tests"]):
        _records(test, TEST_RULES, "plan.capacity_tests[%d]" % i, problems, tuple(TEST_RULES))
    for name, report in plan["services"].items():
        where = "plan.services.%s" % name
        _records(report, SERVICE_RULES, where, problems, SERVICE_REQUIRED)
        places = report.get("placements") if isinstance(report, Mapping) else None
        for i, place in enumerate(places if isinstance(places, list) else []):
            _records(place, PLACEMENT_RULES, "%s.placements[%d]" % (where, i), problems, ("host",))
    if problems:
        raise PlanReportError(problems)


# ---------------------------------------------------------------------------------------------------------------------
# Rows, grids and tests


def sla_text(spec: Any) -> str:
    """An SLA as given (string or mapping) in the string form: ``p95<300ms, errors<=0.1%``."""
    sla = _analysis.parse_sla(spec)
    terms = ["%s<%gms" % (_analysis.pct_name(p), v) for p, v in sorted(sla.percentiles.items())]
    if sla.max_error_rate:
        terms.append("errors<=%g%%" % (sla.max_error_rate * 100))
    return ", ".join(terms)


def revisit(report: Mapping) -> str:
    """When the slicing of a service should be looked at again."""
    if report["verdict"] == "measure first":
        return "measure first"
    if report.get("headroom_pct") is None:
        return "no capacity known"
    text = "revisit slicing at %+g %% traffic" % report["headroom_pct"]
    return text + " (estimate)" if report["verdict"] == "estimate" else text


def plan_rows(plan: Mapping) -> list[dict]:
    """The plan's capacity-table rows (see :data:`PLAN_COLUMNS`), one per service in name order."""
    check_plan(plan)
    return _rows(plan)


def _rows(plan: Mapping) -> list[dict]:
    rows = []
    for name, report in sorted(plan["services"].items()):
        rows.append(
            {
                "service": name,
                "class": report["class"],
                "verdict": report["verdict"],
                "gpu": report.get("gpu_model") or "",
                "profile": report.get("profile") or "",
                "replicas": report["replicas"],
                "sla": sla_text(report["sla"]),
                "rate_per_replica_rps": report.get("rate_per_replica_rps"),
                "kind": report["capacity"].get("kind") or "",
                "capacity_rps": report.get("capacity_rps"),
                "target_rps": report["target_rps"],
                "demand_rps": report["demand_rps"],
                "headroom_pct": report.get("headroom_pct"),
                "revisit": revisit(report),
                "basis": report["capacity"].get("basis") or "",
            }
        )
    return rows


def _grid(row: Mapping) -> tuple[int, list[dict]]:
    """One GPU row of the plan as (memory slices, boxes: start, size, kind, label), free runs included."""
    if not row["mig"]:
        owner = row.get("dedicated_to")
        return 1, [{"start": 0, "size": 1, "kind": "whole" if owner else "no MIG", "label": owner or "no MIG"}]
    if row.get("dedicated_to"):
        return 1, [{"start": 0, "size": 1, "kind": "whole", "label": "%s (MIG off)" % row["dedicated_to"]}]
    boxes = [
        {
            "start": s["start"],
            "size": s["memory_slices"],
            "kind": s.get("class") or "kept",
            "label": "%s\n%s" % (s.get("slot") or "busy", s["profile"]),
        }
        for s in sorted(row["slots"], key=lambda s: s["start"])
    ]
    total = sum(b["size"] for b in boxes) + row["free_memory_slices"]
    taken = {k for b in boxes for k in range(b["start"], b["start"] + b["size"])}
    free = [k for k in range(total) if k not in taken]
    for k in free:
        if boxes and boxes[-1]["kind"] == "free" and boxes[-1]["start"] + boxes[-1]["size"] == k:
            boxes[-1]["size"] += 1
        else:
            boxes.append({"start": k, "size": 1, "kind": "free", "label": ""})
    return total, sorted(boxes, key=lambda b: b["start"])


def gpu_grids(plan: Mapping) -> list[dict]:
    """Every GPU of the fleet, host by host: {host, index, name, slices (memory slices), boxes, note}."""
    check_plan(plan)
    return _grids(plan)


def _grids(plan: Mapping) -> list[dict]:
    grids = []
    for host, data in sorted(plan["hosts"].items()):
        for row in data["gpus"]:
            slices, boxes = _grid(row)
            grids.append(
                {"host": host, "index": row["index"], "name": row["name"], "slices": slices, "boxes": boxes,
                 "note": row.get("note")}
            )  # fmt: skip
    return grids


def _url(plan: Mapping, place: Mapping) -> str | None:
    """The public URL of the replica in ``place``: its host and the port of its inference_service spec."""
    specs = plan["hosts"].get(place["host"], {}).get("inference_service_specs") or []
    port = next((s.get("port") for s in specs if s.get("slot") == place.get("slot")), None)
    return "http://%s:%d" % (place["host"], port) if isinstance(port, int) and not isinstance(port, bool) else None


def capacity_tests(plan: Mapping) -> list[dict]:
    """The plan's "measure first" tests, then one test per estimated service on its first placed replica: items of
    the capacity role's ``capacity_tests``."""
    check_plan(plan)
    return _tests(plan)


def _tests(plan: Mapping) -> list[dict]:
    tests = list(plan["capacity_tests"])
    for name, report in sorted(plan["services"].items()):
        if report["verdict"] != "estimate" or not report.get("placements"):
            continue
        place = report["placements"][0]
        per_replica = report["demand_rps"] / max(report["replicas"], 1)
        test = {
            "service": name,
            "profile": report["profile"],
            "gpu": report["gpu_model"],
            "sla": report["sla"],
            "target_rps": round(per_replica, 3),
            "start_rps": round(max(per_replica / 4, 0.1), 3),
            "concurrency": report.get("concurrency") or 1,
            "host": place["host"],
        }
        url = _url(plan, place)
        if url:
            test["url"] = url
        tests.append(test)
    return tests


# ---------------------------------------------------------------------------------------------------------------------
# Markdown


def _cell(value: Any) -> str:
    if value is None:
        return ""
    text = "%g" % value if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(_cell(v) for v in row) + " |" for row in rows
    ]


def _sentence(plan: Mapping) -> str:
    s = plan["summary"]
    short = ", ".join("%d more %s" % (n, model) for model, n in sorted(s["gpus_short"].items()))
    return "%d services on %d of %d GPUs (%s; lower bound %d), spare: %d GPUs, %d compute and %d memory slices." % (
        len(plan["services"]),
        s["gpus_used"],
        s["gpus_available"],
        "the fleet needs %s" % short if short else "%d needed" % s["gpus_needed"],
        s["lower_bound_gpus"],
        s["spare"]["gpus"],
        s["spare"]["compute_slices"],
        s["spare"]["memory_slices"],
    )


def _slots_text(row: Mapping) -> str:
    if row.get("dedicated_to"):
        return "whole GPU: %s" % row["dedicated_to"]
    return ", ".join(
        "%s %s @%d" % (s.get("slot") or "busy", s["profile"], s["start"])
        for s in sorted(row["slots"], key=lambda s: s["start"])
    )


def render_markdown(plan: Mapping, images: Mapping[str, str] | None = None) -> str:
    """The plan as Markdown; ``images`` (``gpus``, ``services``: file names) adds the PNGs next to it."""
    check_plan(plan)
    return _markdown(plan, images)


def _markdown(plan: Mapping, images: Mapping[str, str] | None) -> str:
    s = plan["summary"]
    rows = _rows(plan)
    lines = ["# MIG plan", "", "> " + _sentence(plan), ""]
    lines += _table(
        ["GPUs available", "used", "needed", "short", "lower bound", "spare GPUs", "spare compute slices",
         "spare memory slices", "moved slots", "options ranked by"],
        [[s["gpus_available"], s["gpus_used"], s["gpus_needed"],
          ", ".join("%s: %d" % kv for kv in sorted(s["gpus_short"].items())) or "0", s["lower_bound_gpus"],
          s["spare"]["gpus"], s["spare"]["compute_slices"], s["spare"]["memory_slices"], s["moved_slots"],
          s["options_ranked_by"]]],
    )  # fmt: skip
    lines += ["", "## Services: target vs capacity", ""]
    if images:
        lines += ["![target vs capacity per service](%s)" % images["services"], ""]
    lines += _table(PLAN_COLUMNS, [[r[c] for c in PLAN_COLUMNS] for r in rows])
    for row in rows:
        reasons = plan["services"][row["service"]].get("reasons") or []
        notes = ([row["basis"]] if row["basis"] else []) + reasons
        if notes:
            lines += ["", "**%s** (%s):" % (row["service"], row["verdict"])] + ["- %s" % n for n in notes]
    lines += ["", "## GPUs", ""]
    if images:
        lines += ["![each GPU's slices and the services placed](%s)" % images["gpus"], ""]
    table = []
    for host, data in sorted(plan["hosts"].items()):
        for row in data["gpus"]:
            free = "%d / %d" % (row["free_compute_slices"], row["free_memory_slices"]) if row["mig"] else ""
            table.append([host, row["index"], row["name"], _slots_text(row), free, row.get("note") or ""])
    lines += _table(["host", "GPU", "model", "slots (name profile @start)", "free compute / memory", "note"], table)
    lines += ["", "## Changes per host", ""]
    changes = []
    for host, data in sorted(plan["hosts"].items()):
        ch = data["changes"]
        destroy = ["GPU %s %s @%s%s" % (d.get("gpu"), d.get("profile"), d.get("start"),
                                        " busy: %s" % d["busy_pids"] if d.get("busy_pids") else "")
                   for d in ch.get("destroy") or []]  # fmt: skip
        changes.append([host, "yes" if ch.get("changed") else "no", ", ".join(ch.get("keep") or []),
                        ", ".join(ch.get("create") or []), ", ".join(destroy), ", ".join(ch.get("moved") or [])])  # fmt: skip
    lines += _table(["host", "changed", "keep", "create", "destroy", "moved"], changes)
    tests = _tests(plan)
    if tests:
        lines += ["", "## Capacity tests to run", ""]
        lines += _table(
            ["service", "host", "GPU", "profile", "SLA", "target RPS per replica", "URL"],
            [[t["service"], t.get("host"), t.get("gpu"), t.get("profile"), sla_text(t["sla"]), t.get("target_rps"),
              t.get("url") or "(set url)"] for t in tests],
        )  # fmt: skip
    if plan["warnings"]:
        lines += ["", "## Warnings", ""] + ["- %s" % w for w in plan["warnings"]]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------------
# PNG


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_gpus(plan: Mapping, path: str) -> str:
    """Each GPU as a bar of its memory slices, each slot a box at its placement, coloured by class."""
    plt = _plt()
    from matplotlib.patches import Patch

    grids = _grids(plan)
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.6 * len(grids)))
    for y, grid in enumerate(reversed(grids)):
        scale = 8.0 / grid["slices"]  # every GPU drawn eight units wide: MIG GPUs have 8 memory slices
        for box in grid["boxes"]:
            ax.barh(y, box["size"] * scale, left=box["start"] * scale, height=0.7, color=COLOURS[box["kind"]],
                    edgecolor="black", hatch="//" if box["kind"] == "free" else None, linewidth=0.8)  # fmt: skip
            if box["label"]:
                ax.text((box["start"] + box["size"] / 2) * scale, y, box["label"], ha="center", va="center",
                        fontsize=7, color="white" if box["kind"] in ("fast", "whole", "kept") else "black")  # fmt: skip
    ax.set_yticks(range(len(grids)))
    ax.set_yticklabels(["%s GPU %d\n%s" % (g["host"], g["index"], g["name"]) for g in reversed(grids)], fontsize=7)
    ax.set_xlim(0, 8)
    ax.set_xticks(range(9))
    ax.set_xlabel("memory slices (placement)")
    ax.set_title("MIG plan: " + _sentence(plan), fontsize=8)
    ax.legend(handles=[Patch(facecolor=c, edgecolor="black", label=k) for k, c in COLOURS.items()],
              loc="upper center", bbox_to_anchor=(0.5, -0.5 / max(len(grids), 1) - 0.12), ncol=len(COLOURS),
              fontsize=7)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_services(plan: Mapping, path: str) -> str:
    """Per service, as a share of its target: the target with growth headroom and the planned capacity (hatched: an
    estimate), each labelled in requests per second."""
    plt = _plt()
    from matplotlib.patches import Patch

    rows = _rows(plan)
    fig, ax = plt.subplots(figsize=(8, 1.4 + 0.7 * len(rows)))
    for y, row in enumerate(reversed(rows)):
        demand = 100 * row["demand_rps"] / row["target_rps"]
        ax.barh(y + 0.18, demand, height=0.32, color="0.85", edgecolor="0.4")
        ax.text(demand, y + 0.18, " %.4g RPS with growth" % row["demand_rps"], va="center", fontsize=7)
        if row["capacity_rps"] is None:
            ax.text(0, y - 0.18, " %s" % row["revisit"], va="center", fontsize=7, color="tab:red")
            continue
        capacity = 100 * row["capacity_rps"] / row["target_rps"]
        ax.barh(y - 0.18, capacity, height=0.32, color="tab:green", edgecolor="black",
                hatch="//" if row["kind"] == "estimate" else None)  # fmt: skip
        ax.text(capacity, y - 0.18, " %.4g RPS (%+g %%)" % (row["capacity_rps"], row["headroom_pct"]), va="center",
                fontsize=7)  # fmt: skip
    ax.axvline(100, color="black", lw=1)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(
        ["%s: %g RPS\n%s x %s" % (r["service"], r["target_rps"], r["replicas"], r["profile"] or r["verdict"])
         for r in reversed(rows)],
        fontsize=7,
    )  # fmt: skip
    ax.set_xlim(0, ax.get_xlim()[1] * 1.25)  # room for the labels
    ax.set_xlabel("% of the target rate (line: the target), at the SLA")
    ax.set_title("Target vs planned capacity per service", fontsize=9)
    ax.legend(handles=[Patch(facecolor="0.85", edgecolor="0.4", label="target + growth headroom"),
                       Patch(facecolor="tab:green", edgecolor="black", label="capacity, measured"),
                       Patch(facecolor="tab:green", edgecolor="black", hatch="//", label="capacity, estimate")],
              fontsize=7, loc="lower right")  # fmt: skip
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def image_names(name: str) -> dict[str, str]:
    """The PNG file names ``render`` writes for the base name ``name``."""
    return {"gpus": "%s-gpus.png" % name, "services": "%s-services.png" % name}


def render(plan: Mapping, out_dir: str, name: str = "plan", png: bool = True) -> dict[str, str]:
    """Write ``<name>.md``, ``<name>.csv`` (the plan rows) and, with ``png``, ``<name>-gpus.png`` and
    ``<name>-services.png``; return their paths."""
    check_plan(plan)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    images = None
    if png:
        images = image_names(name)
        files["gpus_png"] = _plot_gpus(plan, str(out / images["gpus"]))
        files["services_png"] = _plot_services(plan, str(out / images["services"]))
    csv = out / ("%s.csv" % name)
    csv.write_text(_analysis.rows_to_csv(_rows(plan), [*PLAN_COLUMNS, "basis"]))
    md = out / ("%s.md" % name)
    md.write_text(_markdown(plan, images))
    return {**files, "csv": str(csv), "markdown": str(md)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description="Render a gpu.mig.plan_services result (JSON).")
    parser.add_argument("plan", help="the plan as JSON (the filter's result, e.g. written by playbooks/plan.yml)")
    parser.add_argument("--out", required=True, help="directory for the report files")
    parser.add_argument("--name", default="plan", help="base name of the files (default: plan)")
    parser.add_argument("--no-png", dest="png", action="store_false", help="Markdown and CSV only (no matplotlib)")
    args = parser.parse_args(argv)
    try:
        plan = json.loads(Path(args.plan).read_text(encoding="utf-8"))
        files = render(plan, args.out, args.name, args.png)
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # PlanReportError and JSON errors are ValueErrors
        print("%s: cannot report %s: %s" % (PROG, args.plan, exc), file=sys.stderr)
        return 2
    except ImportError as exc:
        print("%s: the PNG plots need matplotlib (%s); install it or pass --no-png" % (PROG, exc), file=sys.stderr)
        return 2
    for kind, path in sorted(files.items()):
        print("%s: %s" % (kind, path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
