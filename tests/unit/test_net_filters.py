"""The address and SSH key filters the roles (and the validator) rely on."""

from __future__ import annotations

import subprocess

import pytest

from ansible_collections.botvps.infra.plugins.filter import net


def _keygen(tmp_path, *args: str) -> str:
    key = tmp_path / "key"
    subprocess.run(["ssh-keygen", "-q", "-N", "", "-f", str(key), *args], check=True)
    return (tmp_path / "key.pub").read_text()


@pytest.mark.parametrize(
    ("address", "networks", "inside"),
    [
        ("10.0.2.2", ["0.0.0.0/0", "::/0"], True),
        ("198.51.100.7", ["198.51.100.0/24"], True),
        ("198.51.100.7", ["203.0.113.0/24"], False),
        ("::ffff:198.51.100.7", ["198.51.100.0/24"], True),
        ("2001:db8::1", ["198.51.100.0/24"], False),
        ("2001:db8::1", ["2001:db8::/32"], True),
    ],
)
def test_ip_in_networks(address, networks, inside):
    assert net.ip_in_networks(address, networks) is inside


def test_open_network():
    assert net.is_open_network("0.0.0.0/0") and net.is_open_network("::/0")
    assert not net.is_open_network("198.51.100.0/24")


def test_good_keys_pass(tmp_path):
    assert net.ssh_key_problem(_keygen(tmp_path, "-t", "ed25519")) == ""
    (tmp_path / "key").unlink()
    (tmp_path / "key.pub").unlink()
    assert net.ssh_key_problem(_keygen(tmp_path, "-t", "rsa", "-b", "3072")) == ""


def test_short_rsa_refused(tmp_path):
    assert "2048 bits" in net.ssh_key_problem(_keygen(tmp_path, "-t", "rsa", "-b", "2048"))


def test_private_key_and_garbage_refused(tmp_path):
    _keygen(tmp_path, "-t", "ed25519")
    assert "PRIVATE" in net.ssh_key_problem((tmp_path / "key").read_text())
    assert "not an OpenSSH public key" in net.ssh_key_problem("hello")
    assert "base64" in net.ssh_key_problem("ssh-ed25519 !!!notbase64")


def test_dsa_and_ecdsa_refused():
    assert "DSA" in net.ssh_key_problem("ssh-dss AAAAB3NzaC1kc3MAAACBAP comment")
    assert "ECDSA" in net.ssh_key_problem("ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTY= c")


def test_type_mismatch_refused(tmp_path):
    line = _keygen(tmp_path, "-t", "ed25519").replace("ssh-ed25519", "ssh-rsa", 1)
    assert "says" in net.ssh_key_problem(line)


def test_hardware_keys():
    assert net.is_hardware_key("sk-ssh-ed25519@openssh.com AAAA x")
    assert net.is_hardware_key("sk-ecdsa-sha2-nistp256@openssh.com AAAA x")
    assert not net.is_hardware_key("ssh-ed25519 AAAA x")


@pytest.mark.parametrize(
    ("static", "declared", "addresses", "default", "egress"),
    [
        # The host has static_ipv4: its packets leave with it.
        ("95.216.10.20", "", ["10.0.0.5", "95.216.10.20"], "10.0.0.5", "95.216.10.20"),
        # A NAT cloud: the interface has a private address, the default route's is the egress address.
        ("95.216.10.20", "", ["172.31.5.10"], "172.31.5.10", "172.31.5.10"),
        # Declared wins (a host with two private addresses).
        ("95.216.10.20", " 172.31.9.9 ", ["172.31.5.10", "172.31.9.9"], "172.31.5.10", "172.31.9.9"),
        # No static_ipv4 (a host with no bots): none.
        ("", "", ["172.31.5.10"], "172.31.5.10", ""),
        # NAT without a default route: none (preflight refuses it).
        ("95.216.10.20", "", ["172.31.5.10"], "", ""),
    ],
)
def test_egress_ipv4(static, declared, addresses, default, egress):
    assert net.egress_ipv4(static, declared, addresses, default) == egress


def test_ui_ports_are_the_present_bots_sorted_once():
    bots = [{"name": "a", "ui_port": 8081}, {"name": "b"}, {"name": "c", "ui_port": "8080"},
            {"name": "d", "ui_port": 9000, "state": "absent"}, {"name": "e", "ui_port": None}]
    assert net.ui_ports(bots) == [8080, 8081]
    assert net.ui_ports(None) == []
