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
from typing import Callable, Mapping

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

_INT_MAX = 2**31 - 1  # systemd and HAProxy read counts and limits as 32-bit integers
_DAY_MS = 86_400_000
_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}
# C0 controls, DEL, C1 controls and the Unicode line/paragraph separators: none may reach a rendered file.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", re.ASCII)
_NAME = re.compile(r"[a-z][a-z0-9-]{0,23}", re.ASCII)
_MODEL_DIR_ENTRY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*", re.ASCII)
# The executable of ExecStart=: systemd refuses quotes and backslashes in it and does not expand "$$" there.
_EXECUTABLE = re.compile(r"/[^\"'\\$]*")


class ServiceError(Exception):
    """The service specs cannot be deployed; ``problems`` lists every reason, each naming the service and the fix."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


# ---------------------------------------------------------------------------------------------------------------------
# The rules: one table per section of a service spec; every field of a spec is checked here and nowhere else
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """How one field is checked, and what a valid value looks like (``hint``, ``example``: the fix in messages).

    ``kind``: ``str``, ``int``, ``number`` (> 0), ``duration`` (a number of seconds or ``250ms``/``2s``/``1m``/``1h``,
    read as milliseconds), ``strings`` (a list of str, each checked like a ``str``), ``section`` (a mapping checked by
    ``fields``) or ``sections`` (a non-empty list of such mappings). Every string, wherever it is, must be non-empty
    one-line printable text. ``needed_by``/``only_for`` tie a field to values of a top-level field (``server``,
    ``runner``): required for them, or refused for the others.
    """

    kind: str
    example: object = None
    hint: str = ""
    required: bool = False
    default: object = None
    minimum: int = 1
    maximum: int = _INT_MAX
    choices: tuple[str, ...] = ()
    pattern: re.Pattern | None = None
    fields: Mapping[str, Rule] | None = None
    needed_by: tuple[str, tuple[str, ...]] | None = None
    only_for: tuple[str, tuple[str, ...]] | None = None


def _ascii(pattern: str) -> re.Pattern:
    """A pattern whose classes (\\d, \\s) match ASCII only."""
    return re.compile(pattern, re.ASCII)


_AI_SERVERS = ("triton", "mlserver", "vllm")
_REPOSITORY_SERVERS = ("triton", "mlserver")
_BATCHING_SERVERS = ("triton", "mlserver")

MODEL_RULES: Mapping[str, Rule] = {
    "name": Rule("str", "resnet", "a model name, Hugging Face id or path (letters, digits, . _ - + @ /; not starting "
                 "with '-')", pattern=_ascii(r"[A-Za-z0-9_./][A-Za-z0-9_./@+-]*"), needed_by=("server", _AI_SERVERS)),
    "dir": Rule("str", "/srv/models", "an absolute path such as /srv/models (letters, digits, . _ - + @; no '..', "
                "spaces or ':')", pattern=_ascii(r"(/[A-Za-z0-9_+@-][A-Za-z0-9._+@-]*)+"),
                needed_by=("server", _REPOSITORY_SERVERS)),
    "weights_mib": Rule("int", 12000, "GPU memory of the weights in MiB", default=0, minimum=0),
    "activation_mib": Rule("int", 2000, "GPU memory of the activations in MiB", default=0, minimum=0),
    "batch_headroom_mib": Rule("int", 2000, "GPU memory for batches/KV cache in MiB", default=0, minimum=0),
    "max_model_len": Rule("int", 4096, "vLLM --max-model-len", only_for=("server", ("vllm",))),
    "instances": Rule("int", 2, "Triton instance_group count, MLServer parallel_workers", default=1,
                      only_for=("server", _REPOSITORY_SERVERS)),
    "backend": Rule("str", "onnxruntime", "a Triton backend name such as onnxruntime or python",
                    default="onnxruntime", pattern=_ascii(r"[a-z][a-z0-9_]*"), only_for=("server", ("triton",))),
    "implementation": Rule("str", "mlserver_sklearn.SKLearnModel", "a dotted Python class path",
                           default="mlserver_sklearn.SKLearnModel",
                           pattern=_ascii(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+"),
                           only_for=("server", ("mlserver",))),
}  # fmt: skip
LIMIT_RULES: Mapping[str, Rule] = {
    "max_concurrency": Rule("int", 8, "requests in flight at the server", default=1),
    "max_queue": Rule("int", 16, "requests queued in HAProxy per class", default=0, minimum=0),
    "queue_timeout": Rule("duration", "500ms", default="1s", maximum=_DAY_MS),
    "request_timeout": Rule("duration", "30s", default="60s", maximum=_DAY_MS),
    "max_batch": Rule("int", 8, "largest batch of the server", default=1, only_for=("server", _BATCHING_SERVERS)),
    "batch_delay": Rule("duration", "2ms", default=0, minimum=0, maximum=_DAY_MS,
                        only_for=("server", _BATCHING_SERVERS)),
    "retry_after": Rule("int", 1, "seconds in the Retry-After header", default=1),
    "cpu_quota": Rule("str", "400%", "a systemd CPUQuota= such as 200%", pattern=_ascii(r"[1-9][0-9]*%")),
    "memory_max": Rule("str", "16G", "a systemd MemoryMax= such as 16G or infinity",
                       pattern=_ascii(r"[1-9][0-9]*[KMGT]?|infinity")),
    "tasks_max": Rule("int", 512, "systemd TasksMax=", default=512),
    "nofile": Rule("int", 65536, "systemd LimitNOFILE=", default=65536),
}  # fmt: skip
CLASS_RULES: Mapping[str, Rule] = {
    "name": Rule("str", "fast", "1-24 lowercase letters, digits or '-', starting with a letter", required=True,
                 pattern=_NAME),
    "weight": Rule("int", 3, "share of max_concurrency", default=1),
    "max_queue": Rule("int", 64, "requests queued (default limits.max_queue)", minimum=0),
    "queue_timeout": Rule("duration", "10s", maximum=_DAY_MS),
    "path_prefix": Rule("str", "/batch", "a URL path starting with '/' (letters, digits, . _ ~ - /)",
                        pattern=_ascii(r"/[A-Za-z0-9._~/-]*")),
}  # fmt: skip
SLA_RULES: Mapping[str, Rule] = {
    "p95_ms": Rule("number", 200),
    "p99_ms": Rule("number", 400),
    "target_rps": Rule("number", 30),
}
SERVICE_RULES: Mapping[str, Rule] = {
    "name": Rule("str", "chat", "1-24 lowercase letters, digits or '-', starting with a letter", required=True,
                 pattern=_NAME),
    "slot": Rule("str", "chat", "the name of a slot of the MIG layout", required=True,
                 pattern=_ascii(r"[a-z0-9][a-z0-9_-]{0,62}")),
    "runner": Rule("str", "process", default="process", choices=RUNNERS),
    "server": Rule("str", "triton", default="generic", choices=tuple(SERVER_PORTS)),
    "command": Rule("strings", ["/opt/tritonserver/bin/tritonserver"], "the server's command line", default=[]),
    "image": Rule("str", "docker.io/vllm/vllm-openai:v0.10.1", "a container image reference (letters, digits, "
                  ". _ - / : @ +)", pattern=_ascii(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]*"),
                  needed_by=("runner", ("quadlet",)), only_for=("runner", ("quadlet",))),
    "port": Rule("int", 8000, "the public TCP port", required=True, maximum=65535),
    "listen": Rule("str", "0.0.0.0", "an IP address, '*' or a host name to bind, such as 0.0.0.0 or ::1",
                   default="0.0.0.0", pattern=_ascii(r"\*|[0-9A-Fa-f:.]+|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")),
    "backend_port": Rule("int", 18000, "the server's first loopback TCP port", required=True, maximum=65535),
    "user": Rule("str", "gpumig-chat", "a system user name (lowercase, <= 32 chars), never root",
                 pattern=_ascii(r"[a-z_][a-z0-9_-]{0,31}")),
    "model": Rule("section", fields=MODEL_RULES, default={}),
    "classes": Rule("sections", fields=CLASS_RULES, default=[{"name": "default"}]),
    "class_header": Rule("str", "X-Request-Class", "an HTTP header name", default="X-Request-Class",
                         pattern=_ascii(r"[A-Za-z0-9-]+")),
    "sla": Rule("section", fields=SLA_RULES, default={}),
    "limits": Rule("section", fields=LIMIT_RULES, default={}),
    "shares_slot_with": Rule("strings", ["ocr"], "service names (1-24 lowercase letters, digits or '-')", default=[],
                             pattern=_NAME),
    "extra_args": Rule("strings", ["--log-verbose=1"], "arguments appended to the server's", default=[]),
}  # fmt: skip
# The role's HAProxy variables that go into haproxy.cfg.
HAPROXY_RULES: Mapping[str, Rule] = {
    "inference_service_haproxy_stats_bind": Rule("str", "127.0.0.1:8405", "an address and port such as 127.0.0.1:8405",
                                                 required=True, pattern=_ascii(r"[0-9A-Za-z.:*-]*:[0-9]{1,5}")),
    "inference_service_haproxy_global": Rule("strings", ["maxconn 20000"], "lines of the HAProxy global section",
                                             default=[]),
}  # fmt: skip


def _shown(value: object) -> str:
    """A value as a message quotes it: its repr, cut short, with its type when the repr hides it (the builtin type:
    Ansible 2.19 hands the controller tagged subclasses such as _AnsibleTaggedDict)."""
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    kind = next(t for t in type(value).__mro__ if t.__module__ == "builtins").__name__
    return text if isinstance(value, (str, int, float)) else f"{kind} {text}"


def _duration_text(millis: int) -> str:
    """``0``, ``1ms``, ``24h``: in the largest unit that divides ``millis``."""
    unit, size = next((u, n) for u, n in (("h", 3_600_000), ("s", 1000), ("ms", 1)) if millis % n == 0)
    return f"{millis // size}{unit}" if millis else "0"


def parse_duration_ms(value: object) -> int | None:
    """Seconds (number) or a string such as ``250ms``, ``2s``, ``1.5m`` -> milliseconds; None when unparsable."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number, unit = value, "s"
    else:
        match = _DURATION.fullmatch(value) if isinstance(value, str) else None
        if not match:
            return None
        number, unit = float(match.group(1)), match.group(2) or "s"
    millis = number * _UNITS_MS[unit]
    return None if isinstance(millis, float) and not math.isfinite(millis) else round(millis)


