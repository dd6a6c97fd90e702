# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Fleet planner: SLAs, memory needs and measured capacity -> MIG profiles, replicas and per-host layouts (PRIVATE).

Pure and controller side: plain data in (service specs, ``nvidia_mig`` facts per host, capacity results), one plain
dict out. Every layout it returns is planned by ``_layout.plan_layout`` on the host's facts, so it is feasible and
its changes are the minimal diff mig_instances would make.

Planning, per service and GPU model of the fleet:

* memory: ``memory_gib``, or weights (``parameters_b`` x precision bytes) + ``kv_mib_per_request`` x
  ``max_concurrency`` + ``overhead_mib``; both times ``1 + memory_margin_pct/100``. A profile fits when its memory
  holds that.
* rate per replica at the SLA's percentiles: measured (a capacity result for this service, profile and GPU model, at an
  SLA at least as strict), else an *estimate* from a measured profile of the same model: the M/M/c response-time tail
  of ``_capacity`` (Erlang C, ``mmc_response_tail``) with the concurrency ``c``, its service time calibrated so that
  the model reproduces the measured rate, scaled by compute slices (``S x measured slices / slices``). No
  estimate crosses GPU models. With no measurement for the model: ``measure first``.
* replicas: ``ceil(target_rps x (1 + headroom_pct/100) / rate)``, at least ``min_replicas``.
* "one large slice or many small": each fitting profile is an option, compared by the GPUs it takes (see
  ``RANKINGS``: its share of a GPU - replicas x the larger of the profile's compute and memory share -, or the GPUs
  its replicas take alone), then by headroom.

Packing: one slice holds one replica of one service, so fast and background services never share a slice; with
``separate_classes`` they never share a GPU either (off by default: MIG already splits SMs, memory and its
bandwidth). ``spread`` puts a service's replicas on distinct GPUs. Replicas are packed first-fit decreasing (the
placement solver ``_layout.solve_placements`` decides whether a GPU can take one more; a service takes the first of
its options the fleet has room for) once per ranking of the options. Each packing is then repaired and squeezed:
a service spilled beyond the fleet tries its other options in the room left, a replica still spilled tries two GPUs
whose replicas are shared out anew with it (free slices split over two GPUs, such as one compute slice here and one
memory slice there, add up), and the least-filled GPUs are emptied into the others; the plan with the fewest GPUs,
then the most headroom, wins. One ranking is each
service's smallest fitting profile, so the plan is never worse than plain first-fit decreasing on those. While the
winner takes more GPUs than the slices need, an improvement pass (coordinate descent, ``_Planner._improve``) puts
each service's other options first in turn and packs anew, keeping a packing only when it scores better: a ``spread``
service and another's whole-GPU option can rule each other out, which no single ranking sees.
Existing GPU instances: busy ones are never destroyed
(a busy one named after a replica in ``slot_maps`` serves it when the profile matches; others are kept as they are);
idle ones named after a replica of the same profile are kept for it; ``plan_layout`` keeps every other idle
instance it can. A fleet that is too small gets virtual GPUs: the plan says how many more of which model it needs.

Result (``plan_services``)::

    hosts: {<host>: {
        gpu_mig_layout: [{gpus: <index>, mig_enabled: bool, slots: [{name, profile, placement?, compute_instances?}]}],
            # exactly what mig_instances / site.yml take; only GPUs the plan uses (others are left untouched)
        inference_service_specs: [{name, slot, sla: {p95_ms?, p99_ms?, target_rps}, **deploy}],  # one per replica;
            # deploy's port/backend_port shift per replica on a host, limits.max_concurrency defaults to concurrency
        gpus: [{index, name, mig, used, dedicated_to, slots: [{slot, service, class, profile, compute_slices,
                memory_slices, start}], free_compute_slices, free_memory_slices, note}],  # start: first memory slice
        changes: {changed, mig_mode: [{gpu, enable, needs_reset}], keep: [slot], create: [slot],
                  destroy: [{gpu, gi_id, profile, start, slot, busy_pids}], moved: [slot]}}}
    services: {<name>: {
        verdict: placed | estimate | measure first | dedicated GPU | no MIG here | not placed,
        reasons: [str], class, sla (as given), target_rps, demand_rps, growth_headroom_pct, memory_mib, memory_basis, concurrency,
        gpu_model, profile, replicas, rate_per_replica_rps, capacity_rps, headroom_pct,
        capacity: {kind: measured | estimate | unknown, basis: str},
        options: [{gpu_model, profile, replicas, rate_per_replica_rps, kind, basis, gpu_share}],
        placements: [{host, gpu, gpu_uuid, slot, profile}], tests: [<capacity test>], moved: [slot]}}
    capacity_tests: [{service, profile, gpu, sla, target_rps, start_rps, concurrency, host, url?}]
        # the tests to run before the plan can be trusted (the capacity role's capacity_tests items)
    summary: {gpus_available, gpus_used, gpus_needed, gpus_short: {<model>: n}, lower_bound_gpus,
              spare: {gpus (unused), compute_slices, memory_slices (free on the used MIG GPUs)}, moved_slots,
              separate_classes, options_ranked_by (the RANKINGS entry whose packing won)}
    warnings: [str]

``capacity_rps`` is ``rate_per_replica_rps x replicas``; ``headroom_pct`` is how far it is above ``target_rps``
(slicing is worth revisiting once traffic grows by that much).
"""

from __future__ import annotations

import functools
import itertools
import math
import re
from typing import Any, Mapping, NamedTuple, Sequence

from ansible_collections.gpu.mig.plugins.module_utils._capacity import analysis as _analysis
from ansible_collections.gpu.mig.plugins.module_utils._capacity.analysis import Rule
from ansible_collections.gpu.mig.plugins.module_utils._mig import apply as _apply
from ansible_collections.gpu.mig.plugins.module_utils._mig import catalog as _catalog
from ansible_collections.gpu.mig.plugins.module_utils._mig import layout as _layout
from ansible_collections.gpu.mig.plugins.plugin_utils import services as _services

CLASSES = ("fast", "background")
PRECISION_BYTES = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5}
MAX_REPLICAS = 999
_NAME = re.compile(r"[a-z][a-z0-9-]{0,19}")  # + "-NNN" stays within inference_service's 24 characters
_REPLICA = re.compile(r"([a-z][a-z0-9-]*)-([0-9]{1,3})")
_MIB_PER_GB = 1e9 / 2**20
_WHOLE = "whole"  # the capacity of a GPU without MIG, as capacity results name the profile
# The orders in which the packer tries each service's options; the plan with the fewest GPUs, then most headroom, wins.
RANKINGS = ("share of a GPU", "GPUs taken alone", "smallest fitting profile")
# Replicas the improvement pass may pack in all (each try packs the whole fleet anew).
IMPROVE_BUDGET = 4000


class PlanError(ValueError):
    """The inputs cannot be planned; ``problems`` lists every problem, each naming the field and the fix."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


# ---------------------------------------------------------------------------------------------------------------------
# The rules: one table per input kind, every problem listed at once


def _matches(pattern: re.Pattern, words: str):
    def check(name: str, value: str) -> list:
        return [] if pattern.fullmatch(value) else ["%s must be %s, got %r" % (name, words, value)]

    return check


