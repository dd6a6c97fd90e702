#!/usr/bin/python
# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Measure an inference endpoint's capacity with a stepwise open-loop load test."""

from __future__ import annotations

DOCUMENTATION = r"""
module: capacity_test
short_description: Measure an inference service's capacity with stepwise open-loop load tests
version_added: 0.1.0
description:
  - Sends HTTP requests to one endpoint on a schedule (constant or Poisson arrivals), step by step, and finds the
    rate at which the service stops keeping up (the knee) - the request queue grows without returning to baseline,
    achieved throughput falls below the offered rate, errors appear, or a latency percentile breaks the SLA.
  - Latency counts from each request's intended send time, so a stalled server cannot hide behind a waiting
    client (no coordinated omission). A generator that falls behind its own schedule voids the step and says so.
  - Each step has a warm-up that is excluded from the measurement; the hold window records p50/p95/p99/max,
    offered versus achieved rate, send lag, errors by kind and the queue length (the client's in-flight requests,
    or the server's queue gauge scraped from Prometheus metrics when O(metrics_urls) is given).
  - Returns the SLA sentence (C(Service A sustains N RPS at p95 < X ms...)), a capacity-table row, every step with a
    verdict that explains itself, and an Erlang-C (Allen-Cunneen) prediction of the rate at which the SLA percentile
    crosses its limit.
  - Runs from the host it is executed on; use C(async) for long tests. Uses only the Python standard library there.
  - Changes nothing on the host, except the result files when O(output_dir) is set.
author:
  - gpu.mig maintainers (@gpu-mig)
options:
  url:
    description:
      - Endpoint URL. With O(protocol=v2) the server base URL (C(http://host:8000)); with O(protocol=openai) or
        O(protocol=openai_chat) the server base URL or the full C(/v1/...) URL; otherwise the full URL.
    type: str
    required: true
  protocol:
    description:
      - V(generic) posts O(payload) (or the mix) to O(url) as is.
      - V(v2) uses the KServe/Triton/MLServer V2 inference protocol (C(/v2/models/<model>[/versions/<v>]/infer));
        without a payload it builds a zero-filled request from the model metadata.
      - V(openai) and V(openai_chat) post OpenAI-compatible completions built from O(model), O(prompt), O(max_tokens).
    type: str
    choices: [generic, v2, openai, openai_chat]
    default: generic
  model:
    description: Model name (V2 and OpenAI protocols).
    type: str
  model_version:
    description: Model version (V2 protocol).
    type: str
  method:
    description: HTTP method. Defaults to C(POST) when there is a body, C(GET) otherwise.
    type: str
  headers:
    description:
      - Extra HTTP headers, for example C(Authorization). Their values are not returned, not logged and not written
        to the result files (only the header names are).
    type: dict
    default: {}
  payload:
    description: Request body; a mapping or list is sent as JSON, a string as is.
    type: raw
  payload_file:
    description: File on the host with the request body.
    type: path
  template:
    description:
      - Body template (Python C(string.Template)) with C($seq), C($rand) and C($hex); O(variants) bodies are rendered
        once and sent in turn.
    type: str
  template_file:
    description: File on the host with a body template, as in O(template).
    type: path
  variants:
    description: How many bodies to render from a template.
    type: int
    default: 64
  payload_mix:
    description:
      - Weighted mix of payloads, for example light and heavy ones. Each item has C(name), C(weight) and one of
        C(payload), C(payload_file), C(template), C(template_file), plus optional C(headers) and C(variants).
      - Latency is also reported per payload.
    type: list
    elements: dict
    suboptions:
      name:
        description: Name of the payload in the results.
        type: str
      weight:
        description: Relative share of the requests that carry this payload. Defaults to 1.
        type: float
      payload:
        description: Request body, as O(payload).
        type: raw
      payload_file:
        description: File on the host with the request body, as O(payload_file).
        type: path
      template:
        description: Body template, as O(template).
        type: str
      template_file:
        description: File on the host with a body template, as O(template_file).
        type: path
      headers:
        description: Extra HTTP headers for this payload, on top of O(headers). Their values are not returned.
        type: dict
      variants:
        description: How many bodies to render from the template. Defaults to 64.
        type: int
  prompt:
    description: Prompt for the OpenAI-compatible protocols.
    type: str
  max_tokens:
    description: C(max_tokens) for the OpenAI-compatible protocols.
    type: int
    default: 16
  batch:
    description:
      - Batch size, reported in the capacity table; for V2 without a payload it replaces C(-1) in input shapes.
    type: int
  arrival:
    description: Arrival process. V(poisson) is what independent users produce; V(constant) is evenly spaced.
    type: str
    choices: [constant, poisson]
    default: poisson
  seed:
    description: Random seed for Poisson arrivals and payload choice.
    type: int
    default: 1
  plan:
    description:
      - V(linear) raises the rate by O(step_pct) per step until the knee (plus O(steps_after_knee) steps) or a hard
        SLA break.
      - V(adaptive) multiplies the rate by O(growth) while steps pass, then bisects between the last pass and the first
        failure down to O(resolution).
      - Both then confirm the result (see O(confirm)).
      - V(none) runs no capacity search, only the O(noisy_neighbour) run (which then needs its C(a_rps)).
    type: str
    choices: [linear, adaptive, none]
    default: linear
  start_rps:
    description: Rate of the first step (requests per second). Required unless O(plan=none).
    type: float
  step_pct:
    description: Linear plan increase per step, in percent of the previous step.
    type: float
    default: 15.0
  max_rps:
    description: Never offer more than this rate.
    type: float
  max_steps:
    description: At most this many search steps; confirmation steps come on top (O(max_confirmations)).
    type: int
    default: 20
  steps_after_knee:
    description: Linear plan steps to run after the first failing step (for the plots), unless the break is hard.
    type: int
    default: 1
  growth:
    description: Adaptive plan rate factor per passing step.
    type: float
    default: 2.0
  resolution:
    description: Adaptive plan stops when (first failure - last pass) / last pass is at most this.
    type: float
    default: 0.03
  warmup:
    description: Seconds at the start of each step that are sent but not measured.
    type: float
    default: 5.0
  hold:
    description: Seconds of each step that are measured.
    type: float
    default: 30.0
  knee_hold:
    description:
      - Seconds measured in the adaptive plan's steps close to the knee (bracket narrower than 25 %), whose verdicts
        are close calls. Defaults to O(hold).
      - A percentile near its limit needs many times the queue's relaxation time to settle; short steps there decide
        by luck.
    type: float
  confirm:
    description:
      - Confirm the result before the plan ends. The candidate (highest passing rate below the lowest failing one)
        is run again for O(confirm_hold) seconds and judged on all its runs pooled; if it fails, the plan searches
        below it. The lowest failing rate is run again too when it failed without a hard break.
    type: bool
    default: true
  confirm_hold:
    description: Seconds measured by a confirmation step. Defaults to O(knee_hold).
    type: float
  max_confirmations:
    description: At most this many confirmation steps.
    type: int
    default: 3
  early_stop:
    description:
      - End a step's hold early when it clearly breaks hard - more than twice the allowed share of requests (at
        least 2 points more) took longer than C(sla.hard_factor) x the primary percentile's limit, or failed. The
        step is a hard break either way; stopping saves time and keeps the backlog from spilling into the next step.
    type: bool
    default: true
  initial_warmup:
    description: Seconds at O(start_rps) before the first step (connections, caches, JIT); not measured.
    type: float
    default: 10.0
  baseline_rps:
    description:
      - Run a separate low-load step at this rate first; it is the baseline for C(sla.baseline_factor) and the source of
        the service time for the queueing prediction. Without it the first step serves.
    type: float
  cooldown:
    description: Seconds to pause between steps (after the outstanding requests finished).
    type: float
    default: 0.0
  time_limit:
    description:
      - Upper bound on the test, in seconds. A plan whose worst case exceeds it is refused before any traffic;
        a run that reaches it stops and says so in RV(capacity_warnings).
    type: float
    default: 1800
  request_timeout:
    description: Seconds after a request's intended send time at which it counts as a timeout.
    type: float
    default: 30
  sla:
    description:
      - The service-level objective. A mapping with at least one latency percentile in milliseconds (C(p95_ms),
        C(p99_ms), any C(pNN_ms)) and optionally C(max_error_rate) (fraction, default 0), C(min_throughput_ratio)
        (0.95), C(baseline_factor) (p95 above this many times the low-load p95 is a knee; 3, 0 disables),
        C(hard_factor) (2), C(hard_error_rate) (0.1), C(max_schedule_lag_ms) (10), C(queue_growth_min) (2, requests
        over the hold) and C(queue_growth_share) (0.005, the share of the offered rate growth must also absorb).
      - Or a string such as V(p95<300ms, p99<800ms, errors<=0.1%).
    type: raw
    required: true
  concurrency:
    description:
      - The service's concurrency limit (parallel slots - instance count, C(max_num_seqs), HAProxy C(maxconn)) for the
        Erlang-C prediction. Estimated from the saturated throughput when not given.
    type: int
  metrics_urls:
    description:
      - Prometheus text endpoints to scrape during each step (Triton C(:8002/metrics), vLLM C(/metrics), HAProxy,
        MLServer). Queue gauges found there judge queue growth; queue and execution time are reported apart.
      - A URL that cannot be reached fails the test; one without any known metric is a warning.
    type: list
    elements: str
    default: []
  metrics_interval:
    description: Seconds between scrapes.
    type: float
    default: 1.0
  metrics_labels:
    description: Only count metric samples with these label values, for example C(model=chat) as a mapping.
    type: dict
    default: {}
  max_connections:
    description: Upper bound on concurrent connections the generator opens (split between its O(workers)).
    type: int
    default: 4096
  workers:
    description:
      - Generator processes on the load host. Each has its own event loop and connections and takes every N-th send
        time of the one arrival process, so constant and Poisson schedules keep their statistics; their histograms,
        send lag, errors and in-flight samples merge into each step's single result.
      - V(0) takes every core available to the module, leaving one to the system when there are more than two.
      - A worker that dies fails the test with a message naming it; it never reads as a lower capacity.
    type: int
    default: 0
  event_loop:
    description:
      - The event loop of the generator. V(uvloop) needs the C(uvloop) package on the load host; the results are the
        same, the per-core rate may be higher. The choice is recorded in the result (RV(generator)).
    type: str
    default: asyncio
    choices: [asyncio, uvloop]
  generators:
    description:
      - Run the test from these generator hosts instead of this one. Each runs M(gpu.mig.capacity_generator),
        started with the same O(generator_token); this module drives the step plan, checks each host's clock, hands
        every host its shares of each step's schedule with a common start, merges the hosts' histograms and judges
        the steps exactly as for one host.
      - A host that cannot be reached, fails or is lost during a step fails the test with a message naming it.
      - The capacity role starts the generators and fills this in from C(capacity_generators).
    type: list
    elements: dict
    suboptions:
      host:
        description: Name of the host in messages and in the C(hosts) of RV(generator).
        type: str
      address:
        description: Address this host reaches the generator at.
        type: str
        required: true
      port:
        description: Port its M(gpu.mig.capacity_generator) listens on.
        type: int
        default: 9470
  generator_token:
    description:
      - The shared secret the O(generators) were started with (16 to 256 printable ASCII characters).
      - The protocol is not encrypted; run it on a network you trust (the request headers cross it).
    type: str
  max_clock_offset:
    description:
      - Milliseconds a generator host's clock may differ from this host's. The offset is measured (the best of five
        pings) and corrected in each step's start; a larger one is refused, as clocks that far apart are not kept.
    type: float
    default: 100.0
  record_requests:
    description: Record every request (intended time, send lag, status, latency) into C(<output_dir>/*.requests.csv).
    type: bool
    default: false
  validate_certs:
    description: Verify TLS certificates for C(https) URLs.
    type: bool
    default: true
  service:
    description: Service name used in the SLA sentence and the capacity table. Defaults to the URL.
    type: str
  profile:
    description: MIG profile the service runs on (for example V(3g.40gb)), for the capacity table.
    type: str
  gpu:
    description: GPU model, for the capacity table.
    type: str
  limits:
    description: Key limits to record in the capacity table, for example C(max_num_seqs) and C(maxconn) as a mapping.
    type: dict
    default: {}
  target_rps:
    description: Expected production rate; the table's headroom is measured against it when given.
    type: float
  host:
    description: Host label for the capacity table (the role passes C(inventory_hostname)).
    type: str
  output_dir:
    description: Directory on the host to write C(<name>.json) (everything) and C(<name>.steps.csv) into.
    type: path
  noisy_neighbour:
    description:
      - After the capacity search, hold this service at C(a_rps) (default - the sustained rate just found) while a
        neighbour (for example another MIG slice of the same GPU) steps to C(multipliers) x C(rps); report this
        service's p95/p99 before, during and after, and whether it stayed within its SLA (RV(noisy_neighbour)).
      - The neighbour's request is built from its own options below; the rest (SLA, arrival, timeouts) is this
        service's.
    type: dict
    suboptions:
      url:
        description: The neighbour's endpoint, as O(url).
        type: str
        required: true
      rps:
        description: The neighbour's base rate; it runs at each multiple of it.
        type: float
        required: true
      multipliers:
        description: Neighbour rates as multiples of C(rps), one phase each.
        type: list
        elements: float
        default: [1.0, 2.0, 3.0]
      a_rps:
        description: Rate to hold this service at. Defaults to its sustained rate from the search; required with O(plan=none).
        type: float
      hold:
        description: Seconds measured per phase. Defaults to O(hold).
        type: float
      warmup:
        description: Seconds of warm-up per phase. Defaults to O(warmup).
        type: float
      protocol:
        description: As O(protocol), for the neighbour.
        type: str
        choices: [generic, v2, openai, openai_chat]
      model:
        description: As O(model), for the neighbour.
        type: str
      model_version:
        description: As O(model_version), for the neighbour.
        type: str
      method:
        description: As O(method), for the neighbour.
        type: str
      headers:
        description: As O(headers), for the neighbour. Their values are not returned.
        type: dict
      payload:
        description: As O(payload), for the neighbour.
        type: raw
      payload_file:
        description: As O(payload_file), for the neighbour.
        type: path
      template:
        description: As O(template), for the neighbour.
        type: str
      template_file:
        description: As O(template_file), for the neighbour.
        type: path
      variants:
        description: As O(variants), for the neighbour.
        type: int
      payload_mix:
        description: As O(payload_mix), for the neighbour.
        type: list
        elements: dict
        suboptions:
          name:
            description: As O(payload_mix[].name).
            type: str
          weight:
            description: As O(payload_mix[].weight).
            type: float
          payload:
            description: As O(payload_mix[].payload).
            type: raw
          payload_file:
            description: As O(payload_mix[].payload_file).
            type: path
          template:
            description: As O(payload_mix[].template).
            type: str
          template_file:
            description: As O(payload_mix[].template_file).
            type: path
          headers:
            description: As O(payload_mix[].headers). Their values are not returned.
            type: dict
          variants:
            description: As O(payload_mix[].variants).
            type: int
      prompt:
        description: As O(prompt), for the neighbour.
        type: str
      max_tokens:
        description: As O(max_tokens), for the neighbour.
        type: int
      batch:
        description: As O(batch), for the neighbour.
        type: int
      service:
        description: The neighbour's name in the sentence. Defaults to its URL.
        type: str
      seed:
        description: Random seed of the neighbour's arrivals.
        type: int
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: Validates the options and the plan's time budget and sends one probe request; no load.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
  idempotent:
    description: When run twice in a row outside check mode, with the same arguments, the second invocation indicates no change.
    support: none
    details: A measurement; results differ between runs.
notes:
  - Run it from a host close to the service, with a core to spare; a generator that lags its schedule voids steps.
  - All steps of a test run one after the other; B(async) with C(poll) keeps a long test from hitting SSH timeouts.
seealso:
  - name: Capacity testing guide
    description: How the knee and the SLA sentence are defined.
    link: https://github.com/gpu-mig/gpu.mig/blob/main/docs/capacity.md
"""

