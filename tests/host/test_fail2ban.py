"""fail2ban: bans SSH brute force seen in the journal, never the admin or loopback."""

from __future__ import annotations

from conftest import wait_until


def test_sshd_jail_runs_on_the_journal(host):
    with host.sudo():
        status = host.check_output("fail2ban-client status sshd")
        jail = host.check_output("fail2ban-client get sshd journalmatch")
        ignored = host.check_output("fail2ban-client get sshd ignoreip")
        jail_file = host.check_output("cat /etc/fail2ban/jail.d/00-botvps.local")
    assert "Journal matches" in status
    assert "sshd" in jail
    assert "127.0.0.0/8" in ignored or "127.0.0.1/8" in ignored
    assert "bantime.increment = true" in jail_file


def test_repeated_failures_get_banned_then_unbanned(console, fresh_rate_limit):
    """Failed logins from the VM's own non-loopback address (not ignored) get it banned."""
    address = console("ip -4 -o addr show scope global | awk '{print $4}' | cut -d/ -f1 | head -1").stdout.strip()
    console(f"fail2ban-client set sshd unbanip {address}", check=False)
    for _ in range(6):
        console(f"ssh -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
                f"-o ConnectTimeout=10 nobody@{address} true", check=False, timeout=60)
    assert wait_until(lambda: address in console("fail2ban-client status sshd").stdout, timeout=60), \
        console("fail2ban-client status sshd").stdout
    console(f"fail2ban-client set sshd unbanip {address}")
    assert address not in console("fail2ban-client status sshd").stdout.split("Banned IP list:")[1]
