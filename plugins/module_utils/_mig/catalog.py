# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""MIG profile catalog: typed GPU models and profiles (PRIVATE to the collection).

On a real GPU the catalog is read live from NVML by ``_nvml``; the shipped table in
``_catalog_data`` serves the simulator and offline planning. Pure: no I/O.
"""

from __future__ import annotations

import functools
import json
import re
from typing import NamedTuple

from ansible_collections.gpu.mig.plugins.module_utils._mig.catalog_data import MODELS_JSON


class ComputeProfile(NamedTuple):
    """A compute-instance profile inside a GPU instance profile."""

    id: int  # NVML_COMPUTE_INSTANCE_PROFILE_* index (== info.id)
    name: str  # e.g. "1c.3g.20gb"; equals the GI name for the default (whole) CI
    slice_count: int
    sm_count: int
    max_instances: int  # how many fit in one GPU instance
    default: bool = False


class GpuInstanceProfile(NamedTuple):
    """A GPU-instance profile as NVML reports it (nvmlGpuInstanceProfileInfo_v2_t + placements)."""

    id: int  # info.id, as `nvidia-smi mig -lgip` prints and `-cgi` accepts
    nvml_index: int  # NVML_GPU_INSTANCE_PROFILE_* constant whose info.id == id
    name: str  # e.g. "3g.20gb", "1g.5gb+me"
    compute_slices: int
    memory_slices: int
    memory_mib: int
    sm_count: int
    max_instances: int
    placement_starts: tuple[int, ...]
    placement_size: int
    copy_engines: int = 0
    decoders: int = 0
    encoders: int = 0
    jpeg: int = 0
    ofa: int = 0
    compute_profiles: tuple[ComputeProfile, ...] = ()
    note: str | None = None  # where data was derived rather than observed

    def occupies(self, start: int) -> frozenset[int]:
        """Memory slices taken by an instance of this profile placed at ``start``."""
        return frozenset(range(start, start + self.placement_size))


class GpuModel(NamedTuple):
    """One MIG-capable GPU model with its profile table and generation behaviour."""

    name: str  # NVML product name, e.g. "NVIDIA A100-SXM4-40GB"
    architecture: str  # "ampere", "hopper", "blackwell"
    compute_capability: tuple[int, int]
    memory_mib: int
    memory_slices: int
    compute_slices: int
    max_gpu_instances: int
    mig_enable_requires_reset: bool
    mig_mode_persists_reboot: bool
    min_driver: str  # dotted version, e.g. "450.80.02"
    profiles: tuple[GpuInstanceProfile, ...]
    aliases: tuple[str, ...] = ()
    pci_device_ids: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def profile(self, key: str | int) -> GpuInstanceProfile | None:
        """Look a profile up by name ("3g.20gb") or by profile id (9)."""
        for prof in self.profiles:
            if key in (prof.name, prof.id) or (isinstance(key, str) and key.isdigit() and int(key) == prof.id):
                return prof
        return None


def _compute_profile(data: dict) -> ComputeProfile:
    return ComputeProfile(**data)


def _gi_profile(data: dict) -> GpuInstanceProfile:
    values = dict(data)
    values["placement_starts"] = tuple(values["placement_starts"])
    values["compute_profiles"] = tuple(_compute_profile(cp) for cp in values.get("compute_profiles", ()))
    return GpuInstanceProfile(**values)


def _model(data: dict) -> GpuModel:
    values = dict(data)
    values["compute_capability"] = tuple(values["compute_capability"])
    values["profiles"] = tuple(_gi_profile(p) for p in values["profiles"])
    for key in ("aliases", "pci_device_ids", "notes"):
        values[key] = tuple(values.get(key, ()))
    return GpuModel(**values)


@functools.lru_cache(maxsize=None)
def _raw_models() -> dict[str, dict]:
    return json.loads(MODELS_JSON)


@functools.lru_cache(maxsize=None)
def _built(name: str) -> GpuModel:
    return _model(_raw_models()[name])


def all_models() -> dict[str, GpuModel]:
    """Every shipped model by NVML product name."""
    return {name: _built(name) for name in _raw_models()}


def find_model(product_name: str) -> GpuModel | None:
    """Return the shipped model for an NVML product name (or a known alias), else None.

    Only the model asked for is built: modules run without bytecode caches, so imports stay cheap.
    """
    raw = _raw_models()
    if product_name in raw:
        return _built(product_name)
    for name, data in raw.items():
        if product_name in data.get("aliases", ()):
            return _built(name)
    return None


def _driver_parts(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".") if p.isdigit())


def driver_at_least(version: str, minimum: str) -> bool:
    """Compare dotted driver versions numerically ("535.104.05" >= "525.85.12")."""
    return _driver_parts(version) >= _driver_parts(minimum)


def _family(product_name: str) -> str:
    """The model family a product name starts with: "NVIDIA A100-SXM4-40GB" -> "A100", "NVIDIA H100 NVL" -> "H100"."""
    words = product_name[len("NVIDIA ") :] if product_name.startswith("NVIDIA ") else product_name
    return re.split(r"[\s-]", words.strip())[0]


def min_driver_table() -> list[dict[str, str]]:
    """The minimum driver for MIG as ``{"match", "version"}`` entries; the first whose match is in a product name wins.

    Every shipped model's name and aliases, and each family (A100, H100, ...: the highest minimum of its models) for
    the products of a family the catalog lacks. Longer matches come first, so "GH200" is tried before "H200". The
    one source of minimum drivers: the gpu.mig.preflight_report filter checks its caller's entries, then these.
    """
    minimum: dict[str, str] = {}
    for name, data in _raw_models().items():
        family = _family(name)
        minimum[family] = max(minimum.get(family, "0"), data["min_driver"], key=_driver_parts)
        minimum.update(dict.fromkeys((name, *data.get("aliases", ())), data["min_driver"]))
    return [{"match": match, "version": minimum[match]} for match in sorted(minimum, key=lambda m: (-len(m), m))]
