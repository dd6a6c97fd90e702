# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Capacity-test core: histograms, SLA, step plans, knee verdicts, Erlang-C, SLA sentence and table (PRIVATE to the collection).

Pure: no I/O, standard library only (it runs on remote hosts inside modules).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import reprlib
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Callable
from urllib.parse import urlsplit

from ansible_collections.gpu.mig.plugins.module_utils._capacity.options import NEIGHBOUR_KEYS

SCHEMA = "gpu.mig/capacity/v1"


class CapacityError(Exception):
    """A capacity test cannot run or its input is invalid; the message says what to change."""


# ---------------------------------------------------------------------------------------------------------------------
# Latency histogram (HdrHistogram-equivalent: log buckets, bounded relative error, exact count/min/max/mean)
# ---------------------------------------------------------------------------------------------------------------------


class LatencyHistogram:
    """Log-bucketed histogram of durations in seconds; percentiles within ``1/SUB`` relative error.

    Values are stored in microseconds; bucket ``i`` holds values in ``[g**i, g**(i+1))`` with ``g = 1 + 1/SUB``.
    """

    SUB = 256
    _LOG_G = math.log1p(1.0 / SUB)

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = 0.0

    def record(self, seconds: float) -> None:
        us = seconds * 1e6
        if us < 1.0:
            us = 1.0
        idx = int(math.log(us) / self._LOG_G)
        self.counts[idx] = self.counts.get(idx, 0) + 1
        self.count += 1
        self.total += seconds
        if seconds < self.min:
            self.min = seconds
        if seconds > self.max:
            self.max = seconds

    def record_many(self, values: list) -> None:
        """:meth:`record` for each of ``values`` (seconds), in one pass."""
        counts = self.counts
        log, scale = math.log, self._LOG_G
        for seconds in values:
            idx = int(log(max(seconds * 1e6, 1.0)) / scale)
            counts[idx] = counts.get(idx, 0) + 1
        if values:
            low, high = min(values), max(values)
            self.count += len(values)
            self.total += math.fsum(values)
            self.min = min(self.min, low)
            self.max = max(self.max, high)

    def merge(self, other: LatencyHistogram) -> LatencyHistogram:
        for idx, n in other.counts.items():
            self.counts[idx] = self.counts.get(idx, 0) + n
        self.count += other.count
        self.total += other.total
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        return self

    def percentile(self, pct: float) -> float | None:
        """Value (seconds) at percentile ``pct`` (0-100, nearest rank); None when empty."""
        if self.count == 0:
            return None
        if pct >= 100:
            return self.max
        rank = max(1, (math.ceil(pct / 100.0 * self.count)))
        seen = 0
        for idx in sorted(self.counts):
            seen += self.counts[idx]
            if seen >= rank:
                # geometric middle of the bucket, clamped to the exact extremes
                mid = math.exp((idx + 0.5) * self._LOG_G) / 1e6
                return min(max(mid, self.min), self.max)
        return self.max

    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def summary_ms(self) -> dict:
        """p50/p90/p95/p99/p99.9/max/min/mean in milliseconds (None when empty)."""

        def ms(v: float | None) -> float | None:
            return None if v is None else round(v * 1000.0, 3)

        return {
            "count": self.count,
            "p50": ms(self.percentile(50)),
            "p90": ms(self.percentile(90)),
            "p95": ms(self.percentile(95)),
            "p99": ms(self.percentile(99)),
            "p999": ms(self.percentile(99.9)),
            "max": ms(self.max if self.count else None),
            "min": ms(self.min if self.count else None),
            "mean": ms(self.mean()),
        }

    def to_dict(self) -> dict:
        return {
            "sub": self.SUB,
            "counts": {str(k): v for k, v in sorted(self.counts.items())},
            "count": self.count,
            "total": self.total,
            "min": None if self.count == 0 else self.min,
            "max": self.max,
        }

    @classmethod
    def from_dict(cls, data: dict) -> LatencyHistogram:
        if int(data.get("sub", cls.SUB)) != cls.SUB:
            raise CapacityError("histogram resolution mismatch: sub=%s, expected %s" % (data.get("sub"), cls.SUB))
        h = cls()
        h.counts = {int(k): int(v) for k, v in data.get("counts", {}).items()}
        h.count = int(data.get("count", 0))
        h.total = float(data.get("total", 0.0))
        h.min = math.inf if data.get("min") is None else float(data["min"])
        h.max = float(data.get("max", 0.0))
        return h


def percentile_sorted(values: list, pct: float) -> float | None:
    """Nearest-rank percentile of an already sorted list; None when empty."""
    if not values:
        return None
    rank = max(1, (math.ceil(pct / 100.0 * len(values))))
    return values[min(rank, len(values)) - 1]


def percentile(values, pct: float) -> float | None:
    return percentile_sorted(sorted(values), pct)


# ---------------------------------------------------------------------------------------------------------------------
# Input rules: one table per input kind (options, noisy_neighbour, payload_mix items, SLA); every problem at once
# ---------------------------------------------------------------------------------------------------------------------

_TYPE_WORDS = {
    "int": "an integer",
    "float": "a finite number",
    "bool": "true or false",
    "str": "a string",
    "path": "a path",
    "dict": "a mapping",
    "list": "a list",
    "raw": "a value",
}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SHOWN = reprlib.Repr()
_SHOWN.maxstring = _SHOWN.maxother = _SHOWN.maxlong = 40


def _bound(v) -> str:
    return "%d" % v if float(v).is_integer() else "%g" % v


@dataclass(frozen=True)
class Rule:
    """What one input field accepts. Bounds are inclusive unless ``low_open``/``high_open``.

    ``options`` are the rules of a nested mapping (other keys are refused); ``check(name, value)`` returns further
    problems once type and range are right; ``words`` replaces the generated description.
    """

    type: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple = ()
    non_empty: bool = False
    one_line: bool = False
    elements: Rule | None = None
    max_items: int | None = None
    options: dict | None = None
    required: tuple = ()
    check: Callable | None = None
    words: str = ""
    hint: str = ""

    def bounds(self) -> str:
        """The numeric range in words: 'from 1 to 500', '> 0 and <= 100000'."""
        if self.low is not None and self.high is not None and not (self.low_open or self.high_open):
            return "from %s to %s" % (_bound(self.low), _bound(self.high))
        low = None if self.low is None else "%s %s" % (">" if self.low_open else ">=", _bound(self.low))
        high = None if self.high is None else "%s %s" % ("<" if self.high_open else "<=", _bound(self.high))
        return " and ".join(x for x in (low, high) if x)

    def describe(self) -> str:
        """The rule in words, as error messages and docs/capacity.md say it."""
        if self.words:
            return self.words
        if self.choices:
            return "one of " + ", ".join(self.choices)
        text = _TYPE_WORDS[self.type]
        if self.type in ("str", "path"):
            text = "a %s%s%s" % (
                "non-empty " if self.non_empty else "",
                "single-line " if self.one_line else "",
                "string" if self.type == "str" else "path",
            )
        elif self.type == "list":
            text = "a %slist%s" % (
                "non-empty " if self.non_empty else "",
                " of at most %d items" % self.max_items if self.max_items else "",
            )
            if self.elements:
                text += ", each %s" % self.elements.describe()
        if self.low is not None or self.high is not None:
            text += " " + self.bounds()
        return text

    def _type_ok(self, value) -> bool:
        if self.type == "raw":
            return True
        if isinstance(value, bool):
            return self.type == "bool"
        if self.type == "float":
            try:
                return isinstance(value, (int, float)) and math.isfinite(value)
            except OverflowError:  # an int beyond any float
                return False
        kinds = {"int": int, "bool": bool, "str": str, "path": str, "dict": dict, "list": (list, tuple)}
        return isinstance(value, kinds[self.type])

    def _in_range(self, value) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        return above and (self.high is None or (value < self.high if self.high_open else value <= self.high))

    def problems(self, name: str, value) -> list:
        """What is wrong with ``value`` for the field ``name``; empty when it is fine."""
        if not self._type_ok(value) or (self.choices and value not in self.choices):
            return [self._wrong(name, value, self.describe())]
        if self.type in ("int", "float"):
            if not self._in_range(value):
                return [self._wrong(name, value, self.bounds())]
        elif isinstance(value, str):
            if (self.non_empty and not value.strip()) or (self.one_line and _CONTROL.search(value)):
                return [self._wrong(name, value, self.describe())]
        elif isinstance(value, (list, tuple)):
            if (self.non_empty and not value) or (self.max_items and len(value) > self.max_items):
                return [self._wrong(name, value, self.describe())]
            out = [
                p
                for i, item in enumerate(value)
                if self.elements
                for p in self.elements.problems("%s[%d]" % (name, i), item)
            ]
            if out:
                return out
        if self.options is not None:
            out = field_problems(value, self.options, name + ".", self.required)
            if out:
                return out
        return self.check(name, value) if self.check else []

    def _wrong(self, name: str, value, expected: str) -> str:
        return "%s must be %s, got %s%s" % (name, expected, _SHOWN.repr(value), "; " + self.hint if self.hint else "")


def field_problems(values: dict, rules: dict, prefix: str = "", required: tuple = ()) -> list:
    """Every problem of ``values`` against ``rules`` (``None`` is not given); keys without a rule are refused."""
    out = []
    for key, value in values.items():
        if value is None:
            continue
        rule = rules.get(key)
        if rule is None:
            shown = key if isinstance(key, str) and key.isprintable() and len(key) <= 40 else _SHOWN.repr(key)
            out.append("%s%s is not an option here; use %s" % (prefix, shown, ", ".join(rules)))
        else:
            out.extend(rule.problems("%s%s" % (prefix, key), value))
    for key in required:
        if values.get(key) is None:
            out.append("%s%s is required%s" % (prefix, key, "; " + rules[key].hint if rules[key].hint else ""))
    return out


def raise_problems(problems: list) -> None:
    """One CapacityError listing every problem, if there is any."""
    if problems:
        raise CapacityError(
            problems[0] if len(problems) == 1 else "%d problems: %s" % (len(problems), "; ".join(problems))
        )


# ---------------------------------------------------------------------------------------------------------------------
# SLA
# ---------------------------------------------------------------------------------------------------------------------

