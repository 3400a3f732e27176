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


# Where every SSH connection botvps opens keeps its control socket (ansible.cfg's control_path_dir, for Ansible and
# testinfra alike, and the connect role's first login): one multiplexed connection per host and user.
CONTROL_DIR = "~/.cache/botvps/cp"
CONTROL_PATH = CONTROL_DIR + "/%h-%p-%r"


def control_dir(home: str | None = None) -> Path:
    """CONTROL_DIR in ``home`` (default: this process' $HOME)."""
    return Path(home or Path.home()) / CONTROL_DIR.removeprefix("~/")
