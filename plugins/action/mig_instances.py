# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Action for gpu.mig.mig_instances: plan on the controller, run the module on the host only to change something.

The host runs gpu.mig.mig_facts, and the controller plans from those facts with the module's own pure code
(``_apply.apply_layout`` in check mode). When nothing would change, or in check mode, that is the whole task, and
the result is the one the module would return. A converged host (the common case on a fleet) therefore runs and
compiles only the NVML adapter, not the planner. When the plan changes something, the module runs on the host as
before: it reads the host again, plans again and executes. An ``async`` task runs the module as before.

``mig_parted_config_file`` is a controller path: the action reads and parses it, and the module gets the parsed
config as ``mig_parted_config`` (async tasks too). ``slot_map_file`` is a path on the host: mig_facts reads it in the
same run (``nvidia_mig.slot_map``, with the module's own ``_apply.read_slot_map``), so the controller plans with the
same history as the module; a file mig_facts cannot read fails that run, and the module then reports it.
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping

from ansible.errors import AnsibleError
from ansible.plugins.action import ActionBase
from ansible.utils.vars import merge_hash

from ansible_collections.gpu.mig.plugins.module_utils._mig import apply as _apply
from ansible_collections.gpu.mig.plugins.module_utils._mig import failure as _failure
from ansible_collections.gpu.mig.plugins.module_utils._mig import layout as _layout
from ansible_collections.gpu.mig.plugins.module_utils._mig.select import SelectorError

TASK = "gpu.mig.mig_instances"


class _Refused(Exception):
    """The task fails on the controller with this message, changing nothing."""


class ActionModule(ActionBase):
    """Plan from gpu.mig.mig_facts on the controller; run gpu.mig.mig_instances only for a real change."""

    _supports_check_mode = True
    _supports_async = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp  # no longer has any effect
        try:
            return merge_hash(result, self._run(task_vars))
        except _Refused as err:
            return merge_hash(result, {"failed": True, "changed": False, "msg": str(err)})
        except AnsibleError:
            raise  # Ansible reports its own errors (invalid options, an unreachable host) as it always does
        except Exception as err:  # the catch-all: every expected error is handled where it happens
            failed = {"failed": True, "msg": _failure.bug_message(TASK, err), "exception": traceback.format_exc()}
            return merge_hash(result, failed)
        finally:
            if not self._task.async_val:  # an async job's wrapper owns its temporary directory
                self._remove_tmp_path(self._connection._shell.tmpdir)

    def _run(self, task_vars: dict) -> dict:
        _validation, params = self.validate_argument_spec(**_apply.MIG_INSTANCES_ARGS)
        module_args = dict(self._task.args)
        path = params["mig_parted_config_file"]
        if path is not None and params["state"] == "present":  # with state=absent the module refuses it
            config = self._read_config(path)
            params = dict(params, mig_parted_config=config, mig_parted_config_file=None)
            module_args.pop("mig_parted_config_file")
            module_args["mig_parted_config"] = config
        if self._task.async_val:
            wrap_async = not self._connection.has_native_async
            return self._execute_module(module_args=module_args, task_vars=task_vars, wrap_async=wrap_async)
        return self._plan_or_apply(params, module_args, task_vars)

    def _read_config(self, path: str) -> Mapping:
        """The parsed mig-parted config file at ``path`` on the controller (looked up like copy's src)."""
        try:
            config = self._loader.load_from_file(self._find_needle("files", path), cache="none")
        except AnsibleError as err:
            raise _Refused(
                "mig_parted_config_file %s: %s; give the path of a mig-parted config (YAML: version: v1, mig-configs:"
                " ...) on the controller" % (path, err.message)
            ) from err
        if not isinstance(config, Mapping):
            raise _Refused(
                "mig_parted_config_file %s holds %s, not a mig-parted config; it must be a mapping (version: v1,"
                " mig-configs: ...)" % (path, "nothing" if config is None else "a %s" % _layout.builtin_type(config))
            )
        return config

    def _plan_or_apply(self, params: dict, module_args: dict, task_vars: dict) -> dict:
        def on_host() -> dict:  # a new dict each time: _execute_module adds its internal options to the dict it gets
            return self._execute_module(module_args=dict(module_args), task_vars=task_vars)

        # Every option explicit (module_defaults for mig_facts must not change what the plan sees).
        facts_args = {"gpus": [], "require_mig": False, "slot_map_file": params["slot_map_file"]}
        gathered = self._execute_module("gpu.mig.mig_facts", module_args=facts_args, task_vars=task_vars)
        facts = gathered.get("ansible_facts", {}).get("nvidia_mig")
        if gathered.get("failed") or not facts or not facts["driver"]["loaded"]:
            return on_host()  # the module reports the problem (the driver, an unreadable slot map) in its own words
        try:
            host = _apply.host_from_facts(facts["gpus"])
            desired = _apply.desired_layout(params, host)
            planned = _apply.apply_layout(
                None, desired.layout, params["force"], check_mode=True, host=host, previous_slots=facts["slot_map"]
            )
        except (_layout.LayoutError, SelectorError) as err:
            raise _Refused(str(err)) from err
        if planned["changed"] and not self._task.check_mode:
            return on_host()
        returns = _apply.module_returns(planned, facts["driver"], self._task.diff, desired)
        return dict(returns, invocation={"module_args": params})
