# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The per-slice metrics collector (roles/monitoring/files/gpu_mig_metrics.py) on simulated hosts.

Its series equal gpu.mig.mig_facts' facts of the same host, its drift is the number of actions gpu.mig.mig_instances'
check mode plans, its file passes ``promtool check metrics`` and node_exporter's textfile collector reads it; every
failure ends as ``gpu_mig_collector_success 0`` and ``FAILED:`` journal lines naming the GPU or file and the fix.
The role's tasks (tasks/collector.yml) install it next to the MIG core, and its units pass ``systemd-analyze verify``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from ansible.module_utils.common import warnings
from ansible.module_utils.testing import patch_module_args

from ansible_collections.gpu.mig.plugins.module_utils._mig import apply as _apply
from ansible_collections.gpu.mig.plugins.module_utils._mig import nvml as _nvml
from ansible_collections.gpu.mig.plugins.module_utils._mig import slot_files
from ansible_collections.gpu.mig.plugins.modules import mig_facts
from nvmlsim import cli

REPO = Path(__file__).resolve().parents[3]
MIB = 1024 * 1024
CONFIG, SLOT_MAP, OUTPUT = "/etc/gpu-mig/metrics.json", "/etc/gpu-mig/slots.json", "/var/lib/node-exporter/gpu_mig.prom"
PREFIX = "gpu-mig-metrics: "
LAYOUT = [
    {"gpus": 0, "slots": [
        {"name": "chat", "profile": "3g.20gb"},
        {"name": "ocr", "profile": "2g.10gb", "compute_instances": ["1c.2g.10gb", "1c.2g.10gb"]},
    ]},
    {"gpus": 1, "slots": [{"name": "embed", "profile": "3g.40gb"}]},
]  # fmt: skip
SERVICES = {"chat": "chat-llm", "ocr": "ocr", "rerank": "rerank"}  # rerank: pinned to a slot the layout lacks
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


class Run:
    """One collector run: exit status, journal lines (no prefix), the textfile's text and its series."""

    def __init__(self, status: int, lines: list[str], text: str):
        self.status, self.lines, self.text = status, lines, text
        self.series = parse(text)

    @property
    def failed(self) -> list[str]:
        return [line.removeprefix("FAILED: ") for line in self.lines if line.startswith("FAILED: ")]

    def of(self, name: str) -> dict:
        """The series of one metric: labels (a frozenset of pairs) -> value."""
        return {labels: value for (metric, labels), value in self.series.items() if metric == name}


def parse(text: str) -> dict:
    """(name, frozenset of label pairs) -> value of every sample; each name appears once."""
    series = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name, labels, value = SAMPLE.match(line).groups()
        key = (name, frozenset(LABEL.findall(labels or "")))
        assert key not in series, line
        series[key] = float(value)
    return series


def labels(**pairs) -> frozenset:
    return frozenset((key, str(value)) for key, value in pairs.items())


