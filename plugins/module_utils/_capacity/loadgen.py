# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Open-loop asyncio HTTP load generator, Prometheus scraper and capacity-test runner (PRIVATE to the collection).

Standard library only: raw HTTP/1.1 keep-alive over asyncio streams. Latency counts from the intended send time.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import collections
import contextlib
import csv
import functools
import itertools
import json
import math
import os
import random
import ssl
import string
import sys
import time
from urllib.parse import urlsplit

from ansible_collections.gpu.mig.plugins.module_utils._capacity.analysis import (
    KNOWN_METRICS,
    NEIGHBOUR_RULES,
    SCHEMA,
    STEP_COLUMNS,
    CapacityError,
    LatencyHistogram,
    build_plan,
    check_time_budget,
    evaluate_step,
    extract_known,
    field_problems,
    judge_step,
    option_problems,
    parse_prometheus,
    parse_sla,
    pct_name,
    predict_capacity,
    queue_trend,
    raise_problems,
    rows_to_csv,
    schedule_offsets,
    service_stats,
    sla_sentence,
    step_rows,
    summarize_capacity,
    summarize_server_metrics,
    table_row,
)
from ansible_collections.gpu.mig.plugins.module_utils._capacity.options import DEFAULTS, NEIGHBOUR_KEYS
from ansible_collections.gpu.mig.plugins.module_utils._capacity.workers import TIMEOUTS, LocalWorkers, default_workers

ERROR_KINDS = ("timeout", "rejected_503", "rejected_429", "http_5xx", "http_4xx", "connection")
USER_AGENT = "gpu.mig-capacity/1"
# how late the kernel wakes a short sleep (Linux's default timer slack is 50 us)
NAP_OVERSHOOT = 0.00006
# the mean latency above which a response timed a nap late (at most 0.16 ms) is off by under 1 %
NAP_LATENCY = 0.02


# ---------------------------------------------------------------------------------------------------------------------
# HTTP plumbing
# ---------------------------------------------------------------------------------------------------------------------


class Endpoint:
    """Where requests go: scheme, host, port and the pre-encoded request head."""

    def __init__(self, url: str, validate_certs: bool = True) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise CapacityError("URL %r must be http:// or https:// with a host" % url)
        self.url = url
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.path = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        default_port = self.port == (443 if parts.scheme == "https" else 80)
        self.host_header = self.host if default_port else "%s:%d" % (self.host, self.port)
        self.ssl = None
        if self.scheme == "https":
            self.ssl = ssl.create_default_context()
            if not validate_certs:
                self.ssl.check_hostname = False
                self.ssl.verify_mode = ssl.CERT_NONE

    def request(self, method: str, body: bytes | None, headers: dict | None = None, close: bool = False) -> bytes:
        lines = [
            "%s %s HTTP/1.1" % (method, self.path),
            "Host: %s" % self.host_header,
            "User-Agent: %s" % USER_AGENT,
            "Accept: */*",
        ]
        hdrs = dict(headers or {})
        if body is not None:
            if not any(k.lower() == "content-type" for k in hdrs):
                hdrs["Content-Type"] = "application/json"
            hdrs["Content-Length"] = str(len(body))
        if close:
            hdrs["Connection"] = "close"
        lines.extend("%s: %s" % (k, v) for k, v in hdrs.items())
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


async def read_response(reader: asyncio.StreamReader, keep_body: bool = False) -> tuple:
    """Read one HTTP/1.x response: ``(status, body_or_None, keep_alive)``."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status_line = lines[0].split(None, 2)
    if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/"):
        raise ConnectionError("malformed status line %r" % lines[0][:80])
    status = int(status_line[1])
    length = None
    chunked = False
    keep_alive = status_line[0] != b"HTTP/1.0"
    for line in lines[1:]:
        if not line:
            continue
        name, _sep, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
        elif name == b"connection":
            v = value.strip().lower()
            if v == b"close":
                keep_alive = False
            elif v == b"keep-alive":
                keep_alive = True
    body = b""
    if chunked:
        parts = []
        for _step in range(1_000_000):  # bounded: a chunk per iteration
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                # trailers until the empty line
                for _step in range(1000):
                    if await reader.readuntil(b"\r\n") == b"\r\n":
                        break
                break
            data = await reader.readexactly(size + 2)
            if keep_body:
                parts.append(data[:-2])
        body = b"".join(parts)
    elif length is not None:
        if length:
            body = await reader.readexactly(length)
    elif status not in (204, 304) and not 100 <= status < 200:
        body = await reader.read()  # until close
        keep_alive = False
    return status, (body if keep_body else None), keep_alive


def _header(head: bytes, name: bytes, end: int):
    """Value of header ``name`` (lower case, with its leading CRLF and colon) in a lower-cased head, or None."""
    i = head.find(name)
    if i < 0:
        return None
    j = head.find(b"\r\n", i + 2)
    return head[i + len(name) : j if j >= 0 else end].strip()


def parse_response(buf: bytes):
    """Parse the HTTP/1.x response at the start of ``buf`` (the generator's fast path).

    None when more bytes are needed; else ``(status, keep_alive, end)`` with ``end`` the offset just past the response,
    or -1 when the body runs until the connection closes. Raises ValueError on a malformed response.
    """
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > 65536:
            raise ValueError("response head longer than 64 KiB")
        return None
    if buf[:5] != b"HTTP/" or buf[8:9] != b" ":
        raise ValueError("malformed status line %r" % buf[: buf.find(b"\r\n")][:80])
    try:
        status = int(buf[9:12])
    except ValueError:
        raise ValueError("malformed status line %r" % buf[: buf.find(b"\r\n")][:80]) from None
    head = buf[:end].lower()
    keep = head[5:8] != b"1.0"
    start = end + 4
    if b"\r\nconnection:" in head:
        conn = _header(head, b"\r\nconnection:", end)
        if conn == b"close":
            keep = False
        elif conn == b"keep-alive":
            keep = True
    length = _header(head, b"\r\ncontent-length:", end)
    if length is not None:
        total = start + int(length)
        return None if len(buf) < total else (status, keep, total)
    te = _header(head, b"\r\ntransfer-encoding:", end)
    if te is not None and b"chunked" in te:
        pos = start
        for _step in range(1_000_000):  # bounded: one chunk per iteration
            j = buf.find(b"\r\n", pos)
            if j < 0:
                return None
            size = int(buf[pos:j].split(b";")[0].strip(), 16)
            if size == 0:
                if buf[j + 2 : j + 4] == b"\r\n":
                    return status, keep, j + 4
                k = buf.find(b"\r\n\r\n", j)  # trailers until the empty line
                return None if k < 0 else (status, keep, k + 4)
            pos = j + 2 + size + 2
            if len(buf) < pos:
                return None
        raise ValueError("more than a million chunks")
    if status in (204, 304) or 100 <= status < 200:
        return status, keep, start
    return status, False, -1


class Exchange:
    """One request of the open-loop schedule: when it was meant to go, when it went, how it ended."""

    __slots__ = (
        "cb",
        "conn",
        "done",
        "end",
        "intended",
        "kind",
        "measured",
        "pidx",
        "retried",
        "sent",
        "start",
        "status",
    )

    def __init__(self, intended: float, pidx: int, measured: bool, cb) -> None:
        self.intended = intended
        self.pidx = pidx
        self.measured = measured
        self.cb = cb
        self.sent = intended  # when the schedule handed it over (the generator's own lag ends here)
        self.start = None  # when its bytes were written (after waiting for a free or new connection)
        self.conn = None
        self.done = False
        self.end = 0.0
        self.status = 0
        self.kind = None
        self.retried = False


class _Conn(asyncio.Protocol):
    """A keep-alive connection with at most one request in flight (no pipelining: it would distort latency)."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport = None
        self.buf = b""
        self.ex = None
        self.data = b""
        self.closed = False
        self.until_close = None
        self.used = 0

    def connection_made(self, transport) -> None:
        self.transport = transport

    def send(self, ex: Exchange, data: bytes) -> None:
        self.ex = ex
        self.data = data
        self.used += 1
        ex.conn = self
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        ex = self.ex
        if ex is None or self.until_close is not None:
            if ex is None:  # bytes nobody asked for: the connection is out of step
                self.transport.abort()
            return
        buf = self.buf + data if self.buf else data
        try:
            res = parse_response(buf)
        except ValueError:
            self.buf = b""
            self.ex = None
            self.pool.finish(self, ex, 0, "connection", False)
            self.transport.abort()
            return
        if res is None:
            self.buf = buf
            return
        status, keep, end = res
        self.buf = b""
        if end < 0:  # the body runs until the server closes
            self.until_close = status
            return
        self.ex = None
        self.pool.finish(self, ex, status, classify(status), keep and end == len(buf))

    def eof_received(self):
        return False

    def connection_lost(self, exc) -> None:
        self.closed = True
        ex, self.ex = self.ex, None
        if ex is not None:
            if self.until_close is not None:
                self.pool.finish(self, ex, self.until_close, classify(self.until_close), False)
            elif self.used > 1 and not self.buf and not ex.retried and not ex.done:
                # a kept-alive connection the server had closed while idle: nothing was answered, so send the
                # request again on another connection (once), as HTTP clients do; its clock keeps running
                ex.retried = True
                self.pool.lost(self)
                self.pool.submit(ex, self.data)
                return
            else:
                self.pool.finish(self, ex, 0, "connection", False)
        self.pool.lost(self)


class Pool:
    """Keep-alive connections to one endpoint (asyncio protocols, no stream or task per request).

    A request goes out at once on an idle connection; otherwise a new connection opens, up to ``max_connections``
    (and ``MAX_CONNECTING`` at once), beyond which requests wait for the next free connection: that wait is part of
    their latency and is reported as ``connection_wait_ms``, apart from the generator's send lag.
    """

    # connections being opened at once: when the server is slow to accept, more connects only add to its load
    MAX_CONNECTING = 32

    def __init__(self, endpoint: Endpoint, max_connections: int = 4096, connect_timeout: float = 10.0) -> None:
        self.ep = endpoint
        self.max = max(1, int(max_connections))
        self.connect_timeout = connect_timeout
        self.idle: list = []
        self.busy: set = set()
        self.waiting: collections.deque = collections.deque()
        self.open = 0
        self.peak = 0
        self.connecting: set = set()
        self.loop = None
        self.closed = False

    def submit(self, ex: Exchange, data: bytes) -> None:
        if self.closed:
            self.fail(ex, "connection")
        elif self.idle:
            conn = self.idle.pop()
            self.busy.add(conn)
            ex.start = self.loop.time() if ex.retried else ex.sent  # a new request is handed over and written at once
            conn.send(ex, data)
        elif self.open < self.max and len(self.connecting) < self.MAX_CONNECTING:
            self._open(ex, data)
        else:
            self.waiting.append((ex, data))

    def _open(self, ex: Exchange, data: bytes) -> None:
        self.open += 1
        self.peak = max(self.peak, self.open)
        task = self.loop.create_task(self._connect(ex, data))
        self.connecting.add(task)
        task.add_done_callback(self.connecting.discard)

    async def _connect(self, ex: Exchange, data: bytes) -> None:
        ep = self.ep
        try:
            _transport, conn = await asyncio.wait_for(
                self.loop.create_connection(
                    lambda: _Conn(self), ep.host, ep.port, ssl=ep.ssl, server_hostname=ep.host if ep.ssl else None
                ),
                self.connect_timeout,
            )
        except (OSError, *TIMEOUTS):
            self.open -= 1
            self.fail(ex, "connection")
            self._next_waiting_on_new()
            return
        self.busy.add(conn)
        self._next_waiting_on_new()  # more requests queued behind the connect limit: keep opening
        if ex.done:  # it timed out while the connection opened: serve the next one
            self._reuse(conn)
            return
        ex.start = self.loop.time()
        conn.send(ex, data)

    def fail(self, ex: Exchange, kind: str) -> None:
        if not ex.done:
            ex.done = True
            ex.end = self.loop.time()
            ex.kind = kind
            ex.cb(ex)

    def finish(self, conn: _Conn, ex: Exchange, status: int, kind, reusable: bool) -> None:
        if not ex.done:
            ex.done = True
            ex.end = self.loop.time()
            ex.status = status
            ex.kind = kind
            ex.cb(ex)
        if reusable and not conn.closed:
            self._reuse(conn)
        elif not conn.closed:
            conn.transport.close()

    def _reuse(self, conn: _Conn) -> None:
        while self.waiting:
            ex, data = self.waiting.popleft()
            if not ex.done:
                ex.start = self.loop.time()
                conn.send(ex, data)
                return
        self.busy.discard(conn)
        self.idle.append(conn)

    def _next_waiting_on_new(self) -> None:
        while self.waiting and self.open < self.max and len(self.connecting) < self.MAX_CONNECTING:
            ex, data = self.waiting.popleft()
            if not ex.done:
                self._open(ex, data)
                return

    def lost(self, conn: _Conn) -> None:
        self.open -= 1
        self.busy.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        self._next_waiting_on_new()

    def expire(self, ex: Exchange) -> None:
        """Time ``ex`` out: a response that may still come would be out of step, so its connection is dropped."""
        if ex.done:
            return
        conn = ex.conn
        self.fail(ex, "timeout")
        if conn is not None and conn.ex is ex:
            conn.ex = None
            conn.transport.abort()

    def close(self) -> None:
        self.closed = True
        for task in list(self.connecting):
            task.cancel()
        for conn in [*self.idle, *self.busy]:
            if conn.transport is not None and not conn.closed:
                conn.transport.abort()
        self.idle = []
        self.waiting.clear()


async def http_once(
    url: str,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict | None = None,
    timeout: float = 10.0,
    validate_certs: bool = True,
) -> tuple:
    """One request on a fresh connection: ``(status, body)``; raises CapacityError with a clear message."""
    ep = Endpoint(url, validate_certs)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(ep.host, ep.port, ssl=ep.ssl), timeout)
    except TIMEOUTS:
        raise CapacityError("cannot reach %s: no connection within %g s" % (url, timeout)) from None
    except OSError as exc:
        raise CapacityError(
            "cannot reach %s: %s; is the service up and the URL right?" % (url, exc.strerror or exc)
        ) from None
    try:
        writer.write(ep.request(method, body, headers, close=True))
        status, data, _ka = await asyncio.wait_for(read_response(reader, keep_body=True), timeout)
        return status, data
    except TIMEOUTS:
        raise CapacityError("%s did not answer within %g s" % (url, timeout)) from None
    except (OSError, asyncio.IncompleteReadError, ConnectionError, ValueError) as exc:
        raise CapacityError("%s: broken response (%s)" % (url, exc)) from None
    finally:
        writer.close()


