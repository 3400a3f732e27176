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


def test_drift_runs_the_suite_without_drills_or_console_checks(monkeypatch, tmp_path):
    """invoke drift's suite inherits neither molecule's drill selection nor its VM name (no console-based checks)."""
    from botvps import drift

    seen = {}

    def run(command, **kwargs):
        seen.update(kwargs["env"])
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setenv("BOTVPS_DRILLS", "budget")
    monkeypatch.setenv("BOTVPS_VM_NAME", "molecule-debian12")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(drift.subprocess, "run", run)
    (tmp_path / "vault-password").write_text("x\n")
    found, error = drift._verify_host(Path("inventory"), "server1", str(tmp_path / "vault-password"))
    assert "BOTVPS_DRILLS" not in seen and "BOTVPS_VM_NAME" not in seen
    assert seen["ANSIBLE_VAULT_PASSWORD_FILE"] == str(tmp_path / "vault-password")
    assert "did not run" in error  # no JUnit file from the stand-in
