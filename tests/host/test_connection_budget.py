"""The connection budget: every botvps command reaches the host over one multiplexed SSH connection, so the server's
own firewall (ufw limit: the 6th new SSH connection from one address within 30 s is dropped) never locks the
operator out, and the admin can log in at once afterwards.

The guest logs every SYN to its SSH port before any other rule sees it (dropped ones included: those are the lockout
itself), in a table of its own; each command runs from a cold controller (no multiplexed connection left over) and
is judged on its own (ufw's counts forgotten before it, never after).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import FORGET_SSH_COUNTS, LAB_GROUP_VARS, LAB_VAULT_PASSWORD, PROVISIONED

from botvps import verify
from botvps.paths import PROJECT_ROOT
from botvps.report import command as report_command
from botvps.vm import inventory, machine

# On one scenario (Ansible's own strategy, botvps' default): BOTVPS_DRILLS=budget (molecule debian13 sets it).
pytestmark = [
    pytest.mark.lab,
    pytest.mark.restore(PROVISIONED),
    pytest.mark.drills("budget"),
]
# What `invoke demo` runs (botvps.demo), without the drills that run late.
DEMO_CHECKS = "not lab and not connections and not late"

READ_ONLY_BUDGET = 2  # new connections per host for demo's checks, drift, report (ssh-audit apart), audit-keys, backup
PROVISION_BUDGET = 2  # plus the fresh-login proofs, of which a run that changes nothing needs none
WINDOW_BUDGET = 4  # in any 30 s, ssh-audit's scan included: ufw's limit (6) leaves the operator room
LOG_PREFIX = "botvps-syn "
COUNT_ON = (
    "nft delete table inet botvps_count 2>/dev/null; nft -f - <<'EOF'\n"
    "table inet botvps_count {\n"
    "  chain input {\n"
    "    type filter hook input priority -400;\n"
    f"    tcp dport 22 tcp flags & (syn | ack) == syn log prefix \"{LOG_PREFIX}\" level info\n"
    "  }\n"
    "}\n"
    "EOF"
)
COUNT_OFF = "nft delete table inet botvps_count"


def syn_times(console, since: float) -> list[float]:
    """Guest times of the SYNs from the controller (10.0.2.2) to the SSH port since ``since`` (epoch seconds)."""
    out = console(f"journalctl -k -o short-unix --no-pager --since @{since:.3f} --grep '{LOG_PREFIX}'",
                  check=False).stdout
    return [float(line.split()[0]) for line in out.splitlines() if "SRC=10.0.2.2 " in line and "DPT=22 " in line]


def busiest_window(times: list[float], window: float = 30.0) -> int:
    """The most SYNs within any ``window`` seconds."""
    return max((sum(1 for u in times if t <= u < t + window) for t in times), default=0)


def admin_logs_in_at_once(vm: machine.VM) -> str:
    """'' when a brand-new admin login (no multiplexing) works right away, else why not."""
    result = subprocess.run(vm.ssh_command("ops") + ["-o", "ControlPath=none", "true"], capture_output=True,
                            text=True, timeout=60, stdin=subprocess.DEVNULL)
    return "" if result.returncode == 0 else f"exit {result.returncode}: {result.stderr.strip()[-300:]}"


@pytest.fixture(scope="module")
def lab_inventory(vm, tmp_path_factory) -> Path:
    return inventory.write(vm, tmp_path_factory.mktemp("budget") / "inventory", {"admin_keys": []},
                           group_vars=LAB_GROUP_VARS)


@pytest.fixture
def counted(vm, console):
    """Run a command from a cold controller and return its SYN times (guest clock)."""
    console(COUNT_ON)

    def run(action: Callable[[], object]) -> tuple[list[float], object]:
        machine.drop_control_sockets(vm)
        console(FORGET_SSH_COUNTS, check=False)
        since = float(console("date +%s.%N").stdout)
        result = action()
        time.sleep(1)  # the last SYN's line reaches the journal
        return syn_times(console, since), result

    yield run
    console(COUNT_OFF, check=False)


def invoke(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "invoke"), *args], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=1800, stdin=subprocess.DEVNULL)


def judge(vm, name: str, times: list[float], budget: int) -> None:
    print(f"\n{name}: {len(times)} new SSH connection(s), at most {busiest_window(times)} in 30 s")
    assert len(times) <= budget, f"{name} opened {len(times)} new SSH connections (budget {budget})"
    assert busiest_window(times) <= WINDOW_BUDGET, f"{name}: {busiest_window(times)} new connections within 30 s"
    why = admin_logs_in_at_once(vm)
    assert not why, f"after {name} a fresh admin login failed at once ({why})"


def test_the_demos_checks_share_one_connection(vm, counted, lab_inventory):
    times, code = counted(lambda: verify.run(lab_inventory, vm_name=vm.name, extra=["-m", DEMO_CHECKS],
                                             vault_password_file=Path(LAB_VAULT_PASSWORD)))
    assert code == 0, "the demo's checks failed on the provisioned VM"
    judge(vm, "the demo's checks", times, READ_ONLY_BUDGET)


@pytest.mark.parametrize("args", [("drift",), ("audit-keys",), ("bots.backup", "--out", "{tmp}")],
                         ids=["drift", "audit-keys", "bots.backup"])
def test_a_read_only_command_stays_in_budget(vm, counted, lab_inventory, tmp_path, args):
    command = [a.replace("{tmp}", str(tmp_path)) for a in args]
    times, result = counted(lambda: invoke(*command, "--inventory", str(lab_inventory),
                                           "--vault-password-file", LAB_VAULT_PASSWORD))
    print(result.stdout[-1500:], result.stderr[-1500:])
    assert result.returncode in (0, 1, 2)  # drift may find the lab's drift; audit-keys may find no fake exchange
    assert "Traceback" not in result.stderr
    judge(vm, "invoke " + args[0], times, READ_ONLY_BUDGET)


def test_the_report_stays_in_budget_and_paces_ssh_audit(vm, counted, lab_inventory, console):
    started_audit: list[float] = []

    def log(message: str) -> None:
        if "ssh-audit" in message:
            started_audit.append(time.time())

    times, reports = counted(lambda: report_command.collect(lab_inventory, None, LAB_VAULT_PASSWORD, log=log))
    assert not isinstance(reports[vm.name], str), reports[vm.name]
    [audit_start] = started_audit
    playbook = [t for t in times if t < audit_start]
    print(f"\nreport: ssh-audit's scan opened {len(times) - len(playbook)} connection(s)")
    judge(vm, "invoke report (its playbook)", playbook, READ_ONLY_BUDGET)
    assert busiest_window(times) <= WINDOW_BUDGET, f"report with ssh-audit: {busiest_window(times)} within 30 s"


def test_a_provision_that_changes_nothing_stays_in_budget(vm, counted, lab_inventory):
    times, result = counted(lambda: invoke("provision", "--inventory", str(lab_inventory),
                                           "--vault-password-file", LAB_VAULT_PASSWORD))
    assert result.returncode == 0, result.stdout[-3000:]
    assert re.search(r"changed=0\b", result.stdout), result.stdout[-2000:]
    judge(vm, "invoke provision (nothing to change)", times, PROVISION_BUDGET)
