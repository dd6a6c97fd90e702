"""Simulated NVML: patches the installed pynvml so that it talks to a simulated host directory.

``install(pynvml, root)`` replaces the functions listed in ``api.REPLACEMENTS`` on the pynvml module
in place; constants, structures, handle types and exceptions stay pynvml's own.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType
from typing import Any

ORIGINALS: dict[str, Any] = {}  # pynvml's own functions, saved before the first install
_MODULE_UTILS = Path(__file__).resolve().parents[3] / "plugins" / "module_utils"
_PACKAGE = "ansible_collections.gpu.mig.plugins.module_utils"


def _expose_collection_catalog() -> None:
    """Under AnsiballZ the collection package holds only the module's own module_utils: let the simulator
    find the catalog (its GPU tables, in ``_mig``) in the checkout as well."""
    for name, folder in ((_PACKAGE, _MODULE_UTILS), (f"{_PACKAGE}._mig", _MODULE_UTILS / "_mig")):
        package = sys.modules.get(name)
        if package is not None and str(folder) not in package.__path__:
            package.__path__.append(str(folder))


_expose_collection_catalog()


def _str_wrapper_code(pynvml_module: ModuleType) -> Any:
    """Code object of pynvml's convertStrBytes wrapper (to tell which functions it decorates)."""
    return pynvml_module.convertStrBytes(len).__code__


def install(pynvml_module: ModuleType, root: Path | str) -> ModuleType:
    """Patch ``pynvml_module`` to simulate the host at ``root``; returns the module."""
    from nvmlsim import api  # imports pynvml; deferred so that importing nvmlsim stays cheap

    api.configure(root)
    str_code = _str_wrapper_code(pynvml_module)
    for name, func in api.REPLACEMENTS.items():
        original = ORIGINALS.setdefault(name, getattr(pynvml_module, name))
        wrapped = pynvml_module.convertStrBytes(func) if original.__code__ is str_code else func
        setattr(pynvml_module, name, wrapped)
    return pynvml_module


def uninstall(pynvml_module: ModuleType) -> None:
    """Put pynvml's own functions back."""
    for name, original in ORIGINALS.items():
        setattr(pynvml_module, name, original)
