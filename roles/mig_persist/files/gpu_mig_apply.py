# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""gpu.mig boot applier: re-apply the MIG mode and layout at boot, then write the slot files and the CDI spec.

Installed by the gpu.mig.mig_persist role as ``<lib_dir>/gpu-mig-apply`` next to a copy of the collection's
``plugins/module_utils/_mig``, which it imports from its own directory only (``--lib-dir`` names another); it runs the
very code the ``gpu.mig.mig_instances`` module runs (``_apply.apply_layout``, and ``_migparted.layout_from_mig_parted``
for a mig-parted config), its config read and checked by ``_mig.host_script``. Exit status 0 when the layout is in
place, 1 when it is not, 2 when the applier itself cannot run; each reason is one ``FAILED:`` journal line, never a
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
from types import SimpleNamespace

PROG = "gpu-mig-apply"
ROLE_FIX = "rerun the gpu.mig.mig_persist role"
FIX = "fix the cause above, then run the gpu.mig.mig_layout and gpu.mig.mig_persist roles again (or reboot)"
CONFIG_DEFAULTS = {"cdi": "auto", "nvidia_ctk": "/usr/bin/nvidia-ctk", "cdi_spec": "/etc/cdi/nvidia.yaml"}
# The core's package, installed next to this script (in HERE) by the gpu.mig.mig_persist role's tasks/core.yml.
CORE = "ansible_collections.gpu.mig.plugins.module_utils._mig"
HERE = os.path.dirname(os.path.realpath(__file__))
CORE_MODULES = ("apply", "host_script", "layout", "nvml", "slot_files")


def log(message: str) -> None:
    """One journal line per message (stderr goes to the journal under systemd)."""
    for line in str(message).splitlines() or [""]:
        print(f"{PROG}: {line}", file=sys.stderr, flush=True)


def write_if_changed(path: str, text: str, mode: int = 0o644) -> bool:
    """Atomically replace ``path`` when its content differs; returns True when it wrote."""
    try:
        with open(path, encoding="utf-8") as stream:
            if stream.read() == text:
                return False
    except FileNotFoundError:
        pass
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.")
    with os.fdopen(fd, "w", encoding="utf-8") as stream:
        stream.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    return True


def write_slots(slots: dict, config: dict, root: str, slot_files) -> None:
    """Slot map, one env file per slot, and no env file for slots that are gone.

    ``slot_files``: the collection's ``_mig.slot_files`` (their text, which the mig_layout role writes too).
    """
    write_if_changed(root + config["slot_map"], slot_files.slot_map_text(slots))
    env_dir = root + config["env_dir"]
    for name, slot in sorted(slots.items()):
        if not slot.get("mig_uuid"):
            raise RuntimeError(f"slot {name} (GPU {slot['gpu_index']} {slot['gpu_uuid']}): no MIG device after apply")
        write_if_changed(os.path.join(env_dir, f"{name}.env"), slot_files.env_text(name, slot))
    for entry in os.listdir(env_dir):
        if entry.endswith(".env") and entry[:-4] not in slots:
            os.unlink(os.path.join(env_dir, entry))


