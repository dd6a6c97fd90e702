#!/usr/bin/python
# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Serve one distributed capacity test as a load generator host."""

from __future__ import annotations

DOCUMENTATION = r"""
module: capacity_generator
short_description: Serve one distributed capacity test as a load generator host
version_added: 0.1.0
description:
  - Listens on TCP for the coordinating M(gpu.mig.capacity_test) (its O(gpu.mig.capacity_test#module:generators)),
    answers its clock check, and sends this host's shares of every step's schedule from the common start, on
    O(workers) processes of its own; after each step it returns the merged latency histogram, send lag, errors and
    in-flight samples.
  - Ends when the coordinator's test ends (or fails), when no coordinator connects within O(connect_timeout) seconds,
    or after O(timeout) seconds. Serves one test, then returns.
  - Run it with C(async) and C(poll 0) before the test; the capacity role does so for C(capacity_generators).
  - With O(state=stopped) it ends the generator listening on O(listen) and O(port) that no test reached (as a
    coordinator that runs no test would), so its port is free at once.
  - Changes nothing on the host. Uses only the Python standard library (and C(uvloop) when asked).
author:
  - gpu.mig maintainers (@gpu-mig)
options:
  listen:
    description: Address to listen on (an address of this host that the coordinator reaches).
    type: str
    default: 0.0.0.0
  port:
    description: TCP port to listen on.
    type: int
    default: 9470
  token:
    description: Shared secret the coordinator must present (16 to 256 printable ASCII characters).
    type: str
    required: true
  state:
    description: V(started) serves one test; V(stopped) ends a generator that no test reached.
    type: str
    default: started
    choices: [started, stopped]
  timeout:
    description: Seconds to serve at most; the generator stops then, with or without a test.
    type: float
    default: 7200
  connect_timeout:
    description: Seconds to wait for the coordinator to connect; the generator ends without one by then.
    type: float
    default: 300
  workers:
    description: Generator processes on this host; V(0) takes every available core, leaving one above two.
    type: int
    default: 0
  event_loop:
    description: Event loop of the generator processes; V(uvloop) needs C(uvloop) on this host.
    type: str
    default: asyncio
    choices: [asyncio, uvloop]
seealso:
  - module: gpu.mig.capacity_test
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: In check mode it only checks that it can listen on the address and port.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
"""

EXAMPLES = r"""
- name: Start the load generators of a distributed capacity test
  gpu.mig.capacity_generator:
    listen: "{{ ansible_default_ipv4.address }}"
    port: 9470
    token: "{{ capacity_generator_token }}"
    timeout: 3600
  async: 3700
  poll: 0
"""

RETURN = r"""
port:
  description: The port it listened on.
  returned: when O(state=started)
  type: int
  sample: 9470
finished:
  description: Whether a coordinator ran its test here (false when O(connect_timeout) or O(timeout) came first).
  returned: when O(state=started)
  type: bool
  sample: true
stopped:
  description: With O(state=stopped), whether a generator was listening and ended.
  returned: when O(state=stopped)
  type: bool
  sample: true
steps:
  description: Steps this host sent its shares of.
  returned: when O(state=started)
  type: int
  sample: 12
workers:
  description: Generator processes this host ran.
  returned: when O(state=started)
  type: int
  sample: 3
failures:
  description: How sessions ended other than by the coordinator's close, for example a lost connection.
  returned: when O(state=started)
  type: list
  elements: str
"""

import socket

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpu.mig.plugins.module_utils._capacity.analysis import CapacityError
from ansible_collections.gpu.mig.plugins.module_utils._capacity.loadgen import run_sync
from ansible_collections.gpu.mig.plugins.module_utils._capacity.remote import serve_generator, stop_generator


def _can_listen(address: str, port: int) -> str | None:
    """None when ``address:port`` can be bound, else why not."""
    try:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address, port))
    except OSError as exc:
        return "cannot listen on %s:%d: %s; choose another port or address" % (address, port, exc.strerror)
    return None


def main():
    module = AnsibleModule(
        argument_spec=dict(
            listen=dict(type="str", default="0.0.0.0"),
            port=dict(type="int", default=9470),
            token=dict(type="str", required=True, no_log=True),
            state=dict(type="str", default="started", choices=["started", "stopped"]),
            timeout=dict(type="float", default=7200.0),
            connect_timeout=dict(type="float", default=300.0),
            workers=dict(type="int", default=0),
            event_loop=dict(type="str", default="asyncio", choices=["asyncio", "uvloop"]),
        ),
        supports_check_mode=True,
    )
    p = module.params
    problems = []
    if not 1 <= p["port"] <= 65535:
        problems.append("port must be from 1 to 65535, got %d" % p["port"])
    for name in ("timeout", "connect_timeout"):
        if not 0 < p[name] <= 7 * 86400:
            problems.append("%s must be > 0 and at most a week of seconds, got %g" % (name, p[name]))
    if not 0 <= p["workers"] <= 1024:
        problems.append("workers must be from 0 (every core) to 1024, got %d" % p["workers"])
    if problems:
        module.fail_json(msg="; ".join(problems))
    if p["state"] == "stopped":
        address = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(p["listen"], p["listen"])
        stopped = False if module.check_mode else run_sync(stop_generator(address, p["port"], p["token"]))
        module.exit_json(changed=stopped, stopped=stopped)
    if module.check_mode:
        why = _can_listen(p["listen"], p["port"])
        if why:
            module.fail_json(msg=why)
        module.exit_json(changed=False, port=p["port"], finished=False, steps=0, workers=p["workers"], failures=[])
    try:
        serving = serve_generator(
            p["listen"], p["port"], p["token"], p["timeout"], p["workers"], p["event_loop"],
            connect_timeout=p["connect_timeout"],
        )  # fmt: skip
        served = run_sync(serving, p["event_loop"])
    except CapacityError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=False, **served)


if __name__ == "__main__":
    main()
