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

from botvps import provision, runner, verify
from botvps.paths import PROJECT_ROOT
from botvps.vm import inventory, machine
from botvps.vm.machine import FORGET_SSH_COUNTS  # noqa: F401 - the drills' import

# molecule's inventory for the lab VMs: two bots (alpha, beta) with sentinel secrets in the vault.
LAB_GROUP_VARS = PROJECT_ROOT / "molecule" / "shared" / "group_vars"
LAB_VAULT_PASSWORD = str(PROJECT_ROOT / "molecule" / "shared" / "vault-password")
HERE = Path(__file__).parent


def lab_provision(vm: machine.VM, directory: Path, extra: list[str] | None = None,
                  **overrides: Any) -> runner.PlaybookResult:
    """Provision ``vm`` as molecule does (its group_vars, bots and vault), with ``overrides`` in the host's
    vars: the drills' one way in. The lab's bots are always there, since a run without them retires them."""
    inv = inventory.write(vm, directory, overrides, group_vars=LAB_GROUP_VARS)
    return provision.provision(inv, vault_password_file=LAB_VAULT_PASSWORD, extra=extra, echo=False)


# The internal snapshots of a test VM (disk and memory, botvps.vm.machine.VM.save): "booted" is saved by
# molecule's create (handed over, nothing provisioned), "provisioned" when this session starts (after converge and
# idempotence). A drill marked restore(TAG) gets the VM back as TAG before it starts, so what one drill breaks
# never reaches the next, and no drill re-provisions only to repair what the one before it did.
BOOTED, PROVISIONED = "booted", "provisioned"
DRILLS: set[str] = set()  # node ids of this session's drills (for the summary of where verify's time went)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "late: changes the VM on purpose (faults); runs after every other check")
    config.addinivalue_line("markers", "lab: re-provisions the VM with molecule's lab inventory and vault, so it "
                                       "runs on molecule's VMs only (invoke demo deselects it)")
    config.addinivalue_line("markers", "connections: opens SSH connections of its own on purpose (refused logins, "
                                       "bursts, ssh-audit), beyond the suite's one multiplexed connection, so it runs "
                                       "on molecule's VMs only (invoke demo deselects it)")
    config.addinivalue_line("markers", "restore(tag): starts from the VM's snapshot TAG (booted or provisioned), "
                                       "restored before the test; implies late")
    config.addinivalue_line("markers", "drills(group): a drill of GROUP (lockout, retire, faults, cuts, budget, "
                                       "snapshots, nat); it runs where BOTVPS_DRILLS names its group")


# Each scenario runs each group of drills once, and the two scenarios split the groups between them
# (molecule/*/molecule.yml: retire,snapshots on debian12, lockout,faults,budget,nat on debian13; BOTVPS_DRILLS in
# the environment replaces a scenario's list): the read-only checks run on both releases, a drill's proof needs
# one. "cuts" (a first provision cut off by a kill, a dead link or a reset: 20 minutes under TCG) is in no
# scenario's list, CI's time budget has no room for it: BOTVPS_DRILLS=cuts invoke test --vm --scenario debian13.
# "all" runs every group.
DRILL_GROUPS = ("lockout", "retire", "faults", "cuts", "budget", "snapshots", "nat")


def selected_drills() -> set[str]:
    wanted = {g.strip() for g in os.environ.get("BOTVPS_DRILLS", "").split(",") if g.strip()}
    unknown = wanted - {*DRILL_GROUPS, "all"}
    if unknown:
        raise pytest.UsageError(f"BOTVPS_DRILLS: unknown group {', '.join(sorted(unknown))}; "
                                f"use a comma list of {', '.join(DRILL_GROUPS)} (or all)")
    return set(DRILL_GROUPS) if "all" in wanted else wanted


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Checks of the provisioned state first, then the drills that break it (each from its own restore)."""
    selected = selected_drills()
    for item in items:
        if "fresh_rate_limit" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.connections)
        group = item.get_closest_marker("drills")
        if group is not None and group.args[0] not in selected:
            item.add_marker(pytest.mark.skip(reason=f"a {group.args[0]} drill: set BOTVPS_DRILLS={group.args[0]} "
                                                    "(molecule runs each group on one scenario)"))
    if "budget" in selected:  # its first drill runs the demo's checks (test_connection_budget.py): not twice
        for item in items:
            if item.path.parent == HERE and not any(item.get_closest_marker(m) for m in verify.DEMO_EXCLUDED_MARKS):
                item.add_marker(pytest.mark.skip(reason="run by the budget drill's invoke demo checks "
                                                        "(test_the_demos_checks_share_one_connection)"))
    items.sort(key=_is_drill)
    DRILLS.update(item.nodeid for item in items if _is_drill(item))


def _is_drill(item: pytest.Item) -> bool:
    return item.get_closest_marker("late") is not None or item.get_closest_marker("restore") is not None


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """The verify phase's time split: checks of the provisioned state, then the drills (CI's budget)."""
    drills = DRILLS
    spent = {"read-only checks": 0.0, "drills": 0.0}
    for reports in terminalreporter.stats.values():
        for report in reports:
            if isinstance(report, pytest.TestReport):
                spent["drills" if report.nodeid in drills else "read-only checks"] += report.duration
    if any(spent.values()):
        terminalreporter.write_line("verify phases: " + ", ".join(f"{k} {v:.0f} s" for k, v in spent.items()))


@pytest.fixture(scope="session")
def snapshot_of_provisioned(request) -> str | None:
    """Save the VM as it is now, once, if any drill of this session restores it; its tag."""
    wanted = any(mark.args[:1] == (PROVISIONED,) for item in request.session.items
                 if not any(skip.name == "skip" or (skip.name == "skipif" and skip.args and skip.args[0])
                            for skip in item.iter_markers())
                 for mark in item.iter_markers("restore"))
    if not wanted or not os.environ.get("BOTVPS_VM_NAME"):
        return None
    vm = request.getfixturevalue("vm")
    seconds = vm.save(PROVISIONED)
    print(f"\nsnapshot: saved {vm.name} as {PROVISIONED!r} in {seconds:.1f} s", flush=True)
    return PROVISIONED


@pytest.fixture(autouse=True, scope="session")
def _save_provisioned_first(snapshot_of_provisioned) -> None:
    """The snapshot is taken before the first check runs, so no check's traces are in it."""


@pytest.fixture(autouse=True)
def _restore_snapshot(request):
    """A drill marked restore(TAG) starts from that snapshot of the VM."""
    marker = request.node.get_closest_marker("restore")
    if marker is None:
        return
    vm = request.getfixturevalue("vm")
    tag = marker.args[0]
    if tag not in vm.snapshots():
        pytest.fail(f"{vm.name} has no snapshot {tag!r} (saved: {', '.join(vm.snapshots()) or 'none'})")
    print(f"\nsnapshot: restored {vm.name} to {tag!r} in {vm.restore(tag):.1f} s", flush=True)


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
