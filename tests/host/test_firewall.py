"""ufw: default deny, SSH limited, nothing undeclared; proven from outside the VM."""

from __future__ import annotations

import time

import pytest
from conftest import banner


def test_ufw_active_with_default_deny(host):
    with host.sudo():
        status = host.check_output("ufw status verbose")
        defaults = host.check_output("grep ^DEFAULT_ /etc/default/ufw")
    assert "Status: active" in status
    assert "deny (incoming)" in status and "allow (outgoing)" in status
    assert 'DEFAULT_FORWARD_POLICY="DROP"' in defaults


def test_only_marked_rules(host):
    with host.sudo():
        added = host.check_output("ufw show added").splitlines()[1:]
    assert added, "no ufw rules at all: SSH would be blocked"
    assert all(line.endswith("comment 'botvps'") for line in added), added
    assert any(" 22" in line and line.startswith("ufw limit") for line in added)


@pytest.fixture
def listener(vm, console):
    """An HTTP server inside the VM on 8080, a port the firewall does not declare."""
    if "8080" not in vm.forwards:
        pytest.skip("this VM has no forward for guest port 8080")
    console("systemd-run --unit botvps-test-listener --collect python3 -m http.server 8080 --bind 0.0.0.0")
    deadline = time.monotonic() + 30
    while "8080" not in console("ss -ltn", check=False).stdout and time.monotonic() < deadline:
        time.sleep(1)
    yield vm.forwards["8080"]
    console("systemctl stop botvps-test-listener", check=False)


def _http_get(port: int) -> bytes:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.settimeout(10)
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            return sock.recv(64)
    except OSError:
        return b""


def test_undeclared_port_is_unreachable_from_outside(listener, console):
    # The listener answers inside the VM ...
    assert "200" in console("python3 -c \"import urllib.request as u; print(u.urlopen('http://10.0.2.15:8080').status)\"").stdout
    # ... but not through the forwarded port from the controller.
    assert _http_get(listener) == b""
    # Control: once a rule allows it, the same request gets an answer (so the check above can fail).
    console("ufw allow 8080/tcp")
    try:
        assert _http_get(listener).startswith(b"HTTP/1.0 200")
    finally:
        console("ufw delete allow 8080/tcp")


@pytest.mark.connections
def test_ssh_still_reachable(vm):
    assert banner(vm.ssh_port).startswith(b"SSH-")
