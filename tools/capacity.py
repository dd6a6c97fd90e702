# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Capacity tests for humans: the gpu.mig.capacity_test options as a CLI, with progress, plots and reports.

tools/capacity.py run --url http://127.0.0.1:8000/infer --payload '{"x": 1}' --start-rps 20 --sla 'p95<300ms' --out res/
tools/capacity.py report res/capacity-chat.json --out res/     # plots + Markdown from a result (module or CLI)
tools/capacity.py fleet host1/*.json host2/*.json --out fleet/  # one capacity table
tools/capacity.py noisy --url-a ... --rps-a 100 --url-b ... --rps-b 50 --sla 'p95<300ms'
tools/capacity.py predict --c 4 --service-ms 20 --sla-ms 100    # Erlang-C / Allen-Cunneen only
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_COLLECTIONS = REPO / ".build" / "collections"
if _COLLECTIONS.is_dir() and str(_COLLECTIONS) not in sys.path:
    sys.path.insert(0, str(_COLLECTIONS))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ansible_collections.gpu.mig.plugins.module_utils._capacity import analysis as cap  # noqa: E402
from ansible_collections.gpu.mig.plugins.module_utils._capacity import loadgen as lg  # noqa: E402
from ansible_collections.gpu.mig.plugins.modules.capacity_test import ARGUMENT_SPEC, DOCUMENTATION  # noqa: E402


def _option_help() -> dict:
    """First sentence of each option's description in the module documentation, markup removed."""
    try:
        import yaml
    except ImportError:  # the CLI works without PyYAML, only with terser help
        return {}
    out = {}
    for name, doc in (yaml.safe_load(DOCUMENTATION).get("options") or {}).items():
        desc = doc.get("description") or ""
        text = " ".join(desc) if isinstance(desc, list) else str(desc)
        text = re.sub(r"\b[COVIR]V?\(([^)]*)\)", r"\1", text)
        out[name] = text.split(". ")[0].rstrip(".")
    return out


def _json_or_text(value: str):
    """A JSON value, ``@file`` (JSON or text), or the text itself."""
    if value.startswith("@"):
        try:
            text = Path(value[1:]).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise argparse.ArgumentTypeError("cannot read %s: %s" % (value[1:], exc)) from None
        try:
            return json.loads(text)
        except ValueError:
            return text
    try:
        return json.loads(value)
    except ValueError:
        return value


def _mapping(value: str):
    """``{"a": 1}`` JSON, ``@file.json`` or ``a=1,b=2``."""
    v = _json_or_text(value)
    if isinstance(v, dict):
        return v
    out = {}
    for part in str(v).split(","):
        if part.strip():
            k, sep, val = part.partition("=")
            if not sep:
                raise argparse.ArgumentTypeError("expected key=value, got %r" % part)
            out[k.strip()] = val.strip()
    return out


def _numbers(value: str) -> list:
    """``1,2,3`` -> [1.0, 2.0, 3.0]."""
    try:
        return [float(x) for x in value.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError("expected numbers separated by commas, got %r" % value) from None


def _header(value: str):
    k, sep, v = value.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError("headers are 'Name: value', got %r" % value)
    return (k.strip(), v.strip())


def add_module_options(parser: argparse.ArgumentParser, skip=()) -> None:
    """One flag per gpu.mig.capacity_test option, same names with dashes."""
    helps = _option_help()
    for name, spec in ARGUMENT_SPEC.items():
        if name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        kw = {"dest": name, "default": None}
        t = spec["type"]
        if name == "headers":
            parser.add_argument(
                "--header",
                dest="headers",
                action="append",
                type=_header,
                help="extra header 'Name: value' (repeatable)",
            )
            continue
        if t == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=helps.get(name), **kw)
            continue
        if t == "list":
            kw["action"] = "append"
            kw["type"] = _mapping if spec.get("elements") == "dict" else str
            kw["help"] = "repeatable"
        elif t == "dict":
            kw["type"] = _mapping
            kw["help"] = "JSON, @file or key=value,..."
        elif t == "raw":
            kw["type"] = _json_or_text
            kw["help"] = "JSON, @file or text"
        else:
            kw["type"] = {"int": int, "float": float, "str": str, "path": str}[t]
        if spec.get("choices"):
            kw["choices"] = spec["choices"]
        kw["help"] = "; ".join(x for x in (helps.get(name), kw.get("help")) if x)
        if spec.get("default") not in (None, [], {}):
            kw["help"] += " (default %s)" % spec["default"]
        parser.add_argument(flag, required=bool(spec.get("required")), **kw)


def module_options(args: argparse.Namespace, skip=()) -> dict:
    opts = {}
    for name, spec in ARGUMENT_SPEC.items():
        if name in skip:
            continue
        v = getattr(args, name, None)
        if name == "headers" and v:
            v = dict(v)
        if v is None:
            v = spec.get("default")
        opts[name] = v
    return opts


class Progress:
    """Live status line on a terminal (stderr) and one line per finished step."""

    def __init__(self, stream=sys.stderr) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.t0 = time.monotonic()

    def __call__(self, ev: dict) -> None:
        clock = "%5.0fs" % (time.monotonic() - self.t0)
        if ev["event"] == "tick" and self.tty:
            self.stream.write(
                "\r%s %-8s %7.1f RPS  %4.1f/%.1f s  sent %-6d in flight %-5d errors %-4d p95 %s ms   "
                % (
                    clock,
                    ev["kind"],
                    ev["rate"],
                    max(0.0, ev["elapsed"]),
                    ev["duration"],
                    ev["sent"],
                    ev["inflight"],
                    ev["errors"],
                    ev["p95_ms"],
                )
            )
            self.stream.flush()
        elif ev["event"] == "phase":
            if self.tty:
                self.stream.write("\r" + " " * 110 + "\r")
            self.stream.write("%s start %s at %g RPS for %.1f s\n" % (clock, ev["kind"], ev["rate"], ev["duration"]))
        elif ev["event"] == "step":
            s = ev["step"]
            lat = s["latency_ms"]
            if self.tty:
                self.stream.write("\r" + " " * 110 + "\r")
            self.stream.write(
                "%s step %d %g RPS: achieved %.1f, p50/p95/p99 %s/%s/%s ms, %s\n"
                % (
                    clock,
                    s["index"],
                    s["offered_rps"],
                    s["achieved_rps"],
                    lat["p50"],
                    lat["p95"],
                    lat["p99"],
                    s["verdict"]["summary"][:200],
                )
            )
        elif ev["event"] == "note":
            self.stream.write("%s %s\n" % (clock, ev["message"]))
        self.stream.flush()


def _print_noisy(res: dict) -> None:
    """The noisy-neighbour sentence, then service A's p95/p99 and SLA verdict in each phase (before, during, after)."""
    print(res["sentence"])
    for p in res["phases"]:
        print(
            "  %-12s A p95 %8s ms  p99 %8s ms  errors %d  %s"
            % (p["phase"], p["a_p95_ms"], p["a_p99_ms"], p["a_errors"], "ok" if p["a_within_sla"] else "SLA BROKEN")
        )


def cmd_run(args) -> int:
    opts = module_options(args)
    progress = None if args.quiet else Progress()
    try:
        result = lg.run_sync(lg.run_capacity_test(opts, progress=progress, check_only=args.check))
    except cap.CapacityError as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 2
    if args.check:
        print(
            "ok: options valid, worst case %.0f s, probe HTTP %d in %s ms"
            % (result["plan"]["worst_case_s"], result["probe"]["status"], result["probe"]["latency_ms"])
        )
        return 0
    for w in result.get("warnings", []):
        print("warning: %s" % w, file=sys.stderr)
    noisy = result.get("noisy_neighbour")
    if "capacity" in result:  # plan none runs only the noisy-neighbour test
        print(result["sla_sentence"])
    if noisy:
        _print_noisy(noisy)
    if args.out:
        base = lg.slug("capacity-" + result["service"]["service"])
        files = lg.write_results(result, args.out, base)
        if not args.no_report:
            from ansible_collections.gpu.mig.plugins.plugin_utils.capacity_report import render_noisy, render_report

            if "capacity" in result:
                files.update(render_report(result, args.out, base))
            if noisy:
                files.update(("noisy_" + k, v) for k, v in render_noisy(noisy, args.out, base + "-noisy").items())
        for kind, path in sorted(files.items()):
            print("%-10s %s" % (kind, path))
    else:
        keys = ("capacity", "prediction", "table_row", "noisy_neighbour")
        print(json.dumps({k: result[k] for k in keys if k in result}, indent=1))
    return 0


def cmd_report(args) -> int:
    from ansible_collections.gpu.mig.plugins.plugin_utils.capacity_report import render_noisy, render_report

    result = json.loads(Path(args.result).read_text())
    name = Path(args.result).stem
    out = args.out or str(Path(args.result).parent)
    files = render_noisy(result, out, name) if "phases" in result else render_report(result, out, name)
    for kind, path in sorted(files.items()):
        print("%-10s %s" % (kind, path))
    return 0


def cmd_fleet(args) -> int:
    from ansible_collections.gpu.mig.plugins.plugin_utils.capacity_report import fleet_table

    results = [json.loads(Path(p).read_text()) for p in args.results]
    try:
        files = fleet_table(results, args.out, args.name)
    except ValueError as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 2
    print(Path(files["markdown"]).read_text())
    return 0


def cmd_noisy(args) -> int:
    base = {
        "sla": args.sla,
        "arrival": args.arrival,
        "request_timeout": args.request_timeout,
        "start_rps": 1,
    }
    a = dict(base, url=args.url_a, payload=args.payload_a, service=args.service_a)
    b = dict(base, url=args.url_b, payload=args.payload_b, service=args.service_b)
    try:
        res = lg.run_sync(
            lg.run_noisy_neighbour(
                a,
                args.rps_a,
                b,
                args.rps_b,
                args.multipliers,
                args.hold,
                args.warmup,
                progress=None if args.quiet else Progress(),
            )
        )
    except cap.CapacityError as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 2
    _print_noisy(res)
    if args.out:
        from ansible_collections.gpu.mig.plugins.plugin_utils.capacity_report import render_noisy

        for kind, path in sorted(render_noisy(res, args.out).items()):
            print("%-10s %s" % (kind, path))
    return 0 if res["within_sla"] else 1


def cmd_predict(args) -> int:
    try:
        out = cap.predict_capacity(
            args.c, args.service_ms / 1000.0, args.sla_ms, args.percentile / 100.0, args.cs2, args.ca2
        )
    except cap.CapacityError as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 2
    print(
        "%s: c=%d, service %g ms (cv^2 %g), arrivals cv^2 %g: p%g stays under %g ms up to %s RPS (%.0f%% of the %g RPS saturation)"
        % (
            out["model"],
            args.c,
            args.service_ms,
            args.cs2,
            args.ca2,
            args.percentile,
            args.sla_ms,
            out["rate_rps"],
            100 * out.get("utilisation", 0),
            out["saturation_rps"],
        )
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="capacity.py",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]),
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run a stepwise capacity test (same options as gpu.mig.capacity_test)")
    add_module_options(run, skip=("output_dir",))
    run.add_argument("--out", help="directory for JSON, CSV, PNG plots and the Markdown report")
    run.add_argument("--no-report", action="store_true", help="write JSON/CSV only, no plots")
    run.add_argument("--check", action="store_true", help="validate and probe only (like check mode)")
    run.add_argument("--quiet", action="store_true", help="no progress display")
    run.set_defaults(func=cmd_run)

    rep = sub.add_parser("report", help="plots and Markdown from a result JSON (module or CLI)")
    rep.add_argument("result")
    rep.add_argument("--out")
    rep.set_defaults(func=cmd_report)

    fl = sub.add_parser("fleet", help="one capacity table from many result JSON files")
    fl.add_argument("results", nargs="+")
    fl.add_argument("--out", required=True)
    fl.add_argument("--name", default="fleet-capacity")
    fl.set_defaults(func=cmd_fleet)

    nz = sub.add_parser("noisy", help="hold A at its SLA rate while B steps to 3x its rate")
    nz.add_argument("--url-a", required=True)
    nz.add_argument("--url-b", required=True)
    nz.add_argument("--payload-a", type=_json_or_text)
    nz.add_argument("--payload-b", type=_json_or_text)
    nz.add_argument("--service-a", default="A")
    nz.add_argument("--service-b", default="B")
    nz.add_argument("--rps-a", type=float, required=True)
    nz.add_argument("--rps-b", type=float, required=True)
    nz.add_argument(
        "--multipliers", type=_numbers, default=[1.0, 2.0, 3.0], help="neighbour rates as multiples of --rps-b"
    )
    nz.add_argument("--sla", required=True, type=_json_or_text)
    nz.add_argument("--arrival", default="poisson", choices=["constant", "poisson"])
    nz.add_argument("--hold", type=float, default=30.0)
    nz.add_argument("--warmup", type=float, default=5.0)
    nz.add_argument("--request-timeout", type=float, default=30.0)
    nz.add_argument("--out")
    nz.add_argument("--quiet", action="store_true")
    nz.set_defaults(func=cmd_noisy)

    pr = sub.add_parser("predict", help="Erlang-C / Allen-Cunneen: the rate at which a percentile crosses the SLA")
    pr.add_argument("--c", type=int, required=True, help="concurrency limit (parallel slots)")
    pr.add_argument("--service-ms", type=float, required=True)
    pr.add_argument("--sla-ms", type=float, required=True)
    pr.add_argument("--percentile", type=float, default=95.0)
    pr.add_argument("--cs2", type=float, default=1.0, help="service-time squared coefficient of variation")
    pr.add_argument(
        "--ca2", type=float, default=1.0, help="inter-arrival squared coefficient of variation (1 = Poisson)"
    )
    pr.set_defaults(func=cmd_predict)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
