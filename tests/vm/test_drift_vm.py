"""`invoke drift` against a real provisioned VM: drills it must name, and proof that it writes nothing.

The VM and its inventory come from tests/vm/conftest.py: molecule's debian12 VM after tests/host
(in CI), or one booted for the session. Run standalone with::

    BOTVPS_VM_TESTS=1 .venv/bin/python -m pytest tests/vm/test_drift_vm.py -v -s

- drills: six changes made through the console (sshd drop-in with passwords, an unmarked ufw
  rule, a stray admin key, a stopped bot, a world-readable secrets file, a static_ipv4 that is
  not the primary address); one drift run must exit 1 and name each of them; all are undone.
  The drills share one drift run: on an emulated 2-core host a run takes minutes.
- read-only: the sha256 (and mode, owner, size, mtime) of every file and directory under the
  configuration directories is read through the guest agent (out of band) right before and right
  after that drift run: it must change nothing, drills and all.
- connections: that run is counted (tests/host/sshcount.py) from a cold controller, with Ansible's own strategy:
  drift's share of the connection budget is judged here, not on a second run in the budget drill.
- that a freshly provisioned host has no drift is shown by the rebuild test (tests/vm/test_rebuild_vm.py),
  whose replacement server must come out of its drift check clean.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from botvps.paths import PROJECT_ROOT

from .vmlab import Lab, host_helper

sshcount = host_helper("sshcount")

pytestmark = [pytest.mark.vm]

WATCHED = ["/etc/ssh", "/etc/ufw", "/etc/fail2ban", "/etc/apt/apt.conf.d", "/etc/systemd/system", "/etc/botvps"]
STRAY_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBeJvdDeuhtJMr4YHSQJU/6K7jQLkgdkdGmoJlkZcd8O stray@drill"
DRILL_IPV4 = "10.0.2.99"


def run_drift(lab: Lab, inv: Path | None = None, *extra: str) -> tuple[int, dict, str, float]:
    """`invoke drift --json` as an operator runs it, with botvps' default (Ansible's own strategy, whatever the
    scenario's); (exit code, parsed JSON, all output, seconds)."""
    command = [str(Path(sys.executable).parent / "invoke"), "drift", "--json", "--inventory", str(inv or lab.inventory),
               "--vault-password-file", str(lab.password_file), *extra]
    env = {name: value for name, value in os.environ.items() if name not in ("ANSIBLE_STRATEGY", "BOTVPS_MITOGEN")}
    started = time.monotonic()
    result = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=1200, env=env,
                            stdin=subprocess.DEVNULL)
    seconds = time.monotonic() - started
    print(f"\n$ {shlex.join(command)}\n  exit {result.returncode} in {seconds:.0f} s\n{result.stderr}", file=sys.stderr)
    try:
        report = json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise AssertionError(f"drift printed no JSON (exit {result.returncode}): {result.stdout}{result.stderr}") from None
    return result.returncode, report, result.stdout + result.stderr, seconds


def snapshot(lab: Lab) -> dict[str, str]:
    """Every path under WATCHED: type, mode, owner, size, mtime, and the sha256 of files (read as root, out of band)."""
    dirs = " ".join(d for d in WATCHED)
    listing = lab.console(f"find {dirs} -xdev -printf '%p\\t%y %m %U:%G %s %T@\\n' 2>/dev/null | sort", check=False)
    sums = lab.console(f"find {dirs} -xdev -type f -print0 2>/dev/null | sort -z | xargs -0 sha256sum", check=False)
    state = dict(line.split("\t", 1) for line in listing.splitlines() if "\t" in line)
    for line in sums.splitlines():
        digest, path = line.split(None, 1)
        state[path.strip()] += " " + digest
    return state


def items(report: dict, check: str | None = None) -> list[dict]:
    [host] = report["hosts"]
    return [i for i in host["items"] if check is None or i["check"] == check]


# ---------------------------------------------------------------- drills


def _default_dev(lab: Lab) -> str:
    return lab.console("ip -o -4 route show default | awk '{print $5; exit}'").strip()


DRILLS = {
    # name: (make it, undo it, check, words the item must contain)
    "sshd-password-dropin": (
        "printf 'PasswordAuthentication yes\\n' > /etc/ssh/sshd_config.d/01-evil.conf && systemctl reload ssh",
        "rm -f /etc/ssh/sshd_config.d/01-evil.conf && systemctl reload ssh",
        "sshd", ["01-evil.conf", "PasswordAuthentication yes"]),
    "ufw-extra-rule": (
        "ufw allow 9999/tcp", "ufw delete allow 9999/tcp", "ufw-rules", ["without the botvps mark", "9999/tcp"]),
    "stray-admin-key": (
        f"echo '{STRAY_KEY}' >> /home/ops/.ssh/authorized_keys",
        "sed -i '/stray@drill/d' /home/ops/.ssh/authorized_keys", "authorized-keys", ["not in the inventory", "stray@drill"]),
    "stopped-bot": (
        "systemctl stop botvps-bot-alpha.service", "systemctl start botvps-bot-alpha.service",
        "bot-services", ["botvps-bot-alpha.service", "not running"]),
    "world-readable-secrets": (
        "chmod 0644 /etc/botvps/alpha/secrets.env", "chmod 0600 /etc/botvps/alpha/secrets.env",
        "bot-secrets", ["/etc/botvps/alpha/secrets.env", "0644", "readable by others"]),
    "changed-ipv4": (
        f"ip addr add {DRILL_IPV4}/24 dev {{dev}}", f"ip addr del {DRILL_IPV4}/24 dev {{dev}}",
        "ipv4", [f"static_ipv4 is {DRILL_IPV4}", "primary IPv4 is 10.0.2.15"]),
}
BOT_DRILLS = {"stopped-bot", "world-readable-secrets"}


