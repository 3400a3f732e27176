"""`invoke rebuild --host NEW [--restore-from BACKUP]`: a replacement server from the inventory, the vault and a backup.

NEW is a host of the inventory, already pointing at the replacement: either the dead server's entry
with its ``ansible_host`` and ``static_ipv4`` changed to the new server's, or a new entry with the same
bots (and the old one removed: a bot name is unique across the inventory). The inventory is what
``invoke drift``, ``invoke audit-keys`` and later provisioning runs read, so the new address belongs
there, not on the command line.

The steps, each safe to repeat (an interrupted rebuild is simply run again):

1. validate the inventory and read NEW's bots; load the backup and verify every checksum on the
   controller; plan which bot gets which state (a bot in the backup that NEW does not declare is an
   error, before anything is contacted);
   and check that a fence holds for every bot with an exchange key (``fences``): until the old server
   can no longer trade with the key, no bot starts on NEW, or two servers trade one account;
2. provision NEW with the site playbook and ``bots_start=false``: the bots' units are written and
   enabled but no bot starts;
2b. the whitelist fence: where the exchange shows the key's IP whitelist, keyaudit asks it from NEW with
   ``--fence`` (an entry other than NEW's static IPv4 is a FAIL); while any bot is not fenced, no bot starts;
3. restore (``playbooks/restore.yml``): every checksum is verified again on the host before anything
   is written, the bots are stopped, their state directories swapped in (owned by each bot's user)
   and every bot started; a bot already restored from the same backup is left alone;
4. ``invoke drift`` on NEW: it must be clean;
5. print NEW's static IPv4 and, per bot, how to move its API key's IP whitelist to it.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from botvps import audit, drift, provision, runner, validate
from botvps import backup as backups
from botvps.paths import PROJECT_ROOT
from botvps.hostcode import keyaudit, statehost

StateError = statehost.StateError

PLAYBOOK = PROJECT_ROOT / "playbooks" / "restore.yml"
# Drift items that say Debian has updates the server will install by itself (unattended-upgrades),
# not that the server differs from the inventory: a fresh server from an older image has them.
PENDING_MAINTENANCE = ("security-updates", "reboot-required")

# Where each exchange keeps an API key's IP whitelist (keyaudit checks the result, except Coinbase's).
WHITELIST_STEPS: dict[str, str] = {
    "binance": "Binance: Account > API Management > the key > Edit restrictions > 'Restrict access to trusted IPs "
               "only': remove {old}, add {new} > Save (confirm with 2FA)",
    "bybit": "Bybit: Account > API > the key > Edit > 'Only IPs with permissions granted are allowed': "
             "replace {old} with {new} > Submit (confirm with 2FA)",
    "okx": "OKX: Profile > API keys > the key > Edit > IP address allowlist: remove {old}, add {new} > Confirm "
           "(confirm with 2FA)",
    "kraken": "Kraken: Settings > API > the key > Key restrictions > IP address restriction: replace {old} with {new} "
              "> Save",
    "coinbase": "Coinbase Developer Platform (portal.cdp.coinbase.com): API keys > the key > Edit > IP allowlist: "
                "replace {old} with {new} > Save (keyaudit cannot read Coinbase's allowlist: check it by eye)",
}


# The exchanges that show botvps a key's IP whitelist (keyaudit reads it): there the fence is that the list holds
# nothing but the new address. Binance shows only that a key is restricted; Coinbase shows nothing.
SHOWS_WHITELIST = tuple(name for name, exchange in keyaudit.EXCHANGES.items() if exchange.shows_allowlist)
RISK_FLAG = "--accept-two-servers-risk"


@dataclass
class Fences:
    """Why the old server cannot trade with a bot's key once the bots start on the new one."""

    whitelist: list[str] = field(default_factory=list)  # checked from NEW: the whitelist holds NEW's address only
    new_key: list[str] = field(default_factory=list)  # the operator confirmed a new key and the old one revoked
    accepted: list[str] = field(default_factory=list)  # the operator accepted the risk (RISK_FLAG)
    problems: list[str] = field(default_factory=list)