EXAMPLES = r"""
- name: Capacity of a Triton model on a MIG slice, V2 protocol, linear +15 % steps
  gpu.mig.capacity_test:
    url: http://127.0.0.1:8000
    protocol: v2
    model: resnet50
    service: resnet50
    profile: 1g.10gb
    gpu: H100
    start_rps: 20
    sla:
      p95_ms: 50
      p99_ms: 120
    metrics_urls: [http://127.0.0.1:8002/metrics]
    concurrency: 2
  async: 3600
  poll: 15
  register: cap

- name: Say it
  ansible.builtin.debug:
    msg: "{{ cap.sla_sentence }}"

- name: vLLM completions, adaptive search, heavy prompts 10 % of the time
  gpu.mig.capacity_test:
    url: http://127.0.0.1:8001
    protocol: generic
    method: POST
    payload_mix:
      - name: short
        weight: 9
        payload: {model: llama, prompt: "Hi", max_tokens: 32}
      - name: long
        weight: 1
        payload_file: /etc/capacity/long-prompt.json
    plan: adaptive
    start_rps: 1
    sla: "p95<2s, p99<4s"
    metrics_urls: [http://127.0.0.1:8001/metrics]
    output_dir: /var/tmp/capacity

- name: Does chat keep its SLA at its capacity while the OCR slice on the same GPU triples its load?
  gpu.mig.capacity_test:
    url: http://127.0.0.1:8001/v1/completions
    payload: {model: llama, prompt: "Hi", max_tokens: 32}
    plan: adaptive
    start_rps: 2
    sla: "p95<2s, p99<4s"
    noisy_neighbour:
      url: http://127.0.0.1:8002/v2/models/ocr/infer
      payload: {inputs: []}
      rps: 20
      multipliers: [1, 2, 3]
  async: 7200
  poll: 30
  register: shared

- name: Only validate the options and probe the endpoint
  gpu.mig.capacity_test:
    url: http://127.0.0.1:8000/v2/models/m/infer
    payload: {inputs: []}
    start_rps: 10
    sla: {p95_ms: 100}
  check_mode: true
"""

