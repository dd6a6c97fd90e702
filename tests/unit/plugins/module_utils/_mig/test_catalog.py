# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Tests for the shipped MIG profile catalog and its generator."""

from __future__ import annotations

import ast
import copy
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ansible_collections.gpu.mig.plugins.module_utils._mig import catalog as _catalog

ROOT = Path(__file__).resolve().parents[5]
GENERATOR = ROOT / "hacking" / "gen_catalog_data.py"
REFERENCE = ROOT / "docs" / "reference" / "mig-profiles.json"

ALL_PROFILES = [(m, p) for m in _catalog.all_models().values() for p in m.profiles]
PROFILE_IDS = [f"{m.name}:{p.name}" for m, p in ALL_PROFILES]


@pytest.fixture(scope="module")
def generator():
    spec = importlib.util.spec_from_file_location("gen_catalog_data", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def reference():
    return json.loads(REFERENCE.read_text(encoding="utf-8"))


def _max_disjoint(starts, size):
    """Most instances that fit at once: greedy interval scheduling by end."""
    count, free_from = 0, -1
    for start in sorted(starts):
        if start >= free_from:
            count, free_from = count + 1, start + size
    return count


def test_shipped_models():
    assert set(_catalog.all_models()) == {
        "NVIDIA A100-SXM4-40GB",
        "NVIDIA A100-SXM4-80GB",
        "NVIDIA A30",
        "NVIDIA H100 80GB HBM3",
        "NVIDIA H100 PCIe",
        "NVIDIA H100 NVL",
        "NVIDIA H200",
        "NVIDIA GH200 480GB",
        "NVIDIA B200",
    }
    for name, model in _catalog.all_models().items():
        assert model.name == name
        assert isinstance(model.profiles[0], _catalog.GpuInstanceProfile)


def test_a100_40gb_table():
    model = _catalog.all_models()["NVIDIA A100-SXM4-40GB"]
    assert [p.id for p in model.profiles] == [19, 20, 15, 14, 9, 5, 0]
    assert [p.name for p in model.profiles] == [
        "1g.5gb",
        "1g.5gb+me",
        "1g.10gb",
        "2g.10gb",
        "3g.20gb",
        "4g.20gb",
        "7g.40gb",
    ]
    assert [p.nvml_index for p in model.profiles] == [0, 7, 9, 1, 2, 3, 4]
    assert [p.max_instances for p in model.profiles] == [7, 1, 4, 3, 2, 1, 1]
    one_g = model.profile("1g.10gb")
    assert (one_g.placement_starts, one_g.placement_size) == ((0, 2, 4, 6), 2)
    three_g = model.profile("3g.20gb")
    assert (three_g.placement_starts, three_g.placement_size) == ((0, 4), 4)
    assert three_g.occupies(4) == frozenset({4, 5, 6, 7})
    assert (three_g.sm_count, three_g.copy_engines, three_g.decoders) == (42, 3, 2)
    assert [(c.id, c.name, c.max_instances) for c in three_g.compute_profiles] == [
        (0, "1c.3g.20gb", 3),
        (1, "2c.3g.20gb", 1),
        (2, "3g.20gb", 1),
    ]
    assert model.profile("2g.10gb").memory_mib == 9984  # nvidia-smi MIG devices table, driver 580.126.09
    assert model.profile("7g.40gb").placement_starts == (0,)
    assert model.mig_enable_requires_reset and model.mig_mode_persists_reboot
    assert model.compute_capability == (8, 0)
    assert model.architecture == "ampere"


def test_a30_uses_its_own_ids():
    model = _catalog.all_models()["NVIDIA A30"]
    assert [(p.name, p.id) for p in model.profiles] == [
        ("1g.6gb", 14),
        ("1g.6gb+me", 21),
        ("2g.12gb", 5),
        ("2g.12gb+me", 6),
        ("4g.24gb", 0),
    ]
    assert model.memory_slices == 4
    assert model.profile("2g.12gb").placement_starts == (0, 2)


@pytest.mark.parametrize(
    ("name", "driver", "arch", "reset"),
    [
        ("NVIDIA A100-SXM4-40GB", "450.80.02", "ampere", True),
        ("NVIDIA A100-SXM4-80GB", "450.80.02", "ampere", True),
        ("NVIDIA A30", "460.73.01", "ampere", True),
        ("NVIDIA H100 80GB HBM3", "525.85.12", "hopper", False),
        ("NVIDIA H100 PCIe", "525.85.12", "hopper", False),
        ("NVIDIA H100 NVL", "525.85.12", "hopper", False),
        ("NVIDIA H200", "550.90.07", "hopper", False),
        ("NVIDIA GH200 480GB", "550.90.07", "hopper", False),
        ("NVIDIA B200", "570.133.20", "blackwell", False),
    ],
)
def test_generation_behaviour(name, driver, arch, reset):
    model = _catalog.all_models()[name]
    assert (model.min_driver, model.architecture) == (driver, arch)
    assert model.mig_enable_requires_reset is reset
    assert model.mig_mode_persists_reboot is reset


@pytest.mark.parametrize(("model", "prof"), ALL_PROFILES, ids=PROFILE_IDS)
def test_placements_fit(model, prof):
    assert prof.placement_starts == tuple(sorted(set(prof.placement_starts)))
    assert prof.placement_size == prof.memory_slices
    assert all(s >= 0 and s + prof.placement_size <= model.memory_slices for s in prof.placement_starts)
    assert 1 <= prof.max_instances <= _max_disjoint(prof.placement_starts, prof.placement_size)
    assert prof.max_instances <= model.max_gpu_instances
    assert prof.compute_slices <= model.compute_slices
    assert 0 < prof.memory_mib <= model.memory_mib


@pytest.mark.parametrize(("model", "prof"), ALL_PROFILES, ids=PROFILE_IDS)
def test_compute_profiles(model, prof):
    defaults = [c for c in prof.compute_profiles if c.default]
    assert len(defaults) == 1
    (default,) = defaults
    assert (default.name, default.slice_count, default.sm_count) == (prof.name, prof.compute_slices, prof.sm_count)
    assert default.max_instances == 1
    assert len({c.id for c in prof.compute_profiles}) == len(prof.compute_profiles)
    for ci in prof.compute_profiles:
        assert ci.slice_count * ci.max_instances <= prof.compute_slices
        assert 0 < ci.sm_count <= prof.sm_count
        if not ci.default:
            assert ci.name == f"{ci.slice_count}c.{prof.name}"


@pytest.mark.parametrize("model", list(_catalog.all_models().values()), ids=list(_catalog.all_models()))
def test_model_consistency(model):
    assert len({p.id for p in model.profiles}) == len(model.profiles)
    assert len({p.name for p in model.profiles}) == len(model.profiles)
    assert max(p.memory_slices for p in model.profiles) == model.memory_slices
    assert max(p.compute_slices for p in model.profiles) == model.compute_slices
    assert all(pci.startswith("0x") and len(pci) == 10 for pci in model.pci_device_ids)
    assert model.notes


@pytest.mark.parametrize(
    ("name", "donor"),
    [
        ("NVIDIA A100-SXM4-80GB", "NVIDIA A100-SXM4-40GB"),
        ("NVIDIA H100 PCIe", "NVIDIA H100 80GB HBM3"),
        ("NVIDIA H200", "NVIDIA H100 80GB HBM3"),
        ("NVIDIA GH200 480GB", "NVIDIA H100 80GB HBM3"),
        ("NVIDIA B200", "NVIDIA A100-SXM4-40GB"),
        ("NVIDIA A100-SXM4-40GB", None),
        ("NVIDIA A30", None),
        ("NVIDIA H100 80GB HBM3", None),
        ("NVIDIA H100 NVL", None),
    ],
)
def test_borrowed_placements_are_noted(name, donor):
    model = _catalog.all_models()[name]
    for prof in model.profiles:
        note = prof.note or ""
        if donor:
            assert f"placements taken from {donor}" in note
            assert prof.placement_starts == model_profile_at(donor, prof.nvml_index).placement_starts
        else:
            assert "placements taken from" not in note


def model_profile_at(name, nvml_index):
    return next(p for p in _catalog.all_models()[name].profiles if p.nvml_index == nvml_index)


@pytest.mark.parametrize(
    ("product", "expected"),
    [
        ("NVIDIA A100-SXM4-40GB", "NVIDIA A100-SXM4-40GB"),
        ("A100-SXM4-40GB", "NVIDIA A100-SXM4-40GB"),
        ("NVIDIA A100-PCIE-40GB", "NVIDIA A100-SXM4-40GB"),
        ("NVIDIA A100 80GB PCIe", "NVIDIA A100-SXM4-80GB"),
        ("A30", "NVIDIA A30"),
        ("NVIDIA H100 NVL", "NVIDIA H100 NVL"),
        ("NVIDIA GeForce RTX 4090", None),
        ("", None),
    ],
)
def test_find_model(product, expected):
    model = _catalog.find_model(product)
    assert (model.name if model else None) == expected


def test_profile_lookup():
    model = _catalog.all_models()["NVIDIA H100 80GB HBM3"]
    by_name = model.profile("3g.40gb")
    assert by_name.id == 9
    assert model.profile(9) is by_name
    assert model.profile("9") is by_name
    assert model.profile(0).name == "7g.80gb"
    assert model.profile("1g.10gb+me").id == 20
    assert model.profile("3g.20gb") is None
    assert model.profile(42) is None
    assert model.profile("42") is None


@pytest.mark.parametrize(
    ("version", "minimum", "expected"),
    [
        ("535.104.05", "525.85.12", True),
        ("525.85.12", "525.85.12", True),
        ("525.85.05", "525.85.12", False),
        ("450.80.02", "460.73.01", False),
        ("570.169", "570.133.20", True),
        ("1000.1.1", "999.99.99", True),
        ("99.1.1", "450.80.02", False),
    ],
)
def test_driver_at_least(version, minimum, expected):
    assert _catalog.driver_at_least(version, minimum) is expected


def test_data_module_is_pure():
    source = (ROOT / "plugins" / "module_utils" / "_mig" / "catalog_data.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert [(n.module, [a.name for a in n.names]) for n in imports] == [("__future__", ["annotations"])]
    assert "GENERATED" in ast.get_docstring(tree)


def test_data_in_sync_with_reference():
    """A plain clone regenerates the catalog: the generator's default reference is the in-repo copy."""
    result = subprocess.run([sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_reference_names_the_source_of_every_citation(reference):
    meta = reference.pop("_meta")
    cited = set(re.findall(r"ref:(\w+)", json.dumps([reference, meta["global"]])))
    assert cited and cited <= set(meta["source_index"]), sorted(cited - set(meta["source_index"]))


def test_generator_check_reports_stale_files(generator, tmp_path):
    stale = tmp_path / "_catalog_data.py"
    stale.write_text("MODELS = {}\n", encoding="utf-8")
    docs = tmp_path / "catalog.md"
    args = ["--reference", str(REFERENCE), "--output", str(stale), "--docs", str(docs)]
    assert generator.main([*args, "--check"]) == 1
    assert generator.main(args) == 0
    assert generator.main([*args, "--check"]) == 0
    assert stale.read_text(encoding="utf-8") == (ROOT / "plugins/module_utils/_mig/catalog_data.py").read_text()


def test_generator_refuses_undocumented_geometry(generator, reference):
    for name, model in reference.items():
        if name != "_meta":
            for prof in model["gpu_instance_profiles"]:
                if prof["name"].startswith("1g.") and prof["memory_slices"] == 2:
                    prof["placements"] = None
    with pytest.raises(generator.CatalogError, match="refusing to invent"):
        generator.build(reference)


def test_generator_rejects_conflicting_donors(generator, reference):
    broken = copy.deepcopy(reference)
    broken["NVIDIA A100-SXM4-40GB"]["gpu_instance_profiles"][4]["placements"]["starts"] = [0]
    with pytest.raises(generator.CatalogError, match="donors disagree"):
        generator.build(broken)


def test_generator_prefers_newest_memory_observation(generator, reference):
    models = generator.build(reference)
    nvl = {p["name"]: p for p in models["NVIDIA H100 NVL"]["profiles"]}
    assert nvl["1g.12gb"]["memory_mib"] == 11008  # driver 560.35.03, not 10880 from 550.127.06
    b200 = {p["name"]: p for p in models["NVIDIA B200"]["profiles"]}
    assert b200["1g.23gb"]["memory_mib"] == round(20.5 * 1024)  # Mar 2025 capture beats Jan 2025
    assert "ESTIMATED" in b200["7g.180gb"]["note"]
