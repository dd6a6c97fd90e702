# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Filter ``gpu.mig.fleet_report``: the fleet audit's JSON, CSV, Markdown and HTML from the hosts' preflight reports.

Rendered in Python rather than with Jinja templates: over a few hundred hosts the templates cost the audit more
controller time than everything else it does after gathering the facts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from ansible.errors import AnsibleFilterError
from markupsafe import escape

VERDICTS = ("ready", "warn", "blocked", "skip", "failed")
CSV_HEADER = (
    "host,verdict,driver,cuda,nvml,gpu,name,uuid,architecture,mig_current,mig_pending,min_driver,driver_ok,layout,"
    "desired_slots,drift,processes,reasons,error"
)
FAILED_HOST_FIX = (
    "follow the remedy in the message (gpu.mig.mig_facts with -vvv on the host shows more), then run the audit again"
)
HTML_HEAD = """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>gpu.mig fleet report</title>
<style>body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}
.blocked,.failed{background:#fdd}.warn{background:#ffd}.ready{background:#dfd}.skip{color:#777}</style></head>
<body>
<h1>gpu.mig fleet report</h1>
"""
HTML_COLUMNS = "<tr>" + "".join(
    f"<th>{c}</th>"
    for c in ("host", "verdict", "driver / CUDA", "GPU", "model", "MIG", "layout", "drift", "processes", "reasons")
)
MD_COLUMNS = "| host | verdict | driver / CUDA | GPU | model | MIG | layout | drift | processes |\n" + "|---" * 9 + "|"


def _text(value) -> str:
    """A value as the report shows it: Python's str (True, None, 3)."""
    return str(value)


def _or(value, fallback=""):
    """``value`` unless it is empty or None (Jinja's ``default(fallback, true)``)."""
    return value if value else fallback


def failed_host(host: str, msg: str) -> dict:
    """The report of a host whose fact gathering failed: verdict ``failed``, the module's message as its reason."""
    reason = {"level": "fail", "where": "host", "msg": f"gathering MIG facts failed: {msg}", "fix": FAILED_HOST_FIX}
    return {"host": host, "verdict": "failed", "error": msg, "reasons": [reason], "driver": {}, "gpus": []}


def _verdict(report: Mapping) -> str:
    """The verdict as the tables show it: ``failed: <why>`` for a host whose facts could not be gathered."""
    verdict = _text(report.get("verdict"))
    return f"{verdict}: {report['error']}" if report.get("error") else verdict


def _gpu_rows(report: Mapping) -> list[Mapping]:
    """A host's GPUs; a host without GPUs still gets one (empty) row."""
    return list(report.get("gpus") or []) or [{}]


def _pids(gpu: Mapping) -> str:
    return " ".join(_text(p["pid"]) for p in gpu.get("processes") or [])


def _driver(report: Mapping) -> str:
    driver = report.get("driver") or {}
    if not driver:
        return "-"  # no facts: a host whose fact gathering failed
    if not driver.get("loaded", False):
        return "no driver"
    return f"{driver.get('driver_version')} / {driver.get('cuda_driver_version')}"


def _mig(gpu: Mapping, pending: bool) -> str:
    """on / off (and the pending mode when it differs, for ``pending``), ``-`` without MIG or without a GPU,
    ``failed: <why>`` for a GPU that NVML could not read."""
    if gpu.get("error"):
        return f"failed: {gpu['error']}"
    mig = gpu.get("mig")
    if mig is None or not mig.get("supported"):
        return "-"
    text = "on" if mig.get("current") else "off"
    if pending and mig.get("current") != mig.get("pending"):
        text += f" (pending {'on' if mig.get('pending') else 'off'})"
    return text


def _count(reports: list, verdict: str) -> int:
    return sum(1 for r in reports if r.get("verdict") == verdict)


def _headline(reports: list, hosts: list, missing: list) -> str:
    counts = ", ".join(f"{_count(reports, v)} {v}" for v in VERDICTS)
    return f"{len(hosts)} hosts: {counts}" + (f", {len(missing)} unreachable" if missing else "")


def _managed(reports: list) -> list:
    """Reports of hosts with a layout and facts: those that can be in sync or drift."""
    return [r for r in reports if r.get("verdict") not in ("skip", "failed")]


def _drifted(reports: list) -> int:
    return sum(1 for r in _managed(reports) if not r.get("in_sync"))


def render_json(reports: list, hosts: list, missing: list, generated_at: str) -> str:
    managed = _managed(reports)
    document = {
        "generated_at": generated_at,
        "summary": {
            "hosts": len(hosts),
            **{v: _count(reports, v) for v in VERDICTS},
            "gpus": sum(len(r.get("gpus") or []) for r in reports),
            "failed_gpus": sum(1 for r in reports for g in r.get("gpus") or [] if g.get("error")),
            "in_sync": sum(1 for r in managed if r.get("in_sync")),
            "drifted": _drifted(reports),
            "unreachable": missing,
        },
        "hosts": reports,
    }
    return json.dumps(document, indent=2, sort_keys=True, separators=(",", ": ")) + "\n"


def _csv_field(value) -> str:
    return '"' + _text(value).replace('"', '""') + '"'


