"""Snapshots keep drills apart: what one drill breaks is gone when the next one starts (conftest's restore)."""

from __future__ import annotations

import socket
import time

import pytest
import sshcount
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


def test_a_restore_leaves_no_stale_connection(vm, console):
    """A connection open across a restore is gone on both sides: a new one from its port is answered at its first SYN."""
    held = socket.create_connection(("127.0.0.1", vm.ssh_port), timeout=10)
    port = held.getsockname()[1]
    held.settimeout(10)
    assert held.recv(64).startswith(b"SSH-")
    vm.save("held-connection")
    try:
        held.sendall(b"SSH-2.0-botvps-drill\r\n")  # traffic after the save: the restored guest is behind it
        assert held.recv(64)  # sshd's key exchange offer
        vm.restore("held-connection")
        held.close()

        def reconnect() -> bytes:
            # The guest sees the controller's source port, not its address: from 127.0.0.2 the port is free again
            # at once (on 127.0.0.1 the old connection's TIME_WAIT holds it for a minute).
            with socket.socket() as again:
                again.bind(("127.0.0.2", port))
                again.settimeout(15)
                again.connect(("127.0.0.1", vm.ssh_port))
                try:
                    return again.recv(64)
                except TimeoutError:
                    return b""

        times, answer, _ = sshcount.counted(vm, console, reconnect)
        assert answer.startswith(b"SSH-"), f"no banner in 15 s for a new connection from port {port}"
        assert len(times) == 1, f"the new connection from port {port} took {len(times)} SYNs: a stale one was in its way"
    finally:
        vm.delete("held-connection")