def _control_problem(value: str) -> str | None:
    """Why ``value`` cannot go into a rendered file (a control character), or None."""
    control = _CONTROL.search(value)
    if not control:
        return None
    return (
        f"must be one line of printable text, got {_shown(value)} with control character "
        f"U+{ord(control.group()):04X} at position {control.start()}; remove it"
    )


def _string_problem(value: object, rule: Rule) -> str | None:
    """Why ``value`` is not a valid string for ``rule``, or None."""
    hint = rule.hint or f"one of {', '.join(rule.choices)}"
    if not isinstance(value, str):
        return f"must be a string: {hint}, got {_shown(value)}"
    control = _control_problem(value)
    if control:
        return control
    if not value.strip():
        return f"must not be empty: {hint}"
    if rule.choices and value not in rule.choices:
        return f"must be one of {', '.join(rule.choices)}, got {_shown(value)}"
    if rule.pattern and not rule.pattern.fullmatch(value):
        return f"must be {hint}, got {_shown(value)}"
    return None


def _scalar(value: object, rule: Rule) -> tuple[object, str | None]:
    """(the value, None), or (None, why) for a ``str``, ``int``, ``number`` or ``duration`` field."""
    if rule.kind == "str":
        why = _string_problem(value, rule)
        return (None, why) if why else (value, None)
    if rule.kind == "int":
        is_int = isinstance(value, int) and not isinstance(value, bool)
        if not is_int or not rule.minimum <= value <= rule.maximum:
            if rule.maximum < _INT_MAX:
                bound = f"from {rule.minimum} to {rule.maximum}"
            else:
                bound = f"at most {rule.maximum}" if is_int and value > rule.maximum else f">= {rule.minimum}"
            hint = f" ({rule.hint})" if rule.hint else ""
            return None, f"must be an integer {bound}{hint}, got {_shown(value)}"
        return value, None
    if rule.kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= rule.maximum:
            return None, f"must be a number above 0 and at most {rule.maximum}, got {_shown(value)}"
        return float(value), None
    why = _control_problem(value) if isinstance(value, str) else None
    millis = None if why else parse_duration_ms(value)
    if millis is None or not rule.minimum <= millis <= rule.maximum:
        return None, why or (
            f"must be a duration from {_duration_text(rule.minimum)} to {_duration_text(rule.maximum)} such as "
            f"{rule.example} (a bare number is seconds), got {_shown(value)}"
        )
    return millis, None


