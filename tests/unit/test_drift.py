"""botvps.drift without a VM: the live checks' comparisons, the playbook/JUnit parsing, exit codes,
the report formats (table, JSON, JUnit XML), the history file and the schedule units."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from botvps import drift
from botvps.drift import HostReport, Item

ROOT = Path(__file__).resolve().parents[2]
ADMIN_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEIqQjZI+DZcoTOA/87NYy1iNwbtXl4e6EMzyF+aGfPt ops@laptop"
STRAY_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBeJvdDeuhtJMr4YHSQJU/6K7jQLkgdkdGmoJlkZcd8O stray@drill"
SANDBOX = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "CapabilityBoundingSet": "",
           "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX", "UMask": "0077", "SystemCallErrorNumber": "EPERM",
           "SystemCallFilter": ["@system-service", "~@privileged @resources"]}


def ok(out: str = "") -> dict:
    return {"rc": 0, "out": out, "err": ""}


def expect(**overrides) -> dict:
    base = {"host": "vps1", "admin_user": "ops", "admin_keys": [ADMIN_KEY], "static_ipv4": "203.0.113.10",
            "ssh_enabled": True, "ssh_port": 22, "ssh_remove_weak_host_keys": True, "firewall_enabled": True,
            "firewall_allowed_ports": [], "bots": ["alpha"], "bots_sandbox": {"alpha": SANDBOX}, "timesync_enabled": True}
    return {**base, **overrides}


def facts(**overrides) -> dict:
    """What the probe reports for a host exactly as provisioned."""
    base = {
        "time": 0,
        "route": ok('[{"dst":"default","gateway":"203.0.113.1","dev":"eth0","prefsrc":"203.0.113.10","metric":100}]'),
        "addr": ok(json.dumps([
            {"addr_info": [{"dev": "lo", "family": "inet", "local": "127.0.0.1", "scope": "host"}]},
            {"addr_info": [{"dev": "eth0", "family": "inet", "local": "203.0.113.10", "scope": "global"}]}])),
        "apt": ok("Reading package lists...\nInst tzdata [2024a-0+deb12u1] (2025b-0+deb12u1 Debian:12.11/stable [all])\n"
                  "Conf tzdata (2025b-0+deb12u1 Debian:12.11/stable [all])\n"),
        "reboot_required": False, "reboot_pkgs": [],
        "timedatectl": ok("NTP=yes\nNTPSynchronized=yes\n"),
        "timesync": ok("       Server: 10.0.2.2 (10.0.2.2)\n       Offset: +12.345ms\n"),
        "ss": ok('LISTEN 0 128 0.0.0.0:22 0.0.0.0:* users:(("sshd",pid=335,fd=3))\n'
                 'LISTEN 0 128 [::]:22 [::]:* users:(("sshd",pid=335,fd=4))\n'
                 'LISTEN 0 10 127.0.0.1:25 0.0.0.0:* users:(("exim4",pid=9,fd=3))\n'
                 'LISTEN 0 10 [::1]:25 [::]:* users:(("exim4",pid=9,fd=4))\n'
                 'LISTEN 0 10 127.0.0.53%lo:53 0.0.0.0:* users:(("systemd-resolve",pid=7,fd=3))\n'),
        "ufw_added": ok("Added user rules (see 'ufw status' for running firewall):\nufw limit 22/tcp comment 'botvps'\n"),
        "ufw_status": ok("Status: active\n"),
        "sshd_rc": 0, "sshd_err": "",
        "sshd": {"passwordauthentication": "no", "kbdinteractiveauthentication": "no", "permitrootlogin": "no",
                 "permitemptypasswords": "no", "pubkeyauthentication": "yes", "authenticationmethods": "publickey",
                 "port": "22"},
        "sshd_dropins": {"00-botvps.conf": ["Port 22", "PasswordAuthentication no"],
                         "50-cloud-init.conf": ["PasswordAuthentication yes"]},
        "ssh_state": {"openssh": "9.2", "socket": "inactive", "kex": "curve25519-sha256", "changed": "",
                      "weak_host_keys": []},
        "admin_keys": {"/home/ops/.ssh/authorized_keys": ["# managed", ADMIN_KEY]},
        "users": [{"name": "root", "uid": 0, "shell": "/bin/bash", "password": "yes", "keys": 1},
                  {"name": "ops", "uid": 1000, "shell": "/bin/bash", "password": "no", "keys": 1}],
        "ssh_group_members": ["ops"],
        "bots": {"alpha": {"show": {"LoadState": "loaded", "ActiveState": "active", "SubState": "running",
                                    "User": "bot-alpha", "DropInPaths": "", "NeedDaemonReload": "no",
                                    "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                                    "CapabilityBoundingSet": "", "UMask": "0077",
                                    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6"},
                           "secrets": {"mode": 0o600, "uid": 0, "gid": 0}, "etc": {"mode": 0o700, "uid": 0, "gid": 0}}},
        "bot_units": ["botvps-bot-alpha.service"],
        "egress_loaded": True,
    }
    return {**base, **overrides}


def evaluate(exp: dict | None = None, fct: dict | None = None) -> HostReport:
    report = HostReport("vps1")
    drift.evaluate(exp or expect(), fct or facts(), report)
    return report


def only(report: HostReport, check: str) -> list[str]:
    return [i.detail for i in report.items if i.check == check]


# ---------------------------------------------------------------- live checks


def test_a_host_as_provisioned_is_clean():
    report = evaluate()
    assert report.items == [], report.items
    assert report.status == drift.CLEAN
    assert set(drift.BOT_CHECKS) <= set(report.checks) and "ufw-rules" in report.checks and "sshd" in report.checks


def test_primary_ipv4_must_be_static_ipv4():
    changed = facts(route=ok('[{"dst":"default","dev":"eth0","prefsrc":"198.51.100.7","metric":100}]'),
                    addr=ok(json.dumps([{"addr_info": [
                        {"dev": "eth0", "family": "inet", "local": "198.51.100.7", "scope": "global"},
                        {"dev": "eth0", "family": "inet", "local": "203.0.113.10", "scope": "global"}]}])))
    [detail] = only(evaluate(fct=changed), "ipv4")
    assert "primary IPv4 is 198.51.100.7, static_ipv4 is 203.0.113.10" in detail
    assert "has it too, but not as its primary address" in detail
    # The lowest metric default route decides; without prefsrc, the first address on its device.
    primary, _ = drift.primary_ipv4(
        '[{"dst":"default","dev":"eth1","metric":200},{"dst":"default","dev":"eth0","metric":100}]',
        json.dumps([{"addr_info": [{"dev": "eth0", "family": "inet", "local": "203.0.113.10", "scope": "global"}]}]))
    assert primary == "203.0.113.10"
    assert only(evaluate(exp=expect(static_ipv4="")), "ipv4") == []


def test_a_nat_cloud_host_is_judged_by_its_egress_address():
    nat = facts(route=ok('[{"dst":"default","dev":"eth0","prefsrc":"172.31.5.10","metric":100}]'),
                addr=ok(json.dumps([{"addr_info": [
                    {"dev": "eth0", "family": "inet", "local": "172.31.5.10", "scope": "global"}]}])))
    # static_ipv4 is not on the interface: the world check is preflight's (a settings item), not this one.
    assert only(evaluate(fct=nat), "ipv4") == []
    assert only(evaluate(exp=expect(egress_ipv4="172.31.5.10"), fct=nat), "ipv4") == []
    [detail] = only(evaluate(exp=expect(egress_ipv4="172.31.9.9"), fct=nat), "ipv4")
    assert "primary IPv4 is 172.31.5.10, egress_ipv4 is 172.31.9.9" in detail and "egress rules drop" in detail


def test_security_updates_reboot_and_clock():
    apt = ok("Inst libssl3 [3.0.15-1~deb12u1] (3.0.16-1~deb12u1 Debian-Security:12/stable-security [amd64])\n"
             "Inst tzdata [2024a] (2025b Debian:12.11/stable [all])\n"
             "Inst openssh-server [1:9.2p1-2+deb12u5] (1:9.2p1-2+deb12u6 Debian-Security:12/stable-security [amd64]) []\n")
    report = evaluate(fct=facts(apt=apt, reboot_required=True, reboot_pkgs=["linux-image-6.1.0-31-amd64"],
                                timedatectl=ok("NTP=yes\nNTPSynchronized=no\n"),
                                timesync=ok("       Offset: -1.5s\n")))
    assert only(report, "security-updates") == ["2 security update(s) pending: libssl3, openssh-server"]
    assert "linux-image-6.1.0-31-amd64" in only(report, "reboot-required")[0]
    assert only(report, "clock") == ["the clock is not synchronised (timedatectl NTPSynchronized=no)",
                                     "clock offset -1.500 s (more than 1.0 s)"]
    assert drift.clock_offset("  Offset: +850us\n") == pytest.approx(0.00085)
    assert drift.clock_offset("nothing") is None
    # A just-(re)started timesyncd's first sample is the boot clock's error, which it corrects at once: not drift.
    first = "       Offset: +1.053s\n        Delay: 2.1ms\n Packet count: 1\n"
    assert drift.clock_offset(first) is None
    settled = evaluate(fct=facts(timesync=ok(first)))
    assert only(settled, "clock") == []
    later = evaluate(fct=facts(timesync=ok(first.replace("count: 1", "count: 2"))))
    assert only(later, "clock") == ["clock offset +1.053 s (more than 1.0 s)"]
    failed = evaluate(fct=facts(apt={"rc": 100, "out": "", "err": "E: lists broken"}))
    assert [i.kind for i in failed.items] == ["error"] and failed.status == drift.ERROR


def test_listening_sockets_beyond_loopback_must_be_declared():
    ss = facts()["ss"]["out"] + ('LISTEN 0 5 0.0.0.0:8080 0.0.0.0:* users:(("python3",pid=42,fd=3))\n'
                                 'LISTEN 0 5 [::]:8080 [::]:* users:(("python3",pid=42,fd=4))\n'
                                 'LISTEN 0 5 [::ffff:127.0.0.1]:9000 [::]:* users:(("x",pid=1,fd=4))\n'
                                 'LISTEN 0 5 *:9100 *:* users:(("node_exporter",pid=5,fd=3))\n')
    report = evaluate(fct=facts(ss=ok(ss)))
    assert only(report, "listening-sockets") == [
        "TCP port 8080 listens on 0.0.0.0, :: (python3 pid 42) but is not declared (ssh_port, firewall_allowed_ports: [22])",
        "TCP port 9100 listens on * (node_exporter pid 5) but is not declared (ssh_port, firewall_allowed_ports: [22])",
    ]
    declared = expect(firewall_allowed_ports=[{"port": 8080}, {"port": "9000:9100", "proto": "tcp"}, {"port": 53, "proto": "udp"}])
    assert only(evaluate(exp=declared, fct=facts(ss=ok(ss))), "listening-sockets") == []
    assert drift._port_set([{"port": 53, "proto": "udp"}]) == set()


def test_a_rescue_rule_is_drift_in_drift_and_a_warning_in_the_report():
    """One reading of the ufw mark (drift.ufw_rule_owner): after a rollback both say the rescue rule is not the
    declared state."""
    from botvps.report import scorecard

    added = facts()["ufw_added"]["out"] + "ufw limit 2222/tcp comment 'botvps-rescue'\n"
    assert only(evaluate(fct=facts(ufw_added=ok(added))), "ufw-rules") == [
        "rescue rule left by a rolled-back SSH change: ufw limit 2222/tcp comment 'botvps-rescue' "
        "(the next invoke provision removes it)"]
    status = ("Status: active\nLogging: on (low)\nDefault: deny (incoming), allow (outgoing), deny (routed)\n"
              "New profiles: skip\n\nTo                         Action      From\n--                         ------      ----\n"
              "22/tcp                     LIMIT IN    Anywhere                   # botvps\n"
              "2222/tcp                   LIMIT IN    Anywhere                   # botvps-rescue\n")
    assert scorecard.ufw_rules(status)[1][1]["comment"] == "botvps-rescue"
    assert [drift.ufw_rule_owner(r["comment"]) for r in scorecard.ufw_rules(status)[1]] == ["declared", "rescue"]


def test_ufw_rules_need_the_mark_and_ufw_active():
    added = facts()["ufw_added"]["out"] + "ufw allow 9999/tcp\nufw allow from 10.0.0.0/8 to any port 80 proto tcp comment 'other'\n"
    report = evaluate(fct=facts(ufw_added=ok(added), ufw_status=ok("Status: inactive\n")))
    assert only(report, "ufw-rules") == ["ufw is not active", "rule without the botvps mark: ufw allow 9999/tcp",
                                         "rule without the botvps mark: ufw allow from 10.0.0.0/8 to any port 80 "
                                         "proto tcp comment 'other'"]
    assert "ufw-rules" not in evaluate(exp=expect(firewall_enabled=False), fct=facts(ufw_added=ok(added))).checks


def test_sshd_drop_ins_and_effective_settings():
    dropins = dict(facts()["sshd_dropins"], **{"01-evil.conf": ["PasswordAuthentication yes"],
                                               "0-first.conf": ["PermitRootLogin yes", "Banner /etc/issue"]})
    sshd = dict(facts()["sshd"], permitrootlogin="yes")
    report = evaluate(fct=facts(sshd_dropins=dropins, sshd=sshd))
    assert only(report, "sshd") == [
        "effective permitrootlogin is yes, expected no (sshd -T)",
        "unmanaged drop-in /etc/ssh/sshd_config.d/0-first.conf sets PermitRootLogin yes (read before botvps' own, "
        "so its settings win)",
        "unmanaged drop-in /etc/ssh/sshd_config.d/01-evil.conf sets PasswordAuthentication yes (read after botvps' "
        "own drop-in, which still wins for the settings both set)",
    ]
    broken = evaluate(fct=facts(sshd_rc=255, sshd={}, sshd_err="line 3: Bad configuration option: Nope",
                                sshd_dropins={"50-cloud-init.conf": []}))
    assert only(broken, "sshd") == ["sshd -T fails, the configuration is broken: line 3: Bad configuration option: Nope",
                                    "botvps' drop-in /etc/ssh/sshd_config.d/00-botvps.conf is missing"]
    weak = evaluate(fct=facts(ssh_state=dict(facts()["ssh_state"], changed="rsa-host-key moduli",
                                             weak_host_keys=["ssh_host_ecdsa_key"])))
    assert only(weak, "settings") == ["ssh: host keys/moduli would be fixed: rsa-host-key moduli",
                                      "ssh: weak host keys would be removed: ssh_host_ecdsa_key"]


def test_admin_authorized_keys_are_exactly_the_inventorys():
    keys = {"/home/ops/.ssh/authorized_keys": [ADMIN_KEY, STRAY_KEY],
            "/home/ops/.ssh/authorized_keys2": ['from="10.0.0.1",no-pty ' + STRAY_KEY.replace("stray@drill", "other")]}
    report = evaluate(fct=facts(admin_keys=keys))
    assert only(report, "authorized-keys") == [
        "/home/ops/.ssh/authorized_keys has a key not in the inventory: ssh-ed25519 ...dGmoJlkZcd8O (stray@drill)",
        "/home/ops/.ssh/authorized_keys2 has a key not in the inventory: ssh-ed25519 ...dGmoJlkZcd8O (other)",
    ]
    # The same key with options or another comment is the same key.
    assert drift.key_id('command="x",no-pty ' + ADMIN_KEY) == drift.key_id(ADMIN_KEY.replace("ops@laptop", "x"))
    missing = evaluate(fct=facts(admin_keys={"/home/ops/.ssh/authorized_keys": []}))
    assert only(missing, "authorized-keys") == ["1 inventory key(s) missing from ops's authorized_keys"]
    assert only(evaluate(fct=facts(admin_keys=None)), "authorized-keys") == ["the admin account ops does not exist"]


def test_login_capable_users_besides_admin_and_root():
    users = facts()["users"] + [
        {"name": "debian", "uid": 1001, "shell": "/bin/bash", "password": "no", "keys": 2},
        {"name": "mallory", "uid": 1002, "shell": "/bin/sh", "password": "empty", "keys": 0},
        {"name": "idle", "uid": 1003, "shell": "/bin/bash", "password": "no", "keys": 0},
    ]
    report = evaluate(fct=facts(users=users))
    assert only(report, "login-users") == [
        "user debian (uid 1001, shell /bin/bash) can log in with 2 authorized key(s) (not in the SSH group: console/su only)",
        "user mallory (uid 1002, shell /bin/sh) can log in with an EMPTY password (not in the SSH group: console/su only)",
    ]


def test_bots_running_sandboxed_and_secrets_root_only():
    bot = facts()["bots"]["alpha"]
    stopped = {"alpha": {**bot, "show": {**bot["show"], "ActiveState": "inactive", "SubState": "dead",
                                         "ProtectSystem": "full", "DropInPaths": "/etc/systemd/system/x.d/o.conf",
                                         "User": ""},
                         "secrets": {"mode": 0o644, "uid": 0, "gid": 0}}}
    report = evaluate(fct=facts(bots=stopped, bot_units=["botvps-bot-alpha.service", "botvps-bot-old.service"],
                                egress_loaded=False))
    assert only(report, "bot-services") == ["botvps-bot-old.service is on the host but not in the inventory",
                                            "botvps-bot-alpha.service is not running: inactive (dead)"]
    assert only(report, "bot-sandbox") == [
        "botvps-bot-alpha.service runs as root, not bot-alpha",
        "botvps-bot-alpha.service is changed by drop-in(s) botvps did not write: /etc/systemd/system/x.d/o.conf",
        "botvps-bot-alpha.service: ProtectSystem is full, the bots role sets strict",
        "the bots' egress rules (nftables table inet botvps_egress) are not loaded",
    ]
    assert only(report, "bot-secrets") == [
        "secrets file /etc/botvps/alpha/secrets.env has mode 0644, uid 0, gid 0 (expected 0600 root:root): readable by others"]
    gone = evaluate(fct=facts(bots={"alpha": {"show": {"LoadState": "not-found"}, "secrets": None, "etc": None}}))
    assert only(gone, "bot-services") == ["botvps-bot-alpha.service is not-found (not installed?)"]
    assert len(only(gone, "bot-secrets")) == 2


def test_a_crash_looping_bot_is_named_as_such():
    bot = facts()["bots"]["alpha"]
    looping = {"alpha": {**bot, "show": {**bot["show"], "ActiveState": "failed", "SubState": "failed",
                                         "Result": "start-limit-hit", "NRestarts": "5"}}}
    (detail,) = only(evaluate(fct=facts(bots=looping)), "bot-services")
    trixie = {"alpha": {**bot, "show": {**bot["show"], "ActiveState": "failed", "SubState": "failed",
                                        "Result": "exit-code", "NRestarts": "5"}}}
    assert only(evaluate(fct=facts(bots=trixie)), "bot-services") == [detail]
    once = {"alpha": {**bot, "show": {**bot["show"], "ActiveState": "failed", "SubState": "failed",
                                      "Result": "exit-code", "NRestarts": "0"}}}
    assert "crash loop" not in only(evaluate(fct=facts(bots=once)), "bot-services")[0]
    assert detail.startswith("botvps-bot-alpha.service is not running: failed (failed), crash loop: systemd stopped "
                             "restarting it after 5 restarts")
    assert "journalctl -u botvps-bot-alpha.service" in detail


def test_hosts_without_bots_skip_the_bot_checks():
    report = evaluate(exp=expect(bots=[]), fct=facts(bots={}, bot_units=[], egress_loaded=None))
    assert report.items == [] and not set(drift.BOT_CHECKS) & set(report.checks)
    # ... unless a bot unit is left over on the host.
    leftover = evaluate(exp=expect(bots=[]), fct=facts(bots={}, bot_units=["botvps-bot-alpha.service"]))
    assert only(leftover, "bot-services") == ["botvps-bot-alpha.service is on the host but not in the inventory"]


# ---------------------------------------------------------------- the playbook's JSON, the verification suite's JUnit


def _task(name: str, hosts: dict, path: str = "/x/roles/r/tasks/main.yml:1") -> dict:
    return {"task": {"name": name, "path": path}, "hosts": hosts}


def test_parse_playbook_changes_failures_unreachable_and_the_probe():
    probe = {"rc": 0, "stdout": json.dumps(facts()), "changed": False}
    output = {
        "plays": [
            {"tasks": [
                _task("connect : Find the account that logs in", {
                    "vps1": {"changed": False, "stdout": '{"user": "ops", "port": 22}'},
                    "vps2": {"failed": True, "msg": "non-zero return code", "stderr": "cannot reach 192.0.2.9: no login worked"},
                    "vps3": {"unreachable": True, "msg": "Failed to connect to the host via ssh"}}),
                _task("Drift, read the live state in one call (a read-only script; JSON out)", {"vps1": probe}),
                _task("Drift, what the inventory declares (for the comparison on the controller)",
                      {"vps1": {"msg": expect()}}),
            ]},
            {"tasks": [
                _task("preflight : Check the host really has its static IPv4 address", {"vps1": {"changed": False}}),
                _task("firewall : Make ufw's rules exactly the declared set", {"vps1": {
                    "changed": True, "added": [], "deleted": ["ufw allow 9999/tcp"], "defaults_set": {"incoming": "deny"}}}),
                _task("admin : Write the admin's authorized_keys", {"vps1": {
                    "changed": True, "changed_paths": ["/home/ops/.ssh/authorized_keys"],
                    "diff": [{"before": "SECRET-LOOKING BEFORE", "after": "x", "after_header": "/home/ops/.ssh/authorized_keys"}]}}),
                _task("bots : Write the bots' secrets files in one call", {"vps1": {
                    "changed": True, "censored": "the output has been hidden due to the fact that 'no_log: true' was specified"}}),
                _task("bots : Enable and start the bots", {"vps1": {"changed": True, "started_now": ["botvps-bot-alpha.service"]}}),
                _task("fail2ban : Restart fail2ban to load the new jail", {"vps1": {"changed": True}},
                      path="/x/roles/fail2ban/handlers/main.yml:2"),
                _task("updates : Write the config", {"vps1": {"failed": True, "msg": "boom", "action": "botvps.infra.files"}}),
            ]},
        ],
        "stats": {"vps1": {}, "vps2": {}, "vps3": {}},
    }
    parsed = drift.parse_playbook(output)
    assert parsed["vps2"]["unreachable"] == "cannot reach 192.0.2.9: no login worked"
    assert parsed["vps3"]["unreachable"] == "Failed to connect to the host via ssh"
    vps1 = parsed["vps1"]
    assert vps1["probe"] is probe and vps1["expect"] == expect() and vps1["checked"]
    report = HostReport("vps1")
    drift.settings_items(vps1, report)
    assert [(i.detail, i.kind) for i in report.items] == [
        ("firewall: Make ufw's rules exactly the declared set: would delete ufw allow 9999/tcp; "
         "would set ufw defaults incoming deny", "drift"),
        ("admin: Write the admin's authorized_keys: would change /home/ops/.ssh/authorized_keys", "drift"),
        ("bots: Write the bots' secrets files in one call: would change (details hidden: no_log)", "drift"),
        ("bots: Enable and start the bots: would start botvps-bot-alpha.service", "drift"),
        ("updates: Write the config: failed in check mode: boom", "error"),
    ]
    assert "SECRET-LOOKING" not in json.dumps([i.detail for i in report.items])


def test_a_failed_preflight_assertion_is_drift_not_an_error():
    output = {"plays": [{"tasks": []}, {"tasks": [_task("preflight : Check the host really has its static IPv4 address", {
        "vps1": {"failed": True, "assertion": "static_ipv4 in ansible_all_ipv4_addresses", "evaluated_to": False,
                 "msg": "vps1: static_ipv4 is 10.0.2.99 but the host has 10.0.2.15"}})]}], "stats": {"vps1": {}}}
    report = HostReport("vps1")
    drift.settings_items(drift.parse_playbook(output)["vps1"], report)
    assert [(i.check, i.kind) for i in report.items] == [("settings", "drift")]
    assert "static_ipv4 is 10.0.2.99" in report.items[0].detail


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" tests="4">
<testcase classname="tests.host.test_firewall" name="test_only_marked_rules[ansible://vps1]" time="1">
  <failure message="AssertionError: [&quot;ufw allow 9999/tcp&quot;]&#10;assert False">long text</failure></testcase>
<testcase classname="tests.host.test_ssh" name="test_effective_sshd_setting[ansible://vps10-passwordauthentication-no]" time="1">
  <error message="failed on setup with RuntimeError">trace</error></testcase>
<testcase classname="tests.host.test_ssh" name="test_admin_account[ansible://vps1]" time="1"/>
<testcase classname="tests.host.test_misc" name="test_without_host" time="1"><failure message="x"/></testcase>
</testsuite></testsuites>"""


