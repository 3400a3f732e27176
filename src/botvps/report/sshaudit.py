"""ssh-audit's built-in hardening policy, run from the controller against the host's SSH port.

ssh-audit (pinned in the dev extras) only talks SSH's key exchange: it never logs in. The policy is
the newest built-in one for the host's distribution and version ("Hardened Debian 12 (version 3)",
"Hardened Debian 13 (version 1)", "Hardened Ubuntu Server 24.04 LTS (version 2)", ...).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from botvps.report.model import FAIL, PASS, UNKNOWN, short

TIMEOUT = 30  # seconds per connection; an emulated VM is slow to answer a key exchange


@dataclass
class AuditResult:
    status: str  # PASS, FAIL or UNKNOWN (not run, or no answer)
    policy: str = ""
    target: str = ""
    failures: list[str] = field(default_factory=list)
    reason: str = ""  # why UNKNOWN, or ssh-audit's warnings


def executable() -> str | None:
    """ssh-audit next to this Python (the venv), else on PATH."""
    beside = Path(sys.executable).parent / "ssh-audit"
    return str(beside) if beside.exists() else shutil.which("ssh-audit")


def choose_policy(listing: str, os_id: str, version: str) -> str | None:
    """The newest built-in server policy for the distribution (``ssh-audit -L``'s output), None when none fits."""
    names = {"debian": f"Hardened Debian {version}", "ubuntu": f"Hardened Ubuntu Server {version} LTS"}
    prefix = names.get(os_id.lower())
    if not prefix or not version:
        return None
    candidates = re.findall(r'"(' + re.escape(prefix) + r' \(version (\d+)\))"', listing.split("Client policies")[0])
    return max(candidates, key=lambda c: int(c[1]))[0] if candidates else None


def parse(stdout: str, policy: str, target: str) -> AuditResult:
    """ssh-audit -j -P's JSON: passed, and each mismatched field with what it expected."""
    try:
        result = json.loads(stdout.strip().splitlines()[-1])
        passed = bool(result["passed"])
    except (ValueError, KeyError, IndexError, TypeError):
        return AuditResult(UNKNOWN, policy, target, reason=f"ssh-audit gave no verdict: {short(stdout, 300) or 'no output'}")
    failures = []
    for error in result.get("errors") or []:
        expected = ", ".join(error.get("expected_required") or [])
        actual = ", ".join(str(a) for a in error.get("actual") or [])
        failures.append(f"{error.get('mismatched_field', '?')}: expected {expected or '-'}, the server has {actual or '-'}")
    warnings = "; ".join(result.get("warnings") or [])
    return AuditResult(PASS if passed else FAIL, result.get("policy") or policy, target, failures, warnings)


def audit(host: str, port: int, os_id: str, version: str, timeout: int = TIMEOUT) -> AuditResult:
    """Run ssh-audit's policy scan of host:port; never raises."""
    target = f"{host}:{port}"
    program = executable()
    if program is None:
        return AuditResult(UNKNOWN, target=target, reason="ssh-audit is not installed on this controller "
                           "(it comes with the dev extras: .venv/bin/pip install ssh-audit==3.9.0)")
    try:
        listing = subprocess.run([program, "-L"], capture_output=True, text=True, timeout=60).stdout
        policy = choose_policy(listing, os_id, version)
        if policy is None:
            return AuditResult(UNKNOWN, target=target, reason=f"ssh-audit has no built-in policy for {os_id} {version}")
        done = subprocess.run([program, "-n", "-j", "-t", str(timeout), "-p", str(port), "-P", policy, host],
                              capture_output=True, text=True, timeout=timeout * 8)
    except (OSError, subprocess.SubprocessError) as exc:
        return AuditResult(UNKNOWN, target=target, reason=f"ssh-audit could not run: {exc}")
    return parse(done.stdout + ("\n" + done.stderr if not done.stdout.strip() else ""), policy, target)