# ---------------------------------------------------------------------------------------------------------------------
# Payloads and targets
# ---------------------------------------------------------------------------------------------------------------------


class Target:
    """An endpoint plus a weighted payload mix, each payload pre-encoded as a full HTTP request."""

    def __init__(
        self,
        url: str,
        method: str = "POST",
        payloads: list | None = None,
        headers: dict | None = None,
        timeout: float = 30.0,
        validate_certs: bool = True,
        name: str = "",
    ) -> None:
        self.endpoint = Endpoint(url, validate_certs)
        self.url = url
        self.validate_certs = validate_certs
        self.method = method.upper()
        self.timeout = float(timeout)
        self.name = name or url
        self.headers = dict(headers or {})
        mix = payloads or [{"name": "default", "weight": 1.0, "body": None}]
        self.names = []
        self.requests = []
        weights = []
        for p in mix:
            w = float(p.get("weight", 1.0))
            if w <= 0:
                raise CapacityError("payload %r: weight must be > 0" % p.get("name"))
            hdrs = dict(self.headers)
            hdrs.update(p.get("headers") or {})
            bodies = p["bodies"] if "bodies" in p else [p.get("body")]
            self.names.append(p.get("name") or "payload%d" % len(self.names))
            self.requests.append([self.endpoint.request(self.method, b, hdrs) for b in bodies])
            weights.append(w)
        total = sum(weights)
        acc = 0.0
        self.cum = []
        for w in weights:
            acc += w / total
            self.cum.append(acc)
        self.cum[-1] = 1.0

    def to_wire(self) -> dict:
        """The target as JSON for a remote generator host: the very request bytes, so every host sends the same."""
        return {
            "url": self.url,
            "method": self.method,
            "timeout": self.timeout,
            "validate_certs": self.validate_certs,
            "name": self.name,
            "names": self.names,
            "cum": self.cum,
            "requests": [[base64.b64encode(r).decode("ascii") for r in variants] for variants in self.requests],
        }

    @classmethod
    def from_wire(cls, data: dict) -> Target:
        target = cls(data["url"], data["method"], timeout=data["timeout"], validate_certs=data["validate_certs"])
        target.name = data["name"]
        target.names = list(data["names"])
        target.cum = [float(c) for c in data["cum"]]
        target.requests = [[base64.b64decode(r) for r in variants] for variants in data["requests"]]
        return target

    def pick(self, rng: random.Random, seq: int) -> tuple:
        idx = 0 if len(self.cum) == 1 else bisect.bisect_left(self.cum, rng.random())
        variants = self.requests[idx]
        return idx, variants[seq % len(variants)]


def _encode(body) -> bytes | None:
    if body is None:
        return None
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8")
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


def render_template(template: str, count: int, seed: int = 0) -> list:
    """``count`` variants of a ``string.Template`` body: ``$seq`` (0..count-1), ``$rand`` (0..1e9), ``$uuid``-like ``$hex``."""
    rng = random.Random(seed)
    tpl = string.Template(template)
    out = []
    for i in range(max(1, count)):
        try:
            out.append(
                tpl.substitute(seq=i, rand=rng.randrange(10**9), hex="%032x" % rng.getrandbits(128)).encode("utf-8")
            )
        except (KeyError, ValueError) as exc:
            raise CapacityError(
                "payload template: unknown or bad placeholder %s; use $seq, $rand, $hex" % exc
            ) from None
    return out


def v2_infer_url(base: str, model: str, version: str | None = None) -> str:
    base = base.rstrip("/")
    if "/v2/models/" in base:
        return base
    if not model:
        raise CapacityError("protocol v2 needs the model name (option model)")
    return "%s/v2/models/%s%s/infer" % (base, model, "/versions/%s" % version if version else "")


_V2_ZERO = {"BOOL": False, "BYTES": "a", "FP16": 0.0, "FP32": 0.0, "FP64": 0.0, "BF16": 0.0}


def v2_payload_from_metadata(meta: dict, batch: int = 1) -> dict:
    """A V2 inference request filled with zeros, shaped from ``GET /v2/models/<m>`` metadata (``-1`` -> ``batch``)."""
    inputs = []
    for inp in meta.get("inputs") or []:
        shape = [batch if int(d) < 0 else int(d) for d in inp.get("shape", [])]
        n = 1
        for d in shape:
            n *= d
        if n > 10_000_000:
            raise CapacityError("input %s has %d elements; give an explicit payload instead" % (inp.get("name"), n))
        dtype = inp.get("datatype", "FP32")
        inputs.append({"name": inp["name"], "shape": shape, "datatype": dtype, "data": [_V2_ZERO.get(dtype, 0)] * n})
    if not inputs:
        raise CapacityError("model metadata lists no inputs; give an explicit payload")
    return {"inputs": inputs}


