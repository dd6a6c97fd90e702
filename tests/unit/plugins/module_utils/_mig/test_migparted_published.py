# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""NVIDIA's published mig-parted configs (tests/fixtures/mig-parted) on simulated hosts of every model they target.

Every named config of every file, on hosts of 1, 2, 4 and 8 GPUs of each catalog model the config targets (by its
device filters; every MIG model for an entry without one), from MIG off and from MIG on with instances: either the
plan leaves each GPU with exactly the MIG devices the config asks for, counted from the config itself as mig-parted
counts them, or the config is refused with a LayoutError, and then only where the catalog shows it cannot fit.
"""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from pathlib import Path

import pytest
import yaml

from ansible_collections.gpu.mig.plugins.module_utils._mig import catalog as _catalog
from ansible_collections.gpu.mig.plugins.module_utils._mig import layout as L
from ansible_collections.gpu.mig.plugins.module_utils._mig import migparted as _migparted
from ansible_collections.gpu.mig.plugins.modules import mig_instances
from ansible_collections.gpu.mig.tests.unit.plugins.module_utils._mig.plan_replay import apply_plan_to_state

FIXTURES = Path(__file__).resolve().parents[4] / "fixtures" / "mig-parted"
FILES = sorted(p.name for p in FIXTURES.glob("*.published"))
MODELS = _catalog.all_models()
SIZES = (1, 2, 4, 8)
FULL_SPLIT = re.compile(r"([0-9]+)c\.(([0-9]+)g\..*)")


@functools.lru_cache(maxsize=None)
def published(name: str) -> dict:
    return yaml.safe_load((FIXTURES / name).read_text())


def normalised(key: str) -> str:
    """mig-parted's device name: ``Nc.Mg.X`` is ``Mg.X`` when N = M."""
    match = FULL_SPLIT.fullmatch(key)
    return match.group(2) if match and match.group(1) == match.group(3) else key


def device_id(value: str) -> int:
    return int(value.split(":")[0], 16)


def targeted(entries: list) -> list:
    """Catalog models the entries' device filters name; every model when an entry has no filter."""
    filters = [e.get("device-filter") for e in entries]
    if not all(filters):
        return list(MODELS.values())
    ids = {device_id(v) for f in filters for v in ([f] if isinstance(f, str) else f)}
    return [m for m in MODELS.values() if ids & {int(i, 16) for i in m.pci_device_ids}]


def host(model, size: int, mig_on: bool) -> list:
    """``size`` GPUs of ``model``; with MIG on, even GPUs hold the smallest profile and odd ones the largest."""
    smallest, largest = model.profiles[0], max(model.profiles, key=lambda p: p.compute_slices)
    gpus = []
    for index in range(size):
        prof = smallest if index % 2 == 0 else largest
        instances = [(1, prof.id, prof.name, prof.placement_starts[-1], prof.placement_size)] if mig_on else []
        gpus.append(
            L.GpuState(
                index=index,
                uuid="GPU-%s-%d" % (model.name.replace(" ", "-"), index),
                name=model.name,
                pci_device_id=model.pci_device_ids[0],
                mig_supported=True,
                mig_current=mig_on,
                mig_pending=mig_on,
                gpu_instances=tuple(
                    L.GpuInstanceState(gi, pid, name, start, size, (L.ComputeInstanceState(0, None, name),))
                    for gi, pid, name, start, size in instances
                ),
            )
        )
    return gpus


def wanted(entries: list, gpu: L.GpuState) -> tuple[bool, Counter] | None:
    """(MIG on, device counts) of the last entry that selects ``gpu``, as mig-parted walks them; None: none does."""
    last = None
    for entry in entries:
        filters = entry.get("device-filter") or []
        filters = [filters] if isinstance(filters, str) else filters
        if filters and int(gpu.pci_device_id, 16) not in {device_id(f) for f in filters}:
            continue
        if entry["devices"] == "all" or gpu.index in entry["devices"]:
            last = entry
    if last is None:
        return None
    counts = Counter()
    for key, count in (last.get("mig-devices") or {}).items():
        counts[normalised(key)] += count
    return last["mig-enabled"], +counts


def devices(gpu: L.GpuState) -> Counter:
    return Counter(normalised(ci.profile) for gi in gpu.gpu_instances for ci in gi.compute_instances)


def fits_by_counts(counts: Counter, model) -> bool:
    """Whether plain profile counts fit ``model`` by the catalog's numbers alone."""
    profiles = {name: model.profile(name) for name in counts}
    if any(p is None or counts[name] > p.max_instances for name, p in profiles.items()):
        return False
    return (
        sum(counts.values()) <= model.max_gpu_instances
        and sum(p.compute_slices * counts[name] for name, p in profiles.items()) <= model.compute_slices
        and sum(p.placement_size * counts[name] for name, p in profiles.items()) <= model.memory_slices
    )