@pytest.fixture
def collector(monkeypatch):
    """The collector script as a module; the sys.path entry it adds for its lib_dir is dropped afterwards."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    spec = importlib.util.spec_from_file_location("gpu_mig_metrics", REPO / "roles/monitoring/files/gpu_mig_metrics.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def collect(collector, tmp_path, capsys):
    """``collect(config)``: write the config (a dict, or text) under a root, run the collector, return the Run."""
    root = tmp_path / "root"

    def run(config: dict | str) -> Run:
        path = root / CONFIG[1:]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(config if isinstance(config, str) else json.dumps(config))
        status = collector.main(["--config", CONFIG, "--output", OUTPUT, "--root", str(root)])
        journal = capsys.readouterr().err
        assert "Traceback" not in journal
        lines = journal.splitlines()
        assert all(line.startswith(PREFIX) for line in lines), journal
        return Run(status, [line.removeprefix(PREFIX) for line in lines], (root / OUTPUT[1:]).read_text())

    run.root = root
    return run


def settings(**extra) -> dict:
    return {"slot_map": SLOT_MAP, "slot_services": SERVICES, **extra}


def apply(root: Path, layout: list) -> dict:
    """Apply ``layout`` as gpu.mig.mig_instances does and write its slot map as the mig_layout role does."""
    with _nvml.Nvml() as nvml:
        slots = _apply.apply_layout(nvml, layout)["slots"]
    (root / SLOT_MAP[1:]).parent.mkdir(parents=True, exist_ok=True)
    (root / SLOT_MAP[1:]).write_text(slot_files.slot_map_text(slots))
    return slots


def facts_of_host(monkeypatch, capsys) -> dict:
    """``ansible_facts.nvidia_mig`` as the gpu.mig.mig_facts module returns it for the simulated host."""
    monkeypatch.setattr(warnings, "_global_warnings", {})
    with patch_module_args({}), pytest.raises(SystemExit) as done:
        mig_facts.main()
    assert done.value.code == 0
    return json.loads(capsys.readouterr().out)["ansible_facts"]["nvidia_mig"]


def series_from_facts(facts: dict, slots: dict, services: dict) -> dict:
    """What the collector must write for a host whose slot map matches its facts, computed from the facts: each slot
    (the GPU instance the slot map names by GPU, profile and start) with its compute instances' MIG devices."""
    expected = {}
    for gpu in facts["gpus"]:
        if gpu["mig"]["supported"]:
            for name in ("current", "pending"):
                expected[(f"gpu_mig_mode_{name}", labels(gpu_index=gpu["index"], gpu_uuid=gpu["uuid"]))] = float(
                    gpu["mig"][name]
                )
        for gi in gpu["gpu_instances"]:
            slot = next(
                name
                for name, s in slots.items()
                if (s["gpu_uuid"], s["profile"], s["placement"]["start"])
                == (gpu["uuid"], gi["profile"], gi["placement"]["start"])
            )
            info = labels(
                slot=slot, service=services.get(slot, ""), profile=gi["profile"], gpu_index=gpu["index"],
                gpu_uuid=gpu["uuid"], gpu_instance_id=gi["id"], mig_uuid=gi["compute_instances"][0]["uuid"],
                placement=gi["placement"]["start"],
            )  # fmt: skip
            expected[("gpu_mig_slot_info", info)] = 1.0
            expected[("gpu_mig_slot_present", labels(slot=slot))] = 1.0
            for ci in gi["compute_instances"]:
                device = labels(slot=slot, mig_uuid=ci["uuid"])
                expected[("gpu_mig_slot_memory_used_bytes", device)] = float(ci["memory_used_mib"] * MIB)
                expected[("gpu_mig_slot_memory_total_bytes", device)] = float(ci["memory_mib"] * MIB)
                expected[("gpu_mig_slot_processes", device)] = float(len(ci["processes"]))
    return expected


def planned_actions(slots: dict, layout: list) -> dict[int, int]:
    """GPU index -> actions gpu.mig.mig_instances' check mode plans there (as its action plugin plans: on facts)."""
    host = _apply.host_from_facts(_nvml.gather()["gpus"])
    plan = _apply.apply_layout(None, layout, force=True, check_mode=True, host=host, previous_slots=slots)["plan"]
    return {g["index"]: sum(1 for a in plan["actions"] if a["gpu_index"] == g["index"]) for g in plan["gpus"]}


def drift(run: Run) -> dict[int, float]:
    return {int(dict(key)["gpu_index"]): value for key, value in run.of("gpu_mig_layout_drift").items()}


def test_the_series_equal_the_facts_of_the_host(sim_host, collect, monkeypatch, capsys):
    host = sim_host("A100-SXM4-40GB:mig=on", "H100-80GB:mig=on", "L4")
    slots = apply(collect.root, LAYOUT)
    chat, ocr = slots["chat"], slots["ocr"]
    host.add_process(f"0:{chat['gpu_instance_id']}:0:1200:vllm")
    host.add_process(f"0:{chat['gpu_instance_id']}:0:300:vllm-worker")
    host.add_process(f"0:{ocr['gpu_instance_id']}:{ocr['compute_instances'][1]['id']}:700:ocr")
    run = collect(settings())
    assert (run.status, run.failed) == (0, [])
    expected = series_from_facts(facts_of_host(monkeypatch, capsys), slots, SERVICES)
    expected[("gpu_mig_slot_present", labels(slot="rerank"))] = 0.0
    assert {key: value for key, value in run.series.items() if not key[0].startswith("gpu_mig_collector_")} == expected
    # The simulated driver counts the memory of the GPU instance's processes as used on each of its MIG devices.
    used = {dict(key)["mig_uuid"]: value for key, value in run.of("gpu_mig_slot_memory_used_bytes").items()}
    assert used[chat["mig_uuid"]] == 1500 * MIB
    assert [used[ci["mig_uuid"]] for ci in ocr["compute_instances"]] == [700 * MIB, 700 * MIB]
    assert run.of("gpu_mig_collector_success") == {frozenset(): 1.0}
    assert abs(run.of("gpu_mig_collector_last_run_timestamp_seconds")[frozenset()] - time.time()) < 60
    assert "gpu_mig_layout_drift" not in run.text  # no desired layout configured


