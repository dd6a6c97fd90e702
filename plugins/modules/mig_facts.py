#!/usr/bin/python
# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Gather NVIDIA GPU and MIG facts through NVML."""

from __future__ import annotations

DOCUMENTATION = r"""
module: mig_facts
short_description: Gather NVIDIA GPU and MIG facts through NVML
version_added: 0.1.0
description:
  - Reads the driver, CUDA and NVML versions and, per GPU, its identity, memory, MIG mode (current and pending),
    the MIG profile table with free counts and placements, GPU and compute instances with their MIG device UUIDs,
    and the processes using each GPU and instance.
  - Returns everything under one facts key, C(ansible_facts.nvidia_mig).
  - A host without a driver, or without a MIG-capable GPU, is reported as such rather than failing,
    unless O(require_mig=true).
  - A GPU that NVML fails on (fallen off the bus, or an NVML error on one of its reads) is that GPU's problem. It is
    reported with an C(error) naming it and the remedy, a warning says so, and the other GPUs are reported as usual.
    The module fails only for what concerns the whole host (NVML cannot start for another reason than a missing
    driver, the driver version or the GPU count cannot be read), with a message that says why and what to do.
  - Changes nothing.
author:
  - gpu.mig maintainers (@gpu-mig)
options:
  gpus:
    description:
      - Which GPUs to report. Each item is an index, a GPU UUID, a PCI bus id (full C(00000000:07:00.0) or short C(07:00.0)),
        a product name such as C(NVIDIA A100-SXM4-40GB), or C(arch:<generation>) such as C(arch:hopper).
      - Empty means every GPU.
    type: list
    elements: str
    default: []
  require_mig:
    description:
      - Fail when the driver is missing or no selected GPU supports MIG.
    type: bool
    default: false
  slot_map_file:
    description:
      - Path on the managed host of the last applied slot map (the JSON file the C(gpu.mig.mig_layout) role writes,
        slot name to C(gpu_uuid), C(profile) and C(placement)), returned as C(nvidia_mig.slot_map).
      - The M(gpu.mig.mig_instances) action passes its own O(gpu.mig.mig_instances#module:slot_map_file) here, and
        the audit and the C(gpu.mig.preflight) role plan with this history as M(gpu.mig.mig_instances) does.
      - A missing file means no history (C(slot_map) is null). A file that cannot be read or is not a slot map fails
        the task naming the file, every problem and the fix.
    type: path
extends_documentation_fragment:
  - gpu.mig.nvml
  - gpu.mig.nvml.attributes_facts
seealso:
  - module: gpu.mig.mig_instances
  - module: gpu.mig.mig_mode
"""

EXAMPLES = r"""
- name: Gather MIG facts
  gpu.mig.mig_facts:

- name: Show each GPU's MIG mode
  ansible.builtin.debug:
    msg: "{{ item.index }} {{ item.name }}: MIG {{ item.mig.current }}"
  loop: "{{ ansible_facts.nvidia_mig.gpus }}"

- name: Audit only the Hopper GPUs, failing on hosts without MIG
  gpu.mig.mig_facts:
    gpus: ["arch:hopper"]
    require_mig: true

- name: Gather MIG facts with the slot map the gpu.mig.mig_layout role wrote
  gpu.mig.mig_facts:
    slot_map_file: /etc/gpu-mig/slots.json
"""