def fences(bots: list[dict], new_ip: str, new_keys: list[str] | None = None, accept_risk: bool = False) -> Fences:
    """The fence each bot with an exchange key gets, and what stops the rebuild before anything changes."""
    result, keyed = Fences(), {b["name"]: b for b in bots if str(b.get("exchange", "none")) != "none"}
    for name in new_keys or []:
        if name not in keyed:
            result.problems.append(f"--new-key {name}: the host declares no bot {name} with an exchange key "
                                   f"(bots with keys: {', '.join(sorted(keyed)) or 'none'})")
    for name, bot in keyed.items():
        exchange = str(bot["exchange"])
        if accept_risk:
            result.accepted.append(name)
        elif exchange in SHOWS_WHITELIST:
            result.whitelist.append(name)
        elif name in (new_keys or []):
            result.new_key.append(name)
        else:
            var = bot.get("api_key_var") or "THE_KEY_VARIABLE"
            result.problems.append(
                f"{name} ({exchange}): {exchange} does not show botvps a key's IP whitelist, so nothing proves that the "
                f"old server can no longer trade with {name}'s key (a server that does not answer can come back). Make "
                f"a new key restricted to {new_ip or 'the new static IPv4'}, store it (invoke secrets.set {name} {var}, "
                f"and its secret), revoke the old key at {exchange}, then run the rebuild again with --new-key {name}. "
                f"Only if the old server is destroyed at the provider: {RISK_FLAG}")
    return result


def fence_verdict(results: list[dict], unreachable: dict[str, str], bots: list[str]) -> list[str]:
    """The whitelist-fenced bots whose audit from the new server did not pass (each with why), [] when all hold."""
    by_bot = {item.get("bot"): item for item in results}
    open_ = []
    for name in bots:
        item = by_bot.get(name)
        if unreachable or item is None:
            why = "; ".join(unreachable.values()) or "no audit result"
            open_.append(f"{name}: could not be checked ({why}): an unchecked key is no fence")
        elif item.get("exit") != 0:
            open_.append(f"{name}: {item.get('status', 'error').upper()} {'; '.join(item.get('reasons', []))}")
    return open_


@dataclass
class RestorePlan:
    host: str
    restore: list[str] = field(default_factory=list)  # bots whose state comes from the backup
    fresh: list[str] = field(default_factory=list)  # bots NEW declares that the backup does not have
    problems: list[str] = field(default_factory=list)


def plan(manifest: Mapping[str, Any], host: str, bots: list[dict]) -> RestorePlan:
    """Which bots get the backup's state on ``host`` (which declares ``bots``), and what stops the rebuild."""
    result = RestorePlan(host)
    names = [b["name"] for b in bots]
    for name in sorted(manifest.get("bots") or {}):
        if name in names:
            result.restore.append(name)
        else:
            result.problems.append(
                f"the backup has bot {name}, which {host} does not declare: add it to {host}'s bots in the "
                f"inventory (same name; its secrets stay in the vault), or rebuild the host that declares it")
    result.fresh = [name for name in names if name not in result.restore]
    return result


def whitelist_steps(host: str, new_ip: str, old_ip: str, bots: list[dict]) -> list[str]:
    """Per bot with an exchange key: exactly where to move its IP whitelist from ``old_ip`` to ``new_ip``."""
    old = old_ip or "the old server's address"
    lines = []
    for bot in bots:
        exchange = str(bot.get("exchange", "none"))
        if exchange == "none":
            lines.append(f"  {bot['name']}: no exchange key (exchange: none): nothing to update")
            continue
        key = bot.get("api_key_var") or "its API key"
        step = WHITELIST_STEPS.get(exchange, f"{exchange}: the key's IP whitelist: replace {{old}} with {{new}}")
        lines.append(f"  {bot['name']} ({exchange}, the key in {key}): " + step.format(old=old, new=new_ip))
        lines.append(f"  {'':{len(bot['name'])}}   then check: invoke audit-keys --host {host} --bot {bot['name']} "
                     "(PASS: restricted to the new address, cannot withdraw)")
    if old_ip and old_ip == new_ip:
        lines.insert(0, f"  (the backup's server had the same address, {old_ip}: if the provider moved it to the new "
                        "server, the whitelists already match)")
    return lines


def drift_verdict(reports: list[drift.HostReport]) -> tuple[int, str]:
    """(exit code, one line): 0 when clean or only pending Debian updates remain, 1 drift, 2 unreachable/error."""
    code = drift.exit_code(reports)
    if code != 1:
        return code, "clean" if code == 0 else "FAILED (unreachable or error, see above)"
    items = [item for report in reports for item in report.items]
    if all(item.check in PENDING_MAINTENANCE for item in items):
        return 0, ("clean, except pending Debian updates that unattended-upgrades installs by itself: "
                   + "; ".join(item.detail for item in items))
    return 1, "DRIFTED (see above)"


# ---------------------------------------------------------------- the steps


