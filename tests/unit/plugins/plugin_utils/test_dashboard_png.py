# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The dashboard's panels drawn from a real Prometheus (Debian's): every series the panels query is backfilled with
promtool from OpenMetrics text, Prometheus serves that TSDB on loopback, and the PNGs must show exactly those values."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from ansible_collections.gpu.mig.plugins.plugin_utils import dashboard as _dashboard
from ansible_collections.gpu.mig.plugins.plugin_utils import dashboard_png as _png
from ansible_collections.gpu.mig.plugins.plugin_utils.dashboard import DashboardError
from ansible_collections.gpu.mig.tests.unit.plugins.plugin_utils import dashboard_specs

PROMETHEUS, PROMTOOL = shutil.which("prometheus"), shutil.which("promtool")
HOSTS = ("gpu-1", "gpu-2")
# Values of the labels a legend names that no matcher fixes.
LEGEND_LABELS = {"class": ("fast", "background"), "mig_uuid": ("MIG-0", "MIG-1")}
STEP = 15
SAMPLES = 24
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\{(.*)\}")
_MATCHER = re.compile(r'(\w+)(=~?)"([^"]*)"')
_CONSTANT = re.compile(r"vector\((.+)\)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _targets(dashboard: dict) -> list[dict]:
    return [t for panel in dashboard["panels"] for t in panel.get("targets") or ()]


def _series(dashboard: dict) -> dict[tuple, list[float]]:
    """Every series the panels' selectors read (each host, each value of a label the legend names), plus the same for
    a service nobody listed: (name, labels) -> values, each series its own numbers so a mix-up shows."""
    keys = set()
    for target in _targets(dashboard):
        selector = _SELECTOR.fullmatch(target["expr"])
        if not selector:
            assert _CONSTANT.fullmatch(target["expr"]), target["expr"]
            continue
        name, matchers = selector.group(1), _MATCHER.findall(selector.group(2))
        exact = {key: value for key, op, value in matchers if op == "="}
        if not exact:
            continue  # the overview's selectors (service=~"$service") read the services' own series
        axes = [("host", HOSTS)] if any(key == "host" for key, _op, _value in matchers) else []
        axes += [
            (key, LEGEND_LABELS[key])
            for key in re.findall(r"\{\{(\w+)\}\}", target["legendFormat"])
            if key in LEGEND_LABELS
        ]
        for base in [exact] + ([{**exact, "service": "batch"}] if "service" in exact else []):
            for values in itertools.product(*(choices for _key, choices in axes)):
                labels = {**base, **dict(zip((key for key, _choices in axes), values, strict=True))}
                keys.add((name, tuple(sorted(labels.items()))))
    return {key: [(n + 1) * 1.5 + i * 0.25 for i in range(SAMPLES)] for n, key in enumerate(sorted(keys))}


def _openmetrics(series: dict[tuple, list[float]], start: int) -> str:
    lines = []
    for name in sorted({name for name, _labels in series}):
        lines.append(f"# TYPE {name} gauge")
        for (other, labels), values in sorted(series.items()):
            if other == name:
                text = ",".join(f'{k}="{v}"' for k, v in labels)
                lines += [f"{name}{{{text}}} {v} {start + i * STEP}" for i, v in enumerate(values)]
    return "\n".join([*lines, "# EOF", ""])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Dashboard, backfilled series and a Prometheus serving them on a free loopback port (stopped afterwards)."""
    assert PROMETHEUS and PROMTOOL, "Debian's prometheus package (prometheus, promtool) is needed"
    base = tmp_path_factory.mktemp("prometheus")
    dashboard = _dashboard.generate(dashboard_specs.HOSTS, dcgm=True)
    series = _series(dashboard)
    start = (int(time.time()) - 3600) // STEP * STEP
    (base / "series.om").write_text(_openmetrics(series, start))
    subprocess.run(
        [PROMTOOL, "tsdb", "create-blocks-from", "openmetrics", str(base / "series.om"), str(base / "tsdb")],
        check=True,
        capture_output=True,
        timeout=60,
    )
    (base / "prometheus.yml").write_text("global:\n  scrape_interval: 15s\n")
    url = f"http://127.0.0.1:{_free_port()}"
    log = (base / "prometheus.log").open("w")
    process = subprocess.Popen(
        [PROMETHEUS, f"--config.file={base / 'prometheus.yml'}", f"--storage.tsdb.path={base / 'tsdb'}",
         f"--web.listen-address={url.removeprefix('http://')}"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, (base / "prometheus.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "Prometheus not ready in 30 s"
            try:
                with urllib.request.urlopen(url + "/-/ready", timeout=2):
                    break
            except OSError:
                time.sleep(0.2)
        yield {
            "url": url,
            "dashboard": dashboard,
            "series": series,
            "start": start,
            "end": start + (SAMPLES - 1) * STEP,
            "times": tuple(float(start + i * STEP) for i in range(SAMPLES)),
            "out": base / "png",
        }
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


def _expected(world: dict, target: dict, variables: dict[str, str]) -> dict[str, tuple[float, ...]]:
    """Legend -> values a target must plot: the backfilled series its selector matches, or its constant."""
    constant = _CONSTANT.fullmatch(target["expr"])
    if constant:
        return {target["legendFormat"]: (float(constant.group(1)),) * SAMPLES}
    selector = _SELECTOR.fullmatch(target["expr"])
    name, matchers = selector.group(1), _MATCHER.findall(selector.group(2))
    found = {}
    for (other, labels), values in world["series"].items():
        labels = dict(labels)
        if other == name and all(
            labels.get(key) == value if op == "=" else re.fullmatch(variables[value[1:]], labels.get(key, ""))
            for key, op, value in matchers
        ):
            legend = re.sub(
                r"\{\{(\w+)\}\}", lambda m, labels=labels: labels.get(m.group(1), ""), target["legendFormat"]
            )
            found[" ".join(legend.split())] = tuple(values)
    return found


@pytest.mark.parametrize(
    "variables",
    [{}, {"host": "gpu-2", "service": "ocr"}],
    ids=["all hosts and services", "one host, one service"],
)
def test_every_panel_plots_exactly_the_backfilled_values(world, variables):
    dashboard = world["dashboard"]
    rows = _png.fetch(dashboard, world["url"], world["start"], world["end"], STEP, variables)
    means = {"host": ".+", "service": "(chat|ocr|embed)", **variables}
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert [title for title, _panels in rows] == [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    drawn = [panel for _title, row in rows for panel in row]
    assert [p.title for p in drawn] == [p["title"] for p in panels]
    for panel, data in zip(panels, drawn, strict=True):
        expected = {}
        for target in panel["targets"]:
            expected.update(_expected(world, target, means))
        got = {s.legend: s.values for s in data.series}
        assert got == expected, panel["title"]
        assert all(s.times == world["times"] for s in data.series), panel["title"]
    # "batch" is backfilled too but no service of the list: "All" is the listed services only.
    overview = rows[0][1][0]
    assert {s.legend.split()[0] for s in overview.series} == ({"chat", "ocr", "embed"} if not variables else {"ocr"})


def test_the_figure_shows_each_panel_with_its_lines(world):
    rows = _png.fetch(world["dashboard"], world["url"], world["start"], world["end"], STEP)
    title, chat = rows[1]
    figure = _png.draw_row(title, chat)
    try:
        axes = [ax for ax in figure.axes if ax.get_visible()]
        assert [ax.get_title() for ax in axes] == [p.title for p in chat]
        for ax, panel in zip(axes, chat, strict=True):
            lines = {line.get_label(): tuple(line.get_ydata()) for line in ax.get_lines()}
            assert lines == {s.legend: s.values for s in panel.series}, panel.title
        capacity = axes[[p.title for p in chat].index("Request rate against capacity")]
        dashed = {line.get_label() for line in capacity.get_lines() if line.get_linestyle() == "--"}
        assert dashed == {"sustained capacity", "knee", "SLA target 9 req/s"}
        assert figure.texts[0].get_text().startswith("chat: slot chat, triton")
        # Ticks in the panel's unit; the plotted values stay as Prometheus returned them.
        ticks = {ax.get_title(): ax.yaxis.get_major_formatter() for ax in axes}
        assert ticks["Latency p50/p95/p99"](0.25, 0) == "250 ms"
        assert ticks["MIG memory"](40 * 2**30, 0) == "40 GiB"
        assert ticks["GPU utilization (DCGM)"](0.5, 0) == "50%"
    finally:
        _png._plt().close(figure)


def test_render_writes_one_png_per_row_and_a_page(world):
    out = world["out"]
    written = _png.render(world["dashboard"], world["url"], str(out), world["start"], world["end"], STEP)
    assert [Path(w["path"]).name for w in written] == [
        "00-overview.png",
        "01-chat-slot-chat-triton.png",
        "02-ocr-slot-ocr-vllm.png",
        "03-embed-slot-embed-generic.png",
    ]
    import matplotlib.image

    for w in written:
        data = Path(w["path"]).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        height, width = matplotlib.image.imread(w["path"]).shape[:2]
        assert width == 18 * 90 and height == round(3.8 * 90 * -(-len(w["panels"]) // 3))
    assert [len(w["panels"]) for w in written] == [3, 7, 7, 6]
    page = (out / "dashboard.md").read_text()
    assert page.count("![") == 4 and "01-chat-slot-chat-triton.png" in page


def test_the_cli_renders_from_the_dashboard_file(world, tmp_path, capsys):
    board = tmp_path / "board.json"
    board.write_text(_dashboard.dumps(world["dashboard"]))
    rc = _png.main(["--prometheus", world["url"], "--dashboard", str(board), "--out", str(tmp_path / "out"),
                    "--end", str(world["end"]), "--range", "5m", "--step", "1m", "--var", "service=chat"])  # fmt: skip
    assert rc == 0
    assert len(capsys.readouterr().out.split()) == 4
    assert len(list((tmp_path / "out").glob("*.png"))) == 4


def test_errors_name_the_query_and_the_fix(world):
    broken = json.loads(json.dumps(world["dashboard"]))
    broken["panels"][1]["targets"][0]["expr"] = "rate(up[1m]"
    with pytest.raises(DashboardError, match=r"refused the query 'rate\(up\[1m\]'.*HTTP 400"):
        _png.fetch(broken, world["url"], world["start"], world["end"], STEP)
    with pytest.raises(DashboardError, match=r"cannot reach Prometheus at http://127\.0\.0\.1:1 .*check --prometheus"):
        _png.fetch(world["dashboard"], "http://127.0.0.1:1", world["start"], world["end"], STEP)
    with pytest.raises(DashboardError, match=r"must be http\(s\)://host:port, got 'file:///etc'"):
        _png.fetch(world["dashboard"], "file:///etc", world["start"], world["end"], STEP)
    with pytest.raises(DashboardError, match="the time range is empty"):
        _png.render(world["dashboard"], world["url"], str(world["out"]), world["end"], world["start"])