def _load_payload_entry(p: dict, base_dir: str | None, seed: int) -> dict:
    out = {"name": p.get("name"), "weight": p.get("weight", 1.0), "headers": p.get("headers") or {}}
    if p.get("payload_file") or p.get("template_file"):
        path = p.get("payload_file") or p.get("template_file")
        if base_dir and not os.path.isabs(path):
            path = os.path.join(base_dir, path)
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise CapacityError("cannot read payload file %s: %s" % (path, exc.strerror)) from None
        if p.get("template_file"):
            out["bodies"] = render_template(data.decode("utf-8"), int(p.get("variants", DEFAULTS["variants"])), seed)
        else:
            out["body"] = data
    elif p.get("template") is not None:
        out["bodies"] = render_template(p["template"], int(p.get("variants", DEFAULTS["variants"])), seed)
    else:
        out["body"] = _encode(p.get("payload"))
    return out


def build_target(cfg: dict) -> Target:
    """Target from options: protocol generic / v2 / openai / openai_chat, payload or payload mix, headers."""
    protocol = cfg.get("protocol") or "generic"
    url = cfg["url"]
    seed = int(cfg.get("seed") or 0)
    base_dir = cfg.get("base_dir")
    mix = cfg.get("payload_mix") or []
    if protocol == "v2":
        url = v2_infer_url(url, cfg.get("model"), cfg.get("model_version"))
    elif protocol in ("openai", "openai_chat"):
        if "/v1/" not in url:
            url = url.rstrip("/") + ("/v1/chat/completions" if protocol == "openai_chat" else "/v1/completions")
    elif protocol != "generic":
        raise CapacityError("unknown protocol %r; use generic, v2, openai or openai_chat" % protocol)
    payloads = []
    if mix:
        payloads = [_load_payload_entry(p, base_dir, seed + i) for i, p in enumerate(mix)]
    elif any(cfg.get(k) is not None for k in ("payload", "payload_file", "template", "template_file")):
        payloads = [_load_payload_entry(dict(cfg, name="default", weight=1.0, headers={}), base_dir, seed)]
    elif protocol in ("openai", "openai_chat"):
        if not cfg.get("model"):
            raise CapacityError("protocol %s needs the model name (option model)" % protocol)
        prompt = cfg.get("prompt") or "Say hello."
        body = {
            "model": cfg["model"],
            "max_tokens": int(cfg.get("max_tokens") or DEFAULTS["max_tokens"]),
            "stream": False,
        }
        if protocol == "openai_chat":
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        payloads = [{"name": "default", "weight": 1.0, "body": _encode(body)}]
    elif protocol == "v2":
        payloads = []  # filled from the model metadata by prepare_target()
    method = (cfg.get("method") or ("POST" if payloads or protocol != "generic" else "GET")).upper()
    t = Target(
        url,
        method=method,
        payloads=payloads or None,
        headers=cfg.get("headers") or {},
        timeout=float(cfg.get("request_timeout") or 30.0),
        validate_certs=cfg.get("validate_certs", True),
        name=cfg.get("service") or url,
    )
    t.protocol = protocol
    t.needs_v2_metadata = protocol == "v2" and not payloads
    return t


async def prepare_target(cfg: dict, target: Target) -> Target:
    """For V2 without a payload, build a zero-filled request from the model metadata."""
    if not getattr(target, "needs_v2_metadata", False):
        return target
    meta_url = target.url.rsplit("/infer", 1)[0]
    status, body = await http_once(meta_url, "GET", timeout=min(target.timeout, 10.0), headers=cfg.get("headers"))
    if not 200 <= status < 300:
        raise CapacityError("V2 model metadata %s returned HTTP %d: %s" % (meta_url, status, _snippet(body)))
    try:
        meta = json.loads(body)
    except ValueError:
        raise CapacityError("V2 model metadata %s is not JSON: %s" % (meta_url, _snippet(body))) from None
    payload = v2_payload_from_metadata(meta, int(cfg.get("batch") or 1))
    t = Target(
        target.url,
        "POST",
        [{"name": "v2-zeros", "body": _encode(payload)}],
        cfg.get("headers"),
        target.timeout,
        name=target.name,
    )
    t.protocol = "v2"
    t.needs_v2_metadata = False
    return t


def _snippet(body: bytes | None, n: int = 200) -> str:
    if not body:
        return "(empty body)"
    text = body[:n].decode("utf-8", "replace").replace("\n", " ")
    return text + ("..." if len(body) > n else "")


def classify(status: int) -> str | None:
    if 200 <= status < 300:
        return None
    if status == 503:
        return "rejected_503"
    if status == 429:
        return "rejected_429"
    if status >= 500:
        return "http_5xx"
    return "http_4xx"


# ---------------------------------------------------------------------------------------------------------------------
# Prometheus scraping
# ---------------------------------------------------------------------------------------------------------------------


class Scraper:
    """Scrapes Prometheus text endpoints and keeps ``(time, {kind: value})`` samples of the known metrics."""

    def __init__(self, urls: list, interval: float = 1.0, labels: dict | None = None, timeout: float = 5.0) -> None:
        self.urls = list(urls or [])
        self.interval = max(0.05, float(interval))
        self.labels = labels or {}
        self.timeout = timeout
        self.samples: list = []
        self.errors: list = []

    async def scrape_once(self) -> dict:
        merged: dict = {"names": []}
        for url in self.urls:
            status, body = await http_once(url, "GET", timeout=self.timeout)
            if not 200 <= status < 300:
                raise CapacityError("metrics URL %s returned HTTP %d" % (url, status))
            known = extract_known(parse_prometheus(body.decode("utf-8", "replace")), self.labels)
            for k, v in known.items():
                if k == "names":
                    merged["names"] = sorted(set(merged["names"]) | set(v))
                else:
                    merged[k] = merged.get(k, 0.0) + v
        return merged

    async def probe(self) -> list:
        """Check every URL once; returns warnings (a URL without any known metric); raises when unreachable."""
        warnings = []
        for url in self.urls:
            status, body = await http_once(url, "GET", timeout=self.timeout)
            if not 200 <= status < 300:
                raise CapacityError("metrics URL %s returned HTTP %d: %s" % (url, status, _snippet(body)))
            samples = parse_prometheus(body.decode("utf-8", "replace"))
            known = extract_known(samples, self.labels)
            if not known["names"]:
                warnings.append(
                    "metrics URL %s returned %d samples but none of the known queue metrics "
                    "(Triton nv_inference_pending_request_count, vLLM vllm:num_requests_waiting, "
                    "HAProxy haproxy_backend_current_queue, MLServer parallel_request_queue...)%s; queue growth is "
                    "judged from the client's in-flight requests only"
                    % (url, len(samples), " matching labels %s" % self.labels if self.labels else "")
                )
        return warnings

    async def run(self, t_origin: float, stop: asyncio.Event, max_samples: int = 100000) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set() and len(self.samples) < max_samples:
            t = loop.time()
            try:
                s = await self.scrape_once()
                self.samples.append((t - t_origin, s))
            except CapacityError as exc:
                if len(self.errors) < 20:
                    self.errors.append(str(exc))
            with contextlib.suppress(TIMEOUTS):
                await asyncio.wait_for(stop.wait(), max(0.0, self.interval - (loop.time() - t)))


# ---------------------------------------------------------------------------------------------------------------------
# The open-loop runner
# ---------------------------------------------------------------------------------------------------------------------


