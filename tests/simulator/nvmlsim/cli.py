"""``migsim``: create and drive simulated GPU hosts and fleets."""

from __future__ import annotations

import argparse
import compileall
import random
import shlex
import shutil
import sys
import warnings
from pathlib import Path

import pynvml
import yaml

from nvmlsim import api, hosts, mig, procs, state

SIMULATOR = Path(__file__).resolve().parent.parent
REPO = SIMULATOR.parent.parent
# The collection is importable from the checkout's .build/collections, or from the tree it sits in (ansible-test).
COLLECTIONS = (
    REPO.parents[2] if REPO.parts[-3:] == ("ansible_collections", "gpu", "mig") else REPO / ".build" / "collections"
)

# Default fleet mix: kind -> HostSpec arguments (CLI syntax).
FLEET_KINDS: dict[str, list[str]] = {
    "a100": ["--gpu", "A100-SXM4-40GB:mig=on", "--gpu", "A100-SXM4-40GB:mig=on", "--instance", "0:4g.20gb@0",
             "--instance", "0:2g.10gb@4", "--process", "0:1:0:1200:tritonserver"],
    "h100": ["--gpu", "H100-80GB", "--gpu", "H100-80GB"],
    "a30": ["--gpu", "A30:mig=on", "--driver", "535.183.01"],
    "l4": ["--gpu", "L4"],
    "nodriver": ["--gpu", "A100-SXM4-40GB", "--no-driver"],
    "h200": ["--gpu", "H200", "--driver", "550.90.07"],
    "b200": ["--gpu", "B200", "--driver", "570.133.20"],
    "olddriver": ["--gpu", "H200", "--driver", "535.161.07"],
    "a100busy": ["--gpu", "A100-SXM4-40GB", "--process", "0:500:trainer"],
    "dgxh100": [arg for _i in range(8) for arg in ("--gpu", "H100-80GB:mig=on")],
}  # fmt: skip
DEFAULT_MIX = ("a100", "h100", "a30", "l4", "nodriver", "h200", "b200", "olddriver")


def _error(code_name: str) -> int:
    value = getattr(pynvml, code_name, None)
    if not code_name.startswith("NVML_ERROR_") or not isinstance(value, int):
        raise argparse.ArgumentTypeError(f"unknown NVML error {code_name!r}")
    return value


def _spec(args: argparse.Namespace) -> hosts.HostSpec:
    driver_state = "no_library" if args.no_driver else "not_loaded" if args.driver_not_loaded else "loaded"
    return hosts.HostSpec(
        gpus=[hosts.GpuSpec.parse(g) for g in args.gpu],
        hostname=args.hostname,
        driver=args.driver,
        cuda=hosts.parse_cuda(args.cuda) if args.cuda else None,
        driver_state=driver_state,
        vm_passthrough=args.vm_passthrough,
        unprivileged=args.unprivileged,
        user_capabilities=tuple(c for c in args.user_capabilities.split(",") if c),
        instances=args.instance,
        processes=[hosts.Process.parse(p) for p in args.process],
        lifetime=args.lifetime,
    )


def cmd_host(args: argparse.Namespace) -> None:
    """Create a host directory."""
    hosts.build(args.dir, _spec(args))


def cmd_show(args: argparse.Namespace) -> None:
    """Print the host state as JSON."""
    print(state.read(args.dir).snapshot())


def cmd_reboot(args: argparse.Namespace) -> None:
    """Reboot the host."""
    state.reboot(args.dir)


def cmd_fault(args: argparse.Namespace) -> None:
    """Inject, mark lost, or clear faults."""
    with state.transaction(args.dir) as host:
        if args.clear:
            host.persistent["faults"] = []
        if args.lost:
            host.live(args.gpu)["lost"] = True
        if args.call:
            fault = {
                "call": args.call,
                "error": args.error,
                "times": args.times,
                "gpu": args.gpu,
                "handle": args.handle,
            }
            host.persistent["faults"].append(fault)


def cmd_process(args: argparse.Namespace) -> None:
    """Spawn and attach a process (prints its PID), or kill and detach one."""
    with state.transaction(args.dir) as host:
        if args.action == "add":
            print(hosts.add_process(host, hosts.Process.parse(args.spec), args.lifetime))
        else:
            hosts.remove_process(host, int(args.spec))


def cmd_profiler(args: argparse.Namespace) -> None:
    """Attach a profiling client to a GPU (prints its PID), or kill and detach one."""
    with state.transaction(args.dir) as host:
        if args.action == "attach":
            print(hosts.attach_profiler(host, int(args.target), args.name, args.lifetime))
        else:
            hosts.remove_process(host, int(args.target), "profilers")