def test_drift_counts_mig_instances_actions_and_is_zero_in_sync(sim_host, collect):
    host = sim_host("A100-SXM4-40GB:mig=on", "H100-80GB:mig=on")
    slots = apply(collect.root, LAYOUT)
    in_sync = collect(settings(layout=LAYOUT))
    assert (in_sync.status, drift(in_sync)) == (0, {0: 0.0, 1: 0.0})
    # Behind the layout's back: GPU 1's slot destroyed, a busy extra instance on GPU 0 (mig_instances would refuse to
    # destroy it without force; the drift counts it all the same).
    with _nvml.Nvml() as nvml:
        embed = slots["embed"]
        nvml.destroy_compute_instance(1, embed["gpu_instance_id"], embed["compute_instance_id"])
        nvml.destroy_gpu_instance(1, embed["gpu_instance_id"])
        taken = {
            s["placement"]["start"] + i
            for s in slots.values()
            if s["gpu_index"] == 0
            for i in range(s["placement"]["size"])
        }
        extra = nvml.create_gpu_instance(0, 19, min(set(range(7)) - taken), 1)  # a 1g.5gb where no slot is
        nvml.create_compute_instance(0, extra, 0)
    host.add_process(f"0:{extra}:0:100:intruder")
    drifted = collect(settings(layout=LAYOUT))
    assert drifted.status == 0, drifted.failed
    assert drift(drifted) == planned_actions(slots, LAYOUT)
    assert drift(drifted)[0] > 0 and drift(drifted)[1] > 0
    assert drifted.of("gpu_mig_slot_present")[labels(slot="embed")] == 0.0
    assert not [key for key in drifted.of("gpu_mig_slot_processes") if dict(key)["slot"] == "embed"]


def test_a_mig_parted_config_drifts_as_its_converted_layout(sim_host, collect):
    sim_host("A100-SXM4-40GB:mig=on")
    config = {"version": "v1", "mig-configs": {"mixed": [{"devices": [0], "mig-enabled": True,
                                                          "mig-devices": {"3g.20gb": 1, "2g.10gb": 1}}]}}  # fmt: skip
    parted = settings(mig_parted_config=config, mig_parted_config_name="mixed")
    assert drift(collect(parted))[0] > 0
    apply(
        collect.root, [{"gpus": 0, "slots": [{"name": "a", "profile": "3g.20gb"}, {"name": "b", "profile": "2g.10gb"}]}]
    )
    assert drift(collect(parted)) == {0: 0.0}


def test_the_file_passes_promtool_and_node_exporter_reads_it(sim_host, collect, tmp_path):
    sim_host("A100-SXM4-40GB:mig=on")
    apply(collect.root, LAYOUT[:1])
    run = collect(settings(layout=LAYOUT[:1], slot_services={"chat": 'a "quoted" \\ name'}))
    assert run.of("gpu_mig_slot_info") and run.status == 0
    promtool = shutil.which("promtool")
    assert promtool, "promtool is required (Debian package prometheus)"
    check = subprocess.run([promtool, "check", "metrics"], input=run.text, capture_output=True, text=True, check=False)
    assert (check.returncode, check.stdout, check.stderr) == (0, "", "")
    exporter = shutil.which("prometheus-node-exporter")
    assert exporter, "node_exporter is required (Debian package prometheus-node-exporter)"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = [exporter, "--collector.disable-defaults", "--collector.textfile",
            f"--collector.textfile.directory={collect.root / Path(OUTPUT).parent.relative_to('/')}",
            f"--web.listen-address=127.0.0.1:{port}"]  # fmt: skip
    with subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as exporter_process:
        try:
            scraped = scrape(f"http://127.0.0.1:{port}/metrics", deadline=time.monotonic() + 20)
        finally:
            exporter_process.kill()
    assert "node_textfile_scrape_error 0" in scraped
    for (name, pairs), value in run.series.items():
        assert (name, pairs) in parse_scrape(scraped, name) and parse_scrape(scraped, name)[(name, pairs)] == value


