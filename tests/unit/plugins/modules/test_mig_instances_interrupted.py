# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A run killed mid-apply (SIGKILL, power loss: no rollback runs) is converged by the next run, with no orphans.

Each NVML create or destroy is atomic, so a killed run leaves the host after some prefix of its plan. For every
prefix of real plans, the next run of the module and of the boot applier converges to exactly the layout: every slot
with exactly its compute instances, no GPU instance that no slot asks for, no GPU instance without compute instances.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ansible_collections.gpu.mig.plugins.module_utils._mig import apply as _apply
from ansible_collections.gpu.mig.plugins.module_utils._mig import nvml as _nvml
from ansible_collections.gpu.mig.plugins.modules import mig_instances

REPO = Path(__file__).resolve().parents[4]
# (simulated GPU, starting instances, desired slots): each plan destroys, creates GIs and creates CIs.
CASES = {
    "a100 reslice": (
        "A100-SXM4-40GB:mig=on",
        ["0:3g.20gb@4", "0:2g.10gb@0", "0:1g.5gb@2"],
        [
            {"name": "chat", "profile": "4g.20gb"},
            {"name": "ocr", "profile": "2g.10gb", "compute_instances": ["1c.2g.10gb", "1c.2g.10gb"]},
            {"name": "tiny", "profile": "1g.5gb"},
        ],
    ),
    "h100 split and grow": (
        "H100-80GB:mig=on",
        ["0:3g.40gb@0", "0:1g.10gb@5", "0:1g.10gb@6"],
        [
            {"name": "chat", "profile": "3g.40gb", "compute_instances": ["2c.3g.40gb", "1c.3g.40gb"]},
            {"name": "cls", "profile": "2g.20gb"},
            {"name": "ocr", "profile": "1g.10gb"},
        ],
    ),
}


def assert_converged(facts: list[dict], slots: list[dict]) -> None:
    """GPU 0 holds exactly the slots' GPU instances, each with exactly its compute instances: no orphans."""
    gpu = facts[0]
    want = sorted((s["profile"], sorted(s.get("compute_instances") or [s["profile"]])) for s in slots)
    have = sorted((gi["profile"], sorted(c["profile"] for c in gi["compute_instances"])) for gi in gpu["gpu_instances"])
    assert have == want


def plan_of(spec: tuple) -> tuple:
    with _nvml.Nvml() as nvml:
        return _apply.read_host(nvml), [{"gpus": 0, "slots": spec[2]}]


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_prefix_of_a_killed_run_is_converged_by_the_next_run(sim_host, run_module, case):
    model, instances, slots = CASES[case]
    sim_host(model, instances=instances, init=False)
    host, layout = plan_of(CASES[case])
    plan = _apply._layout.plan_layout(layout, host[1], host[2])
    ops = {a.op for a in plan.actions}
    assert {"destroy_gi", "create_gi", "create_ci"} <= ops, ops  # the case exercises every kind of step
    for killed_after in range(len(plan.actions)):
        sim_host(model, instances=instances, init=False)
        with _nvml.Nvml() as nvml:  # the killed run: the first steps happened, nothing after, no rollback
            _apply._execute(nvml, plan._replace(actions=plan.actions[:killed_after]), {})
        result, failed = run_module(mig_instances, {"layout": layout})
        assert not failed, (killed_after, result.get("msg"))
        assert_converged(result["ansible_facts"]["nvidia_mig"]["gpus"], slots)
        again, _unused = run_module(mig_instances, {"layout": layout})
        assert again["changed"] is False and again["slots"] == result["slots"], killed_after


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {simulator!r})
    import pynvml, nvmlsim
    nvmlsim.install(pynvml, {root!r})
    from ansible_collections.gpu.mig.plugins.module_utils._mig import apply as _apply, nvml as _nvml
    create = _nvml.Nvml.create_compute_instance
    calls = []

    def create_then_die(self, *args):
        calls.append(args)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return create(self, *args)

    _nvml.Nvml.create_compute_instance = create_then_die
    with _nvml.Nvml() as nvml:
        _apply.apply_layout(nvml, {layout!r})
    """
)


def load_applier():
    path = REPO / "roles/mig_persist/files/gpu_mig_apply.py"
    spec = importlib.util.spec_from_file_location("gpu_mig_apply", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("converge_with", ["module", "boot applier"])
def test_a_run_killed_by_sigkill_is_converged_by_the_module_and_by_the_boot_applier(
    sim_host, run_module, tmp_path, converge_with
):
    model, instances, slots = CASES["h100 split and grow"]
    host = sim_host(model, instances=instances, init=False)
    layout = [{"gpus": 0, "slots": slots}]
    script = KILLER.format(simulator=str(REPO / "tests/simulator"), root=str(host.root), layout=layout)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}  # the collection as this process imports it
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=False)
    assert killed.returncode == -9, killed.stderr
    with _nvml.Nvml() as nvml:  # killed between two compute-instance creates: a half-built slot is left behind
        half = _apply.read_host(nvml)[0]
    assert any(len(gi["compute_instances"]) < 2 for gi in half[0]["gpu_instances"] if gi["profile"] == "3g.40gb")
    if converge_with == "module":
        result, failed = run_module(mig_instances, {"layout": layout})
        assert not failed, result.get("msg")
        facts = result["ansible_facts"]["nvidia_mig"]["gpus"]
    else:
        config = {
            "layout": layout,
            "slot_map": "/slots.json",
            "env_dir": "/env",
            "cdi": "never",
        }
        (tmp_path / "applier.json").write_text(json.dumps(config))
        assert load_applier().main(["--config", "/applier.json", "--root", str(tmp_path)]) == 0
        with _nvml.Nvml() as nvml:
            facts = _apply.read_host(nvml)[0]
        written = json.loads((tmp_path / "slots.json").read_text())
        assert sorted(written) == sorted(s["name"] for s in slots)
        assert all(slot["mig_uuid"].startswith("MIG-") for slot in written.values())
    assert_converged(facts, slots)
