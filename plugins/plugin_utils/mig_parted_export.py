# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Export MIG layouts as one mig-parted v1 config for a fleet, and hand it to the GPU Operator (controller side).

Pure: no I/O. A host's current layout (``nvidia_mig`` facts of gpu.mig.mig_facts) or a desired layout (planned on
its facts) becomes mig-parted entries counted as ``nvidia-mig-parted export`` counts: one MIG device per compute
instance, keyed ``Mg.Xgb`` for a GI's whole compute instance and ``Nc.Mg.Xgb`` for a split.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import yaml

from ansible_collections.gpu.mig.plugins.module_utils._mig import apply as _apply
from ansible_collections.gpu.mig.plugins.module_utils._mig import layout as _layout
from ansible_collections.gpu.mig.plugins.module_utils._mig import migparted as _migparted

CONFIG_LABEL = "nvidia.com/mig.config"
STATE_LABEL = "nvidia.com/mig.config.state"
CONFIGMAP_NAME = "custom-mig-config"  # the GPU Operator owns default-mig-parted-config and restores it
CONFIGMAP_NAMESPACE = "gpu-operator"
CONFIGMAP_KEY = "config.yaml"
HEADER = "# mig-parted v1 config written by gpu.mig (filter gpu.mig.mig_parted_export)\n"
_LABEL_VALUE_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)$")
_DNS_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class ExportError(ValueError):
    """Inputs that cannot be exported; ``problems`` lists every one."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class GpuConfig(NamedTuple):
    """What one GPU contributes to a mig-parted config."""

    index: int
    device_filter: str
    enabled: bool
    devices: tuple[tuple[str, int], ...]  # (mig-parted profile key, count), sorted by key


# ---------------------------------------------------------------------------------------------------------------------
# Input rules: one check per kind of value the filters take


def label_value_problem(value: Any) -> str | None:
    """Why ``value`` cannot be a Kubernetes label value (config names become ``nvidia.com/mig.config`` values)."""
    if isinstance(value, str) and _LABEL_VALUE_RE.fullmatch(value):
        return None
    return "must be a Kubernetes label value: 1-63 letters, digits, '-', '_' or '.', starting and ending alphanumeric"


def _dns_subdomain(value: Any) -> str | None:
    ok = isinstance(value, str) and len(value) <= 253 and _DNS_SUBDOMAIN_RE.fullmatch(value)
    return None if ok else "must be a Kubernetes object name: lower-case letters, digits, '-' and '.', at most 253"


def _dns_label(value: Any) -> str | None:
    ok = isinstance(value, str) and _DNS_LABEL_RE.fullmatch(value)
    return None if ok else "must be a Kubernetes namespace: 1-63 lower-case letters, digits and '-'"


def _facts(value: Any) -> str | None:
    if isinstance(value, Mapping) and isinstance(value.get("gpus"), list):
        return None
    return "must be the host's nvidia_mig facts from gpu.mig.mig_facts ({driver, gpus, summary})"


def _layout_value(value: Any) -> str | None:
    return None if isinstance(value, list) else "must be a layout: a list of entries {gpus, mig_enabled, slots}"


def _mapping_of(what: str, check) -> Any:
    """A check for ``{host: value}`` mappings; each value by ``check``."""

    def mapping_check(value: Any, where: str, problems: list[str]) -> None:
        if not isinstance(value, Mapping):
            problems.append("%s must map host names to %s, not %s" % (where, what, _layout._shown(value)))
            return
        for host, item in value.items():
            why = check(item)
            if why:
                problems.append("%s[%s] is %s; it %s" % (where, host, _layout._shown(item), why))

    return mapping_check


EXPORT_RULES = (
    ("facts", True, _mapping_of("nvidia_mig facts", _facts)),
    ("layouts", False, _mapping_of("layouts", _layout_value)),
    ("names", False, _mapping_of("config names", label_value_problem)),
)
"""mig_parted_export's arguments: (name, required, check appending every problem)."""


