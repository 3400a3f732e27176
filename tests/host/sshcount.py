"""Counting the controller's new SSH connections to the guest: every SYN to port 22 is logged before any other
rule sees it (dropped ones included: those are the lockout itself), in an nftables table of its own.

The connection budget (test_connection_budget.py) and the report's run (test_report.py) judge botvps commands with
it: each runs from a cold controller (no multiplexed connection left over), judged on its own (ufw's counts
forgotten before it, never after).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

from botvps.vm import machine
from botvps.vm.machine import FORGET_SSH_COUNTS

READ_ONLY_BUDGET = 2  # new connections per host for demo's checks, drift, report (ssh-audit apart), audit-keys, backup
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


def counted(vm: machine.VM, console, action: Callable[[], object]) -> tuple[list[float], object, str]:
    """Run ``action`` from a cold controller: (its SYN times on the guest clock, its result, '' when a brand-new
    admin login worked at once afterwards, else why not). Counting is on only while it runs."""
    console(COUNT_ON)
    try:
        machine.drop_control_sockets(vm)
        console(FORGET_SSH_COUNTS, check=False)
        since = float(console("date +%s.%N").stdout)
        result = action()
        time.sleep(1)  # the last SYN's line reaches the journal
        times = syn_times(console, since)
    finally:
        console(COUNT_OFF, check=False)
    return times, result, admin_logs_in_at_once(vm)


def judge(name: str, times: list[float], budget: int, why: str) -> None:
    """Assert that a command's new connections (``times``, from :func:`counted`) fit ``budget`` and the 30 s window,
    and that the admin could log in at once afterwards (``why`` is '')."""
    busiest = busiest_window(times)
    print(f"\n{name}: {len(times)} new SSH connection(s), at most {busiest} in 30 s")
    assert len(times) <= budget, f"{name} opened {len(times)} new SSH connections (budget {budget})"
    assert busiest <= WINDOW_BUDGET, f"{name}: {busiest} new connections within 30 s"
    assert not why, f"after {name} a fresh admin login failed at once ({why})"
