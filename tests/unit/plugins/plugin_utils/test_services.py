# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Service spec validation, memory fit and the rendered configs, each parsed back (pbtxt, JSON, argv, haproxy -c)."""

from __future__ import annotations

import argparse
import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ansible_collections.gpu.mig.plugins.plugin_utils import services as _services
from ansible_collections.gpu.mig.plugins.plugin_utils.services import ServiceError, validate

SLOTS = {
    "chat": {
        "gpu_index": 0,
        "gpu_uuid": "GPU-a",
        "profile": "3g.20gb",
        "memory_mib": 20096,
        "gpu_instance_id": 2,
        "compute_instance_id": 0,
        "mig_uuid": "MIG-1",
    },
    "ocr": {
        "gpu_index": 1,
        "gpu_uuid": "GPU-b",
        "profile": "1g.5gb",
        "memory_mib": 4864,
        "gpu_instance_id": 13,
        "compute_instance_id": 0,
        "mig_uuid": "MIG-2",
    },
}
PROFILES = {
    "GPU-a": [
        {"name": "1g.5gb", "memory_mib": 4864},
        {"name": "2g.10gb", "memory_mib": 9856},
        {"name": "3g.20gb", "memory_mib": 20096},
        {"name": "7g.40gb", "memory_mib": 40192},
    ]
}
TRITON = {
    "name": "chat",
    "slot": "chat",
    "server": "triton",
    "command": ["/opt/tritonserver/bin/tritonserver"],
    "port": 8000,
    "backend_port": 18000,
    "model": {
        "name": "resnet",
        "dir": "/srv/models",
        "weights_mib": 12000,
        "activation_mib": 2000,
        "batch_headroom_mib": 2000,
        "instances": 2,
    },
    "limits": {
        "max_concurrency": 8,
        "max_queue": 16,
        "queue_timeout": "500ms",
        "request_timeout": "30s",
        "max_batch": 8,
        "batch_delay": "2ms",
        "cpu_quota": "400%",
        "memory_max": "16G",
    },
    "classes": [
        {"name": "fast", "weight": 3},
        {"name": "background", "max_queue": 64, "queue_timeout": "10s", "path_prefix": "/batch"},
    ],
    "sla": {"p95_ms": 200, "p99_ms": 400, "target_rps": 30},
}
VLLM = {
    "name": "ocr",
    "slot": "ocr",
    "server": "vllm",
    "runner": "quadlet",
    "image": "docker.io/vllm/vllm-openai:v0.10.1",
    "port": 8100,
    "backend_port": 18100,
    "model": {
        "name": "Qwen/Qwen2.5-0.5B",
        "weights_mib": 1000,
        "activation_mib": 500,
        "batch_headroom_mib": 2000,
        "max_model_len": 4096,
    },
    "limits": {"max_concurrency": 16, "max_queue": 32},
}


def problems_of(specs: list, slots: dict | None = None) -> list[str]:
    with pytest.raises(ServiceError) as caught:
        validate(specs, SLOTS if slots is None else slots, PROFILES)
    return caught.value.problems


def with_changes(base: dict, **changes: object) -> dict:
    spec = copy.deepcopy(base)
    for key, value in changes.items():
        section, _sep, leaf = key.partition("__")
        if leaf:
            spec.setdefault(section, {})[leaf] = value
        else:
            spec[key] = value
    return spec


def test_valid_specs_parse_with_defaults_and_class_split():
    services, warnings = validate([TRITON, VLLM], SLOTS, PROFILES)
    chat, ocr = services
    assert (chat.queue_timeout_ms, chat.request_timeout_ms, chat.batch_delay_ms) == (500, 30000, 2)
    assert [(c.name, c.max_concurrency, c.max_queue, c.queue_timeout_ms) for c in chat.classes] == [
        ("fast", 6, 16, 500),
        ("background", 2, 64, 10000),
    ]
    assert chat.user == "gpumig-chat" and chat.runner == "process" and chat.ports == (8000, 18000, 18001, 18002)
    assert [c.name for c in ocr.classes] == ["default"] and ocr.ports == (8100, 18100)
    assert warnings == []


