"""The monthly log review: SSH logins, failed logins, fail2ban bans, sudo use, package updates.

Input: the probe's journal entries ``[epoch, identifier, pid, message]`` and raw log lines
(fail2ban's log, apt's history), already redacted of the inventory's secrets. Free text that ends up
in the page (sudo and apt command lines, user names tried over SSH) goes through
:meth:`~botvps.report.redact.Redactor.text` once more.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from botvps.report.model import FAIL, INFO, PASS, WARN, Section, Table, local_epoch, plural, short, when, worst
from botvps.report.redact import Redactor

SSHD = ("sshd", "sshd-session", "sshd-auth")
MAX_ROWS = 50  # per table; the caption says when more were left out
ACCEPTED = re.compile(r"^Accepted (\S+) for (\S+) from (\S+) port (\d+) \S+?(?:: (\S+) (\S+))?\s*$")
FAILED = [
    re.compile(r"^Invalid user (?P<user>.*?) from (?P<addr>\S+) port (?P<port>\d+)"),
    re.compile(r"^Failed (?P<method>\S+) for (?:invalid user )?(?P<user>.*?) from (?P<addr>\S+) port (?P<port>\d+)"),
    re.compile(r"^(?:Connection closed|Disconnected) by (?:authenticating|invalid) user (?P<user>.*?) "
               r"(?P<addr>\S+) port (?P<port>\d+)"),
    re.compile(r"^(?:Connection closed|Disconnected) from (?:authenticating|invalid) user (?P<user>.*?) "
               r"(?P<addr>\S+) port (?P<port>\d+)"),
    re.compile(r"maximum authentication attempts exceeded for (?:invalid user )?(?P<user>.*?) from (?P<addr>\S+) "
               r"port (?P<port>\d+)"),
    re.compile(r"^User (?P<user>.*?) from (?P<addr>\S+) not allowed because"),
]
BAN = re.compile(r"\[(?P<jail>[^\]]+)\]\s+(?P<action>Restore Ban|Ban|Unban)\s+(?P<addr>\S+)")
ANSIBLE_BECOME = re.compile(r"BECOME-SUCCESS-[a-z]+")


def entries(gather: dict[str, Any], identifiers: tuple[str, ...]) -> list[tuple[float, str, str, str]]:
    journal = gather.get("journal") or {}
    return [(float(e[0]), str(e[1]), str(e[2]), str(e[3])) for e in journal.get("entries") or []
            if len(e) == 4 and e[1] in identifiers]


def _cut(rows: list[list[str]], what: str) -> tuple[list[list[str]], str]:
    if len(rows) <= MAX_ROWS:
        return rows, ""
    return rows[:MAX_ROWS], f"the {MAX_ROWS} most recent of {len(rows)} {what}"


# ---------------------------------------------------------------- SSH logins


@dataclass
class Login:
    user: str
    method: str
    key: str  # "ED25519 SHA256:..." or ""
    source: str
    times: list[float] = field(default_factory=list)


def key_names(gather: dict[str, Any]) -> dict[str, str]:
    """``SHA256:...`` -> "comment (user's authorized_keys)" from the host's authorized keys."""
    names = {}
    for user, results in (gather.get("authorized_keys") or {}).items():
        for result in results or []:
            for line in (result or {}).get("out", "").splitlines():
                fields = line.split()
                if len(fields) >= 3 and fields[1].startswith("SHA256:"):
                    comment = " ".join(fields[2:-1]) if len(fields) > 3 else ""
                    names[fields[1]] = f"{comment or 'no comment'} ({user}'s authorized_keys)"
    return names