def _restore(inventory: Path, host: str, backup: backups.Backup, bots: list[str],
             vault_password_file: str | None, force: bool) -> tuple[dict | None, str]:
    """Upload and restore; (the host script's JSON, error message)."""
    with tempfile.TemporaryDirectory(prefix="botvps-restore-") as tmp:
        bundle = backups.pack(backup, bots, Path(tmp) / "bundle.tar")
        extra = {"restore_bundle": str(bundle), "restore_id": uuid.uuid4().hex, "restore_bots": bots,
                 "restore_manifest_sha256": backup.manifest_sha256, "restore_force": force}
        args = provision.ansible_args(host, vault_password_file, ["-e", json.dumps(extra)])
        report, stderr = runner.json_playbook(PLAYBOOK, inventory, args)
    if report is None:
        return None, f"ansible-playbook failed: {stderr.strip()[-1500:]}"
    result = runner.task_results(report, "Restore, verify").get(host, {})
    try:
        output = json.loads(result.get("stdout") or "")
    except ValueError:
        output = None
    if not isinstance(output, dict) or "error" in output or result.get("failed"):
        why = (output or {}).get("error") if isinstance(output, dict) else None
        return None, why or runner.host_failures(report).get(host) or "no result from the host"
    return output, ""


def _print_restore(output: dict) -> list[str]:
    """Print what the host restored; the units that are not running."""
    for name, files in sorted(output.get("restored", {}).items()):
        print(f"  {name:16} restored: {files} files, checksums verified before and after writing")
    for name in output.get("kept", []):
        print(f"  {name:16} already restored from this backup earlier: its state was left as it is")
    states = output.get("units", {})
    if states.get("_error"):
        print(f"  starting the bots: {states['_error']}")
    down = [unit for unit, state in states.items() if unit != "_error" and state != "active"]
    for unit in down:
        print(f"  {unit} is {states[unit]}: see journalctl -u {unit} on the server")
    return down


