#!/usr/bin/env python3
# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Audit overhead: wall time of playbooks/audit.yml against a one-task ping playbook over the same simulated hosts.

Builds a simulated fleet (default 200 hosts), then runs ping and audit alternately (default 3 rounds) and prints
the median of each and their ratio (target: audit <= 1.3x ping). Not run by the tests: ``make benchmarks``-style.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PING = """---
- name: Ping every host
  hosts: all
  gather_facts: false
  tasks:
    - name: Ping
      ansible.builtin.ping:
"""


def run(playbook: Path, inventory: Path, forks: int, env: dict, extra: list[str]) -> float:
    """Wall time of one ansible-playbook run (raises on failure)."""
    cmd = [str(BIN / "ansible-playbook"), "-i", str(inventory), "-i", str(REPO / "inventories" / "simulated"),
           "-f", str(forks), str(playbook), *extra]  # fmt: skip
    start = time.monotonic()
    done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    wall = time.monotonic() - start
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:])
        raise SystemExit(f"{playbook.name} failed with rc {done.returncode}")
    return wall


def main() -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--forks", type=int, default=10)
    parser.add_argument("--mix", default="a100,h100,a30,l4,nodriver,h200,b200,olddriver")
    parser.add_argument("--target", type=float, default=1.3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gpu-mig-audit-bench-", dir=REPO / ".build"))
    fleet = work / "fleet"
    subprocess.run([str(REPO / "tests/simulator/migsim"), "fleet", "--dir", str(fleet), "--hosts", str(args.hosts),
                    "--mix", args.mix, "--force"], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    ping = work / "ping.yml"
    ping.write_text(PING)
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(REPO / ".build/collections"), ANSIBLE_HOST_KEY_CHECKING="0")
    env.setdefault("ANSIBLE_LOCAL_TEMP", str(REPO / ".build/ansible-tmp"))
    env.setdefault("ANSIBLE_REMOTE_TMP", str(REPO / ".build/ansible-tmp"))
    audit_args = ["-e", f"gpu_mig_report_dir={work / 'report'}"]
    times: dict[str, list[float]] = {"ping": [], "audit": []}
    for number in range(args.rounds):
        times["ping"].append(run(ping, fleet / "inventory.yml", args.forks, env, []))
        times["audit"].append(run(REPO / "playbooks/audit.yml", fleet / "inventory.yml", args.forks, env, audit_args))
        print(f"round {number + 1}: ping {times['ping'][-1]:.1f} s, audit {times['audit'][-1]:.1f} s", flush=True)
    ping_s, audit_s = statistics.median(times["ping"]), statistics.median(times["audit"])
    ratio = audit_s / ping_s
    verdict = "OK" if ratio <= args.target else "OVER TARGET"
    print(f"{args.hosts} hosts, forks {args.forks}, median of {args.rounds}: ping {ping_s:.1f} s, audit {audit_s:.1f} s, "
          f"ratio {ratio:.2f} (target <= {args.target}): {verdict}")  # fmt: skip
    print(f"report: {work / 'report'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