def scrape(url: str, deadline: float) -> str:
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def parse_scrape(text: str, name: str) -> dict:
    return parse(
        "\n".join(line for line in text.splitlines() if line.startswith(name + "{") or line.startswith(name + " "))
    )


def test_a_lost_gpu_ends_as_success_0_naming_it(sim_host, collect):
    host = sim_host("A100-SXM4-40GB:mig=on", "H100-80GB:mig=on")
    apply(collect.root, LAYOUT)
    with host.edit() as state:
        state.live(1)["lost"] = True
    run = collect(settings(layout=LAYOUT))
    assert run.status == 1
    assert run.of("gpu_mig_collector_success") == {frozenset(): 0.0}
    assert [line for line in run.failed if line.startswith("GPU 1") and "GPU lost" in line and "reboot it" in line]
    assert run.of("gpu_mig_slot_present")[labels(slot="embed")] == 0.0
    assert run.of("gpu_mig_slot_present")[labels(slot="chat")] == 1.0
    assert [dict(key)["gpu_index"] for key in run.of("gpu_mig_mode_current")] == ["0"]


def test_every_problem_in_the_config_is_named_at_once(sim_host, collect):
    sim_host("A100-SXM4-40GB:mig=on")
    config = {"slot_map": "etc/slots.json", "slot_services": ["chat"], "layout": "chat",
              "mig_parted_config": {"version": "v1"}, "interval": 30}  # fmt: skip
    run = collect(config)
    assert run.status == 2
    for named in ("slot_map is 'etc/slots.json'", "slot_services is list ['chat']", "layout is 'chat'",
                  "unknown key 'interval'", "at most one of 'layout' and 'mig_parted_config'",
                  "'mig_parted_config' and 'mig_parted_config_name' go together"):  # fmt: skip
        assert [p for p in run.failed if named in p and p.endswith("rerun the gpu.mig.monitoring role")], named
    assert len(run.failed) == 6, run.failed
    assert parse(run.text) == {("gpu_mig_collector_success", frozenset()): 0.0, **last_run(run)}


def last_run(run: Run) -> dict:
    return {key: value for key, value in run.series.items() if key[0] == "gpu_mig_collector_last_run_timestamp_seconds"}


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"slot_map": "/etc/gpu-mig/slots.json",', f"cannot read {CONFIG}: "),
        ("[1, 2]", f"{CONFIG} holds a JSON list, not the collector's settings"),
        ('{"layout": []}', f"{CONFIG}: 'slot_map' is required; it must be an absolute path"),
    ],
)
def test_a_config_the_collector_cannot_read_exits_2(sim_host, collect, text, reason):
    sim_host("A100-SXM4-40GB:mig=on")
    run = collect(text)
    assert run.status == 2
    assert len(run.failed) == 1 and run.failed[0].startswith(reason), run.lines
    assert run.of("gpu_mig_collector_success") == {frozenset(): 0.0}


def test_a_collector_without_its_core_says_so_and_still_writes_the_textfile(tmp_path):
    """Run as the unit runs it, in a clean interpreter, with ``--lib-dir`` naming a directory that has no core."""
    script = REPO / "roles/monitoring/files/gpu_mig_metrics.py"
    argv = [sys.executable, "-I", script, "--lib-dir", tmp_path / "lib", "--output", OUTPUT, "--root", tmp_path]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert done.stderr == (
        f"{PREFIX}FAILED: cannot load the gpu.mig core from {tmp_path / 'lib'}: No module named 'ansible_collections';"
        " rerun the gpu.mig.monitoring role\n"
    )
    run = Run(2, [], (tmp_path / OUTPUT[1:]).read_text())
    assert set(run.series) == {("gpu_mig_collector_success", frozenset()), *last_run(run)}
    assert run.of("gpu_mig_collector_success") == {frozenset(): 0.0}


def test_a_corrupt_slot_map_fails_naming_it_and_the_rest_is_collected(sim_host, collect):
    sim_host("A100-SXM4-40GB:mig=on")
    (collect.root / SLOT_MAP[1:]).parent.mkdir(parents=True)
    (collect.root / SLOT_MAP[1:]).write_text('{"chat": 5}')
    run = collect(settings())
    assert run.status == 1
    assert run.failed[0].startswith(f"slot_map_file {collect.root}{SLOT_MAP}"), run.failed
    assert any("remove it to apply the layout without history" in line for line in run.failed)
    assert run.of("gpu_mig_mode_current") and run.of("gpu_mig_collector_success") == {frozenset(): 0.0}


