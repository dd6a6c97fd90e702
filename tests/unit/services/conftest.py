# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Fixtures that run the synthetic server and a real HAProxy on 127.0.0.1 (no systemd needed)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from ansible_collections.gpu.mig.tests.unit import process_fixtures

processes = process_fixtures.processes  # the fixture, for the tests here

SERVER = Path(__file__).resolve().parents[2] / "servers" / "synthetic_server.py"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def free_port() -> Callable[[], int]:
    """A function that returns a currently free loopback port."""
    return _free_port


def wait_http(url: str, deadline_s: float = 10.0) -> None:
    """Poll ``url`` until it answers 200."""
    end = time.monotonic() + deadline_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            if time.monotonic() > end:
                raise
        time.sleep(0.05)


@pytest.fixture
def synthetic_server(processes: Callable[..., subprocess.Popen]) -> Callable[..., int]:
    """Start the synthetic server; returns its port."""

    def start(workers: int, mean_ms: float) -> int:
        proc = processes(
            [sys.executable, str(SERVER), "--port", "0", "--workers", str(workers), "--mean-ms", str(mean_ms)],
            stdout=subprocess.PIPE,
            text=True,
        )
        line = proc.stdout.readline()
        assert line.startswith("LISTENING "), f"synthetic server did not start: {line!r}"
        return int(line.split()[1])

    return start


@pytest.fixture
def haproxy(processes: Callable[..., subprocess.Popen], tmp_path: Path) -> Callable[[str, int], None]:
    """Check a rendered config with ``haproxy -c``, then run it in the foreground until the test ends."""
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    assert Path(binary).exists(), "haproxy is required: apt-get install -y --no-install-recommends haproxy"

    def start(config: str, stats_port: int) -> None:
        path = tmp_path / "haproxy.cfg"
        path.write_text(config)
        check = subprocess.run([binary, "-c", "-f", str(path)], capture_output=True, text=True, check=False)
        assert check.returncode == 0, check.stdout + check.stderr
        processes([binary, "-db", "-f", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(f"http://127.0.0.1:{stats_port}/metrics")

    return start
