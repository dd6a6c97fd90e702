"""Bounded load on the inference services of one systemd test host, run on that host (stdlib only).

Every request goes to 127.0.0.1 (the services' HAProxy frontends); every loop is bounded in count and in time.
Prints one JSON document.

  python3 load.py request --port P [--path PATH]
      one V2 inference request: status, seconds, Retry-After, body
  python3 load.py ready --port P [--path PATH] [--seconds S]
      the same request every 0.5 s until it is answered 200, for at most S seconds: the last reply
  python3 load.py burst --port P --count N
      N requests released at once (a barrier): the replies, in order
  python3 load.py spike --spike-port P --spike-clients N --probe-port Q --probe-rps R --seconds S
      N closed-loop clients on P (the spike) and, in a separate process, requests on Q on a fixed schedule of R per
      second (latency counted from the intended send time): status counts of both, probe percentiles, the spike's
      CPU time (cgroup of --spike-unit, when given) over the spike's wall time
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import multiprocessing
import threading
import time
from concurrent.futures import ThreadPoolExecutor

HOST = "127.0.0.1"
MAX_REQUESTS = 5000  # per client or per probe run, whatever the duration
MAX_SECONDS = 30.0
# An iris sample in the V2 inference protocol: MLServer's scikit-learn runtime takes it, the synthetic server ignores it.
BODY = json.dumps({"inputs": [{"name": "predict", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]})


def request(port: int, path: str, timeout: float, start: float | None = None) -> dict:
    """One POST to the service's frontend; ``seconds`` counts from ``start`` (default: now)."""
    begin = time.monotonic() if start is None else start
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("POST", path, body=BODY, headers={"Content-Type": "application/json", "Connection": "close"})
        response = conn.getresponse()
        body = response.read().decode("utf-8", "replace")
        return {
            "status": response.status,
            "seconds": round(time.monotonic() - begin, 4),
            "retry_after": response.getheader("Retry-After"),
            "body": body[:300],
        }
    except OSError as err:
        return {"status": 0, "seconds": round(time.monotonic() - begin, 4), "retry_after": None, "body": repr(err)}
    finally:
        conn.close()


def ready(port: int, path: str, seconds: float, timeout: float) -> dict:
    """Poll until the service answers 200 (HAProxy sends 503 while its health check has the server down)."""
    deadline = time.monotonic() + min(seconds, 300.0)
    reply: dict = {}
    for _attempt in range(1000):
        reply = request(port, path, timeout)
        if reply["status"] == 200 or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    return reply