def run(inventory: Path, host: str, restore_from: Path | None = None, vault_password_file: str | None = None,
        force_restore: bool = False, report_file: Path | None = None, new_keys: list[str] | None = None,
        accept_risk: bool = False) -> int:
    """`invoke rebuild`: 0 rebuilt (drift clean), 1 a step failed or drift remains, 2 bad input (nothing changed)."""
    started = time.monotonic()
    seconds: dict[str, float] = {}
    record: dict[str, Any] = {"host": host, "backup": str(restore_from) if restore_from else None}

    def finish(code: int) -> int:
        seconds["total"] = round(time.monotonic() - started, 1)
        if report_file:
            Path(report_file).write_text(json.dumps({**record, "seconds": seconds, "exit": code}, indent=1))
        return code

    # 1. Nothing is changed until the inventory and the backup are known good. (Provisioning checks that the
    # host answers: one connection less against ufw's limit of 6 new SSH connections in 30 s.)
    code, problems = validate.check(inventory, vault_password_file, reach=False)
    if code != validate.EXIT_OK:
        print(f"{problems}\nrebuild: nothing was changed.", file=sys.stderr)
        return finish(2)
    hosts = validate.load_inventory(inventory, vault_password_file)
    if host not in hosts:
        print(f"rebuild: {host} is not in the inventory {inventory} (hosts: {', '.join(sorted(hosts))}). Put the new "
              "server there first: change the dead host's ansible_host and static_ipv4 to the new server's, or add it "
              "as a new host with the same bots (and remove the old one).", file=sys.stderr)
        return finish(2)
    hv = hosts[host]
    bots = backups.declared_bots(hv)
    new_ip = str(hv.get("static_ipv4") or "")
    backup = None
    restore_plan = RestorePlan(host, fresh=[b["name"] for b in bots])
    if restore_from:
        step = time.monotonic()
        try:
            backup = backups.load(Path(restore_from))
            restore_plan = plan(backup.manifest, host, bots)
            if not restore_plan.problems:
                counts = backups.verify(backup, restore_plan.restore)
        except StateError as err:
            print(f"rebuild: the backup cannot be used: {err}\nNothing was changed.", file=sys.stderr)
            return finish(2)
        seconds["verify_backup"] = round(time.monotonic() - step, 1)
        if restore_plan.problems:
            print("rebuild: " + "\n".join(restore_plan.problems) + "\nNothing was changed.", file=sys.stderr)
            return finish(2)
        record.update(backup=str(backup.directory), restore_plan=asdict(restore_plan), verified=counts)
        print(f"rebuild: backup {backup.directory} of {backup.host} ({backup.manifest.get('created', '?')}): "
              f"{sum(counts.values())} files of {len(counts)} bots verified")
    old_ip = backup.static_ipv4 if backup else ""
    record.update(new_ipv4=new_ip, old_ipv4=old_ip)
    steps = whitelist_steps(host, new_ip, old_ip, bots)
    fenced = fences(bots, new_ip, new_keys, accept_risk)
    record["fences"] = asdict(fenced)
    if fenced.problems:
        print("rebuild: no bot may start on the new server while the old one can still trade with its key:\n  "
              + "\n  ".join(fenced.problems) + "\nNothing was changed.", file=sys.stderr)
        return finish(2)
    print(f"rebuild: {host} ({hv.get('ansible_host', host)}), static IPv4 {new_ip or '(not set)'}; bots: "
          + (", ".join(f"{n} (restored)" for n in restore_plan.restore)
             + (", " if restore_plan.restore and restore_plan.fresh else "")
             + ", ".join(f"{n} (empty state)" for n in restore_plan.fresh) or "none"))
    if any(str(b.get("exchange", "none")) != "none" for b in bots):
        print("rebuild: a bot whose key audit fails does not start: move each key's IP whitelist now if you have not:")
        print("\n".join(steps))

    for name in fenced.new_key:
        print(f"rebuild: {name}: fenced by a new key (you confirmed the old one is revoked)")
    if fenced.accepted:
        print(f"rebuild: {', '.join(fenced.accepted)}: NOT fenced ({RISK_FLAG}): if the old server comes back, two "
              "servers trade one account")

    # 2. Provision; with a backup to restore or a whitelist to check first, no bot is started yet.
    hold = bool(backup or fenced.whitelist)
    step = time.monotonic()
    result = provision.provision(inventory, limit=host, vault_password_file=vault_password_file,
                                 extra=["-e", json.dumps({"bots_start": False})] if hold else [])
    seconds["provision"] = round(time.monotonic() - step, 1)
    if result.returncode != 0:
        print(f"rebuild: provisioning {host} failed (see above); fix it and run the rebuild again", file=sys.stderr)
        return finish(result.returncode if result.returncode == 2 else 1)

    # 2b. The whitelist fence, asked from the new server.
    if fenced.whitelist:
        step = time.monotonic()
        results, unreachable, raw = audit.collect(inventory, host, vault_password_file=vault_password_file, fence=True)
        seconds["fence"] = round(time.monotonic() - step, 1)
        open_ = fence_verdict(results, {host: raw} if raw else unreachable, fenced.whitelist)
        record["fence_open"] = open_
        if open_:
            print(f"rebuild: no bot was started on {host}: the old server could still trade with these keys:\n  "
                  + "\n  ".join(open_) + "\nMove each key's whitelist to the new address only:\n" + "\n".join(steps)
                  + "\nthen run the rebuild again (it is safe to repeat).", file=sys.stderr)
            return finish(1)
        print(f"rebuild: {', '.join(fenced.whitelist)}: fenced (the key's IP whitelist holds only {new_ip})")
        if not backup:
            result = provision.provision(inventory, limit=host, vault_password_file=vault_password_file)
            if result.returncode != 0:
                print(f"rebuild: starting the bots on {host} failed (see above)", file=sys.stderr)
                return finish(1)

    # 3. Restore and start.
    down: list[str] = []
    if backup:
        step = time.monotonic()
        print(f"rebuild: restoring {', '.join(restore_plan.restore) or 'no bot state'} and starting the bots ...")
        output, error = _restore(inventory, host, backup, restore_plan.restore, vault_password_file, force_restore)
        seconds["restore"] = round(time.monotonic() - step, 1)
        if output is None:
            print(f"rebuild: restoring on {host} failed: {error}\nRun the rebuild again once that is fixed (it is "
                  "safe to repeat).", file=sys.stderr)
            return finish(1)
        record["restore"] = output
        down = _print_restore(output)

    # 4. Drift.
    step = time.monotonic()
    reports = drift.check(inventory, host, vault_password_file)
    seconds["drift"] = round(time.monotonic() - step, 1)
    print(drift.table(reports, seconds["drift"]))
    code, verdict = drift_verdict(reports)
    record["drift"] = [r.to_dict() for r in reports]
    if down and code == 0:
        code = 1

    # 5. The address the exchanges must now allow.
    print(f"\nrebuild: {host} {'rebuilt' if code == 0 else 'NOT clean'} in {time.monotonic() - started:.0f} s; "
          f"drift: {verdict}")
    print(f"new static IPv4: {new_ip}" + (f" (the backup's server had {old_ip})" if old_ip else ""))
    print("each bot's exchange key must be restricted to it (the old address no longer applies):")
    print("\n".join(steps or ["  (no bots)"]))
    return finish(code)