_SLA_TERM = re.compile(r"^\s*(p(?:\d+(?:\.\d+)?)|errors?)\s*(<=|<)\s*([\d.]+)\s*(ms|s|%)?\s*$", re.IGNORECASE)
_SLA_PERCENTILE = re.compile(r"p(\d+(?:\.\d+)?)(?:_ms)?")


@dataclass
class Sla:
    """Latency percentiles (ms) that must hold, plus the knee thresholds."""

    percentiles: dict = field(default_factory=dict)  # {95.0: 300.0, 99.0: 800.0}
    max_error_rate: float = 0.0  # fraction; 0 = no errors allowed
    min_throughput_ratio: float = 0.95  # achieved/offered below this is a knee
    baseline_factor: float = 3.0  # p95 > k x low-load p95 is a knee; 0 disables
    hard_factor: float = 2.0  # a percentile above hard_factor x its limit stops stepping up
    hard_error_rate: float = 0.1
    max_schedule_lag_ms: float = 10.0  # generator p99 lag above this voids the step
    queue_growth_min: float = 2.0  # net queue growth over the hold (requests) needed to call it growth
    # ... and the queue must absorb at least this share of the offered rate: a stable queue near the knee wanders
    # by a few requests over a hold, an unstable one keeps a share of every second's arrivals
    queue_growth_share: float = 0.005

    def primary(self) -> tuple[float, float]:
        """The percentile named first in the sentence: p95 when given, else the highest one."""
        if 95.0 in self.percentiles:
            return 95.0, self.percentiles[95.0]
        pct = max(self.percentiles)
        return pct, self.percentiles[pct]

    def to_dict(self) -> dict:
        return {
            "percentiles_ms": {pct_name(p): v for p, v in sorted(self.percentiles.items())},
            "max_error_rate": self.max_error_rate,
            "min_throughput_ratio": self.min_throughput_ratio,
            "baseline_factor": self.baseline_factor,
            "hard_factor": self.hard_factor,
            "hard_error_rate": self.hard_error_rate,
            "max_schedule_lag_ms": self.max_schedule_lag_ms,
            "queue_growth_min": self.queue_growth_min,
            "queue_growth_share": self.queue_growth_share,
        }


# the SLA's keys besides the latency percentiles (pNN_ms, LATENCY_LIMIT)
SLA_RULES = {
    "max_error_rate": Rule("float", 0, 1, high_open=True),
    "min_throughput_ratio": Rule("float", 0, 1, low_open=True),
    "baseline_factor": Rule("float", 0, 1000, hint="0 disables the baseline check"),
    "hard_factor": Rule("float", 1, 1000),
    "hard_error_rate": Rule("float", 0, 1, low_open=True),
    "max_schedule_lag_ms": Rule("float", 0, 60_000, low_open=True),
    "queue_growth_min": Rule("float", 0, 1_000_000),
    "queue_growth_share": Rule("float", 0, 1),
}
LATENCY_LIMIT = Rule("float", 0, 86_400_000, low_open=True)  # a pNN_ms limit, in milliseconds
_SLA_EXAMPLE = "e.g. {p95_ms: 300, p99_ms: 800} or 'p95<300ms, p99<800ms'"


def pct_name(p: float) -> str:
    """95.0 -> 'p95', 99.9 -> 'p99.9'."""
    return "p%s" % ("%g" % p)


def _sla_fields(name: str, spec) -> tuple[dict, list]:
    """The SLA as a mapping (a string's terms become ``pNN_ms``/``max_error_rate``) and the terms it cannot read."""
    if isinstance(spec, dict):
        return dict(spec), []
    if not isinstance(spec, str):
        return {}, ["%s must be a mapping such as {p95_ms: 300, p99_ms: 800} or a string 'p95<300ms'" % name]
    fields, problems = {}, []
    for term in [t.strip() for t in re.split(r"[,;]| and ", spec) if t.strip()]:
        m = _SLA_TERM.match(term)
        try:
            num = float(m.group(3)) if m else None
        except ValueError:
            m = None
        if not m:
            problems.append(
                "%s: cannot parse the term %s; write terms like 'p95<300ms', 'p99<1s' or 'errors<=0.1%%'"
                % (name, _SHOWN.repr(term))
            )
            continue
        key, unit = m.group(1).lower(), (m.group(4) or "").lower()
        if key.startswith("error"):
            fields["max_error_rate"] = num / 100.0 if unit == "%" else num
        elif unit == "%":
            problems.append(
                "%s: the term %s is a latency limit, which needs ms or s, not %%" % (name, _SHOWN.repr(term))
            )
        else:
            fields[key + "_ms"] = num * 1000.0 if unit == "s" else num
    return fields, problems


def sla_problems(name: str, spec) -> list:
    """Every problem of an SLA mapping or string, against SLA_RULES and LATENCY_LIMIT."""
    fields, out = _sla_fields(name, spec)
    latency = False
    for key, value in fields.items():
        if value is None:
            continue
        m = _SLA_PERCENTILE.fullmatch(str(key))
        if m:
            latency = True
            if not 0 < float(m.group(1)) < 100:
                out.append("%s.%s: the percentile must be between 0 and 100" % (name, key))
            out.extend(LATENCY_LIMIT.problems("%s.%s" % (name, key), value))
        elif key in SLA_RULES:
            out.extend(SLA_RULES[key].problems("%s.%s" % (name, key), value))
        else:
            out.append(
                "%s: unknown SLA key %s; use p50_ms/p95_ms/p99_ms (any pNN_ms) and %s"
                % (name, _SHOWN.repr(key), ", ".join(sorted(SLA_RULES)))
            )
    if isinstance(spec, (dict, str)) and not latency:
        out.append(
            "%s names no latency percentile; give at least one, e.g. p95_ms: 300 (and p99_ms: 800). "
            "A capacity without a latency bound is just the saturation throughput." % name
        )
    return out


def parse_sla(spec) -> Sla:
    """Build an :class:`Sla` from a dict (``p95_ms``, ``p99_ms``, ``max_error_rate``...) or a string.

    String form: ``"p95<300ms, p99<800ms, errors<=0.1%"``. Raises CapacityError listing every problem.
    """
    if isinstance(spec, Sla):
        return spec
    raise_problems(sla_problems("sla", spec))
    sla = Sla()
    for key, value in _sla_fields("sla", spec)[0].items():
        m = _SLA_PERCENTILE.fullmatch(str(key))
        if value is None:
            continue
        if m:
            sla.percentiles[float(m.group(1))] = float(value)
        else:
            setattr(sla, key, float(value))
    return sla


# ---------------------------------------------------------------------------------------------------------------------
# Capacity-test options: the rules that the module, the CLI and the role's tests all go through
# ---------------------------------------------------------------------------------------------------------------------

MAX_RPS = 100_000  # far beyond what one generator process sends; also bounds the schedule held in memory
MAX_SECONDS = 86_400  # the longest warm-up or hold: a day
MAX_STEPS = 500  # a linear plan compounds step_pct per step: MAX_RPS x 3**500 still fits a float
PAYLOAD_SOURCES = ("payload", "payload_file", "template", "template_file", "payload_mix")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP header name (RFC 9110 token)
_SET_BY_GENERATOR = ("host", "content-length", "transfer-encoding", "connection")


def _url_problems(name: str, url: str) -> list:
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    if parts is not None and "@" in parts.netloc:  # checked first: the message must not repeat a password
        return [
            "%s must not hold credentials; send them in headers (Authorization), whose values are not returned" % name
        ]
    try:
        good = parts is not None and parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a port that is not a number below 65536
        good = False
    if not good or not url.isascii() or re.search(r"[\s\x00-\x1f\x7f]", url):
        return ["%s must be http:// or https:// with a host (ASCII, no spaces), got %s" % (name, _SHOWN.repr(url))]
    return []


def _header_problems(name: str, headers: dict) -> list:
    """Names are HTTP tokens, values one line of Latin-1 text; values are never repeated (they may be secrets)."""
    out = []
    for key, value in headers.items():
        if not isinstance(key, str) or not _TOKEN.fullmatch(key):
            out.append("%s: header name %s must be letters, digits and -" % (name, _SHOWN.repr(key)))
        elif key.lower() in _SET_BY_GENERATOR:
            out.append("%s: %s is set by the load generator; remove it" % (name, key))
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            out.append("%s: the value of header %s must be a string" % (name, _SHOWN.repr(key)))
        elif _CONTROL.search(str(value)) or not all(ord(ch) < 256 for ch in str(value)):
            out.append("%s: the value of header %s must be one line of Latin-1 text" % (name, _SHOWN.repr(key)))
    return out


def _scalar_values(name: str, mapping: dict) -> list:
    return [
        "%s.%s must be a string or a number" % (name, key)
        for key, value in mapping.items()
        if not isinstance(key, str) or not isinstance(value, (str, int, float))
    ]


def _json_problems(name: str, value) -> list:
    if isinstance(value, (str, bytes)):
        return []
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return ["%s must be a string, or a mapping or list that JSON can encode (no NaN or infinity)" % name]
    return []


def _one_source(name: str, values: dict) -> list:
    """At most one request body source."""
    given = [k for k in PAYLOAD_SOURCES if values.get(k) is not None]
    if len(given) < 2:
        return []
    return [
        "%sgive only one of %s; got %s" % (name + ": " if name else "", ", ".join(PAYLOAD_SOURCES), ", ".join(given))
    ]


def _matching(pattern: str, words: str) -> Rule:
    """A string rule: the whole value matches ``pattern``."""
    regex = re.compile(pattern)

    def check(name: str, value: str) -> list:
        return [] if regex.fullmatch(value) else ["%s must be %s, got %s" % (name, words, _SHOWN.repr(value))]

    return Rule("str", check=check, words=words)


_RATE = Rule("float", 0, MAX_RPS, low_open=True)
_HOLD = Rule("float", 0, MAX_SECONDS, low_open=True)
_WARMUP = Rule("float", 0, MAX_SECONDS)
_LABEL = Rule("str", non_empty=True, one_line=True)
_FILE = Rule("path", non_empty=True, one_line=True)
_ID = _matching(r"[\x21-\x7e]+", "a non-empty string of printable ASCII without spaces")
_URL = Rule(
    "str", check=_url_problems, words="an http:// or https:// URL with a host, ASCII, without spaces or credentials"
)
_HEADERS = Rule("dict", check=_header_problems, words="a mapping of header names to one-line values")
_VARIANTS = Rule("int", 1, 10_000)
_PROTOCOL = Rule("str", choices=("generic", "v2", "openai", "openai_chat"))