def test_parse_junit_attributes_failures_to_hosts():
    failures = drift.parse_junit(JUNIT, ["vps1", "vps10"])
    assert failures["vps1"] == ['test_firewall.py::test_only_marked_rules: AssertionError: ["ufw allow 9999/tcp"]',
                                "test_misc.py::test_without_host: x"]
    assert failures["vps10"] == [
        "test_ssh.py::test_effective_sshd_setting[passwordauthentication-no]: failed on setup with RuntimeError",
        "test_misc.py::test_without_host: x"]


def test_verification_suite_leaves_out_what_is_not_read_only():
    source = (ROOT / "tests" / "host" / "test_updates.py").read_text()
    for name in drift.VERIFY_SKIPPED:
        assert f"def {name}(" in (source + "".join(p.read_text() for p in (ROOT / "tests" / "host").glob("test_*.py")))


# ---------------------------------------------------------------- exit codes and formats


def _reports() -> list[HostReport]:
    clean = HostReport("a-clean", checks=list(drift.CHECKS)[:3])
    drifted = HostReport("b-drifted", items=[Item("ufw-rules", "rule without the botvps mark: ufw allow 9999/tcp"),
                                             Item("ufw-rules", "ufw is not active"), Item("ipv4", "primary IPv4 is x")],
                         checks=["settings", "ipv4", "ufw-rules"])
    return [clean, drifted]


