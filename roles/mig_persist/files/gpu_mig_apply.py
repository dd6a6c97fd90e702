# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""gpu.mig boot applier: re-apply the MIG mode and layout at boot, then write the slot files and the CDI spec.

Installed by the gpu.mig.mig_persist role as ``<lib_dir>/gpu-mig-apply`` next to a copy of the collection's
``plugins/module_utils``; it runs the very code the ``gpu.mig.mig_instances`` module runs (``_apply.apply_layout``).
Exit status 0 when the layout is in place, 1 when it is not (each reason on its own line, naming the GPU), 2 when
the applier itself cannot run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

PROG = "gpu-mig-apply"


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
    ctk = config.get("nvidia_ctk") or "/usr/bin/nvidia-ctk"
    mode = config.get("cdi", "auto")
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


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="/etc/gpu-mig/applier.json", help="applier configuration (JSON)")
    parser.add_argument("--root", default="", help="prefix for the files written (tests); default: /")
    args = parser.parse_args(argv)
    root = args.root.rstrip("/")
    try:
        with open(root + args.config, encoding="utf-8") as stream:
            config = json.load(stream)
    except (OSError, ValueError) as err:
        log(f"cannot read {args.config}: {err}; rerun the gpu.mig.mig_persist role")
        return 2
    sys.path.insert(0, root + config["lib_dir"])
    try:
        # pylint: disable-next=import-outside-toplevel
        from ansible_collections.gpu.mig.plugins.module_utils._mig import apply as _apply
        from ansible_collections.gpu.mig.plugins.module_utils._mig import layout as _layout
        from ansible_collections.gpu.mig.plugins.module_utils._mig import nvml as _nvml
        from ansible_collections.gpu.mig.plugins.module_utils._mig import slot_files as _slot_files
    except ImportError as err:
        log(f"cannot load the gpu.mig core from {config['lib_dir']}: {err}; rerun the gpu.mig.mig_persist role")
        return 2
    if not _nvml.HAS_PYNVML:
        log(f"nvidia-ml-py is not installed for {sys.executable}; install it (gpu.mig.preflight role) and reboot")
        return 2
    layout = config.get("layout") or []
    log(f"applying the MIG layout ({len(layout)} entries) from {args.config}")
    try:
        with _nvml.Nvml() as nvml:
            result = _apply.apply_layout(nvml, layout, False, False)
        write_slots(result["slots"], config, root, _slot_files)
        refresh_cdi(config, root)
    except _layout.LayoutError as err:
        for problem in err.problems:
            log(f"FAILED: {problem}")
        return 1
    except (_apply.ApplyError, _nvml.NvmlError) as err:
        log(f"FAILED: {err.msg}")
        return 1
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        log(f"FAILED: {err}")
        return 1
    for name, slot in sorted(result["slots"].items()):
        log(
            f"slot {name}: {slot['mig_uuid']} (GPU {slot['gpu_index']} {slot['gpu_uuid']}, "
            f"{slot['profile']}@{slot['placement']['start']})"
        )
    log(f"done: {len(result['slots'])} slots, {'changed' if result['changed'] else 'already in place'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
