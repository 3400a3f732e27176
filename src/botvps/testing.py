"""`invoke test`: unit tier, lint, then the VM tier (molecule scenarios) with guaranteed VM teardown."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from botvps import runner
from botvps.paths import PROJECT_ROOT
from botvps.vm import machine

SCENARIOS = ("debian12", "debian13")
# VMs the test tiers start: molecule's platforms and the VM tests' fixtures.
TEST_VM_PREFIXES = ("molecule-", "test-")


def _stop_test_vms() -> None:
    for prefix in TEST_VM_PREFIXES:
        for name in machine.down_all(prefix):
            print(f"stopped leftover VM {name}")


def _terminate(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _run(title: str, command: list[str]) -> tuple[str, int, float]:
    print(f"\n=== {title}: {' '.join(command)}", flush=True)
    started = time.monotonic()
    code = subprocess.run(command, cwd=PROJECT_ROOT, env=runner.environment()).returncode
    return title, code, time.monotonic() - started


def unit() -> tuple[str, int, float]:
    # pytest exits 5 when it collected no test: that is a failure here too.
    return _run("unit", [sys.executable, "-m", "pytest", "tests/unit", "-q", "-p", "no:cacheprovider"])


def lint() -> list[tuple[str, int, float]]:
    return [
        _run("yamllint", ["yamllint", "-s", "."]),
        _run("ansible-lint", ["ansible-lint", "--profile", "production", "playbooks/", "roles", "molecule"]),
    ]


def vm_tier(scenarios: tuple[str, ...] = SCENARIOS) -> list[tuple[str, int, float]]:
    results = []
    previous = signal.signal(signal.SIGTERM, _terminate)  # a killed run still stops its VMs
    try:
        for scenario in scenarios:
            results.append(_run(f"molecule {scenario}", ["molecule", "test", "-s", scenario]))
    finally:
        _stop_test_vms()
        signal.signal(signal.SIGTERM, previous)
    return results


def run(unit_only: bool = False, vm_only: bool = False, scenarios: tuple[str, ...] = SCENARIOS) -> int:
    results: list[tuple[str, int, float]] = []
    if not vm_only:
        results.append(unit())
        results.extend(lint())
    if not unit_only:
        results.extend(vm_tier(scenarios))
    print("\n=== summary")
    for title, code, seconds in results:
        print(f"  {title:24} {'passed' if code == 0 else 'FAILED (exit %d)' % code:20} {seconds:7.0f} s")
    return 0 if all(code == 0 for _, code, _ in results) else 1
