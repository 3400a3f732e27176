"""Controller-side SSH access checks: who can log in, with which key, and does a fresh login work.

Used by the ``connect`` role (which account to use on a fresh server), by the
``preflight`` role (is the controller's key one of the admin keys) and by the ``ssh``
role after a change (a brand-new connection, not Ansible's persistent one, must
still log in as the admin and run sudo; otherwise the change is rolled back).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import paramiko


def known_hosts_file(ssh_args: str) -> Path:
    """The known_hosts file Ansible's ssh uses (UserKnownHostsFile in its args), else ~/.ssh/known_hosts."""
    match = re.search(r"UserKnownHostsFile=(\S+)", ssh_args or "")
    return Path(match.group(1) if match else "~/.ssh/known_hosts").expanduser()


def control_path(template: str, directory: str) -> str:
    """Ansible's ControlPath for its ssh options ``control_path`` and ``control_path_dir`` ('' when it has none)."""
    if not template:
        return ""
    folder = Path(directory or "~/.ansible/cp").expanduser()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return template % {"directory": str(folder)}


def login_error(host: str, port: int, user: str, key_file: str | None, ssh_args: str, timeout: int = 10,
                master: str = "") -> str | None:
    """None when ``ssh user@host`` with Ansible's own options logs in without a prompt, else ssh's last words.

    With ``master`` (Ansible's ControlPath) the login that works stays open as the multiplexed connection that
    Ansible, testinfra and the next botvps command use (ssh_args carry Ansible's ControlMaster/ControlPersist): the
    whole command costs the server one new connection, not one per step. Without it the login is closed again.
    """
    multiplex = ["-o", f"ControlPath={master}"] if master else ["-o", "ControlMaster=no", "-o", "ControlPath=none"]
    command = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={timeout}", *multiplex, "-p", str(port)]
    if key_file:
        command += ["-i", key_file, "-o", "IdentitiesOnly=yes"]
    command += [*shlex.split(ssh_args or ""), f"{user}@{host}", "true"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout + 20,
                                stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return "timed out"
    lines = result.stderr.strip().splitlines()
    return None if result.returncode == 0 else (lines[-1] if lines else f"ssh exited {result.returncode}")


def probe(host: str, candidates: list[tuple[str, int]], key_file: str | None, ssh_args: str,
          timeout: int = 10, master: str = "") -> dict:
    """The first (user, port) that logs in; the admin comes first, the provider's account after.

    A port whose sshd does not answer in time is not tried again with the next user: when that is the
    firewall's SSH limit (ufw drops new connections from an address that opened 6 in 30 s, and every
    dropped attempt counts), each further try would only keep the address locked out.
    """
    silent: list[int] = []
    tried: list[str] = []
    for user, port in dict.fromkeys(candidates):
        if port in silent:
            continue
        tried.append(f"{user}@{host}:{port}")
        error = login_error(host, port, user, key_file, ssh_args, timeout, master)
        if error is None:
            return {"user": user, "port": port}
        if "timed out" in error.lower():
            silent.append(port)
    hint = ("check the address, port, and that the key in ansible_ssh_private_key_file is authorized there")
    if silent:
        ports = ", ".join(map(str, silent))
        hint = (f"sshd did not answer on port {ports} in {timeout} s: if this machine opened several SSH "
                "connections in the last half minute, the server's firewall limit drops its new ones until it "
                "has seen none for 30 s, so wait a minute and run again; otherwise " + hint)
    raise SystemExit(f"cannot reach {host}: no login worked (tried {', '.join(tried)}); {hint}")


def controller_keys(key_file: str | None) -> list[str]:
    """Public keys the controller offers: the key file's .pub (or derived), else the agent's keys."""
    keys: list[str] = []
    if key_file:
        path = Path(key_file).expanduser()
        pub = path.with_name(path.name + ".pub")
        if pub.exists():
            keys.append(pub.read_text())
        else:
            derived = subprocess.run(["ssh-keygen", "-y", "-f", str(path)], capture_output=True, text=True,
                                     stdin=subprocess.DEVNULL)
            if derived.returncode == 0:
                keys.append(derived.stdout)
    if not keys:
        agent = subprocess.run(["ssh-add", "-L"], capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if agent.returncode == 0:
            keys.extend(agent.stdout.splitlines())
    return [" ".join(k.split()[:2]) for k in keys if k.strip()]


def verify(host: str, port: int, user: str, key_file: str | None, ssh_args: str, become_password: str = "",
           attempts: int = 4, delay: float = 3.0) -> dict:
    """A brand-new SSH connection logs in as ``user`` and runs sudo; sshd may still be restarting, so retry a little."""
    result: dict = {}
    for attempt in range(attempts):
        if attempt:
            time.sleep(delay)
        result = _verify_once(host, port, user, key_file, ssh_args, become_password)
        if result["ok"]:
            break
    return result


def _verify_once(host: str, port: int, user: str, key_file: str | None, ssh_args: str, become_password: str) -> dict:
    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts_file(ssh_args)))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(host, port=port, username=user, key_filename=key_file, allow_agent=key_file is None,
                       look_for_keys=key_file is None, timeout=15, banner_timeout=30, auth_timeout=30)
        command = "sudo -S -p '' true" if become_password else "sudo -n true"
        stdin, stdout, stderr = client.exec_command(command, timeout=60)
        if become_password:
            stdin.write(become_password + "\n")
            stdin.flush()
        status = stdout.channel.recv_exit_status()
        if status != 0:
            return {"ok": False, "reason": f"logged in as {user}@{host}:{port} but sudo failed: "
                    + stderr.read().decode(errors="replace").strip()}
        return {"ok": True, "reason": f"fresh login as {user}@{host}:{port} and sudo work"}
    except (paramiko.SSHException, OSError) as err:
        return {"ok": False, "reason": f"fresh login as {user}@{host}:{port} failed: {type(err).__name__}: {err}"}
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m botvps.access")
    parser.add_argument("action", choices=["probe", "keys", "verify"])
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=22)
    parser.add_argument("--user")
    parser.add_argument("--fallback", action="append", default=[], help="user:port to try after --user:--port")
    parser.add_argument("--key-file")
    parser.add_argument("--ssh-args", default="")
    parser.add_argument("--control-path", default="", help="Ansible's ssh control_path (keep the login open there)")
    parser.add_argument("--control-path-dir", default="", help="Ansible's ssh control_path_dir")
    args = parser.parse_args(argv)
    key_file = args.key_file or None
    if args.action == "probe":
        candidates = [(args.user, args.port)] + [(f.rsplit(":", 1)[0], int(f.rsplit(":", 1)[1])) for f in args.fallback]
        result = probe(args.host, candidates, key_file, args.ssh_args,
                       master=control_path(args.control_path, args.control_path_dir))
    elif args.action == "keys":
        result = {"keys": controller_keys(key_file)}
    else:
        import os

        result = verify(args.host, args.port, args.user, key_file, args.ssh_args,
                        os.environ.get("BOTVPS_BECOME_PASSWORD", ""))
    print(json.dumps(result))
    return 0 if result.get("ok", True) else 1


if __name__ == "__main__":
    sys.exit(main())
