# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Idempotent (no-op) mig_instances over 50 simulated hosts with 8 H100 each, against ping (target ratio <= 1.3).

The first run converges the fleet; every timed run must report changed=0 on every host (checked in the recap).
"""

from __future__ import annotations

from _fleetbench import compare, parse_args

APPLY = """---
- name: Apply the seed's layout (already converged)
  hosts: all
  gather_facts: false
  tasks:
    - name: Apply
      gpu.mig.mig_instances:
        layout:
          - gpus: all
            slots:
              - {name: chat, profile: 3g.40gb}
              - {name: classifier, profile: 2g.20gb}
              - {name: ocr, profile: 1g.10gb}
"""

if __name__ == "__main__":
    args = parse_args(__doc__, hosts=50)
    compare("mig_instances", APPLY, args.hosts, args.rounds, args.forks, target=1.3, mix="dgxh100", converge=True)