@functools.lru_cache(maxsize=None)
def outcome(entries_json: str, model_name: str, size: int, mig_on: bool) -> str:
    """ "planned", or the refusal; asserts the planned result (cached: the files repeat many configs)."""
    entries, model = json.loads(entries_json), MODELS[model_name]
    gpus = host(model, size, mig_on)
    models = dict.fromkeys(range(size), model)
    try:
        converted = _migparted.layout_from_mig_parted(
            {"version": "v1", "mig-configs": {"c": entries}}, "c", gpus, models
        )
        after = apply_plan_to_state(gpus, L.plan_layout(converted.entries, gpus, models))
    except L.LayoutError as exc:
        assert str(exc), (entries, model_name, size)
        refusable = [w[1] for w in (wanted(entries, g) for g in gpus) if w and w[0]]
        assert refusable and not all(fits_by_counts(c, model) for c in refusable), (str(exc), entries, model_name)
        return str(exc)
    for before, gpu in zip(gpus, after, strict=True):
        want = wanted(entries, gpu)
        if want is None:
            assert gpu == before, (entries, model_name, gpu.index)
        else:
            assert (gpu.mig_current, devices(gpu)) == want, (entries, model_name, size, mig_on, gpu.index)
    return "planned"


@pytest.mark.parametrize("name", FILES)
def test_every_named_config_plans_its_counts_or_is_refused(name):
    for entries in published(name)["mig-configs"].values():
        for model in targeted(entries):
            for size in SIZES:
                for mig_on in (False, True):
                    outcome(json.dumps(entries), model.name, size, mig_on)


def test_the_fixtures_are_the_published_files():
    assert FILES == [
        "deepops-nvidia-mig-config.yml.published",
        "gpu-operator-default-mig-parted-config.yaml.published",
        "gpu-operator-values-example-config.yaml.published",
        "mig-parted-container-example-config.yaml.published",
        "mig-parted-container-example-hopper-blackwell-config.yaml.published",
        "mig-parted-dgx-station-80gb-config.yaml.published",
        "mig-parted-examples-config.yaml.published",
        "mig-parted-systemd-config-default.yaml.published",
    ]
    sources = (FIXTURES / "SOURCES.md").read_text()
    assert all(f"`{name}`" in sources for name in FILES)


# One config of each file through the module on a simulated host: (file, config, model, MIG devices per GPU).
BALANCED_80GB = "1g.10gb 1g.10gb 2g.20gb 3g.40gb"
THROUGH_THE_MODULE = [
    ("deepops-nvidia-mig-config.yml.published", "all-balanced-a100-80", "NVIDIA A100-SXM4-80GB", [BALANCED_80GB] * 2),
    (
        "gpu-operator-default-mig-parted-config.yaml.published",
        "all-balanced",
        "NVIDIA H100 80GB HBM3",
        [BALANCED_80GB] * 2,
    ),
    (
        "gpu-operator-values-example-config.yaml.published",
        "custom-mig",
        "NVIDIA H100 80GB HBM3",
        ["", " ".join(["1g.10gb"] * 7), "2g.20gb 2g.20gb 3g.40gb", "3g.40gb 4g.40gb"],
    ),
    (
        "gpu-operator-values-example-config.yaml.published",
        "custom-mig",
        "NVIDIA H100 80GB HBM3",
        ["", " ".join(["1g.10gb"] * 7)],
    ),
    (
        "mig-parted-container-example-config.yaml.published",
        "all-3g.20gb",
        "NVIDIA A100-SXM4-40GB",
        ["3g.20gb 3g.20gb"] * 2,
    ),
    (
        "mig-parted-container-example-hopper-blackwell-config.yaml.published",
        "all-1g.18gb",
        "NVIDIA H200",
        [" ".join(["1g.18gb"] * 7)] * 2,
    ),
    (
        "mig-parted-dgx-station-80gb-config.yaml.published",
        "all-4g.40gb-dgx-station-80",
        "NVIDIA A100-SXM4-80GB",
        ["4g.40gb"] * 2,
    ),
    (
        "mig-parted-examples-config.yaml.published",
        "all-balanced",
        "NVIDIA A100-SXM4-40GB",
        ["1g.5gb 1g.5gb 2g.10gb 3g.20gb"] * 2,
    ),
    ("mig-parted-systemd-config-default.yaml.published", "all-disabled", "NVIDIA H100 80GB HBM3", ["", ""]),
]


@pytest.mark.parametrize(("name", "config_name", "model", "expected"), THROUGH_THE_MODULE)
def test_one_config_per_file_through_the_module(sim_host, run_module, name, config_name, model, expected):
    """From MIG on with an instance on GPU 1; a config naming more GPUs than the host has skips and reports them."""
    first = MODELS[model].profiles[0].name
    sim_host(*[f"{model}:mig=on"] * len(expected), instances=[f"1:{first}"], init=False)
    args = {"mig_parted_config": published(name), "mig_parted_config_name": config_name}
    result, failed = run_module(mig_instances, args)
    assert not failed, result.get("msg")
    found = [
        " ".join(sorted(ci["profile"] for gi in gpu["gpu_instances"] for ci in gi["compute_instances"]))
        for gpu in result["ansible_facts"]["nvidia_mig"]["gpus"]
    ]
    assert found == expected
    assert [gpu["mig"]["current"] for gpu in result["ansible_facts"]["nvidia_mig"]["gpus"]] == [
        bool(e) for e in expected
    ]
    named = {
        d
        for entry in published(name)["mig-configs"][config_name]
        if entry["devices"] != "all"
        for d in entry["devices"]
    }
    assert len(result["skipped_devices"]) == len(named - set(range(len(expected))))
    again, failed = run_module(mig_instances, args)
    assert not failed and again["changed"] is False, again
