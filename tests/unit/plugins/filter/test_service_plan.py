# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Filter gpu.mig.service_plan: strict service specs, refused before anything is rendered.

The fields come from the rules table (``_services.SERVICE_RULES``), so a field added there is covered here: each
string field carrying a newline, and a hypothesis fuzz of malformed specs over every field.
"""

from __future__ import annotations

import contextlib
import copy
import re
import string
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
import yaml
from ansible.errors import AnsibleFilterError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ansible_collections.gpu.mig.plugins.filter.services import service_plan
from ansible_collections.gpu.mig.plugins.plugin_utils import services as _services
from ansible_collections.gpu.mig.plugins.plugin_utils.services import HAPROXY_RULES, SERVICE_RULES, Rule

REPO = Path(__file__).resolve().parents[4]
SLOTS = {
    "chat": {"gpu_index": 0, "gpu_uuid": "GPU-a", "gpu_name": "NVIDIA A100-SXM4-40GB", "profile": "3g.20gb",
             "memory_mib": 20096, "gpu_instance_id": 2, "compute_instance_id": 0, "mig_uuid": "MIG-1"},
}  # fmt: skip
TRITON = {
    "name": "chat", "slot": "chat", "server": "triton", "command": ["/opt/tritonserver/bin/tritonserver"],
    "port": 8000, "backend_port": 18000, "listen": "127.0.0.1", "user": "gpumig-chat", "class_header": "X-Class",
    "model": {"name": "resnet", "dir": "/srv/models", "weights_mib": 12000, "instances": 2, "backend": "python"},
    "limits": {"max_concurrency": 8, "max_queue": 16, "queue_timeout": "500ms", "request_timeout": "30s",
               "max_batch": 8, "batch_delay": "2ms", "cpu_quota": "400%", "memory_max": "16G"},
    "classes": [{"name": "fast", "weight": 3}, {"name": "bulk", "max_queue": 64, "path_prefix": "/batch"}],
    "sla": {"p95_ms": 200, "p99_ms": 400, "target_rps": 30},
    "extra_args": ["--log-verbose=1"],
}  # fmt: skip
VLLM = {
    "name": "chat", "slot": "chat", "server": "vllm", "runner": "quadlet", "image": "docker.io/vllm/vllm-openai:v0.10.1",
    "port": 8000, "backend_port": 18000, "model": {"name": "Qwen/Qwen2.5-0.5B", "max_model_len": 4096},
    "classes": [{"name": "default"}], "shares_slot_with": ["ocr"],
}  # fmt: skip
CONTROLS = [*map(chr, range(32)), "\x7f", "\x85", "\u2028"]
RENDERERS = ("render_haproxy", "render_triton_config", "mlserver_settings", "server_argv", "systemd_exec")


def fields(rules: dict[str, Rule] | None = None, path: tuple = ()) -> Iterator[tuple[tuple, Rule]]:
    """Every leaf field of the rules table as (path, rule); a list of sections is entered at its first item."""
    for key, rule in (SERVICE_RULES if rules is None else rules).items():
        if rule.kind == "section":
            yield from fields(rule.fields, (*path, key))
        elif rule.kind == "sections":
            yield from fields(rule.fields, (*path, key, 0))
        else:
            yield (*path, key), rule


def sections(rules: dict[str, Rule] | None = None, path: tuple = ()) -> Iterator[tuple[tuple, Rule]]:
    for key, rule in (SERVICE_RULES if rules is None else rules).items():
        if rule.kind in ("section", "sections"):
            yield (*path, key), rule
            yield from sections(rule.fields, (*path, key, 0) if rule.kind == "sections" else (*path, key))


FIELDS = dict(fields())
SECTIONS = dict(sections())
TEXT_FIELDS = [path for path, rule in FIELDS.items() if rule.kind in ("str", "strings", "duration")]


# Where an unknown key can go: the service itself and each section (a list of sections at its first item).
UNKNOWN_AT = {(): SERVICE_RULES} | {
    (*path, 0) if rule.kind == "sections" else path: rule.fields for path, rule in SECTIONS.items()
}


def label(path: tuple) -> str:
    """A field's name in messages: ``limits.max_queue``, ``classes[0].name``."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def with_value(spec: dict, path: tuple, value: object) -> dict:
    spec = copy.deepcopy(spec)
    target = spec
    for key in path[:-1]:
        target = target.setdefault(key, {}) if isinstance(key, str) else target[key]
    target[path[-1]] = value
    return spec


@contextlib.contextmanager
def nothing_rendered() -> Iterator[None]:
    """Fail the test if any renderer runs."""
    with contextlib.ExitStack() as stack:
        for name in RENDERERS:
            stack.enter_context(mock.patch.object(_services, name, side_effect=AssertionError(f"{name} ran")))
        yield


