# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""GPU selectors: index, UUID, PCI bus id, product name, ``arch:<generation>`` or ``all``.

PRIVATE to the collection. Pure: works on the per-GPU fact dicts of ``mig_facts`` (a GPU that could not be read has
``"error"`` and may lack its UUID, name and bus id). One rule for every caller: a selector that names one GPU
(index, UUID, bus id) and matches none is an error; one that names a class of GPUs (product name, ``arch:``, ``all``)
and matches none means "nothing to do on this host", so one layout serves a mixed fleet.
"""

from __future__ import annotations

import re

from ansible_collections.gpu.mig.plugins.module_utils._mig.nvml import ARCHITECTURES

# [domain:]bus:device.function, hex; NVML writes an 8-digit domain, lspci a 4-digit one or none.
_BUS_ID_RE = re.compile(
    r"^(?:(?P<domain>[0-9a-f]{1,8}):)?(?P<bus>[0-9a-f]{1,2}):(?P<device>[0-9a-f]{1,2})\.(?P<function>[0-7])$",
    re.IGNORECASE,
)
_INDEX_RE = re.compile(r"^[+-]?[0-9]+$")
BUS_ID_FORM = "[domain:]bus:device.function in hex digits, e.g. 0000:07:00.0 or 07:00.0 (device 00-1f, function 0-7)"
SELECTOR_FORMS = "all, an index, GPU-<uuid>, a PCI bus id, a product name or arch:<generation>"
SINGLE_GPU_KINDS = frozenset({"index", "uuid", "bus_id"})


class SelectorError(ValueError):
    """A malformed selector, or one naming a GPU that is not on the host."""


def kind(selector) -> str:
    """What a selector is: all, index, uuid, mig_uuid, bus_id, arch, name or invalid (not text, empty, a bool).

    Text with a ':' that is not ``arch:`` can only be a PCI bus id (product names have none), so a malformed one is
    a ``bus_id`` that ``selector_problem`` refuses rather than a product name that silently matches nothing.
    """
    if isinstance(selector, bool) or not isinstance(selector, (int, str)) or not str(selector).strip():
        return "invalid"
    text = str(selector).strip().casefold()
    if text == "all":
        return "all"
    if _INDEX_RE.match(text):
        return "index"
    if text.startswith("arch:"):
        return "arch"
    if text.startswith("gpu-"):
        return "uuid"
    if text.startswith("mig-"):
        return "mig_uuid"
    return "bus_id" if ":" in text else "name"


def selector_problem(selector) -> str | None:
    """Why ``selector`` is not a valid GPU selector, with the valid form; None when it is valid."""
    text = str(selector).strip()
    what = kind(selector)
    if what == "invalid":
        return f"{selector!r} is not a GPU selector; use {SELECTOR_FORMS}"
    if what == "index" and int(text) < 0:
        return f"GPU index {text} is negative; indices start at 0"
    if what == "mig_uuid":
        return f"{selector!r} is a MIG device UUID; select the parent GPU by its GPU-<uuid>"
    if what == "arch" and text[5:].strip().casefold() not in ARCHITECTURES.values():
        return f"{selector!r} names no GPU architecture; use arch: with one of {', '.join(ARCHITECTURES.values())}"
    if what == "bus_id" and _bus_id(text) is None:
        return f"{selector!r} is not a valid PCI bus id; write {BUS_ID_FORM}"
    return None


def names_one_gpu(selector) -> bool:
    """An index, a GPU UUID or a PCI bus id: a selector that names one GPU (matching none is an error)."""
    return kind(selector) in SINGLE_GPU_KINDS


def _bus_id(text: str) -> str | None:
    """NVML's form of a PCI bus id written '07:00.0', '0000:07:00.0' (lspci) or '00000000:07:00.0'; None if malformed."""
    found = _BUS_ID_RE.match(text.strip())
    if not found or int(found.group("device"), 16) > 0x1F:
        return None
    domain, bus, device, function = found.group("domain", "bus", "device", "function")
    return f"{int(domain or '0', 16):08X}:{int(bus, 16):02X}:{int(device, 16):02X}.{function}"


def matches(gpu: dict, selector) -> bool:
    """Does one valid selector match one GPU's facts? Facts a failed GPU lacks (None) match nothing."""
    what = kind(selector)
    text = str(selector).strip().casefold()
    if what == "all":
        return True
    if what == "index":
        return gpu["index"] == int(text)
    if what == "arch":
        return (gpu.get("architecture") or "").casefold() == text[5:].strip()
    if what == "uuid":
        return (gpu.get("uuid") or "").casefold() == text
    if what == "bus_id":
        wanted = _bus_id(text)
        return wanted is not None and wanted == _bus_id(gpu.get("pci_bus_id") or "")
    if what == "name" and gpu.get("name"):
        name = gpu["name"].casefold()
        return text in (name, name[len("nvidia ") :] if name.startswith("nvidia ") else name)
    return False


def _as_list(selectors) -> list:
    return list(selectors) if isinstance(selectors, (list, tuple)) else [selectors]


def unmatched(gpus: list[dict], selectors) -> list:
    """Selectors that match no GPU of ``gpus``."""
    return [s for s in _as_list(selectors) if not any(matches(g, s) for g in gpus)]


def missing(gpus: list[dict], selectors) -> list:
    """Selectors that name one GPU (index, UUID, bus id) and match none of ``gpus``: an error for every caller."""
    return [s for s in unmatched(gpus, selectors) if names_one_gpu(s)]


def naming(gpu: dict, selectors):
    """The selector that names this one GPU (its index, UUID or bus id), or None: a GPU that cannot be worked on
    (lost, no MIG) is an error only when a selector names it, and left alone when a class selector picks it."""
    return next((s for s in _as_list(selectors) if names_one_gpu(s) and matches(gpu, s)), None)


def entry_picks(gpu: dict, selectors) -> bool:
    """Does a layout entry with these selectors pick the GPU? One selector matches it; ``all`` there means every GPU
    with MIG (an entry passes over the others), while a GPU without MIG that another selector matches is picked.

    The one rule of gpu.mig.mig_instances (``_layout``) and the preflight_report filter.
    """
    return any(gpu["mig"]["supported"] if kind(s) == "all" else matches(gpu, s) for s in _as_list(selectors))


def describe_gpus(gpus: list[dict]) -> str:
    """The GPUs of a host for a message: index, name, UUID, bus id; the error of a GPU that could not be read."""
    return (
        "; ".join(
            f"{g['index']}: could not be read ({g['error']})"
            if g.get("error")
            else f"{g['index']}: {g['name']} {g['uuid']} {g['pci_bus_id']}"
            for g in gpus
        )
        or "no GPUs"
    )


def select_gpus(gpus: list[dict], selectors) -> list[dict]:
    """GPUs matched by any selector (all GPUs for an empty list), in index order.

    Raises SelectorError listing every malformed selector and every selector naming one GPU that is not here
    (with the GPUs present). A product name or ``arch:`` that matches nothing selects nothing: not an error.
    """
    if selectors in (None, [], ()):
        return list(gpus)
    selectors = _as_list(selectors)
    problems = [why for why in map(selector_problem, selectors) if why]
    absent = missing(gpus, selectors)
    if absent:
        problems.append(
            f"GPU selector(s) {', '.join(repr(s) for s in absent)} match no GPU on this host "
            f"(present: {describe_gpus(gpus)}); use {SELECTOR_FORMS}"
        )
    if problems:
        raise SelectorError("; ".join(problems))
    return [g for g in gpus if any(matches(g, s) for s in selectors)]