def test_a_layout_the_planner_refuses_fails_naming_it(sim_host, collect):
    sim_host("A100-SXM4-40GB:mig=on")
    apply(collect.root, LAYOUT[:1])
    run = collect(settings(layout=[{"gpus": 0, "slots": [{"name": "chat", "profile": "3g.21gb"}]}]))
    assert run.status == 1
    assert any("3g.21gb" in line for line in run.failed) and run.failed[-1].endswith("refuses it as it is, too")
    assert run.of("gpu_mig_slot_present")[labels(slot="chat")] == 1.0
    assert not run.of("gpu_mig_layout_drift")


# A slot map as another tool might leave it: the core checks the keys the planner reads, not compute_instances.
HAND_WRITTEN = {
    "chat": {"gpu_index": 0, "gpu_uuid": "GPU-x", "profile": "3g.20gb", "placement": {"start": 4}, "mig_uuid": "MIG-x"},
    "odd": {"gpu_index": 0, "profile": "1g.5gb", "placement": {"start": 0}, "compute_instances": "MIG-y"},
}


@pytest.mark.parametrize(
    ("host", "fault", "named"),
    [
        ({"driver_state": "not_loaded"}, None, "the NVIDIA driver is not loaded"),
        ({}, "nvmlDeviceGetCount", "counting the GPUs failed: NVML reported an unknown error"),
    ],
    ids=["driver not loaded", "NVML fails on the host"],
)
def test_nvml_failing_on_the_host_leaves_every_slot_absent(sim_host, collect, host, fault, named):
    simulated = sim_host("A100-SXM4-40GB:mig=on", init=False, **host)
    if fault:
        simulated.fault(fault, simulated.pynvml.NVML_ERROR_UNKNOWN, times=5)
    (collect.root / SLOT_MAP[1:]).parent.mkdir(parents=True)
    (collect.root / SLOT_MAP[1:]).write_text(json.dumps(HAND_WRITTEN))
    run = collect(settings(layout=LAYOUT[:1]))
    assert run.status == 1 and len(run.failed) == 1 and named in run.failed[0], run.failed
    assert run.of("gpu_mig_slot_present") == {labels(slot=name): 0.0 for name in ("chat", "odd", "ocr", "rerank")}
    assert len(run.of("gpu_mig_slot_info")) == 2 and not run.of("gpu_mig_layout_drift")


def test_an_unwritable_textfile_directory_exits_2_naming_it(sim_host, collect, collector, capsys):
    sim_host("A100-SXM4-40GB:mig=on")
    collect(settings())
    (collect.root / "blocked").write_text("a file where the textfile directory should be")
    assert collector.main(["--config", CONFIG, "--output", "/blocked/gpu_mig.prom", "--root", str(collect.root)]) == 2
    assert "FAILED: cannot write /blocked/gpu_mig.prom: " in capsys.readouterr().err


def test_an_unexpected_exception_is_named_as_a_bug(sim_host, collect, monkeypatch):
    sim_host("A100-SXM4-40GB:mig=on")

    def broken(*_args, **_kwargs):
        raise KeyError("gpu_uuid")

    monkeypatch.setattr(_apply, "read_slot_map", broken)
    run = collect(settings())
    assert run.status == 1
    assert run.failed == ["unexpected KeyError: 'gpu_uuid' (a gpu.mig bug: please report it with these journal lines)"]
    assert run.of("gpu_mig_collector_success") == {frozenset(): 0.0}


