# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The pytest fixture ``processes``: start real processes for one test and stop exactly those afterwards.

Import it into a conftest or a test module (``from ... import processes``) where tests run servers or daemons.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator

import pytest


@pytest.fixture
def processes() -> Iterator[Callable[..., subprocess.Popen]]:
    """Start processes for one test and stop exactly those afterwards (SIGTERM, SIGKILL after 10 s)."""
    started: list[subprocess.Popen] = []

    def start(argv: list[str], **kwargs: object) -> subprocess.Popen:
        proc = subprocess.Popen(argv, **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.terminate()
    for proc in started:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
