# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Fixtures: the ground-truth capacity server as a subprocess on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ansible_collections.gpu.mig.tests.unit.process_fixtures import started_processes

REPO = Path(__file__).resolve().parents[3]
SERVER = REPO / "tests" / "capacity_server" / "server.py"
MMC_SERVER = Path(__file__).resolve().parent / "mmc_server.py"  # independent exponential draws: exact M/M/c


class ServerHandle:
    def __init__(self, proc: subprocess.Popen, port: int) -> None:
        self.proc = proc
        self.port = port
        self.base = "http://127.0.0.1:%d" % port

    def url(self, path: str = "/infer") -> str:
        return self.base + path


@pytest.fixture
def capacity_server():
    """Factory: ``capacity_server(workers=4, mean_ms=20, service="deterministic", ...)`` -> ServerHandle.

    ``iid=True`` starts the exact M/M/c variant (independent exponential service times).
    """
    with started_processes() as spawn:

        def start(**opts) -> ServerHandle:
            script = MMC_SERVER if opts.pop("iid", False) else SERVER
            args = [sys.executable, str(script), "--port", "0", "--max-seconds", str(opts.pop("max_seconds", 120))]
            for key, value in opts.items():
                args += ["--" + key.replace("_", "-"), str(value)]
            proc = spawn(args, stdout=subprocess.PIPE, text=True)
            line = proc.stdout.readline()
            if not line.startswith("LISTENING "):
                raise RuntimeError("capacity server did not start: %r" % line)
            return ServerHandle(proc, int(line.split()[1]))

        yield start


@pytest.fixture
def free_port():
    """A port on 127.0.0.1 with nothing listening (bound then released)."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class RecordingServer:
    """A tiny HTTP server on 127.0.0.1 that answers 200 and counts requests, keeping their headers."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.requests: list = []  # (method, path, headers as a dict)
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                owner.requests.append((self.command, self.path, dict(self.headers.items())))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            do_GET = do_POST = _answer

            def log_message(self, *_args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = "http://127.0.0.1:%d" % self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str = "/infer") -> str:
        return self.base + path

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture(scope="module")
def recording_server():
    server = RecordingServer()
    yield server
    server.close()
