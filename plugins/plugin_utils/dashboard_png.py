# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The Grafana dashboard's panels drawn to PNG from a Prometheus' query results, for reports where no Grafana runs.

Reads the dashboard JSON (filter gpu.mig.grafana_dashboard), asks Prometheus' HTTP API ``query_range`` for every
panel's queries and draws one PNG per row with matplotlib, for example:
  export PYTHONPATH=~/.ansible/collections
  python -m ansible_collections.gpu.mig.plugins.plugin_utils.dashboard_png \\
      --prometheus http://127.0.0.1:9090 --dashboard gpu-mig-services.json --out report/ --range 6h
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import sys
import time
import urllib.error
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ansible.module_utils.urls import open_url

from ansible_collections.gpu.mig.plugins.plugin_utils.capacity_report import _plt
from ansible_collections.gpu.mig.plugins.plugin_utils.dashboard import DashboardError

PROG = "python -m ansible_collections.gpu.mig.plugins.plugin_utils.dashboard_png"
COLUMNS = 3
MAX_POINTS = 11_000  # Prometheus refuses a query_range of more points per series
_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")
_LEGEND_LABEL = re.compile(r"\{\{\s*([a-zA-Z_]\w*)\s*\}\}")
_DURATION = re.compile(r"(\d+)(s|m|h|d)", re.ASCII)
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Series:
    """One line of a panel: its legend, its points (Unix seconds, value), and whether the dashboard draws it dashed
    (a reference line: an SLA limit, a queue cap, the measured capacity)."""

    legend: str
    times: tuple[float, ...]
    values: tuple[float, ...]
    reference: bool = False


@dataclass(frozen=True)
class PanelData:
    """One panel as drawn: title, Grafana unit and the series its queries returned."""

    title: str
    unit: str
    series: tuple[Series, ...]


def dashboard_rows(dashboard: dict) -> list[tuple[str, list[dict]]]:
    """(row title, panels) in the dashboard's order; panels before the first row go under the dashboard's title."""
    rows: list[tuple[str, list[dict]]] = []
    for panel in dashboard.get("panels") or ():
        if panel.get("type") == "row":
            rows.append((panel.get("title", ""), list(panel.get("panels") or ())))
        else:
            if not rows:
                rows.append((dashboard.get("title", ""), []))
            rows[-1][1].append(panel)
    return [row for row in rows if row[1]]


