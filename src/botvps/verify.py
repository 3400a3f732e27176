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


def run(inventory: Path, vm_name: str | None = None, limit: str = "all", extra: list[str] | None = None,
        vault_password_file: Path | None = None) -> int:
    """Exit code of the suite; with the vault's password the bots' checks compare their secrets with the vault."""
    # No drills (tests/host/conftest.py): they change the host on purpose, and a selection meant for molecule's
    # session (BOTVPS_DRILLS=budget skips the demo's checks there, since its drill runs them) must not leak in.
    env: dict[str, str | None] = {"BOTVPS_DRILLS": None}
    if vm_name:
        env["BOTVPS_VM_NAME"] = vm_name
    if vault_password_file is not None:
        env["ANSIBLE_VAULT_PASSWORD_FILE"] = str(vault_password_file)
    return subprocess.run(command(inventory, limit, extra), cwd=PROJECT_ROOT, env=runner.environment(env),
                          stdin=subprocess.DEVNULL).returncode
