"""A constructed probe document for the report's unit tests: a provisioned host with some history.

Times are relative to NOW (2025-03-31 12:00 UTC); the host logs in UTC unless a test says otherwise.
The documents recorded on real VMs are ``tests/unit/fixtures/report-debian12.json`` and
``report-debian13.json``: Debian 12 and 13 VMs provisioned with molecule's bots alpha (no exchange) and
beta (binance, audited against tests/fakeexchange.py), a few failed logins from the controller and a
network namespace in the VM (192.0.2.2, banned by fail2ban), no Lynis. Nothing secret in them (the
bots' planted secrets are checked absent); the VMs' clocks said 2026.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

NOW = 1743422400.0  # 2025-03-31 12:00:00 UTC
DAY = 86400
FIXTURES = Path(__file__).resolve().parent / "fixtures"
ADMIN_FP = "SHA256:h6jbq8Gm1Vm2P1q3oUJ4vGzEwWqXn3h5Jtq2v0hVx6Q"
OLD_FP = "SHA256:Z9yS0yvuZL1oOe8B3mD6l8bq3cQ7t4c0s2j1nq3m5Xk"


def ok(out: str = "") -> dict[str, Any]:
    return {"rc": 0, "out": out, "err": ""}


def at(days_ago: float) -> int:
    return int(NOW - days_ago * DAY)


SECURITY_ALPHA = """\
  NAME                                                        DESCRIPTION                                                             EXPOSURE
✗ RemoveIPC=                                                  Service user may leave SysV IPC objects around                               0.1
✓ RootDirectory=/RootImage=                                   Service runs within chroot() environment
✗ PrivateNetwork=                                             Service has access to the host's network                                     0.5
✗ IPAddressDeny=                                              Service does not define an IP address allow list                             0.2
✓ KeyringMode=                                                Service doesn't share key material with other services
✗ DeviceAllow=                                                Service has no device ACL                                                    0.2

→ Overall exposure level for botvps-bot-alpha.service: 1.9 OK 🙂
"""

SECURITY_BETA = SECURITY_ALPHA.replace("alpha", "beta").replace("1.9 OK 🙂", "5.6 MEDIUM 😐")

UFW_STATUS = """\
Status: active
Logging: on (low)
Default: deny (incoming), allow (outgoing), deny (routed)
New profiles: skip

To                         Action      From
--                         ------      ----
22/tcp                     LIMIT IN    Anywhere                   # botvps
22/tcp (v6)                LIMIT IN    Anywhere (v6)              # botvps