# one item of payload_mix
PAYLOAD_RULES = {
    "name": _LABEL,
    "weight": Rule("float", 0, 1_000_000, low_open=True),
    "payload": Rule("raw", check=_json_problems, words="a string, or a mapping or list (JSON without NaN or infinity)"),
    "payload_file": _FILE,
    "template": Rule("str", non_empty=True),
    "template_file": _FILE,
    "headers": _HEADERS,
    "variants": _VARIANTS,
}


def _token_problems(name: str, value: str) -> list:
    if 16 <= len(value) <= 256 and all(33 <= ord(ch) < 127 for ch in value):
        return []
    return ["%s must be 16 to 256 printable ASCII characters without spaces (its value is not shown)" % name]


# one generator host of a distributed test
GENERATOR_RULES = {
    "host": _LABEL,
    "address": _matching(r"[A-Za-z0-9.:_-]+", "a host name or IP address"),
    "port": Rule("int", 1, 65_535),
}

OPTION_RULES = {
    "url": _URL,
    "protocol": _PROTOCOL,
    "model": _ID,
    "model_version": _ID,
    "method": _matching(r"[A-Za-z]+", "an HTTP method such as GET or POST"),
    "headers": _HEADERS,
    "payload": PAYLOAD_RULES["payload"],
    "payload_file": _FILE,
    "template": PAYLOAD_RULES["template"],
    "template_file": _FILE,
    "variants": _VARIANTS,
    "payload_mix": Rule(
        "list",
        non_empty=True,
        max_items=100,
        elements=Rule("dict", options=PAYLOAD_RULES, check=_one_source, words="a mapping (payload_mix[].* below)"),
    ),
    "prompt": Rule("str", non_empty=True),
    "max_tokens": Rule("int", 1, 1_000_000),
    "batch": Rule("int", 1, 65_536),
    "arrival": Rule("str", choices=("constant", "poisson")),
    "seed": Rule("int", 0, 2**63 - 1),
    "plan": Rule("str", choices=("linear", "adaptive", "none")),
    "start_rps": _RATE,
    "step_pct": Rule("float", 0, 200, low_open=True),
    "max_rps": _RATE,
    "max_steps": Rule("int", 1, MAX_STEPS),
    "steps_after_knee": Rule("int", 0, MAX_STEPS),
    "growth": Rule("float", 1, 100, low_open=True),
    "resolution": Rule("float", 0, 1, low_open=True, high_open=True),
    "warmup": _WARMUP,
    "hold": _HOLD,
    "knee_hold": _HOLD,
    "confirm": Rule("bool"),
    "confirm_hold": _HOLD,
    "max_confirmations": Rule("int", 0, 50),
    "early_stop": Rule("bool"),
    "initial_warmup": _WARMUP,
    "baseline_rps": Rule("float", 0, MAX_RPS, low_open=True, hint="omit it to take the first step as the baseline"),
    "cooldown": Rule("float", 0, 3600),
    "time_limit": Rule("float", 0, 7 * MAX_SECONDS, low_open=True),
    "request_timeout": Rule("float", 0, 3600, low_open=True),
    "sla": Rule(
        "raw",
        check=sla_problems,
        words="a mapping of pNN_ms limits and thresholds, or a string such as 'p95<300ms, p99<800ms'",
        hint=_SLA_EXAMPLE,
    ),
    "concurrency": Rule("int", 1, 100_000),
    "metrics_urls": Rule("list", max_items=100, elements=_URL),
    "metrics_interval": Rule("float", 0.01, 3600),
    "metrics_labels": Rule("dict", check=_scalar_values, words="a mapping of label names to strings or numbers"),
    "max_connections": Rule("int", 1, 65_536),
    "workers": Rule("int", 0, 1024, hint="0 takes every available core, leaving one to the system above two"),
    "event_loop": Rule("str", choices=("asyncio", "uvloop")),
    "generators": Rule(
        "list",
        non_empty=True,
        max_items=1000,
        elements=Rule("dict", options=GENERATOR_RULES, required=("address",), words="a mapping (generators[].* below)"),
    ),
    "generator_token": Rule("str", check=_token_problems, words="a secret of 16 to 256 printable ASCII characters"),
    "max_clock_offset": Rule("float", 0, 60_000, low_open=True),
    "record_requests": Rule("bool"),
    "validate_certs": Rule("bool"),
    "service": _LABEL,
    "profile": _LABEL,
    "gpu": _LABEL,
    "limits": Rule("dict", check=_scalar_values, words="a mapping of names to strings or numbers"),
    "target_rps": _RATE,
    "host": _LABEL,
    "output_dir": _FILE,
}

# a neighbour's own rules: the options it may set (NEIGHBOUR_KEYS, as service A's), then its rate and phases
NEIGHBOUR_RULES = {
    **{key: OPTION_RULES[key] for key in NEIGHBOUR_KEYS},
    "rps": _RATE,
    "multipliers": Rule("list", non_empty=True, max_items=100, elements=Rule("float", 0, 100, low_open=True)),
    "a_rps": _RATE,
    "hold": _HOLD,
    "warmup": _WARMUP,
}
OPTION_RULES["noisy_neighbour"] = Rule(
    "dict",
    options=NEIGHBOUR_RULES,
    required=("url", "rps"),
    check=_one_source,
    words="a mapping (noisy_neighbour.* below)",
)


def option_problems(cfg: dict, search: bool = True) -> list:
    """Every problem of capacity-test options: each against OPTION_RULES, then the combinations.

    Keys without a rule are the engine's own (``sample_interval``); ``search=False`` skips the step-plan checks.
    """
    out = field_problems({k: v for k, v in cfg.items() if k in OPTION_RULES}, OPTION_RULES, required=("url", "sla"))
    out.extend(_one_source("", cfg))

    def valid(key):
        return cfg.get(key) is not None and not OPTION_RULES[key].problems(key, cfg[key])

    if cfg.get("generators") and not cfg.get("generator_token"):
        out.append("generators: a test from several generator hosts needs generator_token, the secret their "
                   "capacity_generator was started with")  # fmt: skip
    if cfg.get("generators") and cfg.get("noisy_neighbour"):
        out.append("generators: a noisy-neighbour run holds its rates from one host; remove generators or "
                   "noisy_neighbour")  # fmt: skip
    if search and cfg.get("plan") == "none":
        nn = cfg.get("noisy_neighbour")
        if not (isinstance(nn, dict) and nn.get("a_rps")):
            out.append(
                "plan none runs no capacity search: it needs noisy_neighbour with a_rps (the rate to hold the service at)"
            )
    elif search and valid("start_rps") and valid("max_rps") and cfg["max_rps"] < cfg["start_rps"]:
        out.append(
            "max_rps %g is below start_rps %g; raise max_rps or lower start_rps" % (cfg["max_rps"], cfg["start_rps"])
        )
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Step plans
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class StepOutcome:
    """What a plan needs to know about a finished step.

    ``role`` is the kind of step the plan asked for: ``step`` (search), ``knee`` (close to the knee, longer hold) or
    ``confirm`` (a re-run of a rate; its verdict pools every run at that rate and replaces the earlier one).
    """

    rate: float
    passed: bool
    void: bool = False
    hard_break: bool = False
    role: str = "step"


def _round_rate(rate: float) -> float:
    if rate >= 100:
        return float(round(rate))
    if rate >= 10:
        return round(rate, 1)
    return round(rate, 3)


def effective_outcomes(history: list) -> dict:
    """``{rate: StepOutcome}``: the latest valid outcome at each rate (a confirmation pools and replaces the
    earlier; a void run measured nothing and replaces nothing)."""
    out: dict = {}
    for h in history:
        if not h.void or h.rate not in out:
            out[h.rate] = h
    return out


def _void_retry(history: list):
    """A void step (the generator fell behind) is run once more at the same rate before the plan gives up: a busy
    second on a shared machine should not end the test. ``(rate, role)``, or None when it was already a retry."""
    last = history[-1]
    if len(history) >= 2 and history[-2].void and history[-2].rate == last.rate:
        return None
    return last.rate, last.role


def _bracket(history: list) -> tuple:
    valid = [h for h in effective_outcomes(history).values() if not h.void]
    fails = [h.rate for h in valid if not h.passed]
    hi = min(fails) if fails else None
    passes = [h.rate for h in valid if h.passed and (hi is None or h.rate < hi)]
    lo = max(passes) if passes else None
    return lo, hi


class _Plan:
    """Shared by the plans: confirmation of the result before the plan ends."""

    kind = "plan"
    confirm = True
    max_confirmations = 3

    def _confirmation(self, history: list):
        """The next confirmation step ``(rate, "confirm")``, or None when the result stands.

        The candidate (the highest passing rate below the lowest failing one) is re-run once; a failed confirmation
        makes it the new lowest failure, so the plan searches below it. The lowest failing rate is re-run too when
        it failed softly (not a hard break): one unlucky window must not cut the capacity short.
        """
        if not self.confirm:
            return None
        confirms = [h for h in history if h.role == "confirm" and not h.void]
        if len(confirms) >= self.max_confirmations:
            return None
        done = {h.rate for h in confirms}
        lo, hi = _bracket(history)
        if lo is not None and lo not in done:
            return lo, "confirm"
        eff = effective_outcomes(history)
        if hi is not None and hi not in done and not eff[hi].hard_break and lo is not None:
            return hi, "confirm"
        return None

    def next_rate(self, history: list):
        nxt = self.next_step(history)
        return None if nxt is None else nxt[0]

    def worst_case_steps(self) -> int:
        return self.search_steps() + (self.max_confirmations if self.confirm else 0)

    def worst_case_seconds(self, warmup_s: float, holds: dict) -> float:
        """Upper bound on the plan's duration: every search step at the longest search hold, plus confirmations."""
        search = max(holds.get("step", 0.0), holds.get("knee", 0.0))
        n_conf = self.max_confirmations if self.confirm else 0
        return self.search_steps() * (warmup_s + search) + n_conf * (warmup_s + holds.get("confirm", search))