def _check(
    data: Mapping, rules: Mapping[str, Rule], where: str, problem: Callable[[str], None], context: Mapping | None = None
) -> dict:
    """The fields of ``data`` by ``rules``: defaults filled in, None where a value is wrong (the reason reported).

    ``where`` is the dotted path of ``data`` in messages; ``context`` holds the top-level fields that ``needed_by`` and
    ``only_for`` refer to (by default the values read so far, so those fields come first in the table).
    """
    unknown = sorted(map(repr, set(data) - set(rules)))
    if unknown:
        problem(f"unknown key(s) {', '.join(unknown)} in {where or 'the service'}; allowed: {', '.join(rules)}")
    values: dict = {}
    context = values if context is None else context
    for key, rule in rules.items():
        path = f"{where}.{key}" if where else key
        value = data.get(key)
        owner = rule.needed_by or rule.only_for
        owner_value = context.get(owner[0]) if owner else None
        if value is None:
            if rule.required or (rule.needed_by and owner_value in rule.needed_by[1]):
                because = f" with {owner[0]} {owner_value}" if not rule.required else ""
                problem(f"{path} is required{because}: {rule.hint or 'e.g. ' + repr(rule.example)}")
            value = rule.default
        elif rule.only_for and owner_value is not None and owner_value not in rule.only_for[1]:
            key_name, allowed = rule.only_for
            problem(f"{path} applies only to {key_name} {' or '.join(allowed)}, not {owner_value}; remove it")
        values[key] = None if value is None else _value(value, rule, path, problem, context)
    return values