class Runner:
    """Sends requests on a schedule (constant or Poisson) and measures each step; open loop, no coordinated omission.

    A request's latency runs from its *intended* send time, so a stalled server cannot slow the clock down.
    Requests are pre-encoded bytes written to pooled keep-alive connections (asyncio protocols): no task, stream or
    timer per request. Timeouts are swept in send order; the schedule sleeps to just before a send time and then
    yields to the event loop until it is due, so the send lag stays under a millisecond while the loop keeps up.

    With ``workers`` > 1 each step's schedule is split over that many generator processes on this host
    (:class:`LocalWorkers`), each taking every N-th send time of the one arrival process on its own event loop and
    connections; their step parts merge into the one step this returns.
    """

    def __init__(
        self,
        target: Target,
        arrival: str = "constant",
        seed: int = 0,
        max_connections: int = 4096,
        sample_interval: float = 0.05,
        scraper: Scraper | None = None,
        record_requests: bool = False,
        progress=None,
        keep_samples: int = 2000,
        workers: int = 1,
        event_loop: str = "asyncio",
        shares=None,
    ) -> None:
        if arrival not in ("constant", "poisson"):
            raise CapacityError("unknown arrival %r; use constant or poisson" % arrival)
        self.target = target
        self.arrival = arrival
        self.seed = seed
        self.rng = random.Random(seed)
        self.payload_rng = random.Random(seed + 1)
        self.pool = Pool(target.endpoint, max_connections)
        self.sample_interval = sample_interval
        self.scraper = scraper
        self.record_requests = record_requests
        self.requests: list = []
        self.progress = progress
        self.keep_samples = keep_samples
        self.workers = max(1, int(workers))
        self.event_loop = event_loop
        # who sends the phases: this process (None), its forked workers (forked at the first phase when workers > 1)
        # or remote generator hosts (remote.RemoteGenerators)
        self.shares = shares
        self.phase = None  # the phase running in this process, for the progress ticks
        self.seq = 0
        # seconds to nap between yields in the last millisecond before a send (0: spin); a nap blocks the loop
        self.nap = 0.0001

    async def run_phase(
        self,
        rate: float,
        warmup: float,
        hold: float,
        index: int = 0,
        kind: str = "step",
        stop_rule: dict | None = None,
    ) -> dict:
        """Run ``warmup`` + ``hold`` seconds at ``rate`` RPS; measure the hold window; drain; return the step dict.

        ``stop_rule`` (``{"limit_s", "fraction", "min_hold_s", "min_requests", "reason"}``) ends the hold early when,
        among the measured requests sent at least ``limit_s`` ago, more than ``fraction`` took longer than ``limit_s``
        (or failed): the step is then a clear failure and holding it longer only deepens the backlog.
        """
        loop = asyncio.get_running_loop()
        self.pool.loop = loop
        seed = self.rng.getrandbits(64)
        offsets = schedule_offsets(rate, warmup + hold, self.arrival, random.Random(seed))
        spec = {"rate": rate, "warmup": warmup, "hold": hold, "index": index, "kind": kind,
                "stop_rule": dict(stop_rule or {}), "seed": seed, "seq": self.seq}  # fmt: skip
        self.seq += len(offsets)
        if self.shares is None and self.workers > 1:
            self.shares = LocalWorkers(self, self.workers, functools.partial(new_event_loop, self.event_loop))
        # the common start: the workers need the time to receive (or draw) their share of the schedule
        lead = 0.01 if self.shares is None else self.shares.lead(len(offsets))
        spec["start"] = time.time() + lead
        stop = asyncio.Event()
        helpers = []
        if self.progress:
            helpers.append(asyncio.ensure_future(self._report_progress(spec, loop.time() + lead, stop)))
        if self.scraper and self.scraper.urls:
            self.scraper.samples = []
            helpers.append(asyncio.ensure_future(self.scraper.run(loop.time() + lead + warmup, stop)))
        try:
            if self.shares is None:
                parts = [await self.run_share(spec, offsets)]
            else:
                parts = await self.shares.run(spec, offsets, self.target.timeout)
        finally:
            stop.set()
            for helper in helpers:
                with contextlib.suppress(*TIMEOUTS, asyncio.CancelledError):
                    await asyncio.wait_for(helper, 10.0)
        part = merge_parts(parts, self.keep_samples)
        if self.record_requests:
            self.requests.extend(part["requests"])
        return self._step(spec, offsets, part)

    async def run_share(
        self, spec: dict, offsets: list, share: int = 0, of: int = 1, shared=None, slot: int = 0
    ) -> dict:
        """Send share ``share`` of ``of`` of one phase (``offsets``: its send times) in this process; its step part."""
        self.pool.loop = asyncio.get_running_loop()
        return await _Phase(self, spec, offsets, share, of, shared, slot).run()

    async def _report_progress(self, spec: dict, t0: float, stop: asyncio.Event) -> None:
        """Hand the progress callback a tick every half second: the running counts of this host's generators."""
        loop = asyncio.get_running_loop()
        for _tick in range(100000):
            if stop.is_set():
                return
            if self.shares is not None:
                totals = self.shares.totals()
                if totals is None:  # remote hosts report at the end of each step
                    return
                sent, done, inflight, errors = totals
                p95 = None
            elif self.phase is not None:
                ph = self.phase
                sent, done, inflight, errors = ph.sent, ph.finished, ph.inflight, sum(ph.errors.values())
                p95 = None if ph.hist.count == 0 else round(ph.hist.percentile(95) * 1000, 2)
            else:
                sent = done = inflight = errors = 0
                p95 = None
            self.progress({"event": "tick", "index": spec["index"], "kind": spec["kind"], "rate": spec["rate"],
                           "elapsed": loop.time() - t0, "duration": spec["warmup"] + spec["hold"], "sent": int(sent),
                           "done": int(done), "inflight": int(inflight), "errors": int(errors), "p95_ms": p95})  # fmt: skip
            with contextlib.suppress(*TIMEOUTS):
                await asyncio.wait_for(stop.wait(), 0.5)

    def _step(self, spec: dict, offsets: list, part: dict) -> dict:
        """The step dict: rates, latencies, errors, send lag and queue trends of the hold window."""
        warmup, hold = spec["warmup"], spec["hold"]
        hist, lag, wait = part["hist"], part["lag"], part["wait"]
        hold_s = max(part["held_s"], 1e-9) if part["stopped"] else hold
        shift = min(hist.mean() or 0.0, warmup)
        names = self.target.names
        unsent = part["unsent"]
        step = {
            "index": spec["index"],
            "kind": spec["kind"],
            "arrival": self.arrival,
            "offered_rps": spec["rate"],
            # arrivals that *should* complete inside the window: intended sends shifted back by the mean latency, so
            # Poisson bursts around the window edges do not read as lost throughput
            "offered_actual_rps": round(
                sum(1 for o in offsets if warmup - shift <= o < warmup + hold_s - shift) / hold_s, 3
            )
            if hold_s
            else 0.0,
            "warmup_s": warmup,
            "hold_s": round(hold_s, 3),
            "hold_planned_s": hold,
            "scheduled": len(offsets),
            "unsent": unsent,
            "measured": part["measured"],
            "ok": part["ok"],
            "achieved_rps": round(part["ok_in_window"] / hold_s, 3) if hold_s else 0.0,
            "errors": {k: v for k, v in part["errors"].items() if v},
            "latency_ms": hist.summary_ms(),
            "histogram": hist.to_dict(),
            "schedule_lag_ms": {
                "p50": _ms(lag.percentile(50)),
                "p99": _ms(lag.percentile(99)),
                "max": _ms(lag.max if lag.count else None),
            },
            # waiting for a free or newly opened connection: part of the latency the user sees, not generator lag
            "connection_wait_ms": {"p50": _ms(wait.percentile(50)), "p99": _ms(wait.percentile(99))},
            "by_payload": (
                {names[k]: h.summary_ms() for k, h in sorted(part["by_payload"].items())}
                if len(names) > 1
                else {names[0]: hist.summary_ms()}
            ),
            "inflight_samples": [[round(t, 3), q] for t, q in part["inflight_samples"]],
            "connections_peak": part["connections_peak"],
            "workers": part["workers"],
            "generator_cpu_s": round(part["cpu_s"], 4),
        }
        if part["stopped"]:
            step["stopped_early"] = part["stopped"]
        if unsent:
            step["schedule_lag_ms"]["p99"] = max(step["schedule_lag_ms"]["p99"] or 0.0, 1e6)
        if spec["kind"] == "baseline" or spec["index"] == 0:
            step["service_samples_ms"] = [round(x * 1000, 4) for x in part["service_samples"]]
        self._add_queue_trends(step, part["inflight_samples"], hold_s)
        return step

    def _add_queue_trends(self, step: dict, inflight_samples: list, hold_s: float) -> None:
        """``step["queue"]``: the server's queue trend when it is scraped, else the client's in-flight trend."""
        trend = queue_trend([(t, q) for t, q in inflight_samples if 0.0 <= t <= hold_s], hold_s)
        if trend:
            trend["source"] = "client in-flight"
        scraper = self.scraper
        if scraper and scraper.urls:
            in_hold = [(t, s) for t, s in scraper.samples if -scraper.interval <= t <= hold_s]
            server = summarize_server_metrics(in_hold)
            if scraper.errors:
                server["errors"] = list(scraper.errors)
                scraper.errors = []
            step["server"] = server
            server_queue = [(t, v) for t, v in server.get("queue_samples", []) if t >= 0.0]
            server_trend = queue_trend(server_queue, hold_s, blocks=6)
            if server_trend:
                queues = [
                    n for n in server.get("names", []) if KNOWN_METRICS.get(n, ("",))[0] in ("queue", "queue_server")
                ]
                server_trend["source"] = "server queue (%s)" % ", ".join(queues)
                step["client_queue"] = trend
                trend = server_trend
        step["queue"] = trend

    async def run_closed(self, concurrency: int, duration: float, max_requests: int = 1_000_000) -> dict:
        """Closed-loop comparison: ``concurrency`` users send back-to-back and time from the *actual* send.

        This is what coordinated omission looks like: a stall delays only the few requests in flight.
        """
        loop = asyncio.get_running_loop()
        self.pool.loop = loop
        hist = LatencyHistogram()
        end = loop.time() + duration
        counter = {"n": 0, "err": 0}

        async def user() -> None:
            while loop.time() < end and counter["n"] < max_requests:
                counter["n"] += 1
                _idx, req = self.target.pick(self.payload_rng, counter["n"])
                t = loop.time()
                fut = loop.create_future()
                ex = Exchange(t, 0, True, functools.partial(_wake, fut))
                self.pool.submit(ex, req)
                try:
                    await asyncio.wait_for(asyncio.shield(fut), self.target.timeout)
                except TIMEOUTS:
                    self.pool.expire(ex)
                if ex.kind is None and ex.done:
                    hist.record(ex.end - t)
                else:
                    counter["err"] += 1

        await asyncio.gather(*(user() for _step in range(concurrency)))
        return {
            "concurrency": concurrency,
            "requests": counter["n"],
            "errors": counter["err"],
            "achieved_rps": round(hist.count / duration, 3),
            "latency_ms": hist.summary_ms(),
        }

    def close(self) -> None:
        self.pool.close()
        if self.shares is not None:
            self.shares.close()
            self.shares = None