class LinearPlan(_Plan):
    """Start at ``start_rps`` and raise by ``step_pct`` per step (compounding) up to ``max_rps`` / ``max_steps``.

    Stops at a hard SLA break, at a void step, or ``steps_after_knee`` steps after the first failing step; then
    confirms the highest passing rate below the knee (see :meth:`_Plan._confirmation`).
    """

    kind = "linear"

    def __init__(
        self,
        start_rps: float,
        step_pct: float = 15.0,
        max_rps: float | None = None,
        max_steps: int = 20,
        steps_after_knee: int = 1,
        confirm: bool = True,
        max_confirmations: int = 3,
    ) -> None:
        if start_rps <= 0:
            raise CapacityError("start_rps must be > 0, got %g" % start_rps)
        if not 0 < step_pct <= 200:
            raise CapacityError("step_pct must be in (0, 200], got %g" % step_pct)
        if max_steps < 1:
            raise CapacityError("max_steps must be >= 1")
        if max_rps is not None and max_rps < start_rps:
            raise CapacityError("max_rps %g is below start_rps %g" % (max_rps, start_rps))
        self.start_rps = float(start_rps)
        self.step_pct = float(step_pct)
        self.max_rps = max_rps
        self.max_steps = int(max_steps)
        self.steps_after_knee = int(steps_after_knee)
        self.confirm = bool(confirm)
        self.max_confirmations = max(0, int(max_confirmations))

    def rates(self) -> list[float]:
        out = []
        rate = self.start_rps
        while len(out) < self.max_steps:
            if self.max_rps is not None and rate > self.max_rps * (1 + 1e-9):
                if not out or out[-1] < self.max_rps:
                    out.append(_round_rate(self.max_rps))
                break
            out.append(_round_rate(rate))
            rate *= 1 + self.step_pct / 100.0
        return out

    def search_steps(self) -> int:
        return len(self.rates())

    def next_step(self, history: list[StepOutcome]):
        """``(rate, role)`` of the next step, or None when the plan is done."""
        if history and history[-1].void:
            return _void_retry(history)
        search = [h for h in history if h.role != "confirm" and not h.void]
        rates = self.rates()
        stop = len(search) >= len(rates) or bool(search and search[-1].hard_break)
        fails = [i for i, h in enumerate(search) if not h.passed]
        if fails and len(search) - 1 - fails[0] >= self.steps_after_knee:
            stop = True
        if not stop and not any(h.role == "confirm" for h in history):
            return rates[len(search)], "step"
        return self._confirmation(history) if fails else None

    def describe(self) -> str:
        return "linear: start %g RPS, +%g%% per step, up to %s%s" % (
            self.start_rps,
            self.step_pct,
            "%g RPS" % self.max_rps if self.max_rps else "%d steps" % self.max_steps,
            ", then a confirmation of the result" if self.confirm else "",
        )


class AdaptivePlan(_Plan):
    """Multiply the rate by ``growth`` while steps pass, then bisect between the last pass and the first failure.

    Bisection ends when the bracket is narrower than ``resolution`` (relative), at ``max_rps``, after ``max_steps``
    search steps or at a void step; then the result is confirmed (see :meth:`_Plan._confirmation`). Steps inside a bracket narrower than
    ``knee_width`` are ``knee`` steps (the caller holds them longer: their verdicts are close calls).
    """

    kind = "adaptive"

    def __init__(
        self,
        start_rps: float,
        max_rps: float | None = None,
        growth: float = 2.0,
        resolution: float = 0.03,
        max_steps: int = 20,
        min_rps: float | None = None,
        confirm: bool = True,
        max_confirmations: int = 3,
        knee_width: float = 0.25,
    ) -> None:
        if start_rps <= 0:
            raise CapacityError("start_rps must be > 0, got %g" % start_rps)
        if growth <= 1.0:
            raise CapacityError("adaptive growth must be > 1, got %g" % growth)
        if not 0 < resolution < 1:
            raise CapacityError("adaptive resolution must be in (0, 1), got %g" % resolution)
        if max_rps is not None and max_rps < start_rps:
            raise CapacityError("max_rps %g is below start_rps %g" % (max_rps, start_rps))
        self.start_rps = float(start_rps)
        self.max_rps = max_rps
        self.growth = float(growth)
        self.resolution = float(resolution)
        self.max_steps = int(max_steps)
        self.min_rps = float(min_rps) if min_rps else self.start_rps / (self.growth**3)
        self.confirm = bool(confirm)
        self.max_confirmations = max(0, int(max_confirmations))
        self.knee_width = float(knee_width)

    def search_steps(self) -> int:
        top = self.max_rps if self.max_rps else self.start_rps * self.growth**8
        up = (math.ceil(math.log(max(top / self.start_rps, 1.0)) / math.log(self.growth))) + 1
        bisect = (math.ceil(math.log((self.growth - 1.0) / self.resolution, 2))) + 1
        # a failed confirmation reopens the bracket below the candidate: a few more bisection steps
        return min(self.max_steps, up + max(bisect, 0) + (2 if self.confirm else 0))

    def bracket(self, history: list[StepOutcome]) -> tuple[float | None, float | None]:
        return _bracket(history)

    def next_step(self, history: list[StepOutcome]):
        """``(rate, role)`` of the next step, or None when the plan is done."""
        if not history:
            return _round_rate(self.start_rps), "step"
        if history[-1].void:
            return _void_retry(history)
        if len([h for h in history if h.role != "confirm" and not h.void]) >= self.max_steps:
            return self._confirmation(history)
        lo, hi = self.bracket(history)
        if hi is None:
            last = max(h.rate for h in history)
            if self.max_rps is not None and last >= self.max_rps:
                return None
            nxt = last * self.growth
            return _round_rate(min(nxt, self.max_rps) if self.max_rps else nxt), "step"
        if lo is None:
            nxt = hi / self.growth
            return None if nxt < self.min_rps else (_round_rate(nxt), "step")
        nxt = _round_rate((lo + hi) / 2.0)
        if (hi - lo) / lo <= self.resolution or nxt <= lo or nxt >= hi:
            return self._confirmation(history)
        return nxt, "knee" if (hi - lo) / lo <= self.knee_width else "step"

    def describe(self) -> str:
        return "adaptive: start %g RPS, x%g until a step fails, then bisect to %g%%%s%s" % (
            self.start_rps,
            self.growth,
            self.resolution * 100,
            ", max %g RPS" % self.max_rps if self.max_rps else "",
            ", then a confirmation of the result" if self.confirm else "",
        )


def build_plan(kind: str, **kw):
    if kind == "linear":
        return LinearPlan(
            kw["start_rps"],
            step_pct=kw.get("step_pct", 15.0),
            max_rps=kw.get("max_rps"),
            max_steps=kw.get("max_steps", 20),
            steps_after_knee=kw.get("steps_after_knee", 1),
            confirm=kw.get("confirm", True),
            max_confirmations=kw.get("max_confirmations", 3),
        )
    if kind == "adaptive":
        return AdaptivePlan(
            kw["start_rps"],
            max_rps=kw.get("max_rps"),
            growth=kw.get("growth", 2.0),
            resolution=kw.get("resolution", 0.03),
            max_steps=kw.get("max_steps", 20),
            confirm=kw.get("confirm", True),
            max_confirmations=kw.get("max_confirmations", 3),
        )
    raise CapacityError("unknown plan %r; use linear or adaptive" % kind)


def check_time_budget(
    plan,
    warmup_s: float,
    hold_s: float,
    time_limit_s: float,
    initial_warmup_s: float = 0.0,
    baseline: bool = False,
    knee_hold_s: float | None = None,
    confirm_hold_s: float | None = None,
) -> float:
    """Worst-case seconds the plan needs; raises when it exceeds ``time_limit_s``."""
    if hold_s <= 0:
        raise CapacityError("hold must be > 0 s")
    if warmup_s < 0:
        raise CapacityError("warm-up must be >= 0 s")
    holds = {
        "step": hold_s,
        "knee": hold_s if knee_hold_s is None else knee_hold_s,
        "confirm": hold_s if confirm_hold_s is None else confirm_hold_s,
    }
    if min(holds.values()) <= 0:
        raise CapacityError("knee_hold and confirm_hold must be > 0 s")
    steps = plan.worst_case_steps() + (1 if baseline else 0)
    need = initial_warmup_s + plan.worst_case_seconds(warmup_s, holds) + (warmup_s + hold_s if baseline else 0.0)
    if time_limit_s and need > time_limit_s:
        longer = holds["knee"] != hold_s or holds["confirm"] != hold_s
        raise CapacityError(
            "the %s plan needs up to %d steps x (%g s warm-up + %g s hold)%s%s = %.0f s, more than time_limit %.0f s; "
            "raise time_limit, shorten hold/warm-up, or lower max_steps/max_rps"
            % (
                plan.kind,
                steps,
                warmup_s,
                hold_s,
                " (knee steps %g s, confirmations %g s)" % (holds["knee"], holds["confirm"]) if longer else "",
                " + %g s initial warm-up" % initial_warmup_s if initial_warmup_s else "",
                need,
                time_limit_s,
            )
        )
    return need


def schedule_offsets(rate: float, duration: float, arrival: str = "constant", rng=None, start: float = 0.0) -> list:
    """Intended send offsets (seconds from step start) for ``rate`` RPS over ``duration`` seconds.

    ``constant`` spaces them evenly; ``poisson`` draws exponential gaps from ``rng`` (a ``random.Random``).
    """
    if rate <= 0 or duration <= 0:
        return []
    out = []
    if arrival == "constant":
        gap = 1.0 / rate
        n = math.floor(duration * rate + 1e-9)
        return [start + i * gap for i in range(n)]
    if arrival != "poisson":
        raise CapacityError("unknown arrival process %r; use constant or poisson" % arrival)
    if rng is None:
        raise CapacityError("poisson arrivals need a random generator")
    t = rng.expovariate(rate)
    limit = int(duration * rate * 4 + 100)  # bounded even for an adversarial rng
    while t < duration and len(out) < limit:
        out.append(start + t)
        t += rng.expovariate(rate)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Statistics helpers
# ---------------------------------------------------------------------------------------------------------------------

_T95 = [6.314, 2.920, 2.353, 2.132, 2.015, 1.943, 1.895, 1.860, 1.833, 1.812, 1.796, 1.782, 1.771, 1.761, 1.753]
_T95 += [1.746, 1.740, 1.734, 1.729, 1.725, 1.721, 1.717, 1.714, 1.711, 1.708, 1.706, 1.703, 1.701, 1.699, 1.697]