def host_dirs(path: Path) -> list[Path]:
    """``path`` if it is a host, else the hosts directly under it (a fleet)."""
    if (path / state.PERSISTENT).is_file():
        return [path]
    return sorted(p for p in path.iterdir() if (p / state.PERSISTENT).is_file()) if path.is_dir() else []


def cmd_stop(args: argparse.Namespace) -> None:
    """Kill the processes of a host, or of every host of a fleet."""
    found = host_dirs(Path(args.dir))
    if not found:
        raise state.NoHostError(f"{args.dir} holds no simulated host or fleet")
    for host_dir in found:
        state.stop_processes(host_dir)


def wrapper_script(host_dir: Path) -> str:
    """Interpreter wrapper that makes ``import pynvml`` talk to ``host_dir``."""
    q = shlex.quote
    boot = f"{SIMULATOR / 'boot'}:{COLLECTIONS}"
    return (
        "#!/usr/bin/env bash\n"
        f"exec env MIGSIM_ROOT={q(str(host_dir))} MIGSIM_PYTHON={q(sys.executable)} "
        f'PYTHONPATH={q(boot)}${{PYTHONPATH:+:$PYTHONPATH}} PATH={q(str(SIMULATOR / "bin"))}:"$PATH" '
        f'{q(sys.executable)} "$@"\n'
    )


def precompile() -> None:
    """Write the simulator's bytecode once: every simulated module run imports it, and environments with
    PYTHONDONTWRITEBYTECODE would otherwise compile it on each run (overhead no real GPU host has)."""
    for folder in (SIMULATOR / "boot", SIMULATOR / "nvmlsim"):
        compileall.compile_dir(folder, quiet=2)


def cmd_fleet(args: argparse.Namespace) -> None:
    """Create N hosts of a heterogeneous mix plus an Ansible inventory."""
    precompile()
    base = Path(args.dir).resolve()
    if base.exists() and any(base.iterdir()):
        if not args.force:
            raise SystemExit(f"migsim: {base} is not empty (use --force to replace it)")
        for old in host_dirs(base):
            state.stop_processes(old)
        shutil.rmtree(base)
    kinds = args.mix.split(",") if args.mix else list(DEFAULT_MIX)
    unknown = sorted(set(kinds) - set(FLEET_KINDS))
    if unknown:
        raise SystemExit(f"migsim: unknown fleet kinds {unknown}; known: {', '.join(FLEET_KINDS)}")
    if args.seed is not None:
        random.Random(args.seed).shuffle(kinds)
    inventory: dict[str, dict] = {}
    for number in range(args.hosts):
        kind = kinds[number % len(kinds)]
        name = f"sim{number:02d}-{kind}"
        host_dir = base / name
        argv = ["host", str(host_dir), "--hostname", name, "--lifetime", str(args.lifetime), *FLEET_KINDS[kind]]
        hosts.build(host_dir, _spec(PARSER.parse_args(argv)))
        wrapper = host_dir / "python"
        wrapper.write_text(wrapper_script(host_dir))
        wrapper.chmod(0o755)
        inventory[name] = {
            "ansible_connection": "local",
            "ansible_python_interpreter": str(wrapper),
            "migsim_root": str(host_dir),
        }
    text = yaml.safe_dump({"all": {"children": {"simulated_gpu_hosts": {"hosts": inventory}}}}, sort_keys=True)
    (base / "inventory.yml").write_text(text)
    print(base / "inventory.yml")


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {value}")
    return value