@pytest.mark.parametrize(
    ("spec_changes", "expected"),
    [
        ({"slot": "nope"}, "service chat: unknown slot 'nope'; known slots: chat, ocr"),
        ({"limits__max_concurrency": 0}, "service chat: limits.max_concurrency must be an integer >= 1 (requests"),
        ({"limits__max_concurrency": -3}, "limits.max_concurrency must be an integer >= 1"),
        ({"limits__max_concurrency": True}, "limits.max_concurrency must be an integer >= 1 (requests in flight at the "
         "server), got True"),
        ({"limits__max_concurrency": "8"}, "limits.max_concurrency must be an integer >= 1"),
        ({"limits__max_concurrency": 8.0}, "limits.max_concurrency must be an integer >= 1"),
        ({"limits__max_concurrency": 2**40}, "limits.max_concurrency must be an integer at most 2147483647"),
        ({"limits__max_queue": -1}, "limits.max_queue must be an integer >= 0"),
        ({"limits__tasks_max": 0}, "limits.tasks_max must be an integer >= 1"),
        ({"limits__queue_timeout": "40s"}, "limits.queue_timeout 40000ms exceeds limits.request_timeout 30000ms"),
        ({"limits__max_concurrency": 1}, "limits.max_concurrency 1 is less than the 2 request classes"),
        ({"limits__queue_timeout": "soon"}, "limits.queue_timeout must be a duration from 1ms to 24h such as 500ms"),
        ({"limits__queue_timeout": 0}, "limits.queue_timeout must be a duration from 1ms"),
        ({"limits__request_timeout": -5}, "limits.request_timeout must be a duration from 1ms"),
        ({"limits__request_timeout": 1e308}, "limits.request_timeout must be a duration from 1ms to 24h"),
        ({"limits__request_timeout": "9" * 400 + "h"}, "limits.request_timeout must be a duration from 1ms to 24h"),
        ({"limits__request_timeout": float("nan")}, "limits.request_timeout must be a duration"),
        ({"limits__batch_delay": "\u0661ms"}, "limits.batch_delay must be a duration from 0 to 24h"),
        ({"limits__cpu_quota": "4 cores"}, "limits.cpu_quota must be a systemd CPUQuota= such as 200%"),
        ({"limits__cpu_quota": "0%"}, "limits.cpu_quota must be a systemd CPUQuota= such as 200%"),
        ({"limits__memory_max": ""}, "limits.memory_max must not be empty"),
        ({"limits__max_batchh": 4}, "unknown key(s) 'max_batchh' in limits; allowed:"),
        ({"limits": "fast"}, "limits must be a mapping with keys max_concurrency,"),
        ({"colour": "blue"}, "unknown key(s) 'colour' in the service; allowed: name, slot,"),
        ({"runner": "docker"}, "runner must be one of process, quadlet, got 'docker'"),
        ({"runner": "quadlet"}, "image is required with runner quadlet: a container image reference"),
        ({"image": "docker.io/x:1"}, "image applies only to runner quadlet, not process; remove it"),
        ({"model__max_model_len": 4096}, "model.max_model_len applies only to server vllm, not triton"),
        ({"model__name": "org/resnet"}, "model.name 'org/resnet' names a directory in model.dir for server triton"),
        ({"model__dir": "/srv/../etc"}, "model.dir must be an absolute path such as /srv/models"),
        ({"model__dir": "/srv/models:rw"}, "model.dir must be an absolute path"),
        ({"model__weights_mib": -1}, "model.weights_mib must be an integer >= 0"),
        ({"command": ["tritonserver"]}, "runner process needs command: a list starting with the server's absolute"),
        ({"command": ["/opt/$HOME/triton"]}, "runner process needs command: a list starting with the server's"),
        ({"command": "/opt/tritonserver/bin/tritonserver"}, "command must be a list of strings"),
        ({"command": []}, "runner process needs command"),
        ({"extra_args": ["--ok", 3]}, "extra_args[1] must be a string"),
        ({"extra_args": ["--ok", ""]}, "extra_args[1] must not be empty"),
        ({"user": "root"}, "user must not be root"),
        ({"name": "Chat_1"}, "service #1: name must be 1-24 lowercase letters"),
        ({"name": "chat\n"}, "service #1: name must be one line of printable text"),
        ({"name": ["chat"]}, "service #1: name must be a string"),
        ({"slot": ""}, "slot must not be empty"),
        ({"port": 70000}, "port must be an integer from 1 to 65535 (the public TCP port), got 70000"),
        ({"port": "8000"}, "port must be an integer from 1 to 65535"),
        ({"backend_port": 65535}, "backend_port 65535 leaves no room for the 3 ports server triton takes"),
        ({"listen": "0.0.0.0 ssl crt /x"}, "listen must be an IP address, '*' or a host name"),
        ({"class_header": "X Class"}, "class_header must be an HTTP header name"),
        ({"classes": []}, "classes must be a non-empty list of mappings"),
        ({"classes": [{"name": "a"}, "b"]}, "classes[1] must be a mapping"),
        ({"classes": [{"name": "a"}, {"name": "a"}]}, "classes: each class needs its own name, got a, a"),
        ({"classes": [{"name": "a", "weight": 0}]}, "classes[0].weight must be an integer >= 1"),
        ({"classes": [{"weight": 2}]}, "classes[0].name is required"),
        ({"classes": [{"name": "a", "path_prefix": "batch"}]}, "classes[0].path_prefix must be a URL path"),
        ({"classes": [{"name": "a", "queue_timeout": "1m"}]}, "classes[0].queue_timeout 60000ms exceeds"),
        ({"shares_slot_with": ["Ocr"]}, "shares_slot_with[0] must be service names"),
        ({"sla": {"p95_ms": 500, "p99_ms": 100}}, "sla.p95_ms 500 exceeds sla.p99_ms 100"),
        ({"sla": {"p95_ms": float("nan")}}, "sla.p95_ms must be a number above 0"),
        ({"sla": {"target_rps": 0}}, "sla.target_rps must be a number above 0"),
        ({"model": {"weights_mib": 1}}, "model.name is required with server triton"),
    ],
)  # fmt: skip
def test_bad_spec_names_service_field_and_fix(spec_changes, expected):
    problems = problems_of([with_changes(TRITON, **spec_changes)])
    assert any(expected in p for p in problems), problems
    assert all(p.startswith(("service chat: ", "service #1: ")) for p in problems), problems