def _t_critical(df: int, table: list, normal: float, tail: float) -> float:
    """Student-t critical value from ``table`` (df 1..len), beyond it the normal quantile plus ``tail / df``."""
    if df < 1:
        return math.inf
    if df <= len(table):
        return table[df - 1]
    return normal + tail / df


def t95(df: int) -> float:
    """One-sided 95% Student-t critical value."""
    return _t_critical(df, _T95, 1.645, 1.6)


_T99 = [31.821, 6.965, 4.541, 3.747, 3.365, 3.143, 2.998, 2.896, 2.821, 2.764, 2.718, 2.681, 2.650, 2.624, 2.602]


def t99(df: int) -> float:
    """One-sided 99% Student-t critical value."""
    return _t_critical(df, _T99, 2.326, 3.4)


def linear_fit(xs: list, ys: list) -> tuple[float, float, float]:
    """Least squares ``y = a + b x``: returns (a, b, standard error of b)."""
    n = len(xs)
    mx = sum(xs) / n
    my = sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return my, 0.0, math.inf
    b = sum((xs[i] - mx) * (ys[i] - my) for i in range(n)) / sxx
    a = my - b * mx
    if n <= 2:
        return a, b, math.inf
    sse = sum((ys[i] - a - b * xs[i]) ** 2 for i in range(n))
    se = math.sqrt(sse / (n - 2) / sxx)
    return a, b, se


