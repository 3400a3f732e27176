"""Fixtures for checks against a provisioned VM (run by molecule verify, and by invoke demo).

testinfra's ``host`` reaches the VM over SSH as Ansible does; ``console`` reaches it through
the QEMU guest agent (out of band), as a provider's web console would.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from botvps import provision, runner
from botvps.paths import PROJECT_ROOT
from botvps.vm import inventory, machine
from botvps.vm.machine import FORGET_SSH_COUNTS  # noqa: F401 - the drills' import

# molecule's inventory for the lab VMs: two bots (alpha, beta) with sentinel secrets in the vault.
LAB_GROUP_VARS = PROJECT_ROOT / "molecule" / "shared" / "group_vars"
LAB_VAULT_PASSWORD = str(PROJECT_ROOT / "molecule" / "shared" / "vault-password")


def lab_provision(vm: machine.VM, directory: Path, extra: list[str] | None = None,
                  **overrides: Any) -> runner.PlaybookResult:
    """Provision ``vm`` as molecule does (its group_vars, bots and vault), with ``overrides`` in the host's
    vars: the drills' one way in. The lab's bots are always there, since a run without them retires them."""
    inv = inventory.write(vm, directory, overrides, group_vars=LAB_GROUP_VARS)
    return provision.provision(inv, vault_password_file=LAB_VAULT_PASSWORD, extra=extra, echo=False)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "late: changes the VM on purpose (faults); runs after every other check")
    config.addinivalue_line("markers", "lab: re-provisions the VM with molecule's lab inventory and vault, so it "
                                       "runs on molecule's VMs only (invoke demo deselects it)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Checks of the provisioned state first, then the drills that break and repair it."""
    items.sort(key=lambda item: item.get_closest_marker("late") is not None)


@pytest.fixture(scope="session")
def vm() -> machine.VM:
    name = os.environ.get("BOTVPS_VM_NAME")
    if not name:
        pytest.skip("BOTVPS_VM_NAME is not set: these checks need a provisioned botvps VM")
    return machine.load(name)


@pytest.fixture(scope="session")
def console(vm: machine.VM):
    agent = vm.console()

    def run(command: str, timeout: float = 180.0, check: bool = True):
        result = agent.run(command, timeout=timeout)
        if check and result.exit_code != 0:
            raise AssertionError(f"console: {command!r} exited {result.exit_code}: {result.stderr or result.stdout}")
        return result

    return run


@pytest.fixture
def fresh_rate_limit(console):
    """Forget ufw's per-source SSH connection counts (ufw limit: 6 new connections in 30 s),
    so a test's deliberate connections are judged on their own."""
    console(FORGET_SSH_COUNTS, check=False)
    yield
    console(FORGET_SSH_COUNTS, check=False)


def banner(port: int, timeout: float = 10.0) -> bytes:
    """What a TCP client on the controller receives first from 127.0.0.1:port (b'' if nothing)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(256)
    except OSError:
        return b""


def wait_until(predicate, timeout: float, interval: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
