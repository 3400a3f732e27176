"""The controller's system packages the VM harness needs, installed with apt when possible."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

# command -> Debian package that provides it
COMMANDS = {
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "mmdebstrap": "mmdebstrap",
    "mkfs.ext4": "e2fsprogs",
    "ssh": "openssh-client",
}


def missing() -> list[str]:
    return sorted({pkg for cmd, pkg in COMMANDS.items() if shutil.which(cmd) is None})


def ensure() -> None:
    """Install what is missing with apt as root; otherwise say exactly what to install."""
    needed = missing()
    if not needed:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError(
            "the VM harness needs these packages: "
            + " ".join(needed)
            + "\ninstall them with: sudo apt-get install --no-install-recommends " + " ".join(needed)
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdout=sys.stderr, stdin=subprocess.DEVNULL)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *needed], check=True, env=env, stdout=sys.stderr,
        stdin=subprocess.DEVNULL,
    )