def all_values(dashboard: dict) -> dict[str, str]:
    """What "All" means for each variable, as Grafana expands it into a regex matcher: the variable's ``allValue``,
    else a custom variable's values as an alternation; variables of neither kind are left to ``.+``."""
    found = {}
    for variable in (dashboard.get("templating") or {}).get("list") or ():
        if variable.get("allValue"):
            found[variable["name"]] = variable["allValue"]
        elif variable.get("type") == "custom":
            values = [re.escape(v.strip()) for v in str(variable.get("query", "")).split(",") if v.strip()]
            found[variable["name"]] = "(" + "|".join(values) + ")"
    return found


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Grafana's ``$name`` / ``${name}`` in a query replaced by ``variables`` (regular expressions; ``.+`` for any
    variable not given)."""
    return _VARIABLE.sub(lambda m: variables.get(m.group(1) or m.group(2), ".+"), expr)


def legend(template: str, labels: dict[str, str]) -> str:
    """Grafana's legend format (``p99 {{host}}``) for one series; without one, the series' name and labels."""
    if not template:
        name = labels.get("__name__", "")
        rest = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
        return f"{name}{{{rest}}}" if rest or not name else name
    return " ".join(_LEGEND_LABEL.sub(lambda m: labels.get(m.group(1), ""), template).split())


def dashed_queries(panel: dict) -> set[str]:
    """The refIds whose lines the panel draws dashed (field overrides by query setting ``custom.lineStyle``)."""
    return {
        override["matcher"].get("options")
        for override in (panel.get("fieldConfig") or {}).get("overrides") or ()
        if (override.get("matcher") or {}).get("id") == "byFrameRefID"
        and any(p.get("id") == "custom.lineStyle" for p in override.get("properties") or ())
    }


def query_range(url: str, expr: str, start: float, end: float, step: float, timeout: float = 30.0) -> list[dict]:
    """Prometheus ``/api/v1/query_range``: the ``result`` list (each ``{metric, values}``), or DashboardError."""
    query = urllib.parse.urlencode({"query": expr, "start": repr(start), "end": repr(end), "step": repr(step)})
    endpoint = url.rstrip("/") + "/api/v1/query_range"
    try:
        with open_url(endpoint + "?" + query, timeout=timeout) as response:
            body = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")
        with contextlib.suppress(ValueError, AttributeError):
            detail = json.loads(detail).get("error", detail)
        raise DashboardError([f"Prometheus at {url} refused the query {expr!r}: HTTP {exc.code} {detail}"]) from None
    except (urllib.error.URLError, OSError) as exc:
        raise DashboardError(
            [f"cannot reach Prometheus at {url} ({getattr(exc, 'reason', exc)}); check --prometheus and that it runs"]
        ) from None
    except ValueError:
        raise DashboardError([f"{endpoint} did not answer JSON: is {url} a Prometheus?"]) from None
    if not isinstance(body, dict) or body.get("status") != "success":
        why = body.get("error", body) if isinstance(body, dict) else body
        raise DashboardError([f"Prometheus at {url} refused the query {expr!r}: {why}"])
    return body["data"]["result"]


def fetch(
    dashboard: dict, url: str, start: float, end: float, step: float, variables: dict[str, str] | None = None
) -> list[tuple[str, list[PanelData]]]:
    """Every row's panels with the series their queries return over [start, end]; ``variables`` (name -> regex)
    override the dashboard's "All"."""
    if not re.match(r"https?://[^/\s]+", url):
        raise DashboardError([f"the Prometheus URL must be http(s)://host:port, got {url!r}"])
    variables = {**all_values(dashboard), **(variables or {})}
    rows = []
    for title, panels in dashboard_rows(dashboard):
        drawn = []
        for panel in panels:
            series = []
            dashed = dashed_queries(panel)
            for target in panel.get("targets") or ():
                if target.get("hide") or not target.get("expr"):
                    continue
                for result in query_range(url, substitute(target["expr"], variables), start, end, step):
                    points = result.get("values") or ()
                    series.append(
                        Series(
                            legend(target.get("legendFormat", ""), result.get("metric") or {}),
                            tuple(float(t) for t, _value in points),
                            tuple(float(v) for _time, v in points),
                            target.get("refId") in dashed,
                        )
                    )
            unit = ((panel.get("fieldConfig") or {}).get("defaults") or {}).get("unit") or ""
            drawn.append(PanelData(panel.get("title", ""), unit, tuple(series)))
        rows.append((title, drawn))
    return rows


def _formatter(unit: str):
    """Tick labels in the panel's Grafana unit; the plotted values stay as Prometheus returned them."""
    if unit == "s":
        return lambda v, _: f"{v * 1000:g} ms" if abs(v) < 1 else f"{v:g} s"
    if unit == "bytes":

        def binary(v: float, _position: object) -> str:
            power = min(4, int(math.log(abs(v), 1024))) if abs(v) >= 1 else 0
            return f"{v / 1024**power:.3g} {('B', 'KiB', 'MiB', 'GiB', 'TiB')[power]}"

        return binary
    if unit == "percentunit":
        return lambda v, _: f"{v * 100:g}%"
    if unit == "reqps":
        return lambda v, _: f"{v:g} req/s"
    return lambda v, _: f"{v:g}"