@pytest.mark.parametrize(("statuses", "code"), [
    ([], 2),
    ([drift.CLEAN], 0),
    ([drift.CLEAN, drift.CLEAN], 0),
    ([drift.CLEAN, drift.DRIFTED], 1),
    ([drift.DRIFTED, drift.UNREACHABLE], 2),
    ([drift.CLEAN, drift.ERROR], 2),
    ([drift.DRIFTED, drift.ERROR, drift.CLEAN], 2),
])
def test_exit_codes(statuses, code):
    reports = []
    for i, status in enumerate(statuses):
        report = HostReport(f"h{i}")
        if status == drift.DRIFTED:
            report.add("ipv4", "x")
        elif status == drift.ERROR:
            report.add("verify", "suite did not run", "error")
        elif status == drift.UNREACHABLE:
            report.unreachable = "no route"
        assert report.status == status
        reports.append(report)
    assert drift.exit_code(reports) == code


def test_unreachable_wins_over_items():
    report = HostReport("h", items=[Item("ipv4", "x")], unreachable="timeout")
    assert report.status == drift.UNREACHABLE
    assert report.to_dict() == {"host": "h", "status": "unreachable", "reason": "timeout",
                                "items": [{"check": "ipv4", "detail": "x", "kind": "drift"}]}