def test_strings_refuse_every_control_character():
    """C0 controls, DEL, C1 controls and Unicode line separators, with the code point named."""
    for char in [*map(chr, range(32)), "\x7f", "\x85", "\x9b", "\u2028", "\u2029"]:
        problems = problems_of([with_changes(TRITON, class_header="X-" + char + "Class")])
        assert problems == [
            f"service chat: class_header must be one line of printable text, got {'X-' + char + 'Class'!r} with "
            f"control character U+{ord(char):04X} at position 2; remove it"
        ]


def test_specs_and_slot_map_of_the_wrong_shape_are_refused():
    assert problems_of("chat") == ["services must be a list of service mappings, got 'chat'"]
    assert problems_of(["chat"]) == [
        "service #1: each service must be a mapping with at least name, slot, port and backend_port, got 'chat'"
    ]
    assert problems_of([TRITON], slots=["chat"])[0].startswith("the slot map must map slot names to slots")


def test_every_problem_is_reported_at_once():
    bad = with_changes(TRITON, slot="nope", limits__max_concurrency=0, runner="docker")
    dup = with_changes(VLLM, name="chat", port=8000)
    problems = problems_of([bad, dup])
    assert len(problems) >= 4, problems
    assert any("the name is used 2 times" in p for p in problems)
    assert any("unknown slot 'nope'" in p for p in problems)
    assert any("runner must be one of" in p for p in problems)


def test_duplicate_and_reserved_ports_are_refused():
    clash = with_changes(VLLM, backend_port=18001)  # inside Triton's HTTP/gRPC/metrics block
    problems = problems_of([TRITON, clash])
    assert any("port 18001 is taken more than once" in p and "chat, ocr" in p for p in problems), problems
    with pytest.raises(ServiceError, match=r"port 8405 .*\(reserved\)|\(reserved\).*port 8405"):
        validate([with_changes(VLLM, port=8405)], SLOTS, reserved_ports=(8405,))


def test_slot_sharing_needs_both_sides_to_agree():
    second = with_changes(VLLM, name="chat2", slot="chat", model={"name": "x"}, shares_slot_with=["chat"])
    problems = problems_of([TRITON, second])
    assert problems == [
        "service chat: slot chat is also used by chat2; give each its own slot, or list each other in shares_slot_with"
    ]
    services, _warnings = validate([with_changes(TRITON, shares_slot_with=["chat2"]), second], SLOTS, PROFILES)
    assert len(services) == 2


def test_memory_over_the_slot_is_refused_with_the_smallest_fitting_profile():
    big = with_changes(TRITON, model__weights_mib=30000)
    (problem,) = problems_of([big])
    assert problem == (
        "service chat: needs 34000 MiB of GPU memory (weights + activations + batch headroom) but slot chat "
        "(3g.20gb) has 20096 MiB; use profile 7g.40gb or larger, or lower the model's memory"
    )
    huge = with_changes(TRITON, model__weights_mib=60000)
    assert "no profile on this GPU is large enough" in problems_of([huge])[0]