@pytest.fixture(scope="module")
def drilled(lab):
    """Make every drill's change through the console, run drift once (snapshots around it), undo them all."""
    dev = _default_dev(lab)
    active = {name: d for name, d in DRILLS.items() if lab.bots or name not in BOT_DRILLS}
    # The IPv4 drill: the host gets a second address, and the inventory names it as static_ipv4.
    drill_inv = lab.tmp / "drill-inventory"
    drill_inv.mkdir()
    hosts = yaml.safe_load((lab.inventory / "hosts.yml").read_text())
    hosts["all"]["hosts"][lab.vm.name]["static_ipv4"] = DRILL_IPV4
    (drill_inv / "hosts.yml").write_text(yaml.safe_dump(hosts, sort_keys=False))
    (drill_inv / "group_vars").symlink_to(lab.inventory / "group_vars")
    junit = lab.tmp / "drift.xml"
    done = []
    try:
        for name, (make, _undo, _check, _words) in active.items():
            lab.console(make.format(dev=dev))
            done.append(name)
        before = snapshot(lab)
        syns, (code, report, output, seconds), why = sshcount.counted(
            lab.vm, lab.run, lambda: run_drift(lab, drill_inv, "--junit", str(junit)))
        after = snapshot(lab)
    finally:
        for name in reversed(done):
            lab.console(DRILLS[name][1].format(dev=dev), check=False)
    left = lab.console("ls /etc/ssh/sshd_config.d; ufw show added; grep -c stray@drill /home/ops/.ssh/authorized_keys; "
                       "ip -o -4 addr show; stat -c %a /etc/botvps/alpha/secrets.env; "
                       "systemctl is-active botvps-bot-alpha.service", check=False)
    return {"code": code, "report": report, "output": output, "seconds": seconds, "left": left, "active": active,
            "before": before, "after": after, "junit": junit, "syns": syns, "why": why}


def test_drift_changes_no_file(drilled):
    before, after = drilled["before"], drilled["after"]
    assert len(before) > 50 and any(p.startswith("/etc/botvps/alpha/secrets.env") for p in before)
    changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
    assert changed == [], "\n".join(f"{p}: {before.get(p)} -> {after.get(p)}" for p in changed)


def test_drift_stays_in_the_connection_budget(drilled):
    """From a cold controller, drills and all: at most two new SSH connections, and the admin logs in at once after."""
    sshcount.judge("invoke drift", drilled["syns"], sshcount.READ_ONLY_BUDGET, drilled["why"])


def test_no_secret_in_any_output(lab, drilled):
    assert lab.leaked(drilled["output"]) == []
    assert lab.leaked(drilled["junit"].read_text()) == []


def test_junit_has_one_testcase_per_check(lab, drilled):
    root = ET.parse(drilled["junit"]).getroot()
    [suite] = list(root.iter("testsuite"))
    assert suite.get("name") == lab.vm.name
    names = [case.get("name") for case in suite.iter("testcase")]
    assert names[:3] == ["settings", "verify", "ipv4"] and len(names) == len(set(names)) == 14


def test_drills_make_drift_exit_1(drilled, lab):
    print(f"\ndrill drift run: exit {drilled['code']} in {drilled['seconds']:.0f} s")
    for item in items(drilled["report"]):
        print(f"  {item['check']:18} {item['detail']}")
    assert drilled["code"] == 1
    assert drilled["report"]["hosts"][0]["status"] == "drifted"


@pytest.mark.parametrize("name", list(DRILLS))
def test_drill_is_named(drilled, lab, name):
    if name not in drilled["active"]:
        pytest.skip("this host has no bots")
    _make, _undo, check, words = DRILLS[name]
    found = [i for i in items(drilled["report"], check) if all(w in i["detail"] for w in words)]
    assert found, f"no {check} item with {words} in: {items(drilled['report'])}"
    assert all(i["kind"] == "drift" for i in found)


def test_drills_are_undone(drilled):
    left = drilled["left"]
    assert "01-evil.conf" not in left and "9999" not in left and DRILL_IPV4 not in left
    assert "\n0\n" in left and "600" in left and left.strip().endswith("active")


def test_check_mode_names_the_settings_it_would_restore(drilled):
    settings = [i["detail"] for i in items(drilled["report"], "settings")]
    assert any(d.startswith("firewall:") and "ufw allow 9999/tcp" in d for d in settings), settings
    assert any(d.startswith("admin:") and "/home/ops/.ssh/authorized_keys" in d for d in settings), settings
    # The stopped bot would be started, or restarted since its secrets file changed too.
    assert any(d.startswith("bots:") and re.search(r"would (re)?start botvps-bot-alpha.service", d) for d in settings), settings
    assert any("secrets files" in d and "hidden" in d for d in settings), settings