def queue_trend(samples: list, duration: float | None = None, blocks: int = 8) -> dict | None:
    """Slope of a queue-length series ``[(t, q), ...]`` with one-sided 95% and 99% lower bounds.

    Samples are averaged into ``blocks`` consecutive blocks first (batch means), because queue samples are strongly
    autocorrelated and a plain regression would be far too confident. None with fewer than 6 samples.
    """
    pts = sorted((float(t), float(q)) for t, q in samples)
    if len(pts) < 6:
        return None
    nb = max(3, min(blocks, len(pts) // 3))
    size = len(pts) / nb
    xs, ys = [], []
    for b in range(nb):
        chunk = pts[(round(b * size)) : (round((b + 1) * size))]
        if chunk:
            xs.append(sum(p[0] for p in chunk) / len(chunk))
            ys.append(sum(p[1] for p in chunk) / len(chunk))
    _a, slope, se = linear_fit(xs, ys)
    span = duration if duration else (pts[-1][0] - pts[0][0])
    lower = slope - t95(len(xs) - 2) * se if math.isfinite(se) else -math.inf
    upper = slope + t95(len(xs) - 2) * se if math.isfinite(se) else math.inf
    return {
        "slope": slope,
        "slope_lower": lower,
        "slope_upper": upper,
        # the growth verdict uses the 99% bound: a stable queue near the knee wanders, and a plan runs many steps
        "slope_lower99": slope - t99(len(xs) - 2) * se if math.isfinite(se) else -math.inf,
        "slope_se": se,
        "df": len(xs) - 2,
        "growth": slope * span,
        "start_level": ys[0],
        "end_level": ys[-1],
        "mean_level": sum(q for _t, q in pts) / len(pts),
        "max": max(q for _t, q in pts),
        "blocks": len(xs),
        "span_s": span,
    }


def combine_trends(trends: list) -> dict | None:
    """One queue trend from the trends of several runs at the same rate: their slopes weighted by inverse variance.

    Each run starts from the queue the drain left (empty); pooling their slopes gives the confirmation the power of
    its whole measured time. Levels come from the longest run.
    """
    trends = [t for t in trends if t]
    if not trends:
        return None
    longest = max(trends, key=lambda t: t.get("span_s") or 0.0)
    usable = [t for t in trends if t.get("slope_se") and math.isfinite(t["slope_se"]) and t["slope_se"] > 0]
    if len(usable) < 2:
        return longest
    weights = [1.0 / (t["slope_se"] ** 2) for t in usable]
    total = sum(weights)
    slope = sum(weights[i] * t["slope"] for i, t in enumerate(usable)) / total
    se = math.sqrt(1.0 / total)
    df = sum(max(1, int(t.get("df") or 1)) for t in usable)
    out = dict(longest)
    out.update(
        slope=slope,
        slope_se=se,
        df=df,
        slope_lower=slope - t95(df) * se,
        slope_upper=slope + t95(df) * se,
        slope_lower99=slope - t99(df) * se,
        growth=slope * (longest.get("span_s") or 0.0),
        blocks=sum(int(t.get("blocks") or 0) for t in usable),
        runs=len(usable),
    )
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Step verdicts (knee detection)
# ---------------------------------------------------------------------------------------------------------------------


def _fmt_ms(v) -> str:
    if v is None:
        return "n/a"
    if v >= 100:
        return "%.0f ms" % v
    if v >= 10:
        return "%.1f ms" % v
    return "%.2f ms" % v


@dataclass
class StepCheck:
    """One named check of a step: what it saw, against which limit, in words; and what it means for the verdict."""

    name: str
    passed: bool
    value: object
    limit: object
    message: str
    hard: bool = False  # the step is far past the knee: stepping up stops (whether or not the check passed)
    void: bool = False  # the measurement is at fault, not the service: the step counts for nothing
    final: bool = False  # nothing after this check can be judged

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "passed": bool(self.passed),
            "value": self.value,
            "limit": self.limit,
            "message": self.message,
        }


def _check_schedule_lag(step: dict, sla: Sla, _baseline) -> list:
    """The generator kept its schedule; otherwise the step measured the generator, not the service (void)."""
    lag = (step.get("schedule_lag_ms") or {}).get("p99")
    limit = sla.max_schedule_lag_ms
    if lag is not None and lag > limit:
        return [
            StepCheck(
                "schedule_lag",
                False,
                lag,
                limit,
                "VOID: the generator fell behind its own schedule (p99 send lag %s > %s), so this step measured the "
                "generator, not the service; give it a core of its own or lower the rate"
                % (_fmt_ms(lag), _fmt_ms(limit)),
                void=True,
            )
        ]
    return [
        StepCheck(
            "schedule_lag",
            True,
            lag,
            limit,
            "generator on schedule (p99 send lag %s <= %s)" % (_fmt_ms(lag), _fmt_ms(limit)),
        )
    ]


def _check_requests(step: dict, _sla: Sla, _baseline) -> list:
    """Some request was measured in the hold window; otherwise the step is void and nothing else is judged."""
    if int(step.get("measured") or 0):
        return []
    return [StepCheck("requests", False, 0, None, "no request was measured in the hold window", void=True, final=True)]


def _check_early_stop(step: dict, _sla: Sla, _baseline) -> list:
    """The runner's early-stop rule ended the hold: a hard break."""
    stopped = step.get("stopped_early")
    if not stopped:
        return []
    return [
        StepCheck(
            "early_stop",
            False,
            stopped.get("at_s"),
            step.get("hold_planned_s"),
            stopped.get("reason", "stopped early"),
            hard=True,
        )
    ]


def _check_errors(step: dict, sla: Sla, _baseline) -> list:
    """The error rate stays within the SLA's; above ``hard_error_rate`` it is a hard break."""
    errors = step.get("errors") or {}
    n_err = sum(errors.values())
    if n_err == 0:
        return [StepCheck("errors", True, 0.0, sla.max_error_rate, "no errors")]
    measured = int(step.get("measured") or 0)
    rate = n_err / float(measured)
    kinds = ", ".join("%d %s" % (n, k) for k, n in sorted(errors.items()) if n)
    ok = rate <= sla.max_error_rate
    return [
        StepCheck(
            "errors",
            ok,
            rate,
            sla.max_error_rate,
            "%d errors in %d requests (%.2f%%: %s) %s allowed %.2f%%"
            % (n_err, measured, rate * 100, kinds, "<=" if ok else ">", sla.max_error_rate * 100),
            hard=rate > sla.hard_error_rate,
        )
    ]


_HARD_THROUGHPUT_RATIO = 0.8  # achieved below this share of the offered rate: far past the knee


def _check_throughput(step: dict, sla: Sla, _baseline) -> list:
    """The service answers (nearly) what was offered; below 80 % it is a hard break."""
    achieved = float(step.get("achieved_rps") or 0.0)
    # Poisson arrivals: compare with what was actually scheduled in the window, not the nominal rate
    actual = float(step.get("offered_actual_rps") or float(step.get("offered_rps") or 0.0))
    ratio = achieved / actual if actual else 0.0
    ok = ratio >= sla.min_throughput_ratio
    return [
        StepCheck(
            "throughput",
            ok,
            round(ratio, 4),
            sla.min_throughput_ratio,
            "achieved %.1f of %.1f offered RPS (%.2f %s %.2f)%s"
            % (
                achieved,
                actual,
                ratio,
                ">=" if ok else "<",
                sla.min_throughput_ratio,
                "" if ok else ": the service cannot keep up",
            ),
            hard=ratio < _HARD_THROUGHPUT_RATIO,
        )
    ]


def _check_queue_growth(step: dict, sla: Sla, _baseline) -> list:
    """The queue (server's when scraped, else the client's in-flight count) does not keep growing over the hold."""
    q = step.get("queue")
    if not q:
        return [StepCheck("queue_growth", True, None, None, "queue not observed (too few samples); growth not judged")]
    min_growth = max(sla.queue_growth_min, 0.1 * max(q.get("start_level", 0.0), 0.0))
    min_slope = sla.queue_growth_share * float(step.get("offered_rps") or 0.0)
    lower = q.get("slope_lower99", q["slope_lower"])
    growing = lower > 0 and q["growth"] >= min_growth and q["slope"] >= min_slope
    src = q.get("source", "client in-flight")
    if growing:
        msg = (
            "%s grows %+.2f/s over the %.1f s hold (99%% lower bound %+.2f/s), from %.1f to %.1f: "
            "the queue does not return to baseline"
            % (src, q["slope"], q["span_s"], lower, q["start_level"], q["end_level"])
        )
    else:
        msg = "%s stable: slope %+.2f/s (95%% CI %+.2f..%+.2f), mean %.1f, max %.0f" % (
            src,
            q["slope"],
            q["slope_lower"],
            q["slope_upper"],
            q["mean_level"],
            q["max"],
        )
    return [StepCheck("queue_growth", not growing, round(q["slope"], 4), round(min_growth, 3), msg)]


def _check_latency_sla(step: dict, sla: Sla, _baseline) -> list:
    """Each SLA percentile within its limit; above ``hard_factor`` x the limit it is a hard break."""
    lat = step.get("latency_ms") or {}
    found = []
    for p, limit in sorted(sla.percentiles.items()):
        name = pct_name(p)
        v = lat.get(name)
        if v is None:
            found.append(StepCheck("latency_" + name, False, None, limit, "%s not measured" % name))
            continue
        ok = v <= limit
        found.append(
            StepCheck(
                "latency_" + name,
                ok,
                v,
                limit,
                "%s %s %s SLA %s" % (name, _fmt_ms(v), "<=" if ok else ">", _fmt_ms(limit)),
                hard=v > sla.hard_factor * limit,
            )
        )
    return found


def _check_latency_vs_baseline(step: dict, sla: Sla, baseline: dict | None) -> list:
    """p95 within ``baseline_factor`` x the low-load step's p95 (when there is a baseline and the factor is set)."""
    if not (baseline and sla.baseline_factor and baseline is not step):
        return []
    b95 = (baseline.get("latency_ms") or {}).get("p95")
    v95 = (step.get("latency_ms") or {}).get("p95")
    if not b95 or v95 is None:
        return []
    lim = sla.baseline_factor * b95
    ok = v95 <= lim
    return [
        StepCheck(
            "latency_vs_baseline",
            ok,
            v95,
            round(lim, 3),
            "p95 %s %s %g x low-load p95 %s (= %s)"
            % (_fmt_ms(v95), "<=" if ok else ">", sla.baseline_factor, _fmt_ms(b95), _fmt_ms(lim)),
        )
    ]


# the checks of a step, in the order the verdict lists them: ``(step, sla, baseline) -> [StepCheck, ...]``
STEP_CHECKS = (
    _check_schedule_lag,
    _check_requests,
    _check_early_stop,
    _check_errors,
    _check_throughput,
    _check_queue_growth,
    _check_latency_sla,
    _check_latency_vs_baseline,
)


def evaluate_step(step: dict, sla: Sla, baseline: dict | None = None) -> dict:
    """Judge one measured step by :data:`STEP_CHECKS`; each check says in words what it saw and why it passed.

    ``step`` holds ``offered_rps``, ``achieved_rps``, ``latency_ms`` (p50/p95/p99...), ``schedule_lag_ms`` (p99),
    ``errors`` ({kind: n}), ``measured`` (request count), ``queue`` (a :func:`queue_trend` result plus ``source``).
    ``baseline`` is the low-load step (for the k x baseline p95 check).
    Returns ``{passed, void, hard_break, checks: [...], summary}``.
    """
    found: list = []
    for check in STEP_CHECKS:
        results = check(step, sla, baseline)
        found += results
        if any(r.final for r in results):
            break
    return _verdict([c.to_dict() for c in found], void=any(c.void for c in found), hard=any(c.hard for c in found))


def _verdict(checks: list, void: bool, hard: bool) -> dict:
    failed = [c for c in checks if not c["passed"]]
    passed = not failed and not void
    if void:
        summary = "void: " + "; ".join(c["message"] for c in failed)
    elif passed:
        summary = "pass: " + "; ".join(c["message"] for c in checks)
    else:
        summary = ("hard break: " if hard else "knee: ") + "; ".join(c["message"] for c in failed)
    return {
        "passed": passed,
        "void": void,
        "hard_break": bool(hard and not passed),
        "checks": checks,
        "summary": summary,
    }


# ---------------------------------------------------------------------------------------------------------------------
# Capacity summary
# ---------------------------------------------------------------------------------------------------------------------


def pool_steps(runs: list) -> dict:
    """One step from several runs at the same rate (a confirmation pools with the earlier runs there).

    Latency histograms merge, counts and errors add up, rates are hold-weighted; the queue trend and server metrics
    come from the longest run (the most power to see growth), the schedule lag from the worst one.
    """
    if not runs:
        raise CapacityError("nothing to pool")
    hist = LatencyHistogram()
    for r in runs:
        if r.get("histogram"):
            hist.merge(LatencyHistogram.from_dict(r["histogram"]))
    hold = sum(float(r.get("hold_s") or 0.0) for r in runs)

    def weighted(key):
        if not hold:
            return 0.0
        return round(sum(float(r.get(key) or 0.0) * float(r.get("hold_s") or 0.0) for r in runs) / hold, 3)

    errors: dict = {}
    for r in runs:
        for k, v in (r.get("errors") or {}).items():
            errors[k] = errors.get(k, 0) + v
    lags = [(r.get("schedule_lag_ms") or {}).get("p99") for r in runs]
    longest = max(runs, key=lambda r: (float(r.get("hold_s") or 0.0), r.get("index", 0)))
    last = runs[-1]
    return {
        "index": last.get("index"),
        "kind": last.get("kind", "step"),
        "offered_rps": last["offered_rps"],
        "offered_actual_rps": weighted("offered_actual_rps"),
        "achieved_rps": weighted("achieved_rps"),
        "hold_s": round(hold, 3),
        "measured": sum(int(r.get("measured") or 0) for r in runs),
        "ok": sum(int(r.get("ok") or 0) for r in runs),
        "errors": errors,
        "latency_ms": hist.summary_ms(),
        "schedule_lag_ms": {"p99": max((x for x in lags if x is not None), default=None)},
        "queue": combine_trends([r.get("queue") for r in runs]),
        "server": longest.get("server"),
        "stopped_early": next((r["stopped_early"] for r in runs if r.get("stopped_early")), None),
        "runs": [r.get("index") for r in runs],
    }


def judge_step(step: dict, steps: list, sla: Sla, baseline: dict | None, role: str = "step") -> StepOutcome:
    """Give a finished step its verdict (pooled over every run at its rate when it is a confirmation).

    ``steps`` are the steps judged before it. Sets ``role``, ``verdict`` and, for a confirmation, ``pooled``; returns
    the :class:`StepOutcome` the plan needs.
    """
    step["role"] = role
    step["verdict"] = evaluate_step(step, sla, baseline)
    if role == "confirm":
        runs = [
            x
            for x in steps
            if x.get("kind", "step") == step.get("kind", "step")
            and x["offered_rps"] == step["offered_rps"]
            and not x["verdict"]["void"]
        ]
        if runs:
            pooled = pool_steps([*runs, step])
            pooled["verdict"] = evaluate_step(pooled, sla, baseline)
            step["pooled"] = pooled
    v = (step.get("pooled") or step)["verdict"]
    return StepOutcome(step["offered_rps"], v["passed"], v["void"], v["hard_break"], role)


def effective_steps(steps: list) -> list:
    """The measurements that count: per offered rate, the latest run, with a confirmation's pooled verdict.

    A confirmation re-runs a rate and pools every run there (``pooled``), so it replaces the earlier verdicts.
    """
    latest: dict = {}
    for s in steps:
        if s.get("kind", "step") in ("step", "baseline") and s.get("verdict"):
            key = (s.get("kind", "step"), s["offered_rps"])
            if not s["verdict"]["void"] or key not in latest:
                latest[key] = s
    out = []
    for s in latest.values():
        if s.get("pooled"):
            out.append(dict(s["pooled"], index=s.get("index"), kind=s.get("kind", "step"), confirmed=True))
        else:
            out.append(s)
    return sorted(out, key=lambda s: (s["offered_rps"], s.get("index") or 0))


def summarize_capacity(steps: list, sla: Sla) -> dict:
    """The sustained rate (highest passing rate below the lowest failing one), the knee and the saturation rate.

    Only the latest measurement at each rate counts (:func:`effective_steps`): a confirmation replaces earlier runs.
    """
    measured = effective_steps(steps)
    valid = [s for s in measured if not s["verdict"]["void"]]
    voids = [s for s in steps if s.get("verdict") and s["verdict"]["void"]]
    fails = sorted((s for s in valid if not s["verdict"]["passed"]), key=lambda s: s["offered_rps"])
    knee = fails[0] if fails else None
    passes = [s for s in valid if s["verdict"]["passed"] and (knee is None or s["offered_rps"] < knee["offered_rps"])]
    best = max(passes, key=lambda s: s["offered_rps"]) if passes else None
    saturated = [
        s
        for s in valid
        if s.get("achieved_rps", 0) < sla.min_throughput_ratio * (s.get("offered_actual_rps") or s["offered_rps"])
    ]
    # all saturated steps serve the same maximum throughput: average them (the max of noisy estimates is biased)
    sat_rps = sum(s.get("achieved_rps", 0.0) for s in saturated) / len(saturated) if saturated else None
    out = {
        "sustained_rps": best["offered_rps"] if best else None,
        "achieved_rps": best.get("achieved_rps") if best else None,
        "latency_ms": dict(best.get("latency_ms") or {}) if best else None,
        "max_queue": _max_queue(best) if best else None,
        "confirmed": bool(best and best.get("confirmed")),
        "measured_s": round(float(best.get("hold_s") or 0.0), 2) if best else None,
        "knee_rps": knee["offered_rps"] if knee else None,
        "knee_reasons": [c["message"] for c in knee["verdict"]["checks"] if not c["passed"]] if knee else [],
        "knee_step": knee.get("index") if knee else None,
        "saturation_rps": round(sat_rps, 2) if sat_rps is not None else None,
        "max_achieved_rps": round(max((s.get("achieved_rps", 0.0) for s in valid), default=0.0), 2),
        "reached": knee is not None,
        "void_steps": [s.get("index") for s in voids],
    }
    if best is None and knee is not None:
        out["note"] = "the first measured step already failed: capacity is below %g RPS" % knee["offered_rps"]
    elif knee is None and best is not None:
        out["note"] = "no step failed: capacity is at least %g RPS (the highest rate tested)" % best["offered_rps"]
    elif best is None:
        out["note"] = "no valid step was measured"
    else:
        out["note"] = "capacity lies between %g RPS (last pass%s) and %g RPS (knee)" % (
            best["offered_rps"],
            ", confirmed over %.0f s" % best["hold_s"] if best.get("confirmed") else "",
            knee["offered_rps"],
        )
    return out


def _max_queue(step: dict):
    q = step.get("queue") or {}
    server = step.get("server") or {}
    if server.get("queue_max") is not None:
        return server["queue_max"]
    return q.get("max")


# ---------------------------------------------------------------------------------------------------------------------
# Queueing model: Erlang C with the Allen-Cunneen correction
# ---------------------------------------------------------------------------------------------------------------------


def erlang_c(c: int, a: float) -> float:
    """Probability of waiting in M/M/c with offered load ``a = lambda/mu`` (Erlangs); 1.0 when ``a >= c``."""
    if c < 1:
        raise CapacityError("concurrency c must be >= 1")
    if a <= 0:
        return 0.0
    if a >= c:
        return 1.0
    b = 1.0  # Erlang B by the stable recursion
    for k in range(1, c + 1):
        b = a * b / (k + a * b)
    rho = a / c
    return b / (1.0 - rho * (1.0 - b))


def mmc_response_tail(t: float, rate: float, c: int, mean_s: float) -> float:
    """Exact ``P(R > t)`` for the response time (queue wait + service) of a FIFO M/M/c queue.

    The wait is 0 with probability ``1 - C`` and otherwise exponential with rate ``theta = c mu - lambda`` (Erlang C);
    it is independent of the request's own exponential service, so
    ``P(R > t) = (1 - C) e^(-mu t) + C (theta e^(-mu t) - mu e^(-theta t)) / (theta - mu)``
    (``(1 + mu t) e^(-mu t)`` when ``theta = mu``). 1.0 at or above saturation.
    """
    mu = 1.0 / mean_s
    if rate >= c * mu:
        return 1.0
    if t <= 0:
        return 1.0
    pw = erlang_c(c, rate / mu)
    theta = c * mu - rate
    e_mu = math.exp(-mu * t)
    if abs(theta - mu) <= 1e-9 * mu:
        both = (1.0 + mu * t) * e_mu
    else:
        both = (theta * e_mu - mu * math.exp(-theta * t)) / (theta - mu)
    return (1.0 - pw) * e_mu + pw * both


def mmc_response_quantile(rate: float, c: int, mean_s: float, p: float) -> float:
    """Exact p-quantile (seconds) of the M/M/c response time, by bisection on :func:`mmc_response_tail`."""
    if rate >= c / mean_s:
        return math.inf
    target = 1.0 - p
    hi = mean_s * max(1.0, -math.log(target))
    for _step in range(200):  # the tail halves at least every few means: bounded doubling
        if mmc_response_tail(hi, rate, c, mean_s) <= target:
            break
        hi *= 2.0
    lo = 0.0
    for _step in range(100):
        mid = (lo + hi) / 2.0
        if mmc_response_tail(mid, rate, c, mean_s) > target:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(hi, 1e-9):
            break
    return hi


def mmc_sla_rate(c: int, mean_s: float, limit_s: float, p: float) -> float:
    """Exact highest arrival rate at which the p-quantile of M/M/c response time is at most ``limit_s``.

    The quantile rises strictly with the rate, so bisection on ``(0, c / mean_s)`` converges to the one root;
    0.0 when the service time alone breaks the limit.
    """
    sat = c / mean_s
    if mmc_response_quantile(0.0, c, mean_s, p) > limit_s:
        return 0.0
    lo, hi = 0.0, sat
    for _step in range(100):
        mid = (lo + hi) / 2.0
        if mmc_response_quantile(mid, c, mean_s, p) <= limit_s:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-10 * sat:
            break
    return lo


def _service_points(mean_s: float, cs2: float, samples=None, n: int = 400) -> list:
    """A service-time distribution as ``n`` equally likely points.

    From measured samples when given; else deterministic (cv^2 = 0), exponential (cv^2 = 1) or lognormal.
    """
    if samples:
        s = sorted(samples)
        if len(s) <= n:
            return list(s)
        return [s[min(len(s) - 1, int((i + 0.5) * len(s) / n))] for i in range(n)]
    if cs2 <= 1e-6:
        return [mean_s]
    if abs(cs2 - 1.0) < 1e-6:
        return [-mean_s * math.log1p(-(i + 0.5) / n) for i in range(n)]
    sigma2 = math.log1p(cs2)
    mu_ln = math.log(mean_s) - sigma2 / 2
    nd = NormalDist(mu_ln, math.sqrt(sigma2))
    return [math.exp(nd.inv_cdf((i + 0.5) / n)) for i in range(n)]


def response_quantile(
    rate: float, c: int, mean_s: float, p: float, cs2: float = 1.0, ca2: float = 1.0, samples=None, _points=None
) -> float:
    """p-quantile (seconds) of response time = queue wait + service in a G/G/c queue.

    Wait: Erlang C, ``P(Wq > t) = C exp(-(c mu - lambda) t / k)`` with the Allen-Cunneen factor ``k = (ca2 + cs2)/2``
    (exact for M/M/c where k = 1). Service: the measured samples (or a lognormal with the given cv^2), independent of
    the wait. ``inf`` at or above saturation.
    """
    mu = 1.0 / mean_s
    if rate >= c * mu:
        return math.inf
    pts = _points if _points is not None else _service_points(mean_s, cs2, samples)
    k = (ca2 + cs2) / 2.0
    pw = erlang_c(c, rate / mu) if k > 0 else 0.0
    theta = (c * mu - rate) / k if k > 0 else math.inf

    def tail(t: float) -> float:
        acc = 0.0
        for s in pts:
            if s > t:
                acc += 1.0
            elif pw > 0:
                acc += pw * math.exp(-theta * (t - s))
        # P(S>t) contributes with weight (1-pw) + pw (when S>t the sum exceeds t anyway)
        return acc / len(pts)

    target = 1.0 - p
    # at t = max(S) + x the tail is at most pw * exp(-theta x): an upper bound to start the bisection from
    hi = max(pts) + (math.log(pw / target) / theta if pw > target else 0.0) + 1e-9
    lo = 0.0
    for _step in range(40):
        mid = (lo + hi) / 2
        if tail(mid) > target:
            lo = mid
        else:
            hi = mid
    return hi


def predict_capacity(
    c: int, mean_s: float, limit_ms: float, p: float = 0.95, cs2: float = 1.0, ca2: float = 1.0, samples=None
) -> dict:
    """Highest rate at which the p-quantile of response time stays within ``limit_ms`` (bisection on the rate)."""
    if mean_s <= 0:
        raise CapacityError("service time must be > 0")
    mu = 1.0 / mean_s
    limit = limit_ms / 1000.0
    sat = c * mu
    exact = samples is None and cs2 == 1.0 and ca2 == 1.0
    if exact:
        # M/M/c: the closed form, no discretised service law
        def quantile(rate):
            return mmc_response_quantile(rate, c, mean_s, p)

    else:
        pts = _service_points(mean_s, cs2, samples)

        def quantile(rate):
            return response_quantile(rate, c, mean_s, p, cs2, ca2, _points=pts)

    base = quantile(1e-9 * sat)
    out = {
        "model": "M/M/c (Erlang C, exact)"
        if exact
        else "M/M/c (Erlang C)"
        if abs(cs2 - 1) < 0.05 and abs(ca2 - 1) < 0.05
        else "G/G/c (Erlang C, Allen-Cunneen)",
        "c": c,
        "service_ms": round(mean_s * 1000, 3),
        "cs2": round(cs2, 4),
        "ca2": round(ca2, 4),
        "percentile": round(p * 100, 3),
        "limit_ms": limit_ms,
        "saturation_rps": round(sat, 3),
    }
    if base > limit:
        out.update(
            rate_rps=0.0,
            note="the service time alone exceeds the SLA (p%g of service %.1f ms)" % (p * 100, base * 1000),
        )
        return out
    lo, hi = 0.0, sat
    for _step in range(40 if exact else 30):
        mid = (lo + hi) / 2
        if quantile(mid) <= limit:
            lo = mid
        else:
            hi = mid
    out["rate_rps"] = round(lo, 3)
    out["utilisation"] = round(lo / sat, 4)
    return out


def service_stats(samples: list) -> tuple[float, float]:
    """Mean and squared coefficient of variation of service-time samples."""
    n = len(samples)
    if n == 0:
        raise CapacityError("no service-time samples")
    m = sum(samples) / n
    var = sum((x - m) ** 2 for x in samples) / max(1, n - 1)
    return m, (var / (m * m) if m > 0 else 0.0)


# ---------------------------------------------------------------------------------------------------------------------
# Prometheus text format and known server metrics
# ---------------------------------------------------------------------------------------------------------------------

_PROM_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\S+)?\s*$")
_PROM_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')