def draw_row(title: str, panels: list[PanelData], subtitle: str = ""):
    """One figure for a row: a grid of panels, each line labelled by its legend; "no data" where nothing returned."""
    plt = _plt()
    from matplotlib.ticker import FuncFormatter

    lines = max(1, math.ceil(len(panels) / COLUMNS))
    fig, axes = plt.subplots(lines, COLUMNS, figsize=(6 * COLUMNS, 3.8 * lines), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        ax.set_title(panel.title, fontsize=10)
        for s in panel.series:
            when = [datetime.fromtimestamp(t, tz=UTC) for t in s.times]
            ax.plot(when, list(s.values), lw=1.2, ls="--" if s.reference else "-", label=s.legend)
        if panel.series:
            ax.legend(fontsize=7, loc="upper left")
            ax.yaxis.set_major_formatter(FuncFormatter(_formatter(panel.unit)))
            ax.tick_params(axis="x", labelsize=7, labelrotation=20)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="0.5")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(f"{title}\n{subtitle}" if subtitle else title, fontsize=12)
    fig.tight_layout()
    return fig


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "row"


def render(
    dashboard: dict,
    url: str,
    out_dir: str,
    start: float,
    end: float,
    step: float | None = None,
    variables: dict[str, str] | None = None,
) -> list[dict]:
    """One PNG per row (``NN-<row>.png``) and ``dashboard.md`` embedding them; returns each row's path and panels."""
    if not end > start:
        raise DashboardError([f"the time range is empty: end {end} is not after start {start}"])
    step = step or max(15.0, math.ceil((end - start) / 600))
    if (end - start) / step >= MAX_POINTS:
        raise DashboardError([f"step {step:g}s gives more than {MAX_POINTS} points per series; raise --step"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    span = "%s to %s UTC, step %gs" % tuple(
        [datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%d %H:%M:%S") for t in (start, end)] + [step]
    )
    plt = _plt()
    written = []
    for index, (title, panels) in enumerate(fetch(dashboard, url, start, end, step, variables)):
        path = out / f"{index:02d}-{_slug(title)}.png"
        fig = draw_row(title, panels, span)
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append({"row": title, "path": str(path), "panels": panels})
    lines = [f"# {dashboard.get('title', 'Dashboard')}", "", f"Prometheus {url}, {span}.", ""]
    lines += [f"## {w['row']}\n\n![{w['row']}]({Path(w['path']).name})\n" for w in written]
    (out / "dashboard.md").write_text("\n".join(lines))
    return written


def _duration(text: str) -> float:
    """``90s``, ``15m``, ``6h``, ``2d`` (or several: ``1h30m``) as seconds."""
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise argparse.ArgumentTypeError(f"expected a duration such as 15m, 6h or 1h30m, got {text!r}")
    return float(sum(int(n) * _SECONDS[u] for n, u in parts))


def _variable(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not re.fullmatch(r"\w+", name):
        raise argparse.ArgumentTypeError(f"expected name=regex such as host=gpu-node-1, got {text!r}")
    return name, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--prometheus", required=True, help="Prometheus base URL, e.g. http://127.0.0.1:9090")
    parser.add_argument("--dashboard", required=True, help="dashboard JSON written by gpu.mig.grafana_dashboard")
    parser.add_argument("--out", required=True, help="folder for the PNG files and dashboard.md")
    parser.add_argument("--range", type=_duration, default=3600.0, help="how far back from --end (default 1h)")
    parser.add_argument("--end", type=float, help="Unix time of the right edge (default now)")
    parser.add_argument("--step", type=_duration, help="seconds between points (default range/600, at least 15s)")
    parser.add_argument(
        "--var",
        type=_variable,
        action="append",
        default=[],
        help="a dashboard variable, name=regex (default: what All means)",
    )
    args = parser.parse_args(argv)
    try:
        dashboard = json.loads(Path(args.dashboard).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        parser.error(f"cannot read the dashboard {args.dashboard}: {exc}")
    end = args.end if args.end is not None else time.time()
    try:
        written = render(dashboard, args.prometheus, args.out, end - args.range, end, args.step, dict(args.var))
    except DashboardError as exc:
        print(f"{PROG}: " + "; ".join(exc.problems), file=sys.stderr)
        return 1
    for w in written:
        print(w["path"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