MODEL_RULES = {
    "parameters_b": Rule("float", 0, 100_000, low_open=True, hint="parameters in billions, e.g. 7 for a 7B model"),
    "precision": Rule("str", choices=tuple(PRECISION_BYTES)),
    "kv_mib_per_request": Rule("float", 0, 10_000_000, hint="KV cache and activations per concurrent request"),
    "max_concurrency": Rule("int", 1, 100_000),
    "overhead_mib": Rule("float", 0, 10_000_000, hint="CUDA context and runtime, 1024 when not given"),
}
SERVICE_RULES = {
    "name": Rule("str", check=_matches(_NAME, "1-20 lowercase letters, digits or '-', starting with a letter")),
    "class": Rule("str", choices=CLASSES),
    "sla": Rule(
        "raw", check=_analysis.sla_problems, words="a mapping of pNN_ms limits (and max_error_rate) or a string"
    ),
    "target_rps": Rule("float", 0, _analysis.MAX_RPS * 1000, low_open=True),
    "headroom_pct": Rule("float", 0, 1000, hint="growth headroom over target_rps, in percent"),
    "memory_gib": Rule("float", 0, 100_000, low_open=True),
    "model": Rule("dict", options=MODEL_RULES, required=("parameters_b", "precision")),
    "memory_margin_pct": Rule("float", 0, 200),
    "concurrency": Rule("int", 1, 100_000, hint="the server's parallel slots per replica, for the queueing model"),
    "min_replicas": Rule("int", 1, MAX_REPLICAS),
    "spread": Rule("bool"),
    "dedicated": Rule("bool", hint="true when the service needs a whole GPU's peak"),
    "deploy": Rule("dict", words="a mapping of inference_service spec fields (without name and slot)"),
}
SERVICE_REQUIRED = ("name", "class", "sla", "target_rps")
SERVICE_DEFAULTS = {
    "headroom_pct": 20.0,
    "memory_margin_pct": 10.0,
    "min_replicas": 1,
    "spread": False,
    "dedicated": False,
    "deploy": {},
}
OPTION_RULES = {
    "separate_classes": Rule("bool"),
    "estimate": Rule("bool", hint="false: a profile without a measurement of its own is 'measure first'"),
}
# A GPU of nvidia_mig facts (an open record: only these keys are read) or a catalog model name for a GPU to be.
GPU_RULES = {
    "index": Rule("int", 0, 1023),
    "name": Rule("str", non_empty=True),
    "mig": Rule("dict", words="a mapping with supported, current and pending"),
    "error": Rule("str"),
}
# A row of the capacity table, or the keys of a capacity_test result (``service``: its meta mapping).
ROW_RULES = {
    "service": Rule("str", non_empty=True),
    "profile": Rule("str", non_empty=True),
    "gpu": Rule("str", non_empty=True),
    "sustained_rps": Rule("float", 0),
    "sla": Rule("raw", check=_analysis.sla_problems, words="the SLA the test ran at"),
}
RESULT_META_RULES = {"service": ROW_RULES["service"], "profile": ROW_RULES["profile"], "gpu": ROW_RULES["gpu"]}


def _open_problems(raw: Any, rules: Mapping[str, Rule], where: str, required: tuple) -> list[str]:
    """Problems of the keys ``rules`` names in an open record (other keys are another tool's)."""
    if not isinstance(raw, Mapping):
        return ["%s must be a mapping, got %s" % (where, _layout._shown(raw))]
    return _analysis.field_problems({k: raw.get(k) for k in rules}, rules, where + ".", required)


# ---------------------------------------------------------------------------------------------------------------------
# Inputs


class Service(NamedTuple):
    """One validated service."""

    name: str
    klass: str
    sla: _analysis.Sla
    sla_spec: Any
    target_rps: float
    headroom_pct: float
    need_mib: int
    memory_basis: str
    concurrency: int | None
    min_replicas: int
    spread: bool
    dedicated: bool
    deploy: Mapping

    @property
    def demand(self) -> float:
        return self.target_rps * (1 + self.headroom_pct / 100)


def _memory(raw: Mapping) -> tuple[int, str]:
    margin = float(raw.get("memory_margin_pct", SERVICE_DEFAULTS["memory_margin_pct"]))
    if raw.get("memory_gib") is not None:
        base, basis = float(raw["memory_gib"]) * 1024, "memory_gib %g" % raw["memory_gib"]
    else:
        model = raw["model"]
        weights = float(model["parameters_b"]) * PRECISION_BYTES[model["precision"]] * _MIB_PER_GB
        kv = float(model.get("kv_mib_per_request") or 0) * int(model.get("max_concurrency") or 1)
        overhead = float(model["overhead_mib"] if model.get("overhead_mib") is not None else 1024)
        base = weights + kv + overhead
        basis = "weights %.0f MiB (%gB x %s) + KV/activations %.0f MiB + overhead %.0f MiB" % (
            weights,
            model["parameters_b"],
            model["precision"],
            kv,
            overhead,
        )
    return math.ceil(base * (1 + margin / 100)), "%s, + %g%% margin" % (basis, margin)


def _service(raw: Any, where: str, problems: list[str]) -> Service | None:
    known = len(problems)
    if not isinstance(raw, Mapping):
        problems.append(
            "%s must be a mapping with %s, got %s" % (where, ", ".join(SERVICE_REQUIRED), _layout._shown(raw))
        )
        return None
    problems.extend(_analysis.field_problems(dict(raw), SERVICE_RULES, where + ".", SERVICE_REQUIRED))
    if (raw.get("memory_gib") is None) == (raw.get("model") is None):
        problems.append(
            "%s: give the memory as memory_gib or as model {parameters_b, precision, ...}, exactly one" % where
        )
    for key in ("name", "slot"):
        if isinstance(raw.get("deploy"), Mapping) and key in raw["deploy"]:
            problems.append("%s.deploy.%s: the planner names each replica and its slot; drop it" % (where, key))
    if len(problems) > known:
        return None
    need, basis = _memory(raw)
    values = {**SERVICE_DEFAULTS, **{k: v for k, v in raw.items() if v is not None}}
    concurrency = values.get("concurrency") or (values.get("model") or {}).get("max_concurrency")
    return Service(
        values["name"],
        values["class"],
        _analysis.parse_sla(values["sla"]),
        values["sla"],
        float(values["target_rps"]),
        float(values["headroom_pct"]),
        need,
        basis,
        concurrency,
        values["min_replicas"],
        values["spread"],
        values["dedicated"],
        values["deploy"],
    )


class Gpu(NamedTuple):
    """One GPU of the fleet: its state for the layout planner, its catalog model (None: no MIG) and memory."""

    host: str
    state: _layout.GpuState
    model: _catalog.GpuModel | None
    memory_mib: int

    @property
    def key(self) -> tuple[str, int]:
        return (self.host, self.state.index)

    @property
    def model_name(self) -> str:
        """The catalog model's name (a MIG GPU may be known by an alias), else the product name."""
        return self.model.name if self.model is not None else self.state.name


def _planned_gpu(host: str, index: int, name: str, where: str, problems: list[str]) -> Gpu | None:
    model = _catalog.find_model(name)
    if model is None:
        problems.append(
            "%s: %r is not a MIG GPU model of the catalog; use one of %s, or the host's nvidia_mig facts"
            % (where, name, ", ".join(_catalog.all_models()))
        )
        return None
    state = _layout.GpuState(index=index, uuid="", name=model.name, architecture=model.architecture, mig_supported=True)
    return Gpu(host, state, model, model.memory_mib)


def _host_gpus(host: str, facts: Any, problems: list[str], warnings: list[str]) -> list[Gpu]:
    where = "fleet.%s" % host
    gpus = facts.get("gpus") if isinstance(facts, Mapping) else None
    if not isinstance(gpus, list):
        problems.append(
            "%s must be the host's nvidia_mig facts (a mapping with a list 'gpus'), got %s"
            % (where, _layout._shown(facts))
        )
        return []
    planned = [
        _planned_gpu(host, i, g, "%s.gpus[%d]" % (where, i), problems) for i, g in enumerate(gpus) if isinstance(g, str)
    ]
    read = [g for g in gpus if not isinstance(g, str)]
    known = len(problems)
    for i, raw in enumerate(gpus):
        if not isinstance(raw, str):
            problems.extend(_open_problems(raw, GPU_RULES, "%s.gpus[%d]" % (where, i), ("index", "mig")))
    out = [g for g in planned if g]
    if len(problems) > known or not read:
        return out
    try:
        _facts, states, models = _apply.host_from_facts([dict(g) for g in read])
    except (_layout.LayoutError, KeyError, TypeError, ValueError, AttributeError) as exc:
        problems.append(
            "%s: the GPU facts are malformed (%s: %s); gather them with gpu.mig.mig_facts"
            % (where, type(exc).__name__, exc)
        )
        return out
    for raw, state in zip(read, states):  # noqa: B905 - host_from_facts keeps one state per GPU
        if state.error:
            warnings.append("%s GPU %d cannot be read and is left out: %s" % (host, state.index, state.error))
            continue
        model = models.get(state.index)
        if state.mig_supported and model is None:
            warnings.append("%s GPU %d (%s): no MIG profile table, left out" % (host, state.index, state.name))
            continue
        memory = int(((raw.get("memory") or {}).get("total_mib")) or (model.memory_mib if model else 0))
        out.append(Gpu(host, state, model, memory))
    return sorted(out, key=lambda g: g.state.index)


