# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""mig_facts over 50 simulated hosts against ansible.builtin.ping over the same hosts (target ratio <= 1.2)."""

from __future__ import annotations

from _fleetbench import compare, parse_args

FACTS = """---
- name: Gather MIG facts
  hosts: all
  gather_facts: false
  tasks:
    - name: Gather
      gpu.mig.mig_facts:
"""

if __name__ == "__main__":
    args = parse_args(__doc__, hosts=50)
    compare("mig_facts", FACTS, args.hosts, args.rounds, args.forks, target=1.2)