class _Phase:
    """One share of one step of the open-loop schedule, from the first send to the drain; it returns a step part.

    The pool calls :meth:`on_response` for every request that ends; a housekeeping task sweeps timeouts in send
    order, samples the in-flight count and applies the early-stop rule. Share ``share`` of ``of`` sends the given
    ``offsets`` (every ``of``-th send time of the step) from the common start ``spec["start"]`` (wall clock).
    ``shared`` (the host's :class:`SharedState`, with several worker processes) carries the early-stop flag between
    them and this worker's live counters to the parent.
    """

    __slots__ = (
        "by_payload",
        "cpu0",
        "drained",
        "errors",
        "finished",
        "hist",
        "hold",
        "hold_end",
        "hold_start",
        "index",
        "inflight",
        "inflight_samples",
        "judge_next",
        "judged",
        "judged_bad",
        "keep",
        "lags",
        "loop",
        "measured",
        "multi",
        "names",
        "of",
        "offsets",
        "ok",
        "ok_in_window",
        "record",
        "requests",
        "runner",
        "send_order",
        "sending",
        "sent",
        "seq",
        "service_samples",
        "shared",
        "slot",
        "stop_helpers",
        "stop_rule",
        "stopped",
        "t0",
        "timeout",
        "waits",
        "warmup",
        "watched",
    )

    def __init__(
        self, runner: Runner, spec: dict, offsets: list, share: int = 0, of: int = 1, shared=None, slot: int = 0
    ) -> None:
        loop = asyncio.get_running_loop()
        self.runner = runner
        self.loop = loop
        self.warmup = spec["warmup"]
        self.hold = spec["hold"]
        self.index = spec["index"]
        self.stop_rule = dict(spec["stop_rule"])
        if self.stop_rule:  # this share sees one request in ``of``
            self.stop_rule["min_requests"] = max(1, math.ceil(self.stop_rule.get("min_requests", 100) / of))
        self.offsets = offsets
        self.of, self.seq = of, spec["seq"] + share
        self.shared, self.slot = shared, slot
        self.timeout = runner.target.timeout
        self.t0 = loop.time() + (spec["start"] - time.time())
        self.hold_start = self.t0 + self.warmup
        self.hold_end = self.hold_start + self.hold  # moves to the stop time when the early-stop rule ends the hold
        self.record = runner.record_requests
        self.requests: list = []
        self.names = runner.target.names
        self.multi = len(self.names) > 1
        self.keep = runner.keep_samples
        self.cpu0 = time.process_time()
        # counters the responses update
        self.inflight = 0
        self.sent = 0
        self.finished = 0
        self.ok_in_window = 0  # successes that ended inside the hold window: the achieved rate
        self.measured = 0  # requests sent inside the hold window, ended
        self.ok = 0
        self.errors = dict.fromkeys(ERROR_KINDS, 0)
        self.hist = LatencyHistogram()
        self.by_payload: dict = {}  # payload index -> LatencyHistogram, for a mix of payloads
        self.lags: list = []  # send lag of the measured requests
        self.waits: list = []  # connection wait of the measured requests
        self.service_samples: list = []  # the first ``keep`` successful latencies: the baseline's service times
        self.inflight_samples: list = []  # (seconds since the hold started, requests in flight)
        # the housekeeping task's queues and the early-stop rule's progress through them
        self.send_order: collections.deque = collections.deque()  # sent, in intended-time order: the timeout sweep
        self.watched: list = []  # measured requests in send order, when there is an early-stop rule
        self.judge_next = 0  # the first watched request not judged yet
        self.judged = 0
        self.judged_bad = 0  # judged requests that took over the limit or failed
        self.stopped: dict = {}  # at_s and reason, once the early-stop rule ended the hold
        self.sending = True
        self.drained = asyncio.Event()  # set by the last response after the schedule ended
        self.stop_helpers = asyncio.Event()  # set after the drain

    async def run(self) -> dict:
        self.runner.phase = self
        housekeeping = asyncio.ensure_future(self._housekeeping())
        unsent = await self._send()
        if self.stopped:
            unsent = 0
            self.hold_end = min(self.hold_end, self.loop.time())
        self.sending = False
        await self._drain(housekeeping)
        self.runner.phase = None
        return self.part(unsent)

    def on_response(self, ex: Exchange) -> None:
        """Count one request that ended: answered, failed or timed out (the pool's callback)."""
        end = ex.end
        latency = end - ex.intended
        failure = ex.kind
        self.inflight -= 1
        self.finished += 1
        if failure is None and self.hold_start <= end < self.hold_end:
            self.ok_in_window += 1
        if ex.measured:
            self.measured += 1
            self.lags.append(ex.sent - ex.intended)
            self.waits.append((ex.start if ex.start is not None else end) - ex.sent)
            if failure is None:
                self.ok += 1
                self.hist.record(latency)
                if len(self.service_samples) < self.keep:
                    self.service_samples.append(latency)
                if self.multi:
                    payload_hist = self.by_payload.get(ex.pidx)
                    if payload_hist is None:
                        payload_hist = self.by_payload[ex.pidx] = LatencyHistogram()
                    payload_hist.record(latency)
            else:
                self.errors[failure] += 1
                if failure == "timeout":
                    self.hist.record(latency)  # the user waited at least this long: keep it in the percentiles
        if self.record:
            self.requests.append(
                (
                    self.index,
                    round(ex.intended - self.t0, 6),
                    round(ex.sent - ex.intended, 6),
                    ex.status,
                    round(latency, 6),
                    failure or "",
                    self.names[ex.pidx],
                    ex.measured,
                )
            )
        if not self.sending and self.inflight == 0:
            self.drained.set()

    async def _send(self) -> int:
        """Send the schedule (until it ends, its deadline passes or the early-stop rule fires); returns the unsent."""
        runner = self.runner
        loop = self.loop
        clock = loop.time
        offsets = self.offsets
        pick = runner.target.pick
        prng = runner.payload_rng
        requests = runner.target.requests
        only = requests[0][0] if len(requests) == 1 and len(requests[0]) == 1 else None  # one payload, one variant
        submit = runner.pool.submit
        on_response = self.on_response
        send_order = self.send_order
        watched = self.watched
        watch = bool(self.stop_rule)
        nap = runner.nap
        hist = self.hist
        t0 = self.t0
        hold_start = self.hold_start
        hold_end = self.hold_end
        seq, stride = self.seq, self.of
        n = len(offsets)
        i = 0
        deadline = t0 + self.warmup + self.hold + 5.0
        while i < n:  # bounded: every pass either sends, sleeps towards a send time, or hits the deadline
            now = loop.time()
            if now > deadline or self.stopped:
                break
            due = t0 + offsets[i]
            if due > now:
                # epoll sleeps in whole milliseconds, rounded up: sleep to ~1 ms before the send, then yield to the
                # loop (I/O keeps flowing) until it is due, so the send lag stays well under 1 ms. In that last
                # stretch naps of up to 0.1 ms between yields keep the wait from spinning a core: each ends about
                # NAP_OVERSHOOT before the send time, as the kernel wakes a sleeper that much late. A nap blocks the
                # loop, so a response that comes meanwhile is timed up to a nap late: naps are taken when no request
                # is in flight, or when the step's latencies are long enough (NAP_LATENCY) for that not to matter.
                if due - now > 0.0015:
                    await asyncio.sleep(due - now - 0.0012)
                else:
                    await asyncio.sleep(0)
                    left = due - clock() - NAP_OVERSHOOT
                    if nap and left > 0.00002 and (self.inflight == 0 or hist.total > NAP_LATENCY * hist.count):
                        time.sleep(min(nap, left))
                continue
            while i < n:  # every request due by now: never one before its time (latency counts from it)
                intended = t0 + offsets[i]
                if intended > now:
                    break
                if only is None:
                    pidx, req = pick(prng, seq + stride * i)
                else:
                    pidx, req = 0, only
                ex = Exchange(intended, pidx, hold_start <= intended < hold_end, on_response)
                ex.sent = clock()
                self.inflight += 1
                self.sent += 1
                send_order.append(ex)
                if ex.measured and watch:
                    watched.append(ex)
                submit(ex, req)
                i += 1
        return n - i

    async def _housekeeping(self) -> None:
        """Sweep timeouts in send order, sample the in-flight count, apply the early-stop rule; ends after the drain."""
        loop = self.loop
        send_order = self.send_order
        expire = self.runner.pool.expire
        interval = self.runner.sample_interval
        tick = max(0.005, min(interval, self.timeout / 20.0))
        next_sample = loop.time()
        for _tick in range(int((self.warmup + self.hold + self.timeout + 10) / tick) + 10):
            now = loop.time()
            while send_order and (send_order[0].done or send_order[0].intended + self.timeout <= now):
                ex = send_order.popleft()
                if not ex.done:
                    expire(ex)
            if self.stop_helpers.is_set() and not send_order:
                return
            if now >= next_sample and not self.stop_helpers.is_set():
                self.inflight_samples.append((now - self.hold_start, self.inflight))
                next_sample += interval
            if self.stop_rule and not self.stopped and self.sending and now >= self.hold_start:
                self._apply_stop_rule(now)
            if self.shared is not None:
                self.shared.publish(self.slot, self.sent, self.finished, self.inflight, sum(self.errors.values()))
            await asyncio.sleep(tick)

    def _apply_stop_rule(self, now: float) -> None:
        """Judge the watched requests now older than the limit; end the hold when too many of them are bad."""
        shared = self.shared
        if shared is not None and shared.stop.value:  # another worker's rule ended the hold: so does this one's
            self.stopped.update(at_s=round(now - self.hold_start, 3), reason="")
            return
        # every measured request older than the limit is either done (latency known) or still waiting (over it)
        rule = self.stop_rule
        limit = rule["limit_s"]
        watched = self.watched
        i = self.judge_next
        while i < len(watched) and watched[i].intended <= now - limit:
            ex = watched[i]
            self.judged += 1
            if not ex.done or ex.kind is not None or ex.end - ex.intended > limit:
                self.judged_bad += 1
            i += 1
        self.judge_next = i
        n, bad = self.judged, self.judged_bad
        held = now - self.hold_start
        if held >= rule.get("min_hold_s", 1.0) and n >= rule.get("min_requests", 100) and bad > rule["fraction"] * n:
            self.stopped.update(
                at_s=round(held, 3),
                reason="stopped %.1f s into the %g s hold: %d of %d requests (%.1f%%) took over %s or failed (%s)"
                % (held, self.hold, bad, n, 100.0 * bad / n, _fmt_s(limit), rule.get("reason", "")),
            )
            if shared is not None:
                shared.stop.value = self.slot + 1

    async def _drain(self, housekeeping) -> None:
        """Let the hold window end, wait for the requests still out (bounded by the timeout), stop housekeeping."""
        loop = self.loop
        if not self.stopped and loop.time() < self.hold_end:
            await asyncio.sleep(self.hold_end - loop.time())
        if self.inflight > 0:
            with contextlib.suppress(*TIMEOUTS):
                await asyncio.wait_for(self.drained.wait(), self.timeout + 2.0)
        self.stop_helpers.set()
        with contextlib.suppress(*TIMEOUTS, asyncio.CancelledError):
            await asyncio.wait_for(housekeeping, 10.0)
        for ex in list(self.send_order):  # anything left after the drain timed out
            self.runner.pool.expire(ex)

    def part(self, unsent: int) -> dict:
        """This share's counts, histograms and samples: a step part that :func:`merge_parts` adds to the others'."""
        lag, wait = LatencyHistogram(), LatencyHistogram()
        lag.record_many(self.lags)
        wait.record_many(self.waits)
        return {
            "workers": 1,
            "sent": self.sent,
            "unsent": unsent,
            "measured": self.measured,
            "ok": self.ok,
            "ok_in_window": self.ok_in_window,
            "errors": self.errors,
            "hist": self.hist,
            "by_payload": self.by_payload,
            "lag": lag,
            "wait": wait,
            "service_samples": self.service_samples,
            "inflight_samples": self.inflight_samples,
            "stopped": self.stopped,
            "held_s": self.hold_end - self.hold_start,
            "connections_peak": self.runner.pool.peak,
            "cpu_s": time.process_time() - self.cpu0,
            "requests": self.requests,
        }


