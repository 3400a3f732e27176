"""No child process changes the operator's terminal or stdin, and every command works whatever its stdin is."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# What QEMU does where /dev/kvm exists but KVM does not work: it makes its stdio non-blocking, then aborts
# (SIGABRT, "kvm_buf_set_msrs: Assertion") without putting the flags back.
ABORTING_QEMU = textwrap.dedent("""\
    #!/usr/bin/env python3
    import fcntl, os
    for fd in (0, 1, 2):
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
    os.abort()
    """)


def _nonblocking(fd: int) -> bool:
    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK)


@pytest.fixture
def aborting_qemu(tmp_path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    qemu = bin_dir / "qemu-system-x86_64"
    qemu.write_text(ABORTING_QEMU)
    qemu.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT / "src")}


def test_the_accelerator_probe_leaves_the_callers_terminal_blocking(aborting_qemu):
    # The stand-in is faithful: run on the terminal directly, it leaves it non-blocking.
    master, slave = os.openpty()
    try:
        subprocess.run(["qemu-system-x86_64"], stdin=slave, stdout=slave, stderr=subprocess.DEVNULL, env=aborting_qemu)
        assert _nonblocking(slave)
    finally:
        os.close(master)
        os.close(slave)
    # The probe, run with a terminal as its stdin (as `invoke demo` is), leaves that terminal as it was.
    master, slave = os.openpty()
    try:
        assert not _nonblocking(slave)
        probe = ("from pathlib import Path\nfrom botvps.vm import accel\n"
                 "accel.os.access = lambda *args: True  # as if /dev/kvm were usable\n"
                 "print(accel.kvm_boots(Path('/boot/vmlinuz'), timeout=20))\n")
        result = subprocess.run([sys.executable, "-c", probe], stdin=slave, capture_output=True, text=True,
                                env=aborting_qemu, timeout=60)
        assert result.stdout.strip() == "False", result.stderr  # the QEMU that aborted: no KVM
        assert not _nonblocking(slave), "the probe's QEMU left the caller's terminal non-blocking"
    finally:
        os.close(master)
        os.close(slave)


PLAYBOOK = """\
- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - ansible.builtin.debug:
        msg: stdin is fine
"""


@pytest.mark.parametrize("stdin", ["terminal", "devnull", "closed", "nonblocking-pipe"])
def test_ansible_runs_whatever_stdin_botvps_was_given(tmp_path, stdin):
    playbook = tmp_path / "play.yml"
    playbook.write_text(PLAYBOOK)
    script = ("import sys\nfrom pathlib import Path\nfrom botvps import runner\n"
              f"result = runner.playbook(Path({str(playbook)!r}), Path('localhost,'), echo=False)\n"
              "print(result.returncode, result.recap)\nprint(result.output[-2000:], file=sys.stderr)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    command = [sys.executable, "-c", script]
    opened: list[int] = []
    if stdin == "terminal":
        master, slave = os.openpty()
        opened += [master, slave]
        kwargs = {"stdin": slave}
    elif stdin == "devnull":
        kwargs = {"stdin": subprocess.DEVNULL}
    elif stdin == "closed":
        command = ["sh", "-c", 'exec 0<&- "$@"', "sh", *command]
        kwargs = {}
    else:
        read, write = os.pipe()
        opened += [read, write]
        fcntl.fcntl(read, fcntl.F_SETFL, fcntl.fcntl(read, fcntl.F_GETFL) | os.O_NONBLOCK)
        kwargs = {"stdin": read}
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, **kwargs)
    finally:
        for fd in opened:
            os.close(fd)
    assert result.stdout.startswith("0 "), result.stdout + result.stderr
    assert "'ok': 1" in result.stdout, result.stdout