def _argument_problems(rules, values: Mapping[str, Any], where: str) -> list[str]:
    problems: list[str] = []
    for name, required, check in rules:
        value = values.get(name)
        if value is None:
            if required:
                problems.append("%s: %r is required" % (where, name))
            continue
        check(value, "%s: %s" % (where, name), problems)
    return problems


# ---------------------------------------------------------------------------------------------------------------------
# One host -> per-GPU configs


def _unexportable(host: str, gpus: list[dict]) -> list[str]:
    return [
        "%s GPU %s: not exported, it could not be read (%s); a mig-parted config leaves it alone"
        % (host, gpu["index"], gpu["error"])
        for gpu in gpus
        if gpu.get("error")
    ]


def _primary_id(gpu: Mapping) -> str | None:
    """The GPU's PCI device id as mig-parted's device filter (``0x20B010DE``; a subsystem id dropped), or None."""
    device_id = None if gpu.get("error") else gpu.get("pci_device_id")
    if not isinstance(device_id, str) or not device_id:
        return None
    return "0x" + str(device_id).split(":", 1)[0][2:].upper()


def _device_filter(host: str, gpu: Mapping, problems: list[str]) -> str:
    device_id = _primary_id(gpu)
    if device_id is None:
        problems.append(
            "%s GPU %s: the facts lack pci_device_id (the mig-parted device filter); gather them again with"
            " gpu.mig.mig_facts" % (host, gpu.get("index"))
        )
    return device_id or ""


def _counted(keys: list[str]) -> tuple[tuple[str, int], ...]:
    return tuple((key, keys.count(key)) for key in sorted(set(keys)))


def gpus_from_facts(host: str, facts: Mapping) -> tuple[list[GpuConfig], list[str]]:
    """The current layout of every readable GPU, and warnings for what a mig-parted config cannot express.

    Raises ExportError when a GPU's facts lack what the config needs.
    """
    problems: list[str] = []
    warnings = _unexportable(host, facts["gpus"])
    configs = []
    for gpu in facts["gpus"]:
        if gpu.get("error"):
            continue
        mig = gpu["mig"]
        enabled = bool(mig["supported"] and mig["current"])
        if mig["supported"] and mig.get("pending") is not None and mig["pending"] != mig["current"]:
            warnings.append(
                "%s GPU %d: MIG mode is %s, %s pending a GPU reset; the config records the current mode"
                % (host, gpu["index"], "on" if mig["current"] else "off", "on" if mig["pending"] else "off")
            )
        keys = []
        for gi in gpu["gpu_instances"] if enabled else ():
            if not gi["compute_instances"]:
                warnings.append(
                    "%s GPU %d: GPU instance %d (%s at slice %d) holds no compute instance; mig-parted counts compute"
                    " instances, so the config cannot express it (applying the config would destroy it)"
                    % (host, gpu["index"], gi["id"], gi["profile"], gi["placement"]["start"])
                )
            keys.extend(ci["profile"] for ci in gi["compute_instances"])
        configs.append(GpuConfig(gpu["index"], _device_filter(host, gpu, problems), enabled, _counted(keys)))
    if problems:
        raise ExportError(problems)
    return configs, warnings


def gpus_from_layout(host: str, facts: Mapping, layout: list) -> tuple[list[GpuConfig], list[str]]:
    """The GPUs a desired layout selects on this host, as planned there (``_layout.plan_layout``).

    Raises ExportError with the planner's problems when the layout does not fit the host.
    """
    _facts_unused, states, models = _apply.host_from_facts(facts["gpus"])
    try:
        plan = _layout.plan_layout(layout, states, models)
    except _layout.LayoutError as err:
        raise ExportError(["%s: %s" % (host, problem) for problem in err.problems]) from err
    by_index = {g["index"]: g for g in facts["gpus"]}
    problems: list[str] = []
    configs = []
    for gpu in plan.gpus:
        keys = [ci.profile for slot in plan.slots if slot.gpu_index == gpu.index for ci in slot.compute_instances]
        device_filter = _device_filter(host, by_index[gpu.index], problems)
        configs.append(GpuConfig(gpu.index, device_filter, gpu.mig_after, _counted(keys)))
    if problems:
        raise ExportError(problems)
    return configs, _unexportable(host, facts["gpus"])


