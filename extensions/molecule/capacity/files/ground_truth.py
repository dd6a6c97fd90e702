# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Start or stop the ground-truth capacity server (tests/capacity_server/server.py) for the capacity scenario.

  python ground_truth.py start <dir> [server options...]   prints the port; writes <dir>/server.{port,pid}
  python ground_truth.py stop <dir>                        ends the server it started (by its recorded pid)

The server listens on 127.0.0.1 only and exits by itself after --max-seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

SERVER = Path(__file__).resolve().parents[4] / "tests" / "capacity_server" / "server.py"


def start(where: Path, options: list) -> int:
    where.mkdir(parents=True, exist_ok=True)
    with open(where / "server.log", "w") as log:  # the server keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [sys.executable, str(SERVER), "--port", "0", *options],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            start_new_session=True,
        )
    line = proc.stdout.readline()
    if not line.startswith("LISTENING "):
        proc.kill()
        print("the capacity server did not start: %r (see %s)" % (line, where / "server.log"), file=sys.stderr)
        return 1
    port = int(line.split()[1])
    (where / "server.port").write_text("%d\n" % port)
    (where / "server.pid").write_text("%d\n" % proc.pid)
    print(port)
    return 0


def stop(where: Path) -> int:
    pid_file = where / "server.pid"
    if not pid_file.exists():
        print("no server recorded in %s" % where)
        return 0
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, signal.SIGTERM)
        print("stopped %d" % pid)
    except ProcessLookupError:
        print("%d had already exited" % pid)
    pid_file.unlink()
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in ("start", "stop"):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    place = Path(sys.argv[2])
    sys.exit(start(place, sys.argv[3:]) if sys.argv[1] == "start" else stop(place))