def test_table():
    reports = _reports() + [HostReport("c-gone", unreachable="cannot reach 192.0.2.9"),
                            HostReport("d-broken", items=[Item("verify", "suite did not run", "error")])]
    text = drift.table(reports, seconds=42.4)
    assert text.splitlines() == [
        "a-clean: clean",
        "b-drifted: DRIFTED (3 items)",
        "  ufw-rules          rule without the botvps mark: ufw allow 9999/tcp",
        "  ufw-rules          ufw is not active",
        "  ipv4               primary IPv4 is x",
        "c-gone: UNREACHABLE",
        "  reachable          cannot reach 192.0.2.9",
        "d-broken: ERROR (1 item)",
        "  verify             suite did not run [error]",
        "drift: 1 clean, 1 drifted, 1 unreachable, 1 error in 42 s (exit 2)",
    ]


def test_json_is_one_line_with_one_object_per_host():
    text = drift.to_json(_reports(), 12.34, when="2026-01-02T03:04:05Z")
    assert "\n" not in text
    data = json.loads(text)
    assert data["time"] == "2026-01-02T03:04:05Z" and data["exit"] == 1 and data["seconds"] == 12.3
    assert [(h["host"], h["status"], len(h["items"])) for h in data["hosts"]] == [("a-clean", "clean", 0),
                                                                                  ("b-drifted", "drifted", 3)]
    assert data["hosts"][1]["items"][0] == {"check": "ufw-rules", "detail": "rule without the botvps mark: ufw allow 9999/tcp",
                                            "kind": "drift"}


