# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Shared documentation for the modules that talk to NVML."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options: {}
requirements:
  - nvidia-ml-py (imports as C(pynvml)) on the managed host
  - the NVIDIA driver (C(libnvidia-ml.so.1)) on the managed host
notes:
  - NVML is used through C(pynvml) only; no module parses C(nvidia-smi) output.
  - GPUs can be selected by index, UUID (C(GPU-...)), PCI bus id, product name or C(arch:<generation>).
  - Every NVML error is reported with the GPU it concerns (index and UUID, as far as NVML still reads it), what failed
    and the remedy; NVML's own text (even C(Unknown Error)) is only quoted, never the whole message.
  - A GPU that NVML cannot read (fallen off the bus, erroring) is that GPU's problem, not the host's; C(gpu.mig.mig_facts)
    reports it with an C(error) key and reads the other GPUs as usual.
"""

    ATTRIBUTES_FACTS = r"""
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: Reads only; check mode returns the same facts.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
  facts:
    description: Action returns an C(ansible_facts) dictionary that will update existing host facts.
    support: full
"""
