# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Real processes for tests, stopped exactly as started: ``started_processes()`` (a context manager, for fixtures of
any scope) and the pytest fixture ``processes`` on it.

Import the fixture into a conftest or a test module where tests run servers or daemons.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable, Iterator

import pytest


@contextlib.contextmanager
def started_processes() -> Iterator[Callable[..., subprocess.Popen]]:
    """Yield ``start(argv, **popen_kwargs)``; on exit stop exactly the processes it started (SIGTERM, SIGKILL after
    10 s) and close their stdout pipes."""
    started: list[subprocess.Popen] = []

    def start(argv: list[str], **kwargs: object) -> subprocess.Popen:
        proc = subprocess.Popen(argv, **kwargs)
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            proc.terminate()
        for proc in started:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            if proc.stdout:
                proc.stdout.close()


@pytest.fixture
def processes() -> Iterator[Callable[..., subprocess.Popen]]:
    """Start processes for one test and stop exactly those afterwards."""
    with started_processes() as start:
        yield start
