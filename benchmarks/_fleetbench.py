# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Shared harness: time a playbook against an ansible.builtin.ping playbook over the same simulated fleet."""

from __future__ import annotations

import argparse
import os
import re
import resource
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


RECAP = re.compile(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", re.M)


def run(
    playbook: Path, inventory: Path, forks: int, extra: tuple[str, ...] = (), unchanged: bool = False
) -> tuple[float, float]:
    """Run a playbook; (wall seconds, CPU seconds of it and its children). ``unchanged``: fail unless the recap
    says changed=0 on every host."""
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(REPO / ".build/collections"), ANSIBLE_FORKS=str(forks))
    env["PATH"] = f"{REPO / '.venv/bin'}:{env['PATH']}"
    cpu_before = _children_cpu()
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
    if unchanged:
        changed = [host for host, count in RECAP.findall(done.stdout) if count != "0"]
        if changed or not RECAP.search(done.stdout):
            sys.exit(f"{playbook.name}: expected no change, recap says changed on {changed or 'no host'}")
    return elapsed, _children_cpu() - cpu_before


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


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

    ``converge``: the first (untimed) subject run may change things, the timed ones must report changed=0 on every
    host. ``extra``: more ansible-playbook arguments for the subject (inventories, extra vars). CPU seconds (the
    playbook and its children) print beside wall time: on a shared machine they move less than wall time.
    """
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        inventory = make_fleet(tmp_path / "fleet", hosts, mix)
        ping = tmp_path / "ping.yml"
        ping.write_text(PING)
        if isinstance(playbook, Path):
            subject = playbook
        else:
            subject = tmp_path / f"{name}.yml"
            subject.write_text(playbook)
        run(ping, inventory, forks)  # warm caches
        run(subject, inventory, forks, extra)  # converges the fleet when ``converge``
        times: dict[str, list[float]] = {"subject": [], "ping": []}
        cpu: dict[str, list[float]] = {"subject": [], "ping": []}
        try:
            for _round in range(rounds):
                for key, book, args in (("ping", ping, ()), ("subject", subject, extra)):
                    wall, used = run(book, inventory, forks, args, unchanged=converge and key == "subject")
                    times[key].append(wall)
                    cpu[key].append(used)
        finally:  # simulated processes are real sleepers: end them with the fleet
            subprocess.run([str(REPO / "tests/simulator/migsim"), "stop", str(inventory.parent)], check=False)
    subject_median, ping_median = statistics.median(times["subject"]), statistics.median(times["ping"])
    ratio = subject_median / ping_median
    print(f"{name}: {hosts} simulated hosts, forks={forks}, {rounds} alternating rounds")
    print(f"  {name:<14} median {subject_median:6.2f} s  runs {[round(t, 2) for t in times['subject']]}")
    print(f"  {'ping':<14} median {ping_median:6.2f} s  runs {[round(t, 2) for t in times['ping']]}")
    print(f"  ratio {ratio:.3f} (target <= {target}) -> {'OK' if ratio <= target else 'OVER TARGET'}")
    cpu_ratio = statistics.median(cpu["subject"]) / statistics.median(cpu["ping"])
    print(
        f"  CPU seconds: {name} {[round(t, 1) for t in cpu['subject']]}, ping {[round(t, 1) for t in cpu['ping']]};"
        f" median ratio {cpu_ratio:.3f}; load average {os.getloadavg()[0]:.2f}"
    )
