# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Filter gpu.mig.fleet_report: the audit's JSON, CSV, Markdown and HTML from preflight reports."""

from __future__ import annotations

import csv
import io
import json

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.gpu.mig.plugins.filter.fleet import FilterModule, fleet_report
from ansible_collections.gpu.mig.plugins.filter.preflight import preflight_report
from ansible_collections.gpu.mig.plugins.module_utils._mig import nvml as _nvml
from ansible_collections.gpu.mig.tests.unit.plugins.filter import mig_gpu_facts

DRIVER = {
    "loaded": True,
    "error": None,
    "driver_version": "550.90.07",
    "cuda_driver_version": "12.4",
    "nvml_version": "12.550",
}
NO_DRIVER = {"loaded": False, "error": "NVML Shared Library Not Found"}


def gpu(index: int, name: str, arch: str, mig, instances=(), processes=()) -> dict:
    gpu_instances = [mig_gpu_facts.gpu_instance(name, i, p, s) for i, (p, s) in enumerate(instances, 1)]
    facts = mig_gpu_facts.gpu(index, name, mig, gpu_instances, processes)
    return {**facts, "uuid": f"GPU-{index}", "pci_bus_id": f"00000000:{7 + index:02X}:00.0", "architecture": arch}


def report(host: str, driver: dict, gpus: list, layout=None, **facts) -> dict:
    return preflight_report({"nvidia_mig": {"driver": driver, "gpus": gpus}, **facts}, host, layout=layout)


@pytest.fixture
def fleet() -> dict:
    chat = [{"gpus": 0, "slots": [{"name": "chat", "profile": "4g.20gb", "placement": 0}]}]
    reports = [
        # in sync, with a process
        report("a100", DRIVER, [gpu(0, "NVIDIA A100-SXM4-40GB", "ampere", (True, True), [("4g.20gb", 0)], [42])], chat),
        # MIG pending on: warn and drifted (a model the catalog lacks: no profiles, no slots)
        report("h100", DRIVER, [gpu(0, 'NVIDIA "H100" <80GB>', "hopper", (False, True))], [{"gpus": 0, "slots": []}]),
        # no driver, no layout: skip
        report("nodriver", NO_DRIVER, []),
    ]
    return fleet_report(reports, ["nodriver", "h100", "a100", "gone"], generated_at="2026-01-02T03:04:05Z")


def test_json_summary_and_hosts(fleet):
    document = json.loads(fleet["json"])
    assert document["generated_at"] == "2026-01-02T03:04:05Z"
    assert document["summary"] == {
        "hosts": 4,
        "ready": 1,
        "warn": 1,
        "blocked": 0,
        "skip": 1,
        "failed": 0,
        "gpus": 2,
        "failed_gpus": 0,
        "in_sync": 1,
        "drifted": 1,
        "unreachable": ["gone"],
    }
    assert [h["host"] for h in document["hosts"]] == ["a100", "h100", "nodriver"]
    assert fleet["json"].startswith('{\n  "generated_at": ')
    assert fleet["json"].endswith("}\n")


def test_csv_rows_quote_everything(fleet):
    rows = list(csv.reader(io.StringIO(fleet["csv"])))
    assert rows[0][:3] == ["host", "verdict", "driver"]
    assert all(len(row) == 19 for row in rows)
    by_host = {row[0]: row for row in rows[1:]}
    assert by_host["a100"][1:6] == ["ready", "550.90.07", "12.4", "12.550", "0"]
    assert by_host["a100"][9:17] == ["True", "True", "450.80.02", "True", "4g.20gb@0", "chat", "", "42"]
    assert by_host["h100"][6] == 'NVIDIA "H100" <80GB>'
    assert by_host["h100"][15] == "MIG mode off (pending on), desired on"
    assert by_host["h100"][17] == "MIG mode change pending (on)"
    assert by_host["nodriver"][1:7] == ["skip", "", "", "", "", ""]
    assert by_host["gone"] == ["gone", "unreachable"] + [""] * 17
    assert '"NVIDIA ""H100"" <80GB>"' in fleet["csv"]