def _value(value: object, rule: Rule, path: str, problem: Callable[[str], None], context: Mapping) -> object:
    """One field's value by its rule (None when wrong, with the reason reported)."""
    if rule.kind == "section":
        if not isinstance(value, dict):
            problem(f"{path} must be a mapping with keys {', '.join(rule.fields)}, got {_shown(value)}")
            return _check({}, rule.fields, path, problem, context)
        return _check(value, rule.fields, path, problem, context)
    if rule.kind == "sections":
        if not isinstance(value, list) or not value:
            problem(
                f"{path} must be a non-empty list of mappings with keys {', '.join(rule.fields)}, got {_shown(value)}"
            )
            return None
        items = []
        for index, item in enumerate(value):
            if isinstance(item, dict):
                items.append(_check(item, rule.fields, f"{path}[{index}]", problem, context))
            else:
                problem(f"{path}[{index}] must be a mapping with keys {', '.join(rule.fields)}, got {_shown(item)}")
        return items if len(items) == len(value) else None
    if rule.kind == "strings":
        if not isinstance(value, list):
            problem(f"{path} must be a list of strings ({rule.hint}), got {_shown(value)}")
            return None
        reasons = [(index, _string_problem(item, rule)) for index, item in enumerate(value)]
        for index, why in reasons:
            if why:
                problem(f"{path}[{index}] {why}")
        return None if any(why for _index, why in reasons) else tuple(value)
    result, why = _scalar(value, rule)
    if why:
        problem(f"{path} {why}")
    return result


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
# One service: the rules above, then the relations between its fields
# ---------------------------------------------------------------------------------------------------------------------


def split_concurrency(total: int, weights: list[int]) -> list[int]:
    """Largest-remainder split of ``total`` by ``weights``, each share at least 1 (needs ``total >= len(weights)``)."""
    spare = total - len(weights)
    exact = [spare * w / sum(weights) for w in weights]
    shares = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: (shares[i] - exact[i], i))
    for i in by_remainder[: spare - sum(shares)]:
        shares[i] += 1
    return [s + 1 for s in shares]


