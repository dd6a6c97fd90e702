# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Property tests of the apply path against the simulated NVML: random starting layouts, random desired layouts.

Starting instances and desired slots have random compute-instance splits. For a feasible layout: check mode changes
nothing and predicts exactly the plan and the slot map (MIG UUIDs included) that the real run returns, planning
on the controller from gathered facts (the action plugin) gives the same result, the real run converges, a second
run is a no-op, slots that matched an existing instance keep its MIG UUID, and with the slot map just applied the
slots in reverse order change nothing (each keeps its MIG UUIDs). After a reboot (every instance gone), the slot map
brings each slot back where it was.
For an infeasible or invalid layout: the error comes before any change, the host state byte-for-byte unchanged.
"""

from __future__ import annotations

import contextlib
import itertools
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
from ansible_collections.gpu.mig.plugins.module_utils._mig import nvml as _nvml
from ansible_collections.gpu.mig.tests.unit.plugins.module_utils._mig.slot_prediction import assert_predicted
from nvmlsim import models
from nvmlsim.testing import make_sim_host

MODELS = {
    "A100-SXM4-40GB": ["1g.5gb", "1g.10gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb", "1g.5gb+me"],
    "H100-80GB": ["1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"],
}
HOST_NUMBERS = itertools.count()
SETTINGS = settings(
    max_examples=1000, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)


@pytest.fixture(scope="module")
def workdir():
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)
    nvmlsim.uninstall(pynvml)


def compute_profiles(model: str, profile: str) -> list[_catalog.ComputeProfile]:
    return list(models.lookup(model).profile(profile).compute_profiles)


@st.composite
def splits(draw, model: str, profile: str) -> list[str] | None:
    """None (the default compute instance) or 1-3 compute-instance profiles of ``profile``; they may not fit."""
    if draw(st.booleans()):
        return None
    return draw(st.lists(st.sampled_from([c.name for c in compute_profiles(model, profile)]), min_size=1, max_size=3))


@st.composite
def cases(draw):
    """(model, starting (GI profile, CI split), desired slots) — the desired slots may or may not fit."""
    model = draw(st.sampled_from(sorted(MODELS)))
    profiles = MODELS[model]
    start = [(p, draw(splits(model, p))) for p in draw(st.lists(st.sampled_from(profiles), max_size=5))]
    slots = []
    for i, profile in enumerate(draw(st.lists(st.sampled_from(profiles), min_size=0, max_size=5))):
        slot = {"name": f"s{i}", "profile": profile}
        split = draw(splits(model, profile))
        if split is not None:
            slot["compute_instances"] = split
        slots.append(slot)
    return model, start, slots


def host_for(workdir: Path, model: str, start: list[tuple[str, list[str] | None]]):
    """A fresh simulated host with as many of ``start`` created (driver default placement) as fit, each GI with as
    many of its compute instances (the default one when None) as fit."""
    host = make_sim_host(workdir / f"h{next(HOST_NUMBERS)}", f"{model}:mig=on")
    for profile, split in start:
        with _nvml.Nvml() as nvml:
            info = next(p for p in nvml.profiles(0) if p["name"] == profile)
            try:
                gi = pynvml.nvmlDeviceCreateGpuInstance(nvml.handle(0), info["id"])
            except pynvml.NVMLError_InsufficientResources:
                continue
            gi_id = pynvml.nvmlGpuInstanceGetInfo(gi).id
            cis = compute_profiles(model, profile)
            for name in split or [next(c.name for c in cis if c.default)]:
                with contextlib.suppress(_nvml.NvmlError):
                    nvml.create_compute_instance(0, gi_id, next(c.id for c in cis if c.name == name))
    return host


def snapshot(root: Path) -> dict:
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*.json"))}


def uuids_by_placement(facts: list[dict]) -> dict:
    return {
        (gi["profile"], gi["placement"]["start"]): [c["uuid"] for c in gi["compute_instances"]]
        for gi in facts[0]["gpu_instances"]
    }


@SETTINGS
@given(case=cases())
def test_check_mode_predicts_the_real_run_which_converges(workdir, case):
    model, start, slots = case
    host = host_for(workdir, model, start)
    layout = [{"gpus": 0, "slots": slots}]
    before = snapshot(host.root)
    on_controller = _apply.host_from_facts(_nvml.gather()["gpus"])  # what the action plugin plans from
    with _nvml.Nvml() as nvml:
        try:
            checked = _apply.apply_layout(nvml, layout, check_mode=True)
        except _layout.LayoutError:
            with pytest.raises(_layout.LayoutError):
                _apply.apply_layout(None, layout, check_mode=True, host=on_controller)
            with pytest.raises(_layout.LayoutError):
                _apply.apply_layout(nvml, layout)
            assert snapshot(host.root) == before
            return
        assert snapshot(host.root) == before
        assert _apply.apply_layout(None, layout, check_mode=True, host=on_controller) == checked
        old = uuids_by_placement(checked["facts"])
        real = _apply.apply_layout(nvml, layout)
        assert real["plan"] == checked["plan"] and real["changed"] == checked["changed"]
        assert_predicted(checked["slots"], real["slots"], {u for cis in old.values() for u in cis})
        assert sorted(s["profile"] for s in real["slots"].values()) == sorted(s["profile"] for s in slots)
        for name, slot in real["slots"].items():
            assert all(c["mig_uuid"].startswith("MIG-") for c in slot["compute_instances"])
            want = next(s for s in slots if s["name"] == name).get("compute_instances")
            assert [c["profile"] for c in slot["compute_instances"]] == (want or [slot["profile"]])
        for name, slot in checked["slots"].items():
            kept = [c["mig_uuid"] for c in slot["compute_instances"] if c["mig_uuid"] is not None]
            assert set(kept) <= set(old.get((slot["profile"], slot["placement"]["start"]), ())), name
        again = _apply.apply_layout(nvml, layout)
        assert again["changed"] is False and again["slots"] == real["slots"]
        # With the slot map just applied, a reorder changes nothing and every slot keeps its instances and MIG UUIDs.
        reordered = [{"gpus": 0, "slots": slots[::-1]}]
        kept = _apply.apply_layout(nvml, reordered, check_mode=True, previous_slots=real["slots"])
        assert kept["changed"] is False and kept["slots"] == real["slots"]


@settings(max_examples=120, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(case=cases())
def test_after_a_reboot_the_slot_map_recreates_every_slot_where_it_was(workdir, case):
    model, start, slots = case
    host = host_for(workdir, model, start)
    layout = [{"gpus": 0, "slots": slots[::-1]}]  # applied in another order than written after the reboot
    with _nvml.Nvml() as nvml:
        try:
            applied = _apply.apply_layout(nvml, layout)
        except _layout.LayoutError:
            return
    host.reboot()
    with _nvml.Nvml() as nvml:
        again = _apply.apply_layout(nvml, [{"gpus": 0, "slots": slots}], previous_slots=applied["slots"])
    where = {name: (slot["profile"], slot["placement"]) for name, slot in applied["slots"].items()}
    assert {name: (slot["profile"], slot["placement"]) for name, slot in again["slots"].items()} == where
