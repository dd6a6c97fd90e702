# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What the host scripts share (PRIVATE to the collection): the boot applier ``gpu-mig-apply`` (gpu.mig.mig_persist)
and the metrics collector ``gpu-mig-metrics`` (gpu.mig.monitoring).

The roles install each script next to a copy of this package; the script puts its own directory first on
``sys.path``, imports this module and hands it its JSON config: read and checked here (every problem at once, each
with the fix), then the script's work, every failure of which ends as journal lines, never as a traceback.
"""

from __future__ import annotations

import json
import subprocess
import sys
from types import MappingProxyType
from typing import Callable, Mapping, NamedTuple

from ansible_collections.gpu.mig.plugins.module_utils._mig import apply as _apply
from ansible_collections.gpu.mig.plugins.module_utils._mig import layout as _layout
from ansible_collections.gpu.mig.plugins.module_utils._mig import nvml as _nvml
from ansible_collections.gpu.mig.plugins.module_utils._mig import select as _select


class CannotRun(Exception):
    """The script cannot run at all (its config, or no nvidia-ml-py); ``problems`` says why, each with the fix."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


def absolute_path(value) -> str | None:
    """A rule's check: a path on the host."""
    return None if isinstance(value, str) and value.startswith("/") else "must be an absolute path"


def _layout_entries(value) -> str | None:
    return None if isinstance(value, list) else "must be a list of layout entries (gpu.mig.mig_instances' layout)"


def _mig_parted_config(value) -> str | None:
    return None if isinstance(value, dict) else "must be a parsed mig-parted config (version, mig-configs)"


def _config_name(value) -> str | None:
    return None if isinstance(value, str) and value.strip() else "must be the name of a config in mig_parted_config"


# The keys every host script's config has: the slot map the roles write, and the desired layout as
# gpu.mig.mig_instances takes it (layout entries, or a parsed mig-parted config and the name of a config in it).
SHARED_RULES = (
    _layout.Rule("slot_map", True, absolute_path),
    _layout.Rule("layout", False, _layout_entries),
    _layout.Rule("mig_parted_config", False, _mig_parted_config),
    _layout.Rule("mig_parted_config_name", False, _config_name),
)


def failure_lines(err: BaseException, bug_note: str = "") -> list[str]:
    """What went wrong, one line per problem; an exception the core does not raise by design is named as a bug
    (``bug_note`` added: what it may have left behind)."""
    if isinstance(err, _layout.LayoutError):
        return list(err.problems)
    if isinstance(err, (_apply.ApplyError, _nvml.NvmlError)):
        return [err.msg]
    if isinstance(err, (OSError, RuntimeError, subprocess.SubprocessError, _select.SelectorError)):
        return [str(err)]
    return [
        f"unexpected {type(err).__name__}: {err} (a gpu.mig bug: please report it with these journal lines){bug_note}"
    ]


class HostScript(NamedTuple):
    """What sets one host script apart: its config (its own keys beside SHARED_RULES, and the role writing it)."""

    fix: str  # what repairs a bad config: rerun the role that writes it
    settings: str  # what the config holds, for a file that is no JSON object: "the applier's settings"
    rules: tuple = ()  # the config's own keys, as the core's mapping check takes them
    needs_layout: bool = False  # exactly one desired layout; else at most one
    defaults: Mapping = MappingProxyType({})  # values of the keys the config leaves out
    bug_note: str = ""  # what an unexpected exception may have left behind

    def check(self, config: dict, where: str) -> list[str]:
        """Every problem with the config at once: each key by its rule, then the one desired layout."""
        problems: list[str] = []
        _layout.check_mapping(config, SHARED_RULES + self.rules, where, problems)
        given = [key for key in ("layout", "mig_parted_config") if config.get(key) is not None]
        if self.needs_layout and len(given) != 1:
            problems.append(f"{where}: needs exactly one of 'layout' and 'mig_parted_config', not {given or 'neither'}")
        elif len(given) > 1:
            problems.append(f"{where}: takes at most one of 'layout' and 'mig_parted_config', not {given}")
        if (config.get("mig_parted_config") is None) != (config.get("mig_parted_config_name") is None):
            problems.append(f"{where}: 'mig_parted_config' and 'mig_parted_config_name' go together")
        return problems

    def load(self, config_path: str, root: str) -> dict:
        """The config at ``root + config_path``, checked, the defaults filled in (None counts as left out). Raises
        CannotRun naming every problem and the fix, also when nvidia-ml-py is missing."""
        try:
            with open(root + config_path, encoding="utf-8") as stream:
                config = json.load(stream)
        except (OSError, ValueError) as err:
            raise CannotRun([f"cannot read {config_path}: {err}; {self.fix}"]) from err
        if not isinstance(config, dict):
            raise CannotRun([f"{config_path} holds a JSON {type(config).__name__}, not {self.settings}; {self.fix}"])
        problems = self.check(config, config_path)
        if problems:
            raise CannotRun([f"{problem}; {self.fix}" for problem in problems])
        if not _nvml.HAS_PYNVML:
            raise CannotRun(
                [f"nvidia-ml-py is not installed for {sys.executable}; install it (gpu.mig.preflight role)"]
            )
        return {**self.defaults, **{key: value for key, value in config.items() if value is not None}}

    def run(self, config_path: str, root: str, work: Callable[[dict], list[str]]) -> tuple[int, list[str]]:
        """Load the config and hand it to ``work``; the exit status and the problems (journal lines, no traceback).

        2 when the script cannot run (its config); else 1 when ``work`` returns problems or raises (the exception
        as ``failure_lines`` words it), 0 when it returns none.
        """
        try:
            config = self.load(config_path, root)
        except CannotRun as err:
            return 2, err.problems
        except Exception as err:  # pylint: disable=broad-exception-caught  # a bug while checking the config
            return 2, failure_lines(err, self.bug_note)
        try:
            problems = work(config)
        except Exception as err:  # pylint: disable=broad-exception-caught  # the last line: no traceback on a host
            return 1, failure_lines(err, self.bug_note)
        return (1 if problems else 0), problems
