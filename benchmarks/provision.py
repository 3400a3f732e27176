"""Benchmark provisioning, re-provisioning and drift on fresh Debian VMs (issue 8); prints JSON.

    .venv/bin/python benchmarks/provision.py [--suite bookworm] [--fleet 1,2,4] [--no-baseline] [--mitogen]

For one VM, with molecule's inventory (two bots, sentinel vault):
- ``apt_baseline_s``: a second fresh VM installs the same packages with one ``apt-get install``
  (the floor for a first provision: downloads and dpkg, no Ansible), split into update, download
  (what the harness' optional apt cache could save at most) and install;
- ``first_provision_s``, ``rerun_s`` (nothing to change), ``drift_s`` (the full ``invoke drift``);
- ``tasks`` and ``ssh_operations`` of each run: task results in the recap, and ssh processes
  Ansible started (counted by a wrapper set as ``ANSIBLE_SSH_EXECUTABLE``);
- ratios against the targets: rerun/first <= 0.35, first/apt baseline <= 1.5.
With ``--fleet 1,2,4``: that many VMs are provisioned together, then drift runs on the first 1,
2 and 4 of them: ``fleet_drift_s`` (target: 4 VMs <= 1.5 x 1 VM). With ``--mitogen``: every run
(first, re-run, drift, fleet) uses Mitogen's strategy (``BOTVPS_MITOGEN=1``); run it once with
and once without to compare.
Each timed step also reports ``*_controller_cpu_s``: the CPU seconds the controller's own
processes (ansible-playbook, the verification suite) spent, apart from the hosts' work. On real
servers only that part is shared by a fleet; here every emulated (TCG) VM also competes for the
same 2 cores, so a fleet's wall time measures this machine more than the toolkit.
When run as root, an SNTP stand-in serves time on 127.0.0.1:123 (the VMs' 10.0.2.2), so drift's
clock check can pass; ``drift_findings`` lists what drift reported.
Numbers, not pass/fail.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from botvps import drift, provision
from botvps.paths import PROJECT_ROOT
from botvps.vm import image, inventory, machine

GROUP_VARS = PROJECT_ROOT / "molecule" / "shared" / "group_vars"
VAULT_PASSWORD = str(PROJECT_ROOT / "molecule" / "shared" / "vault-password")
log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731


def ssh_counter(directory: Path) -> tuple[Path, Path]:
    """A wrapper around ssh that logs one line per invocation; returns (wrapper, log)."""
    counts = directory / "ssh-count.log"
    wrapper = directory / "ssh"
    wrapper.write_text(f"#!/bin/sh\necho x >> {shlex.quote(str(counts))}\nexec /usr/bin/ssh \"$@\"\n")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    return wrapper, counts


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def counted(counts: Path, fn, numbers: dict[str, object] | None = None, key: str = ""):
    """Run ``fn``; return (value, wall seconds, ssh operations). With ``numbers`` and ``key``,
    also record ``KEY_controller_cpu_s`` (CPU of the child processes that ended meanwhile)."""
    counts.write_text("")
    cpu = _children_cpu()
    started = time.monotonic()
    value = fn()
    seconds = round(time.monotonic() - started, 1)
    if numbers is not None and key:
        numbers[f"{key}_controller_cpu_s"] = round(_children_cpu() - cpu, 1)
    return value, seconds, len(counts.read_text().splitlines())


def sntp_stand_in():
    """The tests' SNTP server on 127.0.0.1:123 when this process may bind it; else nothing."""
    if os.geteuid() != 0:
        return contextlib.nullcontext()
    sys.path.insert(0, str(PROJECT_ROOT / "tests" / "host"))
    from sntp import SNTPServer

    return SNTPServer()


def timed_drift(inventory: Path, numbers: dict[str, object], key: str, counts: Path):
    """``drift.check`` with its phases (playbook, verification suite) timed from its own log lines."""
    phases: dict[str, float] = {}

    def note(message: str) -> None:
        log(message)
        match = re.match(r"drift: (playbook|verification suite) done in (\d+) s", message)
        if match:
            phases[match.group(1).split()[0]] = float(match.group(2))

    reports, numbers[f"{key}_s"], ssh_ops = counted(
        counts, lambda: drift.check(inventory, vault_password_file=VAULT_PASSWORD, log=note), numbers, key)
    numbers[f"{key}_phases_s"] = phases
    numbers[f"{key}_exit"] = drift.exit_code(reports)
    numbers[f"{key}_findings"] = [f"{r.host} {i.check}: {i.detail}" for r in reports for i in r.items]
    return ssh_ops


def write_fleet_inventory(vms: list[machine.VM], directory: Path) -> Path:
    """One inventory with all ``vms`` (each with its own connection settings) and molecule's group_vars.
    Only the first VM runs molecule's two bots: a bot's name and API key are refused on two hosts."""
    directory.mkdir(parents=True, exist_ok=True)
    hosts = {vm.name: {**inventory.host_vars(vm), **({} if i == 0 else {"bots": []})} for i, vm in enumerate(vms)}
    (directory / "hosts.yml").write_text(yaml.safe_dump({"all": {"hosts": hosts}}, sort_keys=False))
    shutil.copytree(GROUP_VARS, directory / "group_vars", dirs_exist_ok=True)
    return directory


