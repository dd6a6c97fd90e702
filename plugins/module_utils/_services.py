# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Inference services pinned to MIG slots: spec validation, memory fit, server and admission configs (PRIVATE to the collection).

Pure: no I/O, standard library only. The limits are layered (docs/services.md): MIG bounds GPU memory and SMs, systemd
bounds host CPU/RAM/devices, HAProxy bounds concurrency and queues (fast 503 + Retry-After), the server bounds batching.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

RUNNERS = ("process", "quadlet")
# Server kind -> how many consecutive loopback ports it takes from backend_port (HTTP, gRPC, metrics).
SERVER_PORTS = {"triton": 3, "mlserver": 3, "vllm": 1, "generic": 1}
HEALTH_PATHS = {
    "triton": "/v2/health/ready",
    "mlserver": "/v2/health/ready",
    "vllm": "/health",
    "generic": "/v2/health/ready",
}
HEADROOM_WARN = 0.10
# /proc/driver/nvidia-caps/mig-minors: config=1, monitor=2, then per GPU minor 15 GIs x (GI access + 8 CI accesses).
_CAPS_FIRST, _CAPS_PER_GI, _CAPS_GIS = 3, 9, 15

_NAME = re.compile(r"^[a-z][a-z0-9-]{0,23}$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_CPU_QUOTA = re.compile(r"^\d+%$")
_MEMORY_MAX = re.compile(r"^(\d+[KMGT]?|infinity)$")
_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}

_TOP_KEYS = {
    "name", "slot", "runner", "server", "command", "image", "port", "listen", "backend_port", "user",
    "model", "classes", "class_header", "sla", "limits", "shares_slot_with", "extra_args",
}  # fmt: skip
_MODEL_KEYS = {"name", "dir", "weights_mib", "activation_mib", "batch_headroom_mib", "max_model_len", "instances",
               "backend", "implementation"}  # fmt: skip
_LIMIT_KEYS = {"max_concurrency", "max_queue", "queue_timeout", "request_timeout", "max_batch", "batch_delay",
               "retry_after", "cpu_quota", "memory_max", "tasks_max", "nofile"}  # fmt: skip
_SLA_KEYS = {"p95_ms", "p99_ms", "target_rps"}
_CLASS_KEYS = {"name", "weight", "max_queue", "queue_timeout", "path_prefix"}


class ServiceError(Exception):
    """The service specs cannot be deployed; ``problems`` lists every reason, each naming the service and the fix."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class RequestClass:
    """One admission queue of a service: its share of the concurrency, its queue cap and queue timeout."""

    name: str
    max_concurrency: int
    max_queue: int
    queue_timeout_ms: int
    path_prefix: str | None = None


@dataclass(frozen=True)
class Service:
    """A validated service spec; durations in milliseconds, memory in MiB."""

    name: str
    slot: str
    runner: str
    server: str
    port: int
    backend_port: int
    user: str
    classes: tuple[RequestClass, ...]
    max_concurrency: int
    max_queue: int
    queue_timeout_ms: int
    request_timeout_ms: int
    listen: str = "0.0.0.0"
    command: tuple[str, ...] = ()
    image: str | None = None
    class_header: str = "X-Request-Class"
    model: str | None = None
    model_dir: str | None = None
    max_model_len: int | None = None
    instances: int = 1
    triton_backend: str = "onnxruntime"
    mlserver_implementation: str = "mlserver_sklearn.SKLearnModel"
    extra_args: tuple[str, ...] = ()
    max_batch: int = 1
    batch_delay_ms: int = 0
    retry_after_s: int = 1
    cpu_quota: str | None = None
    memory_max: str | None = None
    tasks_max: int = 512
    nofile: int = 65536
    weights_mib: int = 0
    activation_mib: int = 0
    batch_headroom_mib: int = 0
    p95_ms: float | None = None
    p99_ms: float | None = None
    target_rps: float | None = None
    shares_slot_with: tuple[str, ...] = field(default=())

    @property
    def needed_mib(self) -> int:
        """GPU memory the model needs in its slot: weights + activations + batch/KV headroom."""
        return self.weights_mib + self.activation_mib + self.batch_headroom_mib

    @property
    def ports(self) -> tuple[int, ...]:
        """Every port the service takes: the public one, then the server's loopback block."""
        return (self.port, *range(self.backend_port, self.backend_port + SERVER_PORTS[self.server]))


