"""botvps tasks: a thin layer over the botvps package (see `invoke --list`)."""

from __future__ import annotations

from pathlib import Path

from invoke import Collection, Exit, task

from botvps import audit
from botvps import backup as backup_module
from botvps import demo as demo_module
from botvps import drift as drift_module
from botvps import provision as provision_module
from botvps import rebuild as rebuild_module
from botvps import secrets as secrets_module
from botvps import testing
from botvps import tunnel as tunnel_module
from botvps.report import command as report_command
from botvps.vm import cli as vm_cli


def _exit(code: int) -> None:
    if code:
        raise Exit(code=code)


@task(help={"inventory": "inventory directory (default inventory/)", "limit": "only these hosts",
            "vault_password_file": "file with the vault password",
            "progress": "one line per host and role instead of every task (for fleets)",
            "check": "only show what would change on each host (retirements included); change nothing"})
def provision(c, inventory="inventory", limit=None, vault_password_file=None, progress=False, check=False):
    """Harden the servers in the inventory and host their bots (safe to re-run)."""
    if check:
        _exit(provision_module.check(Path(inventory), limit=limit, vault_password_file=vault_password_file))
    result = provision_module.provision(Path(inventory), limit=limit, vault_password_file=vault_password_file,
                                        progress=progress)
    _exit(result.returncode)


@task(help={"inventory": "inventory directory", "host": "only this host", "bot": "only this bot",
            "vault_password_file": "file with the vault password", "json": "machine-readable output"})
def audit_keys(c, inventory="inventory", host=None, bot=None, vault_password_file=None, json=False):  # noqa: A002
    """Ask each exchange, from the bot's own server, whether its key can withdraw or is not IP-restricted."""
    _exit(audit.run(Path(inventory), host=host, bot=bot, vault_password_file=vault_password_file, as_json=json))


@task(help={"bot": "bot name", "host": "the host, when the bot runs on several",
            "local_port": "port on this machine (default: the bot's ui_port)", "inventory": "inventory directory",
            "vault_password_file": "file with the vault password"}, positional=["bot"])
def tunnel(c, bot, host=None, local_port=None, inventory="inventory", vault_password_file=None):
    """Open an SSH tunnel to a bot's web UI (its ui_port on the server's 127.0.0.1) and print the local URL."""
    _exit(tunnel_module.run(Path(inventory), bot, host=host, local_port=int(local_port) if local_port else None,
                            vault_password_file=vault_password_file))


@task(help={"bot": "bot name", "name": "environment variable (e.g. BINANCE_KEY)", "inventory": "inventory directory",
            "vault_password_file": "file with the vault password",
            "from_file": "read the value from this file (e.g. a PEM private key)",
            "keep_final_newline": "keep the final newline of --from-file (removed by default)"})
def secrets_set(c, bot, name, inventory="inventory", vault_password_file=None, from_file=None,
                keep_final_newline=False):
    """Store a bot's secret in the vault (asked without echo, PEM keys pasted whole; plaintext never hits the disk)."""
    args = ["set", bot, name, "--vault", str(Path(inventory) / "group_vars" / "all" / "vault.yml")]
    args += ["--vault-password-file", vault_password_file] if vault_password_file else []
    args += ["--from-file", from_file] if from_file else []
    _exit(secrets_module.main(args + (["--keep-final-newline"] if keep_final_newline else [])))


@task(help={"bot": "only this bot", "inventory": "inventory directory", "vault_password_file": "vault password file"})
def secrets_list(c, bot=None, inventory="inventory", vault_password_file=None):
    """List the secret names in the vault (never their values)."""
    args = ["list", *([bot] if bot else []), "--vault", str(Path(inventory) / "group_vars" / "all" / "vault.yml")]
    _exit(secrets_module.main(args + (["--vault-password-file", vault_password_file] if vault_password_file else [])))


@task(help={"inventory": "inventory directory (default inventory/)", "host": "only this host",
            "out": "directory for HOST.html and HOST.md (default reports/)",
            "vault_password_file": "file with the vault password"})
def report(c, inventory="inventory", host=None, out="reports", vault_password_file=None):
    """Security report per host (HTML and Markdown): scorecard and the last 30 days' log review. Read-only."""
    _exit(report_command.run(Path(inventory), host=host, out=Path(out), vault_password_file=vault_password_file))


@task(help={"suite": "bookworm (Debian 12) or trixie (Debian 13)", "name": "VM name"})
def demo(c, suite="bookworm", name="demo"):
    """Boot a throwaway local VPS, provision and verify it, and show how to connect."""
    _exit(demo_module.run(name=name, suite=suite))


@task(help={"unit": "only the unit tier and lint", "vm": "only the VM tier",
            "scenario": "one molecule scenario (debian12|debian13)"})
def test(c, unit=False, vm=False, scenario=None):
    """Run the unit tier, lint, and the VM tier (molecule on Debian 12 and 13)."""
    scenarios = (scenario,) if scenario else testing.SCENARIOS
    _exit(testing.run(unit_only=unit, vm_only=vm, scenarios=scenarios))


