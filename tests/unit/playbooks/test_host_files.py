# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The collection code the roles put on a host: mig_persist owns plugins/module_utils (the _mig package),
inference_service owns plugins/plugin_utils (the service code), both under the lib dir in the collection's layout.

A simulated host carries what an older gpu.mig left there (a flat module_utils, a module the package no longer ships,
their bytecode). After the roles run, exactly the declared files are there, a second run changes nothing, and the boot
applier and the units' start hook run from the installed copy, never from a checkout that happens to be importable.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nvmlsim import cli

REPO = Path(__file__).resolve().parents[3]
LIB = "usr/local/lib/gpu-mig"
PLUGINS = f"{LIB}/ansible_collections/gpu/mig/plugins"
CORE = sorted(p.name for p in (REPO / "plugins/module_utils/_mig").glob("*.py"))
# An older gpu.mig's module_utils (one flat folder), its bytecode, and a core module a later version dropped.
STALE = [
    *(f"module_utils/_{name}.py" for name in ("apply", "catalog", "catalog_data", "layout", "mode", "nvml", "select")),
    "module_utils/_services.py",
    "module_utils/__pycache__/_apply.cpython-311.pyc",
    "module_utils/_mig/dropped.py",
]
LAYOUT = [{"gpus": 0, "slots": [{"name": "chat", "profile": "2g.12gb"}, {"name": "ocr", "profile": "1g.6gb"}]}]
SERVICES = [
    {"name": "chat", "slot": "chat", "server": "triton", "command": ["/opt/tritonserver/bin/tritonserver"],
     "port": 8000, "backend_port": 18000, "model": {"name": "resnet", "dir": "/srv/models", "weights_mib": 2000}},
]  # fmt: skip
# Runs an entry script as __main__ and prints, last, the files of the collection modules it imported.
TRACE = """
import json, runpy, sys
script = sys.argv.pop(1)
sys.argv[0] = script
try:
    runpy.run_path(script, run_name="__main__")
finally:
    names = [m.__file__ for n, m in sys.modules.items() if n.startswith("ansible_collections.gpu.mig.")]
    print("LOADED " + json.dumps(sorted(f for f in names if f)))
"""


def play(host: Path, role: str, **extra) -> subprocess.CompletedProcess:
    """Run one role on the simulated host (files under its root, no systemd, no users)."""
    playbook = host.parent / f"{role}.json"
    variables = {
        "gpu_mig_root": "{{ migsim_root }}",
        "gpu_mig_manage_systemd": False,
        "mig_persist_layout": LAYOUT,
        "inference_service_manage_users": False,
        "inference_service_specs": SERVICES,
        **extra,
    }
    playbook.write_text(json.dumps([{"hosts": "all", "gather_facts": False, "vars": variables, "roles": [role]}]))
    env = {
        **os.environ,
        "ANSIBLE_COLLECTIONS_PATH": os.environ.get("ANSIBLE_COLLECTIONS_PATH", str(cli.COLLECTIONS)),
        "ANSIBLE_LOCAL_TEMP": str(host.parent / "tmp"),
        "ANSIBLE_NOCOLOR": "1",
    }
    argv = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(host.parent / "inventory.yml"), playbook]
    run = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert run.returncode == 0, run.stdout[-4000:]
    return run


def changed(run: subprocess.CompletedProcess) -> int:
    """The PLAY RECAP's changed count of the (only) host."""
    return int(re.search(r"^sim\S+\s+:.*\bchanged=(\d+)", run.stdout, re.MULTILINE).group(1))


def traced(python: Path | str, script: Path, *args: str | Path) -> tuple[subprocess.CompletedProcess, list[Path]]:
    """Run an installed entry script; also return the files of the collection modules it imported."""
    run = subprocess.run([python, "-c", TRACE, script, *args], capture_output=True, text=True, check=False)
    loaded = [line for line in run.stdout.splitlines() if line.startswith("LOADED ")]
    assert loaded, run.stderr
    return run, [Path(f).resolve() for f in json.loads(loaded[-1].removeprefix("LOADED "))]


def plant_stale_files(root: Path) -> None:
    for name in STALE:
        path = root / PLUGINS / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text('raise ImportError("left by an older gpu.mig")\n')


def listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory):
    """A simulated A30 host upgraded from an older gpu.mig: mig_persist, a boot (the applier), inference_service."""
    base = tmp_path_factory.mktemp("hostfiles") / "fleet"
    assert cli.main(["fleet", "--dir", str(base), "--hosts", "1", "--mix", "a30"]) == 0
    root = base / "sim00-a30"
    plant_stale_files(root)
    try:
        play(root, "gpu.mig.mig_persist")
        boot = traced(root / "python", root / LIB / "gpu-mig-apply", "--root", root)
        play(root, "gpu.mig.inference_service")
        yield root, boot
    finally:
        cli.main(["stop", str(base)])


def test_the_declared_files_replace_an_older_layout(host):
    root = host[0]
    plugins = root / PLUGINS
    assert listing(plugins / "module_utils") == {"_mig", *(f"_mig/{name}" for name in CORE)}
    for name in CORE:
        assert (plugins / "module_utils/_mig" / name).read_bytes() == (
            REPO / "plugins/module_utils/_mig" / name
        ).read_bytes()
    assert not (plugins / "module_utils/__pycache__").exists()
    assert listing(plugins / "plugin_utils") == {"__init__.py", "services.py"}


def test_second_run_changes_nothing(host):
    root = host[0]
    assert changed(play(root, "gpu.mig.mig_persist")) == 0
    assert changed(play(root, "gpu.mig.inference_service")) == 0


def test_boot_applier_runs_the_installed_core(host):
    root, (run, loaded) = host
    assert run.returncode == 0 and "gpu-mig-apply: done" in run.stderr, run.stderr
    core = (root / PLUGINS / "module_utils/_mig").resolve()
    assert core / "apply.py" in loaded and core / "nvml.py" in loaded
    assert all(path.parent == core for path in loaded), loaded
    assert sorted(json.loads((root / "etc/gpu-mig/slots.json").read_text())) == ["chat", "ocr"]


def test_start_hook_runs_the_installed_service_code(host, tmp_path):
    root = host[0]
    stamp = tmp_path / "chat.mig_uuid"
    slot_map = root / "etc/gpu-mig/slots.json"
    run, loaded = traced(
        sys.executable, root / LIB / "slot_start.py", "--unit", "inference-chat.service", "--slot", "chat",
        "--slot-map", slot_map, "--no-devices", "--stamp", stamp,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert stamp.read_text() == json.loads(slot_map.read_text())["chat"]["mig_uuid"] + "\n"
    code = (root / PLUGINS / "plugin_utils").resolve()
    assert code / "services.py" in loaded
    assert all(path.parent == code for path in loaded), loaded


def test_lib_dir_spelled_with_a_trailing_slash_keeps_the_core(tmp_path):
    base = tmp_path / "fleet"
    assert cli.main(["fleet", "--dir", str(base), "--hosts", "1", "--mix", "a30"]) == 0
    root = base / "sim00-a30"
    try:
        play(root, "gpu.mig.mig_persist", mig_persist_lib_dir=f"/{LIB}/")
        assert listing(root / PLUGINS / "module_utils") == {"_mig", *(f"_mig/{name}" for name in CORE)}
        assert changed(play(root, "gpu.mig.mig_persist", mig_persist_lib_dir=f"/{LIB}/")) == 0
    finally:
        cli.main(["stop", str(base)])
