# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Shared harness: time a playbook against an ansible.builtin.ping playbook over the same simulated fleet."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PING = """---
- name: Ping every host
  hosts: all
  gather_facts: false
  tasks:
    - name: Ping
      ansible.builtin.ping:
"""


def parse_args(description: str, hosts: int) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--hosts", type=int, default=hosts)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median reported)")
    parser.add_argument("--forks", type=int, default=10)
    return parser.parse_args()


def make_fleet(directory: Path, hosts: int, mix: str | None = None) -> Path:
    """A simulated fleet; returns its inventory."""
    cmd = [str(REPO / "tests/simulator/migsim"), "fleet", "--dir", str(directory), "--hosts", str(hosts), "--force"]
    if mix:
        cmd += ["--mix", mix]
    subprocess.run(cmd, check=True, capture_output=True)
    return directory / "inventory.yml"


def run(playbook: Path, inventory: Path, forks: int, extra: tuple[str, ...] = ()) -> float:
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(REPO / ".build/collections"), ANSIBLE_FORKS=str(forks))
    env["PATH"] = f"{REPO / '.venv/bin'}:{env['PATH']}"
    start = time.perf_counter()
    done = subprocess.run(
        ["ansible-playbook", "-i", str(inventory), *extra, str(playbook)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{playbook.name} failed (rc {done.returncode}):\n{done.stdout[-3000:]}")
    return elapsed


def compare(
    name: str,
    playbook: str | Path,
    hosts: int,
    rounds: int,
    forks: int,
    target: float,
    mix: str | None = None,
    converge: bool = False,
    extra: tuple[str, ...] = (),
) -> None:
    """Alternate the subject (playbook text, or a playbook file) and ping ``rounds`` times; print medians and ratio.

    ``converge``: the first (untimed) subject run may change things, the timed ones must not. ``extra``: more
    ansible-playbook arguments for the subject (inventories, extra vars).
    """
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        inventory = make_fleet(tmp_path / "fleet", hosts, mix)
        ping = tmp_path / "ping.yml"
        ping.write_text(PING)
        if isinstance(playbook, Path):
            subject = first = playbook
        else:
            subject, first = tmp_path / f"{name}.yml", tmp_path / "first.yml"
            subject.write_text(playbook)
            first.write_text(playbook.replace("applied is failed or applied is changed", "applied is failed"))
        run(ping, inventory, forks)  # warm caches
        run(first if converge else subject, inventory, forks, extra)
        times: dict[str, list[float]] = {"subject": [], "ping": []}
        try:
            for _round in range(rounds):
                times["ping"].append(run(ping, inventory, forks))
                times["subject"].append(run(subject, inventory, forks, extra))
        finally:  # simulated processes are real sleepers: end them with the fleet
            subprocess.run([str(REPO / "tests/simulator/migsim"), "stop", str(inventory.parent)], check=False)
    subject_median, ping_median = statistics.median(times["subject"]), statistics.median(times["ping"])
    ratio = subject_median / ping_median
    print(f"{name}: {hosts} simulated hosts, forks={forks}, {rounds} alternating rounds")
    print(f"  {name:<14} median {subject_median:6.2f} s  runs {[round(t, 2) for t in times['subject']]}")
    print(f"  {'ping':<14} median {ping_median:6.2f} s  runs {[round(t, 2) for t in times['ping']]}")
    print(f"  ratio {ratio:.3f} (target <= {target}) -> {'OK' if ratio <= target else 'OVER TARGET'}")
