"""`invoke report` against the provisioned VM: one gather, real content in every part that matters.

One run: the playbook's single read-only call, then ssh-audit paced to ufw's SSH limit (measured on
the emulated VMs: about 60 s on Debian 13, 60 to 90 s on Debian 12), from a cold controller with its new
SSH connections counted (sshcount.py): the report's share of the connection budget is judged here. The inventory is written for the VM as an operator would (no
vault, no bots declared): the report finds the bots on the host itself, and no secret of theirs may
show up anywhere in it.
"""

from __future__ import annotations

import subprocess
import time

import pytest
import sshcount
from conftest import FORGET_SSH_COUNTS

from botvps.report import command, render_html, render_md
from botvps.report.model import FAIL, PASS, UNKNOWN
from botvps.vm import inventory

CONTROLLER_FROM_GUEST = "10.0.2.2"
# ssh-audit's scan opens its own (paced) connections.
pytestmark = pytest.mark.connections


@pytest.fixture(scope="module")
def run(vm, tmp_path_factory, console) -> dict:
    """`invoke report`'s gather and ssh-audit, once, from a cold controller, its new SSH connections counted."""
    inv = inventory.write(vm, tmp_path_factory.mktemp("report") / "inventory")
    audit_started: list[float] = []

    def log(message: str) -> None:
        print(message)
        if "ssh-audit" in message:
            audit_started.append(time.time())

    started = time.monotonic()
    times, reports, why = sshcount.counted(vm, console, lambda: command.collect(inv, None, None, log=log))
    print(f"report: gathered and audited {vm.name} in {time.monotonic() - started:.0f} s")
    # ssh-audit's paced scan leaves the controller close to ufw's limit: the next checks start afresh.
    console(FORGET_SSH_COUNTS, check=False)
    return {"reports": reports, "times": times, "audit_started": audit_started, "fresh_login": why}


@pytest.fixture(scope="module")
def report(vm, run):
    found = run["reports"][vm.name]
    assert not isinstance(found, str), found
    return found


@pytest.fixture(scope="module")
def sections(report):
    return {s.key: s for s in report.scorecard + report.review}


def _fingerprint(vm) -> str:
    out = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(vm.key_file.with_suffix(".pub"))],
                         capture_output=True, text=True, check=True).stdout
    return out.split()[1]


def test_the_report_stays_in_budget_and_paces_ssh_audit(run):
    """The playbook's part opens at most READ_ONLY_BUDGET new SSH connections, ssh-audit's paced scan keeps every
    30 s window within WINDOW_BUDGET, and the admin can log in at once afterwards."""
    times, [audit_start] = run["times"], run["audit_started"]
    playbook = [t for t in times if t < audit_start]
    print(f"\nreport: {len(playbook)} new SSH connection(s) for the playbook, {len(times) - len(playbook)} for "
          f"ssh-audit, at most {sshcount.busiest_window(times)} in 30 s")
    assert playbook, "no SSH connection counted at all: the count is broken"
    assert len(playbook) <= sshcount.READ_ONLY_BUDGET, f"the report's playbook opened {len(playbook)} connections"
    assert sshcount.busiest_window(times) <= sshcount.WINDOW_BUDGET, f"{sshcount.busiest_window(times)} within 30 s"
    assert not run["fresh_login"], f"after the report a fresh admin login failed at once ({run['fresh_login']})"


def test_ssh_audit_policy_passes(sections, console):
    """The server passes ssh-audit's hardening policy for its own Debian release (the one ssh-audit run)."""
    release = console(". /etc/os-release && echo $VERSION_ID").stdout.strip()
    audit = sections["ssh-audit"]
    assert audit.status == PASS, (audit.summary, audit.tables)
    assert f'"Hardened Debian {release} (version ' in audit.summary, audit.summary


def test_the_controllers_login_appears_with_its_key(sections, vm):
    rows = sections["ssh-logins"].tables[0].rows
    mine = [r for r in rows if r[0] == "ops" and r[3] == CONTROLLER_FROM_GUEST and r[1].endswith(_fingerprint(vm))]
    assert mine, rows
    assert "ops's authorized_keys" in mine[0][2] and int(mine[0][4]) >= 1


def test_every_bot_unit_has_an_exposure_score(sections, console):
    units = console("ls /etc/systemd/system/ | grep '^botvps-bot-.*[.]service$' || true").stdout.split()
    rows = {r[0]: r for r in sections["bot-units"].tables[0].rows} if sections["bot-units"].tables else {}
    assert set(rows) == set(units)
    for unit, row in rows.items():
        assert 0.0 <= float(row[1]) <= 10.0, row
        assert row[2] in ("PERFECT", "SAFE", "OK", "MEDIUM"), f"{unit} is {row[2]}: the bots role's sandbox regressed"


def test_scorecard_reads_the_host(sections):
    assert sections["firewall"].status == PASS and all(r[3] == "botvps" for r in sections["firewall"].tables[0].rows)
    for key in ("updates", "clock"):
        assert sections[key].status != UNKNOWN, sections[key].summary
    lynis = sections["lynis"]  # botvps does not install it; when someone did, its index is read
    assert (lynis.status == UNKNOWN and lynis.headline in ("not installed", "never run", "unfinished")) or \
        0 <= int(lynis.headline) <= 100, (lynis.headline, lynis.summary)
    audited = sections["keyaudit"]
    if audited.tables:  # the molecule bots: beta is audited; converge started it, so a verdict is logged
        assert all(r[2] != "NONE" for r in audited.tables[0].rows), audited.tables[0].rows
        assert audited.status != FAIL or "withdraw" in str(audited.tables)


def test_sudo_and_package_history(sections):
    assert sections["sudo"].tables, "the report's own sudo (Ansible become) must be in the review"
    assert sections["packages"].tables, "provisioning installed packages"


def test_no_secret_value_in_the_pages(report, console):
    """The bots' secrets files exist and hold values; none of them may appear in the HTML or Markdown."""
    values = []
    listing = console("cat /etc/botvps/*/secrets.env 2>/dev/null || true").stdout  # read out of band, for the check
    for line in listing.splitlines():
        name, _, value = line.partition("=")
        if name and value.strip().strip('"'):
            values.append(value.strip().strip('"')[:24])
    pages = render_html.render(report) + render_md.render(report)
    assert not [v for v in values if len(v) >= 8 and v in pages]