def read_fleet(fleet: Any, problems: list[str], warnings: list[str]) -> list[Gpu]:
    """The fleet's GPUs, host by host in name order (``fleet``: host -> nvidia_mig facts or ``{gpus: [model names]}``)."""
    if not isinstance(fleet, Mapping) or not fleet:
        problems.append(
            "fleet must map each host to its nvidia_mig facts (or {gpus: [GPU model names]}), got %s"
            % _layout._shown(fleet)
        )
        return []
    gpus = [g for host in sorted(fleet, key=str) for g in _host_gpus(str(host), fleet[host], problems, warnings)]
    for host in sorted(fleet, key=str):
        indices = [g.state.index for g in gpus if g.host == str(host)]
        if len(indices) != len(set(indices)):
            problems.append("fleet.%s: GPU indices %s repeat; each GPU once" % (host, indices))
    return gpus


class Measure(NamedTuple):
    """One capacity measurement of a service on a profile of a GPU model (``profile`` "whole": MIG off)."""

    service: str
    model: str
    profile: str
    rate: float  # sustained rps at ``sla``; 0 when no step met it
    sla: _analysis.Sla
    concurrency: int | None
    source: str


def _model_for(text: str, names: Sequence[str]) -> list[str]:
    """Fleet GPU models a capacity result's ``gpu`` names: exact name or alias, else every name that holds it."""
    found = _catalog.find_model(text)
    if text in names or (found is not None and found.name in names):
        return [text if text in names else found.name]
    return [name for name in names if text.casefold() in name.casefold()]


def _measure(raw: Any, where: str, gpus: Sequence[Gpu], problems: list[str], warnings: list[str]) -> Measure | None:
    """A capacity_test result (its ``service`` meta, ``capacity``, ``sla``, ``prediction``) or a capacity table row."""
    known = len(problems)
    if isinstance(raw, Mapping) and isinstance(raw.get("service"), Mapping):
        meta, capacity = raw["service"], raw.get("capacity") or {}
        problems.extend(_open_problems(meta, RESULT_META_RULES, where + ".service", tuple(RESULT_META_RULES)))
        sla = raw.get("sla")
        if isinstance(sla, Mapping):  # Sla.to_dict(): {percentiles_ms: {p95: 300}, max_error_rate, ...}
            sla = {
                **{k + "_ms": v for k, v in (sla.get("percentiles_ms") or {}).items()},
                "max_error_rate": sla.get("max_error_rate"),
            }
        capacity = capacity if isinstance(capacity, Mapping) else {}
        row = {**meta, "sustained_rps": capacity.get("sustained_rps"), "sla": sla}
        failed = capacity.get("knee_rps") is not None
        prediction = raw.get("prediction") if isinstance(raw.get("prediction"), Mapping) else {}
        concurrency = None if prediction.get("c_estimated") else prediction.get("c")
        problems.extend(_open_problems(row, {k: ROW_RULES[k] for k in ("sustained_rps", "sla")}, where, ("sla",)))
    else:
        problems.extend(_open_problems(raw, ROW_RULES, where, ("service", "profile", "gpu", "sla")))
        row, concurrency = raw, None
        failed = isinstance(raw, Mapping) and raw.get("verdict") == "below lowest step"
    if len(problems) > known:
        return None
    if row.get("sustained_rps") is None and not failed:
        warnings.append(
            "%s: %s on %s %s has no valid step, so no capacity; not used"
            % (where, row["service"], row["gpu"], row["profile"])
        )
        return None
    whole = row["profile"] == _WHOLE  # a GPU without MIG (one of any model), else a profile of a MIG GPU model
    names = _model_for(row["gpu"], sorted({g.model_name for g in gpus if whole or g.model is not None}))
    if len(names) != 1:
        if names:
            problems.append(
                "%s: gpu %r matches several GPU models of the fleet (%s); write the full name"
                % (where, row["gpu"], ", ".join(names))
            )
        else:
            warnings.append("%s: no GPU of the fleet is a %r; the result is not used" % (where, row["gpu"]))
        return None
    model = next(g.model for g in gpus if g.model_name == names[0])
    profile = model.profile(row["profile"]) if not whole else None
    if profile is None and not whole:
        problems.append(
            "%s: %s has no profile %r; valid: %s, or %r for the GPU without MIG"
            % (where, model.name, row["profile"], ", ".join(p.name for p in model.profiles), _WHOLE)
        )
        return None
    name = profile.name if profile else _WHOLE
    host = " from %s" % row["host"] if row.get("host") else ""
    return Measure(
        row["service"],
        names[0],
        name,
        float(row.get("sustained_rps") or 0),
        _analysis.parse_sla(row["sla"]),
        concurrency,
        "measured on %s %s%s" % (names[0], name, host),
    )


# ---------------------------------------------------------------------------------------------------------------------
# Rates: measured, or estimated through the M/M/c queueing model of _capacity


def _highest(within, high: float, steps: int) -> float:
    """Bisection on [0, high]: the highest value for which ``within(value)`` holds (it holds at 0, and fails from
    some value on)."""
    low = 0.0
    for _step in range(steps):
        mid = (low + high) / 2
        low, high = (mid, high) if within(mid) else (low, mid)
    return low


def _rate_at(concurrency: int, service_s: float, sla: _analysis.Sla) -> float:
    """Highest arrival rate at which every SLA percentile of the M/M/c response time is within its limit."""
    rates = []
    for pct, limit_ms in sla.percentiles.items():
        tail, limit = 1 - pct / 100, limit_ms / 1000
        if _analysis.mmc_response_tail(limit, 0.0, concurrency, service_s) > tail:
            return 0.0
        rates.append(
            _highest(
                lambda rate: _analysis.mmc_response_tail(limit, rate, concurrency, service_s) <= tail,  # noqa: B023
                concurrency / service_s,
                36,
            )
        )
    return min(rates)


def _service_time(concurrency: int, rate: float, sla: _analysis.Sla) -> float:
    """The M/M/c mean service time at which ``rate`` is exactly the SLA rate (the binding percentile's)."""
    times = []
    for pct, limit_ms in sla.percentiles.items():
        tail, limit = 1 - pct / 100, limit_ms / 1000
        times.append(
            _highest(
                lambda service_s: _analysis.mmc_response_tail(limit, rate, concurrency, service_s) <= tail,  # noqa: B023
                concurrency / rate,
                48,
            )
        )
    return min(times)


def _covers(measured: _analysis.Sla, wanted: _analysis.Sla) -> bool:
    """Whether a rate measured at ``measured`` also holds at ``wanted``: every wanted limit is as loose or looser."""
    return measured.max_error_rate <= wanted.max_error_rate and all(
        pct in measured.percentiles and measured.percentiles[pct] <= limit for pct, limit in wanted.percentiles.items()
    )


class Option(NamedTuple):
    """One way to serve a service on a GPU model: a profile and how many replicas of it."""

    model: _catalog.GpuModel
    profile: _catalog.GpuInstanceProfile
    replicas: int
    rate: float | None  # per replica; None: unknown (measure first)
    kind: str  # measured | estimate | unknown
    basis: str

    @property
    def share(self) -> float:
        """The part of a GPU the replicas take: the larger of their compute and memory shares."""
        return self.replicas * profile_weight(self.model, self.profile)

    @property
    def alone(self) -> float:
        """The GPUs the replicas would take with nothing beside them (fractional)."""
        return self.replicas / per_gpu(self.model, self.profile)

    def headroom(self, demand: float) -> float:
        return (self.rate or 0) * self.replicas / demand

    def to_dict(self) -> dict:
        return {
            "gpu_model": self.model.name,
            "profile": self.profile.name,
            "replicas": self.replicas,
            "rate_per_replica_rps": None if self.rate is None else round(self.rate, 3),
            "kind": self.kind,
            "basis": self.basis,
            "gpu_share": round(self.share, 4),
        }


