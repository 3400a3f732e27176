"""Where botvps keeps its cache and state on the controller."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def home() -> Path:
    """Root of botvps' controller-side state: $BOTVPS_HOME or ~/.cache/botvps."""
    explicit = os.environ.get("BOTVPS_HOME")
    if explicit:
        return Path(explicit)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "botvps"


def images_dir() -> Path:
    return home() / "images"


def vms_dir() -> Path:
    return home() / "vms"