def test_junit_xml_parses_one_testcase_per_check_per_host():
    reports = _reports() + [HostReport("c-gone", unreachable="timeout"),
                            HostReport("d-broken", items=[Item("verify", "suite did not run", "error")], checks=["verify"])]
    root = ET.fromstring(drift.junit_xml(reports).split("?>", 1)[1])
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert list(suites) == ["a-clean", "b-drifted", "c-gone", "d-broken"]
    for suite in suites.values():
        assert [c.get("name") for c in suite.iter("testcase")] == list(drift.CHECKS)
        assert suite.get("tests") == str(len(drift.CHECKS))
    drifted = {c.get("name"): c for c in suites["b-drifted"].iter("testcase")}
    assert drifted["ufw-rules"].find("failure").get("message").startswith("2 drifted: rule without the botvps mark")
    assert drifted["ufw-rules"].find("failure").text.splitlines()[1] == "ufw is not active"
    assert drifted["settings"].find("failure") is None and drifted["settings"].find("skipped") is None
    assert drifted["clock"].find("skipped") is not None
    assert suites["b-drifted"].get("failures") == "2"
    assert suites["c-gone"].get("errors") == str(len(drift.CHECKS))
    assert suites["d-broken"].get("errors") == "1"
    assert ET.fromstring(drift.junit_xml([]).split("?>", 1)[1]).tag == "testsuites"