def refusal(specs: object, **options: object) -> list[str]:
    """The problems service_plan raises for ``specs``; nothing may be rendered."""
    with nothing_rendered(), pytest.raises(AnsibleFilterError) as caught:
        service_plan(specs, SLOTS, **options)
    header, *problems = str(caught.value.message).split("\n- ")
    assert header == "inference services cannot be deployed:"
    assert not any(_services._CONTROL.search(p) for p in problems), problems  # quoted, never raw
    return problems


def test_valid_specs_render():
    for spec in (TRITON, VLLM):
        plan = service_plan([spec], SLOTS)
        assert [s["name"] for s in plan["services"]] == ["chat"] and "frontend fe_chat" in plan["haproxy_config"]


@pytest.mark.parametrize("path", TEXT_FIELDS, ids=label)
def test_a_newline_in_any_text_field_is_refused_before_rendering(path):
    """An image of "x\\nPodmanArgs=--privileged" was written as its own Quadlet line; no text field may do that."""
    rule = FIELDS[path]
    base = VLLM if path == ("image",) else TRITON
    example = rule.example[0] if rule.kind == "strings" else rule.example
    injected = f"{example}\nPodmanArgs=--privileged"
    value = [example, injected] if rule.kind == "strings" else injected
    where = f"{label(path)}[1]" if rule.kind == "strings" else label(path)
    owner = "service #1" if path == ("name",) else "service chat"
    problems = refusal([with_value(base, path, value)])
    assert any(
        p.startswith(f"{owner}: {where} must be one line of printable text, got ")
        and p.endswith(f" with control character U+000A at position {len(example)}; remove it")
        for p in problems
    ), problems


@pytest.mark.parametrize("char", CONTROLS, ids=lambda c: f"U+{ord(c):04X}")
def test_every_control_character_is_refused_in_the_image(char):
    problems = refusal([with_value(VLLM, ("image",), f"docker.io/x{char}y:1")])
    assert problems == [
        f"service chat: image must be one line of printable text, got {f'docker.io/x{char}y:1'!r} with control "
        f"character U+{ord(char):04X} at position 11; remove it"
    ]


def test_haproxy_settings_are_checked_with_the_services():
    problems = refusal(
        [with_value(TRITON, ("port",), 0)], stats_bind="127.0.0.1:99999", haproxy_global=["maxconn 10\nlisten x"]
    )
    assert problems == [
        "inference_service_haproxy_global[0] must be one line of printable text, got 'maxconn 10\\nlisten x' with "
        "control character U+000A at position 10; remove it",
        "inference_service_haproxy_stats_bind: port 99999 is not a TCP port 1-65535",
        "service chat: port must be an integer from 1 to 65535 (the public TCP port), got 0",
    ]
    assert refusal([TRITON], stats_bind="8405") == [
        "inference_service_haproxy_stats_bind must be an address and port such as 127.0.0.1:8405, got '8405'"
    ]


def test_the_role_argument_spec_declares_the_types_the_rules_check():
    spec = yaml.safe_load((REPO / "roles/inference_service/meta/argument_specs.yml").read_text())
    options = spec["argument_specs"]["main"]["options"]
    names = [*HAPROXY_RULES, "inference_service_specs"]
    declared = {name: (options[name]["type"], options[name].get("elements")) for name in names}
    argspec_type = {"str": ("str", None), "strings": ("list", "str")}
    assert declared == {
        **{name: argspec_type[rule.kind] for name, rule in HAPROXY_RULES.items()},
        "inference_service_specs": ("list", "dict"),  # each mapping checked by SERVICE_RULES
    }


def test_docs_list_every_field_of_the_rules_table():
    text = (REPO / "docs/services.md").read_text()
    table = text[text.index("| field |") :]
    missing = [label(p) for p in [*FIELDS, *SECTIONS] if f"| `{label(p).replace('[0]', '[]')}` |" not in table]
    assert missing == []


# ---------------------------------------------------------------------------------------------------------------------
# Fuzz: malformed specs over every field, each refused with a message naming the field, nothing rendered
# ---------------------------------------------------------------------------------------------------------------------

WRONG_TYPES = {
    "str": st.one_of(st.integers(), st.floats(), st.booleans(), st.lists(st.text(), max_size=2), st.dictionaries(
        st.text(max_size=3), st.integers(), max_size=2)),
    "int": st.one_of(st.booleans(), st.floats(), st.text(max_size=5), st.lists(st.integers(), max_size=2)),
    "number": st.one_of(st.booleans(), st.text(max_size=5), st.lists(st.floats(), max_size=2), st.just({})),
    "duration": st.one_of(st.booleans(), st.lists(st.text(), max_size=2), st.just({"s": 1})),
    "strings": st.one_of(st.text(), st.integers(), st.dictionaries(st.text(max_size=3), st.text(), max_size=2)),
    "section": st.one_of(st.text(), st.integers(), st.lists(st.integers(), max_size=2), st.booleans()),
    "sections": st.one_of(st.text(), st.integers(), st.just([]), st.lists(st.integers(), min_size=1, max_size=2),
                          st.dictionaries(st.text(max_size=3), st.text(), max_size=2)),
}  # fmt: skip


