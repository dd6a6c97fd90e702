# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The exact M/M/c server (mmc_server.py) as if it ran on a MIG slice: a compute-bound service whose mean service
time is ``--base-ms x 7 / the compute slices of the slice's profile`` (``7g`` runs at ``--base-ms``, ``1g`` seven times
slower). The profile is the slot's (``GPU_MIG_PROFILE`` of the environment file the mig_layout role writes, as a
pinned unit reads it with ``EnvironmentFile=``) or ``--profile``. The other options are the shared server's.
"""

from __future__ import annotations

import argparse
import asyncio
import re
from pathlib import Path

from ansible_collections.gpu.mig.tests.capacity_server import server as shared
from ansible_collections.gpu.mig.tests.unit.capacity.mmc_server import IidServer

GPU_COMPUTE_SLICES = 7  # A100, H100, H200: the whole GPU's compute slices


def compute_slices(profile: str) -> int:
    """``3g.40gb`` -> 3."""
    match = re.match(r"([1-9][0-9]?)g\.", profile)
    if not match:
        raise SystemExit("sliced_server: %r is not a MIG profile name such as 3g.40gb" % profile)
    return int(match.group(1))


def slot_profile(env_file: Path) -> str:
    """``GPU_MIG_PROFILE`` of a slot environment file."""
    for line in env_file.read_text().splitlines():
        key, _sep, value = line.partition("=")
        if key == "GPU_MIG_PROFILE":
            return value
    raise SystemExit("sliced_server: %s has no GPU_MIG_PROFILE" % env_file)


def mean_ms(base_ms: float, profile: str) -> float:
    return base_ms * GPU_COMPUTE_SLICES / compute_slices(profile)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    own = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=False)
    own.add_argument("--base-ms", type=float, required=True, help="mean service time on the whole GPU (7g)")
    where = own.add_mutually_exclusive_group(required=True)
    where.add_argument("--slot-env", type=Path, help="the slot's environment file (GPU_MIG_PROFILE)")
    where.add_argument("--profile", help="the slice's MIG profile")
    args, rest = own.parse_known_args(argv)
    profile = args.profile or slot_profile(args.slot_env)
    return shared.parse_args([*rest, "--service", "exponential", "--mean-ms", str(mean_ms(args.base_ms, profile))])


if __name__ == "__main__":
    asyncio.run(IidServer(parse_args()).main())