def test_shared_slot_memory_is_summed():
    first = with_changes(TRITON, shares_slot_with=["chat2"], model__weights_mib=8000)  # 12000 MiB
    second = with_changes(VLLM, name="chat2", slot="chat", shares_slot_with=["chat"])  # 3500 MiB
    assert validate([first, second], SLOTS, PROFILES)[1] == []
    third = with_changes(second, model__weights_mib=6000)  # 8500 MiB: 20500 > 20096
    (problem,) = problems_of([first, third])
    assert problem.startswith("service chat, chat2: needs 20500 MiB") and "slot chat (3g.20gb) has 20096 MiB" in problem


def test_headroom_under_ten_percent_warns():
    tight = with_changes(TRITON, model__weights_mib=14500)  # 18500 of 20096: 7.9% left
    _services_list, warnings = validate([tight], SLOTS, PROFILES)
    assert warnings == [
        "service chat: slot chat keeps only 1596 MiB of 20096 MiB free (7.9% < 10%); CUDA context and "
        "fragmentation may not fit"
    ]


def test_sla_and_vllm_process_warnings():
    slow = with_changes(TRITON, sla={"p95_ms": 500, "target_rps": 40})  # needs 20 in flight, has 8
    vllm_process = with_changes(VLLM, runner="process", command=["/usr/bin/vllm", "serve"])
    del vllm_process["image"]
    warnings = validate([slow, vllm_process], SLOTS, PROFILES)[1]
    assert "Little's law needs >= 20 in flight" in warnings[0]
    assert "vllm-project/vllm#41848" in warnings[1]


@pytest.mark.parametrize(
    ("value", "millis"),
    [
        (2, 2000),
        (0.25, 250),
        ("250ms", 250),
        ("1.5s", 1500),
        ("2m", 120000),
        ("3", 3000),
        ("1h", 3600000),
        ("x", None),
        (True, None),
    ],
)
def test_parse_duration(value, millis):
    assert _services.parse_duration_ms(value) == millis


@given(st.lists(st.integers(1, 20), min_size=1, max_size=6), st.integers(0, 100))
def test_concurrency_split_is_exact_and_never_starves_a_class(weights, extra):
    total = len(weights) + extra
    shares = _services.split_concurrency(total, weights)
    assert sum(shares) == total and min(shares) >= 1


# ---------------------------------------------------------------------------------------------------------------------
# Renderers, parsed back
# ---------------------------------------------------------------------------------------------------------------------


def parse_pbtxt(text: str) -> dict:
    """Tiny protobuf text-format parser: scalar fields, nested messages and lists (no repeated fields)."""
    tokens = re.findall(r'"[^"]*"|[{}\[\]:,]|[^\s{}\[\]:,]+', text)

    def value(i: int) -> tuple[object, int]:
        token = tokens[i]
        if token == "{":
            return message(i + 1, "}")
        if token == "[":
            items = []
            i += 1
            while tokens[i] != "]":
                item, i = value(i)
                items.append(item)
                i += tokens[i] == ","
            return items, i + 1
        if token.startswith('"'):
            return token[1:-1], i + 1
        return (int(token) if re.fullmatch(r"-?\d+", token) else token), i + 1

    def message(i: int, end: str | None) -> tuple[dict, int]:
        fields: dict = {}
        while i < len(tokens) and tokens[i] != end:
            name = tokens[i]
            i += 1 + (tokens[i + 1] == ":")
            item, i = value(i)
            assert name not in fields, f"field {name} repeated"
            fields[name] = item
        return fields, i + 1

    return message(0, None)[0]


def test_triton_config_parses_back():
    chat = validate([TRITON], SLOTS, PROFILES)[0][0]
    config = parse_pbtxt(_services.render_triton_config(chat))
    assert config["name"] == "resnet" and config["max_batch_size"] == 8
    batching = config["dynamic_batching"]
    assert batching["preferred_batch_size"] == [8] and batching["max_queue_delay_microseconds"] == 2000
    assert batching["default_queue_policy"] == {
        "timeout_action": "REJECT",
        "default_timeout_microseconds": 500000,
        "allow_timeout_override": "true",
        "max_queue_size": 8,
    }
    assert config["instance_group"] == [{"count": 2, "kind": "KIND_GPU", "gpus": [0]}]