def _check_relations(spec: dict, slots: dict, problem: Callable[[str], None]) -> None:
    """What no single field says: the process command, model and port layout, timeouts, classes, SLA, user, slot."""
    limits, model, classes = spec["limits"], spec["model"], spec["classes"]
    command = spec["command"]
    if spec["runner"] == "process" and command is not None and not (command and _EXECUTABLE.fullmatch(command[0])):
        problem(
            "runner process needs command: a list starting with the server's absolute path, e.g. "
            "[/opt/tritonserver/bin/tritonserver] (systemd refuses quotes, backslashes and '$' in it)"
        )
    if spec["server"] in _REPOSITORY_SERVERS and model["name"] and not _MODEL_DIR_ENTRY.fullmatch(model["name"]):
        problem(
            f"model.name {model['name']!r} names a directory in model.dir for server {spec['server']}: use letters, "
            "digits, '.', '_' and '-' only"
        )
    backend_port, server = spec["backend_port"], spec["server"]
    if backend_port and server and backend_port + SERVER_PORTS[server] - 1 > 65535:
        problem(
            f"backend_port {backend_port} leaves no room for the {SERVER_PORTS[server]} ports server {server} takes; "
            f"pick one from 1 to {65536 - SERVER_PORTS[server]}"
        )
    queue_timeout, request_timeout = limits["queue_timeout"], limits["request_timeout"]
    if queue_timeout and request_timeout and queue_timeout > request_timeout:
        problem(
            f"limits.queue_timeout {queue_timeout}ms exceeds limits.request_timeout {request_timeout}ms; "
            "lower limits.queue_timeout or raise limits.request_timeout"
        )
    for index, item in enumerate(classes or ()):
        if item["queue_timeout"] and request_timeout and item["queue_timeout"] > request_timeout:
            problem(
                f"classes[{index}].queue_timeout {item['queue_timeout']}ms exceeds limits.request_timeout "
                f"{request_timeout}ms; lower the class's queue_timeout or raise limits.request_timeout"
            )
    names = [item["name"] for item in classes or () if item["name"]]
    if len(set(names)) != len(names):
        problem(f"classes: each class needs its own name, got {', '.join(names)}")
    if classes and limits["max_concurrency"] and limits["max_concurrency"] < len(classes):
        problem(
            f"limits.max_concurrency {limits['max_concurrency']} is less than the {len(classes)} request classes; "
            "raise it or merge classes"
        )
    p95, p99 = spec["sla"]["p95_ms"], spec["sla"]["p99_ms"]
    if p95 and p99 and p95 > p99:
        problem(f"sla.p95_ms {p95:g} exceeds sla.p99_ms {p99:g}; the 95th percentile cannot be above the 99th")
    if spec["user"] == "root":
        problem("user must not be root: leave it out for gpumig-<name>, or name a system user")
    if spec["slot"] and spec["slot"] not in slots:
        problem(f"unknown slot {spec['slot']!r}; known slots: {', '.join(sorted(slots)) or 'none'}")


def _request_classes(spec: dict) -> tuple[RequestClass, ...]:
    """The admission classes: concurrency split by weight, queue cap and timeout from the class or the limits."""
    limits = spec["limits"]
    classes = spec["classes"]
    shares = split_concurrency(limits["max_concurrency"], [c["weight"] for c in classes])
    return tuple(
        RequestClass(
            c["name"],
            shares[i],
            limits["max_queue"] if c["max_queue"] is None else c["max_queue"],
            c["queue_timeout"] or limits["queue_timeout"],
            c["path_prefix"],
        )
        for i, c in enumerate(classes)
    )


