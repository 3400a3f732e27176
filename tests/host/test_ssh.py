"""SSH: key-only, no root, no passwords, hardened crypto; asserted on the live sshd."""

from __future__ import annotations

import subprocess

import paramiko
import pytest
from conftest import banner


@pytest.fixture(scope="module")
def sshd_t(host) -> dict[str, str]:
    with host.sudo():
        out = host.check_output("/usr/sbin/sshd -T")
    settings: dict[str, str] = {}
    for line in out.splitlines():
        key, _, value = line.partition(" ")
        settings.setdefault(key, value)
    return settings


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("passwordauthentication", "no"),
        ("kbdinteractiveauthentication", "no"),
        ("permitrootlogin", "no"),
        ("permitemptypasswords", "no"),
        ("pubkeyauthentication", "yes"),
        ("authenticationmethods", "publickey"),
        ("allowgroups", "sshusers"),
        ("maxauthtries", "3"),
        ("logingracetime", "20"),
        ("x11forwarding", "no"),
        ("allowagentforwarding", "no"),
        ("allowstreamlocalforwarding", "no"),
        ("gatewayports", "no"),
        ("permittunnel", "no"),
        ("loglevel", "VERBOSE"),
        ("requiredrsasize", "3072"),
    ],
)
def test_effective_sshd_setting(sshd_t, setting, expected):
    assert sshd_t.get(setting) == expected


def test_forwarding_is_local_to_the_bots_ui_ports_only(host, sshd_t):
    """With a bot's ui_port: local forwarding to 127.0.0.1:PORT only; without one: no forwarding at all."""
    bots = host.ansible.get_variables().get("bots") or []
    ports = sorted({int(b["ui_port"]) for b in bots if b.get("ui_port") and b.get("state", "present") != "absent"})
    if ports:
        assert (sshd_t["disableforwarding"], sshd_t["allowtcpforwarding"]) == ("no", "local")
        assert sshd_t["permitopen"].split() == [f"127.0.0.1:{p}" for p in ports]
        assert sshd_t["permitlisten"] == "none"
    else:
        assert (sshd_t["disableforwarding"], sshd_t["allowtcpforwarding"]) == ("yes", "no")


def test_cloud_init_dropin_cannot_turn_passwords_back_on(host, sshd_t):
    # The image carries cloud-init's drop-in with PasswordAuthentication yes, as providers' images do.
    with host.sudo():
        assert "PasswordAuthentication yes" in host.file("/etc/ssh/sshd_config.d/50-cloud-init.conf").content_string
        names = host.check_output("ls /etc/ssh/sshd_config.d/").split()
    assert names[0] == "00-botvps.conf"
    assert sshd_t["passwordauthentication"] == "no"


def test_host_keys_are_ed25519_and_rsa_4096_only(host):
    with host.sudo():
        keys = host.check_output("ls /etc/ssh/ | grep '^ssh_host_.*_key$'").split()
        rsa_bits = host.check_output("ssh-keygen -l -f /etc/ssh/ssh_host_rsa_key.pub").split()[0]
    assert sorted(keys) == ["ssh_host_ed25519_key", "ssh_host_rsa_key"]
    assert rsa_bits == "4096"


def test_no_weak_moduli(host):
    small = host.check_output("awk '$1 !~ /^#/ && $5 < 3071' /etc/ssh/moduli | wc -l")
    assert small.strip() == "0"


def test_admin_account(host):
    admin = host.user("ops")
    assert "sshusers" in admin.groups and "sudo" in admin.groups
    with host.sudo():
        keys = host.file("/home/ops/.ssh/authorized_keys")
        assert keys.mode == 0o600 and keys.user == "ops"
        assert host.run("visudo -cf /etc/sudoers.d/10-botvps-admin").rc == 0


def _password_login(port: int, user: str, password: str) -> None:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    try:
        client.connect("127.0.0.1", port=port, username=user, password=password, allow_agent=False,
                       look_for_keys=False, timeout=20, banner_timeout=30, auth_timeout=30)
    finally:
        client.close()


def test_password_login_is_refused_even_with_the_right_password(vm, console, fresh_rate_limit):
    console(f"echo 'ops:{vm.password}' | chpasswd")
    try:
        with pytest.raises(paramiko.AuthenticationException):
            _password_login(vm.ssh_port, "ops", vm.password)
    finally:
        console("passwd -l ops >/dev/null")


def test_root_login_is_refused_even_with_its_authorized_key(vm, console, fresh_rate_limit):
    # Hetzner-style handover leaves this key in root's authorized_keys; for a "debian" handover put it there.
    key = vm.key_file.with_suffix(".pub").read_text().strip()
    planted = key.split()[1] not in console("cat /root/.ssh/authorized_keys 2>/dev/null", check=False).stdout
    if planted:
        console(f"install -d -m 0700 /root/.ssh && echo '{key}' >> /root/.ssh/authorized_keys")
    try:
        result = subprocess.run(vm.ssh_command("root") + ["true"], capture_output=True, text=True, timeout=60)
    finally:
        if planted:
            console(f"sed -i '\\|{key.split()[1]}|d' /root/.ssh/authorized_keys")
    assert result.returncode == 255
    assert "Permission denied" in result.stderr


def test_admin_key_login_works(vm, fresh_rate_limit):
    result = subprocess.run(vm.ssh_command("ops") + ["sudo", "-n", "true"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    # The server's own name resolves (a provider's /etc/hosts has it): sudo neither warns nor asks DNS first.
    assert "unable to resolve host" not in result.stderr


def test_ssh_rate_limit_rejects_a_burst(vm, fresh_rate_limit):
    answers = [banner(vm.ssh_port, timeout=5) for _ in range(8)]
    assert answers[0].startswith(b"SSH-")
    assert b"" in answers[5:], "ufw limit let 8 new connections in a few seconds through"