# ---------------------------------------------------------------- history and schedule


def test_history_rows_per_host_with_filter_and_bad_lines(tmp_path):
    history = tmp_path / "drift-history.jsonl"
    runs = [drift.to_json(_reports(), 10, when="2026-01-01T04:00:00Z"),
            "not json",
            drift.to_json([HostReport("b-drifted")], 9, when="2026-01-02T04:00:00Z"),
            '{"no": "hosts"}']
    history.write_text("\n".join(runs) + "\n\n")
    rows, bad = drift.read_history(history)
    assert bad == 2
    assert [(r["time"], r["host"], r["status"], r["items"]) for r in rows] == [
        ("2026-01-01T04:00:00Z", "a-clean", "clean", 0),
        ("2026-01-01T04:00:00Z", "b-drifted", "drifted", 3),
        ("2026-01-02T04:00:00Z", "b-drifted", "clean", 0)]
    rows, _ = drift.read_history(history, host="b-drifted")
    text = drift.format_history(rows, bad)
    assert text.splitlines() == [
        "time                  host                      status       items  checks",
        "2026-01-01T04:00:00Z  b-drifted                 drifted          3  ipv4, ufw-rules",
        "2026-01-02T04:00:00Z  b-drifted                 clean            0  ",
        "(2 unreadable lines skipped)",
    ]
    assert drift.read_history(tmp_path / "missing.jsonl") == ([], 0)
    assert drift.format_history([]) == "no drift runs recorded yet"


