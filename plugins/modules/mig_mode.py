#!/usr/bin/python
# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Enable or disable MIG mode on NVIDIA GPUs, as each GPU generation needs."""

from __future__ import annotations

DOCUMENTATION = r"""
module: mig_mode
short_description: Enable or disable MIG mode on NVIDIA GPUs
version_added: 0.1.0
description:
  - Sets the MIG mode of the selected GPUs through NVML, touching only GPUs whose mode differs.
  - Hopper and later (H100, H200, B200) switch at once; the module refuses while processes use the GPU.
    The mode is lost on reboot, so the boot applier of the C(mig_persist) role sets it again.
  - Ampere (A100, A30) needs a GPU reset. NVML resets an idle GPU itself; while clients hold the GPU the change
    stays pending and the module returns RV(pending_reset=true) with the PIDs. With O(reset=true) it resets only the
    GPUs whose mode changed, one by one, and refuses while clients hold them. The mode persists over reboot.
  - GPUs without MIG support are skipped when selected by C(all), product name or architecture, and are an error
    when selected by index, UUID or PCI bus id.
  - A product name or architecture that matches no GPU on the host selects nothing (RV(unmatched)), so that one
    layout serves a mixed fleet; an index, UUID or PCI bus id that matches no GPU is an error. A malformed selector
    (such as the PCI bus id C(07:00.9)) is refused with the valid form.
  - A GPU that NVML cannot read (lost, erroring) is reported in RV(skipped_gpus) with a warning and left alone; the other
    GPUs proceed. Only a selector naming that GPU (its index, UUID or PCI bus id) makes the module fail.
author:
  - gpu.mig maintainers (@gpu-mig)
options:
  gpus:
    description:
      - Which GPUs to set; each item is an index, GPU UUID, PCI bus id, product name, C(arch:<generation>) or C(all).
    type: list
    elements: str
    default: [all]
  state:
    description:
      - The MIG mode wanted.
    type: str
    choices: [enabled, disabled]
    default: enabled
  reset:
    description:
      - Ampere only. Reset each GPU whose mode change is still pending, using C(nvidia-smi --gpu-reset) (NVML has no reset
        call). Refused while processes use that GPU.
    type: bool
    default: false
extends_documentation_fragment:
  - gpu.mig.nvml
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details:
      - Predicts the mode after the run, including which Ampere GPUs stay pending. In a VM whose hypervisor does not
        expose GPU reset, NVML keeps an idle Ampere GPU pending too; check mode cannot see that.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
  idempotent:
    description: When run twice in a row outside check mode, with the same arguments, the second invocation indicates no change.
    support: partial
    details: An Ampere change that waits for a reset returns RV(pending_reset=true) and no change on later runs until reset.
seealso:
  - module: gpu.mig.mig_facts
  - module: gpu.mig.mig_instances
"""

EXAMPLES = r"""
- name: Enable MIG on every MIG-capable GPU
  gpu.mig.mig_mode:
    state: enabled
  register: mig

- name: Enable MIG on the A100s and reset them (their clients were stopped before)
  gpu.mig.mig_mode:
    gpus: ["NVIDIA A100-SXM4-40GB"]
    state: enabled
    reset: true

- name: Disable MIG on GPU 3
  gpu.mig.mig_mode:
    gpus: [3]
    state: disabled
"""

