# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Round trip: facts -> mig-parted export -> import (``_migparted.layout_from_mig_parted``) -> plan is a no-op on the
same host, for random layouts (GPU instances with random compute-instance splits, MIG off, MIG on and empty) applied
on simulated hosts of every catalog model, each with two GPUs of the model and one without MIG."""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import pynvml
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nvmlsim
from ansible_collections.gpu.mig.plugins.module_utils._mig import apply as _apply
from ansible_collections.gpu.mig.plugins.module_utils._mig import catalog as _catalog
from ansible_collections.gpu.mig.plugins.module_utils._mig import layout as _layout
from ansible_collections.gpu.mig.plugins.module_utils._mig import migparted as _migparted
from ansible_collections.gpu.mig.plugins.module_utils._mig import nvml as _nvml
from ansible_collections.gpu.mig.plugins.plugin_utils import mig_parted_export as _export
from nvmlsim.testing import make_sim_host

MODELS = sorted(_catalog.all_models())
MIG_GPUS = (0, 1)  # GPU 2 of every host is an L4: no MIG
SETTINGS = settings(
    max_examples=540, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)


@pytest.fixture(scope="module")
def hosts():
    """One simulated host per catalog model, reused: each example applies its layout over the last one's."""
    with tempfile.TemporaryDirectory() as tmp:
        roots = {}
        for number, model in enumerate(MODELS):
            host = make_sim_host(Path(tmp) / f"h{number}", f"{model}:mig=on", f"{model}:mig=on", "L4", init=False)
            roots[model] = host.root
        yield roots
    nvmlsim.uninstall(pynvml)


def random_slots(rng: random.Random, model: _catalog.GpuModel, gpu: int) -> list[dict]:
    """0-5 GPU instances; each with its whole compute instance or a split of 1-3 compute instances that fits."""
    slots = []
    for number in range(rng.randint(0, 5)):
        profile = rng.choice(model.profiles)
        slot = {"name": f"g{gpu}s{number}", "profile": profile.name}
        if profile.compute_profiles and rng.random() < 0.5:
            split, free = [], profile.compute_slices
            for _unused in range(rng.randint(1, 3)):
                fits = [c for c in profile.compute_profiles if c.slice_count <= free]
                fits = [c for c in fits if sum(1 for s in split if s == c.name) < c.max_instances]
                if not fits:
                    break
                pick = rng.choice(fits)
                split.append(pick.name)
                free -= pick.slice_count
            slot["compute_instances"] = split
        slots.append(slot)
    return slots


def random_layout(rng: random.Random, model: _catalog.GpuModel) -> list[dict]:
    layout = []
    for gpu in MIG_GPUS:
        kind = rng.choice(("off", "empty", "slots", "slots", "slots"))
        if kind == "off":
            layout.append({"gpus": gpu, "mig_enabled": False})
        else:
            layout.append({"gpus": gpu, "slots": random_slots(rng, model, gpu) if kind == "slots" else []})
    return layout


def apply_what_fits(nvml: _nvml.Nvml, layout: list[dict]) -> None:
    """Apply ``layout``, dropping last slots until the GPUs hold it."""
    while True:
        try:
            _apply.apply_layout(nvml, layout)
            return
        except (_layout.LayoutError, _apply.ApplyError):
            fuller = max(layout, key=lambda e: len(e.get("slots", ())))
            assert fuller.get("slots"), "a layout without slots must apply"
            fuller["slots"].pop()


def add_empty_gpu_instance(nvml: _nvml.Nvml, rng: random.Random) -> bool:
    """A GPU instance with no compute instance on a MIG GPU, where one fits; True when created."""
    gpu = rng.choice(MIG_GPUS)
    if not nvml.mig_mode(gpu)["current"]:
        return False
    for profile in rng.sample(nvml.profiles(gpu), k=len(nvml.profiles(gpu))):
        try:
            pynvml.nvmlDeviceCreateGpuInstance(nvml.handle(gpu), profile["id"])
            return True
        except pynvml.NVMLError:
            continue
    return False


@SETTINGS
@given(model=st.sampled_from(MODELS), seed=st.integers(0, 2**32 - 1), empty_gi=st.integers(0, 9))
def test_exported_facts_import_as_a_no_op_on_the_same_host(hosts, model, seed, empty_gi):
    rng = random.Random(seed)
    nvmlsim.install(pynvml, hosts[model])
    with _nvml.Nvml() as nvml:
        apply_what_fits(nvml, random_layout(rng, _catalog.find_model(model)))
        has_empty_gi = empty_gi == 0 and add_empty_gpu_instance(nvml, rng)
    facts = _nvml.gather()
    export = _export.export_fleet({"host": facts})
    if has_empty_gi:  # mig-parted cannot express it: said so, never dropped silently
        assert len(export["warnings"]) == 1 and "holds no compute instance" in export["warnings"][0]
        return
    assert export["warnings"] == []
    config = _export.yaml.safe_load(export["text"])  # what a reader of the written file gets
    assert _migparted.check_config(config) == []
    _facts, states, models = _apply.host_from_facts(facts["gpus"])
    imported = _migparted.layout_from_mig_parted(config, export["hosts"]["host"], states, models)
    assert (imported.skipped, imported.warnings) == ([], [])
    plan = _layout.plan_layout(imported.entries, states, models)
    assert plan.actions == (), plan.to_dict()
    assert sorted(g.index for g in plan.gpus) == list(MIG_GPUS)  # the config names both MIG GPUs