def ssh_logins(gather: dict[str, Any], redactor: Redactor) -> Section:
    title = "SSH logins"
    logins: dict[tuple[str, str, str, str], Login] = {}
    for stamp, _ident, _pid, message in entries(gather, SSHD):
        match = ACCEPTED.match(message)
        if not match:
            continue
        method, user, source = match.group(1), redactor.text(match.group(2)), match.group(3)
        key = f"{match.group(5)} {match.group(6)}" if match.group(6) else ""
        login = logins.setdefault((user, method, key, source), Login(user, method, key, source))
        login.times.append(stamp)
    names = key_names(gather)
    rows, statuses, unknown, not_key = [], [], 0, 0
    for login in sorted(logins.values(), key=lambda item: -max(item.times)):
        fingerprint = login.key.split()[-1] if login.key else ""
        if login.method != "publickey":
            status = FAIL
            not_key += 1
            name = f"not a key: {login.method}"
        elif fingerprint in names:
            status, name = PASS, names[fingerprint]
        else:
            status, name = WARN, "not in any authorized_keys now"
            unknown += 1
        rows.append([login.user, login.key or login.method, name, login.source, str(len(login.times)),
                     when(min(login.times)), when(max(login.times))])
        statuses.append(status)
    total = sum(len(login.times) for login in logins.values())
    summary = (f"{plural(total, 'login')} by {plural(len({l.user for l in logins.values()}), 'account')} with "
               f"{plural(len({l.key for l in logins.values()}), 'key')} from "
               f"{plural(len({l.source for l in logins.values()}), 'address', 'addresses')}")
    if unknown:
        summary += f"; {unknown} with a key that no authorized_keys file holds now (removed since, or not yours)"
    if not_key:
        methods = sorted({login.method for login in logins.values()} - {"publickey"})
        summary += f"; {not_key} without a key ({', '.join(methods)})"
    rows, caption = _cut(rows, "user/key/address combinations")
    table = Table(["user", "key (sshd's fingerprint)", "whose key", "from", "logins", "first", "last"], rows,
                  caption=caption, statuses=statuses[:len(rows)])
    return Section("ssh-logins", title, worst(statuses, INFO), str(total), summary, [table] if rows else [],
                   ["each row is one account, key and source address; sshd logs the key's fingerprint because "
                    "botvps sets LogLevel VERBOSE"])


# ---------------------------------------------------------------- failed logins


def failed_logins(gather: dict[str, Any], redactor: Redactor) -> Section:
    title = "Failed logins"
    sessions: dict[tuple[str, str, str], dict[str, Any]] = {}  # (pid, addr, port) -> {time, users, addr}
    accepted: set[tuple[str, str, str]] = set()
    for stamp, _ident, pid, message in entries(gather, SSHD):
        match = ACCEPTED.match(message)
        if match:
            accepted.add((pid, match.group(3), match.group(4)))
            continue
        for pattern in FAILED:
            found = pattern.search(message)
            if found:
                parts = found.groupdict()
                session = sessions.setdefault((pid, parts["addr"], parts.get("port") or ""),
                                              {"time": stamp, "users": set(), "addr": parts["addr"]})
                session["time"] = max(session["time"], stamp)
                session["users"].add(redactor.text(parts["user"]))
                break
    by_source: dict[str, dict[str, Any]] = {}
    for key, session in sessions.items():
        if key in accepted:  # a key tried before the one that logged in: not a failed login
            continue
        source = by_source.setdefault(session["addr"], {"count": 0, "users": set(), "first": session["time"],
                                                        "last": session["time"]})
        source["count"] += 1
        source["users"] |= session["users"]
        source["first"] = min(source["first"], session["time"])
        source["last"] = max(source["last"], session["time"])
    banned = {ban["addr"] for ban in bans(gather)}
    rows = [[addr, str(s["count"]), short(", ".join(sorted(s["users"])), 80), "yes" if addr in banned else "no",
             when(s["first"]), when(s["last"])]
            for addr, s in sorted(by_source.items(), key=lambda item: (-item[1]["count"], item[0]))]
    total = sum(s["count"] for s in by_source.values())
    summary = (f"{plural(total, 'failed attempt')} from {plural(len(by_source), 'address', 'addresses')}"
               + (f", {len([a for a in by_source if a in banned])} of them banned by fail2ban" if by_source else "")
               + ": with password logins off, these are scanners trying names and keys")
    rows, caption = _cut(rows, "addresses")
    return Section("failed-logins", title, INFO, str(total), summary,
                   [Table(["from", "attempts", "user names tried", "banned", "first", "last"], rows, caption)]
                   if rows else [])