def render_csv(reports: list, missing: list) -> str:
    lines = [CSV_HEADER]
    for report in reports:
        driver = report.get("driver") or {}
        head = [
            report.get("host"),
            report.get("verdict"),
            _or(driver.get("driver_version")),
            _or(driver.get("cuda_driver_version")),
            _or(driver.get("nvml_version")),
        ]
        reasons = "; ".join(_text(r["msg"]) for r in report.get("reasons") or [])
        for gpu in _gpu_rows(report):
            mig = gpu.get("mig")
            fields = [
                *head,
                gpu.get("index", ""),
                _or(gpu.get("name")),
                _or(gpu.get("uuid")),
                gpu.get("architecture", ""),
                mig.get("current", "") if mig is not None else "",
                mig.get("pending", "") if mig is not None else "",
                _or(gpu.get("min_driver")),
                gpu.get("driver_ok", ""),
                gpu.get("layout", ""),
                " ".join(map(_text, gpu.get("desired_slots") or [])),
                "; ".join(map(_text, gpu.get("drift") or [])),
                _pids(gpu),
                reasons,
                _or(gpu.get("error") or report.get("error")),
            ]
            lines.append(",".join(map(_csv_field, fields)))
    lines.extend(_csv_field(host) + ',"unreachable"' + "," * 17 for host in missing)
    return "\n".join(lines) + "\n"


def render_markdown(reports: list, hosts: list, missing: list) -> str:
    lines = [
        "# gpu.mig fleet report",
        "",
        f"{_headline(reports, hosts, missing)}; {_drifted(reports)} drifted from the desired layout.",
        "",
        MD_COLUMNS,
    ]
    for report in reports:
        for gpu in _gpu_rows(report):
            drift = "; ".join(map(_text, gpu.get("drift") or [])) or ("in sync" if gpu.get("managed", False) else "-")
            cells = [
                report.get("host"),
                _verdict(report),
                _driver(report),
                gpu.get("index", "-"),
                _or(gpu.get("name"), "-"),
                _mig(gpu, pending=True),
                _or(gpu.get("layout"), "-"),
                drift,
                _pids(gpu) or "-",
            ]
            lines.append("| " + " | ".join(map(_text, cells)) + " |")
    lines.extend(f"| {host} | unreachable | - | - | - | - | - | - | - |" for host in missing)
    flagged = [r for r in reports if r.get("reasons")]
    if flagged:
        lines += ["", "## Reasons", ""]
        lines.extend(
            f"- **{r.get('host')}** {x['level']}: {x['where']}: {x['msg']} (fix: {x['fix']})"
            for r in flagged
            for x in r["reasons"]
        )
    return "\n".join(lines) + "\n"


def render_html(reports: list, hosts: list, missing: list) -> str:
    lines = [HTML_HEAD + f"<p>{_headline(reports, hosts, missing)}</p>", "<table>", HTML_COLUMNS + "</tr>"]
    for report in reports:
        reasons = escape("; ".join(_text(r["msg"]) for r in report.get("reasons") or []))
        for position, gpu in enumerate(_gpu_rows(report)):
            cells = [
                escape(_text(report.get("host"))),
                escape(_verdict(report)),
                escape(_driver(report)),
                _text(gpu.get("index", "-")),
                escape(_text(_or(gpu.get("name"), "-"))),
                escape(_mig(gpu, pending=False)),
                escape(_text(_or(gpu.get("layout")))),
                escape("; ".join(map(_text, gpu.get("drift") or []))),
                _pids(gpu),
                reasons if position == 0 else "",
            ]
            lines.append(f'<tr class="{report.get("verdict")}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    lines.extend(
        f'<tr class="blocked"><td>{escape(host)}</td><td>unreachable</td><td colspan="8"></td></tr>' for host in missing
    )
    lines += ["</table>", "</body>", "</html>"]
    return "\n".join(lines) + "\n"


def fleet_report(reports, hosts, generated_at: str = "", failed=None) -> dict:
    """The four report texts. ``reports``: gpu.mig.preflight_report results, one per host whose facts were gathered;
    ``failed``: host -> the message of its failed fact gathering (listed as ``failed: <message>``); ``hosts``: every
    audited inventory host (those in neither are listed as unreachable)."""
    if not isinstance(reports, (list, tuple)) or not all(isinstance(r, Mapping) for r in reports):
        raise AnsibleFilterError("fleet_report: the input must be a list of gpu.mig.preflight_report results")
    failed = {} if failed is None else failed
    if not isinstance(failed, Mapping):
        raise AnsibleFilterError(f"fleet_report: failed must map hosts to messages, not {failed!r}")
    reports = list(reports) + [failed_host(host, _text(msg)) for host, msg in sorted(failed.items())]
    hosts = sorted(hosts or [])
    answered = {r.get("host") for r in reports}
    missing = [h for h in hosts if h not in answered]
    return {
        "json": render_json(reports, hosts, missing, generated_at),
        "csv": render_csv(reports, missing),
        "md": render_markdown(reports, hosts, missing),
        "html": render_html(reports, hosts, missing),
    }


class FilterModule:
    """gpu.mig fleet audit filters."""

    def filters(self) -> dict:
        return {"fleet_report": fleet_report}