def burst(port: int, path: str, count: int, timeout: float) -> list[dict]:
    """``count`` requests released together."""
    barrier = threading.Barrier(count, timeout=10)

    def one(_index: int) -> dict:
        barrier.wait()
        return request(port, path, timeout)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def counts(replies: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for reply in replies:
        out[str(reply["status"])] = out.get(str(reply["status"]), 0) + 1
    return out


def probe(port: int, path: str, rps: float, seconds: float, timeout: float, queue) -> None:
    """Open loop: request i is due at i / rps; its latency counts from then, however late it was sent."""
    total = min(MAX_REQUESTS, int(rps * seconds))
    start = time.monotonic()
    results: list[dict] = [{}] * total

    def one(index: int) -> None:
        due = start + index / rps
        time.sleep(max(0.0, due - time.monotonic()))
        results[index] = request(port, path, timeout, start=due)

    with ThreadPoolExecutor(min(64, max(4, int(rps)))) as pool:
        list(pool.map(one, range(total)))
    queue.put(results)


def cpu_usage_ns(unit: str) -> int | None:
    """CPU time of a unit's cgroup: cgroup v2 cpu.stat (hybrid hosts: the unified hierarchy), else v1 cpuacct."""
    for path in (
        f"/sys/fs/cgroup/unified/system.slice/{unit}/cpu.stat",
        f"/sys/fs/cgroup/system.slice/{unit}/cpu.stat",
    ):
        try:
            with open(path, encoding="ascii") as stream:
                return int(dict(line.split() for line in stream)["usage_usec"]) * 1000
        except (OSError, KeyError):
            continue
    for path in (f"/sys/fs/cgroup/cpu,cpuacct/system.slice/{unit}/cpuacct.usage",
                 f"/sys/fs/cgroup/cpuacct/system.slice/{unit}/cpuacct.usage"):  # fmt: skip
        try:
            with open(path, encoding="ascii") as stream:
                return int(stream.read())
        except OSError:
            continue
    return None


def spike(args: argparse.Namespace) -> dict:
    """Spike clients on one service while a separate process probes another on a schedule."""
    seconds = min(args.seconds, MAX_SECONDS)
    queue = multiprocessing.Queue()
    prober = multiprocessing.Process(
        target=probe, args=(args.probe_port, args.probe_path, args.probe_rps, seconds, args.timeout, queue)
    )
    cpu_before, wall_before = cpu_usage_ns(args.spike_unit) if args.spike_unit else None, time.monotonic()
    prober.start()
    deadline = time.monotonic() + seconds
    replies: list[dict] = []
    lock = threading.Lock()

    def client(_index: int) -> None:
        for _count in range(MAX_REQUESTS):
            if time.monotonic() >= deadline:
                return
            reply = request(args.spike_port, args.spike_path, args.timeout)
            with lock:
                replies.append(reply)

    with ThreadPoolExecutor(args.spike_clients) as pool:
        list(pool.map(client, range(args.spike_clients)))
    cpu_after, wall_after = cpu_usage_ns(args.spike_unit) if args.spike_unit else None, time.monotonic()
    probed = queue.get(timeout=seconds + args.timeout + 10)
    prober.join(timeout=10)
    ok = [r["seconds"] * 1000 for r in probed if r.get("status") == 200]
    cpu = None
    if cpu_before is not None and cpu_after is not None:
        cpu = round((cpu_after - cpu_before) / 1e9 / (wall_after - wall_before), 3)
    return {
        "spike": {"sent": len(replies), "status": counts(replies), "cpu_cores": cpu,
                  "max_503_seconds": max((r["seconds"] for r in replies if r["status"] == 503), default=None)},
        "probe": {"sent": len(probed), "status": counts(probed), "p50_ms": _ms(percentile(ok, 50)),
                  "p99_ms": _ms(percentile(ok, 99)), "max_ms": _ms(max(ok, default=None))},
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("request")
    one.add_argument("--port", type=int, required=True)
    one.add_argument("--path", default="/v2/models/m/infer")
    one.add_argument("--timeout", type=float, default=10.0)
    wait = sub.add_parser("ready")
    wait.add_argument("--port", type=int, required=True)
    wait.add_argument("--path", default="/v2/models/m/infer")
    wait.add_argument("--seconds", type=float, default=60.0)
    wait.add_argument("--timeout", type=float, default=5.0)
    many = sub.add_parser("burst")
    many.add_argument("--port", type=int, required=True)
    many.add_argument("--path", default="/v2/models/m/infer")
    many.add_argument("--count", type=int, required=True, choices=range(1, 201), metavar="1..200")
    many.add_argument("--timeout", type=float, default=10.0)
    both = sub.add_parser("spike")
    both.add_argument("--spike-port", type=int, required=True)
    both.add_argument("--spike-path", default="/v2/models/m/infer")
    both.add_argument("--spike-clients", type=int, required=True, choices=range(1, 101), metavar="1..100")
    both.add_argument("--spike-unit", help="systemd unit of the spiked service (its CPU time is reported)")
    both.add_argument("--probe-port", type=int, required=True)
    both.add_argument("--probe-path", default="/v2/models/m/infer")
    both.add_argument("--probe-rps", type=float, required=True)
    both.add_argument("--seconds", type=float, default=4.0)
    both.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()
    if args.command == "request":
        print(json.dumps(request(args.port, args.path, args.timeout)))
    elif args.command == "ready":
        print(json.dumps(ready(args.port, args.path, args.seconds, args.timeout)))
    elif args.command == "burst":
        print(json.dumps(burst(args.port, args.path, args.count, args.timeout)))
    else:
        print(json.dumps(spike(args)))


if __name__ == "__main__":
    main()
