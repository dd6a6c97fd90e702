# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""gpu.mig boot applier: re-apply the MIG mode and layout at boot, then write the slot files and the CDI spec.

Installed by the gpu.mig.mig_persist role as ``<lib_dir>/gpu-mig-apply`` next to a copy of the collection's
``plugins/module_utils``; it runs the very code the ``gpu.mig.mig_instances`` module runs (``_apply.apply_layout``,
and ``_migparted.layout_from_mig_parted`` for a mig-parted config). Exit status 0 when the layout is in place, 1 when
it is not, 2 when the applier itself cannot run; each reason is one ``FAILED:`` journal line, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

PROG = "gpu-mig-apply"
FIX = "fix the cause above, then run the gpu.mig.mig_layout and gpu.mig.mig_persist roles again (or reboot)"
CONFIG_DEFAULTS = {"cdi": "auto", "nvidia_ctk": "/usr/bin/nvidia-ctk", "cdi_spec": "/etc/cdi/nvidia.yaml"}


class CannotRun(Exception):
    """The applier cannot run at all (its config or the installed core); ``problems`` says why, each with the fix."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


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


def _absolute_path(value) -> str | None:
    return None if isinstance(value, str) and value.startswith("/") else "must be an absolute path"


def _layout(value) -> str | None:
    return None if isinstance(value, list) else "must be a list of layout entries (gpu.mig.mig_instances' layout)"


def _mig_parted_config(value) -> str | None:
    return None if isinstance(value, dict) else "must be a parsed mig-parted config (version, mig-configs)"


def _config_name(value) -> str | None:
    return None if isinstance(value, str) and value.strip() else "must be the name of a config in mig_parted_config"


def _cdi(value) -> str | None:
    return None if value in ("auto", "always", "never") else "must be auto, always or never"


def config_rules(core) -> tuple:
    """The keys of applier.json (as the mig_persist role writes them), as rules of the core's mapping check."""
    rule = core.layout.Rule
    return (
        rule("lib_dir", True, _absolute_path),
        rule("layout", False, _layout),
        rule("mig_parted_config", False, _mig_parted_config),
        rule("mig_parted_config_name", False, _config_name),
        rule("slot_map", True, _absolute_path),
        rule("env_dir", True, _absolute_path),
        rule("cdi", False, _cdi),
        rule("nvidia_ctk", False, _absolute_path),
        rule("cdi_spec", False, _absolute_path),
    )


def check_config(config: dict, core, where: str) -> list[str]:
    """Every problem with applier.json at once: each key by ``config_rules``, then the one desired layout."""
    problems: list[str] = []
    core.layout.check_mapping(config, config_rules(core), where, problems)
    given = [key for key in ("layout", "mig_parted_config") if config.get(key) is not None]
    if len(given) != 1:
        problems.append(f"{where}: needs exactly one of 'layout' and 'mig_parted_config', not {given or 'neither'}")
    if (config.get("mig_parted_config") is None) != (config.get("mig_parted_config_name") is None):
        problems.append(f"{where}: 'mig_parted_config' and 'mig_parted_config_name' go together")
    return problems


class Core:
    """The collection's MIG core, imported from the copy the mig_persist role installed in ``lib_dir``."""

    PACKAGE = "ansible_collections.gpu.mig.plugins.module_utils._mig"
    MODULES = ("apply", "layout", "migparted", "nvml", "select", "slot_files")

    def __init__(self, lib_dir: str):
        sys.path.insert(0, lib_dir)
        for name in self.MODULES:
            setattr(self, name, importlib.import_module(f"{self.PACKAGE}.{name}"))


def load(config_path: str, root: str) -> tuple[dict, Core]:
    """applier.json, checked, with defaults filled in, and the core it names. Raises CannotRun."""
    fix = "rerun the gpu.mig.mig_persist role"
    try:
        with open(root + config_path, encoding="utf-8") as stream:
            config = json.load(stream)
    except (OSError, ValueError) as err:
        raise CannotRun([f"cannot read {config_path}: {err}; {fix}"]) from err
    if not isinstance(config, dict):
        raise CannotRun([f"{config_path} holds a JSON {type(config).__name__}, not the applier's settings; {fix}"])
    lib_dir = config.get("lib_dir")
    if _absolute_path(lib_dir):
        raise CannotRun([f"{config_path}: lib_dir is {lib_dir!r}; it {_absolute_path(lib_dir)}; {fix}"])
    try:
        core = Core(root + lib_dir)
    except ImportError as err:
        raise CannotRun([f"cannot load the gpu.mig core from {lib_dir}: {err}; {fix}"]) from err
    problems = check_config(config, core, config_path)
    if problems:
        raise CannotRun([f"{problem}; {fix}" for problem in problems])
    if not core.nvml.HAS_PYNVML:
        raise CannotRun([f"nvidia-ml-py is not installed for {sys.executable}; install it (gpu.mig.preflight role)"])
    return {**CONFIG_DEFAULTS, **{k: v for k, v in config.items() if v is not None}}, core


def apply(config: dict, core: Core, root: str, config_path: str) -> dict:
    """Apply the desired layout, write the slot files and the CDI spec; returns apply_layout's result.

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
    return result


def failure_lines(err: BaseException, core: Core | None) -> list[str]:
    """What went wrong, one line per problem; an exception the core does not raise by design is named as a bug."""
    if core is not None and isinstance(err, core.layout.LayoutError):
        return list(err.problems)
    if core is not None and isinstance(err, (core.apply.ApplyError, core.nvml.NvmlError)):
        return [err.msg]
    if isinstance(err, (OSError, RuntimeError, subprocess.SubprocessError)) or (
        core is not None and isinstance(err, core.select.SelectorError)
    ):
        return [str(err)]
    return [
        f"unexpected {type(err).__name__}: {err} (a gpu.mig bug: please report it with these journal lines); "
        "the MIG layout may be partly applied: check it with gpu.mig.mig_facts"
    ]


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 applied, 1 not applied, 2 cannot run; every failure as FAILED lines, never a traceback."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="/etc/gpu-mig/applier.json", help="applier configuration (JSON)")
    parser.add_argument("--root", default="", help="prefix for the files written (tests); default: /")
    args = parser.parse_args(argv)
    root = args.root.rstrip("/")
    core = None
    try:
        config, core = load(args.config, root)
        result = apply(config, core, root, args.config)
    except CannotRun as err:
        for problem in err.problems:
            log(f"FAILED: {problem}")
        return 2
    except Exception as err:  # pylint: disable=broad-exception-caught  # the last line: no traceback at boot
        for line in failure_lines(err, core):
            log(f"FAILED: {line}")
        log(f"FAILED: the MIG layout is not in place; {FIX}")
        return 1 if core is not None else 2
    for name, slot in sorted(result["slots"].items()):
        log(
            f"slot {name}: {slot['mig_uuid']} (GPU {slot['gpu_index']} {slot['gpu_uuid']}, "
            f"{slot['profile']}@{slot['placement']['start']})"
        )
    log(f"done: {len(result['slots'])} slots, {'changed' if result['changed'] else 'already in place'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