_SUMMED = ("workers", "sent", "unsent", "measured", "ok", "ok_in_window", "connections_peak", "cpu_s")


def merge_parts(parts: list, keep: int) -> dict:
    """One step part from its shares' parts: counts and histograms add, in-flight series add, the first stop wins.

    Histogram buckets add exactly, so the merged percentiles are those of one histogram of every request.
    """
    if len(parts) == 1:
        return parts[0]
    out = {key: sum(p[key] for p in parts) for key in _SUMMED}
    out["errors"] = {kind: sum(p["errors"].get(kind, 0) for p in parts) for kind in ERROR_KINDS}
    for key in ("hist", "lag", "wait"):
        out[key] = functools.reduce(LatencyHistogram.merge, (p[key] for p in parts), LatencyHistogram())
    out["by_payload"] = {}
    for p in parts:
        for pidx, hist in p["by_payload"].items():
            out["by_payload"].setdefault(pidx, LatencyHistogram()).merge(hist)
    samples = itertools.zip_longest(*(p["service_samples"] for p in parts))
    out["service_samples"] = [x for group in samples for x in group if x is not None][:keep]
    out["inflight_samples"] = _sum_series([p["inflight_samples"] for p in parts])
    stops = [p["stopped"] for p in parts if p["stopped"]]
    out["stopped"] = dict(min(stops, key=lambda s: (not s.get("reason"), s["at_s"]))) if stops else {}
    out["held_s"] = max(p["held_s"] for p in parts)
    out["requests"] = sorted((row for p in parts for row in p["requests"]), key=lambda row: (row[0], row[1]))
    return out


def _sum_series(series: list) -> list:
    """The sum of step functions sampled at different instants, taken at the instants of the longest one."""
    base = max(series, key=len)
    at = [0] * len(series)
    out = []
    for t, _value in base:
        total = 0
        for k, samples in enumerate(series):
            if not samples:
                continue
            while at[k] + 1 < len(samples) and samples[at[k] + 1][0] <= t:
                at[k] += 1
            total += samples[at[k]][1]
        out.append((t, total))
    return out


def _wake(fut, _ex) -> None:
    if not fut.done():
        fut.set_result(None)


def _fmt_s(seconds: float) -> str:
    return "%.0f ms" % (seconds * 1000.0) if seconds < 10 else "%.1f s" % seconds


def _ms(v):
    return None if v is None else round(v * 1000.0, 4)


# ---------------------------------------------------------------------------------------------------------------------
# The capacity test
# ---------------------------------------------------------------------------------------------------------------------


def _given(options: dict) -> dict:
    """The options that were set: None means unset, at the top, in noisy_neighbour and in payload_mix items."""
    out = {k: v for k, v in options.items() if v is not None}
    if isinstance(out.get("noisy_neighbour"), dict):
        out["noisy_neighbour"] = _given(out["noisy_neighbour"])
    if isinstance(out.get("payload_mix"), list):
        out["payload_mix"] = [_given(p) if isinstance(p, dict) else p for p in out["payload_mix"]]
    return out


def normalize_config(options: dict, search: bool = True) -> dict:
    """Defaults filled in, every option checked against its rule, the SLA parsed; raises CapacityError listing every
    problem.

    ``search=False`` skips the step-plan checks (a noisy-neighbour run holds fixed rates).
    """
    cfg = dict(DEFAULTS)
    cfg.update(_given(options))
    raise_problems(option_problems(cfg, search))
    cfg["sla_obj"] = parse_sla(cfg["sla"])
    return cfg


def _holds(cfg: dict) -> dict:
    hold = float(cfg["hold"])
    knee = float(cfg["knee_hold"]) if cfg.get("knee_hold") else hold
    return {"step": hold, "knee": knee, "confirm": float(cfg["confirm_hold"]) if cfg.get("confirm_hold") else knee}


def _neighbour_plan(cfg: dict) -> dict:
    """Service B's options (from noisy_neighbour, the rest from A's) and the run's shape."""
    nn = dict(cfg["noisy_neighbour"])
    b_opts = {k: v for k, v in cfg.items() if k not in NEIGHBOUR_KEYS and k not in ("sla_obj", "noisy_neighbour")}
    b_opts.update({k: nn[k] for k in NEIGHBOUR_KEYS if nn.get(k) is not None})
    b_opts.setdefault("service", nn.get("url"))
    b_opts["plan"] = "none"
    b_opts["noisy_neighbour"] = None
    return {
        "b": b_opts,
        "b_rps": float(nn["rps"]),
        "a_rps": float(nn["a_rps"]) if nn.get("a_rps") else None,
        "multipliers": [float(m) for m in nn.get("multipliers") or (1.0, 2.0, 3.0)],
        "hold": float(nn.get("hold") or cfg["hold"]),
        "warmup": float(nn.get("warmup") if nn.get("warmup") is not None else cfg["warmup"]),
    }