# kind: queue (gauge of waiting requests), running (gauge), queue_time_sum / queue_time_count (counters, seconds via
# the scale), exec_time_sum, requests (counter of finished requests).
KNOWN_METRICS = {
    # Triton
    "nv_inference_pending_request_count": ("queue", 1.0),
    "nv_inference_queue_duration_us": ("queue_time_sum", 1e-6),
    "nv_inference_compute_infer_duration_us": ("exec_time_sum", 1e-6),
    "nv_inference_request_success": ("requests", 1.0),
    # vLLM
    "vllm:num_requests_waiting": ("queue", 1.0),
    "vllm:num_requests_running": ("running", 1.0),
    "vllm:request_queue_time_seconds_sum": ("queue_time_sum", 1.0),
    "vllm:request_queue_time_seconds_count": ("queue_time_count", 1.0),
    # HAProxy (native Prometheus exporter)
    "haproxy_backend_current_queue": ("queue", 1.0),
    "haproxy_server_current_queue": ("queue_server", 1.0),
    "haproxy_backend_queue_time_average_seconds": ("queue_time_avg", 1.0),
    "haproxy_backend_current_sessions": ("running", 1.0),
    # MLServer (histograms of the observed queue size)
    "parallel_request_queue_sum": ("queue_obs_sum", 1.0),
    "parallel_request_queue_count": ("queue_obs_count", 1.0),
    "batch_request_queue_sum": ("queue_obs_sum", 1.0),
    "batch_request_queue_count": ("queue_obs_count", 1.0),
    # TorchServe
    "ts_queue_latency_microseconds": ("queue_time_sum", 1e-6),
    "ts_inference_requests_total": ("requests", 1.0),
}


def _unescape(v: str) -> str:
    return v.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")