def test_vllm_argv_parses_back():
    ocr = validate([VLLM], SLOTS, PROFILES)[0][0]
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    for flag, kind in (
        ("--host", str),
        ("--port", int),
        ("--gpu-memory-utilization", float),
        ("--max-num-seqs", int),
        ("--max-model-len", int),
    ):
        parser.add_argument(flag, type=kind)
    args = parser.parse_args(_services.server_argv(ocr, SLOTS["ocr"]))
    assert (args.model, args.host, args.port, args.max_num_seqs, args.max_model_len) == (
        "Qwen/Qwen2.5-0.5B",
        "127.0.0.1",
        18100,
        16,
        4096,
    )
    assert args.gpu_memory_utilization == 0.72  # ceil(3500 / 4864, 2 decimals)
    assert _services.vllm_memory_fraction(ocr, 3500) == 0.95


def test_triton_and_mlserver_argv_use_the_loopback_port_block():
    chat = validate([TRITON], SLOTS, PROFILES)[0][0]
    assert _services.server_argv(chat, SLOTS["chat"])[-3:] == [
        "--grpc-port=18001",
        "--metrics-address=127.0.0.1",
        "--metrics-port=18002",
    ]
    ml = validate([with_changes(TRITON, server="mlserver", extra_args=["--debug"])], SLOTS, PROFILES)[0][0]
    assert _services.server_argv(ml, SLOTS["chat"]) == ["start", "/srv/models", "--debug"]


def test_mlserver_settings_round_trip_as_json():
    ml = validate([with_changes(TRITON, server="mlserver")], SLOTS, PROFILES)[0][0]
    settings, model = (json.loads(json.dumps(d)) for d in _services.mlserver_settings(ml))
    assert settings == {
        "host": "127.0.0.1",
        "http_port": 18000,
        "grpc_port": 18001,
        "metrics_port": 18002,
        "parallel_workers": 2,
    }
    assert model["max_batch_size"] == 8 and model["max_batch_time"] == 0.002
    assert model["implementation"] == "mlserver_sklearn.SKLearnModel" and model["name"] == "resnet"


def test_haproxy_config_is_accepted_by_haproxy(tmp_path: Path):
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    assert Path(binary).exists(), "haproxy is required: apt-get install -y --no-install-recommends haproxy"
    services = validate([TRITON, VLLM], SLOTS, PROFILES)[0]
    text = _services.render_haproxy(services, global_lines=("log stdout format raw local0", "maxconn 4096"))
    path = tmp_path / "haproxy.cfg"
    path.write_text(text)
    check = subprocess.run([binary, "-c", "-f", str(path)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "[WARNING]" not in check.stdout + check.stderr
    assert "server chat 127.0.0.1:18000 maxconn 6 maxqueue 16" in text
    assert "server chat 127.0.0.1:18000 maxconn 2 maxqueue 64" in text
    assert "use_backend be_chat_background if cls_background" in text
    assert "http-request use-service prometheus-exporter if { path /metrics }" in text


def test_haproxy_rejects_a_broken_render(tmp_path: Path):
    """The check above is meaningful: haproxy -c fails on a bad keyword."""
    path = tmp_path / "bad.cfg"
    path.write_text(_services.render_haproxy([]) + "\nbackend x\n    balance nosuchalgo\n")
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    assert subprocess.run([binary, "-c", "-f", str(path)], capture_output=True, check=False).returncode != 0


def test_mig_cap_minors_match_published_tables_and_prefer_the_driver_table():
    assert _services.mig_cap_minors(0, 0, 0) == (3, 4)
    assert _services.mig_cap_minors(3, 3, 3)[1] == 439
    assert _services.mig_cap_minors(6, 11, 5)[1] == 918
    table = _services.parse_mig_minors("config 1\nmonitor 2\ngpu0/gi2/access 99\ngpu0/gi2/ci0/access 100\n")
    assert _services.device_allow(SLOTS["chat"], table)[-2:] == [
        "/dev/nvidia-caps/nvidia-cap99",
        "/dev/nvidia-caps/nvidia-cap100",
    ]
    assert _services.device_allow(SLOTS["ocr"]) == [
        "/dev/nvidiactl",
        "/dev/nvidia-uvm",
        "/dev/nvidia1",
        "/dev/nvidia-caps/nvidia-cap255",
        "/dev/nvidia-caps/nvidia-cap256",
    ]


def test_systemd_exec_quotes_and_escapes():
    argv = ["/usr/bin/x", "--a=1", "two words", "50%", "$HOME", 'q"uote', ""]
    assert _services.systemd_exec(argv) == '/usr/bin/x --a=1 "two words" 50%% $$HOME "q\\"uote" ""'
