# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Capacity options: one table of rules, checked before the first request, every problem named at once.

The fuzz tests build malformed values for every field of the rule tables and assert a CapacityError (or the
module's failure) that names the field, and that the endpoint never saw a request.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import re
from pathlib import Path

import pytest
import yaml
from ansible.module_utils.testing import patch_module_args
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ansible_collections.gpu.mig.plugins.module_utils._capacity import analysis as cap
from ansible_collections.gpu.mig.plugins.module_utils._capacity import loadgen as lg
from ansible_collections.gpu.mig.plugins.modules import capacity_test
from ansible_collections.gpu.mig.plugins.plugin_utils import capacity_cli as cli

DOCS = Path(__file__).resolve().parents[3] / "docs" / "capacity.md"
_FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _options(server, **kw) -> dict:
    opts = {"url": server.url(), "sla": {"p95_ms": 100}, "start_rps": 10, "hold": 1, "max_steps": 2}
    opts.update(kw)
    return opts


def _refused(options: dict) -> str:
    """The CapacityError message of a check-only run (anything else escapes and fails the test)."""
    with pytest.raises(cap.CapacityError) as info:
        lg.run_sync(lg.run_capacity_test(options, check_only=True))
    return str(info.value)


# ------------------------------------------------------------------ the issue's reproductions


@pytest.mark.parametrize(
    "option, value",
    [
        ("max_steps", 100000),  # OverflowError in the linear plan's rates before
        ("concurrency", 0),
        ("concurrency", -4),
        ("max_connections", 0),
        ("baseline_rps", -5.0),
        ("steps_after_knee", -1),
        ("cooldown", -1.0),
        ("target_rps", -10.0),
        ("target_rps", 0.0),
        ("batch", 0),
        ("variants", -1),
    ],
)
def test_issue_reproductions_are_refused_before_the_probe(recording_server, option, value):
    before = len(recording_server.requests)
    message = _refused(_options(recording_server, **{option: value}))
    assert message.startswith("%s must be " % option) and "got %s" % value in message
    assert len(recording_server.requests) == before


def test_the_largest_plan_allowed_stays_finite():
    plan = cap.build_plan("linear", start_rps=cap.MAX_RPS, step_pct=200, max_steps=cap.MAX_STEPS)
    assert len(plan.rates()) == cap.MAX_STEPS and math.isfinite(plan.rates()[-1])


def test_every_problem_is_listed_at_once(recording_server):
    message = _refused(
        _options(
            recording_server,
            max_steps=100000,
            concurrency=0,
            hold=math.nan,
            headers={"Authorization": "Bearer x\r\nX-Evil: 1"},
            sla={"p95_ms": 100, "max_error_rate": 2},
            noisy_neighbour={"url": "ftp://b", "rps": -1, "multipliers": []},
            payload={"a": 1},
            template="$seq",
        )
    )
    assert message.startswith("9 problems: ")
    for named in (
        "max_steps must be from 1 to 500, got 100000",
        "concurrency must be from 1 to 100000, got 0",
        "hold must be a finite number > 0 and <= 86400, got nan",
        "headers: the value of header 'Authorization' must be one line",
        "sla.max_error_rate must be >= 0 and < 1, got 2",
        "noisy_neighbour.url must be http:// or https://",
        "noisy_neighbour.rps must be > 0",
        "noisy_neighbour.multipliers must be a non-empty list",
        "give only one of payload, payload_file, template, template_file, payload_mix; got payload, template",
    ):
        assert named in message, named
    assert "Bearer" not in message  # a header value is never repeated


@pytest.mark.parametrize(
    "options, message",
    [
        ({"max_rps": 5, "start_rps": 10}, "max_rps 5 is below start_rps 10"),
        ({"plan": "none"}, "plan none runs no capacity search: it needs noisy_neighbour with a_rps"),
        ({"url": "http://user:secret@127.0.0.1/"}, "url must not hold credentials"),
        ({"url": "http://127.0.0.1:99999/"}, "url must be http:// or https:// with a host"),
        ({"method": "GET /x HTTP/1.1\r\nX:"}, "method must be an HTTP method"),
        ({"headers": {"Host": "other"}}, "headers: Host is set by the load generator"),
        ({"headers": {"X-Tag": "caf\u20ac"}}, "value of header 'X-Tag' must be one line of Latin-1 text"),
        ({"payload": {"x": math.inf}}, "payload must be a string, or a mapping or list that JSON can encode"),
        ({"sla": "p95<1.2.3ms"}, "sla: cannot parse the term 'p95<1.2.3ms'"),
        ({"sla": {"p95_ms": None}}, "sla names no latency percentile"),
        ({"payload_mix": [{"name": "a", "payload": {}, "template": "x"}]}, "payload_mix[0]: give only one of"),
        ({"noisy_neighbour": {"url": "http://b/", "rps": 1, "colour": 1}}, "noisy_neighbour.colour is not an option"),
        ({"growth": 1.0}, "growth must be > 1 and <= 100, got 1.0"),
        ({"confirm": "yes"}, "confirm must be true or false, got 'yes'"),
        ({"seed": True}, "seed must be an integer from 0 to 9223372036854775807, got True"),
    ],
)
def test_combinations_and_formats_are_refused(recording_server, options, message):
    before = len(recording_server.requests)
    assert message in _refused(_options(recording_server, **options))
    assert len(recording_server.requests) == before


def test_module_and_cli_go_through_the_rules(recording_server, capsys):
    before = len(recording_server.requests)
    args = _options(recording_server, concurrency=0, max_steps=100000)
    with patch_module_args(dict(args, _ansible_check_mode=True)), pytest.raises(SystemExit):
        capacity_test.main()
    result = json.loads(capsys.readouterr().out)
    assert result["failed"] and result["msg"].startswith("2 problems: max_steps must be from 1 to 500")
    argv = ["run", "--url", recording_server.url(), "--sla", "p95<100ms", "--start-rps", "10", "--check"]
    assert cli.main([*argv, "--max-connections", "0", "--cooldown", "-1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "max_connections must be from 1 to 65536, got 0" in err and "cooldown must be from 0 to 3600" in err
    noisy = ["noisy", "--url-a", recording_server.url(), "--url-b", recording_server.url(), "--sla", "p95<1s"]
    assert cli.main([*noisy, "--rps-a", "5", "--rps-b", "-2", "--quiet"]) == 2
    assert "noisy_neighbour.rps must be > 0 and <= 100000, got -2.0" in capsys.readouterr().err
    assert len(recording_server.requests) == before
    # ansible-core's own conversion raises OverflowError here; the module reads the numbers as given instead
    with patch_module_args(dict(args, max_steps=math.inf, start_rps=10**400)), pytest.raises(SystemExit):
        capacity_test.main()
    message = json.loads(capsys.readouterr().out)["msg"]
    assert "start_rps must be a finite number" in message and "max_steps must be an integer" in message
    with pytest.raises(SystemExit):  # argparse: a clear usage error, not a traceback
        cli.main(["run", "--url", recording_server.url(), "--sla", "@/nonexistent/sla.json"])
    assert "cannot read /nonexistent/sla.json" in capsys.readouterr().err


# ------------------------------------------------------------------ the tables against the spec and the docs


def _spec_rules():
    """(Ansible spec, rule table) pairs: the options, noisy_neighbour's and payload_mix items'."""
    spec = capacity_test.ARGUMENT_SPEC
    return [
        (spec, cap.OPTION_RULES),
        (spec["noisy_neighbour"]["options"], cap.NEIGHBOUR_RULES),
        (spec["payload_mix"]["options"], cap.PAYLOAD_RULES),
        (spec["noisy_neighbour"]["options"]["payload_mix"]["options"], cap.PAYLOAD_RULES),
    ]


@pytest.mark.parametrize("spec, rules", _spec_rules())
def test_every_spec_option_has_a_rule_of_its_type(spec, rules):
    assert set(spec) == set(rules)
    for name, s in spec.items():
        assert rules[name].type == s["type"], name
        assert tuple(s.get("choices") or ()) == rules[name].choices, name
        if s.get("default") is not None:  # the module's defaults pass their own rules
            assert rules[name].problems(name, s["default"]) == [], name


def test_engine_defaults_pass_the_rules():
    assert cap.option_problems(dict(lg.DEFAULTS, url="http://h/", sla="p95<1s")) == []


def test_docs_table_states_each_rule():
    table = DOCS.read_text().split("| Option | Rule |\n|---|---|\n", 1)[1].split("\n\n", 1)[0]
    rows = dict(re.findall(r"^\| `([^`]+)` \| (.+) \|$", table, re.MULTILINE))
    expected = {k: r.describe() for k, r in cap.OPTION_RULES.items()}
    expected.update(
        {"noisy_neighbour." + k: r.describe() for k, r in cap.NEIGHBOUR_RULES.items() if k not in cap.NEIGHBOUR_KEYS}
    )
    expected.update({"payload_mix[]." + k: cap.PAYLOAD_RULES[k].describe() for k in ("name", "weight")})
    expected["sla.pNN_ms"] = cap.LATENCY_LIMIT.describe()
    expected.update({"sla." + k: r.describe() for k, r in cap.SLA_RULES.items()})
    assert rows == expected


# ------------------------------------------------------------------ fuzz: malformed values of every field


def _fields() -> dict:
    """Every field of the rule tables by its path: options, noisy_neighbour.*, payload_mix[0].*, sla.*."""
    fields = dict(cap.OPTION_RULES)
    fields.update({"noisy_neighbour." + k: r for k, r in cap.NEIGHBOUR_RULES.items()})
    fields.update({"payload_mix[0]." + k: r for k, r in cap.PAYLOAD_RULES.items()})
    fields.update({"sla." + k: r for k, r in cap.SLA_RULES.items()})
    fields["sla.p95_ms"] = cap.LATENCY_LIMIT
    return fields


FIELDS = _fields()
HUGE = st.sampled_from([10**19, 10**400, -(10**400)])
NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])
WORDS = st.text("abcxyz", min_size=1, max_size=6)  # no number, bool or choice: refused by Ansible or by the rules
# values refused by the rules that check a format, by the rule's description
BAD_FORMATS = {
    cap.OPTION_RULES["url"].words: [
        "",
        "ftp://h/x",
        "http://",
        "http://h x/",
        "http://h/\r\nX: 1",
        "http://u:p@h/",
        "http://h:70000/",
        "h/x",
    ],
    cap.OPTION_RULES["model"].words: ["", "a b", "x\n", "mod\u00e9l"],
    cap.OPTION_RULES["method"].words: ["", "GE T", "POST\r\n", "G1"],
    cap.OPTION_RULES["sla"].words: ["", "p95", "p95<3%", "p95<1..2ms", "p101<3ms", "p95<0ms", "errors<=200%", "fast"],
}
# what Ansible's own conversion refuses (typed) or what only a direct caller can pass (untyped), per rule type
WRONG_TYPES = {
    "int": [WORDS, NON_FINITE, st.floats(-1e6, 1e6).map(lambda f: math.floor(f) + 0.5)],
    "float": [WORDS, HUGE],
    "bool": [st.sampled_from(["maybe", "2", "enabled"])],
    "dict": [st.just("no mapping")],
}
UNTYPED = {
    "list": st.lists(st.integers(), max_size=2),
    "dict": st.dictionaries(WORDS, WORDS),
    "object": st.builds(object),
}
UNTYPED_BY_TYPE = {
    "int": [st.booleans(), st.just("5"), st.just(2.0)],
    "float": [st.booleans(), st.just("5")],
    "str": [st.integers(), st.booleans()],
    "path": [st.integers(), st.booleans()],
}


def _out_of_range(rule: cap.Rule):
    """Numbers of the rule's type beyond its bounds."""
    if rule.type == "int":
        below = [st.integers(max_value=int(rule.low) - 1)] if rule.low is not None else []
        above = [st.integers(min_value=int(rule.high) + 1)] if rule.high is not None else []
        return st.one_of(*below, *above, HUGE)
    below = [st.floats(max_value=rule.low, exclude_max=not rule.low_open)] if rule.low is not None else []
    above = [st.floats(min_value=rule.high, exclude_min=not rule.high_open)] if rule.high is not None else []
    return st.one_of(*below, *above, NON_FINITE)


def malformed(rule: cap.Rule, typed: bool):
    """Values that ``rule`` must refuse. ``typed``: only those that Ansible's type conversion hands on as they are
    or refuses itself (it turns a list into a string for a str option, and "5" into 5)."""
    options = list(WRONG_TYPES.get(rule.type, []))
    if not typed:
        options += UNTYPED_BY_TYPE.get(rule.type, [])
        options += [] if rule.type == "raw" else [s for kind, s in UNTYPED.items() if kind != rule.type]
    if rule.low is not None or rule.high is not None:
        options.append(_out_of_range(rule))
    if rule.choices:
        options.append(WORDS)
    if rule.non_empty and rule.type in ("str", "path"):
        options.append(st.sampled_from(["", "   "]))
    if rule.one_line:
        options.append(st.builds(lambda a, b: a + "\n" + b, WORDS, WORDS))
    if rule.words in BAD_FORMATS:
        options.append(st.sampled_from(BAD_FORMATS[rule.words]))
    if rule.type == "list":
        options += [st.just([])] if rule.non_empty else []
        options += [st.just(["1"] * (rule.max_items + 1))] if rule.max_items else []
        options += [malformed(rule.elements, typed).map(lambda v: [v])] if rule.elements else []
    if rule.options is cap.PAYLOAD_RULES:
        options.append(st.sampled_from([{"payload": {}, "template": "x"}, {"weight": 0}, {"colour": "red"}]))
    if rule.options is cap.NEIGHBOUR_RULES:  # a required key missing, an unknown one, two bodies
        options.append(
            st.sampled_from([{"url": "http://h/"}, {"url": "http://h/", "rps": 1, "payload": "", "template": "x"}])
        )
    if rule.check in (cap.OPTION_RULES["headers"].check, cap.OPTION_RULES["limits"].check):
        options.append(st.sampled_from([{"X": ["in-a-list"]}, {"X": {"nested": "deep-value"}}]))
    if rule.check is cap.OPTION_RULES["headers"].check:
        # values longer than any word of a message: Ansible masks a no_log value wherever it appears in the output
        bad = [{"a b": "v-one"}, {"X-Token": "tok\r\nen"}, {"Content-Length": "333333"}, {"X": "\u20ac-sign"}]
        options.append(st.sampled_from(bad))
    if rule.check is cap.OPTION_RULES["payload"].check:
        options.append(st.sampled_from([{"x": math.nan}, [math.inf], {"deep": [-math.inf]}]))
    return st.one_of(*options)


def _place(base: dict, path: str, value) -> dict:
    """``base`` with ``value`` at ``path`` (``a``, ``a.b``, ``payload_mix[0].b``)."""
    opts = copy.deepcopy(base)
    if path.startswith("payload_mix[0]."):
        opts.pop("payload", None)
        opts["payload_mix"] = [{"name": "light", "payload": {}, path.split(".", 1)[1]: value}]
    elif "." in path:
        head, key = path.split(".", 1)
        opts[head] = dict(opts[head], **{key: value})
    else:
        opts[path] = value
    return opts


def _named(message: str, path: str) -> bool:
    """The message names the field: its path, or for Ansible's own type errors the option and its parent."""
    return path in message or all(part in message for part in re.split(r"\.|\[0\]\.?", path) if part)


ANSIBLE_UNNAMED_DICT_ERROR = "dictionary requested, could not parse JSON or key=value"
_BASE = {
    "sla": {"p95_ms": 100},
    "start_rps": 10,
    "hold": 1,
    "max_steps": 2,
    "noisy_neighbour": {"url": "http://127.0.0.1:1/b", "rps": 5},
}


@settings(_FUZZ, max_examples=1200)
@given(data=st.data())
def test_fuzz_engine_names_the_field_and_sends_nothing(recording_server, data):
    paths = data.draw(
        st.lists(st.sampled_from(sorted(FIELDS)), min_size=1, max_size=3, unique_by=lambda p: re.split(r"[.\[]", p)[0])
    )
    opts = dict(_BASE, url=recording_server.url())
    for path in paths:
        opts = _place(opts, path, data.draw(malformed(FIELDS[path], typed=False), label=path))
    before = len(recording_server.requests)
    message = _refused(opts)
    for path in paths:
        assert _named(message, path), (path, message)
    assert len(recording_server.requests) == before


@settings(_FUZZ, max_examples=400)
@given(data=st.data())
def test_fuzz_module_fails_cleanly_and_sends_nothing(recording_server, data):
    path = data.draw(st.sampled_from(sorted(FIELDS)))
    value = data.draw(malformed(FIELDS[path], typed=True), label=path)
    args = _place(dict(_BASE, url=recording_server.url()), path, value)
    before = len(recording_server.requests)
    out = io.StringIO()
    with (
        patch_module_args(dict(args, _ansible_check_mode=True)),
        contextlib.redirect_stdout(out),
        pytest.raises(SystemExit) as exit_info,
    ):
        capacity_test.main()
    result = json.loads(out.getvalue())
    assert exit_info.value.code == 1 and result["failed"], result
    # ansible-core's first error for a non-mapping where suboptions hold a no_log option does not name the option
    # (it comes from collecting no_log values); only then is the message allowed not to name the field
    rule = FIELDS[path]
    suboptions = rule.options is not None or (rule.elements is not None and rule.elements.options is not None)
    unnamed = suboptions and result["msg"] == ANSIBLE_UNNAMED_DICT_ERROR
    assert unnamed or _named(result["msg"], path), (path, result["msg"])
    assert "Traceback" not in json.dumps(result)
    assert len(recording_server.requests) == before


def test_module_documents_the_new_suboptions():
    doc = yaml.safe_load(capacity_test.DOCUMENTATION)["options"]
    for where in (doc, doc["noisy_neighbour"]["suboptions"]):
        assert set(where["payload_mix"]["suboptions"]) == set(cap.PAYLOAD_RULES)
