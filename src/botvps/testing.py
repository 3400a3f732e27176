"""`invoke test`: unit tier, lint, then the VM tier (molecule scenarios) with guaranteed VM teardown."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from botvps import runner
from botvps.paths import PROJECT_ROOT
from botvps.vm import machine

SCENARIOS = ("debian12", "debian13")
# VMs the test tiers start: molecule's platforms and the VM tests' fixtures.
TEST_VM_PREFIXES = ("molecule-", "test-")


def _stop_test_vms(env: dict[str, str | None] | None = None) -> None:
    """Stop the test VMs left over in this home, or in the home ``env`` gives (the VM tier's own)."""
    if env is None:
        for prefix in TEST_VM_PREFIXES:
            for name in machine.down_all(prefix):
                print(f"stopped leftover VM {name}")
        return
    for prefix in TEST_VM_PREFIXES:
        subprocess.run([sys.executable, "-m", "botvps.vm", "down", "--all", "--prefix", prefix], cwd=PROJECT_ROOT,
                       env=runner.environment(env), stdin=subprocess.DEVNULL)


def _terminate(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# molecule's "INFO [SCENARIO > ACTION] Executing" lines: where each phase starts.
PHASE = re.compile(r"^INFO\s+\[(?P<scenario>[^ >\]]+) > (?P<action>[^\]]+)\] Executing")


def _run(title: str, command: list[str], env: dict[str, str | None] | None = None) -> tuple[str, int, float]:
    """Run ``command`` with its output passed through; molecule's phases (create, converge, idempotence, verify,
    ...) are timed on the way and printed after it."""
    print(f"\n=== {title}: {' '.join(command)}", flush=True)
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=runner.environment(env), stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    phases: list[tuple[str, float]] = []
    assert process.stdout is not None
    for line in process.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        match = PHASE.match(line)
        if match:
            phases.append((match["action"], time.monotonic()))
    code = process.wait()
    ended = time.monotonic()
    if phases:
        rows = [f"{action} {(until - since):.0f} s" for (action, since), (_, until) in
                zip(phases, [*phases[1:], ("end", ended)])]
        print(f"=== {title} phases: " + ", ".join(rows), flush=True)
    return title, code, ended - started


def fresh_home() -> dict[str, str | None]:
    """A new empty HOME (and no XDG directories) for the VM tier, as a newcomer's machine has: nothing an earlier
    run left under ~/.ansible, ~/.cache or ~/.ssh can hide a missing setup step. ``BOTVPS_TEST_HOME=DIR`` keeps one
    home across runs instead (its image cache saves a few minutes while developing)."""
    home = os.environ.get("BOTVPS_TEST_HOME") or tempfile.mkdtemp(prefix="botvps-test-home.")
    Path(home).mkdir(parents=True, exist_ok=True)
    print(f"VM tier: HOME={home}", flush=True)
    return {"HOME": home, **{name: None for name in XDG_DIRECTORIES}}


XDG_DIRECTORIES = ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME")


def unit() -> tuple[str, int, float]:
    # pytest exits 5 when it collected no test: that is a failure here too.
    return _run("unit", [sys.executable, "-m", "pytest", "tests/unit", "-q", "-p", "no:cacheprovider"])


def lint() -> list[tuple[str, int, float]]:
    return [
        _run("yamllint", ["yamllint", "-s", "."]),
        _run("ansible-lint", ["ansible-lint", "--profile", "production", "playbooks/", "roles", "molecule"]),
    ]


def prebuild_images(scenarios: tuple[str, ...], env: dict[str, str | None]) -> tuple[subprocess.Popen, Path]:
    """Start building the scenarios' Debian images in the VM tier's home, in the background (one after the other:
    the unit tier and lint share the 2 cores meanwhile). Its output goes to a file; see :func:`await_images`."""
    from botvps.vm import image

    suites = [image.ALIASES.get(s, s) for s in scenarios if image.ALIASES.get(s, s) in image.SUITES]
    log = tempfile.NamedTemporaryFile(prefix="botvps-prebuild.", suffix=".log", delete=False)
    print(f"images: building {', '.join(suites)} in the background while the unit tier and lint run ({log.name})",
          flush=True)
    with log:
        process = subprocess.Popen([sys.executable, "-m", "botvps.vm", "build", *suites], cwd=PROJECT_ROOT,
                                   env=runner.environment(env), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                   start_new_session=True)
    return process, Path(log.name)


def await_images(build: subprocess.Popen, log: Path, started: float) -> None:
    """Wait for :func:`prebuild_images`. A failed build is not fatal here: molecule's create builds again and
    fails with the reason in the open."""
    code = build.wait()
    waited = time.monotonic() - started
    if code == 0:
        print(f"images: ready ({waited:.0f} s after the start of the unit tier)", flush=True)
    else:
        tail = log.read_text(errors="replace").strip().splitlines()[-10:]
        print(f"images: the background build failed (exit {code}); molecule's create tries again:\n  "
              + "\n  ".join(tail), flush=True)
    log.unlink(missing_ok=True)


def _kill_group(process: subprocess.Popen | None) -> None:
    """Stop a background job and everything it started (its own session)."""
    if process is None or process.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
            process.wait(timeout=30)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def vm_tier(scenarios: tuple[str, ...] = SCENARIOS, env: dict[str, str | None] | None = None
            ) -> list[tuple[str, int, float]]:
    results = []
    env = env or fresh_home()
    # A killed or hung-up run still stops its VMs (no qemu process outlives `invoke test`).
    previous = {sig: signal.signal(sig, _terminate) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        for scenario in scenarios:
            results.append(_run(f"molecule {scenario}", ["molecule", "test", "-s", scenario], env))
    finally:
        _stop_test_vms(env)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return results


def run(unit_only: bool = False, vm_only: bool = False, scenarios: tuple[str, ...] = SCENARIOS) -> int:
    results: list[tuple[str, int, float]] = []
    env = None if unit_only else fresh_home()
    # The images take a minute or two to build, on other resources than the unit tier (the network, dpkg in a
    # chroot): built meanwhile, the VM tier starts by booting.
    build, log = prebuild_images(scenarios, env) if env is not None and not vm_only else (None, None)
    started = time.monotonic()
    previous = {sig: signal.signal(sig, _terminate) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        if not vm_only:
            results.append(unit())
            results.extend(lint())
        if build is not None and log is not None:
            await_images(build, log, started)
    finally:
        _kill_group(build)  # interrupted: no build outlives the run
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if env is not None:
        results.extend(vm_tier(scenarios, env))
    print("\n=== summary")
    for title, code, seconds in results:
        print(f"  {title:24} {'passed' if code == 0 else 'FAILED (exit %d)' % code:20} {seconds:7.0f} s")
    return 0 if all(code == 0 for _, code, _ in results) else 1