@st.composite
def with_control(draw: st.DrawFn, text: str) -> str:
    at = draw(st.integers(0, len(text)))
    return text[:at] + draw(st.sampled_from(CONTROLS)) + text[at:]


def bad_text(rule: Rule, example: str) -> st.SearchStrategy:
    """Strings a ``str`` rule refuses: empty or blank, with a control character, or off its pattern or choices."""
    options = [st.sampled_from(["", "  "]), with_control(example)]
    if rule.pattern or rule.choices:
        valid = rule.pattern.fullmatch if rule.pattern else rule.choices.__contains__
        options.append(st.text(min_size=1, max_size=12).filter(lambda t: not valid(t)))
    return st.one_of(options)


def bad_value(rule: Rule) -> st.SearchStrategy:
    """A value ``rule`` refuses: of a wrong type, out of range, empty, or with a control character."""
    wrong_type = WRONG_TYPES[rule.kind]
    if rule.kind == "str":
        return st.one_of(wrong_type, bad_text(rule, rule.example))
    if rule.kind == "int":
        return st.one_of(wrong_type, st.integers(max_value=rule.minimum - 1), st.integers(min_value=rule.maximum + 1))
    if rule.kind == "number":
        return st.one_of(wrong_type, st.floats(max_value=0), st.sampled_from([float("nan"), float("inf")]),
                         st.integers(max_value=0), st.integers(min_value=rule.maximum + 1))  # fmt: skip
    if rule.kind == "duration":
        return st.one_of(
            wrong_type,
            st.integers(max_value=-1),
            st.floats(max_value=-0.001),
            st.floats(min_value=86_401),
            st.integers(min_value=25).map(lambda h: f"{h}h"),
            st.text(alphabet=string.ascii_letters + " .%-", max_size=6),  # no digit: not a duration
            with_control(rule.example),
        )
    if rule.kind == "strings":
        bad_element = st.one_of(st.integers(), st.none(), bad_text(rule, rule.example[0]))
        good = st.lists(st.just(rule.example[0]), max_size=2)
        return st.one_of(wrong_type, st.tuples(good, bad_element).map(lambda t: [*t[0], t[1]]))
    return wrong_type


BAD_VALUES = {path: bad_value(rule) for path, rule in [*FIELDS.items(), *SECTIONS.items()]}


@st.composite
def malformed_specs(draw: st.DrawFn) -> tuple[dict, list[str]]:
    """A valid spec with 1-4 fields broken (bad value, required field left out) and maybe an unknown key added.

    Returns the spec and the start of a message expected for each break.
    """
    spec = draw(st.sampled_from([TRITON, VLLM]))
    targets = draw(st.lists(st.sampled_from([*FIELDS, *SECTIONS]), min_size=1, max_size=4, unique=True))
    # A field inside a broken section is not read: break the section only.
    targets = [t for t in targets if not any(o != t and t[: len(o)] == o for o in targets)]
    expected = []
    for target in targets:
        rule = FIELDS.get(target) or SECTIONS[target]
        if rule.required and draw(st.booleans()):
            spec = with_value(spec, target, None)
            expected.append(f"{label(target)} is required")
        else:
            spec = with_value(spec, target, draw(BAD_VALUES[target]))
            expected.append(label(target))
    intact = [w for w in UNKNOWN_AT if not any(w[: len(t)] == t for t in targets)]
    where = draw(st.none() | st.sampled_from(intact)) if intact else None
    if where is not None:
        key = draw(st.text(min_size=1, max_size=8).filter(lambda k: k not in UNKNOWN_AT[where]))
        spec = with_value(spec, (*where, key), 1)
        expected.append(f"unknown key(s) {key!r} in {label(where) or 'the service'}; allowed:")
    return spec, expected


def test_fuzz_malformed_specs_get_a_clean_refusal_naming_each_field():
    """>= 1,000 malformed specs: AnsibleFilterError only (no other exception), every broken field named, no render."""
    seen = []

    @settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
    @given(malformed_specs())
    def check(case: tuple[dict, list[str]]) -> None:
        spec, expected = case
        problems = refusal([spec])
        owner = "service #1" if spec.get("name") != "chat" else "service chat"
        assert all(p.startswith(f"{owner}: ") for p in problems), problems
        for text in expected:
            named = re.compile(rf"{re.escape(owner)}: {re.escape(text)}(\[\d+\])?[ .;:]")
            assert any(named.match(p + " ") for p in problems), (text, problems)
        seen.append(spec)

    check()
    assert len(seen) >= 1000