def profile_weight(model: _catalog.GpuModel, profile: _catalog.GpuInstanceProfile) -> float:
    """The share of the GPU one instance of ``profile`` takes: the larger of its compute and memory shares."""
    return max(profile.compute_slices / model.compute_slices, profile.placement_size / model.memory_slices)


@functools.lru_cache(maxsize=256)
def per_gpu(model: _catalog.GpuModel, profile: _catalog.GpuInstanceProfile) -> int:
    """How many instances of ``profile`` one GPU holds (the placement solver's answer)."""
    return max(k for k in range(1, profile.max_instances + 1) if _layout.solve_placements(model, [(profile, None)] * k))


def _fitting(service: Service, model: _catalog.GpuModel) -> list[_catalog.GpuInstanceProfile]:
    """Profiles that hold the service's memory, smallest first; one per (compute, memory) shape (no +me twins)."""
    shapes: dict[tuple, _catalog.GpuInstanceProfile] = {}
    for prof in sorted(model.profiles, key=lambda p: (p.memory_mib, p.compute_slices, -p.max_instances, p.id)):
        if prof.memory_mib >= service.need_mib:
            shapes.setdefault((prof.compute_slices, prof.placement_size), prof)
    return list(shapes.values())


def _replicas(service: Service, rate: float) -> int:
    return max(service.min_replicas, math.ceil(service.demand / rate - 1e-9))


def model_options(
    service: Service, model: _catalog.GpuModel, measures: Sequence[Measure], estimate: bool
) -> tuple[list[Option], list[str]]:
    """The service's options on ``model`` (fitting profiles with a known rate), and notes on measurements not used."""
    notes = []
    mine = {m.profile: m for m in measures if m.service == service.name and m.model == model.name}
    fitting = _fitting(service, model)
    for name in mine:
        prof = model.profile(name)
        if prof is not None and prof.memory_mib < service.need_mib:
            notes.append(
                "%s is measured on %s, but %d MiB needed (with the margin) exceed its %d MiB; not used"
                % (service.name, name, service.need_mib, prof.memory_mib)
            )
    bases = [m for m in mine.values() if m.rate > 0 and m.profile != _WHOLE]
    options = []
    for prof in fitting:
        m = mine.get(prof.name)
        if m is not None and (m.rate == 0 or _covers(m.sla, service.sla)):
            if m.rate > 0:
                options.append(Option(model, prof, _replicas(service, m.rate), m.rate, "measured", m.source))
            continue
        if not estimate:
            continue
        basis = (
            m
            if m is not None
            else min(
                bases, key=lambda b: abs(model.profile(b.profile).compute_slices - prof.compute_slices), default=None
            )
        )
        if basis is None:
            continue
        c = basis.concurrency or service.concurrency or 1
        base_prof = model.profile(basis.profile)
        measured_s = _service_time(c, basis.rate, basis.sla)
        seconds = measured_s * base_prof.compute_slices / prof.compute_slices
        rate = _rate_at(c, seconds, service.sla)
        if rate > 0:
            scaled = (
                "service time x %d/%d compute slices = %.1f ms"
                % (base_prof.compute_slices, prof.compute_slices, seconds * 1000)
                if base_prof is not prof
                else "at the service's SLA"
            )
            why = "estimate from %s (%g rps at %s): M/M/c (Erlang C), c=%d, service time %.1f ms fitted there; %s" % (
                basis.source,
                basis.rate,
                _sla_text(basis.sla),
                c,
                measured_s * 1000,
                scaled,
            )
            options.append(Option(model, prof, _replicas(service, rate), rate, "estimate", why))
    return options, notes


def _sla_text(sla: _analysis.Sla) -> str:
    return ", ".join("%s<%gms" % (_analysis.pct_name(p), v) for p, v in sorted(sla.percentiles.items()))


# ---------------------------------------------------------------------------------------------------------------------
# Packing


class Replica(NamedTuple):
    """One replica to place: its service, option (profile) and number."""

    service: Service
    option: Option
    number: int

    @property
    def name(self) -> str:
        return "%s-%d" % (self.service.name, self.number)


class Pinned(NamedTuple):
    """An existing instance the plan keeps where it is: busy (``replica`` None), or kept for its replica."""

    profile: _catalog.GpuInstanceProfile
    start: int
    name: str | None
    replica: Replica | None


class Bin:
    """One GPU being filled (``gpu`` None: a virtual GPU the fleet lacks): pinned instances and new replicas, with
    the compute slices, services and classes they hold kept up to date for the packer's quick checks."""

    def __init__(self, gpu: Gpu | None, model: _catalog.GpuModel, pinned: Sequence[Pinned] = ()) -> None:
        self.gpu, self.model, self.pinned = gpu, model, tuple(pinned)
        self.pinned_key = tuple((p.profile.id, p.start) for p in self.pinned)
        self.items: list[Replica] = []
        self.compute = sum(p.profile.compute_slices for p in self.pinned)
        self.memory = sum(p.profile.placement_size for p in self.pinned)
        self.services: dict[str, int] = {}
        self.classes: dict[str, int] = {}
        for replica in self.replicas():
            self._count(replica, 1)

    def _count(self, replica: Replica, step: int) -> None:
        for counts, key in ((self.services, replica.service.name), (self.classes, replica.service.klass)):
            counts[key] = counts.get(key, 0) + step
            if not counts[key]:
                del counts[key]

    def add(self, replica: Replica) -> None:
        self.items.append(replica)
        self.compute += replica.option.profile.compute_slices
        self.memory += replica.option.profile.placement_size
        self._count(replica, 1)

    def remove(self, replica: Replica) -> None:
        self.items.remove(replica)
        self.compute -= replica.option.profile.compute_slices
        self.memory -= replica.option.profile.placement_size
        self._count(replica, -1)

    @property
    def profiles(self) -> list[_catalog.GpuInstanceProfile]:
        return [p.profile for p in self.pinned] + [r.option.profile for r in self.items]

    def replicas(self) -> list[Replica]:
        return [p.replica for p in self.pinned if p.replica is not None] + self.items

    @property
    def used(self) -> bool:
        return bool(self.pinned or self.items)