RETURN = r"""
gpus:
  description: One entry per selected MIG-capable GPU.
  returned: always
  type: list
  elements: dict
  sample:
    - index: 0
      uuid: GPU-5e0e4b1c-0000-4000-8000-000000000000
      name: NVIDIA A100-SXM4-40GB
      before: {current: false, pending: false}
      after: {current: false, pending: true}
      set_mode: true
      reset: false
      pending_reset: true
      pids: [4242]
      changed: true
pending_reset:
  description: True when at least one GPU's change waits for a reset or reboot.
  returned: always
  type: bool
  sample: false
skipped_gpus:
  description:
    - GPUs left alone, with the reason - selected GPUs without MIG support, and every GPU that could not be read
      (its NVML error, which names the GPU and the fix; its name may be null).
  returned: always
  type: list
  elements: dict
  sample: [{index: 1, name: NVIDIA L4, reason: does not support MIG}]
unmatched:
  description:
    - Selectors that match no GPU on this host - product names or architectures of GPUs this host does not have
      (a mixed fleet sharing one layout). Nothing is done for them here.
  returned: always
  type: list
  elements: str
  sample: ["arch:hopper"]
reset_not_supported:
  description:
    - True when the module failed because the GPU cannot be reset at all (C(nvidia-smi) exit code 3, or NVML's activation
      status RESET_REQUIRED with O(reset=true)), as in a VM with GPU pass-through, where only a restart of the VM applies
      the MIG mode. Without O(reset=true) the module warns instead, naming the GPU.
  returned: on failure of a reset that the GPU does not support
  type: bool
  sample: true
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.gpu.mig.plugins.module_utils._mig import nvml as _nvml
from ansible_collections.gpu.mig.plugins.module_utils._mig.failure import reported_as_bug
from ansible_collections.gpu.mig.plugins.module_utils._mig.mode import ModeError, plan_gpu
from ansible_collections.gpu.mig.plugins.module_utils._mig.select import (
    SelectorError,
    naming,
    select_gpus,
    unmatched,
)

# nvidia-smi(1): exit code 3, "the requested operation is not available on the target device" (no GPU reset here);
# exit code 4, "the current user does not have permission to access this device or perform this operation".
NVIDIA_SMI_NOT_SUPPORTED = 3
NVIDIA_SMI_NO_PERMISSION = 4


def _skip(gpu: dict, selectors: list, errors: list) -> dict | None:
    """Why a GPU gets no mode set (it could not be read, or has no MIG), or None; an error when a selector names it."""
    reason = gpu.get("error") or (None if gpu["mig"]["supported"] else "does not support MIG")
    if reason is None:
        return None
    named = naming(gpu, selectors)
    if named is not None:
        what = gpu["error"] if gpu.get("error") else f"GPU {gpu['index']} ({gpu['name']}) {reason}"
        errors.append(f"{what}; selector {named!r} names this GPU: remove it from gpus to work on the other GPUs")
    return {"index": gpu["index"], "name": gpu["name"], "reason": reason}


def plan(module: AnsibleModule, gpus: list[dict]) -> tuple[list, list]:
    """Validate everything and plan every GPU before the first change.

    Selected GPUs without MIG, and every GPU that could not be read (the selectors cannot tell whether they meant it),
    are skipped and reported, unless a selector names one of them.
    """
    selectors = module.params["gpus"]
    selected = {g["index"] for g in select_gpus(gpus, selectors)}
    enabled = module.params["state"] == "enabled"
    steps, skipped, errors = [], [], []
    for gpu in gpus:
        if gpu["index"] not in selected and not gpu.get("error"):
            continue
        skip = _skip(gpu, selectors, errors)
        if skip is not None:
            skipped.append(skip)
            continue
        try:
            steps.append(plan_gpu(gpu, enabled, module.params["reset"]))
        except ModeError as err:
            errors.append(str(err))
    if errors:
        module.fail_json(msg="; ".join(errors), changed=False)
    for gpu in gpus:
        if gpu.get("error"):
            module.warn(f"{gpu['error']}; its MIG mode was left as it is")
    return steps, skipped


def _reset(module: AnsibleModule, step, bus_id: str, changed: bool) -> None:
    """Reset one GPU with nvidia-smi (NVML has no reset call); fail naming the GPU and the fix."""
    nvidia_smi = module.get_bin_path("nvidia-smi", required=True)
    rc, out, err = module.run_command([nvidia_smi, "--gpu-reset", "-i", bus_id])
    detail = f"nvidia-smi: {(err or out).strip()}"
    if rc == NVIDIA_SMI_NOT_SUPPORTED:
        module.fail_json(msg=step.reset_unsupported_message(detail), changed=changed, reset_not_supported=True)
    if rc == NVIDIA_SMI_NO_PERMISSION:
        module.fail_json(
            msg=f"GPU {step.index} ({step.uuid}): reset failed ({detail}); resetting a GPU needs root: run the task"
            " with become: true",
            changed=changed,
        )
    if rc != 0:
        module.fail_json(
            msg=f"GPU {step.index} ({step.uuid}): reset failed ({detail}); "
            "stop the GPU's clients (nvidia-persistenced, DCGM, nvidia_drm users) and retry, or reboot",
            changed=changed,
        )


def execute(module: AnsibleModule, nvml: _nvml.Nvml, steps: list, gpus: dict) -> list[dict]:
    """Run the planned calls and report what each GPU actually reached."""
    results = []
    enabled = module.params["state"] == "enabled"
    for step in steps:
        try:
            status = nvml.set_mig_mode(step.index, enabled) if step.set_mode else None
            mode = nvml.mig_mode(step.index)
        except _nvml.NvmlError as err:
            done = ", ".join(f"GPU {r['index']}" for r in results if r["changed"]) or "none"
            module.fail_json(
                msg=f"{err.msg} (already changed before this failure: {done})", changed=done != "none", gpus=results
            )
        if status == _nvml.pynvml.NVML_ERROR_RESET_REQUIRED:  # NVML cannot reset this GPU: a VM with pass-through
            detail = "NVML: the activation status of the new mode is RESET_REQUIRED"
            if module.params["reset"]:
                module.fail_json(msg=step.reset_unsupported_message(detail), changed=True, reset_not_supported=True)
            module.warn(step.reset_unsupported_message(detail))
        elif step.reset and mode["current"] != enabled:
            _reset(module, step, gpus[step.index]["pci_bus_id"], bool(results) or step.set_mode)
            mode = nvml.mig_mode(step.index)
        after = {"current": mode["current"], "pending": mode["pending"]}
        result = step.to_dict()
        result.update(after=after, pending_reset=after["current"] != enabled)
        results.append(result)
    return results


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "gpus": {"type": "list", "elements": "str", "default": ["all"]},
            "state": {"type": "str", "choices": ["enabled", "disabled"], "default": "enabled"},
            "reset": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    if not _nvml.HAS_PYNVML:
        module.fail_json(msg=missing_required_lib("nvidia-ml-py"), exception=_nvml.PYNVML_IMPORT_ERROR)
    with reported_as_bug(module, "gpu.mig.mig_mode"):
        try:
            with _nvml.Nvml() as nvml:
                gpus = [nvml.gpu_or_failure(i) for i in range(nvml.count())]
                try:
                    steps, skipped = plan(module, gpus)
                except SelectorError as err:
                    module.fail_json(msg=str(err))
                if module.check_mode:
                    results = [s.to_dict() for s in steps]
                else:
                    results = execute(module, nvml, steps, {g["index"]: g for g in gpus})
        except _nvml.NvmlError as err:
            module.fail_json(msg=err.msg)
        changed = any(s.changed for s in steps)
        diff = {
            "before": {f"GPU {r['index']}": r["before"] for r in results},
            "after": {f"GPU {r['index']}": r["after"] for r in results},
        }
        module.exit_json(
            changed=changed,
            gpus=results,
            pending_reset=any(r["pending_reset"] for r in results),
            skipped_gpus=skipped,
            unmatched=unmatched(gpus, module.params["gpus"]),
            diff=diff,
        )


if __name__ == "__main__":
    main()
