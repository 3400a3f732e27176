"""botvps.report without a VM: the scorecard and the log review from constructed and recorded probe
documents, ssh-audit's policy choice and verdict, the playbook's output, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from report_samples import ADMIN_FP, DAY, NOW, OLD_FP, SECURITY_ALPHA, at, document, ok, recorded

from botvps import hostcode
from botvps.report import command, review, scorecard
from botvps.report.build import GatherError, build, check_document
from botvps.report.model import FAIL, INFO, PASS, REVIEW, SCORECARD, UNKNOWN, WARN
from botvps.report.redact import Redactor
from botvps.report.sshaudit import AuditResult, choose_policy, parse

ROOT = Path(__file__).resolve().parents[2]
PASSED = AuditResult(PASS, "Hardened Debian 12 (version 3)", "127.0.0.1:22")


def sections(doc: dict, audit: AuditResult = PASSED) -> dict:
    report = build("vps1", doc, audit)
    return {s.key: s for s in report.scorecard + report.review}


def test_every_section_in_page_order():
    report = build("vps1", document(), PASSED)
    assert [s.key for s in report.scorecard] == list(SCORECARD)
    assert [s.key for s in report.review] == list(REVIEW)
    assert report.problems == []


# ---------------------------------------------------------------- scorecard


def test_systemd_analyze_exposure_and_largest_gaps():
    score, label, unmet = scorecard.exposure(SECURITY_ALPHA)
    assert (score, label) == (1.9, "OK")
    assert [name for name, _, _ in unmet][:2] == ["PrivateNetwork=", "IPAddressDeny="]
    units = sections(document())["bot-units"]
    assert units.status == WARN and units.headline == "5.6"  # beta is MEDIUM: the worst unit leads
    rows = {row[0]: row for row in units.tables[0].rows}
    assert rows["botvps-bot-alpha.service"][1:3] == ["1.9", "OK"]
    assert "PrivateNetwork" in rows["botvps-bot-alpha.service"][4]


def test_a_unit_systemd_analyze_cannot_score_is_unknown():
    doc = document(security={"botvps-bot-alpha.service": {"rc": 1, "out": "", "err": "Unit not found"}})
    units = sections(doc)["bot-units"]
    assert units.status == UNKNOWN and units.tables[0].rows[0][1] == "?"


def test_no_bots():
    assert sections(document(security={}))["bot-units"].status == INFO


def test_firewall_rules_marks_and_state():
    fw = sections(document())["firewall"]
    assert fw.status == PASS and [r[3] for r in fw.tables[0].rows] == ["botvps", "botvps"]
    extra = document()["ufw_status"]["out"] + "8080/tcp                   ALLOW IN    Anywhere\n"
    fw = sections(document(ufw_status=ok(extra)))["firewall"]
    assert fw.status == WARN and "1 not declared" in fw.summary
    assert fw.tables[0].rows[-1] == ["8080/tcp", "ALLOW IN", "Anywhere", ""]
    assert sections(document(ufw_status=ok("Status: inactive\n")))["firewall"].status == FAIL
    assert sections(document(ufw_status={"rc": 1, "out": "", "err": "ERROR: need root"}))["firewall"].status == UNKNOWN


def test_updates():
    up = sections(document())["updates"]
    rows = dict((r[0], r[1]) for r in up.tables[0].rows)
    assert up.status == WARN and up.headline == "1 security"
    assert rows["pending security updates"] == "1: libssl3" and rows["other pending updates"] == "1: tzdata"
    assert "No packages found" in rows["last unattended-upgrades run"]
    clean = sections(document(apt=ok("Reading package lists...\n")))["updates"]
    assert clean.status == PASS and clean.headline == "ok"
    reboot = sections(document(apt=ok(""), reboot_required=True, reboot_pkgs=["linux-image-cloud-amd64"]))["updates"]
    assert reboot.status == WARN and reboot.headline == "reboot"
    off = document(apt_config=ok('APT::Periodic::Unattended-Upgrade "0";\n'))
    assert sections(off)["updates"].status == FAIL


def test_clock():
    clock = sections(document())["clock"]
    assert clock.status == PASS and clock.headline == "-1 ms"
    drifting = sections(document(timesync=ok("Offset: +2.5s\n")))["clock"]
    assert drifting.status == WARN and "2.500 s off" in drifting.summary
    first = sections(document(timesync=ok("Offset: +2.5s\nPacket count: 1\n")))["clock"]
    assert first.status == PASS and "past its first sample" in str(first.tables)
    unsynced = sections(document(timedatectl=ok("NTP=yes\nNTPSynchronized=no\n")))["clock"]
    assert unsynced.status == FAIL


def test_lynis_absent_never_run_and_index():
    lynis = sections(document())["lynis"]
    assert lynis.status == UNKNOWN and lynis.headline == "not installed" and "apt install lynis" in lynis.summary
    installed = {"path": "/usr/sbin/lynis", "version": ok("3.0.8-1"), "report": None}
    assert sections(document(lynis=installed))["lynis"].headline == "never run"
    running = {**installed, "report": {"mtime": NOW, "values": {"lynis_version": "3.0.8"}, "warnings": [], "suggestions": 0}}
    assert sections(document(lynis=running))["lynis"].headline == "unfinished"
    report = {"mtime": NOW - DAY, "values": {"hardening_index": "74", "lynis_version": "3.0.8"},
              "warnings": ["FIRE-4512|iptables module(s) loaded, but no rules active|-|-|"], "suggestions": 31}
    lynis = sections(document(lynis={**installed, "report": report}))["lynis"]
    assert (lynis.status, lynis.headline) == (PASS, "74") and lynis.tables[0].rows[0][0] == "FIRE-4512"
    stale = sections(document(lynis={**installed, "report": {**report, "mtime": NOW - 60 * DAY}}))["lynis"]
    assert stale.status == WARN and "days old" in stale.notes[0]
    low = sections(document(lynis={**installed, "report": {**report, "values": {"hardening_index": "55"}}}))["lynis"]
    assert low.status == WARN


def test_keyaudit_latest_verdict_per_audited_bot():
    audit = sections(document())["keyaudit"]
    assert audit.status == PASS and audit.headline == "1/1 pass"
    assert audit.tables[0].rows[0][:5] == ["beta", "binance", "PASS", "2025-03-30 12:00 UTC", "daily audit"]
    doc = document()
    doc["keyaudit"]["starts"]["entries"].append([at(0.5), "botvps-bot-beta", "1", "keyaudit beta binance key ...9c1e: "
                                                 "FAIL the key can withdraw"])
    audit = sections(doc)["keyaudit"]
    assert audit.status == FAIL and audit.tables[0].rows[0][2] == "FAIL" and "withdraw" in audit.tables[0].rows[0][5]
    doc["keyaudit"]["verdicts"]["entries"] = doc["keyaudit"]["starts"]["entries"] = []
    assert sections(doc)["keyaudit"].status == WARN


def test_ssh_audit_section():
    assert sections(document())["ssh-audit"].status == PASS
    failed = AuditResult(FAIL, "Hardened Debian 12 (version 3)", "h:22", ["Key exchanges: expected a, the server has b"])
    section = sections(document(), failed)["ssh-audit"]
    assert section.status == FAIL and section.tables[0].rows == [["Key exchanges: expected a, the server has b"]]
    assert sections(document(), AuditResult(UNKNOWN, reason="no ssh-audit"))["ssh-audit"].summary == "no ssh-audit"


# ---------------------------------------------------------------- ssh-audit


LISTING = '''
Server policies:
  * "Hardened Debian 12 (version 2)"
  * "Hardened Debian 12 (version 3)"
  * "Hardened Debian 13 (version 1)"
  * "Hardened Ubuntu Server 24.04 LTS (version 2)"
Client policies:
  * "Hardened Debian Client 12 (version 2)"
'''


def test_policy_choice_is_the_newest_for_the_distribution():
    assert choose_policy(LISTING, "debian", "12") == "Hardened Debian 12 (version 3)"
    assert choose_policy(LISTING, "debian", "13") == "Hardened Debian 13 (version 1)"
    assert choose_policy(LISTING, "ubuntu", "24.04") == "Hardened Ubuntu Server 24.04 LTS (version 2)"
    assert choose_policy(LISTING, "rocky", "9") is None


def test_ssh_audit_json_verdict():
    passed = parse(json.dumps({"passed": True, "errors": [], "warnings": [], "policy": "P"}), "P", "h:22")
    assert passed.status == PASS
    failed = parse(json.dumps({"passed": False, "policy": "P", "warnings": [], "errors": [
        {"mismatched_field": "Key exchanges", "expected_required": ["sntrup761x25519-sha512"],
         "expected_optional": [""], "actual": ["diffie-hellman-group14-sha256"]}]}), "P", "h:22")
    assert failed.status == FAIL and failed.failures == [
        "Key exchanges: expected sntrup761x25519-sha512, the server has diffie-hellman-group14-sha256"]
    assert parse("(gen) unable to connect: timed out", "P", "h:22").status == UNKNOWN


# ---------------------------------------------------------------- the log review


def test_ssh_logins_with_fingerprints_names_and_sources():
    logins = sections(document())["ssh-logins"]
    rows = {(r[1], r[3]): r for r in logins.tables[0].rows}
    admin = rows[(f"ED25519 {ADMIN_FP}", "10.0.2.2")]
    assert admin[0] == "ops" and admin[2] == "ops@laptop (ops's authorized_keys)" and admin[4] == "3"
    stranger = rows[(f"ED25519 {OLD_FP}", "203.0.113.50")]
    assert stranger[2] == "not in any authorized_keys now"
    assert logins.status == WARN and logins.headline == "4"


def test_a_password_login_fails_the_section():
    doc = document()
    doc["journal"]["entries"].append([at(1), "sshd", "9", "Accepted password for ops from 192.0.2.1 port 1 ssh2"])
    assert sections(doc)["ssh-logins"].status == FAIL


def test_failed_logins_per_source_without_the_key_tried_before_a_login():
    failed = sections(document())["failed-logins"]
    rows = {r[0]: r for r in failed.tables[0].rows}
    assert set(rows) == {"198.51.100.9", "192.0.2.7"}  # not 10.0.2.2: its failed key was followed by a login
    assert rows["198.51.100.9"][1] == "2" and rows["198.51.100.9"][3] == "yes"
    assert "<script>x</script>" in rows["198.51.100.9"][2] and "admin" in rows["198.51.100.9"][2]
    assert rows["192.0.2.7"][1] == "2" and rows["192.0.2.7"][2] == "root"


def test_fail2ban_bans_from_its_log_and_status():
    bans = sections(document())["fail2ban"]
    assert bans.headline == "2" and bans.tables[0].rows == [["198.51.100.9", "sshd", "2", "2025-03-30 03:00 UTC", "yes"]]


def test_fail2ban_log_in_local_time():
    events = review.bans(document(utc_offset=2 * 3600))
    assert events[0]["time"] == at(2) - 9 * 3600 - 2 * 3600 + 5  # 03:00:05 at UTC+2 is 01:00:05 UTC


def test_sudo_groups_ansible_and_flags_refusals():
    sudo = sections(document())["sudo"]
    rows = {(r[0], r[2]): r for r in sudo.tables[0].rows}
    assert rows[("ops", "Ansible (become: botvps or another playbook)")][4] == "2"
    assert rows[("ops", "/usr/bin/systemctl restart botvps-bot-alpha")][3] == "ran"
    assert rows[("mallory", "/bin/bash")][3] == "user NOT in sudoers"
    assert sudo.status == WARN and sudo.headline == "4"


def test_package_updates_in_the_period_newest_first():
    pkgs = sections(document())["packages"]
    assert [r[1] for r in pkgs.tables[0].rows] == ["ops", "unattended-upgrades"]
    assert pkgs.tables[0].rows[0][3:] == ["install 2", "jq, libjq1"]
    assert pkgs.tables[0].rows[1][3:] == ["upgrade 2", "libc6, libc-bin"]


def test_a_short_journal_is_named():
    report = build("vps1", document(journal_start=at(3)), PASSED)
    assert "oldest entry 2025-03-28 12:00 UTC: the log review covers only the last 3 days, not 30 days" in \
        dict(report.facts)["journal"]
    report = build("vps1", document(journal={"rc": 1, "err": "No journal files", "entries": []}), PASSED)
    assert any("journalctl failed" in p for p in report.problems)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(("doc", "words"), [
    ([], "not a JSON object"),
    ({"probe": 1}, "no time, since, days, journal, apt_history field"),
    (document(probe=7), "probe field is 7"),
    (document(time="yesterday"), "time field is 'yesterday'"),
])
def test_a_document_that_is_not_the_probes_is_named(doc, words):
    with pytest.raises(GatherError, match="gather it again with `invoke report`") as err:
        check_document(doc)
    assert words in str(err.value)


def test_unknown_host_and_bad_inventory_name_the_field(tmp_path, capsys):
    inv = tmp_path / "inventory"
    inv.mkdir()
    (inv / "hosts.yml").write_text(yaml.safe_dump({"all": {"hosts": {"vps1": {"ansible_host": "203.0.113.10"}}}}))
    assert command.run(inv, host="vps9", out=tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "--host: vps9 is not in the inventory" in err and "use one of: vps1" in err
    assert command.run(tmp_path / "nowhere", out=tmp_path / "out") == 2
    assert "is not a directory" in capsys.readouterr().err


def test_callback_output_per_host():
    plays = {"plays": [{"tasks": [
        {"task": {"name": "connect : Find the account that logs in"}, "hosts": {
            "vps2": {"failed": True, "msg": "non-zero return code", "stderr": "cannot reach 203.0.113.11"}}},
        {"task": {"name": "Report, read everything in one call (a read-only script; one JSON document out)"},
         "hosts": {"vps1": {"rc": 0, "stdout": json.dumps(document())}}},
        {"task": {"name": "Report, where the controller reaches this host's SSH (for ssh-audit)"},
         "hosts": {"vps1": {"msg": {"host": "203.0.113.10", "port": "2222"}}}},
    ]}]}
    gathered = command.parse_callback("[WARNING]: something\n" + json.dumps(plays) + "\n")
    assert gathered["vps1"].document["hostname"] == "vps1" and gathered["vps1"].target == ("203.0.113.10", 2222)
    assert gathered["vps2"].document is None and "non-zero return code" in gathered["vps2"].error
    with pytest.raises(GatherError, match="ansible-playbook gave no result"):
        command.parse_callback("ERROR! the playbook could not be found\n")


# ---------------------------------------------------------------- the probe and the recorded document


def test_the_probe_runs_here_and_never_opens_a_secrets_file():
    source = hostcode.path("reportprobe").read_text()
    code = source.split('"""', 2)[2]  # the docstring names the file it never reads
    assert "secrets.env" not in code and "shadow" not in code
    done = subprocess.run([sys.executable, "-c", source, json.dumps({"days": 1, "max_lines": 10})],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    check_document(json.loads(done.stdout))


@pytest.mark.parametrize("release", ["debian12", "debian13"])
def test_the_recorded_vm_documents_build_a_full_report(release):
    doc = recorded(release)
    assert "SENTINEL" not in json.dumps(doc)  # molecule's planted bot secrets start so
    report = build("report-dev", doc, PASSED)
    found = {s.key: s for s in report.scorecard + report.review}
    assert found["firewall"].status == PASS
    assert found["clock"].status in (PASS, WARN)
    assert {r[0] for r in found["bot-units"].tables[0].rows} == {"botvps-bot-alpha.service", "botvps-bot-beta.service"}
    assert all(r[1] != "?" for r in found["bot-units"].tables[0].rows)
    assert found["keyaudit"].tables[0].rows[0][0] == "beta"
    ops = [r for r in found["ssh-logins"].tables[0].rows if r[0] == "ops"]
    assert ops and ops[0][1].startswith("ED25519 SHA256:") and ops[0][2].endswith("(ops's authorized_keys)")
    assert ops[0][3] == "10.0.2.2"
    attacker = [r for r in found["failed-logins"].tables[0].rows if r[0] == "192.0.2.2"]
    assert attacker and "intruder1" in attacker[0][2] and attacker[0][3] == "yes"
    assert found["fail2ban"].tables[0].rows[0][:3] == ["192.0.2.2", "sshd", "1"]
    assert any("Ansible (become" in r[2] for r in found["sudo"].tables[0].rows)
    assert found["packages"].tables[0].rows[-1][1] == {"debian12": "root", "debian13": "debian"}[release]


def test_redactor_masks_known_values_and_secret_shaped_free_text():
    redactor = Redactor(["hunter2hunter2"])
    assert redactor.walk({"a": ["x hunter2hunter2 y"]}) == {"a": ["x *** y"]}
    assert redactor.text("env BINANCE_SECRET=abc123 ./run --api-key XYZ --password=p4ss") == \
        "env BINANCE_SECRET=*** ./run --api-key *** --password=***"
    assert redactor.text("systemctl restart botvps-bot-alpha") == "systemctl restart botvps-bot-alpha"
    assert redactor.walk("PrivateTmp=yes") == "PrivateTmp=yes"  # structured output keeps its setting names


def test_the_playbook_makes_one_read_only_call_on_the_host():
    """Each module call on an emulated VM costs seconds: one command, besides the connect role (run on the
    controller) and a debug message; read-only, so it also runs under --check."""
    play = yaml.safe_load((ROOT / "playbooks" / "report.yml").read_text())[0]
    assert play["gather_facts"] is False and play["become"] is True and play["check_mode"] is False
    assert [r["role"] for r in play["roles"]] == ["connect"]
    modules = [next(k for k in task if k.startswith("ansible.")) for task in play["tasks"]]
    assert modules == ["ansible.builtin.command", "ansible.builtin.debug"]
    assert play["tasks"][0]["changed_when"] is False and play["tasks"][0]["name"].startswith(command.PROBE_TASK)
    assert play["tasks"][1]["name"].startswith(command.TARGET_TASK)
    connect = yaml.safe_load((ROOT / "roles" / "connect" / "tasks" / "main.yml").read_text())
    assert all(t.get("delegate_to") == "localhost" or "ansible.builtin.set_fact" in t for t in connect)