class Packer:
    """First-fit packing of replicas into GPUs; the placement solver decides whether a GPU takes one more."""

    def __init__(self, separate_classes: bool) -> None:
        self.separate_classes = separate_classes
        self._fits: dict[tuple, bool] = {}

    def feasible(self, b: Bin, profiles: list[_catalog.GpuInstanceProfile]) -> bool:
        """Whether ``b``'s pinned instances and unpinned ``profiles`` have a placement (memoized per multiset)."""
        ids = tuple(sorted(p.id for p in profiles))
        key = (b.model.name, b.pinned_key, ids)
        if key not in self._fits:
            by_id = {p.id: p for p in profiles}
            demands = [(p.profile, p.start) for p in b.pinned] + [(by_id[i], None) for i in ids]
            self._fits[key] = _layout.solve_placements(b.model, demands) is not None
        return self._fits[key]

    def holds(self, b: Bin, replicas: Sequence[Replica]) -> bool:
        """Whether ``b``, emptied of its unpinned replicas, takes ``replicas`` instead."""
        pinned = [p.replica for p in b.pinned if p.replica is not None]
        compute = sum(p.profile.compute_slices for p in b.pinned) + sum(
            r.option.profile.compute_slices for r in replicas
        )
        if compute > b.model.compute_slices:
            return False
        names = [r.service.name for r in pinned + list(replicas) if r.service.spread]
        if len(names) != len(set(names)):
            return False
        if self.separate_classes and len({r.service.klass for r in pinned + list(replicas)}) > 1:
            return False
        return self.feasible(b, [r.option.profile for r in replicas])

    def resplit(self, bins: list[Bin], replica: Replica, tries: int = 400) -> bool:
        """Fit ``replica`` on the real GPUs by sharing it and the replicas of two GPUs out between those two anew
        (two GPUs whose free slices add up to what it takes; at most ``tries`` pairs, 12 replicas per pair)."""
        profile = replica.option.profile
        roomy = [b for b in bins if b.gpu is not None and b.model.name == replica.option.model.name
                 and (b.compute < b.model.compute_slices or b.memory < b.model.memory_slices)]  # fmt: skip
        pairs = (
            (a, b)
            for i, a in enumerate(roomy)
            for b in roomy[i + 1 :]
            if 2 * a.model.compute_slices - a.compute - b.compute >= profile.compute_slices
            and 2 * a.model.memory_slices - a.memory - b.memory >= profile.placement_size
            and len(a.items) + len(b.items) < 12
        )
        for a, b in itertools.islice(pairs, tries):
            every = [*a.items, *b.items, replica]
            for mask in range(1, 2 ** len(every) - 1):
                left = [r for k, r in enumerate(every) if mask >> k & 1]
                right = [r for k, r in enumerate(every) if not mask >> k & 1]
                if self.holds(a, left) and self.holds(b, right):
                    for r in list(a.items):
                        a.remove(r)
                    for r in list(b.items):
                        b.remove(r)
                    for r in left:
                        a.add(r)
                    for r in right:
                        b.add(r)
                    return True
        return False

    def fits(self, b: Bin, replica: Replica) -> bool:
        option, service = replica.option, replica.service
        if b.compute + option.profile.compute_slices > b.model.compute_slices or b.model.name != option.model.name:
            return False
        if service.spread and service.name in b.services:
            return False
        if self.separate_classes and any(k != service.klass for k in b.classes):
            return False
        return self.feasible(b, [r.option.profile for r in b.items] + [option.profile])

    def place(self, bins: list[Bin], replica: Replica, grow: bool) -> Bin | None:
        """Put ``replica`` into the first GPU that takes it; ``grow``: virtual GPUs too, and a new one if need be."""
        for b in bins:
            if (grow or b.gpu is not None) and self.fits(b, replica):
                b.add(replica)
                return b
        if not grow:
            return None
        b = Bin(None, replica.option.model)
        b.add(replica)
        bins.append(b)
        return b

    def empty_weakest(self, bins: list[Bin], tries: int = 40) -> None:
        """Move the replicas of the least-filled GPUs into the others wherever a whole GPU empties that way: each
        into the first GPU with room, else by sharing two GPUs out anew with it (``resplit``, ``tries`` pairs).

        Virtual GPUs go first (each one emptied is a GPU the fleet does not lack); a real GPU empties into real ones.
        """
        for _round in range(3):
            emptied = False
            for weak in sorted(
                (b for b in bins if b.items and not b.pinned), key=lambda b: (b.gpu is not None, b.compute)
            ):
                targets = [b for b in bins if b.used and b is not weak and (b.gpu is not None or weak.gpu is None)]
                same = [b for b in targets if b.model.name == weak.model.name]
                if (
                    sum(b.model.compute_slices - b.compute for b in same) < weak.compute
                    or sum(b.model.memory_slices - b.memory for b in same) < weak.memory
                ):
                    continue
                before = [(b, list(b.items)) for b in [*same, weak]]
                for replica in list(weak.items):
                    weak.remove(replica)
                    target = next((b for b in targets if self.fits(b, replica)), None)
                    if target is not None:
                        target.add(replica)
                    elif not self.resplit(targets, replica, tries):
                        weak.add(replica)
                        break
                if weak.items:
                    for b, items in before:  # undo: every GPU back to its replicas
                        for replica in list(b.items):
                            b.remove(replica)
                        for replica in items:
                            b.add(replica)
                else:
                    emptied = True
            if not emptied:
                break
        bins[:] = [b for b in bins if b.gpu is not None or b.items]


# ---------------------------------------------------------------------------------------------------------------------
# The planner


class _Fleet:
    """The fleet as the packer sees it: MIG GPUs with the instances they hold (named by the slot maps), the others."""

    def __init__(self, gpus: list[Gpu], slot_maps: Mapping[str, Mapping]) -> None:
        self.gpus, self.slot_maps = gpus, slot_maps
        self.mig = [g for g in gpus if g.model is not None]
        self.plain = [g for g in gpus if g.model is None]
        self.models = {g.model.name: g.model for g in self.mig}
        self.names: dict[tuple, str] = {}  # (host, GPU index, start) -> slot name
        for host, slots in slot_maps.items():
            by_uuid = {g.state.uuid.casefold(): g.state.index for g in gpus if g.host == host and g.state.uuid}
            for name, slot in slots.items():
                index = by_uuid.get(str(slot.get("gpu_uuid") or "").casefold(), slot.get("gpu_index"))
                self.names[(host, index, slot["placement"]["start"])] = name

    def instances(self, gpu: Gpu) -> list[tuple[_layout.GpuInstanceState, str | None]]:
        """The GPU's instances, each with the slot name the slot map gives it (None: unknown)."""
        held = gpu.state.gpu_instances if gpu.state.mig_current else ()
        return [(gi, self.names.get((gpu.host, gpu.state.index, gi.start))) for gi in held]


def _initial_bins(fleet: _Fleet, first: Mapping[str, Option], services: Mapping[str, Service]) -> tuple[list, dict]:
    """A bin per MIG GPU with its pinned instances, GPUs already in use first; and per service the replica numbers
    that exist already (kept for it, or busy under its name on another profile: not to be reused)."""
    numbers: dict[str, set[int]] = {}
    kept: dict[str, int] = {}
    bins = []
    for gpu in fleet.mig:
        pinned = []
        for gi, name in fleet.instances(gpu):
            profile = gpu.model.profile(gi.profile_id)
            match = _REPLICA.fullmatch(name or "")
            service = services.get(match.group(1)) if match else None
            number = int(match.group(2)) if service else 0
            taken = numbers.setdefault(service.name, set()) if service else set()
            if service is not None and number not in taken:
                option = first[service.name]
                same = option.model.name == gpu.model.name and option.profile.id == gi.profile_id
                if same and kept.get(service.name, 0) < option.replicas:
                    kept[service.name] = kept.get(service.name, 0) + 1
                    taken.add(number)
                    pinned.append(Pinned(profile, gi.start, name, Replica(service, option, number)))
                    continue
            if gi.busy_pids():
                taken.add(number)  # the name stays with the busy instance
                pinned.append(Pinned(profile, gi.start, name, None))
        bins.append(Bin(gpu, gpu.model, pinned))
    bins.sort(key=lambda b: not b.pinned)  # the plan grows from what runs
    return bins, numbers


def _fit_service(bins: list[Bin], packer: Packer, service: Service, options: Sequence[Option], numbers: list[int],
                 have: int = 0) -> bool:  # fmt: skip
    """Place the service's replicas (``have`` are in place already) on real GPUs by its first option they all fit
    in, numbered from ``numbers``; False, with nothing placed, when no option fits."""
    for option in options:
        placed = []
        for number in numbers[: option.replicas - have]:
            b = packer.place(bins, Replica(service, option, number), grow=False)
            if b is None:
                break
            placed.append(b)
        if len(placed) == max(option.replicas - have, 0):
            return True
        for b in placed:
            b.remove(b.items[-1])
    return False


def _pack(fleet: _Fleet, services: list[Service], choices: Mapping[str, list[Option]], packer: Packer) -> list[Bin]:
    """First-fit decreasing by profile size; a service takes its first option that the real GPUs have room for, else
    its first option on virtual GPUs. Then each service left on virtual GPUs tries its options again in the room the
    others left, each replica still there tries two real GPUs shared out anew, and the least-filled GPUs are emptied
    into the others where they can be."""
    first = {name: options[0] for name, options in choices.items()}
    bins, numbers = _initial_bins(fleet, first, {s.name: s for s in services})
    size = {s.name: profile_weight(first[s.name].model, first[s.name].profile) for s in services}
    free = {s.name: [n for n in range(1, MAX_REPLICAS + 2) if n not in numbers.get(s.name, ())] for s in services}
    for service in sorted(services, key=lambda s: (-size[s.name], s.name)):
        have = sum(1 for b in bins for r in b.replicas() if r.service is service)
        options = choices[service.name] if not have else [first[service.name]]  # kept instances fix the profile
        if not _fit_service(bins, packer, service, options, free[service.name], have):
            option = first[service.name]
            for number in free[service.name][: option.replicas - have]:
                packer.place(bins, Replica(service, option, number), grow=True)
    spilled = {r.service.name: r.service for b in bins if b.gpu is None for r in b.items}
    for service in sorted(spilled.values(), key=lambda s: (-size[s.name], s.name)):
        mine = [(b, r) for b in bins for r in list(b.items) if r.service is service]
        if any(p.replica and p.replica.service is service for b in bins for p in b.pinned):
            continue
        for b, r in mine:
            b.remove(r)
        if not _fit_service(bins, packer, service, choices[service.name], free[service.name]):
            for b, r in mine:
                b.add(r)
    for b in [b for b in bins if b.gpu is None]:
        for replica in list(b.items):
            b.remove(replica)
            if not packer.resplit(bins, replica):
                b.add(replica)
    packer.empty_weakest(bins)
    return bins


