#!/usr/bin/python
# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Apply a declarative MIG layout with the minimal change."""

from __future__ import annotations

DOCUMENTATION = r"""
module: mig_instances
short_description: Apply a declarative MIG layout with the minimal change
version_added: 0.1.0
description:
  - Makes the MIG GPU and compute instances of the selected GPUs match a layout of named slots.
  - GPU instances that already match a slot (profile, and placement when the slot pins one) are kept, so their MIG
    UUIDs stay stable; only what differs is destroyed and created. New instances get explicit placements chosen so
    that any feasible set of profiles applies whatever order it is written in.
  - The whole plan is validated before the first change. Instances with running processes are never destroyed unless
    O(force=true); the refusal names the slot, GPU, instance and PIDs.
  - If NVML fails midway, the layout found at the start is restored and the failure says so; where that is impossible
    the failure reports the exact state left behind.
  - GPUs that no entry selects are left untouched; on a selected GPU every instance that no slot asks for is destroyed.
  - Turning MIG off on a GPU that holds instances destroys them first (busy ones only with O(force=true)), then
    disables MIG, as mig-parted's C(all-disabled) does.
  - With O(slot_map_file), look-alike slots (same profile and compute split) keep the GPU instances they had, so their
    MIG UUIDs survive reordering the slots and adding or removing other slots.
author:
  - gpu.mig maintainers (@gpu-mig)
options:
  layout:
    description:
      - The desired layout, a list of entries. See C(docs/layout.md) for the full reference.
      - Each entry has C(gpus) (a selector or list of selectors; default C(all)), C(mig_enabled) (default V(true)) and
        C(slots), a list of C(name), C(profile) (name such as C(3g.20gb) or profile id), optional C(placement) (start
        memory slice) and optional C(compute_instances) (list of C(name), C(profile) such as C(1c.3g.20gb)).
      - Slot names are unique per host and match C(^[a-z0-9][a-z0-9_-]{0,62}$).
      - Mutually exclusive with O(mig_parted_config) and O(mig_parted_config_file).
    type: list
    elements: dict
  mig_parted_config:
    description:
      - A parsed NVIDIA mig-parted configuration (C(version=v1), C(mig-configs)), converted into a layout.
      - Slots are named C(gpu<index>-<profile>-<n>).
      - Device indices that a config entry names and the host lacks are skipped (RV(skipped_devices)) with a warning,
        as mig-parted applies one file to a whole fleet.
      - Mutually exclusive with O(layout) and O(mig_parted_config_file); needs O(mig_parted_config_name).
    type: dict
  mig_parted_config_file:
    description:
      - Path on the controller of a mig-parted configuration file (YAML), read and parsed on the controller by the
        action, also for C(async) tasks, and applied as O(mig_parted_config) would be.
      - A relative path is looked up as M(ansible.builtin.copy) looks up its C(src) (the role's C(files/) directory,
        then the playbook's).
      - A missing file or invalid YAML fails the task naming the file, changing nothing.
      - Mutually exclusive with O(layout) and O(mig_parted_config); needs O(mig_parted_config_name).
    type: str
  mig_parted_config_name:
    description:
      - The named configuration inside O(mig_parted_config) or O(mig_parted_config_file) to apply (for example one
        picked per host by a group variable).
    type: str
  state:
    description:
      - V(present) applies the layout; V(absent) destroys every instance on the GPUs selected by O(gpus).
      - V(absent) takes no O(layout) or O(mig_parted_config); the task fails, changing nothing, when one is given.
    type: str
    choices: [present, absent]
    default: present
  gpus:
    description:
      - With O(state=absent), the GPUs to clear (index, UUID, PCI bus id, product name, C(arch:<generation>) or C(all));
        every MIG-enabled GPU when not given.
      - Only with O(state=absent); with O(state=present) each layout entry selects its GPUs, and the task fails,
        changing nothing, when O(gpus) is given.
    type: list
    elements: str
  force:
    description:
      - Destroy instances even when processes use them. NVML refuses to destroy a busy instance, so the processes that
        hold instances to destroy are sent SIGTERM, then SIGKILL after O(force_grace) seconds.
    type: bool
    default: false
  force_grace:
    description:
      - With O(force=true), seconds between SIGTERM and SIGKILL.
    type: int
    default: 10
  slot_map_file:
    description:
      - Path on the managed host of the last applied slot map (the JSON file the M(gpu.mig.mig_layout) role writes,
        slot name to C(gpu_uuid), C(profile) and C(placement)), read before planning.
      - Among slots that look alike (same profile and compute split), each keeps the GPU instance the slot map gives
        it, so its MIG UUID survives reordering the slots and adding or removing other slots. Without it, look-alike
        slots take ascending placements in the order written, and a reorder swaps their MIG UUIDs.
      - A missing file means no history. A file that cannot be read or is not a slot map fails the task naming the
        file and the fix, changing nothing.
    type: path
extends_documentation_fragment:
  - gpu.mig.nvml
attributes:
  action:
    description: Indicates this has a corresponding action plugin so some parts of the options can be executed on the controller.
    support: full
    details:
      - The host runs M(gpu.mig.mig_facts) and the controller plans from those facts with the module's own code. The
        module runs on the host only when the plan changes something; it then reads the host and plans again.
      - A converged host and check mode therefore cost one M(gpu.mig.mig_facts) run, with the same result as the module.
      - With O(slot_map_file), M(gpu.mig.mig_facts) reads that file in the same run, so the controller plans with the
        same history; when it cannot, the module runs on the host and reports why.
      - The action reads O(mig_parted_config_file) on the controller and passes the module the parsed config.
  async:
    description: Supports being used with the C(async) keyword.
    support: full
    details:
      - An C(async) task runs the module on the host directly (after the action reads O(mig_parted_config_file)).
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: Check mode returns the same plan that a real run executes.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
    details: The layout of each selected GPU before and after, one line per GPU instance.
  idempotent:
    description: When run twice in a row outside check mode, with the same arguments, the second invocation indicates no change.
    support: full
seealso:
  - module: gpu.mig.mig_facts
  - module: gpu.mig.mig_mode
"""

