# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Make the simulated NVML importable and share its ``sim_host`` fixture with every unit test."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "simulator"))
# The simulator's scripts (migsim, the nvidia-smi stand-in) run with the interpreter that runs the tests.
os.environ.setdefault("MIGSIM_PYTHON", sys.executable)

from nvmlsim.testing import sim_host

__all__ = ["sim_host"]