# ---------------------------------------------------------------- fail2ban


def bans(gather: dict[str, Any]) -> list[dict[str, Any]]:
    """Ban/Unban events from fail2ban's log (and the journal, when it logs there), oldest first."""
    events = []
    offset = int(gather.get("utc_offset") or 0)
    since = float(gather.get("since") or 0)
    for line in (gather.get("fail2ban_log") or {}).get("lines") or []:
        match, stamp = BAN.search(line), local_epoch(line, offset)
        if match and stamp is not None and stamp >= since:
            events.append({"time": stamp, **match.groupdict()})
    for stamp, _ident, _pid, message in entries(gather, ("fail2ban-server", "fail2ban")):
        match = BAN.search(message)
        if match:
            events.append({"time": stamp, **match.groupdict()})
    return sorted(events, key=lambda e: e["time"])


def currently_banned(status_output: str) -> list[str]:
    match = re.search(r"Banned IP list:\s*(.*)$", status_output, re.M)
    return match.group(1).split() if match else []


def fail2ban(gather: dict[str, Any]) -> Section:
    title = "fail2ban bans"
    events = bans(gather)
    status_cmd = gather.get("fail2ban_status") or {}
    now_banned = currently_banned(status_cmd.get("out", ""))
    per_addr: dict[str, dict[str, Any]] = {}
    for event in events:
        entry = per_addr.setdefault(event["addr"], {"bans": 0, "jail": event["jail"], "last": event["time"]})
        if event["action"] == "Ban":
            entry["bans"] += 1
        entry["last"] = max(entry["last"], event["time"])
    for addr in now_banned:
        per_addr.setdefault(addr, {"bans": 0, "jail": "sshd", "last": None})
    rows = [[addr, e["jail"], str(e["bans"]), when(e["last"]), "yes" if addr in now_banned else "no"]
            for addr, e in sorted(per_addr.items(), key=lambda item: -(item[1]["last"] or 0))]
    total = sum(e["bans"] for e in per_addr.values())
    status = INFO
    notes = []
    if status_cmd.get("rc") not in (0, None):
        status = WARN
        notes.append("`fail2ban-client status sshd` failed (is fail2ban running?): "
                     + short(status_cmd.get("err", ""), 150))
    summary = (f"{plural(total, 'ban')} of {plural(len(per_addr), 'address', 'addresses')}, "
               f"{len(now_banned)} banned now; each repeat offence doubles the ban")
    rows, caption = _cut(rows, "addresses")
    return Section("fail2ban", title, status, str(total), summary,
                   [Table(["address", "jail", "bans", "last", "banned now"], rows, caption)] if rows else [], notes)


# ---------------------------------------------------------------- sudo


def sudo_entry(message: str) -> dict[str, str] | None:
    """A sudo log line as {user, runas, command, error}; None for other lines (pam's, for example)."""
    match = re.match(r"^\s*(\S+) : (.*)$", message)
    if not match:
        return None
    user, rest = match.groups()
    command = rest.split("COMMAND=", 1)[1] if "COMMAND=" in rest else ""
    fields = rest.split("COMMAND=", 1)[0].split(" ; ")
    values = dict(f.strip().split("=", 1) for f in fields if "=" in f)
    errors = [f.strip() for f in fields if f.strip() and "=" not in f]
    return {"user": user, "runas": values.get("USER", "root"), "command": command.strip(),
            "error": "; ".join(errors)}


