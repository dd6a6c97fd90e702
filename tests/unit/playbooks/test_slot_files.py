# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The slot files have one format: the mig_layout role and the boot applier write the same bytes for random slots.

The role's own tasks (``tasks_from: slot_files``) run with ansible-playbook over several random slot maps, each in its
own root that already holds a stale copy and the file of a slot that is gone; the applier's ``write_slots`` runs over
the same maps and starting trees. Both trees must then be equal, file for file and byte for byte.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import subprocess
import sys
import uuid
from pathlib import Path

from ansible_collections.gpu.mig.plugins.module_utils._mig import catalog as _catalog
from ansible_collections.gpu.mig.plugins.module_utils._mig import slot_files as _slot_files

REPO = Path(__file__).resolve().parents[3]
SLOT_MAP, ENV_DIR = "/etc/gpu-mig/slots.json", "/run/gpu-mig/slots"
MODELS = list(_catalog.all_models().values())
NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_-"


def random_slot(rng: random.Random) -> dict:
    """One slot as gpu.mig.mig_instances returns it in ``slots``, with random values of the right kinds."""
    model = rng.choice(MODELS)
    profile = rng.choice(model.profiles)
    cis = [
        {
            "name": f"ci{i}",
            "id": rng.randrange(8),
            "profile": profile.name,
            "mig_uuid": f"MIG-{uuid.UUID(int=rng.getrandbits(128))}",
        }
        for i in range(rng.randint(1, 3))
    ]
    return {
        "gpu_index": rng.randrange(8),
        "gpu_uuid": f"GPU-{uuid.UUID(int=rng.getrandbits(128))}",
        "gpu_name": rng.choice([model.name, "NVIDIA H100 «test» 80GB"]),
        "profile": profile.name,
        "placement": {"start": rng.choice(profile.placement_starts), "size": profile.placement_size},
        "gpu_instance_id": rng.randrange(15),
        "compute_instance_id": cis[0]["id"],
        "mig_uuid": cis[0]["mig_uuid"],
        "memory_mib": profile.memory_mib,
        "compute_instances": cis,
    }


def random_slots(rng: random.Random) -> dict:
    names = {
        rng.choice(NAME_CHARS[:36]) + "".join(rng.choices(NAME_CHARS, k=rng.randint(0, 20))) for _unused in range(6)
    }
    return {name: random_slot(rng) for name in sorted(names)[: rng.randint(1, 6)]}


def start_tree(root: Path, slots: dict) -> None:
    """What a host holds before the run: the file of a slot that is gone and a stale env file of a current slot."""
    (root / ENV_DIR[1:]).mkdir(parents=True)
    (root / ENV_DIR[1:] / "gone-slot.env").write_text("GPU_MIG_SLOT=gone-slot\n")
    (root / ENV_DIR[1:] / f"{next(iter(slots))}.env").write_text("CUDA_VISIBLE_DEVICES=MIG-old\n")


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def load_applier():
    spec = importlib.util.spec_from_file_location("gpu_mig_apply", REPO / "roles/mig_persist/files/gpu_mig_apply.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_role(cases: list[tuple[Path, dict]], base: Path) -> subprocess.CompletedProcess:
    play = {
        "hosts": "localhost",
        "connection": "local",
        "gather_facts": False,
        # The handlers the tasks notify: no CDI spec, no systemd here.
        "vars": {"_mig_layout_cdi_enabled": False, "_mig_layout_restart": [], "mig_layout_manage_systemd": False},
        "tasks": [
            {
                "name": "Write the slot files of each case",
                "ansible.builtin.include_role": {"name": "gpu.mig.mig_layout", "tasks_from": "slot_files"},
                "vars": {"mig_layout_root": "{{ case.root }}", "mig_layout_slots": "{{ case.slots }}"},
                "loop": [{"root": str(root), "slots": slots} for root, slots in cases],
                "loop_control": {"loop_var": "case"},
            }
        ],
    }
    (base / "play.yml").write_text(json.dumps([play]))
    env = {
        **os.environ,
        "ANSIBLE_COLLECTIONS_PATH": os.environ.get("ANSIBLE_COLLECTIONS_PATH", str(REPO / ".build/collections")),
        "ANSIBLE_LOCAL_TEMP": str(base / "tmp"),
        "ANSIBLE_NOCOLOR": "1",
    }
    argv = [
        str(Path(sys.executable).parent / "ansible-playbook"),
        *("-i", "localhost,", "-e", json.dumps({"ansible_python_interpreter": sys.executable})),
        str(base / "play.yml"),
    ]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, check=False)


def test_the_role_and_the_boot_applier_write_the_same_slot_files(tmp_path):
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    cases = [(tmp_path / f"role{n}", random_slots(rng)) for n in range(4)]
    for root, slots in cases:
        start_tree(root, slots)
    run = run_role(cases, tmp_path)
    assert run.returncode == 0, (seed, run.stdout[-4000:], run.stderr[-2000:])
    applier = load_applier()
    for n, (role_root, slots) in enumerate(cases):
        applier_root = tmp_path / f"applier{n}"
        start_tree(applier_root, slots)
        applier.write_slots(slots, {"slot_map": SLOT_MAP, "env_dir": ENV_DIR}, str(applier_root), _slot_files)
        written = tree(role_root)
        assert sorted(written) == sorted([SLOT_MAP[1:], *(f"{ENV_DIR[1:]}/{name}.env" for name in slots)]), seed
        assert written == tree(applier_root), seed
        assert json.loads(written[SLOT_MAP[1:]]) == slots, seed
