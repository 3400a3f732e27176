"""roles/packages/files/apt-ready.sh, run here on lock files of its own: the bounded wait for apt's lock."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from botvps.paths import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "roles" / "packages" / "files" / "apt-ready.sh"
HOLD = "import fcntl, sys, time; f = open(sys.argv[1], 'a'); fcntl.lockf(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(float(sys.argv[2]))"


def run(lock: Path, min_free_mb: int = 0, timeout: int = 30) -> subprocess.CompletedProcess:
    # A python3 that "has" python3-apt, so the script never installs anything on this machine.
    stub = lock.parent / "bin"
    stub.mkdir(exist_ok=True)
    (stub / "python3").write_text("#!/bin/sh\nexit 0\n")
    (stub / "python3").chmod(0o755)
    return subprocess.run(["sh", str(SCRIPT), str(min_free_mb), str(timeout)], capture_output=True, text=True,
                          env={"PATH": f"{stub}:/usr/sbin:/usr/bin:/sbin:/bin", "APT_READY_LOCKS": str(lock)},
                          timeout=120)


def hold(lock: Path, seconds: float) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_free_lock_passes_silently(tmp_path):
    lock = tmp_path / "lock-frontend"
    lock.touch()
    result = run(lock)
    assert result.returncode == 0 and "waited" not in result.stdout, result


def test_waits_for_the_holder_and_names_it(tmp_path):
    lock = tmp_path / "lock-frontend"
    lock.touch()
    holder = hold(lock, 3)
    started = time.monotonic()
    result = run(lock, timeout=60)
    holder.wait()
    assert result.returncode == 0, result
    assert time.monotonic() - started >= 2
    assert f"for apt: PID {holder.pid} (" in result.stdout and str(lock) in result.stdout, result.stdout


def test_gives_up_after_the_timeout_with_what_to_do(tmp_path):
    lock = tmp_path / "lock-frontend"
    lock.touch()
    holder = hold(lock, 30)
    try:
        result = run(lock, timeout=2)
    finally:
        holder.kill()
    assert result.returncode == 4, result
    assert f"apt is still busy after 2 s: PID {holder.pid}" in result.stderr
    assert "packages_lock_timeout" in result.stderr


def test_refuses_a_nearly_full_disk_naming_the_mount(tmp_path):
    lock = tmp_path / "lock-frontend"
    result = run(lock, min_free_mb=10**9)
    assert result.returncode == 3, result
    assert "MB free on /" in result.stderr and "packages_min_free_mb" in result.stderr
