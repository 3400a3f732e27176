"""`invoke demo`: boot a throwaway VPS, provision it as a real one would be (one bot included), verify it, and
show how to connect."""

from __future__ import annotations

import os
import secrets as random
from pathlib import Path
from typing import Any

from botvps import paths, provision, secrets, verify
from botvps.vm import inventory, machine

BOT = "demo"
KEY_VAR = "DEMO_API_KEY"


def bot() -> dict[str, Any]:
    """The demo's bot: examples/simplebot, which never contacts an exchange, so its key is a stand-in."""
    return {"name": BOT, "source": {"path": "examples/simplebot"}, "command": ["python3", "bot.py"],
            "exchange": "none", "secrets": [KEY_VAR], "timeout_stop_sec": 30}


def password_file(directory: Path) -> Path:
    """The demo vault's password: random, made once, readable by the operator only."""
    path = directory / "vault-password"
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(random.token_urlsafe(32) + "\n")
    return path


def write_inventory(vm: machine.VM, directory: Path) -> tuple[Path, Path]:
    """The demo's inventory (``directory``/inventory: the VM, one bot) and vault password file (beside it: Ansible
    reads every file in an inventory directory). The bot's stand-in key, made once, is encrypted in
    group_vars/all/vault.yml as ``invoke secrets.set`` would store a real one."""
    password = password_file(directory)
    inv = inventory.write(vm, directory / "inventory", {"bots": [bot()]})
    vault = inv / "group_vars" / "all" / "vault.yml"
    vault.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.read_password_file(password)
    if KEY_VAR not in secrets.get_secrets(vault, secret, BOT):
        secrets.set_secret(vault, secret, BOT, KEY_VAR, "demo-" + random.token_hex(16))
    return inv, password


def run(name: str = "demo", suite: str = "bookworm") -> int:
    try:
        vm = machine.load(name)
        if not vm.running():
            raise machine.VMError("not running")
        print(f"demo: reusing the running VM {name}")
    except machine.VMError:
        vm = machine.up(name, suite=suite, user="root", forwards=(8080,))
    inv, password = write_inventory(vm, paths.home() / "demo" / name)
    print(f"demo: provisioning {name} with {inv}/hosts.yml and one bot, {BOT!r} (examples/simplebot); "
          "the VM was handed over as root with a key")
    result = provision.provision(inv, vault_password_file=str(password))
    if result.returncode != 0:
        print("demo: provisioning failed; the VM stays up for a look: invoke vm.ssh " + name)
        return result.returncode
    print("demo: verifying the server's live state ...")
    # The drills marked "lab" re-provision the VM with molecule's inventory, and those marked "connections" open SSH
    # connections of their own on purpose: the test suite runs them, not the demo. The demo's checks share one
    # multiplexed connection, so the commands it prints work at once (the firewall allows 6 new ones per 30 s).
    checks = verify.run(inv, vm_name=name, extra=["-m", verify.DEMO_CHECKS], vault_password_file=password)
    print()
    print(f"demo: provisioned in {result.seconds:.0f} s, {result.changed} changes; checks "
          + ("passed" if checks == 0 else "FAILED (see above)"))
    print(f"demo: connect as the admin:  ssh -i {vm.key_file} -p {vm.ssh_port} ops@127.0.0.1")
    print(f"      or: invoke vm.ssh {name} --user ops      console (no SSH): invoke vm.console {name} 'CMD'")
    print(f"      the bot's log: sudo journalctl -u botvps-bot-{BOT}      its state: /var/lib/botvps/{BOT}")
    print(f"      re-run: invoke provision --inventory {inv} --vault-password-file {password}")
    print(f"      stop: invoke vm.down {name}")
    return checks
