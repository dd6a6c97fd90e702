# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""GPU selectors: index, UUID, PCI bus id, product name, ``arch:<generation>`` or ``all``.

PRIVATE to the collection. Pure: works on the per-GPU fact dicts of ``mig_facts``.
"""

from __future__ import annotations

import re

_BUS_ID_RE = re.compile(r"^(?:([0-9a-f]{1,8}):)?([0-9a-f]{1,2}):([0-9a-f]{1,2})\.([0-7])$", re.IGNORECASE)


class SelectorError(ValueError):
    """A selector that matches no GPU."""


def _bus_id(text: str) -> str:
    """Normalise '07:00.0', '0000:07:00.0' (lspci) and '00000000:07:00.0' (NVML) to NVML's form."""
    parts = text.strip().upper().split(":")
    try:
        domain = int(parts[0], 16) if len(parts) == 3 else 0
    except ValueError:
        return text.strip().upper()
    return f"{domain:08X}:{':'.join(parts[-2:])}"


def names_one_gpu(selector) -> bool:
    """An index, a GPU UUID or a PCI bus id: a selector that names one GPU (matching none is an error)."""
    if isinstance(selector, bool):
        return False
    text = str(selector).strip().casefold()
    return isinstance(selector, int) or text.isdigit() or text.startswith("gpu-") or bool(_BUS_ID_RE.match(text))


def matches(gpu: dict, selector) -> bool:
    """Does one selector match one GPU's facts?"""
    if isinstance(selector, int) and not isinstance(selector, bool):
        return gpu["index"] == selector
    text = str(selector).strip()
    lowered = text.lower()
    if lowered == "all":
        return True
    if text.isdigit():
        return gpu["index"] == int(text)
    if lowered.startswith("arch:"):
        return gpu.get("architecture", "").lower() == lowered[5:]
    if lowered.startswith("gpu-"):
        return gpu["uuid"].lower() == lowered
    if ":" in text and "." in text:
        return _bus_id(gpu["pci_bus_id"]) == _bus_id(text)
    name = gpu["name"].lower()
    return lowered in (name, name[len("nvidia ") :] if name.startswith("nvidia ") else name)


def select_gpus(gpus: list[dict], selectors) -> list[dict]:
    """GPUs matched by any selector (all GPUs for an empty list), in index order.

    Raises SelectorError naming every selector that matched nothing and listing the GPUs present.
    """
    if selectors in (None, [], ()):
        return list(gpus)
    selectors = selectors if isinstance(selectors, (list, tuple)) else [selectors]
    unmatched = [s for s in selectors if not any(matches(g, s) for g in gpus)]
    if unmatched:
        present = "; ".join(f"{g['index']}: {g['name']} {g['uuid']} {g['pci_bus_id']}" for g in gpus) or "no GPUs"
        raise SelectorError(
            f"GPU selector(s) {', '.join(repr(s) for s in unmatched)} match no GPU on this host (present: {present}); "
            "use an index, a GPU UUID, a PCI bus id, a product name, 'arch:<generation>' or 'all'"
        )
    return [g for g in gpus if any(matches(g, s) for s in selectors)]