def test_markdown(fleet):
    lines = fleet["md"].splitlines()
    assert lines[0] == "# gpu.mig fleet report"
    assert lines[2] == (
        "4 hosts: 1 ready, 1 warn, 0 blocked, 1 skip, 0 failed, 1 unreachable; 1 drifted from the desired layout."
    )
    assert "| a100 | ready | 550.90.07 / 12.4 | 0 | NVIDIA A100-SXM4-40GB | on | 4g.20gb@0 | in sync | 42 |" in lines
    assert (
        '| h100 | warn | 550.90.07 / 12.4 | 0 | NVIDIA "H100" <80GB> | off (pending on) | - |'
        " MIG mode off (pending on), desired on | - |"
    ) in lines
    assert "| nodriver | skip | no driver | - | - | - | - | - | - |" in lines
    assert "| gone | unreachable | - | - | - | - | - | - | - |" in lines
    assert lines[lines.index("## Reasons") + 2 :] == [
        '- **h100** warn: GPU 0 (NVIDIA "H100" <80GB>, GPU-0): MIG mode change pending (on) (fix: stop the GPU'
        " clients and reset the GPU (gpu.mig.mig_mode role), or reboot)",
        "- **nodriver** info: host: NVML is not available: NVML Shared Library Not Found (fix: install and load the"
        " NVIDIA driver, and nvidia-ml-py for the Python that runs the modules)",
    ]


def test_html_escapes_and_marks_verdicts(fleet):
    html = fleet["html"]
    assert html.startswith("<!DOCTYPE html>\n")
    assert html.endswith("</table>\n</body>\n</html>\n")
    assert "<p>4 hosts: 1 ready, 1 warn, 0 blocked, 1 skip, 0 failed, 1 unreachable</p>" in html
    assert "<td>NVIDIA &#34;H100&#34; &lt;80GB&gt;</td>" in html
    assert '<tr class="warn"><td>h100</td><td>warn</td>' in html
    assert '<tr class="blocked"><td>gone</td><td>unreachable</td><td colspan="8"></td></tr>' in html
    # the MIG column shows the current mode only
    assert "<td>off</td>" in html
    assert "<td>off (pending on)</td>" not in html


def test_reasons_only_on_the_first_gpu_row_in_html():
    gpus = [gpu(i, "NVIDIA H100", "hopper", (False, True)) for i in (0, 1)]
    html = fleet_report([report("h", DRIVER, gpus, [{"gpus": "all", "slots": []}])], ["h"])["html"]
    rows = [line for line in html.splitlines() if line.startswith('<tr class="warn">')]
    assert len(rows) == 2
    assert rows[0].endswith("<td>MIG mode change pending (on); MIG mode change pending (on)</td></tr>")
    assert rows[1].endswith("<td></td></tr>")


def test_empty_fleet():
    files = fleet_report([], [])
    assert json.loads(files["json"])["summary"]["hosts"] == 0
    assert files["csv"].count("\n") == 1
    assert "0 hosts: 0 ready, 0 warn, 0 blocked, 0 skip, 0 failed; 0 drifted" in files["md"]
    assert "## Reasons" not in files["md"]


def test_input_must_be_reports():
    with pytest.raises(AnsibleFilterError, match=r"list of gpu\.mig\.preflight_report results"):
        fleet_report({"host": "a"}, ["a"])


def test_filter_is_registered():
    assert FilterModule().filters()["fleet_report"] is fleet_report


# --- hosts and GPUs that failed ---------------------------------------------------------------------------------------
COUNT_FAILED = (
    "counting the GPUs failed: NVML reported an unknown error (NVML: Unknown Error); check dmesg and journalctl -k for"
    " Xid errors and retry; if it persists, reset the GPU (nvidia-smi -r -i <gpu>) or reboot"
)
LOST = (
    "GPU 1: opening the GPU failed: the GPU has fallen off the bus (GPU lost) (NVML: GPU is lost); drain the host,"
    " check dmesg for Xid errors and reboot it"
)


def lost_gpu(index: int) -> dict:
    """A GPU as gpu.mig.mig_facts reports one that NVML could not read (Nvml.gpu_or_failure)."""
    return _nvml.failed_gpu(index, LOST)