def test_history_file_follows_xdg_state_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert drift.history_file() == tmp_path / "botvps" / "drift-history.jsonl"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert drift.history_file() == tmp_path / ".local" / "state" / "botvps" / "drift-history.jsonl"


def test_schedule_units_run_drift_json_daily_into_the_history(tmp_path):
    inventory = tmp_path / "my inventory"
    units = drift.schedule_units(inventory, vault_password_file=str(tmp_path / "pw"), limit="vps1",
                                 history_path=Path("/home/me/.local/state/botvps/drift-history.jsonl"),
                                 project=Path("/src/botvps"), invoke=Path("/src/botvps/.venv/bin/invoke"))
    service, timer = units["botvps-drift.service"], units["botvps-drift.timer"]
    assert "OnCalendar=daily" in timer and "Persistent=true" in timer and "WantedBy=timers.target" in timer
    exec_start = next(line for line in service.splitlines() if line.startswith("ExecStart="))
    command = exec_start.split("=", 1)[1]
    # What /bin/sh -c receives: invoke drift --json ... >> history (the inventory path quoted).
    argv = shlex.split(command)
    assert argv[:2] == ["/bin/sh", "-c"]
    inner = shlex.split(argv[2])
    assert inner[:3] == ["/src/botvps/.venv/bin/invoke", "drift", "--json"]
    assert inner[inner.index("--inventory") + 1] == str(inventory)
    assert inner[inner.index("--limit") + 1] == "vps1"
    assert inner[inner.index("--vault-password-file") + 1] == str(tmp_path / "pw")
    assert inner[-2:] == [">>", "/home/me/.local/state/botvps/drift-history.jsonl"]
    assert "WorkingDirectory=/src/botvps" in service and "Type=oneshot" in service