def host_entries(configs: list[GpuConfig], filters: Mapping[int, str | None]) -> list[dict[str, Any]]:
    """mig-parted entries for one host, merged as ``nvidia-mig-parted export`` merges them.

    GPUs with equal ``mig-enabled`` and ``mig-devices`` share an entry; its ``devices`` is ``all`` when it holds
    every GPU of the host its device filters match (``filters``: index -> device filter of every GPU, None when
    unknown; one unknown rules ``all`` out), so a host with more or fewer GPUs of the model reads it the same way.
    Unlike mig-parted's export the device filter is kept on a single-model host too: one file serves a mixed fleet.
    """
    groups: dict[tuple[bool, tuple], list[GpuConfig]] = {}
    for gpu in sorted(configs, key=lambda g: g.index):
        groups.setdefault((gpu.enabled, gpu.devices), []).append(gpu)
    entries = []
    for (enabled, devices), members in groups.items():
        wanted = sorted({g.device_filter for g in members})
        indices = [g.index for g in members]
        matching = sorted(i for i, f in filters.items() if f in wanted)
        whole = None not in filters.values() and indices == matching
        entries.append(
            {
                "device-filter": wanted[0] if len(wanted) == 1 else wanted,
                "devices": "all" if whole else indices,
                "mig-enabled": enabled,
                "mig-devices": dict(devices),
            }
        )
    return entries


# ---------------------------------------------------------------------------------------------------------------------
# A fleet -> one config file


def _content_key(entries: list[dict]) -> str:
    return json.dumps(entries, sort_keys=True)


def describe(entries: list[dict]) -> str:
    """A readable name for a config's entries, e.g. ``all-7x1g.5gb`` or ``gpu0-2g.10gb-4g.20gb_gpu1-enabled``."""
    parts = []
    for entry in entries:
        devices = entry["devices"]
        where = "all" if devices == "all" else "gpu" + ".".join(str(i) for i in devices)
        counts = entry["mig-devices"]
        what = (
            "-".join(key if n == 1 else "%dx%s" % (n, key) for key, n in counts.items())
            if counts
            else ("enabled" if entry["mig-enabled"] else "disabled")
        )
        parts.append("%s-%s" % (where, what))
    return re.sub(r"[^A-Za-z0-9_.-]", "-", "_".join(parts))


def _hashed(name: str, key: str) -> str:
    """``name`` cut to fit a label value, with a hash of the content that tells configs apart."""
    return "%s-%s" % (name[:56].rstrip("-_."), hashlib.sha256(key.encode()).hexdigest()[:6])


def _filters(entries: list[dict]) -> set[str]:
    return {
        f
        for e in entries
        for f in ([e["device-filter"]] if isinstance(e["device-filter"], str) else e["device-filter"])
    }


def _merged(configs: list[list[dict]]) -> list[dict] | None:
    """Several hosts' entries as one config, when no two of them share a device filter (then each host's GPUs match
    its own entries only, and the others' select nothing there); None when they do."""
    seen: set[str] = set()
    merged = []
    for entries in configs:
        if _filters(entries) & seen:
            return None
        seen |= _filters(entries)
        merged.extend(entries)
    return merged


