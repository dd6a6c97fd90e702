"""GPU models the simulator can install: the collection's MIG catalog plus a few GPUs without MIG."""

from __future__ import annotations

import functools

from ansible_collections.gpu.mig.plugins.module_utils._mig import catalog as _catalog
from ansible_collections.gpu.mig.plugins.module_utils._mig.catalog import GpuModel


def _no_mig(name: str, architecture: str, cc: tuple[int, int], memory_mib: int, pci_id: str) -> GpuModel:
    return GpuModel(
        name=name,
        architecture=architecture,
        compute_capability=cc,
        memory_mib=memory_mib,
        memory_slices=0,
        compute_slices=0,
        max_gpu_instances=0,
        mig_enable_requires_reset=False,
        mig_mode_persists_reboot=False,
        min_driver="0",
        profiles=(),
        pci_device_ids=(pci_id,),
    )


NON_MIG_MODELS: dict[str, GpuModel] = {
    m.name: m
    for m in (
        _no_mig("NVIDIA L4", "ada", (8, 9), 23034, "0x27B810DE"),
        _no_mig("NVIDIA L40S", "ada", (8, 9), 46068, "0x26B910DE"),
        _no_mig("NVIDIA A10", "ampere", (8, 6), 23028, "0x223610DE"),
        _no_mig("Tesla T4", "turing", (7, 5), 15360, "0x1EB810DE"),
    )
}

# Short names accepted by ``migsim host --gpu`` where "NVIDIA <name>" is not already a product name.
SHORT_NAMES = {
    "A100-40GB": "NVIDIA A100-SXM4-40GB",
    "A100-80GB": "NVIDIA A100-SXM4-80GB",
    "H100": "NVIDIA H100 80GB HBM3",
    "H100-80GB": "NVIDIA H100 80GB HBM3",
    "H100-SXM": "NVIDIA H100 80GB HBM3",
    "H100-PCIE": "NVIDIA H100 PCIe",
    "H100-NVL": "NVIDIA H100 NVL",
    "GH200": "NVIDIA GH200 480GB",
    "T4": "Tesla T4",
}


def all_models() -> dict[str, GpuModel]:
    """Every installable model by NVML product name."""
    return {**_catalog.all_models(), **NON_MIG_MODELS}


@functools.lru_cache(maxsize=None)
def lookup(name: str) -> GpuModel:
    """Resolve a product name, catalog alias or short name (case-insensitive); KeyError if unknown.

    Cached: every simulated call on a GPU looks its model up by the stored product name.
    """
    exact = NON_MIG_MODELS.get(name) or _catalog.find_model(name)  # the stored product name: build just that one
    if exact is not None:
        return exact
    models = all_models()
    wanted = SHORT_NAMES.get(name.upper(), name)
    for candidate in (wanted, f"NVIDIA {wanted}"):
        for product, model in models.items():
            if candidate.lower() in (product.lower(), *(a.lower() for a in model.aliases)):
                return model
    raise KeyError(f"unknown GPU model {name!r}; known: {', '.join(sorted(models))}")


def is_mig_capable(model: GpuModel) -> bool:
    """True when the model has MIG profiles."""
    return bool(model.profiles)