def refresh_cdi(config: dict, root: str) -> None:
    """Regenerate the CDI spec when the container toolkit is present (or cdi is 'always')."""
    ctk, mode = config["nvidia_ctk"], config["cdi"]
    if mode == "never" or (mode == "auto" and not os.access(ctk, os.X_OK)):
        return
    smi = shutil.which("nvidia-smi")
    if smi:  # creates the /dev/nvidia-caps nodes that the CDI spec lists (mig-parted PR #82)
        subprocess.run([smi, "-L"], check=False, capture_output=True, timeout=60)
    spec = root + config["cdi_spec"]
    done = subprocess.run([ctk, "cdi", "generate", f"--output={spec}"], check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(
            f"nvidia-ctk cdi generate failed (rc {done.returncode}): {(done.stderr or done.stdout).strip()}"
        )


def _cdi(value) -> str | None:
    return None if value in ("auto", "always", "never") else "must be auto, always or never"


def applier(core: SimpleNamespace):
    """applier.json as the mig_persist role writes it: the shared keys, the files written and the CDI settings."""
    rule, path = core.layout.Rule, core.host_script.absolute_path
    return core.host_script.HostScript(
        fix=ROLE_FIX,
        settings="the applier's settings",
        rules=(
            rule("env_dir", True, path),
            rule("cdi", False, _cdi),
            rule("nvidia_ctk", False, path),
            rule("cdi_spec", False, path),
        ),
        needs_layout=True,
        defaults=CONFIG_DEFAULTS,
        bug_note="; the MIG layout may be partly applied: check it with gpu.mig.mig_facts",
    )


def apply(config: dict, core: SimpleNamespace, root: str, config_path: str) -> list[str]:
    """Apply the desired layout, write the slot files and the CDI spec, log the slots; a failure raises, so no
    problems are returned.

    The desired layout comes from ``_apply.desired_layout`` (a mig-parted config converted as gpu.mig.mig_instances
    converts it; skipped devices and warnings logged); the last slot map written keeps look-alike slots on their
    instances, as the mig_layout role's ``slot_map_file`` does.
    """
    name = config.get("mig_parted_config_name")
    what = f"mig-parted config {name!r}" if name else f"MIG layout ({len(config['layout'])} entries)"
    log(f"applying the {what} from {config_path}")
    params = {key: config.get(key) for key in ("layout", "mig_parted_config", "mig_parted_config_name")}
    history = core.apply.read_slot_map(root + config["slot_map"])
    with core.nvml.Nvml() as nvml:
        host = core.apply.read_host(nvml)
        layout, skipped, warnings = core.apply.desired_layout({**params, "state": "present", "gpus": None}, host)
        for kind, messages in (("skipped", skipped), ("warning", warnings)):
            for message in messages:
                log(f"{kind}: {message}")
        result = core.apply.apply_layout(nvml, layout, False, False, host=host, previous_slots=history)
    for message in [*result["unread_gpus"], *result["warnings"]]:
        log(f"warning: {message}")
    write_slots(result["slots"], config, root, core.slot_files)
    refresh_cdi(config, root)
    for slot_name, slot in sorted(result["slots"].items()):
        log(
            f"slot {slot_name}: {slot['mig_uuid']} (GPU {slot['gpu_index']} {slot['gpu_uuid']}, "
            f"{slot['profile']}@{slot['placement']['start']})"
        )
    log(f"done: {len(result['slots'])} slots, {'changed' if result['changed'] else 'already in place'}")
    return []


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 applied, 1 not applied, 2 cannot run; every failure as FAILED lines, never a traceback."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="/etc/gpu-mig/applier.json", help="applier configuration (JSON)")
    parser.add_argument("--root", default="", help="prefix for the files read and written (tests); default: /")
    parser.add_argument(
        "--lib-dir", default=HERE, help="directory holding ansible_collections/ (the core); default: this script's"
    )
    args = parser.parse_args(argv)
    root = args.root.rstrip("/")
    sys.path.insert(0, args.lib_dir)  # first: the core installed there is the only copy imported
    try:
        core = SimpleNamespace(**{name: importlib.import_module(f"{CORE}.{name}") for name in CORE_MODULES})
    except ImportError as err:  # before the core: this one line is all the applier can say
        log(f"FAILED: cannot load the gpu.mig core from {args.lib_dir}: {err}; {ROLE_FIX}")
        return 2
    status, problems = applier(core).run(args.config, root, lambda config: apply(config, core, root, args.config))
    for problem in problems:
        log(f"FAILED: {problem}")
    if status == 1:
        log(f"FAILED: the MIG layout is not in place; {FIX}")
    return status


if __name__ == "__main__":
    sys.exit(main())
