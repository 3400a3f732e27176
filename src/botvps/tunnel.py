"""`invoke tunnel BOT`: the bot's web UI on the controller, through an SSH tunnel to 127.0.0.1 on its server.

The UI listens on the server's 127.0.0.1 only (bots[].ui_port); sshd lets the admin forward there and nowhere
else (PermitOpen, the ssh role). The tunnel is one new SSH connection of its own, held until Ctrl-C.
"""

from __future__ import annotations

import shlex
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botvps import provision, runner, validate
from botvps.paths import PROJECT_ROOT

PLAYBOOK = PROJECT_ROOT / "playbooks" / "tunnel.yml"


@dataclass(frozen=True)
class Target:
    host: str  # inventory name
    address: str
    port: int
    user: str
    key_file: str
    ssh_args: str
    ui_port: int


def choose(params: dict[str, dict[str, Any]], bot: str, host: str | None) -> Target:
    """The one host that runs ``bot`` with a ui_port; ValueError naming the fix otherwise."""
    found = []
    for name, p in sorted(params.items()):
        for entry in p.get("bots") or []:
            if isinstance(entry, dict) and entry.get("name") == bot and entry.get("state", "present") != "absent":
                found.append((name, p, entry))
    if host:
        found = [f for f in found if f[0] == host]
    if not found:
        where = f"on host {host}" if host else "in the inventory"
        raise ValueError(f"no bot named {bot!r} {where}: give a bot's name (its bots[].name)")
    if len(found) > 1:
        raise ValueError(f"bot {bot!r} runs on {', '.join(f[0] for f in found)}: choose one with --host")
    name, p, entry = found[0]
    if not entry.get("ui_port"):
        raise ValueError(f"bot {bot!r} on {name} declares no ui_port: add ui_port: PORT (the port its UI listens on at "
                         "127.0.0.1) to its bots entry and run invoke provision")
    if not p.get("user"):
        raise ValueError(f"{name}: admin_user is not set: set it to the admin account provisioning created")
    return Target(name, str(p["host"]), int(p["port"]), str(p["user"]), str(p.get("key_file") or ""),
                  str(p.get("ssh_args") or ""), int(entry["ui_port"]))


def ssh_command(target: Target, local_port: int) -> list[str]:
    """ssh holding the forward only (-N), failing at once when it cannot (ExitOnForwardFailure), in its own
    connection (not Ansible's multiplexed one, which Ansible may close)."""
    command = ["ssh", "-N", "-o", "ExitOnForwardFailure=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=15",
               "-o", "ControlMaster=no", "-o", "ControlPath=none", "-o", "ServerAliveInterval=15",
               "-p", str(target.port)]
    if target.key_file:
        command += ["-i", str(Path(target.key_file).expanduser()), "-o", "IdentitiesOnly=yes"]
    return command + [*shlex.split(target.ssh_args), "-L", f"127.0.0.1:{local_port}:127.0.0.1:{target.ui_port}",
                      f"{target.user}@{target.address}"]


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def parameters(inventory: Path, vault_password_file: str | None) -> dict[str, dict[str, Any]]:
    report, stderr = runner.json_playbook(PLAYBOOK, inventory, provision.ansible_args(None, vault_password_file))
    if report is None:
        raise ValueError(f"ansible-playbook could not read the inventory: {stderr.strip()[-800:]}")
    return {host: result.get("msg") or {} for host, result in runner.task_results(report, "Tunnel parameters").items()}


def run(inventory: Path, bot: str, host: str | None = None, local_port: int | None = None,
        vault_password_file: str | None = None, wait: float = 40.0) -> int:
    """0 after the tunnel was up and closed (Ctrl-C, or the server ended it), 1 when it failed, 2 on bad input."""
    code, report = validate.check(inventory, vault_password_file)
    if code != validate.EXIT_OK:
        print(report, file=sys.stderr)
        return code
    try:
        target = choose(parameters(inventory, vault_password_file), bot, host)
    except ValueError as err:
        print(f"tunnel: {err}", file=sys.stderr)
        return 2
    local = local_port or target.ui_port
    if _listening(local):
        print(f"tunnel: 127.0.0.1:{local} is already in use on this machine: choose another with --local-port",
              file=sys.stderr)
        return 2
    process = subprocess.Popen(ssh_command(target, local), stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + wait
    try:
        while not _listening(local):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                why = (process.communicate()[1] or "").strip().splitlines()
                print(f"tunnel: ssh to {target.user}@{target.address}:{target.port} failed: "
                      f"{why[-1] if why else 'no tunnel within %d s' % wait}", file=sys.stderr)
                return 1
            time.sleep(0.3)
        print(f"{bot}'s UI on {target.host}: http://127.0.0.1:{local}/  (Ctrl-C closes the tunnel)", flush=True)
        process.wait()
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=10)