def apt_baseline(suite: str, packages: list[str], numbers: dict[str, object]) -> None:
    """The floor: a fresh VM installs ``packages`` with one ``apt-get install``. Recorded in steps:
    ``apt_update_s`` (package lists), ``apt_download_s`` (the .debs: all an apt cache could save),
    ``apt_install_s`` (dpkg, from the local archive), and their sum ``apt_baseline_s``."""
    name = "bench-apt-" + image.resolve_suite(suite)
    machine.down(name)
    try:
        vm = machine.up(name, suite=suite, log=log)
        apt = "DEBIAN_FRONTEND=noninteractive apt-get -qq"
        install = f"{apt} install -y --no-install-recommends {' '.join(packages)}"
        total = 0.0
        for key, command in (("apt_update_s", f"{apt} update"), ("apt_download_s", f"{install} --download-only"),
                             ("apt_install_s", install)):
            started = time.monotonic()
            result = vm.console().run(command, timeout=1800)
            seconds = round(time.monotonic() - started, 1)
            if result.exit_code != 0:
                raise RuntimeError(f"apt baseline failed at {key}: {result.stderr[-500:]}")
            numbers[key] = seconds
            total += seconds
        numbers["apt_baseline_s"] = round(total, 1)
    finally:
        machine.down(name)


def wanted_packages() -> list[str]:
    """What the packages role installs with every role on and molecule's bots (path sources: nftables only)."""
    wanted = ["sudo", "nftables"]
    for role in ("firewall", "updates", "fail2ban", "timesync"):
        defaults = yaml.safe_load((PROJECT_ROOT / "roles" / role / "defaults" / "main.yml").read_text())
        value = defaults[f"{role}_packages"]
        wanted += value
    return sorted(set(wanted))


def measure(args: argparse.Namespace, sizes: list[int], names: list[str], numbers: dict[str, object],
            work: Path, counts: Path) -> None:
    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        vms = list(pool.map(lambda n: machine.up(n, suite=args.suite, log=log), names))
    numbers["accel"] = vms[0].accel
    one = write_fleet_inventory(vms[:1], work / "one")
    if not args.no_baseline:
        packages = wanted_packages()
        numbers["apt_packages"] = packages
        apt_baseline(args.suite, packages, numbers)

    def provision_one():
        return provision.provision(one, vault_password_file=VAULT_PASSWORD, echo=False)

    first, numbers["first_provision_s"], numbers["first_ssh_operations"] = counted(
        counts, provision_one, numbers, "first_provision")
    numbers["first_ok"] = first.returncode == 0
    numbers["first_tasks"] = sum(sum(r.values()) - r["changed"] for r in first.recap.values())
    again, numbers["rerun_s"], numbers["rerun_ssh_operations"] = counted(counts, provision_one, numbers, "rerun")
    numbers["rerun_tasks"] = sum(sum(r.values()) - r["changed"] for r in again.recap.values())
    numbers["rerun_changed"] = again.changed
    numbers["drift_ssh_operations"] = timed_drift(one, numbers, "drift", counts)
    numbers["rerun_over_first"] = round(numbers["rerun_s"] / numbers["first_provision_s"], 2)  # type: ignore[operator]
    if "apt_baseline_s" in numbers:
        numbers["first_over_apt_baseline"] = round(
            numbers["first_provision_s"] / numbers["apt_baseline_s"], 2)  # type: ignore[operator]
    if len(vms) > 1:
        fleet = write_fleet_inventory(vms, work / "fleet")
        together, numbers["fleet_provision_s"], _ = counted(
            counts, lambda: provision.provision(fleet, vault_password_file=VAULT_PASSWORD, echo=False, progress=True))
        numbers["fleet_provision_ok"] = together.returncode == 0
    fleet_drift: dict[str, dict[str, object]] = {}
    for size in sizes:
        inv = one if size == 1 else write_fleet_inventory(vms[:size], work / f"fleet-{size}")
        fleet_drift[str(size)] = {}
        timed_drift(inv, fleet_drift[str(size)], "drift", counts)
    if fleet_drift:
        numbers["fleet_drift"] = fleet_drift
        if "1" in fleet_drift and len(sizes) > 1:
            base = float(fleet_drift["1"]["drift_s"])  # type: ignore[arg-type]
            numbers["fleet_drift_ratio"] = {size: round(float(r["drift_s"]) / base, 2)  # type: ignore[arg-type]
                                            for size, r in fleet_drift.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="bookworm")
    parser.add_argument("--fleet", default="", help="comma-separated fleet sizes for drift, e.g. 1,2,4")
    parser.add_argument("--no-baseline", action="store_true", help="skip the apt-get baseline VM")
    parser.add_argument("--mitogen", action="store_true", help="every run with Mitogen's strategy")
    args = parser.parse_args()
    sizes = sorted({int(n) for n in args.fleet.split(",") if n.strip()})
    numbers: dict[str, object] = {"suite": args.suite, "strategy": "mitogen" if args.mitogen else "ansible"}
    if args.mitogen:
        os.environ["BOTVPS_MITOGEN"] = "1"
    work = Path(tempfile.mkdtemp(prefix="botvps-bench-"))
    wrapper, counts = ssh_counter(work)
    os.environ["ANSIBLE_SSH_EXECUTABLE"] = str(wrapper)
    count = max(sizes or [1])
    names = [f"bench-{i}" for i in range(count)]
    for name in names:
        machine.down(name)
    try:
        with sntp_stand_in():  # for the whole run: the timesync role restarts timesyncd in the first provision
            measure(args, sizes, names, numbers, work, counts)
    finally:
        for name in names:
            machine.down(name)
    print(json.dumps(numbers, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