def _score(bins: list[Bin]) -> tuple:
    """GPUs used (virtual ones too), then virtual ones, then less headroom: lower is better."""
    used = [b for b in bins if b.used]
    headroom = sum(r.option.headroom(r.service.demand) / r.option.replicas for b in used for r in b.replicas())
    return (len(used), sum(1 for b in used if b.gpu is None), -headroom)


def _check_slot_maps(slot_maps: Any, fleet: Any, problems: list[str]) -> dict:
    if slot_maps is None:
        return {}
    if not isinstance(slot_maps, Mapping):
        problems.append("slot_maps must map hosts to their slot maps, got %s" % _layout._shown(slot_maps))
        return {}
    out = {}
    for host, slots in slot_maps.items():
        if isinstance(fleet, Mapping) and host not in fleet:
            problems.append("slot_maps.%s: no such host in the fleet; drop it or add the host" % host)
            continue
        try:
            _layout.slot_history(slots)
        except _layout.LayoutError as err:
            problems.extend("slot_maps.%s: %s" % (host, p) for p in err.problems)
            continue
        out[str(host)] = slots
    return out


def plan_services(
    services: Any, fleet: Any, capacity: Any = None, slot_maps: Any = None, options: Any = None
) -> dict[str, Any]:
    """Plan ``services`` on ``fleet``; raise PlanError listing every problem of the inputs (see the module doc).

    ``fleet``: host -> nvidia_mig facts (or ``{gpus: [catalog model names]}`` for GPUs to be); ``capacity``: a list of
    capacity_test results and capacity table rows; ``slot_maps``: host -> the slot map the roles wrote;
    ``options``: ``separate_classes`` (false), ``estimate`` (true).
    """
    problems: list[str] = []
    warnings: list[str] = []
    opts = {"separate_classes": False, "estimate": True}
    if options is not None:
        if isinstance(options, Mapping):
            problems.extend(_analysis.field_problems(dict(options), OPTION_RULES, "options."))
            opts.update({k: v for k, v in options.items() if v is not None})
        else:
            problems.append(
                "options must be a mapping of %s, got %s" % (", ".join(OPTION_RULES), _layout._shown(options))
            )
    if not isinstance(services, list) or not services:
        problems.append("services must be a non-empty list of service mappings, got %s" % _layout._shown(services))
        services = []
    parsed = [_service(raw, "services[%d]" % i, problems) for i, raw in enumerate(services)]
    names = [r["name"] for r in services if isinstance(r, Mapping) and isinstance(r.get("name"), str)]
    problems.extend(
        "services: name %r is used %d times; names must be unique" % (n, names.count(n))
        for n in sorted(set(names))
        if names.count(n) > 1
    )
    gpus = read_fleet(fleet, problems, warnings)
    maps = _check_slot_maps(slot_maps, fleet, problems)
    if capacity is None:
        capacity = []
    if not isinstance(capacity, list):
        problems.append(
            "capacity must be a list of capacity_test results or capacity table rows, got %s" % _layout._shown(capacity)
        )
        capacity = []
    measures = [_measure(raw, "capacity[%d]" % i, gpus, problems, warnings) for i, raw in enumerate(capacity)]
    if problems:
        raise PlanError(problems)
    unknown = sorted({m.service for m in measures if m and m.service not in names})
    if unknown:
        warnings.append("capacity results for services not planned are not used: %s" % ", ".join(unknown))
    return _Planner(parsed, _Fleet(gpus, maps), [m for m in measures if m], opts, warnings).run()