def test_schedule_install_writes_user_units(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setattr(drift.subprocess, "run", lambda *a, **k: (_ for _ in ()).throw(FileNotFoundError("systemctl")))
    assert drift.schedule(tmp_path / "inv", install=True) == 0
    unit_dir = tmp_path / "config" / "systemd" / "user"
    assert sorted(p.name for p in unit_dir.iterdir()) == ["botvps-drift.service", "botvps-drift.timer"]
    assert (tmp_path / "state" / "botvps").is_dir()
    assert "systemctl --user daemon-reload" in capsys.readouterr().out
    assert drift.schedule(tmp_path / "inv") == 0
    printed = capsys.readouterr().out
    assert "# ~/.config/systemd/user/botvps-drift.timer" in printed and "OnCalendar=daily" in printed


# ---------------------------------------------------------------- the probe and the playbook


class _UnsafeLoader(yaml.SafeLoader):
    pass


_UnsafeLoader.add_constructor("!unsafe", lambda loader, node: loader.construct_scalar(node))


def test_extra_vars_carry_the_probe_untemplated():
    data = yaml.load(drift.extra_vars(), Loader=_UnsafeLoader)  # noqa: S506 - SafeLoader subclass
    assert data["drift_probe_script"] == drift.probe_script()
    assert data["ssh_host_keys"]["stdout"] == "{{ drift_ssh_state | default({}) | to_json }}"
    assert drift.extra_vars().startswith("drift_probe_script: !unsafe ")
    compile(drift.probe_script(), "probe", "exec")


def test_probe_runs_locally_and_reports_json(tmp_path):
    """Smoke test on the controller itself: the script must never crash, whatever is missing."""
    args = json.dumps({"admin_user": "no-such-user-botvps", "bots": ["zz-none"]})
    result = subprocess.run([sys.executable, "-c", drift.probe_script(), args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["admin_keys"] is None
    assert set(data) >= {"route", "addr", "apt", "timedatectl", "ss", "ufw_added", "sshd", "users", "bots", "ssh_state"}
    assert data["bots"]["zz-none"]["secrets"] is None
    for user in data["users"]:
        assert user["password"] in ("yes", "no", "empty")  # never a hash


def test_probe_never_opens_a_secrets_file():
    source = drift.probe_script()
    assert 'stat("/etc/botvps/%s/secrets.env"' in source
    assert source.count("secrets.env") == 1


def _roles(play: dict) -> list[tuple[str, str]]:
    return [(r["role"], r.get("when", "")) for r in play["roles"] if "never" not in r.get("tags", [])]


def test_drift_playbook_mirrors_the_site_playbook():
    site = yaml.safe_load((ROOT / "playbooks" / "site.yml").read_text())[0]
    live, checked = yaml.safe_load(drift.PLAYBOOK.read_text())
    # The check-mode play runs the site's roles, in order, with the same switches (connect ran in play 1).
    assert [("connect", "")] + _roles(checked) == _roles(site)
    assert {r["role"] for r in checked["roles"]} == {r["role"] for r in site["roles"]}
    assert live["check_mode"] is False and "check_mode" not in checked
    assert [r for r in checked["roles"] if r.get("check_mode") is False] == [{"role": "preflight", "check_mode": False}]
    # Play 1 runs only connect and its own read-only tasks; the other roles only lend their variables.
    assert [r["role"] for r in live["roles"] if "never" not in r.get("tags", [])] == ["connect"]
    assert {next(iter(set(t) - {"name", "vars", "register", "changed_when", "failed_when", "when"})) for t in live["tasks"]} == {
        "ansible.builtin.command", "ansible.builtin.debug", "ansible.builtin.set_fact"}


def test_ansible_args_always_check_mode_with_diff():
    assert drift.ansible_args(None, None) == ["--check", "--diff"]
    assert drift.ansible_args("vps1", "pw") == ["--check", "--diff", "--limit", "vps1", "--vault-password-file", "pw"]


def test_run_without_an_inventory_is_an_error(tmp_path, capsys):
    assert drift.run(tmp_path / "nope") == 2
    assert "no inventory" in capsys.readouterr().err


def test_check_orchestrates_playbook_probe_and_verify(monkeypatch):
    probe = {"rc": 0, "stdout": json.dumps(facts(ufw_added=ok(facts()["ufw_added"]["out"] + "ufw allow 9999/tcp\n")))}
    output = {"plays": [
        {"tasks": [
            _task("connect : Find the account that logs in", {"vps1": {}, "vps2": {}, "vps3": {
                "failed": True, "stderr": "cannot reach 192.0.2.9: no login worked"}}),
            _task("Drift, read the live state in one call", {"vps1": probe, "vps2": {"rc": 1, "stderr": "Traceback: boom"}}),
            _task("Drift, what the inventory declares", {"vps1": {"msg": expect()}, "vps2": {"msg": expect()}})]},
        {"tasks": [_task("preflight : Read the host's distribution", {"vps1": {}, "vps2": {}})]}],
        "stats": {"vps1": {}, "vps2": {}, "vps3": {}}}
    verified = []

    def fake_verify(inventory, hosts, vault_password_file):
        verified.append(hosts)
        return {"vps1": ["test_firewall.py::test_only_marked_rules: AssertionError"]}, ""

    monkeypatch.setattr(drift, "run_playbook", lambda *a: (output, ""))
    monkeypatch.setattr(drift, "run_verify", fake_verify)
    reports = {r.host: r for r in drift.check(Path("inv"), log=lambda msg: None)}
    assert verified == [["vps1", "vps2"]]  # never the unreachable host
    assert [(i.check, i.detail) for i in reports["vps1"].items] == [
        ("verify", "test_firewall.py::test_only_marked_rules: AssertionError"),
        ("ufw-rules", "rule without the botvps mark: ufw allow 9999/tcp")]
    assert reports["vps1"].status == drift.DRIFTED
    assert [(i.check, i.kind) for i in reports["vps2"].items] == [("live-checks", "error")]
    assert "Traceback: boom" in reports["vps2"].items[0].detail
    assert reports["vps3"].status == drift.UNREACHABLE
    assert drift.exit_code(list(reports.values())) == 2
    cases = [c.get("name") for c in ET.fromstring(drift.junit_xml([reports["vps2"]]).split("?>", 1)[1]).iter("testcase")]
    assert cases == [*drift.CHECKS, "live-checks"]


def test_check_when_ansible_playbook_produces_no_json(monkeypatch):
    monkeypatch.setattr(drift, "run_playbook", lambda *a: (None, "ERROR! Attempting to decrypt but no vault secrets found\n"))
    [report] = drift.check(Path("inv"), limit="vps1", log=lambda msg: None)
    assert report.host == "vps1" and report.status == drift.ERROR
    assert "no vault secrets found" in report.items[0].detail


def test_schedule_keeps_percent_and_dollar_literal_for_systemd(tmp_path):
    units = drift.schedule_units(Path("/srv/inv%1$x"), history_path=Path("/h/d.jsonl"), invoke=Path("/v/invoke"))
    exec_start = next(line for line in units["botvps-drift.service"].splitlines() if line.startswith("ExecStart="))
    assert "inv%%1$$x" in exec_start


def test_a_retirement_in_check_mode_is_named() -> None:
    """provision --check and drift show which bot a run would retire (the units module's retired_now)."""
    assert drift._change_detail({"changed": True, "retired_now": ["gamma"]}) == "would retire gamma"  # noqa: SLF001


def test_provision_check_refuses_a_bad_inventory_before_contacting_a_host(tmp_path, monkeypatch, capsys) -> None:
    from botvps import provision

    monkeypatch.setattr(drift, "check", lambda *a, **k: pytest.fail("a host was contacted"))
    (tmp_path / "hosts.yml").write_text("all:\n  hosts:\n    h1:\n      ansible_host: 127.0.0.1\n      ssh_port: many\n")
    assert provision.check(tmp_path) != 0
    assert "ssh_port" in capsys.readouterr().out


def test_provision_check_prints_what_would_change(tmp_path, monkeypatch, capsys) -> None:
    from botvps import provision

    report = drift.HostReport("h1")
    report.add("settings", "bots: Retire the bots marked absent: would retire gamma")
    monkeypatch.setattr(provision.validate, "check", lambda *a, **k: (provision.validate.EXIT_OK, ""))
    monkeypatch.setattr(drift, "check", lambda inventory, limit, vault, suite: [report] if not suite else [])
    assert provision.check(tmp_path) == 1
    out = capsys.readouterr().out
    assert "nothing was changed" in out and "would retire gamma" in out