@pytest.fixture
def partial() -> dict:
    gpus = [gpu(0, "NVIDIA H100 80GB HBM3", "hopper", (True, True)), lost_gpu(1)]
    reports = [
        report("h100", DRIVER, gpus, [{"gpus": "all", "slots": []}]),  # the layout does not name GPU 1: a warning
        report("pinned", DRIVER, gpus, [{"gpus": 1, "slots": []}]),  # the layout needs GPU 1: blocked
    ]
    return fleet_report(reports, ["h100", "pinned", "broken", "gone"], failed={"broken": COUNT_FAILED})


def test_a_host_whose_facts_failed_is_failed_with_the_reason_not_unreachable(partial):
    document = json.loads(partial["json"])
    assert document["summary"]["unreachable"] == ["gone"] and document["summary"]["failed"] == 1
    broken = next(h for h in document["hosts"] if h["host"] == "broken")
    assert (broken["verdict"], broken["error"]) == ("failed", COUNT_FAILED)
    assert broken["reasons"][0]["msg"] == f"gathering MIG facts failed: {COUNT_FAILED}"
    md = partial["md"].splitlines()
    assert f"| broken | failed: {COUNT_FAILED} | - | - | - | - | - | - | - |" in md
    assert "| gone | unreachable | - | - | - | - | - | - | - |" in md
    assert md[2].startswith("4 hosts: 0 ready, 1 warn, 1 blocked, 0 skip, 1 failed, 1 unreachable;")
    assert (
        f"- **broken** fail: host: gathering MIG facts failed: {COUNT_FAILED} (fix: follow the remedy" in partial["md"]
    )
    rows = {row[0]: row for row in csv.reader(io.StringIO(partial["csv"]))}
    assert rows["broken"][1] == "failed" and rows["broken"][18] == COUNT_FAILED
    assert rows["broken"][17] == f"gathering MIG facts failed: {COUNT_FAILED}"
    assert '<tr class="failed"><td>broken</td><td>failed: counting the GPUs failed: NVML' in partial["html"]


def test_a_failed_gpu_shows_its_error_and_the_verdict_says_so(partial):
    document = json.loads(partial["json"])
    h100, pinned = (next(h for h in document["hosts"] if h["host"] == name) for name in ("h100", "pinned"))
    assert (h100["verdict"], pinned["verdict"]) == ("warn", "blocked")
    assert [g["error"] for g in h100["gpus"]] == [None, LOST]
    assert [(r["level"], r["where"], r["msg"]) for r in pinned["reasons"]] == [
        (
            "fail",
            "layout",
            f"entry 1 (gpus: 1) names GPU 1 (unreadable), which cannot be read: {LOST}; remove it from the selector to"
            " apply the layout to the other GPUs",
        ),
        ("fail", "GPU 1", LOST),
    ]
    assert document["summary"]["failed_gpus"] == 2
    md = partial["md"].splitlines()
    assert f"| h100 | warn | 550.90.07 / 12.4 | 1 | - | failed: {LOST} | - | - | - |" in md
    assert f"- **pinned** fail: GPU 1: {LOST} (fix: follow the remedy in the message" in partial["md"]
    gpu_rows = [row for row in csv.reader(io.StringIO(partial["csv"])) if row[0] == "h100"]
    assert [row[18] for row in gpu_rows] == ["", LOST] and [row[6] for row in gpu_rows] == ["NVIDIA H100 80GB HBM3", ""]
    assert f"<td>failed: {LOST}</td>" in partial["html"]


def test_a_host_of_failed_gpus_only_is_not_said_to_lack_mig():
    result = report("lost", DRIVER, [lost_gpu(0)], [{"gpus": "all", "slots": []}])
    assert [(r["where"], r["msg"]) for r in result["reasons"]] == [("GPU 0", LOST)]
    assert result["verdict"] == "warn"


def test_failed_must_be_a_mapping():
    with pytest.raises(AnsibleFilterError, match="failed must map hosts to messages"):
        fleet_report([], ["a"], failed=["a"])
