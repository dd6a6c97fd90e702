"""Make ``import pynvml`` return the real pynvml patched by nvmlsim when MIGSIM_ROOT is set.

Installed lazily through a meta-path finder (plain classes: importlib.abc alone costs ~35 ms), so
interpreters that never import pynvml pay only for this file (~1 ms). Adds tests/simulator (for nvmlsim) and the repository's .build/collections to sys.path.
"""

from __future__ import annotations

import importlib.machinery
import os
import sys


class _PatchingLoader:
    """Runs the real pynvml module, then patches it in place."""

    def __init__(self, loader, root: str) -> None:
        self._loader = loader
        self._root = root

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        import nvmlsim  # pylint: disable=import-outside-toplevel

        nvmlsim.install(module, self._root)


class _PynvmlFinder:
    """Finds the real pynvml on sys.path and hands it a patching loader."""

    def __init__(self, root: str) -> None:
        self._root = root

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "pynvml":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _PatchingLoader(spec.loader, self._root)
        return spec


def _enable(root: str) -> None:
    simulator = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    repo = os.path.dirname(os.path.dirname(simulator))
    nested = repo.endswith(os.path.join("ansible_collections", "gpu", "mig"))  # ansible-test's copy
    collections = (
        os.path.dirname(os.path.dirname(os.path.dirname(repo)))
        if nested
        else os.path.join(repo, ".build", "collections")
    )
    for entry in (simulator, collections):
        if entry not in sys.path:
            sys.path.append(entry)
    sys.meta_path.insert(0, _PynvmlFinder(root))


if os.environ.get("MIGSIM_ROOT"):
    _enable(os.environ["MIGSIM_ROOT"])