def _name_configs(
    contents: dict[str, list[dict]], given: dict[str, str], hosts: dict[str, list[str]]
) -> tuple[dict[str, list[dict]], dict[str, str], list[str]]:
    """(name -> entries, content key -> name, problems): each content under the caller's name or ``describe``'s.

    Contents wanting one name share it when they are for different GPU models (``_merged``: ``all-disabled`` for an
    H100 host and an L4 host); otherwise a derived name gets a hash of its content (a given one is a problem), as
    does a derived name too long for a label value. ``hosts``: content key -> its hosts, for messages.
    """
    wanted = {key: given.get(key) or describe(entries) for key, entries in contents.items()}
    configs: dict[str, list[dict]] = {}
    names: dict[str, str] = {}
    problems = []
    for name in sorted(set(wanted.values())):
        keys = sorted(k for k in wanted if wanted[k] == name)
        merged = _merged([contents[k] for k in keys])
        derived = name not in given.values()
        if merged is not None and not (derived and label_value_problem(name)):
            configs[name] = merged
            names.update(dict.fromkeys(keys, name))
        elif derived:
            for key in keys:
                names[key] = _hashed(name, key)
                configs[names[key]] = contents[key]
        else:
            problems.append(
                "names: %r is given to hosts with different layouts for the same GPU model (%s); give each layout"
                " its own name" % (name, ", ".join(sorted(h for k in keys for h in hosts[k])))
            )
    return configs, names, problems