EXAMPLES = r"""
- name: A chat bot on a medium slice, a classifier and OCR on small ones (A100-40GB)
  gpu.mig.mig_instances:
    layout:
      - gpus: ["NVIDIA A100-SXM4-40GB"]
        slots:
          - {name: chat, profile: 3g.20gb}
          - {name: classifier, profile: 2g.10gb}
          - {name: ocr, profile: 1g.5gb}
  register: mig

- name: Pin services to the slots' MIG UUIDs
  ansible.builtin.debug:
    msg: "chat runs on {{ mig.slots.chat.mig_uuid }}"

- name: The same on H100-80GB, with the classifier split into two compute instances
  gpu.mig.mig_instances:
    layout:
      - gpus: ["arch:hopper"]
        slots:
          - {name: chat, profile: 3g.40gb}
          - name: classifier
            profile: 2g.20gb
            compute_instances: [{name: cls-a, profile: 1c.2g.20gb}, {name: cls-b, profile: 1c.2g.20gb}]
          - {name: ocr, profile: 1g.10gb}

- name: Bring a mig-parted config
  gpu.mig.mig_instances:
    mig_parted_config: "{{ lookup('ansible.builtin.file', 'mig-config.yaml') | from_yaml }}"
    mig_parted_config_name: all-balanced

- name: Bring a mig-parted config file from the controller, with the config picked per host
  gpu.mig.mig_instances:
    mig_parted_config_file: mig-config.yaml
    mig_parted_config_name: "{{ mig_config_name }}"
    slot_map_file: /etc/gpu-mig/slots.json

- name: Turn MIG off on every GPU, destroying the instances first (mig-parted's all-disabled)
  gpu.mig.mig_instances:
    layout:
      - {gpus: all, mig_enabled: false}

- name: Remove every instance from GPU 2
  gpu.mig.mig_instances:
    state: absent
    gpus: [2]
"""

