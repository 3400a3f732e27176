"""The connection budget: every botvps command reaches the host over one multiplexed SSH connection, so the server's
own firewall (ufw limit: the 6th new SSH connection from one address within 30 s is dropped) never locks the
operator out, and the admin can log in at once afterwards.

Counted as sshcount.py says. Two commands are judged on a run made anyway, not on a second one here: `invoke report`
on test_report.py's (ssh-audit's paced scan takes a minute), `invoke drift` on tests/vm/test_drift_vm.py's drill run
(debian12, with Ansible's own strategy as here).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import sshcount
from conftest import LAB_GROUP_VARS, LAB_VAULT_PASSWORD, PROVISIONED

from botvps import verify
from botvps.paths import PROJECT_ROOT
from botvps.vm import inventory

# On one scenario (Ansible's own strategy, botvps' default): BOTVPS_DRILLS=budget (molecule debian13 sets it).
pytestmark = [
    pytest.mark.lab,
    pytest.mark.restore(PROVISIONED),
    pytest.mark.drills("budget"),
]

PROVISION_BUDGET = 2  # plus the fresh-login proofs, of which a run that changes nothing needs none


@pytest.fixture(scope="module")
def lab_inventory(vm, tmp_path_factory) -> Path:
    return inventory.write(vm, tmp_path_factory.mktemp("budget") / "inventory", {"admin_keys": []},
                           group_vars=LAB_GROUP_VARS)


@pytest.fixture
def counted(vm, console):
    """Run a command from a cold controller; (its SYN times on the guest clock, its result, why a fresh admin login
    failed at once afterwards or '')."""
    return lambda action: sshcount.counted(vm, console, action)


def invoke(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "invoke"), *args], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=1800, stdin=subprocess.DEVNULL)


def test_the_demos_checks_share_one_connection(vm, counted, lab_inventory):
    """The scenario's one run of the demo's checks (conftest.py skips them in this session): they pass, and share
    one connection."""
    times, code, why = counted(lambda: verify.run(lab_inventory, vm_name=vm.name, extra=["-m", verify.DEMO_CHECKS],
                                             vault_password_file=Path(LAB_VAULT_PASSWORD)))
    assert code == 0, "the demo's checks failed on the provisioned VM"
    sshcount.judge("the demo's checks", times, sshcount.READ_ONLY_BUDGET, why)


# `invoke drift` is judged on tests/vm/test_drift_vm.py's run (debian12), with Ansible's own strategy.
@pytest.mark.parametrize("args", [("audit-keys",), ("bots.backup", "--out", "{tmp}")], ids=["audit-keys", "bots.backup"])
def test_a_read_only_command_stays_in_budget(vm, counted, lab_inventory, tmp_path, args):
    command = [a.replace("{tmp}", str(tmp_path)) for a in args]
    times, result, why = counted(lambda: invoke(*command, "--inventory", str(lab_inventory),
                                           "--vault-password-file", LAB_VAULT_PASSWORD))
    print(result.stdout[-1500:], result.stderr[-1500:])
    assert result.returncode in (0, 1, 2)  # audit-keys may find no fake exchange
    assert "Traceback" not in result.stderr
    sshcount.judge("invoke " + args[0], times, sshcount.READ_ONLY_BUDGET, why)


def test_a_provision_that_changes_nothing_stays_in_budget(vm, counted, lab_inventory):
    times, result, why = counted(lambda: invoke("provision", "--inventory", str(lab_inventory),
                                           "--vault-password-file", LAB_VAULT_PASSWORD))
    assert result.returncode == 0, result.stdout[-3000:]
    assert re.search(r"changed=0\b", result.stdout), result.stdout[-2000:]
    sshcount.judge("invoke provision (nothing to change)", times, PROVISION_BUDGET, why)