def _service(raw: object, index: int, slots: dict, problems: list[str]) -> Service | None:
    """One spec -> Service, or None with every reason appended to ``problems``."""
    name = raw.get("name") if isinstance(raw, dict) else None
    label = f"service {name}" if isinstance(name, str) and _NAME.fullmatch(name) else f"service #{index + 1}"
    before = len(problems)

    def problem(text: str) -> None:
        problems.append(f"{label}: {text}")

    if not isinstance(raw, dict):
        problem(f"each service must be a mapping with at least name, slot, port and backend_port, got {_shown(raw)}")
        return None
    spec = _check(raw, SERVICE_RULES, "", problem)
    if raw.get("user") is None and spec["name"]:
        spec["user"] = f"gpumig-{spec['name']}"
    _check_relations(spec, slots, problem)
    if len(problems) > before:
        return None
    model, limits, sla = spec["model"], spec["limits"], spec["sla"]
    return Service(
        name=spec["name"], slot=spec["slot"], runner=spec["runner"], server=spec["server"], port=spec["port"],
        backend_port=spec["backend_port"], user=spec["user"], classes=_request_classes(spec),
        max_concurrency=limits["max_concurrency"], max_queue=limits["max_queue"],
        queue_timeout_ms=limits["queue_timeout"], request_timeout_ms=limits["request_timeout"], listen=spec["listen"],
        command=spec["command"], image=spec["image"], class_header=spec["class_header"], model=model["name"],
        model_dir=model["dir"], max_model_len=model["max_model_len"], instances=model["instances"],
        triton_backend=model["backend"], mlserver_implementation=model["implementation"],
        extra_args=spec["extra_args"], max_batch=limits["max_batch"], batch_delay_ms=limits["batch_delay"],
        retry_after_s=limits["retry_after"], cpu_quota=limits["cpu_quota"], memory_max=limits["memory_max"],
        tasks_max=limits["tasks_max"], nofile=limits["nofile"], weights_mib=model["weights_mib"],
        activation_mib=model["activation_mib"], batch_headroom_mib=model["batch_headroom_mib"], p95_ms=sla["p95_ms"],
        p99_ms=sla["p99_ms"], target_rps=sla["target_rps"], shares_slot_with=spec["shares_slot_with"],
    )  # fmt: skip


def validate_haproxy(stats_bind: object, global_lines: object) -> tuple[int, tuple[str, ...]]:
    """The role's HAProxy settings -> (stats port, global lines), or ServiceError naming each wrong variable."""
    problems: list[str] = []
    settings = _check(
        {"inference_service_haproxy_stats_bind": stats_bind, "inference_service_haproxy_global": global_lines},
        HAPROXY_RULES,
        "",
        problems.append,
    )
    bind = settings["inference_service_haproxy_stats_bind"]
    port = int(bind.rsplit(":", 1)[1]) if bind else None
    if port is not None and not 1 <= port <= 65535:
        problems.append(f"inference_service_haproxy_stats_bind: port {port} is not a TCP port 1-65535")
    if problems:
        raise ServiceError(problems)
    return port, settings["inference_service_haproxy_global"]


# ---------------------------------------------------------------------------------------------------------------------
# Cross-service checks: names, ports, slots, slot sharing, memory fit
# ---------------------------------------------------------------------------------------------------------------------


def _duplicates(pairs: list[tuple[object, str]]) -> dict[object, list[str]]:
    seen: dict[object, list[str]] = {}
    for key, owner in pairs:
        seen.setdefault(key, []).append(owner)
    return {k: v for k, v in seen.items() if len(v) > 1}


def _check_fleet(
    names: list[str], services: list[Service], reserved_ports: tuple[int, ...], problems: list[str]
) -> None:
    for name, owners in _duplicates([(n, n) for n in names]).items():
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
        raise ServiceError([f"services must be a list of service mappings, got {_shown(specs)}"])
    if not isinstance(slots, dict) or not all(isinstance(slot, dict) for slot in slots.values()):
        raise ServiceError([f"the slot map must map slot names to slots, got {_shown(slots)}; apply the layout again"])
    parsed = [_service(spec, i, slots, problems) for i, spec in enumerate(specs)]
    services = [s for s in parsed if s is not None]
    names = [s.get("name") for s in specs if isinstance(s, dict) and isinstance(s.get("name"), str)]
    _check_fleet([n for n in names if _NAME.fullmatch(n)], services, reserved_ports, problems)
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
