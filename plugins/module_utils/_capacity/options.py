# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The capacity-test options, defined once (PRIVATE to the collection).

The module's argument spec, the engine's defaults, what a noisy neighbour may set and the CLI's flags all come from
here; the module's DOCUMENTATION and the capacity role's pass-through are checked against it by the unit tests.
"""

from __future__ import annotations

import copy

PROTOCOLS = ["generic", "v2", "openai", "openai_chat"]

# what a neighbour (service B of a noisy-neighbour run) may set; the rest comes from service A's options
NEIGHBOUR_KEYS = (
    "url",
    "protocol",
    "model",
    "model_version",
    "method",
    "headers",
    "payload",
    "payload_file",
    "template",
    "template_file",
    "variants",
    "payload_mix",
    "prompt",
    "max_tokens",
    "batch",
    "service",
    "seed",
)

PAYLOAD_MIX_OPTIONS = dict(
    name=dict(type="str"),
    weight=dict(type="float"),
    payload=dict(type="raw"),
    payload_file=dict(type="path"),
    template=dict(type="str"),
    template_file=dict(type="path"),
    headers=dict(type="dict", no_log=True),
    variants=dict(type="int"),
)

# one generator host of a test run from several hosts (its capacity_generator listens on address:port)
GENERATOR_OPTIONS = dict(
    host=dict(type="str"),
    address=dict(type="str", required=True),
    port=dict(type="int", default=9470),
)

ARGUMENT_SPEC = dict(
    url=dict(type="str", required=True),
    protocol=dict(type="str", default="generic", choices=PROTOCOLS),
    model=dict(type="str"),
    model_version=dict(type="str"),
    method=dict(type="str"),
    headers=dict(type="dict", default={}, no_log=True),
    payload=dict(type="raw"),
    payload_file=dict(type="path"),
    template=dict(type="str"),
    template_file=dict(type="path"),
    variants=dict(type="int", default=64),
    payload_mix=dict(type="list", elements="dict", options=PAYLOAD_MIX_OPTIONS),
    prompt=dict(type="str"),
    max_tokens=dict(type="int", default=16, no_log=False),
    batch=dict(type="int"),
    arrival=dict(type="str", default="poisson", choices=["constant", "poisson"]),
    seed=dict(type="int", default=1),
    plan=dict(type="str", default="linear", choices=["linear", "adaptive", "none"]),
    start_rps=dict(type="float"),
    step_pct=dict(type="float", default=15.0),
    max_rps=dict(type="float"),
    max_steps=dict(type="int", default=20),
    steps_after_knee=dict(type="int", default=1),
    growth=dict(type="float", default=2.0),
    resolution=dict(type="float", default=0.03),
    warmup=dict(type="float", default=5.0),
    hold=dict(type="float", default=30.0),
    knee_hold=dict(type="float"),
    confirm=dict(type="bool", default=True),
    confirm_hold=dict(type="float"),
    max_confirmations=dict(type="int", default=3),
    early_stop=dict(type="bool", default=True),
    initial_warmup=dict(type="float", default=10.0),
    baseline_rps=dict(type="float"),
    cooldown=dict(type="float", default=0.0),
    time_limit=dict(type="float", default=1800.0),
    request_timeout=dict(type="float", default=30.0),
    sla=dict(type="raw", required=True),
    concurrency=dict(type="int"),
    metrics_urls=dict(type="list", elements="str", default=[]),
    metrics_interval=dict(type="float", default=1.0),
    metrics_labels=dict(type="dict", default={}),
    max_connections=dict(type="int", default=4096),
    workers=dict(type="int", default=0),
    event_loop=dict(type="str", default="asyncio", choices=["asyncio", "uvloop"]),
    generators=dict(type="list", elements="dict", options=GENERATOR_OPTIONS),
    generator_token=dict(type="str", no_log=True),
    max_clock_offset=dict(type="float", default=100.0),
    record_requests=dict(type="bool", default=False),
    validate_certs=dict(type="bool", default=True),
    service=dict(type="str"),
    profile=dict(type="str"),
    gpu=dict(type="str"),
    limits=dict(type="dict", default={}),
    target_rps=dict(type="float"),
    host=dict(type="str"),
    output_dir=dict(type="path"),
)
# A neighbour's request options are service A's, neither required nor defaulted (unset ones come from A), except its
# url; then its own rate, phases and timings.
ARGUMENT_SPEC["noisy_neighbour"] = dict(
    type="dict",
    options=dict(
        {
            key: {k: v for k, v in ARGUMENT_SPEC[key].items() if k not in ("default", "required")}
            for key in NEIGHBOUR_KEYS
        },
        url=dict(type="str", required=True),
        rps=dict(type="float", required=True),
        multipliers=dict(type="list", elements="float", default=[1.0, 2.0, 3.0]),
        a_rps=dict(type="float"),
        hold=dict(type="float"),
        warmup=dict(type="float"),
    ),
)

# one body source at most; a search plan needs the rate to start from
MUTUALLY_EXCLUSIVE = [("payload", "payload_file", "template", "template_file", "payload_mix")]
REQUIRED_IF = [("plan", "linear", ("start_rps",)), ("plan", "adaptive", ("start_rps",))]

# The engine's settings before the given options: every option's default (None when it has none), plus what only
# direct callers of the engine leave out - the sampling interval (no option), and a start rate that lets a call
# without a search plan's start_rps (a probe) size its plan; the module and the CLI require it (REQUIRED_IF).
DEFAULTS = {name: copy.deepcopy(spec.get("default")) for name, spec in ARGUMENT_SPEC.items()}
DEFAULTS.update(start_rps=10.0, sample_interval=0.05)