RETURN = r"""
slots:
  description:
    - Slot name to where it lives. C(compute_instances) lists the slot's compute instances in the order the layout
      gives them, each with its C(name); C(mig_uuid) and C(compute_instance_id) are those of the first.
    - Check mode returns the same map as a real run, with null ids and UUIDs for the instances the run would create
      (a compute split that changes gives new MIG UUIDs, so check mode does not promise the old ones).
  returned: always
  type: dict
  sample:
    chat:
      gpu_index: 0
      gpu_uuid: GPU-5e0e4b1c-0000-4000-8000-000000000000
      gpu_name: NVIDIA A100-SXM4-40GB
      profile: 3g.20gb
      placement: {start: 4, size: 4}
      gpu_instance_id: 2
      compute_instance_id: 0
      mig_uuid: MIG-8b5c41e2-0000-4000-8000-000000000000
      memory_mib: 20096
      compute_instances: [{name: ci0, id: 0, profile: 3g.20gb, mig_uuid: MIG-8b5c41e2-0000-4000-8000-000000000000}]
plan:
  description:
    - The plan as a value. C(actions) run in order (destroy compute instances, destroy GPU instances, MIG mode, create
      GPU instances with explicit placements, create compute instances); C(gpus) summarises keep/destroy/create per GPU.
  returned: always
  type: dict
  sample: {changed: true, actions: [{op: create_gi, gpu_index: 0, slot: ocr, profile: 1g.5gb, placement: {start: 6, size: 1}}]}
restored:
  description: True when a failure midway was rolled back to the layout found at the start.
  returned: always
  type: bool
  sample: false
restore_changes:
  description:
    - After a rollback, every MIG device found at the start whose UUID the rollback changed (re-created compute
      instances get new UUIDs), with the slot name the layout gave it, if any. Services pinned to C(old_mig_uuid) must
      be repointed. Empty when nothing was rolled back or every UUID survived.
  returned: always
  type: list
  elements: dict
  sample:
    - {slot: chat, gpu_index: 0, gpu_uuid: GPU-5e0e4b1c-0000-4000-8000-000000000000, profile: 3g.20gb,
       placement: {start: 4, size: 4}, old_mig_uuid: MIG-8b5c41e2-0000-4000-8000-000000000000,
       new_mig_uuid: MIG-1d9a7c55-0000-4000-8000-000000000000}
skipped_devices:
  description:
    - Device indices that the mig-parted config's entries name and this host lacks, one message each; they are also
      warnings. mig-parted applies one file to a whole fleet and acts on the GPUs present, and so does this module.
    - Empty for O(layout) and O(state=absent). (Not C(skipped), which Ansible reads as the task's own status.)
  returned: always
  type: list
  elements: str
  sample: ["mig-configs.all-1g.10gb[0]: device 1 does not exist on this host; skipped"]
warnings_busy:
  description: With O(force=true), the busy instances that were destroyed anyway, with the PIDs that were terminated.
  returned: always
  type: list
  elements: str
  sample: []
ansible_facts:
  description: The refreshed C(nvidia_mig) facts after the change (before it, in check mode).
  returned: always
  type: dict
  contains:
    nvidia_mig:
      description: Same structure as gpu.mig.mig_facts returns.
      returned: always
      type: dict
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.gpu.mig.plugins.module_utils._mig import apply as _apply
from ansible_collections.gpu.mig.plugins.module_utils._mig import failure as _failure
from ansible_collections.gpu.mig.plugins.module_utils._mig import layout as _layout
from ansible_collections.gpu.mig.plugins.module_utils._mig import nvml as _nvml
from ansible_collections.gpu.mig.plugins.module_utils._mig.select import SelectorError


def run(module: AnsibleModule) -> None:
    """Read the host and the last applied slot map, plan, apply (unless check mode) and exit with the result."""
    driver = {}
    try:
        previous = _apply.read_slot_map(module.params["slot_map_file"])
        with _nvml.Nvml() as nvml:
            driver = dict(nvml.system(), loaded=True, error=None)
            host = _apply.read_host(nvml)
            desired = _apply.desired_layout(module.params, host)
            result = _apply.apply_layout(
                nvml,
                desired.layout,
                module.params["force"],
                module.check_mode,
                grace=module.params["force_grace"],
                host=host,
                previous_slots=previous,
            )
    except (_layout.LayoutError, SelectorError) as err:
        module.fail_json(msg=str(err), changed=False)
    except _apply.ApplyError as err:
        module.fail_json(msg=err.msg, **_apply.module_returns(err.result, driver, module._diff, desired))
    except _nvml.NvmlError as err:
        module.fail_json(msg=err.msg)
    module.exit_json(**_apply.module_returns(result, driver, module._diff, desired))


def main() -> None:
    module = AnsibleModule(supports_check_mode=True, **_apply.MIG_INSTANCES_ARGS)
    if not _nvml.HAS_PYNVML:
        module.fail_json(msg=missing_required_lib("nvidia-ml-py"), exception=_nvml.PYNVML_IMPORT_ERROR)
    with _failure.reported_as_bug(module, "gpu.mig.mig_instances"):
        run(module)


if __name__ == "__main__":
    main()