async def run_capacity_test(options: dict, progress=None, check_only: bool = False) -> dict:
    """Probe, then run the step plan, judge every step, and summarise: capacity, SLA sentence, table row, prediction.

    With ``noisy_neighbour`` the service is then held at its sustained rate (or ``a_rps``) while the neighbour steps
    through its multipliers (:func:`run_noisy_neighbour`); ``plan: none`` runs only that.
    """
    cfg = normalize_config(options)
    sla = cfg["sla_obj"]
    warnings: list = []
    holds = _holds(cfg)
    plan = None
    budget = 0.0
    if cfg["plan"] != "none":
        plan = build_plan(
            cfg["plan"],
            start_rps=float(cfg["start_rps"]),
            step_pct=float(cfg["step_pct"]),
            max_rps=float(cfg["max_rps"]) if cfg.get("max_rps") else None,
            max_steps=int(cfg["max_steps"]),
            steps_after_knee=int(cfg["steps_after_knee"]),
            growth=float(cfg["growth"]),
            resolution=float(cfg["resolution"]),
            confirm=bool(cfg["confirm"]),
            max_confirmations=int(cfg["max_confirmations"]),
        )
        budget = check_time_budget(
            plan,
            float(cfg["warmup"]),
            holds["step"],
            0,
            float(cfg["initial_warmup"]),
            bool(cfg.get("baseline_rps")),
            holds["knee"],
            holds["confirm"],
        )
    neighbour = _neighbour_plan(cfg) if cfg.get("noisy_neighbour") else None
    if neighbour:
        budget += (len(neighbour["multipliers"]) + 2) * (neighbour["warmup"] + neighbour["hold"])
    if budget > float(cfg["time_limit"]):
        if plan is not None and not neighbour:
            check_time_budget(
                plan,
                float(cfg["warmup"]),
                holds["step"],
                float(cfg["time_limit"]),
                float(cfg["initial_warmup"]),
                bool(cfg.get("baseline_rps")),
                holds["knee"],
                holds["confirm"],
            )
        raise CapacityError(
            "the test needs up to %.0f s (%s), more than time_limit %.0f s; raise time_limit or shorten the holds"
            % (
                budget,
                "capacity search plus noisy-neighbour run" if plan is not None else "noisy-neighbour run",
                float(cfg["time_limit"]),
            )
        )
    target = build_target(cfg)
    target = await prepare_target(cfg, target)
    status, probe_ms = await _probe(cfg, target)
    scraper = None
    if cfg.get("metrics_urls"):
        scraper = Scraper(cfg["metrics_urls"], float(cfg["metrics_interval"]), cfg.get("metrics_labels") or {})
        warnings.extend(await scraper.probe())
    remote = None
    generator = {"workers": generator_workers(cfg), "event_loop": cfg["event_loop"]}
    if cfg.get("generators"):
        from ansible_collections.gpu.mig.plugins.module_utils._capacity.remote import RemoteGenerators

        remote = RemoteGenerators(cfg["generators"], cfg["generator_token"], float(cfg["max_clock_offset"]))
        hosts = await remote.open(target, cfg)
        loops = sorted({h["event_loop"] for h in hosts})
        generator = {"workers": sum(h["workers"] for h in hosts), "event_loop": ", ".join(loops), "hosts": hosts}
        if check_only:
            remote.close()
    result = {
        "schema": SCHEMA,
        "service": _service_meta(cfg, target),
        "sla": sla.to_dict(),
        "plan": {
            "kind": cfg["plan"],
            "description": plan.describe() if plan is not None else "none: no capacity search",
            "worst_case_s": round(budget, 1),
            "holds_s": holds,
        },
        "config": _public_config(cfg),
        "probe": {"status": status, "latency_ms": probe_ms},
        # the load generators: processes on this host (or on each generator host) and their event loop
        "generator": generator,
        "warnings": warnings,
    }
    if neighbour:
        b_cfg = normalize_config(neighbour["b"], search=False)
        await _probe(b_cfg, await prepare_target(b_cfg, build_target(b_cfg)))
    if check_only:
        result["checked"] = True
        return result

    started = time.time()
    t_start = time.monotonic()
    steps: list = []
    requests: list = []
    if plan is not None:
        steps, requests = await _run_plan(cfg, plan, target, scraper, holds, warnings, progress, t_start, remote)
    elif remote is not None:
        remote.close()
    for s in steps:
        if s["verdict"]["void"]:
            warnings.append("step %d at %g RPS is void: %s" % (s["index"], s["offered_rps"], s["verdict"]["summary"]))
        if (s.get("server") or {}).get("errors"):
            warnings.append("step %d: metrics scrape errors: %s" % (s["index"], "; ".join(s["server"]["errors"][:3])))
    if scraper and steps and not any((s.get("server") or {}).get("available") for s in steps):
        warnings.append(
            "no known server metric was scraped during any step; queue growth was judged from client in-flight requests"
        )
    meta = result["service"]
    if plan is not None:
        capacity = summarize_capacity(steps, sla)
        prediction = predict_from_steps(steps, cfg, capacity, sla)
        if prediction.get("warning"):
            warnings.append(prediction["warning"])
        result.update(
            steps=steps,
            capacity=capacity,
            prediction=prediction,
            sla_sentence=sla_sentence(meta["service"], capacity, sla, meta.get("profile"), meta.get("gpu")),
            table_row=table_row(meta, capacity, sla, prediction, cfg.get("target_rps")),
        )
    if neighbour:
        a_rps = neighbour["a_rps"] or (result.get("capacity") or {}).get("sustained_rps")
        if not a_rps:
            warnings.append("noisy-neighbour run skipped: no sustained rate was found to hold the service at")
        else:
            result["noisy_neighbour"] = await run_noisy_neighbour(
                cfg,
                a_rps,
                neighbour["b"],
                neighbour["b_rps"],
                neighbour["multipliers"],
                neighbour["hold"],
                neighbour["warmup"],
                progress=progress,
            )
            if plan is None:
                result["sla_sentence"] = result["noisy_neighbour"]["sentence"]
    result.update(
        started_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        duration_s=round(time.monotonic() - t_start, 2),
    )
    if cfg.get("record_requests") and plan is not None:
        result["requests_columns"] = [
            "step",
            "intended_s",
            "send_lag_s",
            "status",
            "latency_s",
            "error",
            "payload",
            "measured",
        ]
        result["requests"] = requests
    return result


async def _probe(cfg: dict, target: Target) -> tuple:
    """The first request: the endpoint must answer 2xx before any load. Returns ``(status, latency_ms)``."""
    _pidx, req_bytes = target.pick(random.Random(0), 0)
    head, _sep, body = req_bytes.partition(b"\r\n\r\n")
    hdrs = {}
    for line in head.split(b"\r\n")[1:]:
        k, _sep, v = line.decode("latin-1").partition(":")
        if k.lower() not in ("host", "content-length", "user-agent", "accept"):
            hdrs[k.strip()] = v.strip()
    t = time.monotonic()
    status, rbody = await http_once(
        target.url,
        target.method,
        body if body or target.method != "GET" else None,
        hdrs,
        timeout=target.timeout,
        validate_certs=cfg.get("validate_certs", True),
    )
    probe_ms = round((time.monotonic() - t) * 1000.0, 3)
    if not 200 <= status < 300:
        raise CapacityError(
            "the first probe of %s %s returned HTTP %d (%s); fix the URL, payload or headers before measuring capacity"
            % (target.method, target.url, status, _snippet(rbody))
        )
    return status, probe_ms


def generator_workers(cfg: dict) -> int:
    """The generator processes a test runs on this host: ``workers``, or with 0 the default for its cores."""
    return int(cfg["workers"]) or default_workers()


def _stop_rule(sla) -> dict:
    """Early stop of a clearly failing step: the primary percentile above ``hard_factor`` x its limit."""
    pct, limit = sla.primary()
    tail = 1.0 - pct / 100.0
    return {
        "limit_s": sla.hard_factor * limit / 1000.0,
        # well past the tail share, with enough requests that a short burst cannot trigger it
        "fraction": max(2.0 * tail, tail + 0.02),
        "min_requests": max(100, math.ceil(20.0 / tail)),
        "min_hold_s": 1.0,
        "reason": "%s would be over %g x its %g ms limit: a hard break" % (pct_name(pct), sla.hard_factor, limit),
    }


async def _run_plan(cfg, plan, target, scraper, holds, warnings, progress, t_start, shares=None) -> tuple:
    """The step plan: search steps, knee steps and confirmations, each judged; a confirmation pools its rate's runs.

    Returns ``(steps, recorded requests)``.
    """
    sla = cfg["sla_obj"]
    runner = Runner(
        target,
        cfg["arrival"],
        int(cfg["seed"]),
        int(cfg["max_connections"]),
        float(cfg["sample_interval"]),
        scraper,
        bool(cfg["record_requests"]),
        progress,
        workers=generator_workers(cfg),
        event_loop=cfg["event_loop"],
        shares=shares,
    )
    limit = float(cfg["time_limit"])
    steps: list = []
    history: list = []
    baseline = None
    warmup = float(cfg["warmup"])
    rule = _stop_rule(sla) if cfg.get("early_stop", True) else None

    def emit(ev):
        if progress:
            progress(ev)

    try:
        if float(cfg["initial_warmup"]) > 0:
            emit(
                {
                    "event": "phase",
                    "kind": "warmup",
                    "rate": float(cfg["start_rps"]),
                    "duration": float(cfg["initial_warmup"]),
                }
            )
            w = await runner.run_phase(
                float(cfg["start_rps"]), 0.0, float(cfg["initial_warmup"]), index=-1, kind="warmup"
            )
            if w["measured"] and w["ok"] == 0:
                warnings.append("the initial warm-up got no successful response (%s)" % w["errors"])
        index = 0
        if cfg.get("baseline_rps"):
            emit(
                {
                    "event": "phase",
                    "kind": "baseline",
                    "rate": float(cfg["baseline_rps"]),
                    "duration": warmup + holds["step"],
                }
            )
            b = await runner.run_phase(float(cfg["baseline_rps"]), warmup, holds["step"], index=index, kind="baseline")
            b["role"] = "baseline"
            b["verdict"] = evaluate_step(b, sla, None)
            steps.append(b)
            baseline = b
            index += 1
            emit({"event": "step", "step": b})
        for _step in range(1000):
            nxt = plan.next_step(history)
            if nxt is None:
                break
            rate, role = nxt
            hold = holds[role]
            if time.monotonic() - t_start + warmup + hold > limit:
                warnings.append(
                    "time_limit %.0f s reached before the plan finished; next step would have been %g RPS"
                    % (limit, rate)
                )
                break
            emit({"event": "phase", "kind": role, "index": index, "rate": rate, "duration": warmup + hold})
            s = await runner.run_phase(rate, warmup, hold, index=index, kind="step", stop_rule=rule)
            outcome = judge_step(s, steps, sla, baseline, role)
            if baseline is None and not s["verdict"]["void"]:
                baseline = s
            steps.append(s)
            history.append(outcome)
            emit({"event": "step", "step": s})
            index += 1
            if outcome.hard_break:
                emit({"event": "note", "message": "hard SLA break at %g RPS" % rate})
            if float(cfg.get("cooldown") or 0) > 0:
                await asyncio.sleep(float(cfg["cooldown"]))
    finally:
        runner.close()
    return steps, runner.requests


