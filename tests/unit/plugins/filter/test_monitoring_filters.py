# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Filters gpu.mig.prometheus_rules, prometheus_targets, prometheus_config and dcgm_counters: thin wrappers, one
error listing every problem, values as Ansible hands them over, and docs that name every field of the rule tables."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ansible.errors import AnsibleFilterError

from ansible_collections.gpu.mig.plugins.filter import monitoring as _filters
from ansible_collections.gpu.mig.plugins.filter.monitoring import FilterModule
from ansible_collections.gpu.mig.plugins.plugin_utils import monitoring as _monitoring

REPO = Path(__file__).resolve().parents[4]
FILTERS = FilterModule().filters()
SLOTS = {"chat": {"gpu_index": 0, "gpu_uuid": "GPU-a", "profile": "3g.20gb", "memory_mib": 20096}}
CHAT = {"name": "chat", "slot": "chat", "command": ["/usr/local/bin/srv"], "port": 8000, "backend_port": 18000}
HOSTS = [{"host": "gpu1", "address": "127.0.0.1", "services": [CHAT], "slots": SLOTS}]
CONFIG = {"targets_dir": "/etc/prometheus/file_sd/gpu-mig", "rules_dir": "/etc/prometheus/rules.d/gpu-mig"}


class TaggedStr(str):
    """Stands for Ansible 2.19's tagged strings (builtin subclasses) that reach a filter."""


class TaggedDict(dict):
    pass


class TaggedList(list):
    pass


def tagged(value: object) -> object:
    if isinstance(value, dict):
        return TaggedDict({TaggedStr(k): tagged(v) for k, v in value.items()})
    if isinstance(value, list):
        return TaggedList(tagged(v) for v in value)
    return TaggedStr(value) if isinstance(value, str) else value


def test_the_filters_are_the_plugin_utils_functions():
    assert sorted(FILTERS) == ["dcgm_counters", "prometheus_config", "prometheus_rules", "prometheus_targets"]
    assert FILTERS["prometheus_rules"](HOSTS, options={"for": "1m"}) == _monitoring.render_rules(
        HOSTS, None, {"for": "1m"}
    )
    assert FILTERS["prometheus_targets"](HOSTS) == _monitoring.targets(HOSTS)
    assert FILTERS["prometheus_config"](CONFIG) == _monitoring.scrape_config(CONFIG)
    assert FILTERS["dcgm_counters"]([]) == _monitoring.dcgm_counters_csv([])


def test_tagged_values_render_like_plain_ones():
    plain = FILTERS["prometheus_rules"](HOSTS, options={"runbook_url": "https://wiki.example/gpu#x"})
    assert (
        FILTERS["prometheus_rules"](tagged(HOSTS), options=tagged({"runbook_url": "https://wiki.example/gpu#x"}))
        == plain
    )
    assert FILTERS["prometheus_config"](tagged({**CONFIG, "external_labels": {"dc": "a"}})) == FILTERS[
        "prometheus_config"]({**CONFIG, "external_labels": {"dc": "a"}})  # fmt: skip


@pytest.mark.parametrize(
    ("name", "args", "kwargs", "header", "lines"),
    [
        ("prometheus_rules", ([{**HOSTS[0], "address": "a b"}],), {"options": {"for": "x"}, "capacity": [{}]},
         "Prometheus rules cannot be generated", 5),
        ("prometheus_targets", ([{"host": "gpu1", "node_exporter_listen": "9100"}],), {},
         "Prometheus targets cannot be generated", 1),
        ("prometheus_config", ({"rules_dir": "x", "external_labels": {"0": "a"}},), {},
         "the Prometheus configuration cannot be generated", 3),
        ("dcgm_counters", (["x", "DCGM_FI_DEV_FB_FREE"],), {}, "the dcgm-exporter counters cannot be generated", 2),
    ],
)  # fmt: skip
def test_every_problem_in_one_filter_error(name: str, args: tuple, kwargs: dict, header: str, lines: int):
    with pytest.raises(AnsibleFilterError) as info:
        FILTERS[name](*args, **kwargs)
    first, *problems = str(info.value.message).split("\n- ")
    assert first == header + ":" and len(problems) == lines, str(info.value)


DOC_FIELDS = {
    "prometheus_rules": [*_monitoring.OPTION_RULES, *_monitoring.CAPACITY_RULES],
    "prometheus_targets": [*_monitoring.HOST_RULES, "services", "slots", *_monitoring.TARGET_FILES],
    "prometheus_config": [*_monitoring.CONFIG_RULES, "external_labels", "scrape_configs_only"],
    "dcgm_counters": [field for field, *_rest in _monitoring.DCGM_COUNTERS],
}


@pytest.mark.parametrize("name", sorted(DOC_FIELDS))
def test_docs_name_every_field_of_the_rule_tables(name: str):
    docs = yaml.safe_load((REPO / "plugins" / "filter" / f"{name}.yml").read_text())
    assert docs["DOCUMENTATION"]["name"] == name
    parameters = list(inspect.signature(getattr(_filters, name)).parameters)
    assert sorted(docs["DOCUMENTATION"]["options"]) == sorted(["_input", *parameters[1:]])
    text = yaml.safe_dump(docs, width=10_000)
    missing = [f for f in DOC_FIELDS[name] if f"C({f})" not in text]
    assert missing == [], f"{name}.yml does not mention {missing}"


def test_ansible_doc_renders_the_four_filters():
    # The collection as this process imports it (the checkout's .build/collections, or ansible-test's copy).
    collections = next(p.parent for p in Path(_filters.__file__).parents if p.name == "ansible_collections")
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(collections)}
    ansible_doc = Path(sys.executable).with_name("ansible-doc")
    result = subprocess.run(
        [str(ansible_doc), "-t", "filter", "--json", *(f"gpu.mig.{n}" for n in sorted(DOC_FIELDS))],
        capture_output=True, text=True, timeout=120, check=False, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert sorted(yaml.safe_load(result.stdout)) == [f"gpu.mig.{n}" for n in sorted(DOC_FIELDS)]


def test_the_rules_docs_state_the_option_defaults_of_the_table():
    docs = yaml.safe_load((REPO / "plugins" / "filter" / "prometheus_rules.yml").read_text())
    text = " ".join(docs["DOCUMENTATION"]["options"]["options"]["description"])
    for key, rule in _monitoring.OPTION_RULES.items():
        if key != "runbook_url":
            default = rule.default if isinstance(rule.default, str) else f"{rule.default:g}"
            assert f"C({key}) ({default}" in text, key
