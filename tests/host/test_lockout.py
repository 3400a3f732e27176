"""Lockout drills: each bad change ends with the host reachable as before, checked out of band."""

from __future__ import annotations

import subprocess

import pytest
from conftest import FORGET_SSH_COUNTS, banner, lab_provision, wait_until

OTHER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBeJvdDeuhtJMr4YHSQJU/6K7jQLkgdkdGmoJlkZcd8O not-my-key"


# Each drill starts from the provisioned VM's snapshot: what one breaks never reaches the next.
pytestmark = [pytest.mark.lab, pytest.mark.restore("provisioned"), pytest.mark.drills("lockout")]


@pytest.fixture
def drill(vm, tmp_path, console, fresh_rate_limit):
    """Run the site playbook against this VM with some settings changed (the lab's bots included:
    without them a run would retire the bots); return the result."""

    def run(**overrides):
        console(FORGET_SSH_COUNTS, check=False)
        # The roles that hold the way in (connect and preflight always run): the rest is as the snapshot has it.
        return lab_provision(vm, tmp_path / "inventory", ["--tags", "firewall,ssh"], **overrides)

    return run


def _state(console) -> str:
    return console("cat /home/ops/.ssh/authorized_keys; ufw show added; /usr/sbin/sshd -T | sort").stdout


def _admin_can_log_in(vm, console) -> bool:
    """A fresh login as the admin, judged on its own: ufw's SSH limit (6 new connections in 30 s,
    tested in test_ssh) would otherwise count the drill's own connections against it."""
    console(FORGET_SSH_COUNTS, check=False)
    result = subprocess.run(vm.ssh_command("ops") + ["sudo", "-n", "true"], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        print(f"admin login failed ({result.returncode}): {result.stderr.strip()[-500:]}")
    return result.returncode == 0


def _sshd_answers(port: int, console) -> str:
    """'' when sshd's banner comes on the controller's ``port`` within a minute, else what the guest shows. Each try
    is judged on its own (ufw's SSH counts forgotten first): the provision's own logins count against the limit,
    and a loaded TCG guest can take seconds to start sshd's session process."""

    def once() -> bool:
        console(FORGET_SSH_COUNTS, check=False)
        return banner(port).startswith(b"SSH-")

    if wait_until(once, timeout=60, interval=2):
        return ""
    return console("ss -ltn; ufw show added; grep -H . /proc/net/xt_recent/*; journalctl -u ssh -n 20 --no-pager",
                   check=False).stdout


def test_wrong_admin_key_is_refused_before_any_change(drill, vm, console):
    before = _state(console)
    result = drill(admin_keys=[OTHER_KEY], admin_key_files=[])  # the lab's group_vars name the VM's key file
    assert result.returncode != 0
    assert "is not among the admin's keys" in result.output
    assert all(row["changed"] == 0 for row in result.recap.values()), result.recap
    assert _state(console) == before
    assert _admin_can_log_in(vm, console)


def test_admin_cidrs_without_the_controller_are_refused(drill, vm, console):
    before = _state(console)
    result = drill(firewall_admin_cidrs=["198.51.100.0/24"])
    assert result.returncode != 0
    assert "would lock you out" in result.output
    assert _state(console) == before
    assert _admin_can_log_in(vm, console)


def test_sshd_change_that_breaks_login_is_rolled_back(drill, vm, console):
    result = drill(ssh_extra_settings={"DenyUsers": "ops"})
    assert result.returncode != 0
    assert "a fresh login failed" in result.output
    assert "denyusers ops" not in console("/usr/sbin/sshd -T").stdout.lower()
    assert _admin_can_log_in(vm, console)
    # A normal run puts everything back in order (the rescue rule is relabelled).
    assert drill().returncode == 0
    assert "botvps-rescue" not in console("ufw show added").stdout


def test_port_change_moves_sshd_and_closes_the_old_port(drill, vm, console):
    if "2222" not in vm.forwards:
        pytest.skip("this VM has no forward for guest port 2222")
    new = vm.forwards["2222"]
    try:
        result = drill(ssh_port=2222, ssh_public_port=new)
        assert result.returncode == 0, result.output[-3000:]
        assert "port 2222" in console("/usr/sbin/sshd -T").stdout
        assert not (why := _sshd_answers(new, console)), f"nothing answers on the new port:\n{why}"
        assert banner(vm.ssh_port, timeout=5) == b"", "the old port still answers"
        assert " 22 " not in console("ufw show added").stdout.replace("/tcp", " ")
    finally:
        # Back to port 22, connecting on the new port first (as an operator who moved it would).
        back = drill(ansible_port=new, ssh_port=22, ssh_public_port=vm.ssh_port)
    assert back.returncode == 0, back.output[-3000:]
    assert not (why := _sshd_answers(vm.ssh_port, console)), f"nothing answers on port 22 again:\n{why}"
    assert _admin_can_log_in(vm, console)