def predict_from_steps(steps: list, cfg: dict, capacity: dict, sla) -> dict:
    """Erlang-C / Allen-Cunneen prediction from the low-load step's service times and the concurrency limit."""
    base = next((s for s in steps if s.get("service_samples_ms")), None)
    if not base:
        return {"available": False, "warning": "no low-load step with successful requests: no queueing prediction"}
    samples = [x / 1000.0 for x in base["service_samples_ms"]]
    mean, cs2 = service_stats(samples)
    source = "client latency at %g RPS" % base["offered_rps"]
    overhead = 0.0
    base_exec = (base.get("server") or {}).get("exec_ms")
    if base_exec and 0 < base_exec / 1000.0 <= mean:
        # the server reports execution time: the rest of the low-load latency is a fixed overhead (network,
        # parsing) that holds no concurrency slot. Execution time excludes queueing, so every passing step adds
        # samples to its mean (a mean of n exponential samples is only good to 1/sqrt(n)).
        overhead = mean - base_exec / 1000.0
        pooled = [
            (s["server"]["exec_ms"], s["server"].get("exec_requests") or 1)
            for s in steps
            if (s.get("server") or {}).get("exec_ms") and s.get("verdict") and s["verdict"]["passed"]
        ] or [(base_exec, 1)]
        n_exec = sum(n for _e, n in pooled)
        exec_mean = sum(e * n for e, n in pooled) / n_exec / 1000.0
        shape = [max(x - overhead, 1e-6) for x in samples]
        smean = sum(shape) / len(shape)
        samples = [x * exec_mean / smean for x in shape]  # low-load shape, pooled mean
        mean, cs2 = service_stats(samples)
        source = "server execution time %.3f ms (%d requests over the passing steps); shape from low-load latency" % (
            exec_mean * 1000.0,
            n_exec,
        )
    c = cfg.get("concurrency")
    estimated = False
    if not c:
        if capacity.get("saturation_rps"):
            c = max(1, round(capacity["saturation_rps"] * mean))
            estimated = True
        else:
            return {
                "available": False,
                "service_ms": round(mean * 1000, 3),
                "cs2": round(cs2, 4),
                "warning": "no queueing prediction: give the concurrency limit (option concurrency); no step saturated to estimate it",
            }
    pct, limit = sla.primary()
    ca2 = 1.0 if cfg.get("arrival") == "poisson" else 0.0
    out = predict_capacity(int(c), mean, limit - overhead * 1000.0, pct / 100.0, cs2, ca2, samples)
    out["limit_ms"] = limit
    out["overhead_ms"] = round(overhead * 1000.0, 3)
    out["service_source"] = source
    out["available"] = True
    out["c_estimated"] = estimated
    out["baseline_rps"] = base["offered_rps"]
    if capacity.get("sustained_rps") and out.get("rate_rps"):
        out["measured_rps"] = capacity["sustained_rps"]
        out["error_pct"] = round(100.0 * (capacity["sustained_rps"] - out["rate_rps"]) / out["rate_rps"], 1)
    return out


def _service_meta(cfg: dict, target: Target) -> dict:
    return {
        "service": cfg.get("service") or target.url,
        "url": target.url,
        "protocol": getattr(target, "protocol", "generic"),
        "model": cfg.get("model"),
        "version": cfg.get("model_version"),
        "profile": cfg.get("profile"),
        "gpu": cfg.get("gpu"),
        "batch": cfg.get("batch"),
        "limits": cfg.get("limits") or {},
        "host": cfg.get("host"),
        "payloads": list(target.names),
    }


def _public_config(cfg: dict) -> dict:
    skip = {"sla_obj", "payload", "headers", "payload_mix", "template", "generator_token"}
    out = {k: v for k, v in cfg.items() if k not in skip}
    out["headers"] = sorted((cfg.get("headers") or {}).keys())  # names only: values may be secrets
    out["payload_mix"] = [p.get("name") for p in cfg.get("payload_mix") or []]
    if cfg.get("noisy_neighbour"):
        out["noisy_neighbour"] = _public_config(dict(cfg["noisy_neighbour"]))
    return out


async def run_noisy_neighbour(
    a_options: dict,
    a_rps: float,
    b_options: dict,
    b_rps: float,
    multipliers=(1.0, 2.0, 3.0),
    hold: float = 30.0,
    warmup: float = 5.0,
    progress=None,
) -> dict:
    """Hold A at ``a_rps`` while B steps through ``multipliers`` x ``b_rps``; A's latency before, during and after."""
    phases = {"a_rps": a_rps, "rps": b_rps, "multipliers": list(multipliers), "hold": hold, "warmup": warmup}
    raise_problems(field_problems(phases, NEIGHBOUR_RULES, "noisy_neighbour."))
    a_cfg, b_cfg = normalize_config(a_options, search=False), normalize_config(b_options, search=False)
    sla = a_cfg["sla_obj"]
    ta, tb = build_target(a_cfg), build_target(b_cfg)
    ta, tb = await prepare_target(a_cfg, ta), await prepare_target(b_cfg, tb)
    await _probe(a_cfg, ta)
    await _probe(b_cfg, tb)
    ra = Runner(ta, a_cfg["arrival"], int(a_cfg["seed"]), progress=progress)
    rb = Runner(tb, b_cfg["arrival"], int(b_cfg["seed"]) + 7)
    phases = []
    idx = 0
    try:
        phases.append(("before", await ra.run_phase(a_rps, warmup, hold, idx, "noisy"), None))
        for m in multipliers:
            idx += 1
            sa, sb = await asyncio.gather(
                ra.run_phase(a_rps, warmup, hold, idx, "noisy"), rb.run_phase(b_rps * m, warmup, hold, idx, "neighbour")
            )
            phases.append(("during x%g" % m, sa, sb))
        idx += 1
        phases.append(("after", await ra.run_phase(a_rps, warmup, hold, idx, "noisy"), None))
    finally:
        ra.close()
        rb.close()
    rows = []
    held = True
    for name, sa, sb in phases:
        sa["verdict"] = evaluate_step(sa, sla, None)
        # the question is A's latency SLA (and errors), not where A's own knee is
        ok = not sa["verdict"]["void"] and all(
            c["passed"] for c in sa["verdict"]["checks"] if c["name"].startswith("latency_p") or c["name"] == "errors"
        )
        held = held and ok
        rows.append(
            {
                "phase": name,
                "a_rps": a_rps,
                "a_achieved_rps": sa["achieved_rps"],
                "a_p95_ms": sa["latency_ms"]["p95"],
                "a_p99_ms": sa["latency_ms"]["p99"],
                "a_errors": sum(sa["errors"].values()),
                "a_within_sla": ok,
                "b_rps": None if sb is None else sb["offered_rps"],
                "b_achieved_rps": None if sb is None else sb["achieved_rps"],
                "b_p99_ms": None if sb is None else sb["latency_ms"]["p99"],
                "why": sa["verdict"]["summary"],
            }
        )
    name_a = a_cfg.get("service") or ta.url
    name_b = b_cfg.get("service") or tb.url
    before = rows[0]["a_p99_ms"]
    worst = max((r for r in rows[1:-1]), key=lambda r: r["a_p99_ms"] or 0)
    sentence = (
        "%s at %g RPS %s its SLA while %s stepped to %gx %g RPS: p99 %s ms before, up to %s ms during (%s), %s ms after."
        % (
            name_a,
            a_rps,
            "stayed within" if held else "did NOT stay within",
            name_b,
            max(multipliers),
            b_rps,
            before,
            worst["a_p99_ms"],
            worst["phase"],
            rows[-1]["a_p99_ms"],
        )
    )
    return {
        "schema": SCHEMA + "/noisy",
        "within_sla": held,
        "sentence": sentence,
        "phases": rows,
        "sla": sla.to_dict(),
        "a": name_a,
        "b": name_b,
    }


def new_event_loop(name: str = "asyncio"):
    """A fresh event loop: the standard one, or uvloop's when ``name`` is ``uvloop`` (and it is installed)."""
    if name == "uvloop":
        try:
            import uvloop
        except ImportError:
            raise CapacityError(
                "event_loop uvloop: uvloop is not installed for %s on this load host; install it there "
                "(pip install uvloop) or use event_loop asyncio" % sys.executable
            ) from None
        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run_sync(coro, event_loop: str = "asyncio"):
    """Run a coroutine on a fresh event loop (modules and the CLI are synchronous)."""
    try:
        loop = new_event_loop(event_loop)
    except CapacityError:
        coro.close()
        raise
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(coro)
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def slug(text: str) -> str:
    """A file-name-safe version of a service name."""
    out = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in (text or "capacity"))
    return out.strip("-.")[:80] or "capacity"


def write_results(result: dict, output_dir: str, basename: str | None = None) -> dict:
    """Write ``<base>.json`` (everything), ``<base>.steps.csv`` and, when recorded, ``<base>.requests.csv``."""
    base = basename or slug("capacity-" + str((result.get("service") or {}).get("service") or "test"))
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as exc:
        raise CapacityError("cannot create output_dir %s: %s" % (output_dir, exc.strerror)) from None
    paths = {
        "json": os.path.join(output_dir, base + ".json"),
        "steps_csv": os.path.join(output_dir, base + ".steps.csv"),
    }
    with open(paths["json"], "w") as fh:
        json.dump(result, fh, indent=1, sort_keys=True, default=str)
    with open(paths["steps_csv"], "w") as fh:
        fh.write(rows_to_csv(step_rows(result.get("steps") or []), STEP_COLUMNS))
    if result.get("requests"):
        paths["requests_csv"] = os.path.join(output_dir, base + ".requests.csv")
        with open(paths["requests_csv"], "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(result.get("requests_columns") or [])
            w.writerows(result["requests"])
    return paths