class _Planner:
    """One planning run: options per service, the packing, then the result."""

    def __init__(self, services: list[Service], fleet: _Fleet, measures: list[Measure], opts: dict, warnings: list):
        self.services, self.fleet, self.measures, self.opts, self.warnings = services, fleet, measures, opts, warnings
        self.report: dict[str, dict] = {}
        self.candidates: dict[str, list[Option]] = {}  # what the lower bound may choose from

    def _whole(self, service: Service) -> list[str]:
        """Why the service needs whole GPUs (empty when MIG slices do)."""
        if service.dedicated:
            return ["declared dedicated: it needs a whole GPU's peak"]
        if not self.fleet.models:
            return ["the fleet's GPUs have no MIG, and time-slicing gives no isolation: the service gets a whole GPU"]
        largest = max(p.memory_mib for m in self.fleet.models.values() for p in m.profiles)
        if service.need_mib > largest:
            return [
                "needs %d MiB with the margin, beyond the largest MIG profile of the fleet (%d MiB): a whole GPU"
                " without MIG" % (service.need_mib, largest)
            ]
        return []

    def _choices(self, service: Service, report: dict) -> list[list[Option]]:
        """The service's options over the fleet's models in the orders the packer tries: by share of a GPU, by GPUs
        taken alone, and each model's smallest fitting profile (with no rate known: the smallest fitting profile,
        to measure on). Every order ends with headroom, then the smaller profile."""
        options, primary, unknown = [], [], []
        for model in self.fleet.models.values():
            mine, notes = model_options(service, model, self.measures, self.opts["estimate"])
            report["reasons"] += notes
            options += mine
            primary += sorted(mine, key=lambda o: (o.profile.memory_mib, o.profile.compute_slices))[:1]
            fitting = _fitting(service, model)
            if fitting and not mine:
                why = "no usable capacity result for %s on %s" % (service.name, model.name)
                unknown.append(Option(model, fitting[0], service.min_replicas, None, "unknown", why))

        def then(o: Option) -> tuple:
            return (-o.headroom(service.demand), o.profile.memory_mib)

        by_share = sorted(options, key=lambda o: (round(o.share, 9), *then(o)))
        report["options"] = [o.to_dict() for o in by_share]
        if not options:
            return [unknown] * len(RANKINGS)
        return [
            by_share,
            sorted(options, key=lambda o: (round(o.alone, 9), *then(o))),
            sorted(primary, key=lambda o: (round(o.share, 9), *then(o))),
        ]

    def run(self) -> dict[str, Any]:
        sliced, whole = [], []
        choices: list[dict[str, list[Option]]] = [{} for _ranking in RANKINGS]
        for service in self.services:
            why = self._whole(service)
            report = self.report[service.name] = _service_report(service, why)
            if why:
                whole.append(service)
                continue
            ranked = self._choices(service, report)
            if not ranked[0]:
                report["verdict"] = "not placed"
                report["reasons"].append(
                    "no MIG profile of the fleet holds %d MiB (with the margin)" % service.need_mib
                )
                continue
            for table, options in zip(choices, ranked):  # noqa: B905 - one list per ranking
                table[service.name] = options
            self.candidates[service.name] = ranked[0]
            sliced.append(service)
        packer = Packer(self.opts["separate_classes"])
        plans = [_pack(self.fleet, sliced, table, packer) for table in choices]
        best = min(range(len(plans)), key=lambda i: _score(plans[i]))
        bins, self.ranking = plans[best], RANKINGS[best]
        bins = self._improve(bins, choices[best], sliced, packer)
        dedicated = self._dedicate(whole, bins)
        for service in sliced:
            self._sliced_report(service, bins)
        hosts = self._hosts(bins, dedicated)
        return {
            "hosts": hosts,
            "services": self.report,
            "capacity_tests": [t for s in self.services for t in self.report[s.name]["tests"]],
            "summary": self._summary(bins, dedicated, hosts),
            "warnings": self.warnings,
        }

    def _improve(self, bins: list[Bin], table: dict[str, list[Option]], sliced: list[Service], packer: Packer,
                 budget: int = IMPROVE_BUDGET) -> list[Bin]:  # fmt: skip
        """Coordinate descent over the services' options while the plan takes more GPUs than the slices need: each
        service in turn puts each of its other options first and the fleet is packed anew; a packing is kept when it
        scores better (fewer GPUs, then fewer virtual ones, then more headroom). Spilled and ``spread`` services go
        first (a spread service and a whole-GPU option of another can rule each other out). At most ``budget``
        replicas are packed in all, so large fleets stay quick; services with kept instances keep their profile."""
        compute = sum(min(o.replicas * o.profile.compute_slices / o.model.compute_slices
                          for o in self.candidates[s.name]) for s in sliced)  # fmt: skip
        memory = sum(min(o.replicas * o.profile.placement_size / o.model.memory_slices
                         for o in self.candidates[s.name]) for s in sliced)  # fmt: skip
        bound = math.ceil(max(compute, memory) - 1e-9)  # as _lower_bound, over every model at once
        replicas = sum(len(b.replicas()) for b in bins) or 1
        score = _score(bins)
        while score[0] > bound and budget >= replicas:
            improved = False
            spilled = {r.service.name for b in bins if b.gpu is None for r in b.items}
            pinned = {p.replica.service.name for b in bins for p in b.pinned if p.replica is not None}
            current = {r.service.name: r.option for b in bins for r in b.items}
            order = sorted(
                (s for s in sliced if s.name not in pinned and len(self.candidates[s.name]) > 1),
                key=lambda s: (s.name not in spilled, not s.spread, -self.candidates[s.name][0].share, s.name),
            )
            for service in order:
                for option in self.candidates[service.name]:
                    if option == current.get(service.name) or budget < replicas:
                        continue
                    budget -= replicas
                    rest = [o for o in self.candidates[service.name] if o != option]
                    trial = _pack(self.fleet, sliced, {**table, service.name: [option, *rest]}, packer)
                    if _score(trial) < score:
                        bins, score, improved = trial, _score(trial), True
                        table = {**table, service.name: [option, *rest]}
                        break
                if improved:
                    break
            if not improved:
                break
        return bins

    def _dedicate(self, whole: list[Service], bins: list[Bin]) -> dict[tuple, Service]:
        """Whole GPUs for the services that need them: GPUs without MIG first, then MIG GPUs the plan left empty."""
        pool = list(self.fleet.plain) + [
            b.gpu
            for b in bins
            if b.gpu is not None and not b.used and not any(gi.busy_pids() for gi, _name in self.fleet.instances(b.gpu))
        ]
        owners: dict[tuple, Service] = {}
        for service in whole:
            report = self.report[service.name]
            fitting = [g for g in pool if g.memory_mib >= service.need_mib]
            measured = [m for m in self.measures if m.service == service.name and m.profile == _WHOLE and m.rate > 0]
            measured = [m for g in fitting for m in measured if m.model == g.model_name][:1]  # a free GPU's model
            if measured:
                fitting = [g for g in fitting if g.model_name == measured[0].model]
            count = _replicas(service, measured[0].rate) if measured else service.min_replicas
            chosen = fitting[:count]
            for gpu in chosen:
                pool.remove(gpu)
                owners[gpu.key] = service
            report.update(
                verdict="dedicated GPU" if self.fleet.models else "no MIG here",
                profile=_WHOLE,
                replicas=len(chosen),
                gpu_model=chosen[0].model_name if chosen else None,
            )
            report["placements"] = [
                {"host": g.host, "gpu": g.state.index, "gpu_uuid": g.state.uuid, "slot": None, "profile": _WHOLE}
                for g in chosen
            ]
            if measured:
                _rates(report, service, measured[0].rate, len(chosen), "measured", measured[0].source)
            else:
                report["reasons"].append(
                    "the capacity of a whole GPU is not known: measure first (profile %r)" % _WHOLE
                )
                if chosen:
                    report["tests"] = [_test(service, chosen[0].host, chosen[0].model_name, _WHOLE, count)]
            if len(chosen) < count:
                report["reasons"].append(
                    "%d of %d whole GPUs with %d MiB are free; add GPUs or free some"
                    % (len(chosen), count, service.need_mib)
                )
                if not chosen:
                    report["verdict"] = "not placed"
            if chosen:
                report["reasons"].append(
                    "inference_service pins MIG slots only: run it on %s with "
                    "CUDA_VISIBLE_DEVICES set to the GPU" % ", ".join("%s GPU %d" % g.key for g in chosen)
                )
        return owners

    def _sliced_report(self, service: Service, bins: list[Bin]) -> None:
        report = self.report[service.name]
        placed = sorted(((b, r) for b in bins for r in b.replicas() if r.service is service), key=lambda x: x[1].number)
        option = placed[0][1].option
        real = [(b, r) for b, r in placed if b.gpu is not None]
        report.update(gpu_model=option.model.name, profile=option.profile.name, replicas=len(placed))
        report["placements"] = [
            {
                "host": b.gpu.host,
                "gpu": b.gpu.state.index,
                "gpu_uuid": b.gpu.state.uuid,
                "slot": r.name,
                "profile": option.profile.name,
            }
            for b, r in real
        ]
        if option.rate is None:
            report["verdict"] = "measure first"
            report["reasons"].append(
                "%s: %d replica(s) of the smallest fitting profile %s are placed to measure on"
                % (option.basis, len(placed), option.profile.name)
            )
            if real:
                report["tests"] = [
                    _test(service, real[0][0].gpu.host, option.model.name, option.profile.name, len(placed))
                ]
        else:
            report["verdict"] = "placed" if option.kind == "measured" else "estimate"
            _rates(report, service, option.rate, len(placed), option.kind, option.basis)
        if len(real) < len(placed):
            report["verdict"] = "not placed"
            report["reasons"].append(
                "%d of %d replicas have no room: the fleet needs more %s GPUs"
                % (len(placed) - len(real), len(placed), option.model.name)
            )

    # -- per host -----------------------------------------------------------------------------------------------------

    def _hosts(self, bins: list[Bin], dedicated: dict[tuple, Service]) -> dict[str, dict]:
        by_gpu = {b.gpu.key: b for b in bins if b.gpu is not None}
        hosts: dict[str, dict] = {}
        for host in sorted({g.host for g in self.fleet.gpus}):
            gpus = [g for g in self.fleet.gpus if g.host == host]
            layout, specs, ports = [], [], {}
            for gpu in gpus:
                b, owner = by_gpu.get(gpu.key), dedicated.get(gpu.key)
                if owner is not None and gpu.model is not None:
                    layout.append({"gpus": gpu.state.index, "mig_enabled": False})
                if b is None or not b.used:
                    continue
                slots = [_pinned_slot(gpu, p) for p in b.pinned]
                slots += [{"name": r.name, "profile": r.option.profile.name} for r in b.items]
                layout.append({"gpus": gpu.state.index, "mig_enabled": True, "slots": slots})
                specs += [_spec(r, ports) for r in sorted(b.replicas(), key=lambda r: (r.service.name, r.number))]
            changes, starts = self._changes(host, gpus, layout)
            hosts[host] = {
                "gpu_mig_layout": layout,
                "inference_service_specs": specs,
                "gpus": [_gpu_row(g, by_gpu.get(g.key), dedicated.get(g.key), starts) for g in gpus],
                "changes": changes,
            }
        history = {name for slots in self.fleet.slot_maps.values() for name in slots}
        for host, data in hosts.items():
            data["changes"]["moved"] = [name for name in data["changes"]["create"] if name in history]
            for name in data["changes"]["moved"]:
                match = _REPLICA.fullmatch(name)
                if match and match.group(1) in self.report:
                    self.report[match.group(1)]["moved"].append("%s: %s" % (host, name))
        return hosts

    def _changes(self, host: str, gpus: list[Gpu], layout: list) -> tuple[dict, dict[tuple[int, str], int]]:
        """What applying the layout changes on the host (the layout planner's own minimal diff), and where each slot
        starts: (GPU index, slot name) -> first memory slice."""
        states = [g.state for g in gpus]
        models = {g.state.index: g.model for g in gpus}
        try:
            plan = _layout.plan_layout(layout, states, models, previous=self.fleet.slot_maps.get(host))
        except _layout.LayoutError as err:  # never expected: every GPU was filled through the same solver
            raise PlanError(["%s: the planned layout does not fit: %s" % (host, p) for p in err.problems]) from err
        starts = {(s.gpu_index, s.name): s.start for s in plan.slots}
        return {
            "changed": plan.changed,
            "mig_mode": [
                {"gpu": a.gpu_index, "enable": a.enable, "needs_reset": a.needs_reset}
                for a in plan.actions
                if a.op == _layout.MIG_MODE
            ],
            "keep": sorted(s.name for s in plan.slots if s.gi_id is not None),
            "create": sorted(s.name for s in plan.slots if s.gi_id is None),
            "destroy": [
                {
                    "gpu": a.gpu_index,
                    "gi_id": a.gi_id,
                    "profile": a.profile,
                    "start": a.placement[0],
                    "slot": a.slot,
                    "busy_pids": list(a.busy_pids),
                }
                for a in plan.actions
                if a.op == _layout.DESTROY_GI
            ],
            "moved": [],
        }, starts

    def _summary(self, bins: list[Bin], dedicated: dict, hosts: dict) -> dict:
        used = sum(1 for b in bins if b.used and b.gpu is not None) + len(dedicated)
        short: dict[str, int] = {}
        for b in bins:
            if b.gpu is None:
                short[b.model.name] = short.get(b.model.name, 0) + 1
        rows = [row for data in hosts.values() for row in data["gpus"]]
        return {
            "gpus_available": len(self.fleet.gpus),
            "gpus_used": used,
            "gpus_needed": used + sum(short.values()),
            "gpus_short": short,
            "lower_bound_gpus": self._lower_bound() + len(dedicated),
            "spare": {
                "gpus": sum(1 for r in rows if not r["used"]),
                "compute_slices": sum(r["free_compute_slices"] for r in rows if r["mig"] and r["used"]),
                "memory_slices": sum(r["free_memory_slices"] for r in rows if r["mig"] and r["used"]),
            },
            "moved_slots": sum(len(data["changes"]["moved"]) for data in hosts.values()),
            "separate_classes": self.opts["separate_classes"],
            "options_ranked_by": self.ranking,
        }

    def _lower_bound(self) -> int:
        """GPUs no plan goes below, per GPU model the services were planned on: the total compute slices and memory
        slices of each service's leanest option there (busy instances and packing waste aside)."""
        totals: dict[str, list[float]] = {}
        for name, options in self.candidates.items():
            model = self.report[name]["gpu_model"]
            mine = [o for o in options if o.model.name == model]
            total = totals.setdefault(model, [0.0, 0.0])
            total[0] += min(o.replicas * o.profile.compute_slices for o in mine) / mine[0].model.compute_slices
            total[1] += min(o.replicas * o.profile.placement_size for o in mine) / mine[0].model.memory_slices
        return sum(math.ceil(max(total) - 1e-9) for total in totals.values())


