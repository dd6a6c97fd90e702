# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""_capacity/options.py is the one definition of the capacity-test options: the module's documentation states it
option by option (suboptions included), and the module, the engine and the noisy-neighbour split use it, not copies."""

from __future__ import annotations

import pytest
import yaml

from ansible_collections.gpu.mig.plugins.module_utils._capacity import analysis, loadgen, options
from ansible_collections.gpu.mig.plugins.modules import capacity_test

DOCUMENTED = yaml.safe_load(capacity_test.DOCUMENTATION)["options"]
# what only direct callers of the engine leave out (options.py says why); every other engine default is the option's
ENGINE_ONLY = {"start_rps": 10.0, "sample_interval": 0.05}


def _paths(spec: dict, docs: dict, prefix: str = "") -> list:
    """(path, spec entry, documentation entry) for every option and suboption, either side's missing ones as None."""
    out = []
    for name in sorted(set(spec) | set(docs)):
        s, d = spec.get(name), docs.get(name)
        out.append((prefix + name, s, d))
        if s is not None and d is not None:
            out.extend(_paths(s.get("options") or {}, d.get("suboptions") or {}, prefix + name + "."))
    return out


PATHS = _paths(options.ARGUMENT_SPEC, DOCUMENTED)


@pytest.mark.parametrize(("path", "spec", "doc"), PATHS, ids=[p[0] for p in PATHS])
def test_documentation_states_each_option_of_the_table(path, spec, doc):
    assert spec is not None, "%s is documented but not in _capacity/options.py" % path
    assert doc is not None, "%s is in _capacity/options.py but not documented" % path
    for key in ("type", "elements", "choices", "default"):
        assert doc.get(key) == spec.get(key), "%s: %s differs" % (path, key)
    assert bool(doc.get("required")) == bool(spec.get("required")), path
    assert bool(doc.get("suboptions")) == bool(spec.get("options")), path


def test_the_walk_reaches_suboptions():
    paths = [p[0] for p in PATHS]
    assert "noisy_neighbour.payload_mix.weight" in paths and "payload_mix.headers" in paths
    assert len(paths) == len(set(paths)) > len(options.ARGUMENT_SPEC) + 30


def test_module_and_engine_use_the_table_itself():
    """A copy in the module or the engine is a second definition that can drift: they hold the table's objects."""
    assert capacity_test.ARGUMENT_SPEC is options.ARGUMENT_SPEC
    assert loadgen.DEFAULTS is options.DEFAULTS
    assert loadgen.NEIGHBOUR_KEYS is options.NEIGHBOUR_KEYS and analysis.NEIGHBOUR_KEYS is options.NEIGHBOUR_KEYS


def test_engine_defaults_are_the_option_defaults():
    spec = options.ARGUMENT_SPEC
    assert set(options.DEFAULTS) == set(spec) | set(ENGINE_ONLY)
    differing = {k: v for k, v in options.DEFAULTS.items() if k not in spec or v != spec[k].get("default")}
    assert differing == ENGINE_ONLY
    assert options.DEFAULTS["headers"] is not spec["headers"]["default"]  # the engine cannot change the spec


def test_a_neighbour_sets_service_options_without_their_defaults():
    neighbour = options.ARGUMENT_SPEC["noisy_neighbour"]["options"]
    for key in options.NEIGHBOUR_KEYS:
        own = {k: v for k, v in options.ARGUMENT_SPEC[key].items() if k not in ("default", "required")}
        assert {k: v for k, v in neighbour[key].items() if k != "required"} == own, key
    assert [k for k, v in neighbour.items() if v.get("required")] == ["url", "rps"]
    assert set(neighbour) - set(options.NEIGHBOUR_KEYS) == {"rps", "multipliers", "a_rps", "hold", "warmup"}
    assert set(analysis.NEIGHBOUR_RULES) == set(neighbour)


def test_required_if_names_options_and_their_values():
    spec = options.ARGUMENT_SPEC
    for key, value, needed in options.REQUIRED_IF:
        assert value in spec[key]["choices"] and set(needed) <= set(spec)
    assert all(set(group) <= set(spec) for group in options.MUTUALLY_EXCLUSIVE)
    assert set(options.MUTUALLY_EXCLUSIVE[0]) == set(analysis.PAYLOAD_SOURCES)