def sudo(gather: dict[str, Any], redactor: Redactor) -> Section:
    title = "sudo use"
    grouped: dict[tuple[str, str, str, str], list[float]] = {}
    for stamp, _ident, _pid, message in entries(gather, ("sudo",)):
        entry = sudo_entry(message)
        if entry is None:
            continue
        command = redactor.text(entry["command"])
        if ANSIBLE_BECOME.search(command):
            command = "Ansible (become: botvps or another playbook)"
        grouped.setdefault((entry["user"], entry["runas"], short(command, 160), entry["error"]), []).append(stamp)
    rows, statuses = [], []
    for (user, runas, command, error), times in sorted(grouped.items(), key=lambda item: -max(item[1])):
        rows.append([user, runas, command, error or "ran", str(len(times)), when(max(times))])
        statuses.append(WARN if error else INFO)
    total = sum(len(t) for t in grouped.values())
    refused = sum(len(t) for k, t in grouped.items() if k[3])
    summary = f"{plural(total, 'sudo command')}" + (f", {refused} refused or with a wrong password" if refused else "")
    rows, caption = _cut(rows, "user/command combinations")
    return Section("sudo", title, worst(statuses, INFO), str(total), summary,
                   [Table(["user", "as", "command", "result", "times", "last"], rows, caption,
                          statuses=statuses[:len(rows)])] if rows else [],
                   ["command lines are shown with anything that looks like a secret (KEY=..., --password ...) "
                    "masked"])


# ---------------------------------------------------------------- package updates


def apt_blocks(lines: list[str]) -> list[dict[str, str]]:
    """apt's history.log as blocks {Start-Date, Commandline, Install, Upgrade, ...}."""
    blocks, current = [], {}
    for line in lines:
        if not line.strip():
            if current:
                blocks.append(current)
            current = {}
            continue
        key, _, value = line.partition(": ")
        if key:
            current[key.strip()] = value.strip()
    if current:
        blocks.append(current)
    return blocks


def package_names(value: str) -> list[str]:
    """``libc6:amd64 (2.36-9, 2.36-9+deb12u9), tzdata (2024a)`` -> ['libc6', 'tzdata']."""
    return [name.split(":")[0] for name in re.findall(r"(?:^|\), )([^\s(,]+) \(", value)]


def packages(gather: dict[str, Any], redactor: Redactor) -> Section:
    title = "Package updates"
    offset = int(gather.get("utc_offset") or 0)
    since = float(gather.get("since") or 0)
    rows = []
    for block in apt_blocks((gather.get("apt_history") or {}).get("lines") or []):
        stamp = local_epoch(block.get("Start-Date", ""), offset)
        if stamp is None or stamp < since:
            continue
        command = redactor.text(block.get("Commandline", ""))
        program = command.split()[0].rsplit("/", 1)[-1] if command.split() else ""
        by = "unattended-upgrades" if program == "unattended-upgrade" else (
            block.get("Requested-By", "").split(" (")[0] or "root")
        changes, names = [], []
        for kind in ("Install", "Upgrade", "Remove", "Purge", "Downgrade", "Reinstall"):
            found = package_names(block.get(kind, ""))
            if found:
                changes.append(f"{kind.lower()} {len(found)}")
                names += found
        if block.get("Error"):
            changes.append("ERROR: " + short(block["Error"], 80))
        rows.append([when(stamp), by, short(command, 80), ", ".join(changes) or "-", short(", ".join(names), 200)])
    rows.reverse()  # newest first
    count = len(rows)
    errors = sum(1 for row in rows if "ERROR" in row[3])
    summary = (f"{plural(count, 'apt run')} changed packages"
               + (f" ({sum(1 for r in rows if r[1] == 'unattended-upgrades')} by unattended-upgrades)" if rows else "")
               + (f"; {errors} ended with an error" if errors else ""))
    rows, caption = _cut(rows, "apt runs")
    status = WARN if errors else INFO
    return Section("packages", title, status, str(count), summary,
                   [Table(["when", "by", "command", "changes", "packages"], rows, caption)] if rows else [],
                   ["from /var/log/apt/history.log and its rotations on the host"])


def sections(gather: dict[str, Any], redactor: Redactor) -> list[Section]:
    return [ssh_logins(gather, redactor), failed_logins(gather, redactor), fail2ban(gather), sudo(gather, redactor),
            packages(gather, redactor)]

