"""An Ansible inventory for a harness VM, as an operator would write one for a real VPS."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from botvps.vm.machine import VM


def host_vars(vm: VM, admin_user: str = "ops") -> dict[str, object]:
    """Connection and hardening settings for ``vm`` (literal values: testinfra does not template)."""
    return {
        "ansible_host": "127.0.0.1",
        "ansible_port": vm.ssh_port,
        "ansible_user": admin_user,
        "ansible_ssh_private_key_file": str(vm.key_file),
        "ansible_ssh_common_args": f"-o UserKnownHostsFile={vm.known_hosts} -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes",
        # The VM sits behind QEMU's port forward: sshd listens on 22, the controller reaches it on ssh_port.
        "ssh_public_port": vm.ssh_port,
        "connect_bootstrap_user": vm.user,
        "admin_user": admin_user,
        "admin_keys": [vm.key_file.with_suffix(".pub").read_text().strip()],
        # No public NTP pool is reachable from the VM: the tests serve time from 10.0.2.2.
        "timesync_ntp_servers": ["10.0.2.2"],
        # A lab VM: its address is QEMU's private 10.0.2.15.
        "botvps_lab": True,
        "static_ipv4": "10.0.2.15",
    }


def write(vm: VM, directory: Path, extra: dict[str, object] | None = None, group_vars: Path | None = None) -> Path:
    """Write ``directory``/hosts.yml for ``vm`` (with a copy of ``group_vars``, e.g. molecule's bots) and
    return the directory. The VM's own settings outrank the group's."""
    directory.mkdir(parents=True, exist_ok=True)
    if group_vars is not None:
        shutil.copytree(group_vars, directory / "group_vars", dirs_exist_ok=True)
    hosts = {"all": {"hosts": {vm.name: {**host_vars(vm), **(extra or {})}}}}
    (directory / "hosts.yml").write_text(yaml.safe_dump(hosts, sort_keys=False))
    return directory
