"""Benchmark provisioning, re-provisioning and drift on fresh Debian VMs (issue 8); prints JSON.

    .venv/bin/python benchmarks/provision.py [--suite bookworm] [--fleet 1,2,4] [--no-baseline] [--mitogen]

For one VM, with molecule's inventory (two bots, sentinel vault):
- ``apt_baseline_s``: a second fresh VM installs the same packages with one ``apt-get install``
  (the floor for a first provision: downloads and dpkg, no Ansible);
- ``first_provision_s``, ``rerun_s`` (nothing to change), ``drift_s`` (the full ``invoke drift``);
- ``tasks`` and ``ssh_operations`` of each run: task results in the recap, and ssh processes
  Ansible started (counted by a wrapper set as ``ANSIBLE_SSH_EXECUTABLE``);
- ratios against the targets: rerun/first <= 0.35, first/apt baseline <= 1.5.
With ``--fleet 1,2,4``: that many VMs are provisioned together, then drift runs on the first 1,
2 and 4 of them: ``fleet_drift_s`` (target: 4 VMs <= 1.5 x 1 VM). With ``--mitogen``: the same
runs with Mitogen's strategy (needs ``pip install mitogen``).
Numbers, not pass/fail. On an emulated (TCG) 2-core machine every VM competes for the same cores.
"""

from __future__ import annotations

import argparse
import json
import os
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


def counted(counts: Path, fn):
    counts.write_text("")
    started = time.monotonic()
    value = fn()
    return value, round(time.monotonic() - started, 1), len(counts.read_text().splitlines())


def write_fleet_inventory(vms: list[machine.VM], directory: Path) -> Path:
    """One inventory with all ``vms`` (each with its own connection settings) and molecule's group_vars."""
    directory.mkdir(parents=True, exist_ok=True)
    hosts = {vm.name: inventory.host_vars(vm) for vm in vms}
    (directory / "hosts.yml").write_text(yaml.safe_dump({"all": {"hosts": hosts}}, sort_keys=False))
    shutil.copytree(GROUP_VARS, directory / "group_vars", dirs_exist_ok=True)
    return directory


def apt_baseline(suite: str, packages: list[str]) -> float:
    name = "bench-apt-" + image.resolve_suite(suite)
    machine.down(name)
    try:
        vm = machine.up(name, suite=suite, log=log)
        command = ("DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive "
                   f"apt-get install -y -qq --no-install-recommends {' '.join(packages)}")
        started = time.monotonic()
        result = vm.console().run(command, timeout=1800)
        seconds = round(time.monotonic() - started, 1)
        if result.exit_code != 0:
            raise RuntimeError(f"apt baseline failed: {result.stderr[-500:]}")
        return seconds
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="bookworm")
    parser.add_argument("--fleet", default="", help="comma-separated fleet sizes for drift, e.g. 1,2,4")
    parser.add_argument("--no-baseline", action="store_true", help="skip the apt-get baseline VM")
    parser.add_argument("--mitogen", action="store_true", help="also time first/rerun with Mitogen's strategy")
    args = parser.parse_args()
    sizes = sorted({int(n) for n in args.fleet.split(",") if n.strip()})
    numbers: dict[str, object] = {"suite": args.suite}
    work = Path(tempfile.mkdtemp(prefix="botvps-bench-"))
    wrapper, counts = ssh_counter(work)
    os.environ["ANSIBLE_SSH_EXECUTABLE"] = str(wrapper)
    count = max(sizes or [1])
    names = [f"bench-{i}" for i in range(count)]
    for name in names:
        machine.down(name)
    try:
        with ThreadPoolExecutor(max_workers=count) as pool:
            vms = list(pool.map(lambda n: machine.up(n, suite=args.suite, log=log), names))
        numbers["accel"] = vms[0].accel
        one = write_fleet_inventory(vms[:1], work / "one")
        fleet = write_fleet_inventory(vms, work / "fleet")
        if not args.no_baseline:
            packages = wanted_packages()
            numbers["apt_packages"] = packages
            numbers["apt_baseline_s"] = apt_baseline(args.suite, packages)
        first, numbers["first_provision_s"], numbers["first_ssh_operations"] = counted(
            counts, lambda: provision.provision(one, vault_password_file=VAULT_PASSWORD, echo=False))
        numbers["first_tasks"] = sum(sum(r.values()) - r["changed"] for r in first.recap.values())
        again, numbers["rerun_s"], numbers["rerun_ssh_operations"] = counted(
            counts, lambda: provision.provision(one, vault_password_file=VAULT_PASSWORD, echo=False))
        numbers["rerun_tasks"] = sum(sum(r.values()) - r["changed"] for r in again.recap.values())
        numbers["rerun_changed"] = again.changed
        reports, numbers["drift_s"], numbers["drift_ssh_operations"] = counted(
            counts, lambda: drift.check(one, vault_password_file=VAULT_PASSWORD, log=log))
        numbers["drift_exit"] = drift.exit_code(reports)
        if args.mitogen:
            os.environ["ANSIBLE_STRATEGY_PLUGINS"] = mitogen_strategy_dir()
            os.environ["ANSIBLE_STRATEGY"] = "mitogen_linear"
            again, numbers["mitogen_rerun_s"], _ = counted(
                counts, lambda: provision.provision(one, vault_password_file=VAULT_PASSWORD, echo=False))
            numbers["mitogen_rerun_changed"] = again.changed
            numbers["mitogen_rerun_ok"] = again.returncode == 0
            del os.environ["ANSIBLE_STRATEGY_PLUGINS"], os.environ["ANSIBLE_STRATEGY"]
        if numbers.get("first_provision_s"):
            numbers["rerun_over_first"] = round(numbers["rerun_s"] / numbers["first_provision_s"], 2)  # type: ignore[operator]
            if "apt_baseline_s" in numbers:
                numbers["first_over_apt_baseline"] = round(
                    numbers["first_provision_s"] / numbers["apt_baseline_s"], 2)  # type: ignore[operator]
        if len(vms) > 1:
            result, numbers["fleet_first_provision_s"], _ = counted(
                counts, lambda: provision.provision(fleet, vault_password_file=VAULT_PASSWORD, echo=False,
                                                    progress=True))
            numbers["fleet_provision_ok"] = result.returncode == 0
        fleet_drift: dict[str, float] = {}
        for size in sizes:
            inv = one if size == 1 else write_fleet_inventory(vms[:size], work / f"fleet-{size}")
            _, fleet_drift[str(size)], _ = counted(counts, lambda: drift.check(inv, vault_password_file=VAULT_PASSWORD,
                                                                               log=log))
        if fleet_drift:
            numbers["fleet_drift_s"] = fleet_drift
            if "1" in fleet_drift and str(max(sizes)) in fleet_drift:
                numbers["fleet_drift_ratio"] = round(fleet_drift[str(max(sizes))] / fleet_drift["1"], 2)
    finally:
        for name in names:
            machine.down(name)
    print(json.dumps(numbers, indent=2))
    return 0


def mitogen_strategy_dir() -> str:
    import ansible_mitogen  # noqa: F401 - pip install mitogen

    return str(Path(ansible_mitogen.__file__).parent / "plugins" / "strategy")


if __name__ == "__main__":
    sys.exit(main())
