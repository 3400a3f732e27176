"""The VM tests' lab: the provisioned VM they work on (molecule's, or one booted here), and its inventory.

Opt-in: ``BOTVPS_VM_TESTS=1``. With ``BOTVPS_VM_NAME`` set (molecule's debian12 verifier sets both)
the tests use that VM as molecule converged it, after tests/host ran on it. Without it they boot
their own (``test-lab``, or ``BOTVPS_LAB_VM``; about 5 more minutes) and provision it the same way. Either way the
inventory is molecule's: ``molecule/shared/group_vars`` (two bots, alpha and beta, with sentinel
secrets in the vault; vault password ``molecule/shared/vault-password``) plus the VM's host
variables from ``botvps.vm.inventory`` (as an operator would write them).

    BOTVPS_VM_TESTS=1 .venv/bin/python -m pytest tests/vm -v -s
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from botvps import secrets as vault
from botvps.paths import PROJECT_ROOT
from botvps.vm import inventory, machine

MOLECULE_SHARED = PROJECT_ROOT / "molecule" / "shared"
HOST_TESTS = PROJECT_ROOT / "tests" / "host"
PASSWORD_FILE = MOLECULE_SHARED / "vault-password"
# "test-" VMs are stopped by `invoke test` (botvps.testing) if one is left over.
LAB_VM = os.environ.get("BOTVPS_LAB_VM", "test-lab")
DISPOSABLE_PREFIXES = ("molecule-", "test-")  # the only VMs a test may destroy


@dataclass
class Lab:
    vm: machine.VM
    inventory: Path
    password_file: Path
    secrets: list[str]  # every secret value in the vault: none may appear in any output
    bots: list[str]
    tmp: Path
    owned: bool  # booted by these tests (else molecule's)

    def run(self, command: str, check: bool = True, timeout: float = 180.0):
        """A root command through the guest agent (out of band, no SSH); its result (as tests/host's console)."""
        result = self.vm.console().run(command, timeout=timeout)
        if check and result.exit_code != 0:
            raise AssertionError(f"console: {command!r} exited {result.exit_code}: {result.stderr or result.stdout}")
        return result

    def console(self, command: str, check: bool = True, timeout: float = 180.0) -> str:
        return self.run(command, check, timeout).stdout

    def fresh_rate_limit(self) -> None:
        """Forget ufw's per-source SSH counts (6 new connections per 30 s): each run is judged on its own."""
        self.console(machine.FORGET_SSH_COUNTS, check=False)

    def leaked(self, text: str) -> list[str]:
        """The vault's secret values found in ``text`` (shown masked)."""
        return [value[:2] + "..." for value in self.secrets if value and value in text]


def write_inventory(vm: machine.VM, directory: Path, **host_vars: object) -> Path:
    """Molecule's inventory for ``vm``: its host variables (and ``host_vars``), and a copy of molecule's group_vars
    (bots, vault)."""
    # molecule's group_vars give the admin key as admin_key_files: admin_keys too would make it a second line.
    return inventory.write(vm, directory, {"admin_keys": [], **host_vars}, group_vars=MOLECULE_SHARED / "group_vars")


def vault_values() -> list[str]:
    variables = vault.load_vault(MOLECULE_SHARED / "group_vars" / "all" / "vault.yml",
                                 vault.read_password_file(PASSWORD_FILE))
    found: list[str] = []

    def walk(value: object) -> None:
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)
        elif value is not None and len(str(value)) >= 6:
            found.append(str(value))

    walk(variables)
    return found


def host_helper(name: str):
    """A helper module of tests/host (sntp, sshcount), imported from there."""
    if str(HOST_TESTS) not in sys.path:
        sys.path.insert(0, str(HOST_TESTS))
    return importlib.import_module(name)


def sntp_server():
    """The tests' NTP stand-in on the controller's 127.0.0.1:123 (10.0.2.2 in the VM); None when taken."""
    SNTPServer = host_helper("sntp").SNTPServer

    try:
        return SNTPServer().__enter__()
    except OSError:  # another test (or engineer) serves it already: the VM can use that one
        return None


def sync_clock(lab: Lab, timeout: float = 90) -> None:
    lab.console("systemctl restart systemd-timesyncd")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lab.console("timedatectl show -p NTPSynchronized --value", check=False).strip() == "yes":
            return
        time.sleep(3)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