RETURN = r"""
ansible_facts:
  description: Facts to add to C(ansible_facts).
  returned: always
  type: dict
  contains:
    nvidia_mig:
      description: Everything known about the host's NVIDIA GPUs and MIG.
      returned: always
      type: dict
      contains:
        driver:
          description: Driver state and versions. C(loaded=false) with C(error) when NVML cannot start.
          returned: always
          type: dict
          sample: {"loaded": true, "error": null, "driver_version": "550.90.07", "cuda_driver_version": "12.4", "nvml_version": "12.550.90.07"}
        gpus:
          description:
            - One entry per selected GPU, ordered by index.
            - C(mig) holds C(supported), C(current) and C(pending) (booleans; null when MIG is not supported).
            - C(profiles) is the GPU-instance profile table read live from NVML (C(id), C(name), C(slices), C(memory_slices),
              C(memory_mib), C(sm_count), engine counts, C(total), C(free), C(placement_starts), the possible starts, each
              C(memory_slices) wide).
            - C(gpu_instances) lists each GPU instance (C(id), C(profile_id), C(profile), C(placement), C(memory_mib)) with
              its C(compute_instances) (C(id), C(profile), C(uuid) of the MIG device, C(memory_mib), C(processes),
              C(memory_used_mib), the memory in use on the MIG device, which is its GPU instance's).
            - C(processes) lists compute processes (C(pid), C(used_memory_mib), C(gpu_instance_id), C(compute_instance_id)).
            - C(error) is present only on a GPU that NVML failed to read; it holds the message naming the GPU and the
              remedy. Such a GPU keeps every other key, C(index), and C(uuid), C(name) and C(pci_bus_id) as far as NVML
              still reads them (else null); C(pci_device_id), C(pci_subsystem_id), C(compute_capability) and C(memory)
              are null, C(architecture) is C(unknown), C(mig.supported) is false and the lists are empty. Test it with
              C(item.error is defined).
            - C(pci_device_id) and C(pci_subsystem_id) are the PCI device and subsystem ids (device or subsystem id,
              then vendor id) as mig-parted's C(device-filter) writes them, e.g. C(0x20B010DE) and C(0x147E10DE).
          returned: always
          type: list
          elements: dict
          sample:
            - index: 0
              uuid: GPU-5e0e4b1c-0000-4000-8000-000000000000
              name: NVIDIA A100-SXM4-40GB
              pci_bus_id: "00000000:07:00.0"
              pci_device_id: "0x20B010DE"
              pci_subsystem_id: "0x145F10DE"
              architecture: ampere
              compute_capability: "8.0"
              memory: {total_mib: 40960, used_mib: 0, free_mib: 40960}
              mig: {supported: true, current: true, pending: true}
              profiles:
                - {id: 5, name: 4g.20gb, slices: 4, memory_slices: 4, memory_mib: 20096, total: 1, free: 0,
                   placement_starts: [0]}
              gpu_instances:
                - id: 1
                  profile_id: 5
                  profile: 4g.20gb
                  placement: {start: 0, size: 4}
                  memory_mib: 20096
                  compute_instances:
                    - {id: 0, profile: 4g.20gb, uuid: MIG-8b5c41e2-0000-4000-8000-000000000000, memory_mib: 20096, processes: []}
                  processes: []
              processes: []
            - index: 1
              uuid: null
              name: null
              pci_bus_id: null
              pci_device_id: null
              pci_subsystem_id: null
              architecture: unknown
              compute_capability: null
              memory: null
              mig: {supported: false, current: null, pending: null}
              profiles: []
              gpu_instances: []
              processes: []
              error: >-
                GPU 1: opening the GPU failed: the GPU has fallen off the bus (GPU lost) (NVML: GPU is lost); drain the
                host, check dmesg for Xid errors and reboot it
        slot_map:
          description:
            - The last applied slot map read from O(slot_map_file) (slot name to C(gpu_index), C(gpu_uuid),
              C(profile), C(placement), C(mig_uuid), ...), as the C(gpu.mig.mig_layout) role wrote it.
            - Null when O(slot_map_file) is not given or the file does not exist.
          returned: always
          type: dict
          sample:
            chat: {gpu_index: 0, gpu_uuid: GPU-5e0e4b1c-0000-4000-8000-000000000000, profile: 4g.20gb,
                   placement: {start: 0, size: 4}, mig_uuid: MIG-8b5c41e2-0000-4000-8000-000000000000}
        summary:
          description: Counts over the selected GPUs; C(failed_gpus) counts those reported with an C(error).
          returned: always
          type: dict
          sample: {"gpu_count": 2, "mig_capable": 1, "mig_enabled": 1, "mig_change_pending": 0, "gpu_instances": 1,
                   "compute_instances": 1, "processes": 0, "failed_gpus": 1}
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.gpu.mig.plugins.module_utils._mig import nvml as _nvml
from ansible_collections.gpu.mig.plugins.module_utils._mig.failure import reported_as_bug
from ansible_collections.gpu.mig.plugins.module_utils._mig.select import SelectorError, describe_gpus, select_gpus

ARGUMENT_SPEC = {
    "gpus": {"type": "list", "elements": "str", "default": []},
    "require_mig": {"type": "bool", "default": False},
    "slot_map_file": {"type": "path"},
}


def read_slot_map(module: AnsibleModule) -> dict | None:
    """The slot map at ``slot_map_file`` as mig_instances reads it (None: no path, or no file); a file that cannot be
    read or is not a slot map fails the module naming it and the fix."""
    path = module.params["slot_map_file"]
    if path is None:
        return None
    # Imported here: the module compiles every module_utils it imports on each run, and only a slot map needs these.
    from ansible_collections.gpu.mig.plugins.module_utils._mig import apply as _apply
    from ansible_collections.gpu.mig.plugins.module_utils._mig import layout as _layout

    try:
        return _apply.read_slot_map(path)
    except _layout.LayoutError as err:
        module.fail_json(msg=str(err))


def run(module: AnsibleModule) -> dict:
    """Read the slot map, gather, select and check; returns the nvidia_mig facts (a GPU that failed is warned about,
    not fatal)."""
    previous = read_slot_map(module)
    facts = _nvml.gather()
    try:
        facts["gpus"] = select_gpus(facts["gpus"], module.params["gpus"])
    except SelectorError as err:
        module.fail_json(msg=str(err))
    facts["summary"] = _nvml.summarize(facts["gpus"])
    facts["slot_map"] = previous
    for gpu in facts["gpus"]:
        if gpu.get("error"):
            module.warn(gpu["error"])
    if module.params["require_mig"]:
        if not facts["driver"]["loaded"]:
            module.fail_json(msg=facts["driver"]["error"], nvidia_mig=facts)
        if not facts["summary"]["mig_capable"]:
            module.fail_json(
                msg=f"require_mig: no selected GPU supports MIG (found: {describe_gpus(facts['gpus'])}); run on A100,"
                " A30, H100, H200 or B200 hosts",
                nvidia_mig=facts,
            )
    return facts


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    if not _nvml.HAS_PYNVML:
        module.fail_json(msg=missing_required_lib("nvidia-ml-py"), exception=_nvml.PYNVML_IMPORT_ERROR)
    with reported_as_bug(module, "gpu.mig.mig_facts"):
        try:
            facts = run(module)
        except _nvml.NvmlError as err:
            module.fail_json(msg=err.msg)
        module.exit_json(changed=False, ansible_facts={"nvidia_mig": facts})


if __name__ == "__main__":
    main()