# ------------------------------------------------------------------------------------------- the role's tasks
LIB = "usr/local/lib/gpu-mig"
PYTHON = "/opt/gpu-mig/venv/bin/python"
# Runs an entry script as __main__, then prints the files of the collection modules it imported.
TRACE = """
import json, runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    modules = [m for n, m in sys.modules.items() if n.startswith("ansible_collections.gpu.mig.")]
    print(json.dumps(sorted(m.__file__ for m in modules if m.__file__)))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory):
    """A simulated two-A100 host (instances on GPU 0, one busy) after tasks/collector.yml ran against its root."""
    base = tmp_path_factory.mktemp("collector") / "fleet"
    assert cli.main(["fleet", "--dir", str(base), "--hosts", "1", "--mix", "a100"]) == 0
    root = base / "sim00-a100"
    variables = {
        "monitoring_root": "{{ migsim_root }}",
        "monitoring_manage_systemd": False,
        "monitoring_desired_layout": [{"gpus": 0, "slots": [{"name": "chat", "profile": "4g.20gb"}]}],
        "monitoring_services": [{"name": "chat-llm", "slot": "chat"}],
        **REQUESTED_DEFAULTS,
    }
    play = [{"hosts": "all", "gather_facts": False, "vars": variables,
             "tasks": [{"ansible.builtin.include_role": {"name": "gpu.mig.monitoring", "tasks_from": "collector.yml"}}]}]  # fmt: skip
    (base / "play.json").write_text(json.dumps(play))
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": os.environ.get("ANSIBLE_COLLECTIONS_PATH", str(cli.COLLECTIONS)),
           "ANSIBLE_LOCAL_TEMP": str(base / "tmp"), "ANSIBLE_NOCOLOR": "1"}  # fmt: skip
    argv = [
        str(Path(sys.executable).parent / "ansible-playbook"),
        "-i",
        str(base / "inventory.yml"),
        base / "play.json",
    ]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, check=False)
        assert done.returncode == 0, done.stdout[-4000:]
        yield root
    finally:
        cli.main(["stop", str(base)])


# The variables tasks/collector.yml needs beyond the role's defaults so far, at the defaults asked for.
REQUESTED_DEFAULTS = {
    "monitoring_lib_dir": "/usr/local/lib/gpu-mig",
    "monitoring_python": PYTHON,
    "monitoring_collector_config": "/etc/gpu-mig/metrics.json",
    "monitoring_collector_textfile": "gpu_mig.prom",
    "monitoring_collector_unit": "gpu-mig-metrics",
    "monitoring_collector_timeout": 60,
    "monitoring_collector_after": ["gpu-mig-apply.service", "nvidia-persistenced.service"],
    "monitoring_mig_parted_config_file": "",
    "monitoring_mig_parted_config_name": "",
}


def test_the_installed_collector_runs_the_installed_core(installed):
    root = installed
    core = root / LIB / "ansible_collections/gpu/mig/plugins/module_utils/_mig"
    assert sorted(p.name for p in core.glob("*.py")) == sorted(
        p.name for p in (REPO / "plugins/module_utils/_mig").glob("*.py")
    )
    config = json.loads((root / "etc/gpu-mig/metrics.json").read_text())
    assert config["slot_services"] == {"chat": "chat-llm"} and config["mig_parted_config"] is None
    run = subprocess.run([root / "python", "-c", TRACE, root / LIB / "gpu-mig-metrics", "--root", root],
                         capture_output=True, text=True, check=False)  # fmt: skip
    assert run.returncode == 0 and run.stderr == "", run.stderr
    loaded = [Path(f).resolve() for f in json.loads(run.stdout.splitlines()[-1])]
    assert core.resolve() / "nvml.py" in loaded and all(path.parent == core.resolve() for path in loaded), loaded
    text = (root / "var/lib/prometheus/node-exporter/gpu_mig.prom").read_text()
    assert "gpu_mig_collector_success 1" in text
    assert re.search(r'^gpu_mig_layout_drift\{gpu_index="0",gpu_uuid="GPU-[^"]+"\} [1-9]', text, re.MULTILINE), text


def test_the_units_pass_systemd_analyze_verify(installed, tmp_path):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is required (Debian package systemd)"
    fake = tmp_path / "fakeroot"
    shutil.copytree("/lib/systemd/system", fake / "usr/lib/systemd/system", symlinks=True)
    shutil.copytree(installed / "etc/systemd/system", fake / "etc/systemd/system")
    for stub in (fake / PYTHON[1:], fake / LIB / "gpu-mig-metrics"):
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text("#!/bin/sh\n")
        stub.chmod(0o755)
    (fake / "var/lib/prometheus/node-exporter").mkdir(parents=True)
    units = ["gpu-mig-metrics.service", "gpu-mig-metrics.timer"]
    assert sorted(p.name for p in (fake / "etc/systemd/system").iterdir()) == units
    verify = subprocess.run([analyze, "verify", f"--root={fake}", *units], capture_output=True, text=True, check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    problems = [line for line in verify.stderr.splitlines() if "gpu-mig-metrics" in line]
    assert problems == [], problems
