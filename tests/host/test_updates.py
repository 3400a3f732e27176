"""Unattended security upgrades: one config file, proven with apt itself."""

from __future__ import annotations

import re


def test_origins_are_exactly_ours(host):
    dump = host.check_output("apt-config dump Unattended-Upgrade::Origins-Pattern")
    patterns = re.findall(r'Unattended-Upgrade::Origins-Pattern:: "(.*)";', dump)
    assert "origin=Debian,codename=${distro_codename}-security,label=Debian-Security" in patterns
    # The distribution's own list (50unattended-upgrades) is cleared: each pattern appears once.
    assert len(patterns) == len(set(patterns)), patterns
    assert all(p.startswith("origin=Debian,codename=${distro_codename}") for p in patterns), patterns


def test_periodic_upgrades_switched_on(host):
    dump = host.check_output("apt-config dump APT::Periodic")
    assert 'APT::Periodic::Unattended-Upgrade "1";' in dump
    assert 'APT::Periodic::Update-Package-Lists "1";' in dump
    assert 'Unattended-Upgrade::Automatic-Reboot "false";' in host.check_output("apt-config dump Unattended-Upgrade::Automatic-Reboot")


# unattended-upgrade names its origins at start, then spends minutes (under TCG) judging every
# package; `| head` would not stop it (Python ignores SIGPIPE). Stop it once the line is out.
DRY_RUN_UNTIL_ORIGINS = (
    'out=$(mktemp); unattended-upgrade --dry-run --debug >"$out" 2>&1 & pid=$!; '
    'for _ in $(seq 120); do grep -q "Allowed origins are:" "$out" && break; '
    'kill -0 $pid 2>/dev/null || break; sleep 1; done; '
    'kill $pid 2>/dev/null; wait $pid; head -40 "$out"; rm -f "$out"'
)


def test_dry_run_uses_the_security_origin(host):
    with host.sudo():
        result = host.run(DRY_RUN_UNTIL_ORIGINS)
    assert "Allowed origins are:" in result.stdout, result.stdout
    allowed = next(line for line in result.stdout.splitlines() if "Allowed origins are:" in line)
    assert "-security,label=Debian-Security" in allowed


def test_apt_timers_enabled(host):
    for timer in ("apt-daily.timer", "apt-daily-upgrade.timer"):
        assert host.service(timer).is_enabled
        assert host.service(timer).is_running