# ---------------------------------------------------------------------------------------------------------------------
# Parsing helpers: each returns a value or None and appends a problem naming the service and the fix
# ---------------------------------------------------------------------------------------------------------------------


def parse_duration_ms(value: object) -> int | None:
    """Seconds (number) or a string such as ``250ms``, ``2s``, ``1.5m`` -> milliseconds; None when unparsable."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return round(value * 1000)
    match = _DURATION.match(str(value))
    if not match:
        return None
    return round(float(match.group(1)) * _UNITS_MS[match.group(2) or "s"])


class _Reader:
    """Reads one service's mapping, collecting problems instead of stopping at the first."""

    def __init__(self, label: str, problems: list[str]) -> None:
        self.label = label
        self.problems = problems

    def problem(self, text: str) -> None:
        self.problems.append(f"{self.label}: {text}")

    def section(self, data: object, key: str, allowed: set[str]) -> dict:
        if data is None:
            return {}
        if not isinstance(data, dict):
            self.problem(f"{key} must be a mapping (keys: {', '.join(sorted(allowed))})")
            return {}
        unknown = sorted(set(data) - allowed)
        if unknown:
            self.problem(
                f"unknown key(s) {', '.join(map(str, unknown))} in {key}; allowed: {', '.join(sorted(allowed))}"
            )
        return data

    def integer(self, data: dict, key: str, default: int | None, minimum: int = 1) -> int | None:
        value = data.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.problem(f"{key} must be an integer >= {minimum}, got {value!r}")
            return None
        return value

    def number(self, data: dict, key: str) -> float | None:
        value = data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            self.problem(f"{key} must be a positive number, got {value!r}")
            return None
        return float(value)

    def duration(self, data: dict, key: str, default: object, allow_zero: bool = False) -> int | None:
        value = data.get(key, default)
        millis = parse_duration_ms(value)
        if millis is None or millis < 0 or (millis == 0 and not allow_zero):
            self.problem(
                f"{key} must be a {'non-negative' if allow_zero else 'positive'} duration (e.g. 500ms, 2s), got {value!r}"
            )
            return None
        return millis

    def pattern(self, data: dict, key: str, regex: re.Pattern, hint: str) -> str | None:
        value = data.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not regex.match(value):
            self.problem(f"{key} must be {hint}, got {value!r}")
            return None
        return value

    def strings(self, data: dict, key: str) -> tuple[str, ...]:
        value = data.get(key) or []
        if isinstance(value, str) or not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.problem(f"{key} must be a list of strings, got {value!r}")
            return ()
        return tuple(value)


def split_concurrency(total: int, weights: list[int]) -> list[int]:
    """Largest-remainder split of ``total`` by ``weights``, each share at least 1 (needs ``total >= len(weights)``)."""
    spare = total - len(weights)
    exact = [spare * w / sum(weights) for w in weights]
    shares = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: (shares[i] - exact[i], i))
    for i in by_remainder[: spare - sum(shares)]:
        shares[i] += 1
    return [s + 1 for s in shares]


def _classes(reader: _Reader, raw: object, limits: dict) -> tuple[RequestClass, ...]:
    """Request classes (default: one class ``default``); concurrency is split by weight, queues are per class."""
    if raw is None:
        raw = [{"name": "default"}]
    if not isinstance(raw, list) or not raw:
        reader.problem("classes must be a non-empty list of {name, weight, max_queue, queue_timeout, path_prefix}")
        return ()
    items = [reader.section(c, "classes[]", _CLASS_KEYS) for c in raw]
    names = [c.get("name") for c in items]
    if not all(isinstance(n, str) and _NAME.match(n) for n in names) or len(set(names)) != len(names):
        reader.problem(f"class names must be unique, lowercase letters, digits and '-', got {names}")
        return ()
    weights = [reader.integer(c, "weight", 1) or 1 for c in items]
    total = limits["max_concurrency"]
    if total is None or limits["queue_timeout"] is None:
        return ()
    if total < len(items):
        reader.problem(
            f"max_concurrency {total} is less than the {len(items)} request classes; raise it or merge classes"
        )
        return ()
    result = []
    shares = split_concurrency(total, weights)
    for i, item in enumerate(items):
        max_queue = reader.integer(item, "max_queue", limits["max_queue"], minimum=0)
        timeout = reader.duration(item, "queue_timeout", f"{limits['queue_timeout']}ms")
        prefix = item.get("path_prefix")
        if prefix is not None and not (isinstance(prefix, str) and re.match(r"^/[\w./-]*$", prefix)):
            reader.problem(f"class {item['name']}: path_prefix must start with '/', got {prefix!r}")
        if timeout is not None and limits["request_timeout"] is not None and timeout > limits["request_timeout"]:
            reader.problem(
                f"class {item['name']}: queue_timeout {timeout}ms exceeds request_timeout {limits['request_timeout']}ms; "
                "lower queue_timeout or raise request_timeout"
            )
        if max_queue is not None and timeout is not None:
            result.append(RequestClass(item["name"], shares[i], max_queue, timeout, prefix))
    return tuple(result)