"""

APT_SIM = """\
Reading package lists...
Building dependency tree...
Inst libssl3 [3.0.15-1~deb12u1] (3.0.16-1~deb12u1 Debian-Security:12/stable-security [amd64])
Inst tzdata [2024a-0+deb12u1] (2025b-0+deb12u1 Debian:12.11/stable [all])
Conf libssl3 (3.0.16-1~deb12u1 Debian-Security:12/stable-security [amd64])
"""

APT_HISTORY = [
    "",
    "Start-Date: 2025-02-01  10:00:00",  # before the period: left out
    "Commandline: apt-get install -y curl",
    "Install: curl:amd64 (7.88.1-10+deb12u8)",
    "End-Date: 2025-02-01  10:00:05",
    "",
    "Start-Date: 2025-03-20  06:25:03",
    "Commandline: /usr/bin/unattended-upgrade",
    "Upgrade: libc6:amd64 (2.36-9+deb12u8, 2.36-9+deb12u9), libc-bin:amd64 (2.36-9+deb12u8, 2.36-9+deb12u9)",
    "End-Date: 2025-03-20  06:25:30",
    "",
    "Start-Date: 2025-03-28  09:00:00",
    "Commandline: apt-get install -y jq",
    "Requested-By: ops (1000)",
    "Install: jq:amd64 (1.6-2.1), libjq1:amd64 (1.6-2.1, automatic)",
    "End-Date: 2025-03-28  09:00:04",
]

FAIL2BAN_LOG = [
    "2025-03-29 03:00:00,001 fail2ban.filter         [512]: INFO    [sshd] Found 198.51.100.9 - 2025-03-29 03:00:00",
    "2025-03-29 03:00:05,123 fail2ban.actions        [512]: NOTICE  [sshd] Ban 198.51.100.9",
    "2025-03-29 03:10:05,123 fail2ban.actions        [512]: NOTICE  [sshd] Unban 198.51.100.9",
    "2025-03-30 03:00:05,123 fail2ban.actions        [512]: NOTICE  [sshd] Ban 198.51.100.9",
]


def journal_entries() -> list[list[Any]]:
    return [
        [at(20), "sshd", "1001", f"Accepted publickey for ops from 10.0.2.2 port 40001 ssh2: ED25519 {ADMIN_FP}"],
        [at(2), "sshd", "1002", f"Accepted publickey for ops from 10.0.2.2 port 40002 ssh2: ED25519 {ADMIN_FP}"],
        [at(1), "sshd", "1003", f"Accepted publickey for ops from 203.0.113.50 port 50000 ssh2: ED25519 {OLD_FP}"],
        # a key tried before the one that logged in: not a failed login
        [at(1), "sshd", "1004", f"Failed publickey for ops from 10.0.2.2 port 40003 ssh2: ED25519 {OLD_FP}"],
        [at(1), "sshd", "1004", f"Accepted publickey for ops from 10.0.2.2 port 40003 ssh2: ED25519 {ADMIN_FP}"],
        # scanners
        [at(3), "sshd", "2001", "Invalid user admin from 198.51.100.9 port 6000"],
        [at(3), "sshd", "2001", "Connection closed by invalid user admin 198.51.100.9 port 6000 [preauth]"],
        [at(2), "sshd", "2002", "Invalid user <script>x</script> from 198.51.100.9 port 6001"],
        [at(2), "sshd", "2003", "Connection closed by authenticating user root 192.0.2.7 port 7000 [preauth]"],
        [at(2), "sshd", "2004", "User root from 192.0.2.7 not allowed because none of user's groups are listed in AllowGroups"],
        # sudo
        [at(2), "sudo", "3001", "     ops : PWD=/home/ops ; USER=root ; COMMAND=/bin/sh -c echo BECOME-SUCCESS-abcdefghij ; /usr/bin/python3"],
        [at(1), "sudo", "3002", "     ops : PWD=/home/ops ; USER=root ; COMMAND=/bin/sh -c echo BECOME-SUCCESS-klmnopqrst ; /usr/bin/python3"],
        [at(1), "sudo", "3003", "     ops : TTY=pts/0 ; PWD=/home/ops ; USER=root ; COMMAND=/usr/bin/systemctl restart botvps-bot-alpha"],
        [at(1), "sudo", "3004", "  mallory : user NOT in sudoers ; TTY=pts/1 ; PWD=/tmp ; USER=root ; COMMAND=/bin/bash"],
    ]


def document(**overrides: Any) -> dict[str, Any]:
    """What the probe reports for a provisioned host with bots alpha (no exchange) and beta (binance)."""
    base: dict[str, Any] = {
        "probe": 1, "time": NOW, "since": int(NOW - 30 * DAY), "days": 30, "utc_offset": 0,
        "os_release": {"PRETTY_NAME": '"Debian GNU/Linux 12 (bookworm)"', "ID": "debian", "VERSION_ID": '"12"'},
        "kernel": "6.1.0-32-cloud-amd64", "hostname": "vps1", "uptime": "864000.5",
        "ufw_status": ok(UFW_STATUS),
        "ufw_added": ok("Added user rules (see 'ufw status' for running firewall):\nufw limit 22/tcp comment 'botvps'\n"),
        "reboot_required": False, "reboot_pkgs": [],
        "apt_config": ok('APT::Periodic "";\nAPT::Periodic::Update-Package-Lists "1";\n'
                         'APT::Periodic::Unattended-Upgrade "1";\n'),
        "stamps": {"lists": NOW - 0.5 * DAY, "upgrade": None, "unattended": NOW - 0.5 * DAY, "lists_dir": None},
        "unattended_log": ["2025-03-31 06:25:01,100 INFO Starting unattended upgrades script",
                           "2025-03-31 06:25:01,200 INFO Allowed origins are: origin=Debian,codename=bookworm,label=Debian-Security",
                           "2025-03-31 06:25:09,300 INFO No packages found that can be upgraded unattended and no pending auto-removals"],
        "units": ok("Id=unattended-upgrades.service\nActiveState=active\nSubState=exited\nUnitFileState=enabled\n\n"
                    "Id=apt-daily-upgrade.timer\nActiveState=active\nSubState=waiting\nUnitFileState=enabled\n\n"
                    "Id=fail2ban.service\nActiveState=active\nSubState=running\nUnitFileState=enabled\n\n"
                    "Id=botvps-bot-alpha.service\nActiveState=active\nSubState=running\nUnitFileState=enabled\n\n"
                    "Id=botvps-bot-beta.service\nActiveState=active\nSubState=running\nUnitFileState=enabled\n"),
        "timedatectl": ok("Timezone=Etc/UTC\nNTP=yes\nNTPSynchronized=yes\n"),
        "show_timesync": ok("ServerName=10.0.2.2\nServerAddress=10.0.2.2\n"),
        "timesync": ok("       Server: 10.0.2.2 (10.0.2.2)\n       Offset: -1.234ms\n"),
        "lynis": {"path": "", "version": {"rc": 1, "out": "", "err": "no packages found matching lynis"}, "report": None},
        "authorized_keys": {"ops": [ok(f"256 {ADMIN_FP} ops@laptop (ED25519)\n")]},
        "fail2ban_status": ok("Status for the jail: sshd\n|- Filter\n|  |- Currently failed:\t0\n`- Actions\n"
                              "   |- Currently banned:\t1\n   |- Total banned:\t2\n   `- Banned IP list:\t198.51.100.9\n"),
        "keyaudit": {
            "bots": {"beta": {"exchange": "binance"}},
            "timers": ok("Id=botvps-keyaudit@beta.timer\nActiveState=active\nLastTriggerUSec=Mon 2025-03-31 00:12:00 UTC\n"
                         "NextElapseUSecRealtime=Tue 2025-04-01 00:31:00 UTC\n"),
            "verdicts": {"rc": 0, "err": "", "truncated": False, "entries": [
                [at(1), "botvps-keyaudit", "4001", json.dumps({"bot": "beta", "exchange": "binance", "key": "...9c1e",
                                                               "status": "pass", "reasons": [], "checked_at": "x"})]]},
            "starts": {"rc": 0, "err": "", "truncated": False, "entries": [
                [at(3), "botvps-bot-beta", "4002", "keyaudit beta binance key ...9c1e: PASS"]]},
        },
        "journal_start": at(45), "journal_persistent": True,
        "journal": {"rc": 0, "err": "", "truncated": False, "entries": journal_entries()},
        "fail2ban_log": {"files": ["/var/log/fail2ban.log"], "lines": FAIL2BAN_LOG, "truncated": False},
        "apt_history": {"files": ["/var/log/apt/history.log"], "lines": APT_HISTORY, "truncated": False},
        "apt": ok(APT_SIM),
        "security": {"botvps-bot-alpha.service": ok(SECURITY_ALPHA), "botvps-bot-beta.service": ok(SECURITY_BETA)},
        "seconds": 12.3,
    }
    base = copy.deepcopy(base)
    base.update(overrides)
    return base


def recorded(release: str = "debian12") -> dict[str, Any]:
    """The document gathered from a provisioned Debian VM (see the module's docstring)."""
    return json.loads((FIXTURES / f"report-{release}.json").read_text())
