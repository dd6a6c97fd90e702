# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""playbooks/audit.yml over 200 simulated hosts against ansible.builtin.ping over the same hosts (target <= 1.3)."""

from __future__ import annotations

from _fleetbench import REPO, compare, parse_args

if __name__ == "__main__":
    args = parse_args(__doc__, hosts=200)
    extra = ("-i", str(REPO / "inventories/simulated"), "-e", f"gpu_mig_report_dir={REPO / '.build/bench-report'}")
    compare("audit", REPO / "playbooks/audit.yml", args.hosts, args.rounds, args.forks, target=1.3, extra=extra)
