"""Benchmark bringing a test VM back to a known state: a restore from a snapshot against a provision; prints JSON.

    .venv/bin/python benchmarks/snapshots.py [--suite bookworm]

On one fresh VM with molecule's inventory (two bots, sentinel vault):
- ``provision_s``: the first provision (the state every destructive drill needs);
- ``memory_save_s`` / ``memory_restore_s``: the whole running guest (disk and memory) saved as an internal qcow2
  snapshot through QMP (``savevm``) and put back (``loadvm``, then the clock set and the controller's SSH
  connections dropped, as the drills' restore does), each timed three times;
- ``disk_only_save_s`` / ``disk_only_restore_s``: the alternative, the disk alone: a clean shutdown, ``qemu-img
  snapshot -c`` and a boot; to restore, the VM stopped hard, ``qemu-img snapshot -a`` and a boot until sshd runs;
- ``restore_vs_provision``: memory restore / provision (target: at most 0.1).
Numbers, not pass/fail. The drills use the memory snapshot (botvps.vm.machine.VM.save/restore).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time

from botvps import provision
from botvps.paths import PROJECT_ROOT
from botvps.vm import image, inventory, machine

GROUP_VARS = PROJECT_ROOT / "molecule" / "shared" / "group_vars"
VAULT_PASSWORD = str(PROJECT_ROOT / "molecule" / "shared" / "vault-password")
log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731


def _wait_gone(vm: machine.VM, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while vm.running() and time.monotonic() < deadline:
        time.sleep(0.5)
    if vm.running():
        raise RuntimeError(f"{vm.name} did not stop")


def _boot(vm: machine.VM) -> None:
    subprocess.run(machine._qemu_command(vm, image.ensure(vm.suite, log=log)), check=True,  # noqa: SLF001
                   capture_output=True, stdin=subprocess.DEVNULL)
    machine.wait_ssh(vm, timeout=300)


def disk_only_save(vm: machine.VM, tag: str) -> float:
    """The alternative to a memory snapshot: a clean shutdown, ``qemu-img snapshot -c``, and a boot until sshd runs."""
    started = time.monotonic()
    vm.console().run("systemctl poweroff", timeout=30)
    _wait_gone(vm)
    subprocess.run(["qemu-img", "snapshot", "-c", tag, str(vm.directory / "disk.qcow2")], check=True,
                   stdin=subprocess.DEVNULL)
    _boot(vm)
    return time.monotonic() - started


def disk_only_restore(vm: machine.VM, tag: str) -> float:
    """A drill's VM stopped hard, its disk put back to ``tag`` and booted until sshd runs (seconds)."""
    started = time.monotonic()
    os.kill(vm.pid() or 0, signal.SIGKILL)
    _wait_gone(vm)
    subprocess.run(["qemu-img", "snapshot", "-a", tag, str(vm.directory / "disk.qcow2")], check=True,
                   stdin=subprocess.DEVNULL)
    _boot(vm)
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--suite", default="bookworm")
    args = parser.parse_args()
    name = "bench-snapshots"
    machine.down(name)
    numbers: dict[str, object] = {"suite": args.suite}
    try:
        vm = machine.up(name, suite=args.suite, forwards=(8080, 2222), log=log)
        numbers["accel"] = vm.accel
        inv = inventory.write(vm, vm.directory / "inventory", {"admin_keys": []}, group_vars=GROUP_VARS)
        result = provision.provision(inv, vault_password_file=VAULT_PASSWORD, echo=False)
        numbers["provision_s"] = round(result.seconds, 1)
        if result.returncode != 0:
            print(result.output[-3000:], file=sys.stderr)
            return 1
        saves, restores = [], []
        for _ in range(3):
            saves.append(vm.save("provisioned"))
            vm.console().run("echo drill > /var/tmp/marker")
            restores.append(vm.restore("provisioned"))
        numbers["memory_save_s"] = [round(s, 1) for s in saves]
        numbers["memory_restore_s"] = [round(s, 1) for s in restores]
        numbers["marker_gone_after_restore"] = vm.console().run("test -e /var/tmp/marker").exit_code == 1
        size = subprocess.run(["qemu-img", "info", "--force-share", "--output=json", str(vm.directory / "disk.qcow2")],
                              capture_output=True, text=True, stdin=subprocess.DEVNULL)
        numbers["overlay_mb"] = round(json.loads(size.stdout)["actual-size"] / 2**20) if size.returncode == 0 else None
        numbers["disk_only_save_s"] = round(disk_only_save(vm, "disk-only"), 1)
        numbers["disk_only_restore_s"] = round(disk_only_restore(vm, "disk-only"), 1)
        numbers["restore_vs_provision"] = round(statistics.median(restores) / result.seconds, 3)
    finally:
        machine.down(name)
    print(json.dumps(numbers, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
