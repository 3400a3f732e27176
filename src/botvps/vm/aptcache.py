"""An optional apt cache for the harness' VMs: apt-cacher-ng (Debian's package) on 127.0.0.1.

Repeated provisions of fresh VMs download the same .debs again; with ``BOTVPS_APT_CACHE=1`` (or
``vm.up --apt-cache``) the harness starts its own apt-cacher-ng on the controller's loopback,
keeps the cache under ~/.cache/botvps/apt-cache, and points the VM's apt at it through 10.0.2.2
(the controller as a QEMU user-mode guest sees it). Only the harness uses it: a real server's apt
is never pointed at the operator's machine.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

from botvps import paths

PORT = 3142
GUEST_URL = f"http://10.0.2.2:{PORT}"
GUEST_CONF = "/etc/apt/apt.conf.d/00botvps-harness-apt-cache"
BINARY = "/usr/sbin/apt-cacher-ng"


class AptCacheError(RuntimeError):
    pass


def wanted() -> bool:
    return os.environ.get("BOTVPS_APT_CACHE", "") in ("1", "true", "yes")


def directory() -> Path:
    return paths.home() / "apt-cache"


def _listening(port: int = PORT) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def ensure(log=print) -> str:
    """Start the cache if it is not running; return the URL guests use."""
    if _listening():
        return GUEST_URL
    if not Path(BINARY).exists():
        raise AptCacheError(f"the apt cache needs Debian's apt-cacher-ng: apt-get install apt-cacher-ng "
                            f"(or unset BOTVPS_APT_CACHE)")
    root = directory()
    for sub in ("cache", "log", "run"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    conf = Path("/etc/apt-cacher-ng")
    command = [BINARY, "-c", str(conf), "ForeGround=0", f"Port={PORT}", "BindAddress=127.0.0.1",
               f"CacheDir={root / 'cache'}", f"LogDir={root / 'log'}", f"PidFile={root / 'run' / 'pid'}",
               f"SocketPath={root / 'run' / 'socket'}", "ExThreshold=30"]
    result = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    for _ in range(50):
        if _listening():
            log(f"apt cache: apt-cacher-ng on 127.0.0.1:{PORT}, cache in {root / 'cache'}")
            return GUEST_URL
        time.sleep(0.1)
    raise AptCacheError(f"apt-cacher-ng did not start: {(result.stderr or result.stdout).strip()[-500:]}")


def guest_command(url: str) -> str:
    """The root shell command that points a guest's apt at the cache."""
    return f"printf 'Acquire::http::Proxy \"%s\";\\n' '{url}' > {GUEST_CONF}"
