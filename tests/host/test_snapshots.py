"""Snapshots keep drills apart: what one drill breaks is gone when the next one starts (conftest's restore)."""

from __future__ import annotations

import time

import pytest
from conftest import PROVISIONED, banner

MARKER = "/var/lib/botvps-drill-marker"
BROKEN = "/etc/ssh/sshd_config.d/00-botvps.conf"

# Not the demo's: it restores molecule's VM to its snapshot.
pytestmark = [pytest.mark.lab, pytest.mark.restore(PROVISIONED), pytest.mark.drills("snapshots")]


def test_a_drill_may_break_the_server(vm, console):
    """This drill leaves a marker and an sshd that does not start: the next drill must see neither."""
    console(f"echo drill > {MARKER} && echo 'NotAnOption yes' >> {BROKEN}")
    console("systemctl restart ssh", check=False)
    assert console("systemctl is-active ssh", check=False).stdout.strip() != "active"
    assert banner(vm.ssh_port, timeout=5) == b""


def test_the_next_drill_starts_from_the_snapshot(vm, console):
    """The marker is gone, sshd's drop-in is whole again, sshd runs and answers, and the clock is right."""
    assert console(f"test -e {MARKER}", check=False).exit_code == 1
    assert "NotAnOption" not in console(f"cat {BROKEN}").stdout
    assert console("systemctl is-active ssh").stdout.strip() == "active"
    assert banner(vm.ssh_port).startswith(b"SSH-")
    guest = float(console("date +%s.%N").stdout)
    assert abs(guest - time.time()) < 2, f"the guest's clock is {guest - time.time():+.1f} s off after the restore"
