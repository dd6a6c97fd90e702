# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Capacity tests for humans: the gpu.mig.capacity_test options as a CLI, with progress, plots and reports.

Run it from the collections directory the collection is installed in (what ansible-galaxy printed), for example:
  export PYTHONPATH=~/.ansible/collections
  CLI="python -m ansible_collections.gpu.mig.plugins.plugin_utils.capacity_cli"
  $CLI run --url http://127.0.0.1:8000/infer --payload '{"x": 1}' --start-rps 20 --sla 'p95<300ms' --out res/
  $CLI report res/capacity-chat.json --out res/      # plots + Markdown from a result (module or CLI)
  $CLI fleet host1/*.json host2/*.json --out fleet/   # one capacity table
  $CLI noisy --url-a ... --rps-a 100 --url-b ... --rps-b 50 --sla 'p95<300ms'
  $CLI predict --c 4 --service-ms 20 --sla-ms 100     # Erlang-C / Allen-Cunneen only
  $CLI generator --port 9470 --token-file tok         # a generator host of a test run from several hosts, then:
  $CLI run ... --generators address=10.0.0.2,port=9470 --generators address=10.0.0.3 --generator-token @tok
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import os
import re
import sys
import time
from pathlib import Path

import yaml

from ansible_collections.gpu.mig.plugins.module_utils._capacity import analysis as cap
from ansible_collections.gpu.mig.plugins.module_utils._capacity import loadgen as lg
from ansible_collections.gpu.mig.plugins.module_utils._capacity import remote
from ansible_collections.gpu.mig.plugins.module_utils._capacity.options import ARGUMENT_SPEC, REQUIRED_IF
from ansible_collections.gpu.mig.plugins.plugin_utils import capacity_report

PROG = "python -m ansible_collections.gpu.mig.plugins.plugin_utils.capacity_cli"
# The module's documentation is read from its source, never imported (modules are not libraries).
MODULE_SOURCE = Path(__file__).parent.parent / "modules" / "capacity_test.py"
_MARKUP = re.compile(r"\b(?:RV|[BCIOVR])\(([^)]*)\)")


def module_documentation() -> dict:
    """The capacity_test module's DOCUMENTATION, parsed."""
    tree = ast.parse(MODULE_SOURCE.read_text(encoding="utf-8"))
    text = next(
        node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["DOCUMENTATION"]
    )
    return yaml.safe_load(text)


def option_help() -> dict:
    """First sentence of each option's description in the module documentation, markup removed."""
    out = {}
    for name, doc in module_documentation()["options"].items():
        desc = doc.get("description") or ""
        text = _MARKUP.sub(r"\1", " ".join(desc) if isinstance(desc, list) else str(desc))
        out[name] = text.split(". ")[0].rstrip(".")
    return out


def _json_or_text(value: str):
    """A JSON value, ``@file`` (JSON or text), or the text itself."""
    if value.startswith("@"):
        try:
            text = Path(value[1:]).read_text(encoding="utf-8")
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


def _secret(value: str) -> str:
    """A secret given as ``@file`` (its first line), or as is."""
    if not value.startswith("@"):
        return value
    try:
        return Path(value[1:]).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise argparse.ArgumentTypeError("cannot read %s: %s" % (value[1:], exc.strerror)) from None


def _header(value: str):
    k, sep, v = value.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError("headers are 'Name: value', got %r" % value)
    return (k.strip(), v.strip())


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_module_options(parser: argparse.ArgumentParser, skip=()) -> None:
    """One flag per gpu.mig.capacity_test option, same names with dashes; help from the module documentation."""
    helps = option_help()
    for name, spec in ARGUMENT_SPEC.items():
        if name in skip:
            continue
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
            parser.add_argument(_flag(name), action=argparse.BooleanOptionalAction, help=helps[name], **kw)
            continue
        hint = None
        if t == "list":
            kw["action"] = "append"
            kw["type"] = _mapping if spec.get("elements") == "dict" else str
            hint = "repeatable"
        elif t == "dict":
            kw["type"] = _mapping
            hint = "JSON, @file or key=value,..."
        elif t == "raw":
            kw["type"] = _json_or_text
            hint = "JSON, @file or text"
        elif spec.get("no_log"):
            kw["type"] = _secret
            hint = "@file: read it from the file (a value on the command line shows in ps)"
        else:
            kw["type"] = {"int": int, "float": float, "str": str, "path": str}[t]
        if spec.get("choices"):
            kw["choices"] = spec["choices"]
        text = "; ".join(x for x in (helps[name], hint) if x)
        if spec.get("default") not in (None, [], {}):
            text += " (default %s)" % spec["default"]
        # argparse expands %-formats in help texts: a literal % in the documentation must be doubled
        parser.add_argument(_flag(name), required=bool(spec.get("required")), help=text.replace("%", "%%"), **kw)


def module_options(args: argparse.Namespace, skip=()) -> dict:
    """The parsed flags as module options, with the module's defaults."""
    opts = {}
    for name, spec in ARGUMENT_SPEC.items():
        if name in skip:
            continue
        v = getattr(args, name, None)
        if name == "headers" and v:
            v = dict(v)
        if v is None:
            v = spec.get("default")
        elif spec.get("elements") == "dict" and spec.get("options"):
            v = [_suboptions(item, spec["options"]) for item in v]
        opts[name] = v
    return opts


def _suboptions(item: dict, options: dict) -> dict:
    """A ``key=value,...`` item with its numbers read as the suboptions' types (JSON items keep theirs)."""
    out = dict(item)
    for key, value in item.items():
        kind = (options.get(key) or {}).get("type")
        if isinstance(value, str) and kind in ("int", "float"):
            with contextlib.suppress(ValueError):  # else left as text: the option rules name it
                out[key] = int(value) if kind == "int" else float(value)
    return out


def missing_required(opts: dict) -> list:
    """The module's required_if rules (a search plan needs start_rps), as flags."""
    return [
        "%s is required with %s %s" % (_flag(need), _flag(key), value)
        for key, value, needed in REQUIRED_IF
        if opts.get(key) == value
        for need in needed
        if opts.get(need) is None
    ]


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


def _error(message: str) -> int:
    print("error: %s" % message, file=sys.stderr)
    return 2


def _plotted(render, *args) -> dict:
    """The files a capacity_report renderer wrote; CapacityError when this Python has no matplotlib."""
    try:
        return render(*args)
    except ImportError as exc:
        raise cap.CapacityError(
            "plots need matplotlib on %s (%s); install it, or pass --no-report to run" % (sys.executable, exc)
        ) from None


def _load_result(path: str) -> dict:
    """A result JSON file (module or CLI); CapacityError names the file and what is wrong with it."""
    try:
        result = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise cap.CapacityError("cannot read %s: %s" % (path, exc)) from None
    if not isinstance(result, dict):
        raise cap.CapacityError("%s is not a gpu.mig capacity result (a JSON object)" % path)
    return result


def render(result: dict, out: str, name: str) -> dict:
    """Plots and Markdown of a result: its capacity report and its noisy-neighbour report, whichever it holds."""
    if "phases" in result:  # a result of the noisy command
        return _plotted(capacity_report.render_noisy, result, out, name)
    files = {}
    if "capacity" in result:  # plan none runs no capacity search
        files.update(_plotted(capacity_report.render_report, result, out, name))
    if result.get("noisy_neighbour"):
        plotted = _plotted(capacity_report.render_noisy, result["noisy_neighbour"], out, name + "-noisy")
        files.update(("noisy_" + k, v) for k, v in plotted.items())
    if not files:
        raise cap.CapacityError(
            "the result holds no steps and no noisy-neighbour run (a check-mode run?): nothing to report"
        )
    return files


def _print_files(files: dict) -> None:
    for kind, path in sorted(files.items()):
        print("%-10s %s" % (kind, path))


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
    missing = missing_required(opts)
    if missing:
        return _error("; ".join(missing))
    progress = None if args.quiet else Progress()
    try:
        result = lg.run_sync(
            lg.run_capacity_test(opts, progress=progress, check_only=args.check), opts.get("event_loop") or "asyncio"
        )
    except cap.CapacityError as exc:
        return _error(str(exc))
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
        try:
            files.update({} if args.no_report else render(result, args.out, base))
        except cap.CapacityError as exc:  # the results are written: say where, then why there are no plots
            _print_files(files)
            return _error(str(exc))
        _print_files(files)
    else:
        keys = ("capacity", "prediction", "table_row", "noisy_neighbour")
        print(json.dumps({k: result[k] for k in keys if k in result}, indent=1))
    return 0


def cmd_report(args) -> int:
    try:
        result = _load_result(args.result)
        files = render(result, args.out or str(Path(args.result).parent), Path(args.result).stem)
    except (cap.CapacityError, OSError, ValueError) as exc:
        return _error(str(exc))
    except (KeyError, TypeError) as exc:
        return _error("%s is not a complete gpu.mig capacity result (%s: %s)" % (args.result, type(exc).__name__, exc))
    _print_files(files)
    return 0


def cmd_fleet(args) -> int:
    try:
        results = [_load_result(p) for p in args.results]
        files = capacity_report.fleet_table(results, args.out, args.name)
    except (cap.CapacityError, OSError, ValueError) as exc:
        return _error(str(exc))
    print(Path(files["markdown"]).read_text(encoding="utf-8"))
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
        return _error(str(exc))
    _print_noisy(res)
    if args.out:
        try:
            _print_files(_plotted(capacity_report.render_noisy, res, args.out))
        except cap.CapacityError as exc:
            return _error(str(exc))
    return 0 if res["within_sla"] else 1


def cmd_generator(args) -> int:
    try:
        token = Path(args.token_file).read_text(encoding="utf-8").strip() if args.token_file else ""
    except OSError as exc:
        return _error("cannot read --token-file %s: %s" % (args.token_file, exc.strerror))
    token = token or os.environ.get("GPU_MIG_GENERATOR_TOKEN", "")
    if not token:
        return _error("give the shared secret with --token-file FILE or GPU_MIG_GENERATOR_TOKEN")
    try:
        served = lg.run_sync(
            remote.serve_generator(args.listen, args.port, token, args.timeout, args.workers, args.event_loop,
                                   ready=lambda port: print("listening on %s:%d" % (args.listen, port), flush=True),
                                   connect_timeout=args.connect_timeout),
            args.event_loop,
        )  # fmt: skip
    except cap.CapacityError as exc:
        return _error(str(exc))
    print(json.dumps(served, sort_keys=True))
    return 0 if served["finished"] else 1


def cmd_predict(args) -> int:
    try:
        out = cap.predict_capacity(
            args.c, args.service_ms / 1000.0, args.sla_ms, args.percentile / 100.0, args.cs2, args.ca2
        )
    except cap.CapacityError as exc:
        return _error(str(exc))
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
        prog=PROG,
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]),
    )
    sub = ap.add_subparsers(dest="cmd", required=True, help="what to do; COMMAND --help says how")
    run = sub.add_parser("run", help="run a stepwise capacity test (same options as gpu.mig.capacity_test)")
    add_module_options(run, skip=("output_dir",))
    run.add_argument("--out", help="directory for JSON, CSV, PNG plots and the Markdown report")
    run.add_argument("--no-report", action="store_true", help="write JSON/CSV only, no plots")
    run.add_argument("--check", action="store_true", help="validate and probe only (like check mode)")
    run.add_argument("--quiet", action="store_true", help="no progress display")
    run.set_defaults(func=cmd_run)

    rep = sub.add_parser("report", help="plots and Markdown from a result JSON (module or CLI)")
    rep.add_argument("result", help="a capacity-<service>.json (or a noisy-neighbour JSON)")
    rep.add_argument("--out", help="directory for the plots and the report (default: the result's directory)")
    rep.set_defaults(func=cmd_report)

    fl = sub.add_parser("fleet", help="one capacity table from many result JSON files")
    fl.add_argument("results", nargs="+", help="capacity-<service>.json files")
    fl.add_argument("--out", required=True, help="directory for the table (JSON, CSV, Markdown)")
    fl.add_argument("--name", default="fleet-capacity", help="base name of the table files (default fleet-capacity)")
    fl.set_defaults(func=cmd_fleet)

    nz = sub.add_parser("noisy", help="hold A at its SLA rate while B steps to 3x its rate")
    nz.add_argument("--url-a", required=True, help="service A's endpoint")
    nz.add_argument("--url-b", required=True, help="the neighbour's endpoint")
    nz.add_argument("--payload-a", type=_json_or_text, help="A's request body: JSON, @file or text")
    nz.add_argument("--payload-b", type=_json_or_text, help="B's request body: JSON, @file or text")
    nz.add_argument("--service-a", default="A", help="A's name in the sentence")
    nz.add_argument("--service-b", default="B", help="B's name in the sentence")
    nz.add_argument("--rps-a", type=float, required=True, help="rate to hold A at (its capacity)")
    nz.add_argument("--rps-b", type=float, required=True, help="the neighbour's base rate")
    nz.add_argument(
        "--multipliers", type=_numbers, default=[1.0, 2.0, 3.0], help="neighbour rates as multiples of --rps-b"
    )
    nz.add_argument("--sla", required=True, type=_json_or_text, help="A's SLA, as gpu.mig.capacity_test's sla")
    nz.add_argument("--arrival", default="poisson", choices=["constant", "poisson"], help="arrival process")
    nz.add_argument("--hold", type=float, default=30.0, help="seconds measured per phase")
    nz.add_argument("--warmup", type=float, default=5.0, help="seconds of warm-up per phase")
    nz.add_argument("--request-timeout", type=float, default=30.0, help="seconds before a request times out")
    nz.add_argument("--out", help="directory for the plot and the report")
    nz.add_argument("--quiet", action="store_true", help="no progress display")
    nz.set_defaults(func=cmd_noisy)

    gen = sub.add_parser("generator", help="serve one test run from several hosts as one of its generator hosts")
    gen.add_argument("--listen", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    gen.add_argument("--port", type=int, default=remote.DEFAULT_PORT, help="port (default %d)" % remote.DEFAULT_PORT)
    gen.add_argument("--token-file", help="file holding the shared secret (else GPU_MIG_GENERATOR_TOKEN)")
    gen.add_argument("--workers", type=int, default=0, help="generator processes (default 0: every core but one)")
    gen.add_argument("--event-loop", default="asyncio", choices=["asyncio", "uvloop"], help="event loop")
    gen.add_argument("--timeout", type=float, default=7200.0, help="seconds to serve at most (default 7200)")
    gen.add_argument("--connect-timeout", type=float, default=300.0, help="seconds to wait for the test (default 300)")
    gen.set_defaults(func=cmd_generator)

    pr = sub.add_parser("predict", help="Erlang-C / Allen-Cunneen: the rate at which a percentile crosses the SLA")
    pr.add_argument("--c", type=int, required=True, help="concurrency limit (parallel slots)")
    pr.add_argument("--service-ms", type=float, required=True, help="mean service time")
    pr.add_argument("--sla-ms", type=float, required=True, help="latency limit of the percentile")
    pr.add_argument("--percentile", type=float, default=95.0, help="the SLA percentile (default 95)")
    pr.add_argument("--cs2", type=float, default=1.0, help="service-time squared coefficient of variation")
    pr.add_argument(
        "--ca2", type=float, default=1.0, help="inter-arrival squared coefficient of variation (1 = Poisson)"
    )
    pr.set_defaults(func=cmd_predict)
    return ap


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        code = args.func(args)
        sys.stdout.flush()  # output to a pipe is buffered: a reader that left shows here, not at interpreter exit
        return code
    except BrokenPipeError:  # the reader left early (| head): stop quietly, like other command-line tools
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
