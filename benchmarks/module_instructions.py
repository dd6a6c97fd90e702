# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Per-host cost of one module run on a simulated 8-GPU host, in CPU instructions, against ansible.builtin.ping.

``mig_instances`` is the module itself; on a converged host its action plugin runs only ``mig_facts`` there.

Wall and CPU time move by several percent from run to run on a shared machine; instruction counts under valgrind's
callgrind repeat to about 0.1%, so this shows where a module's overhead goes and whether a change helped. It keeps
the AnsiballZ scripts Ansible writes for one host and runs each under callgrind, printing the total instructions,
the share spent compiling Python source (AnsiballZ ships sources; Python 3.11's zipimport compiles each imported
file twice) and the module's cost over ping. Needs valgrind (Debian package ``valgrind``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _fleetbench import REPO, make_fleet

PLAYBOOKS = {
    "ping": "ansible.builtin.ping:",
    "mig_facts": "gpu.mig.mig_facts:",
    "mig_instances": """gpu.mig.mig_instances:
        layout:
          - gpus: all
            slots:
              - {name: chat, profile: 3g.40gb}
              - {name: classifier, profile: 2g.20gb}
              - {name: ocr, profile: 1g.10gb}""",
}
TOTAL = re.compile(r"^(?:summary|totals): (\d+)", re.M)
COMPILE = re.compile(r"^\s*([\d,]+) \([^)]*\)\s+\S*:builtin_compile\b", re.M)  # needs the interpreter's symbols


def playbook(task: str) -> str:
    return f"""---
- name: One task
  hosts: all
  gather_facts: false
  tasks:
    - name: Run
      {task}
"""


def keep_script(name: str, inventory: Path, work: Path) -> Path:
    """Run the one-task playbook with ANSIBLE_KEEP_REMOTE_FILES and return the module's AnsiballZ script."""
    book, remote = work / f"{name}.yml", work / f"remote-{name}"
    book.write_text(playbook(PLAYBOOKS[name]))
    env = dict(
        os.environ,
        ANSIBLE_COLLECTIONS_PATH=str(REPO / ".build/collections"),
        ANSIBLE_KEEP_REMOTE_FILES="1",
        ANSIBLE_REMOTE_TMP=str(remote),
        PATH=f"{REPO / '.venv/bin'}:{os.environ['PATH']}",
    )
    shutil.rmtree(remote, ignore_errors=True)
    subprocess.run(["ansible-playbook", "-i", str(inventory), str(book)], env=env, check=True, capture_output=True)
    return next(remote.glob(f"*/AnsiballZ_{name}.py"))


def instructions(python: Path, script: Path, work: Path) -> tuple[int, int | None]:
    """(total, compiling) instructions of one run of ``script`` by the host's interpreter wrapper."""
    out = work / f"{script.stem}.cg"
    cmd = ["valgrind", "--tool=callgrind", "--trace-children=yes", f"--callgrind-out-file={out}.%p"]
    subprocess.run([*cmd, str(python), str(script)], env=dict(os.environ, PYTHONHASHSEED="0"), check=True,
                   capture_output=True)  # fmt: skip
    # The wrapper execs env, then Python, in one process: its profile is the largest one.
    profile = max(work.glob(f"{out.name}.*"), key=lambda p: int(TOTAL.search(p.read_text()).group(1)))
    total = int(TOTAL.search(profile.read_text()).group(1))
    annotated = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", str(profile)], check=True, capture_output=True, text=True
    ).stdout
    compiling = COMPILE.search(annotated)
    return total, int(compiling.group(1).replace(",", "")) if compiling else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("modules", nargs="*", help="mig_instances, mig_facts (default: both)")
    modules = parser.parse_args().modules or ["mig_instances", "mig_facts"]
    unknown = set(modules) - set(PLAYBOOKS)
    if unknown:
        parser.error(f"unknown modules {sorted(unknown)}; choose from {sorted(PLAYBOOKS)}")
    if not shutil.which("valgrind") or not shutil.which("callgrind_annotate"):
        sys.exit("valgrind is not installed: apt-get install valgrind")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        inventory = make_fleet(work / "fleet", 1, "dgxh100")
        python = next((work / "fleet").glob("*/python"))
        try:
            # The first run converges the host, so its action plugin ran the module: keep that script. Run again on
            # the converged host, it is a no-op, like every other measured run.
            scripts = {"mig_instances": keep_script("mig_instances", inventory, work)}
            scripts.update((name, keep_script(name, inventory, work)) for name in ["ping", "mig_facts"])
            figures = {name: instructions(python, scripts[name], work) for name in ["ping", *modules]}
        finally:
            subprocess.run([str(REPO / "tests/simulator/migsim"), "stop", str(work / "fleet")], check=False)
    ping_total, ping_compiling = figures["ping"]
    print("One run on a simulated 8 x H100 host (no-op), in millions of instructions (callgrind):")
    for name, (total, compiling) in figures.items():
        source = "n/a (no interpreter symbols)" if compiling is None else f"{compiling / 1e6:6.1f} M"
        print(f"  {name:<14} {total / 1e6:8.1f} M, compiling Python source {source}")
        if name != "ping":
            extra = f"  {'':<14} +{(total - ping_total) / 1e6:.1f} M over ping (x{total / ping_total:.3f})"
            if compiling is not None and ping_compiling is not None:
                extra += f", of which compiling +{(compiling - ping_compiling) / 1e6:.1f} M"
            print(extra)


if __name__ == "__main__":
    main()
