# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Filter ``gpu.mig.service_plan``: validate inference services against the slot map and render what the role deploys."""

from __future__ import annotations

import json

from ansible.errors import AnsibleFilterError

from ansible_collections.gpu.mig.plugins.module_utils._mig import catalog as _catalog
from ansible_collections.gpu.mig.plugins.plugin_utils import services as _services


def _profiles(slots: object, facts: object) -> dict:
    """GPU UUID -> profile table: live from ``nvidia_mig`` facts when given, else the shipped catalog by GPU name."""
    gpus = facts.get("gpus") if isinstance(facts, dict) else None
    tables = {gpu["uuid"]: gpu.get("profiles", []) for gpu in gpus or () if isinstance(gpu, dict) and "uuid" in gpu}
    for slot in slots.values() if isinstance(slots, dict) else ():
        model = _catalog.find_model(slot.get("gpu_name", "")) if isinstance(slot, dict) else None
        if model is not None and slot.get("gpu_uuid") not in tables:
            tables[slot["gpu_uuid"]] = [{"name": p.name, "memory_mib": p.memory_mib} for p in model.profiles]
    return tables


def _server_files(service: _services.Service) -> list[dict]:
    """Server configuration files (absolute path + text) that the role writes next to the model."""
    base = f"{service.model_dir}/{service.model}"
    if service.server == "triton":
        return [{"path": f"{base}/config.pbtxt", "content": _services.render_triton_config(service)}]
    if service.server == "mlserver":
        settings, model_settings = _services.mlserver_settings(service)
        return [
            {"path": f"{service.model_dir}/settings.json", "content": json.dumps(settings, indent=2) + "\n"},
            {"path": f"{base}/model-settings.json", "content": json.dumps(model_settings, indent=2) + "\n"},
        ]
    return []


def _service_vars(service: _services.Service, slot: dict, minors: dict) -> dict:
    """What the unit and Quadlet templates need for one service."""
    return {
        "name": service.name,
        "slot": service.slot,
        "runner": service.runner,
        "server": service.server,
        "user": service.user,
        "image": service.image,
        "port": service.port,
        "listen": service.listen,
        "exec": _services.systemd_exec([*service.command, *_services.server_argv(service, slot)]),
        "mig_uuid": slot.get("mig_uuid"),
        "device_allow": _services.device_allow(slot, minors) if "gpu_instance_id" in slot else [],
        "common_devices": _services.device_allow(slot, minors)[:3] if "gpu_instance_id" in slot else [],
        "cpu_quota": service.cpu_quota,
        "memory_max": service.memory_max,
        "tasks_max": service.tasks_max,
        "nofile": service.nofile,
        "stop_timeout_s": -(-service.request_timeout_ms // 1000) + 5,
        "model_dir": service.model_dir,
        "files": _server_files(service),
    }


def service_plan(
    services: list,
    slots: dict,
    facts: dict | None = None,
    mig_minors: str = "",
    stats_bind: str = "127.0.0.1:8405",
    haproxy_global: list | None = None,
) -> dict:
    """Validate ``services`` (with the memory fit check) and return per-service template vars, haproxy.cfg, warnings.

    Every problem of the services and of the HAProxy settings is raised at once, before anything is rendered.
    """
    problems: list[str] = []
    stats_port, global_lines = None, ()
    try:
        stats_port, global_lines = _services.validate_haproxy(stats_bind, haproxy_global)
    except _services.ServiceError as exc:
        problems += exc.problems
    try:
        reserved = () if stats_port is None else (stats_port,)
        parsed, warnings = _services.validate(services, slots, _profiles(slots, facts), reserved)
    except _services.ServiceError as exc:
        problems += exc.problems
    if problems:
        raise AnsibleFilterError("inference services cannot be deployed:\n- " + "\n- ".join(problems))
    minors = _services.parse_mig_minors(mig_minors or "")
    return {
        "services": [_service_vars(s, slots[s.slot], minors) for s in parsed],
        "haproxy_config": _services.render_haproxy(parsed, stats_bind, global_lines),
        "warnings": warnings,
    }


class FilterModule:
    """gpu.mig service filters."""

    def filters(self) -> dict:
        return {"service_plan": service_plan}