def _service(spec: object, index: int, slots: dict, problems: list[str]) -> Service | None:
    """One spec -> Service, or None with the reasons appended to ``problems``."""
    name = spec.get("name") if isinstance(spec, dict) else None
    reader = _Reader(f"service {name}" if isinstance(name, str) else f"service #{index + 1}", problems)
    before = len(problems)
    if not isinstance(spec, dict):
        reader.problem("each service must be a mapping with at least name, slot, port and backend_port")
        return None
    spec = reader.section(spec, "service", _TOP_KEYS)
    if not (isinstance(name, str) and _NAME.match(name)):
        reader.problem(f"name must be 1-24 lowercase letters, digits or '-', starting with a letter, got {name!r}")
    model = reader.section(spec.get("model"), "model", _MODEL_KEYS)
    limits_in = reader.section(spec.get("limits"), "limits", _LIMIT_KEYS)
    sla = reader.section(spec.get("sla"), "sla", _SLA_KEYS)
    limits = {
        "max_concurrency": reader.integer(limits_in, "max_concurrency", 1),
        "max_queue": reader.integer(limits_in, "max_queue", 0, minimum=0),
        "queue_timeout": reader.duration(limits_in, "queue_timeout", "1s"),
        "request_timeout": reader.duration(limits_in, "request_timeout", "60s"),
    }
    if (
        None not in (limits["queue_timeout"], limits["request_timeout"])
        and limits["queue_timeout"] > limits["request_timeout"]
    ):
        reader.problem(
            f"queue_timeout {limits['queue_timeout']}ms exceeds request_timeout {limits['request_timeout']}ms; "
            "lower limits.queue_timeout or raise limits.request_timeout"
        )
    runner = spec.get("runner", "process")
    server = spec.get("server", "generic")
    if runner not in RUNNERS:
        reader.problem(f"runner must be one of {', '.join(RUNNERS)}, got {runner!r}")
    if server not in SERVER_PORTS:
        reader.problem(f"server must be one of {', '.join(SERVER_PORTS)}, got {server!r}")
    command = reader.strings(spec, "command")
    if runner == "process" and not (command and command[0].startswith("/")):
        reader.problem(
            "runner process needs command: a list starting with an absolute path, e.g. [/usr/bin/tritonserver]"
        )
    if runner == "quadlet" and not isinstance(spec.get("image"), str):
        reader.problem("runner quadlet needs image: a container image reference")
    if server in ("triton", "mlserver", "vllm") and not isinstance(model.get("name"), str):
        reader.problem(f"server {server} needs model.name")
    if server in ("triton", "mlserver") and not (isinstance(model.get("dir"), str) and model["dir"].startswith("/")):
        reader.problem(f"server {server} needs model.dir: the absolute path of the model repository")
    port = reader.integer(spec, "port", None)
    backend_port = reader.integer(spec, "backend_port", None)
    for key, value in (("port", port), ("backend_port", backend_port)):
        if value is None or value > 65535:
            reader.problem(f"{key} must be a TCP port 1-65535, got {spec.get(key)!r}")
    user = spec.get("user", f"gpumig-{name}")
    if not (isinstance(user, str) and _USER.match(user)) or user == "root":
        reader.problem(f"user must be a non-root system user name (lowercase, <= 32 chars), got {user!r}")
    if not isinstance(spec.get("slot"), str) or spec["slot"] not in slots:
        reader.problem(f"unknown slot {spec.get('slot')!r}; known slots: {', '.join(sorted(slots)) or 'none'}")
    header = spec.get("class_header", "X-Request-Class")
    if not (isinstance(header, str) and re.match(r"^[A-Za-z0-9-]+$", header)):
        reader.problem(f"class_header must be an HTTP header name, got {header!r}")
    classes = _classes(reader, spec.get("classes"), limits)
    numbers = {
        "max_batch": reader.integer(limits_in, "max_batch", 1),
        "batch_delay": reader.duration(limits_in, "batch_delay", 0, allow_zero=True),
        "retry_after": reader.integer(limits_in, "retry_after", 1),
        "tasks_max": reader.integer(limits_in, "tasks_max", 512),
        "nofile": reader.integer(limits_in, "nofile", 65536),
        "instances": reader.integer(model, "instances", 1),
        "max_model_len": reader.integer(model, "max_model_len", None),
        "weights_mib": reader.integer(model, "weights_mib", 0, minimum=0),
        "activation_mib": reader.integer(model, "activation_mib", 0, minimum=0),
        "batch_headroom_mib": reader.integer(model, "batch_headroom_mib", 0, minimum=0),
    }
    cpu_quota = reader.pattern(limits_in, "cpu_quota", _CPU_QUOTA, "a systemd CPUQuota= such as 200%")
    memory_max = reader.pattern(limits_in, "memory_max", _MEMORY_MAX, "a systemd MemoryMax= such as 16G")
    p95, p99, rps = (reader.number(sla, k) for k in ("p95_ms", "p99_ms", "target_rps"))
    if p95 and p99 and p95 > p99:
        reader.problem(f"sla.p95_ms {p95} exceeds sla.p99_ms {p99}")
    shares = reader.strings(spec, "shares_slot_with")
    extra_args = reader.strings(spec, "extra_args")
    if len(problems) > before:
        return None
    return Service(
        name=name, slot=spec["slot"], runner=runner, server=server, port=port, backend_port=backend_port, user=user,
        classes=classes, max_concurrency=limits["max_concurrency"], max_queue=limits["max_queue"],
        queue_timeout_ms=limits["queue_timeout"], request_timeout_ms=limits["request_timeout"],
        listen=spec.get("listen", "0.0.0.0"), command=command, image=spec.get("image"), class_header=header,
        model=model.get("name"), model_dir=model.get("dir"), max_model_len=numbers["max_model_len"],
        instances=numbers["instances"], triton_backend=model.get("backend", "onnxruntime"),
        mlserver_implementation=model.get("implementation", "mlserver_sklearn.SKLearnModel"), extra_args=extra_args,
        max_batch=numbers["max_batch"], batch_delay_ms=numbers["batch_delay"], retry_after_s=numbers["retry_after"],
        cpu_quota=cpu_quota, memory_max=memory_max, tasks_max=numbers["tasks_max"], nofile=numbers["nofile"],
        weights_mib=numbers["weights_mib"], activation_mib=numbers["activation_mib"],
        batch_headroom_mib=numbers["batch_headroom_mib"], p95_ms=p95, p99_ms=p99, target_rps=rps,
        shares_slot_with=shares,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------------
# Cross-service checks: names, ports, slots, slot sharing, memory fit
# ---------------------------------------------------------------------------------------------------------------------


def _duplicates(pairs: list[tuple[object, str]]) -> dict[object, list[str]]:
    seen: dict[object, list[str]] = {}
    for key, owner in pairs:
        seen.setdefault(key, []).append(owner)
    return {k: v for k, v in seen.items() if len(v) > 1}


def _check_fleet(
    names: list[object], services: list[Service], reserved_ports: tuple[int, ...], problems: list[str]
) -> None:
    for name, owners in _duplicates([(n, str(n)) for n in names if n is not None]).items():
        problems.append(f"service {name}: the name is used {len(owners)} times; give each service its own name")
    ports = [(p, s.name) for s in services for p in s.ports] + [(p, "(reserved)") for p in reserved_ports]
    for port, owners in _duplicates(ports).items():
        problems.append(
            f"service {', '.join(sorted(set(owners)))}: port {port} is taken more than once "
            "(public port, or backend_port and the ports after it that the server uses); pick free ports"
        )
    by_slot: dict[str, list[Service]] = {}
    for service in services:
        by_slot.setdefault(service.slot, []).append(service)
    for slot, group in by_slot.items():
        for service in group:
            missing = sorted(o.name for o in group if o is not service and o.name not in service.shares_slot_with)
            if missing:
                problems.append(
                    f"service {service.name}: slot {slot} is also used by {', '.join(missing)}; "
                    f"give each its own slot, or list each other in shares_slot_with"
                )


def smallest_fitting_profile(needed_mib: int, profiles: list[dict]) -> str | None:
    """Name of the profile with the least memory that still holds ``needed_mib`` (None when none does)."""
    fitting = [p for p in profiles if int(p["memory_mib"]) >= needed_mib]
    return min(fitting, key=lambda p: (int(p["memory_mib"]), p["name"]))["name"] if fitting else None


def check_memory(services: list[Service], slots: dict, profiles: dict, problems: list[str]) -> list[str]:
    """Refuse slots whose services need more GPU memory than the slot has; warn when headroom is below 10%.

    ``profiles`` maps a GPU UUID to its profile table (``[{name, memory_mib}]``) for the "smallest profile" hint.
    """
    warnings = []
    by_slot: dict[str, list[Service]] = {}
    for service in services:
        if service.needed_mib:
            by_slot.setdefault(service.slot, []).append(service)
    for slot_name, group in sorted(by_slot.items()):
        slot = slots[slot_name]
        available = int(slot.get("memory_mib") or 0)
        needed = sum(s.needed_mib for s in group)
        names = ", ".join(s.name for s in group)
        if needed > available:
            best = smallest_fitting_profile(needed, profiles.get(slot.get("gpu_uuid"), []))
            hint = (
                f"use profile {best} or larger" if best else "no profile on this GPU is large enough: shrink the model"
            )
            problems.append(
                f"service {names}: needs {needed} MiB of GPU memory (weights + activations + batch headroom) "
                f"but slot {slot_name} ({slot.get('profile')}) has {available} MiB; {hint}, or lower the model's memory"
            )
        elif available and (available - needed) / available < HEADROOM_WARN:
            warnings.append(
                f"service {names}: slot {slot_name} keeps only {available - needed} MiB of {available} MiB free "
                f"({100 * (available - needed) / available:.1f}% < {100 * HEADROOM_WARN:.0f}%); CUDA context and "
                "fragmentation may not fit"
            )
    return warnings


def _sla_warnings(services: list[Service]) -> list[str]:
    """Little's law: holding ``target_rps`` at latency p95 needs ``target_rps * p95`` requests in flight."""
    warnings = []
    for s in services:
        if s.target_rps and s.p95_ms and s.max_concurrency < s.target_rps * s.p95_ms / 1000:
            needed = math.ceil(s.target_rps * s.p95_ms / 1000)
            warnings.append(
                f"service {s.name}: max_concurrency {s.max_concurrency} cannot hold {s.target_rps:g} rps at "
                f"p95 {s.p95_ms:g} ms (Little's law needs >= {needed} in flight); raise it or expect queueing"
            )
        if s.server == "vllm" and s.runner == "process":
            warnings.append(
                f"service {s.name}: vLLM run as a process with CUDA_VISIBLE_DEVICES=MIG-... crashes on affected versions "
                "(vllm-project/vllm#41848); prefer runner quadlet, which pins the slot through CDI"
            )
    return warnings


def validate(
    specs: object, slots: dict, profiles: dict | None = None, reserved_ports: tuple[int, ...] = ()
) -> tuple[list[Service], list[str]]:
    """Validate service specs against the slot map; return (services, warnings) or raise ServiceError with every problem.

    ``slots`` is the slot map (``{slot: {gpu_uuid, profile, memory_mib, ...}}``), ``profiles`` maps GPU UUIDs to
    profile tables, ``reserved_ports`` are ports taken by something else (the HAProxy stats listener).
    """
    problems: list[str] = []
    if not isinstance(specs, list):
        raise ServiceError([f"services must be a list of service mappings, got {type(specs).__name__}"])
    parsed = [_service(spec, i, slots, problems) for i, spec in enumerate(specs)]
    services = [s for s in parsed if s is not None]
    names = [spec.get("name") if isinstance(spec, dict) else None for spec in specs]
    _check_fleet(names, services, reserved_ports, problems)
    warnings = check_memory(services, slots, profiles or {}, problems)
    if problems:
        raise ServiceError(problems)
    return services, warnings + _sla_warnings(services)


# ---------------------------------------------------------------------------------------------------------------------
# Renderers
# ---------------------------------------------------------------------------------------------------------------------


def backend_name(service: Service, request_class: RequestClass) -> str:
    """HAProxy backend of one request class of a service."""
    return f"be_{service.name}_{request_class.name}"


def _json_body(text: str) -> str:
    """A JSON error body as a single-quoted HAProxy string argument."""
    return "'" + json.dumps({"error": text}).replace("'", "\\'") + "'"


def render_haproxy(
    services: list[Service], stats_bind: str = "127.0.0.1:8405", global_lines: tuple[str, ...] = ()
) -> str:
    """Complete haproxy.cfg: one frontend per service, one backend (own concurrency share and queue) per class.

    A class's backend answers 503 + Retry-After at once when its queue holds ``max_queue`` requests, and HAProxy's own
    queue timeout (``timeout queue``) answers the same 503 for requests that waited too long. Health checks on the
    server's readiness path keep a loading or failed server out of rotation (503 at once, not a hang).
    """
    logging = ["    log global", "    option httplog"] if any(g.startswith("log ") for g in global_lines) else []
    lines = ["global", *(f"    {g}" for g in global_lines), "",
             "defaults", "    mode http", *logging, "    timeout connect 2s",
             "    timeout client 1m", "    timeout http-request 10s", "    timeout http-keep-alive 10s", "",
             "frontend stats", f"    bind {stats_bind}", "    http-request use-service prometheus-exporter if { path /metrics }",
             "    stats enable", "    stats uri /stats", "    stats refresh 10s", ""]  # fmt: skip
    for s in services:
        lines += [
            f"frontend fe_{s.name}",
            f"    bind {s.listen}:{s.port}",
            f"    timeout client {s.request_timeout_ms + 5000}ms",
        ]
        for c in s.classes[1:]:
            lines.append(f"    acl cls_{c.name} req.hdr({s.class_header}) -m str {c.name}")
            if c.path_prefix:
                lines.append(f"    acl cls_{c.name} path_beg {c.path_prefix}")
            lines.append(f"    use_backend {backend_name(s, c)} if cls_{c.name}")
        lines += [f"    default_backend {backend_name(s, s.classes[0])}", ""]
        for c in s.classes:
            retry = f'hdr Retry-After "{s.retry_after_s}"'
            lines += [
                f"backend {backend_name(s, c)}",
                f"    timeout queue {c.queue_timeout_ms}ms",
                f"    timeout server {s.request_timeout_ms}ms",
                f"    http-request return status 503 content-type application/json {retry} "
                f"string {_json_body(f'{s.name}/{c.name}: queue full, retry later')} "
                f"if {{ queue() ge {c.max_queue} }} {{ srv_conn({backend_name(s, c)}/{s.name}) ge {c.max_concurrency} }}",
                f"    http-error status 503 content-type application/json {retry} "
                f"string {_json_body(f'{s.name}/{c.name}: overloaded or unavailable, retry later')}",
                f"    option httpchk GET {HEALTH_PATHS[s.server]}",
                f"    server {s.name} 127.0.0.1:{s.backend_port} maxconn {c.max_concurrency} maxqueue {c.max_queue} "
                "check inter 2s",
                "",
            ]
    return "\n".join(lines)


def render_triton_config(service: Service) -> str:
    """Triton ``config.pbtxt``: dynamic batching with a bounded, rejecting queue; one instance group on the slot.

    Triton never holds more than HAProxy admits, so its queue is capped at ``max_concurrency`` and its queue timeout
    equals the admission queue timeout.
    """
    return "\n".join([
        f'name: "{service.model}"',
        f'backend: "{service.triton_backend}"',
        f"max_batch_size: {service.max_batch}",
        "dynamic_batching {",
        f"  preferred_batch_size: [ {service.max_batch} ]",
        f"  max_queue_delay_microseconds: {service.batch_delay_ms * 1000}",
        "  default_queue_policy {",
        "    timeout_action: REJECT",
        f"    default_timeout_microseconds: {service.queue_timeout_ms * 1000}",
        "    allow_timeout_override: true",
        f"    max_queue_size: {service.max_concurrency}",
        "  }",
        "}",
        "instance_group [",
        "  {",
        f"    count: {service.instances}",
        "    kind: KIND_GPU",
        "    gpus: [ 0 ]",
        "  }",
        "]",
        "",
    ])  # fmt: skip


def vllm_memory_fraction(service: Service, slot_memory_mib: int) -> float:
    """``--gpu-memory-utilization``: the model's declared memory over the slot's, rounded up to 0.01 (max 0.95)."""
    return min(0.95, max(0.05, math.ceil(100 * service.needed_mib / slot_memory_mib) / 100))


def server_argv(service: Service, slot: dict) -> list[str]:
    """Arguments appended to the command (process) or the container's command (quadlet): ports on loopback + limits."""
    port = service.backend_port
    if service.server == "triton":
        argv = [f"--model-repository={service.model_dir}", "--http-address=127.0.0.1", f"--http-port={port}",
                "--grpc-address=127.0.0.1", f"--grpc-port={port + 1}", "--metrics-address=127.0.0.1",
                f"--metrics-port={port + 2}"]  # fmt: skip
    elif service.server == "vllm":
        argv = [service.model, "--host", "127.0.0.1", "--port", str(port),
                "--gpu-memory-utilization", f"{vllm_memory_fraction(service, int(slot['memory_mib'])):.2f}",
                "--max-num-seqs", str(service.max_concurrency)]  # fmt: skip
        if service.max_model_len:
            argv += ["--max-model-len", str(service.max_model_len)]
    elif service.server == "mlserver":
        argv = ["start", service.model_dir]
    else:
        argv = []
    return argv + list(service.extra_args)


def mlserver_settings(service: Service) -> tuple[dict, dict]:
    """MLServer ``settings.json`` (server) and ``model-settings.json`` (model, adaptive batching) as dicts."""
    port = service.backend_port
    settings = {
        "host": "127.0.0.1",
        "http_port": port,
        "grpc_port": port + 1,
        "metrics_port": port + 2,
        "parallel_workers": service.instances,
    }
    model = {
        "name": service.model,
        "implementation": service.mlserver_implementation,
        "max_batch_size": service.max_batch,
        "max_batch_time": service.batch_delay_ms / 1000,
        "parameters": {"uri": "./model.joblib"},
    }
    return settings, model


def parse_mig_minors(text: str) -> dict[str, int]:
    """``/proc/driver/nvidia-caps/mig-minors`` (``gpu0/gi1/ci0/access 13`` per line) -> {name: minor}."""
    table = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            table[parts[0]] = int(parts[1])
    return table


def mig_cap_minors(gpu_minor: int, gi: int, ci: int, table: dict[str, int] | None = None) -> tuple[int, int]:
    """Minors of ``/dev/nvidia-caps/nvidia-cap<N>`` for a GPU instance and its compute instance.

    Read from the driver's table when given; otherwise computed with the layout the driver uses (config 1, monitor 2,
    then ``3 + gpu*135 + gi*9`` for ``gpu<G>/gi<I>/access`` and ``+ 1 + ci`` for its ``ci<C>/access``), which matches
    published tables (e.g. ``gpu3/gi3/ci3/access 439``, ``gpu6/gi11/ci5/access 918``).
    """
    gi_name, ci_name = f"gpu{gpu_minor}/gi{gi}/access", f"gpu{gpu_minor}/gi{gi}/ci{ci}/access"
    if table and gi_name in table and ci_name in table:
        return table[gi_name], table[ci_name]
    gi_minor = _CAPS_FIRST + gpu_minor * _CAPS_GIS * _CAPS_PER_GI + gi * _CAPS_PER_GI
    return gi_minor, gi_minor + 1 + ci


def device_allow(slot: dict, table: dict[str, int] | None = None) -> list[str]:
    """Device nodes a bare process on ``slot`` needs (systemd ``DeviceAllow=``): control, UVM, parent GPU, GI + CI caps.

    The GPU's device minor is taken to be its NVML index (``slot['gpu_minor']`` overrides it).
    """
    gpu_minor = int(slot.get("gpu_minor", slot["gpu_index"]))
    gi_minor, ci_minor = mig_cap_minors(
        gpu_minor, int(slot["gpu_instance_id"]), int(slot["compute_instance_id"]), table
    )
    return ["/dev/nvidiactl", "/dev/nvidia-uvm", f"/dev/nvidia{gpu_minor}",
            f"/dev/nvidia-caps/nvidia-cap{gi_minor}", f"/dev/nvidia-caps/nvidia-cap{ci_minor}"]  # fmt: skip


def systemd_exec(argv: list[str]) -> str:
    """An ``ExecStart=``/Quadlet ``Exec=`` command line: words double-quoted when needed, ``%`` and ``$`` escaped."""
    words = []
    for word in argv:
        word = word.replace("%", "%%").replace("$", "$$")
        if not word or re.search(r'[\s"\'\\;]', word):
            word = '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
        words.append(word)
    return " ".join(words)
