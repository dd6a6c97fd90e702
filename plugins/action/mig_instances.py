# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Action for gpu.mig.mig_instances: plan on the controller, run the module on the host only to change something.

The host runs gpu.mig.mig_facts, and the controller plans from those facts with the module's own pure code
(``_apply.apply_layout`` in check mode). When nothing would change, or in check mode, that is the whole task, and
the result is the one the module would return. A converged host (the common case on a fleet) therefore runs and
compiles only the NVML adapter, not the planner. When the plan changes something, the module runs on the host as
before: it reads the host again, plans again and executes. An ``async`` task runs the module as before.
"""

from __future__ import annotations

from ansible.plugins.action import ActionBase
from ansible.utils.vars import merge_hash

from ansible_collections.gpu.mig.plugins.module_utils._mig import apply as _apply
from ansible_collections.gpu.mig.plugins.module_utils._mig import layout as _layout
from ansible_collections.gpu.mig.plugins.module_utils._mig.select import SelectorError


class ActionModule(ActionBase):
    """Plan from gpu.mig.mig_facts on the controller; run gpu.mig.mig_instances only for a real change."""

    _supports_check_mode = True
    _supports_async = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp  # no longer has any effect
        if self._task.async_val:
            wrap_async = not self._connection.has_native_async
            return merge_hash(result, self._execute_module(task_vars=task_vars, wrap_async=wrap_async))
        try:
            return merge_hash(result, self._plan_or_apply(task_vars))
        finally:
            self._remove_tmp_path(self._connection._shell.tmpdir)

    def _plan_or_apply(self, task_vars: dict) -> dict:
        _validation, params = self.validate_argument_spec(**_apply.MIG_INSTANCES_ARGS)
        # Every option explicit (module_defaults for mig_facts must not narrow what the plan sees), in a new dict
        # each time: _execute_module adds its internal options to the dict it is given.
        every_gpu = {"gpus": [], "require_mig": False}
        gathered = self._execute_module("gpu.mig.mig_facts", module_args=every_gpu, task_vars=task_vars)
        facts = gathered.get("ansible_facts", {}).get("nvidia_mig")
        if gathered.get("failed") or not facts or not facts["driver"]["loaded"]:
            return self._execute_module(task_vars=task_vars)  # the module reports the problem in its own words
        try:
            host = _apply.host_from_facts(facts["gpus"])
            planned = _apply.apply_layout(
                None, _apply.desired_layout(params, host), params["force"], check_mode=True, host=host
            )
        except (_layout.LayoutError, SelectorError) as err:
            return {"failed": True, "changed": False, "msg": str(err)}
        if planned["changed"] and not self._task.check_mode:
            return self._execute_module(task_vars=task_vars)
        return dict(
            _apply.module_returns(planned, facts["driver"], self._task.diff), invocation={"module_args": params}
        )