@task(help={"name": "VM name", "suite": "bookworm|trixie", "user": "handover account: root|debian",
            "forward": "extra guest TCP port to forward (repeatable)"}, iterable=["forward"])
def vm_up(c, name, suite="bookworm", user="root", forward=None):
    """Boot a throwaway VM (builds the Debian image on first use)."""
    _exit(vm_cli.main(["up", name, "--suite", suite, "--user", user, *[f"--forward={p}" for p in forward or []]]))


@task(help={"name": "VM name"}, positional=["name"])
def vm_down(c, name):
    """Stop a VM and delete its disk."""
    _exit(vm_cli.main(["down", name]))


@task
def vm_down_all(c):
    """Stop every throwaway VM and delete their disks (invoke cannot leave vm.down's NAME out)."""
    _exit(vm_cli.main(["down", "--all"]))


@task
def vm_list(c):
    """List the throwaway VMs."""
    _exit(vm_cli.main(["list"]))


@task(help={"name": "VM name", "user": "log in as this user (default: the handover account)"})
def vm_ssh(c, name, user=None):
    """SSH into a VM."""
    vm_cli.main(["ssh", name] + (["--user", user] if user else []))


@task(help={"name": "VM name", "command": "shell command to run as root"})
def vm_console(c, name, command):
    """Run a command as root through the VM's guest agent (works without SSH)."""
    _exit(vm_cli.main(["console", name, command]))


@task(name="check", default=True,
      help={"inventory": "inventory directory (default inventory/)", "limit": "only these hosts",
            "json": "one JSON line for machines", "junit": "also write JUnit XML here",
            "vault_password_file": "file with the vault password"})
def drift_check(c, inventory="inventory", limit=None, json=False, junit=None, vault_password_file=None):
    """Read-only: what differs from the provisioned state (exit 0 clean, 1 drift, 2 unreachable/error)."""
    _exit(drift_module.run(Path(inventory), limit=limit, as_json=json, junit=junit, vault_password_file=vault_password_file))


@task(name="schedule", help={"inventory": "inventory directory", "install": "write the units to ~/.config/systemd/user",
                             "limit": "only these hosts", "vault_password_file": "file with the vault password"})
def drift_schedule(c, inventory="inventory", install=False, limit=None, vault_password_file=None):
    """Print (or --install) a daily systemd user timer running `invoke drift --json` into the history."""
    _exit(drift_module.schedule(Path(inventory), vault_password_file=vault_password_file, limit=limit, install=install))


@task(name="history", help={"host": "only this host"})
def drift_history(c, host=None):
    """Past drift runs per host: time, status, number of items."""
    _exit(drift_module.history(host=host))


drift = Collection("drift", drift_check, drift_schedule, drift_history)


@task(name="backup", help={"bot": "only this bot", "host": "only this host",
                           "out": "backup directory (default backups/)", "inventory": "inventory directory",
                           "vault_password_file": "file with the vault password"})
def bots_backup(c, bot=None, host=None, out="backups", inventory="inventory", vault_password_file=None):
    """Copy each bot's state to OUT/HOST/STAMP with checksums (graceful stop, or online SQLite copy); no secrets."""
    _exit(backup_module.run(Path(inventory), bot=bot, host=host, out=Path(out),
                            vault_password_file=vault_password_file))


bots = Collection("bots", bots_backup)


@task(help={"host": "the replacement server's inventory host (its ansible_host and static_ipv4 already updated)",
            "restore_from": "backup directory (OUT/HOST/STAMP, or OUT/HOST for its newest)",
            "inventory": "inventory directory", "vault_password_file": "file with the vault password",
            "force_restore": "restore even bots already restored from this backup (their newer state is lost)",
            "report": "also write a JSON report here",
            "new_key": "this bot's key is new and its old key is revoked at the exchange (repeatable; the fence "
                       "where the exchange does not show the whitelist: binance, coinbase)",
            "accept_two_servers_risk": "start the bots unfenced: only when the old server is destroyed at the "
                                       "provider (if it comes back, two servers trade one account)"},
      iterable=["new_key"])
def rebuild(c, host, restore_from=None, inventory="inventory", vault_password_file=None, force_restore=False,
            report=None, new_key=None, accept_two_servers_risk=False):
    """Provision a replacement server, fence the old one off, restore the bots' state, start them, check drift."""
    _exit(rebuild_module.run(Path(inventory), host, Path(restore_from) if restore_from else None, vault_password_file,
                             force_restore, Path(report) if report else None, list(new_key or []),
                             accept_two_servers_risk))


vm = Collection("vm")
for name, fn in {"up": vm_up, "down": vm_down, "down-all": vm_down_all, "list": vm_list, "ssh": vm_ssh,
                 "console": vm_console}.items():
    vm.add_task(fn, name=name)

secrets = Collection("secrets")
secrets.add_task(secrets_set, name="set")
secrets.add_task(secrets_list, name="list")

ns = Collection(provision, rebuild, demo, test, audit_keys, report, tunnel, vm, secrets, drift, bots)