def _service_report(service: Service, reasons: list[str]) -> dict:
    return {
        "verdict": None,
        "reasons": list(reasons),
        "class": service.klass,
        "sla": service.sla_spec,
        "target_rps": service.target_rps,
        "demand_rps": round(service.demand, 3),
        "growth_headroom_pct": service.headroom_pct,
        "memory_mib": service.need_mib,
        "memory_basis": service.memory_basis,
        "concurrency": service.concurrency,
        "gpu_model": None,
        "profile": None,
        "replicas": 0,
        "rate_per_replica_rps": None,
        "capacity_rps": None,
        "headroom_pct": None,
        "capacity": {"kind": "unknown", "basis": ""},
        "options": [],
        "placements": [],
        "tests": [],
        "moved": [],
    }


def _rates(report: dict, service: Service, rate: float, replicas: int, kind: str, basis: str) -> None:
    capacity = rate * replicas
    report.update(
        rate_per_replica_rps=round(rate, 3),
        capacity_rps=round(capacity, 3),
        headroom_pct=round(100 * (capacity / service.target_rps - 1), 1),
        capacity={"kind": kind, "basis": basis},
    )


def _test(service: Service, host: str, gpu: str, profile: str, replicas: int) -> dict:
    """The capacity test (an item of the capacity role's ``capacity_tests``) that measures ``service`` on ``profile``."""
    per_replica = service.demand / max(replicas, 1)
    test = {
        "service": service.name,
        "profile": profile,
        "gpu": gpu,
        "sla": service.sla_spec,
        "target_rps": round(per_replica, 3),
        "start_rps": round(max(per_replica / 4, 0.1), 3),
        "concurrency": service.concurrency or 1,
        "host": host,
    }
    if isinstance(service.deploy.get("port"), int):
        test["url"] = "http://%s:%d" % (host, service.deploy["port"])
    return test


def _pinned_slot(gpu: Gpu, pinned: Pinned) -> dict:
    """The slot of a kept instance: pinned at its start; a busy one keeps its compute instances as they are."""
    if pinned.replica is not None:
        return {"name": pinned.replica.name, "profile": pinned.profile.name, "placement": pinned.start}
    slots = _layout.layout_from_state([gpu.state])[0]["slots"]
    slot = next(s for s in slots if s["placement"] == pinned.start)
    return {**slot, "name": pinned.name or slot["name"]}


def _spec(replica: Replica, ports: dict[str, int]) -> dict:
    """The replica's inference_service spec: ``deploy`` with its name, slot and SLA; ports shift per replica on a host."""
    service = replica.service
    spec = dict(service.deploy)
    k = ports[service.name] = ports.get(service.name, -1) + 1
    if isinstance(spec.get("port"), int):
        spec["port"] += k
    if isinstance(spec.get("backend_port"), int):
        spec["backend_port"] += k * _services.SERVER_PORTS.get(spec.get("server", "generic"), 1)
    sla = {"%s_ms" % _analysis.pct_name(p): v for p, v in service.sla.percentiles.items() if p in (95.0, 99.0)}
    sla["target_rps"] = round(service.target_rps / replica.option.replicas, 3)
    limits = spec.get("limits") if isinstance(spec.get("limits"), Mapping) else {}
    if service.concurrency and "max_concurrency" not in limits:  # the c the rates were planned with
        spec["limits"] = {**limits, "max_concurrency": service.concurrency}
    return {**spec, "name": replica.name, "slot": replica.name, "sla": sla}


def _gpu_row(gpu: Gpu, b: Bin | None, owner: Service | None, starts: Mapping[tuple[int, str], int]) -> dict:
    row = {
        "index": gpu.state.index,
        "name": gpu.state.name,
        "mig": gpu.model is not None,
        "used": bool(owner or (b and b.used)),
        "dedicated_to": owner.name if owner else None,
        "slots": [],
        "free_compute_slices": 0,
        "free_memory_slices": 0,
        "note": None,
    }
    if gpu.model is None:
        row["note"] = "no MIG here: time-slicing gives no isolation, so the GPU serves one service whole"
        return row
    if owner is not None:
        return row
    if b is not None:
        row["slots"] = [
            _slot_row(p.name if p.replica is None else p.replica.name, p.replica, p.profile, p.start) for p in b.pinned
        ] + [_slot_row(r.name, r, r.option.profile, starts[(gpu.state.index, r.name)]) for r in b.items]
    held = len(gpu.state.gpu_instances) if gpu.state.mig_current else 0
    if not row["used"] and held:
        row["note"] = "holds %d idle GPU instance(s) no service of the plan uses; left as they are" % held
    profiles = b.profiles if b is not None else []
    row["free_compute_slices"] = gpu.model.compute_slices - sum(p.compute_slices for p in profiles)
    row["free_memory_slices"] = gpu.model.memory_slices - sum(p.placement_size for p in profiles)
    return row


def _slot_row(name: str | None, replica: Replica | None, profile: _catalog.GpuInstanceProfile, start: int) -> dict:
    return {
        "slot": name,
        "service": replica.service.name if replica else None,
        "class": replica.service.klass if replica else None,
        "profile": profile.name,
        "compute_slices": profile.compute_slices,
        "memory_slices": profile.placement_size,
        "start": start,
    }
