# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What the built collection artifact holds: everything a user runs, nothing that only runs from a checkout.

Every file of the checkout is either shipped or dev-only (galaxy.yml ``build_ignore``); the artifact that
``ansible-galaxy collection build`` makes holds exactly the shipped files.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Paths (a folder ends with /) and why they ship.
SHIPPED = {
    "plugins/": "modules, action and filter plugins, and the code they share",
    "roles/": "the roles",
    "playbooks/": "the playbooks (gpu.mig.site, ...)",
    "inventories/": "the example inventory and the simulated fleet's group_vars",
    "meta/": "runtime metadata",
    "docs/": "the documentation, with the catalog's reference data (docs/reference/)",
    "changelogs/": "changelog data (antsibull-changelog)",
    "README.md": "the collection's front page",
    "CHANGELOG.rst": "the changelog",
    ".ansible-lint": "the lint profile galaxy-importer applies to the artifact",
    "tests/simulator/": "the simulated NVML and migsim: the demo's simulated fleet runs from the installed collection",
    "tests/servers/": "the synthetic inference servers behind the services documentation's examples",
    "tests/capacity_server/": "the deterministic service the capacity documentation tests against",
    "tests/sanity/": "ansible-test sanity ignores, for sanity runs on the artifact",
}
# Paths that only run from a checkout, and why.
DEV_ONLY = {
    "galaxy.yml": "build input (the artifact carries MANIFEST.json instead)",
    ".gitignore": "git",
    ".ci/": "the CI entry point",
    "Makefile": "the checkout's test and demo targets",
    "pyproject.toml": "ruff and pytest settings",
    "requirements-dev.in": "development dependencies",
    "requirements-dev.txt": "development dependencies",
    "hacking/": "generators and test-host tooling (catalog generator, Quadlet, systemd hosts)",
    "benchmarks/": "overhead figures",
    "extensions/molecule/": "Molecule scenarios: they run from a checkout (hacking/, .build/)",
    "tests/unit/": "unit and playbook tests: they need the checkout (galaxy.yml, hacking/, .build/)",
    "tests/integration/": "ansible-test integration targets",
    "tests/config.yml": "ansible-test settings",
    "tests/fixtures/": "NVIDIA's published mig-parted configs, test inputs kept with their sources and licences",
}


def under(path: str, prefixes: dict[str, str]) -> bool:
    return any(path == p or (p.endswith("/") and path.startswith(p)) for p in prefixes)


def checkout_files() -> set[str]:
    """The checkout's files as git sees them: tracked or not ignored, still on disk."""
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard", "-z"],
        capture_output=True,
        check=True,
    ).stdout.decode()
    return {name for name in listed.split("\0") if name and (ROOT / name).is_file()}


@pytest.fixture(scope="module")
def artifact_files(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    out = tmp_path_factory.mktemp("dist")
    env = {**os.environ, "ANSIBLE_LOCAL_TEMP": str(out / "tmp"), "ANSIBLE_NOCOLOR": "1"}
    argv = [Path(sys.executable).parent / "ansible-galaxy", "collection", "build", "--output-path", out, ROOT]
    built = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert built.returncode == 0, built.stdout + built.stderr
    (tarball,) = out.glob("gpu-mig-*.tar.gz")
    with tarfile.open(tarball) as tar:
        return {m.name for m in tar.getmembers() if m.isfile()} - {"MANIFEST.json", "FILES.json"}


def test_every_file_is_shipped_or_dev_only():
    undecided = sorted(f for f in checkout_files() if not under(f, SHIPPED) and not under(f, DEV_ONLY))
    assert not undecided, f"add these to SHIPPED, or to DEV_ONLY and galaxy.yml build_ignore: {undecided}"


def test_artifact_holds_exactly_the_shipped_files(artifact_files):
    shipped = {f for f in checkout_files() if under(f, SHIPPED)}
    extra, missing = sorted(artifact_files - shipped), sorted(shipped - artifact_files)
    assert not extra, f"dev-only or undecided files in the artifact: {extra}"
    assert not missing, f"shipped files missing from the artifact: {missing}"


def test_dev_only_trees_stay_out_and_what_users_run_is_in(artifact_files):
    assert not any(
        f.startswith(("hacking/", "benchmarks/", "extensions/molecule/", "tests/unit/")) for f in artifact_files
    )
    for needed in ("roles/mig_persist/tasks/main.yml", "plugins/module_utils/_mig/apply.py", "playbooks/site.yml",
                   "docs/reference/mig-profiles.json", "tests/simulator/migsim", "meta/runtime.yml"):  # fmt: skip
        assert needed in artifact_files
