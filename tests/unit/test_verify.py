"""botvps.verify: the verification suite's own session, whatever molecule's drill selection is."""

from __future__ import annotations

import subprocess
from pathlib import Path

from botvps import verify


def test_the_suite_runs_no_drills_and_the_demos_checks_whatever_the_environment(monkeypatch, tmp_path):
    """BOTVPS_DRILLS (molecule's budget drill skips the demo's checks in its own session) never reaches the suite."""
    seen = {}

    def run(command, **kwargs):
        seen.update(kwargs["env"])
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setenv("BOTVPS_DRILLS", "lockout,budget")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(verify.subprocess, "run", run)
    assert verify.run(Path("inventory"), vm_name="molecule-debian13") == 0
    assert "BOTVPS_DRILLS" not in seen
    assert seen["BOTVPS_VM_NAME"] == "molecule-debian13"