RETURN = r"""
sla_sentence:
  description:
    - The capacity in one sentence, or why none can be stated. With O(plan=none), the noisy-neighbour sentence.
  returned: success and not check mode
  type: str
  sample: >-
    chat on MIG 3g.40gb (H100) sustains 180 RPS at p95 < 300 ms (and p99 < 800 ms), with no errors and without
    queue growth (measured p95 212 ms, p99 540 ms; the knee is at 207 RPS).
capacity:
  description:
    - C(sustained_rps) (highest passing rate below the lowest failing one; the latest run at a rate counts, a
      confirmation pools all runs there), its C(latency_ms), C(max_queue), C(confirmed) and C(measured_s);
      C(knee_rps) and C(knee_reasons); C(saturation_rps) (mean throughput of the saturated steps); C(reached)
      (false when no step failed, so C(sustained_rps) is a lower bound); C(note).
  returned: success, not check mode, and O(plan) is not V(none)
  type: dict
  sample: {"sustained_rps": 180.0, "knee_rps": 207.0, "saturation_rps": 199.6, "reached": true, "knee_reasons": ["p95 412 ms > SLA 300 ms"]}
table_row:
  description:
    - One row of the capacity table - host, service, model, version, profile, gpu, batch, limits, sustained_rps,
      p95_ms, p99_ms, sla, max_queue, knee_rps, saturation_rps, predicted_rps, headroom_pct, verdict.
  returned: success and not check mode
  type: dict
prediction:
  description:
    - Erlang-C (M/M/c) or Allen-Cunneen (G/G/c) prediction of the rate at which the SLA percentile crosses its limit,
      from the low-load service time and O(concurrency); C(available=false) with a reason when it cannot be made.
  returned: success and not check mode
  type: dict
  sample: {"available": true, "model": "M/M/c (Erlang C)", "c": 4, "service_ms": 20.1, "rate_rps": 151.6, "measured_rps": 164.0, "error_pct": 8.2}
steps:
  description:
    - Every step, in the order run - C(index), C(kind), C(offered_rps), C(offered_actual_rps), C(achieved_rps),
      C(latency_ms) (p50/p90/p95/p99/p999/max/mean), C(schedule_lag_ms), C(errors) by kind (C(timeout),
      C(rejected_503), C(rejected_429), C(http_5xx), C(http_4xx), C(connection)), C(queue) (trend with slope and 95%
      bound), C(server) (scraped metrics), C(inflight_samples), C(connection_wait_ms), and C(verdict) with
      C(passed), C(void), C(hard_break), C(checks) and a C(summary) in words.
    - C(role) says why the plan ran it (V(step), V(knee), V(confirm), V(baseline)); C(hold_s) is the measured time
      (shorter than C(hold_planned_s) when C(stopped_early) says why). A confirmation has C(pooled) - the verdict,
      latency and counts over every run at its rate, which replace the earlier verdicts there.
  returned: success and not check mode
  type: list
  elements: dict
capacity_warnings:
  description:
    - Problems that did not stop the test (void steps, a metrics URL without any known metric, time limit reached).
      Each is also issued as an Ansible warning.
  returned: success
  type: list
  elements: str
noisy_neighbour:
  description:
    - With O(noisy_neighbour) - C(sentence) (did this service stay within its SLA while the neighbour stepped up),
      C(within_sla), and C(phases), one per phase (C(before), C(during xN), C(after)) with this service's
      C(a_p95_ms), C(a_p99_ms), C(a_errors), C(a_within_sla) and the neighbour's C(b_rps), C(b_achieved_rps),
      C(b_p99_ms).
  returned: when O(noisy_neighbour) is set, a rate to hold was known, and not check mode
  type: dict
  sample:
    within_sla: true
    sentence: >-
      chat at 180 RPS stayed within its SLA while ocr stepped to 3x 20 RPS: p99 540 ms before, up to 610 ms during
      (during x3), 530 ms after.
generator:
  description:
    - The load generators that ran the test - C(workers), the generator processes in all (O(workers) resolved), and
      C(event_loop).
    - With O(generators), C(hosts) - one item per host with C(host), C(address), C(port), C(workers), C(cores),
      C(event_loop), C(shares) (its first and last share of the schedule), C(clock_offset_ms) and C(rtt_ms).
  returned: success
  type: dict
  sample: {"workers": 3, "event_loop": "asyncio"}
probe:
  description: Status and latency of the first probe request.
  returned: success
  type: dict
  sample: {"status": 200, "latency_ms": 3.2}
files:
  description: Paths of the result files written on the host.
  returned: when O(output_dir) is set and not check mode
  type: dict
  sample: {"json": "/var/tmp/capacity/capacity-chat.json", "steps_csv": "/var/tmp/capacity/capacity-chat.steps.csv"}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpu.mig.plugins.module_utils._capacity.analysis import CapacityError
from ansible_collections.gpu.mig.plugins.module_utils._capacity.loadgen import (
    run_capacity_test,
    run_sync,
    slug,
    write_results,
)
from ansible_collections.gpu.mig.plugins.module_utils._capacity.options import (
    ARGUMENT_SPEC,
    MUTUALLY_EXCLUSIVE,
    REQUIRED_IF,
)


def _numbers_unconverted(spec: dict) -> dict:
    """The spec with int and float options (and list elements) taken as they come."""
    out = {}
    for name, option in spec.items():
        option = dict(option)
        for key in ("type", "elements"):
            if option.get(key) in ("int", "float"):
                option[key] = "raw"
        if "options" in option:
            option["options"] = _numbers_unconverted(option["options"])
        out[name] = option
    return out


def main():
    checks = dict(mutually_exclusive=MUTUALLY_EXCLUSIVE, required_if=REQUIRED_IF, supports_check_mode=True)
    try:
        module = AnsibleModule(argument_spec=ARGUMENT_SPEC, **checks)
    except OverflowError:
        # ansible-core's int/float conversion raises this on infinity for an int and on an int beyond any float;
        # read the numbers unconverted, and the capacity rules below name the option instead of a traceback
        module = AnsibleModule(argument_spec=_numbers_unconverted(ARGUMENT_SPEC), **checks)
    try:  # every option is checked against its rule (_capacity.OPTION_RULES) before the first request
        result = run_sync(run_capacity_test(module.params, check_only=module.check_mode), module.params["event_loop"])
    except CapacityError as exc:
        module.fail_json(msg=str(exc))
    out = {
        "changed": False,
        "capacity_warnings": result.get("warnings", []),
        "probe": result.get("probe"),
        "plan": result.get("plan"),
        "generator": result.get("generator"),
    }
    for warning in result.get("warnings", []):
        module.warn(warning)
    if module.check_mode:
        out["msg"] = "options valid, plan fits time_limit (worst case %.0f s), endpoint answered HTTP %d" % (
            result["plan"]["worst_case_s"],
            result["probe"]["status"],
        )
        module.exit_json(**out)
    requests = result.pop("requests", None)
    if module.params["output_dir"]:
        files = write_results(
            dict(result, requests=requests) if requests else result,
            module.params["output_dir"],
            slug("capacity-" + (module.params["service"] or result["service"]["service"])),
        )
        out["files"] = files
        out["changed"] = True
    for key in (
        "sla_sentence",
        "capacity",
        "table_row",
        "prediction",
        "steps",
        "service",
        "sla",
        "started_at",
        "duration_s",
        "noisy_neighbour",
    ):
        if key in result:
            out[key] = result[key]
    out["schema"] = result.get("schema")
    module.exit_json(**out)


if __name__ == "__main__":
    main()