def parse_prometheus(text: str) -> list:
    """``[(name, {label: value}, float), ...]`` from the Prometheus text exposition format; bad lines are skipped."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _PROM_LINE.match(line)
        if not m:
            continue
        try:
            value = float(m.group(4))
        except ValueError:
            continue
        labels = {}
        if m.group(3):
            for lm in _PROM_LABEL.finditer(m.group(3)):
                labels[lm.group(1)] = _unescape(lm.group(2))
        out.append((m.group(1), labels, value))
    return out


def extract_known(samples: list, label_filter: dict | None = None) -> dict:
    """Sum the known metrics (across matching label sets) into ``{kind: value}`` plus ``names`` found."""
    out: dict = {}
    names = set()
    for name, labels, value in samples:
        known = KNOWN_METRICS.get(name)
        if not known:
            continue
        if label_filter and any(labels.get(k) != str(v) for k, v in label_filter.items()):
            continue
        if math.isnan(value):
            continue
        kind, scale = known
        out[kind] = out.get(kind, 0.0) + value * scale
        names.add(name)
    out["names"] = sorted(names)
    return out


def summarize_server_metrics(scrapes: list) -> dict:
    """Per-step server view from ``[(t, {kind: value}), ...]``: queue series and max, mean queue wait, exec time."""
    if not scrapes:
        return {"available": False}
    names = sorted({n for _t, s in scrapes for n in s.get("names", [])})
    if not names:
        return {"available": False, "names": []}
    out: dict = {"available": True, "names": names}
    qs = [(t, s["queue"]) for t, s in scrapes if "queue" in s]
    if not qs:
        qs = [(t, s["queue_server"]) for t, s in scrapes if "queue_server" in s]
    if qs:
        out["queue_samples"] = [[round(t, 3), v] for t, v in qs]
        out["queue_max"] = max(v for _t, v in qs)
        out["queue_mean"] = round(sum(v for _t, v in qs) / len(qs), 3)
    first, last = scrapes[0][1], scrapes[-1][1]

    def delta(kind):
        if kind in first and kind in last:
            return last[kind] - first[kind]
        return None

    n = delta("queue_time_count")
    if n is None:
        n = delta("requests")
    qsum = delta("queue_time_sum")
    if n and qsum is not None and n > 0:
        out["queue_wait_ms"] = round(qsum / n * 1000.0, 3)
    esum = delta("exec_time_sum")
    if n and esum is not None and n > 0:
        out["exec_ms"] = round(esum / n * 1000.0, 4)
        out["exec_requests"] = int(n)
    if "queue_time_avg" in last:
        out["queue_wait_ms"] = round(last["queue_time_avg"] * 1000.0, 3)
    osum, ocount = delta("queue_obs_sum"), delta("queue_obs_count")
    if osum is not None and ocount:
        out["queue_mean"] = round(osum / ocount, 3)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Outputs: the SLA sentence and the capacity table
# ---------------------------------------------------------------------------------------------------------------------

TABLE_COLUMNS = [
    "host",
    "service",
    "model",
    "version",
    "profile",
    "gpu",
    "batch",
    "limits",
    "sustained_rps",
    "p95_ms",
    "p99_ms",
    "sla",
    "max_queue",
    "knee_rps",
    "saturation_rps",
    "predicted_rps",
    "headroom_pct",
    "verdict",
]


def _num(v, nd=1):
    if v is None:
        return None
    return round(float(v), nd)


def sla_sentence(service: str, capacity: dict, sla: Sla, profile: str | None = None, gpu: str | None = None) -> str:
    """ "Service A sustains N RPS at p95 < X ms (and p99 < Y ms), with no errors and without queue growth"."""
    name = service or "the service"
    where = ""
    if profile or gpu:
        where = " on " + " ".join(x for x in ("MIG %s" % profile if profile else "", "(%s)" % gpu if gpu else "") if x)
    limits = sorted(sla.percentiles.items(), key=lambda kv: (kv[0] != 95.0, kv[0]))
    lat = capacity.get("latency_ms") or {}
    if capacity.get("sustained_rps") is None:
        if capacity.get("knee_rps") is not None:
            return "%s%s does not meet the SLA (%s) at any tested rate; the lowest step, %g RPS, failed: %s." % (
                name,
                where,
                ", ".join("%s < %g ms" % (pct_name(p), v) for p, v in limits),
                capacity["knee_rps"],
                "; ".join(capacity.get("knee_reasons") or []) or "see the step table",
            )
        voids = capacity.get("void_steps") or []
        why = (
            " (%d void step%s: the generator fell behind its schedule)" % (len(voids), "" if len(voids) == 1 else "s")
            if voids
            else ""
        )
        return "%s%s: no valid step was measured%s, so no capacity can be stated." % (name, where, why)
    first = limits[0]
    parts = "%s < %g ms" % (pct_name(first[0]), first[1])
    if len(limits) > 1:
        parts += " (and %s)" % ", ".join("%s < %g ms" % (pct_name(p), v) for p, v in limits[1:])
    err = "with no errors" if sla.max_error_rate == 0 else "with errors <= %g%%" % (sla.max_error_rate * 100)
    measured = ", ".join(
        "%s %s" % (pct_name(p), _fmt_ms(lat.get(pct_name(p)))) for p, _v in limits if lat.get(pct_name(p)) is not None
    )
    if measured and capacity.get("confirmed") and capacity.get("measured_s"):
        measured += " over %g s, confirmed" % capacity["measured_s"]
    tail = ""
    if capacity.get("knee_rps") is not None:
        tail = "; the knee is at %g RPS" % capacity["knee_rps"]
    else:
        tail = "; no knee up to the highest rate tested, so this is a lower bound"
    return "%s%s sustains %g RPS at %s, %s and without queue growth (measured %s%s)." % (
        name,
        where,
        capacity["sustained_rps"],
        parts,
        err,
        measured or "n/a",
        tail,
    )


def table_row(meta: dict, capacity: dict, sla: Sla, prediction: dict | None = None, target_rps=None) -> dict:
    """One capacity-table row (see :data:`TABLE_COLUMNS`)."""
    lat = capacity.get("latency_ms") or {}
    sustained = capacity.get("sustained_rps")
    headroom = None
    if sustained is not None and target_rps:
        headroom = round(100.0 * (sustained - float(target_rps)) / float(target_rps), 1)
    elif sustained is not None and capacity.get("saturation_rps"):
        headroom = round(100.0 * (capacity["saturation_rps"] - sustained) / capacity["saturation_rps"], 1)
    limits = meta.get("limits") or {}
    if isinstance(limits, dict):
        limits = ", ".join("%s=%s" % (k, v) for k, v in sorted(limits.items()))
    if capacity.get("sustained_rps") is not None:
        verdict = "capacity found" if capacity.get("reached") else "lower bound (no knee)"
    else:
        verdict = "below lowest step" if capacity.get("knee_rps") is not None else "no valid step"
    return {
        "host": meta.get("host") or "",
        "service": meta.get("service") or "",
        "model": meta.get("model") or "",
        "version": str(meta.get("version") or ""),
        "profile": meta.get("profile") or "",
        "gpu": meta.get("gpu") or "",
        "batch": "" if meta.get("batch") is None else str(meta.get("batch")),
        "limits": limits or "",
        "sustained_rps": _num(sustained),
        "p95_ms": _num(lat.get("p95")),
        "p99_ms": _num(lat.get("p99")),
        "sla": ", ".join("%s<%gms" % (pct_name(p), v) for p, v in sorted(sla.percentiles.items())),
        "max_queue": _num(capacity.get("max_queue")),
        "knee_rps": _num(capacity.get("knee_rps")),
        "saturation_rps": _num(capacity.get("saturation_rps")),
        "predicted_rps": _num((prediction or {}).get("rate_rps")),
        "headroom_pct": headroom,
        "verdict": verdict,
    }


def rows_to_csv(rows: list, columns: list | None = None) -> str:
    cols = columns or (list(rows[0].keys()) if rows else TABLE_COLUMNS)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})
    return buf.getvalue()


def rows_to_markdown(rows: list, columns: list | None = None) -> str:
    cols = columns or TABLE_COLUMNS
    if not rows:
        raise CapacityError("no capacity rows to tabulate")

    def cell(v):
        return "" if v is None else str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(cell(r.get(c)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


STEP_COLUMNS = [
    "index",
    "kind",
    "offered_rps",
    "achieved_rps",
    "ratio",
    "measured",
    "ok",
    "errors",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "max_ms",
    "lag_p99_ms",
    "queue_slope",
    "queue_max",
    "server_queue_max",
    "server_queue_wait_ms",
    "passed",
    "void",
    "hard_break",
    "verdict",
    "role",
    "hold_s",
    "stopped_early_s",
    "pooled_runs",
    "pooled_p95_ms",
    "pooled_passed",
]


def step_rows(steps: list) -> list:
    """Flat rows (:data:`STEP_COLUMNS`) for the per-step CSV."""
    rows = []
    for s in steps:
        lat = s.get("latency_ms") or {}
        q = s.get("queue") or {}
        srv = s.get("server") or {}
        v = s.get("verdict") or {}
        pooled = s.get("pooled") or {}
        offered = s.get("offered_rps") or 0
        rows.append(
            {
                "index": s.get("index"),
                "kind": s.get("kind"),
                "offered_rps": offered,
                "achieved_rps": s.get("achieved_rps"),
                "ratio": round(s.get("achieved_rps", 0) / offered, 4) if offered else None,
                "measured": s.get("measured"),
                "ok": s.get("ok"),
                "errors": ";".join("%s=%d" % kv for kv in sorted((s.get("errors") or {}).items()) if kv[1]),
                "p50_ms": lat.get("p50"),
                "p95_ms": lat.get("p95"),
                "p99_ms": lat.get("p99"),
                "max_ms": lat.get("max"),
                "lag_p99_ms": (s.get("schedule_lag_ms") or {}).get("p99"),
                "queue_slope": None if not q else round(q.get("slope", 0.0), 4),
                "queue_max": q.get("max"),
                "server_queue_max": srv.get("queue_max"),
                "server_queue_wait_ms": srv.get("queue_wait_ms"),
                "passed": v.get("passed"),
                "void": v.get("void"),
                "hard_break": v.get("hard_break"),
                "verdict": v.get("summary"),
                "role": s.get("role"),
                "hold_s": s.get("hold_s"),
                "stopped_early_s": (s.get("stopped_early") or {}).get("at_s"),
                "pooled_runs": " ".join(str(i) for i in pooled.get("runs") or []),
                "pooled_p95_ms": (pooled.get("latency_ms") or {}).get("p95"),
                "pooled_passed": (pooled.get("verdict") or {}).get("passed"),
            }
        )
    return rows
