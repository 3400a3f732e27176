"""Run the verification suite (tests/host, testinfra) against provisioned hosts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from botvps import runner
from botvps.paths import PROJECT_ROOT

SUITE = PROJECT_ROOT / "tests" / "host"


def command(inventory: Path, limit: str = "all", extra: list[str] | None = None) -> list[str]:
    return [sys.executable, "-m", "pytest", str(SUITE), "-p", "no:cacheprovider", "-q", "-rfEs",
            f"--hosts=ansible://{limit}", f"--ansible-inventory={inventory}", "--connection=ansible",
            *(extra or [])]


# What `invoke demo` runs of the suite (botvps.demo; molecule's budget drill runs the same, and tests/host/conftest.py
# skips it elsewhere in that session): every check of the provisioned state, none that re-provisions with molecule's
# lab vault (lab) or opens SSH connections of its own on purpose (connections), and no drill (late, restore: they
# change the host on purpose).
DEMO_EXCLUDED_MARKS = ("lab", "connections", "late", "restore")
DEMO_CHECKS = " and ".join(f"not {mark}" for mark in DEMO_EXCLUDED_MARKS)  # as pytest -m


def environment(vm_name: str | None = None, vault_password_file: Path | str | None = None) -> dict[str, str]:
    """The suite's environment, the same for `invoke demo`, `invoke drift` and the budget drill.

    No drills (tests/host/conftest.py): they change the host on purpose, and a selection meant for molecule's
    session (BOTVPS_DRILLS=budget skips the demo's checks there, since its drill runs them) must not leak in. The
    checks through the VM's guest agent run only where a VM is named. With the vault's password the bots' checks
    compare their secrets with the vault.
    """
    env: dict[str, str | None] = {"BOTVPS_DRILLS": None, "BOTVPS_VM_NAME": vm_name}
    if vault_password_file is not None:
        env["ANSIBLE_VAULT_PASSWORD_FILE"] = str(Path(vault_password_file).resolve())
    return runner.environment(env)


def run(inventory: Path, vm_name: str | None = None, limit: str = "all", extra: list[str] | None = None,
        vault_password_file: Path | None = None) -> int:
    """Exit code of the suite (its environment: :func:`environment`)."""
    return subprocess.run(command(inventory, limit, extra), cwd=PROJECT_ROOT,
                          env=environment(vm_name, vault_password_file), stdin=subprocess.DEVNULL).returncode