def export_fleet(
    facts: Mapping[str, Any], layouts: Mapping[str, Any] | None = None, names: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """One mig-parted v1 config for a fleet: one named config per distinct layout (layouts of different GPU models
    may share one), and which host uses which.

    ``facts``: host -> nvidia_mig facts; ``layouts``: host -> desired layout, exported as planned on that host
    instead of its current layout; ``names``: host -> config name to use instead of the derived one. Returns
    ``{config, text, hosts, warnings}``: the parsed config, its YAML text, host -> config name (hosts with nothing
    to export are left out, with a warning) and every warning. Raises ExportError listing every problem.
    """
    problems = _argument_problems(
        EXPORT_RULES, {"facts": facts, "layouts": layouts, "names": names}, "mig_parted_export"
    )
    if not isinstance(facts, Mapping):
        raise ExportError(problems)
    layouts = layouts if isinstance(layouts, Mapping) else {}
    names = names if isinstance(names, Mapping) else {}
    problems += ["mig_parted_export: layouts[%s]: no facts for this host" % h for h in layouts if h not in facts]
    problems += ["mig_parted_export: names[%s]: no facts for this host" % h for h in names if h not in facts]
    warnings: list[str] = []
    by_host: dict[str, str] = {}
    contents: dict[str, list[dict]] = {}
    for host in sorted(facts):
        host_facts, host = facts[host], str(host)
        if _facts(host_facts) or _layout_value(layouts.get(host, [])):
            continue  # named by the argument rules
        try:
            if host in layouts:
                gpus, found = gpus_from_layout(host, host_facts, layouts[host])
            else:
                gpus, found = gpus_from_facts(host, host_facts)
        except ExportError as err:
            problems.extend(err.problems)
            continue
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            problems.append(
                "%s: the nvidia_mig facts are malformed (%s: %s); gather them again with gpu.mig.mig_facts"
                % (host, type(err).__name__, err)
            )
            continue
        warnings.extend(found)
        if not gpus:
            warnings.append("%s: no GPU to export; the host gets no config name" % host)
            continue
        entries = host_entries(gpus, {g["index"]: _primary_id(g) for g in host_facts["gpus"]})
        key = _content_key(entries)
        contents[key] = entries
        by_host[host] = key
    given: dict[str, str] = {}
    for host, name in sorted(names.items()):
        key = by_host.get(str(host))
        if key is None or label_value_problem(name):
            continue
        if given.get(key, name) != name:
            problems.append(
                "names: hosts with the same layout get one config; %s is named %r, another host %r"
                % (host, name, given[key])
            )
        given.setdefault(key, str(name))
    hosts_of = {key: sorted(h for h in by_host if by_host[h] == key) for key in contents}
    configs, config_names, naming_problems = _name_configs(contents, given, hosts_of)
    problems += naming_problems
    if problems:
        raise ExportError(problems)
    config = {"version": "v1", "mig-configs": {name: configs[name] for name in sorted(configs)}}
    return {
        "config": config,
        "text": config_text(config),
        "hosts": {host: config_names[key] for host, key in by_host.items()},
        "warnings": warnings,
    }


def config_text(config: Mapping) -> str:
    """The config file as written: YAML in mig-parted's key order, device filters quoted (never read as numbers)."""
    return HEADER + yaml.safe_dump(_plain(config), sort_keys=False, default_flow_style=False)


def _plain(value: Any) -> Any:
    """Builtin types only (Ansible hands filters tagged subclasses, which yaml's safe dumper refuses)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    return str(value)


# ---------------------------------------------------------------------------------------------------------------------
# GPU Operator hand-off


def parsed_config(config: Any) -> tuple[Any, list[str]]:
    """A mig-parted config given parsed or as YAML text, and every problem with it (gpu.mig.mig_instances' checks,
    and config names that cannot be ``nvidia.com/mig.config`` label values)."""
    if isinstance(config, str):
        try:
            config = yaml.safe_load(config)
        except yaml.YAMLError as err:
            return None, ["the mig-parted config is not YAML: %s" % err]
    problems = _migparted.check_config(config)
    if not problems:
        problems = [
            "mig-configs: config name %r %s" % (name, label_value_problem(name))
            for name in config["mig-configs"]
            if label_value_problem(name)
        ]
    return config, problems


def configmap(config: Any, name: str = CONFIGMAP_NAME, namespace: str = CONFIGMAP_NAMESPACE) -> dict[str, Any]:
    """The ConfigMap the GPU Operator's mig-manager reads (``spec.migManager.config.name`` of its ClusterPolicy).

    ``config``: a parsed mig-parted config or its YAML text, checked as gpu.mig.mig_instances checks one. Raises
    ExportError listing every problem.
    """
    problems = [
        "%s %s" % (label, why)
        for label, why in (("name", _dns_subdomain(name)), ("namespace", _dns_label(namespace)))
        if why
    ]
    problems += parsed_config(config)[1]
    if problems:
        raise ExportError(["mig_parted_configmap: %s" % p for p in problems])
    text = config if isinstance(config, str) else config_text(config)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": str(name),
            "namespace": str(namespace),
            "labels": {"app.kubernetes.io/managed-by": "gpu.mig"},
        },
        "data": {CONFIGMAP_KEY: str(text)},
    }


def node_labels(hosts: Any, nodes: Mapping[str, Any] | None = None, config: Any = None) -> list[dict[str, Any]]:
    """Node patches that select each host's config: ``nvidia.com/mig.config=<name>``, sorted by node name.

    ``hosts``: host -> config name (``hosts`` of mig_parted_export); ``nodes``: host -> Kubernetes node name where
    they differ; ``config``: when given, every name must be one of its configs. Raises ExportError listing every
    problem.
    """
    nodes = nodes or {}
    problems: list[str] = []
    if not isinstance(hosts, Mapping):
        raise ExportError(
            ["mig_parted_node_labels: must map host names to config names, not %s" % _layout._shown(hosts)]
        )
    if not isinstance(nodes, Mapping):
        problems.append("nodes must map host names to node names, not %s" % _layout._shown(nodes))
        nodes = {}
    known = None
    if config is not None:
        parsed, config_problems = parsed_config(config)
        problems += config_problems
        known = None if config_problems else set(parsed["mig-configs"])
    patches = {}
    for host, name in hosts.items():
        node = nodes.get(host, host)
        if label_value_problem(name):
            problems.append("%s: config name %s %s" % (host, _layout._shown(name), label_value_problem(name)))
        elif known is not None and name not in known:
            problems.append("%s: config %r is not in the config; it has %s" % (host, name, ", ".join(sorted(known))))
        why = _dns_subdomain(node)
        if why:
            problems.append(
                "%s: node name %s %s; map the host to its node name in 'nodes'" % (host, _layout._shown(node), why)
            )
        if str(node) in patches and patches[str(node)] != name:
            problems.append("node %s: two hosts name it, with configs %r and %r" % (node, patches[str(node)], name))
        patches[str(node)] = str(name)
    problems += ["nodes[%s]: no such host in the config names" % host for host in nodes if host not in hosts]
    if problems:
        raise ExportError(["mig_parted_node_labels: %s" % p for p in problems])
    return [
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node, "labels": {CONFIG_LABEL: patches[node]}}}
        for node in sorted(patches)
    ]
