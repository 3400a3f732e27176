"""The host-side programs of the botvps.infra collection, imported on the controller.

They live in ``collections/ansible_collections/botvps/infra/plugins/module_utils`` (stdlib only, so
that Debian's own python3 runs them on a host) and ship to hosts through the collection's
``botvps.infra.hostcode`` lookup. The controller imports the same files from here::

    from botvps.hostcode import keyaudit, statehost
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from botvps.paths import PROJECT_ROOT

MODULE_UTILS = PROJECT_ROOT / "collections" / "ansible_collections" / "botvps" / "infra" / "plugins" / "module_utils"


def path(name: str) -> Path:
    """The file of host program ``name`` (without .py)."""
    return MODULE_UTILS / f"{name}.py"


def load(name: str) -> ModuleType:
    """Import host program ``name`` once (as ``botvps_hostcode.NAME``)."""
    qualified = f"botvps_hostcode.{name}"
    if qualified in sys.modules:
        return sys.modules[qualified]
    spec = importlib.util.spec_from_file_location(qualified, path(name))
    if spec is None or spec.loader is None:
        raise ImportError(f"no host program {name!r} at {path(name)}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[qualified] = module  # dataclasses look their module up while the class is made
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[qualified]
        raise
    return module


keyaudit = load("keyaudit")
statehost = load("statehost")
reportprobe = load("reportprobe")
