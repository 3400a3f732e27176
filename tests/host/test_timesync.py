"""Time sync: exchanges reject signed requests whose timestamp is a few seconds off."""

from __future__ import annotations

import os

import pytest
from conftest import wait_until


def test_timesyncd_enabled(host):
    service = host.service("systemd-timesyncd")
    assert service.is_enabled and service.is_running
    assert host.check_output("timedatectl show -p NTP --value") == "yes"


@pytest.mark.skipif(os.geteuid() != 0, reason="the stand-in NTP server needs root to bind 127.0.0.1:123")
def test_clock_synchronises_and_offset_is_small(console):
    from sntp import SNTPServer

    with SNTPServer() as server:
        console("systemctl restart systemd-timesyncd")
        synced = wait_until(
            lambda: console("timedatectl show -p NTPSynchronized --value").stdout.strip() == "yes", timeout=90, interval=3
        )
        status = console("timedatectl timesync-status", check=False).stdout
    assert server.requests > 0, "the VM never asked the NTP server (is timesync_ntp_servers 10.0.2.2?)"
    assert synced, status
    offset_line = next((line for line in status.splitlines() if "Offset:" in line), "")
    print(f"clock offset reported by timesyncd: {offset_line.strip()}")
    value = offset_line.split(":", 1)[1].strip()
    assert value.endswith(("us", "ms")) and not value.startswith("+-"), offset_line
    if value.endswith("ms"):
        assert abs(float(value.rstrip("ms").lstrip("+"))) < 1000