def _lifetime_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lifetime",
        type=_positive,
        default=procs.DEFAULT_LIFETIME,
        help=f"seconds a spawned process lives at most (default {procs.DEFAULT_LIFETIME})",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="migsim", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    host = sub.add_parser("host", help="create a simulated host")
    host.add_argument("dir")
    host.add_argument("--gpu", action="append", required=True, help="MODEL[:mig=on|off] (repeat per GPU)")
    host.add_argument("--hostname", help="host name (default: the directory name); seeds UUIDs")
    drivers = host.add_mutually_exclusive_group()
    drivers.add_argument("--driver", default="550.90.07", help="driver version (default 550.90.07)")
    drivers.add_argument("--no-driver", action="store_true", help="no libnvidia-ml: nvmlInit -> LibraryNotFound")
    drivers.add_argument("--driver-not-loaded", action="store_true", help="nvmlInit -> DriverNotLoaded")
    host.add_argument("--cuda", help="CUDA version such as 12.4 (default: the driver branch's)")
    host.add_argument("--vm-passthrough", action="store_true", help="GPU reset not possible (VM pass-through)")
    host.add_argument(
        "--unprivileged",
        action="store_true",
        help="NVML callers are not root: MIG mode changes, and calls needing a capability they lack, get NO_PERMISSION",
    )
    host.add_argument(
        "--user-capabilities",
        default=",".join(mig.STOCK_USER_CAPABILITIES),
        help=f"comma-separated nvidia-capabilities ({', '.join(mig.CAPABILITIES)}) an --unprivileged caller holds"
        f" (default: {','.join(mig.STOCK_USER_CAPABILITIES)}, as a stock driver grants; '' for none)",
    )
    host.add_argument("--instance", action="append", default=[], help="GPU:PROFILE[@START] (GI + default CI)")
    host.add_argument(
        "--process", action="append", default=[], help="GPU[:GI[:CI]]:MIB[:NAME] (spawns a real 'sleep' process)"
    )
    _lifetime_option(host)
    host.set_defaults(func=cmd_host)

    for name, func, text in (("show", cmd_show, "print the state as JSON"), ("reboot", cmd_reboot, "reboot")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("dir")
        cmd.set_defaults(func=func)

    fault = sub.add_parser("fault", help="inject NVML failures")
    fault.add_argument("dir")
    fault.add_argument("--call", help="pynvml function name, e.g. nvmlDeviceCreateGpuInstanceWithPlacement")
    fault.add_argument("--error", type=_error, default=pynvml.NVML_ERROR_UNKNOWN, help="NVML_ERROR_* name")
    fault.add_argument("--times", type=int, default=1)
    fault.add_argument("--gpu", type=int, help="only calls on this GPU index")
    fault.add_argument(
        "--handle", choices=sorted(api.KINDS), help="only calls on a handle of this kind (mig: a MIG device)"
    )
    fault.add_argument("--lost", action="store_true", help="GPU --gpu fell off the bus (until reboot)")
    fault.add_argument("--clear", action="store_true", help="remove all injected faults")
    fault.set_defaults(func=cmd_fault)

    process = sub.add_parser("process", help="attach or detach a process")
    process.add_argument("dir")
    process.add_argument("action", choices=("add", "remove"))
    process.add_argument("spec", help="add: GPU[:GI[:CI]]:MIB[:NAME] (prints the spawned PID); remove: PID (killed)")
    _lifetime_option(process)
    process.set_defaults(func=cmd_process)

    profiler = sub.add_parser(
        "profiler", help="attach or detach a profiling client (DCGM profiling, Nsight): GPU reconfiguration -> IN_USE"
    )
    profiler.add_argument("dir")
    profiler.add_argument("action", choices=("attach", "detach"))
    profiler.add_argument("target", help="attach: GPU index (prints the spawned PID); detach: PID (killed)")
    profiler.add_argument("--name", default="nv-hostengine", help="process name recorded (default nv-hostengine)")
    _lifetime_option(profiler)
    profiler.set_defaults(func=cmd_profiler)

    stop = sub.add_parser("stop", help="kill the spawned processes of a host or fleet (before deleting it)")
    stop.add_argument("dir", help="a host directory or a fleet directory")
    stop.set_defaults(func=cmd_stop)

    fleet = sub.add_parser("fleet", help="create N hosts and an inventory")
    fleet.add_argument("--dir", required=True)
    fleet.add_argument("--hosts", type=int, default=len(DEFAULT_MIX))
    fleet.add_argument(
        "--mix", help=f"comma-separated kinds of {', '.join(FLEET_KINDS)} (default: {','.join(DEFAULT_MIX)})"
    )
    fleet.add_argument("--force", action="store_true", help="replace a non-empty directory")
    fleet.add_argument("--seed", type=int, help="shuffle the mix order reproducibly")
    _lifetime_option(fleet)
    fleet.set_defaults(func=cmd_fleet)
    return parser


PARSER = _parser()


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = PARSER.parse_args(argv)
    # Spawned processes are meant to outlive this command (init reaps them): no warning at exit.
    warnings.filterwarnings("ignore", r"subprocess \d+ is still running", ResourceWarning)
    if args.command == "fault" and args.lost and args.gpu is None:
        PARSER.error("--lost needs --gpu")
    try:
        args.func(args)
    except (state.NoHostError, ValueError, KeyError, IndexError, pynvml.NVMLError) as err:
        print(f"migsim: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
