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


ATTACKER = "192.0.2.2"  # inside the VM only: a network namespace standing in for a remote host
TARGET = "192.0.2.1"
NETNS_UP = f"""
ip netns add botvps-attacker
ip link add botvps-veth type veth peer name botvps-veth-a
ip link set botvps-veth-a netns botvps-attacker
ip addr add {TARGET}/24 dev botvps-veth && ip link set botvps-veth up
ip netns exec botvps-attacker ip addr add {ATTACKER}/24 dev botvps-veth-a
ip netns exec botvps-attacker ip link set botvps-veth-a up
ip netns exec botvps-attacker ip link set lo up
"""
NETNS_DOWN = "ip netns del botvps-attacker; ip link del botvps-veth"


def test_repeated_failures_get_banned_then_unbanned(console, fresh_rate_limit):
    """Failed logins from an address that is neither ignored nor the server's own get it banned.

    fail2ban ignores the server's own addresses (ignoreself), so the attacker is a network
    namespace inside the VM with its own address, connecting over a veth pair.
    """
    console(NETNS_DOWN, check=False)
    console(NETNS_UP)
    try:
        banned = lambda: ATTACKER in console("fail2ban-client status sshd").stdout  # noqa: E731
        for _ in range(8):  # maxretry is 5; an emulated VM is slow, so each attempt gets time
            console(f"timeout 120 ip netns exec botvps-attacker ssh -o BatchMode=yes -o StrictHostKeyChecking=no "
                    f"-o UserKnownHostsFile=/dev/null -o ConnectTimeout=20 intruder@{TARGET} true",
                    check=False, timeout=150)
            if banned():
                break
        assert wait_until(banned, timeout=60), console("fail2ban-client status sshd").stdout
        # The ban is enforced: the attacker cannot even open a TCP connection now.
        probe = console(f"ip netns exec botvps-attacker timeout 8 bash -c 'echo > /dev/tcp/{TARGET}/22'", check=False)
        assert probe.exit_code != 0
        console(f"fail2ban-client set sshd unbanip {ATTACKER}")
        assert ATTACKER not in console("fail2ban-client status sshd").stdout.split("Banned IP list:")[1]
    finally:
        console(f"fail2ban-client set sshd unbanip {ATTACKER}", check=False)
        console(NETNS_DOWN, check=False)
