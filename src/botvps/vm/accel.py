"""Choose QEMU's accelerator: KVM only when it really boots a kernel, TCG otherwise.

``/dev/kvm`` can exist while nested KVM fails: QEMU aborts setting an MSR, or the
guest hangs or dies with "KVM internal error ... emulation failure".  So the probe
boots the image's own kernel under KVM with no root filesystem and waits for the
kernel's "VFS: Unable to mount root fs" panic: only a guest that really ran prints
it.  The verdict is cached until the host reboots.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from botvps import paths

PROBE_TIMEOUT = 20.0
_PANIC = b"VFS: Unable to mount root fs"


def kvm_boots(kernel: Path, timeout: float = PROBE_TIMEOUT) -> bool:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    try:
        # The guest's console goes to a pipe of its own, and QEMU gets its own /dev/null as stdin: a
        # QEMU that aborts (nested KVM: "kvm_buf_set_msrs: Assertion") leaves O_NONBLOCK on the file
        # it was given, and on the caller's terminal that breaks every later program (Ansible refuses
        # to start on a non-blocking stdin).
        result = subprocess.run(
            ["qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-m", "256",
             "-display", "none", "-nodefaults", "-no-reboot", "-serial", "stdio",
             "-kernel", str(kernel), "-append", "console=ttyS0 panic=-1 root=/dev/nonexistent"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
        )
    except (subprocess.TimeoutExpired, OSError):
        return False
    return _PANIC in result.stdout


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def choose(kernel: Path) -> str:
    """``kvm`` when it boots ``kernel`` here, else ``tcg``; BOTVPS_ACCEL=kvm|tcg overrides."""
    forced = os.environ.get("BOTVPS_ACCEL")
    if forced in ("kvm", "tcg"):
        return forced
    verdict_file = paths.home() / "accel.json"
    try:
        verdict = json.loads(verdict_file.read_text())
        if verdict.get("boot_id") == _boot_id():
            return str(verdict["accel"])
    except (OSError, ValueError, KeyError):
        pass
    accel = "kvm" if kvm_boots(kernel) else "tcg"
    verdict_file.parent.mkdir(parents=True, exist_ok=True)
    verdict_file.write_text(json.dumps({"boot_id": _boot_id(), "accel": accel}))
    return accel
