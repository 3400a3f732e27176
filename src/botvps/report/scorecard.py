"""The scorecard: one section per score, from the probe's document (and ssh-audit's result).

Each function takes the gathered document (already redacted, see :mod:`botvps.report.redact`) and
returns a :class:`~botvps.report.model.Section`. What each status means is in the README
("invoke report").
"""

from __future__ import annotations

import json
import re
from typing import Any

from botvps.drift import CLOCK_MAX_OFFSET, clock_offset, security_updates, ufw_rule_owner
from botvps.report.model import (FAIL, INFO, PASS, UNKNOWN, WARN, Section, Table, ago, local_epoch, plural, short, when,
                                 worst)
from botvps.report.sshaudit import AuditResult

LYNIS_GOOD = 70  # a hardening index at or above this is a pass; below, a warning
LYNIS_STALE_DAYS = 31
SYSTEMD_LABELS = {"PERFECT": PASS, "SAFE": PASS, "OK": PASS, "MEDIUM": WARN, "EXPOSED": FAIL, "UNSAFE": FAIL,
                  "DANGEROUS": FAIL}
KEYAUDIT_STATUS = {"pass": PASS, "warn": WARN, "fail": FAIL, "error": WARN}
UNATTENDED_RESULTS = ("No packages found", "All upgrades installed", "Packages that will be upgraded",
                      "upgrades installed")
EXCHANGES_REJECT = "exchanges reject signed requests a few seconds off"
_OVERALL = re.compile(r"Overall exposure level for (\S+): ([\d.]+) (\w+)")
# An unmet setting: "✗" in a UTF-8 locale, "-" in the C locale the probe runs in.
_UNMET = re.compile(r"^\s*(?:✗|-)\s+(\S+)\s+(.*?)\s+([\d.]+)\s*$")


def cmd(gather: dict[str, Any], key: str) -> dict[str, Any]:
    """A command result of the probe ({rc, out, err}); rc -1 when the probe has none."""
    value = gather.get(key)
    if isinstance(value, dict) and "rc" in value:
        return value
    return {"rc": -1, "out": "", "err": f"no {key} in the probe"}


def key_values(text: str) -> dict[str, str]:
    """``KEY=value`` lines (systemctl show, timedatectl show) as a dict."""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def systemctl_show(text: str) -> dict[str, dict[str, str]]:
    """``systemctl show`` of several units (blank-line separated, each with Id=) by unit id."""
    units = {}
    for block in text.split("\n\n"):
        values = key_values(block)
        if values.get("Id"):
            units[values["Id"]] = values
    return units


# ---------------------------------------------------------------- ssh-audit


def ssh_audit(result: AuditResult) -> Section:
    title = "SSH crypto (ssh-audit)"
    if result.status == UNKNOWN:
        return Section("ssh-audit", title, UNKNOWN, "not run", result.reason)
    rows = [[item] for item in result.failures]
    tables = [Table(["what the policy does not accept"], rows)] if rows else []
    if result.status == PASS:
        summary = f"the server's key exchanges, ciphers, MACs and host keys pass ssh-audit's built-in policy " \
                  f"\"{result.policy}\" (checked from this controller against {result.target})"
    else:
        summary = f"ssh-audit's policy \"{result.policy}\" fails on {plural(len(rows), 'point')} " \
                  f"(checked against {result.target}): run `invoke provision` to put the ssh role's settings back"
    return Section("ssh-audit", title, result.status, "pass" if result.status == PASS else "fail", summary, tables,
                   [result.reason] if result.reason else [])


# ---------------------------------------------------------------- Lynis


def lynis(gather: dict[str, Any]) -> Section:
    title = "Lynis hardening index"
    info = gather.get("lynis") or {}
    report = info.get("report")
    installed = bool(info.get("path"))
    version = (info.get("version") or {}).get("out", "").strip() if installed else ""
    if report is None or not (report.get("values") or {}).get("hardening_index"):
        if not installed:
            return Section("lynis", title, UNKNOWN, "not installed",
                           "Lynis is not installed on the host (botvps does not install it, and the report "
                           "never changes the host): `sudo apt install lynis` and `sudo lynis audit system` "
                           "there, and the next report shows its hardening index")
        if report is None:
            return Section("lynis", title, UNKNOWN, "never run",
                           f"Lynis {version} is installed but has no report yet: run `sudo lynis audit system` on the "
                           "host (it takes a few minutes) and the next report shows its hardening index")
        return Section("lynis", title, UNKNOWN, "unfinished",
                       f"Lynis' report (/var/log/lynis-report.dat, {when(report.get('mtime'))}) has no hardening index: "
                       "its audit did not finish (or is still running); run `sudo lynis audit system` again")
    values = report["values"]
    index = int(values["hardening_index"]) if str(values["hardening_index"]).isdigit() else -1
    taken = report.get("mtime")
    now = float(gather.get("time") or 0)
    stale = taken is not None and now - taken > LYNIS_STALE_DAYS * 86400
    status = PASS if index >= LYNIS_GOOD else WARN
    if stale:
        status = worst([status, WARN])
    summary = (f"{index}/100 from Lynis {values.get('lynis_version', version)}'s last audit "
               f"({when(taken)}, {ago(taken, now)}); {LYNIS_GOOD} or more counts as a pass")
    notes = [f"that audit is more than {LYNIS_STALE_DAYS} days old: run `sudo lynis audit system` again"] * stale
    warnings = [w.split("|") for w in report.get("warnings") or []]
    tables = [Table(["test", "warning"], [[w[0], w[1] if len(w) > 1 else ""] for w in warnings],
                    caption=f"Lynis warnings ({report.get('suggestions', 0)} suggestions besides: "
                            "/var/log/lynis-report.dat on the host)")] if warnings else []
    return Section("lynis", title, status, f"{index}", summary, tables, notes)


# ---------------------------------------------------------------- systemd-analyze security


def exposure(output: str) -> tuple[float | None, str, list[tuple[str, str, float]]]:
    """(overall exposure 0-10, systemd's label, unmet settings [(name, description, exposure)] worst first)."""
    match = _OVERALL.search(output)
    unmet = []
    for line in output.splitlines():
        found = _UNMET.match(line)
        if found:
            unmet.append((found.group(1), found.group(2), float(found.group(3))))
    unmet.sort(key=lambda item: -item[2])
    if not match:
        return None, "", unmet
    return float(match.group(2)), match.group(3), unmet


def bot_units(gather: dict[str, Any]) -> Section:
    title = "Bot sandboxes (systemd-analyze security)"
    results = gather.get("security") or {}
    if not results:
        return Section("bot-units", title, INFO, "no bots", "no bot unit (botvps-bot-*.service) on this host")
    states = systemctl_show(cmd(gather, "units")["out"])
    rows, statuses, notes = [], [], []
    for unit, result in sorted(results.items()):
        score, label, unmet = exposure((result or {}).get("out", ""))
        state = states.get(unit, {})
        running = f"{state.get('ActiveState', '?')} ({state.get('SubState', '?')})"
        if score is None:
            rows.append([unit, "?", "could not be scored", running, short((result or {}).get("err", ""), 100)])
            statuses.append(UNKNOWN)
            continue
        status = SYSTEMD_LABELS.get(label.upper(), UNKNOWN)
        top = ", ".join(name.rstrip("=") for name, _, _ in unmet[:4])
        rows.append([unit, f"{score:.1f}", label, running, top])
        statuses.append(status)
    scored = [float(r[1]) for r in rows if r[1] != "?"]
    headline = f"{max(scored):.1f}" if scored else "?"
    summary = ("systemd's exposure score per bot unit, 0 (fully sandboxed) to 10 (unprotected); "
               "systemd calls below 2 SAFE/OK, from 5 MEDIUM, from 7.5 EXPOSED. The headline is the worst unit.")
    return Section("bot-units", title, worst(statuses), headline, summary,
                   [Table(["unit", "exposure", "systemd says", "state", "largest remaining exposures"], rows,
                          statuses=statuses)], notes)


# ---------------------------------------------------------------- firewall


def ufw_rules(status_output: str) -> tuple[dict[str, str], list[dict[str, str]]]:
    """``ufw status verbose``: the header fields and the rules [{to, action, from, comment}]."""
    header, rules, in_table = {}, [], False
    for line in status_output.splitlines():
        if not in_table:
            if line.startswith("--"):
                in_table = True
            elif ":" in line and not line.startswith("To "):
                key, _, value = line.partition(":")
                header[key.strip()] = value.strip()
            continue
        if not line.strip():
            continue
        body, _, comment = line.partition("#")
        fields = re.split(r"\s{2,}", body.strip())
        fields += [""] * (3 - len(fields))
        rules.append({"to": fields[0], "action": fields[1], "from": fields[2], "comment": comment.strip()})
    return header, rules


def firewall(gather: dict[str, Any]) -> Section:
    title = "Firewall (ufw)"
    status = cmd(gather, "ufw_status")
    if status["rc"] != 0:
        return Section("firewall", title, UNKNOWN, "unreadable", f"`ufw status verbose` failed: "
                       f"{short(status['err'] or 'ufw is not installed')}")
    header, rules = ufw_rules(status["out"])
    active = header.get("Status") == "active"
    default = header.get("Default", "")
    unmarked = [r for r in rules if ufw_rule_owner(r["comment"]) != "declared"]
    statuses = [WARN if r in unmarked else PASS for r in rules]
    problems = []
    if not active:
        problems.append(FAIL)
    if "deny (incoming)" not in default and "reject (incoming)" not in default:
        problems.append(FAIL)
    if unmarked:
        problems.append(WARN)
    section_status = worst(problems)
    if not active:
        summary = "ufw is not active: every port that listens is open. Run `invoke provision`."
    else:
        summary = (f"active; default {default or '?'}; {plural(len(rules), 'rule')}"
                   + (f", {len(unmarked)} not declared (a rescue rule from a rolled-back SSH change, or no 'botvps' "
                      "comment: added by hand, or by another tool); `invoke provision` makes them the declared set"
                      if unmarked else ", all botvps'"))
    table = Table(["to", "action", "from", "comment"], [[r["to"], r["action"], r["from"], r["comment"]] for r in rules],
                  statuses=statuses)
    return Section("firewall", title, section_status, "active" if active else "INACTIVE", summary,
                   [table] if rules else [], [f"logging: {header['Logging']}"] if header.get("Logging") else [])


# ---------------------------------------------------------------- updates


def apt_periodic(dump: str) -> dict[str, str]:
    """``apt-config dump APT::Periodic`` as {name: value}."""
    found = {}
    for line in dump.splitlines():
        match = re.match(r'^APT::Periodic::(\S+)\s+"([^"]*)";', line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def last_unattended_run(log_lines: list[str], utc_offset: int = 0) -> tuple[float | None, str]:
    """(start, outcome) of the last unattended-upgrades run in its log ((None, "") when none)."""
    starts = [i for i, line in enumerate(log_lines) if "Starting unattended upgrades script" in line]
    if not starts:
        return None, ""
    run = log_lines[starts[-1]:]
    started = local_epoch(run[0], utc_offset)
    outcome = ""
    for line in run[1:]:
        text = re.sub(r"^\S+ \S+ ", "", line)
        if text.startswith(("ERROR", "WARNING")) or any(word in text for word in UNATTENDED_RESULTS):
            outcome = text
    return started, outcome or "ran (no result line)"


def updates(gather: dict[str, Any]) -> Section:
    title = "Updates"
    apt = cmd(gather, "apt")
    now = float(gather.get("time") or 0)
    rows: list[list[str]] = []
    statuses: list[str] = []
    if apt["rc"] != 0:
        pending_security: list[str] = []
        rows.append(["pending updates", f"unknown: apt-get -s upgrade failed: {short(apt['err'])}"])
        statuses.append(UNKNOWN)
    else:
        pending_security = security_updates(apt["out"])
        pending_all = [line.split()[1] for line in apt["out"].splitlines() if line.startswith("Inst ")]
        security = f"{len(pending_security)}: {short(', '.join(pending_security), 300)}" if pending_security else "none"
        rows.append(["pending security updates", security])
        statuses.append(WARN if pending_security else PASS)
        other = [p for p in pending_all if p not in pending_security]
        rows.append(["other pending updates", f"{len(other)}: {short(', '.join(other), 300)}" if other else "none"])
        statuses.append(INFO)
    reboot = bool(gather.get("reboot_required"))
    pkgs = ", ".join(gather.get("reboot_pkgs") or [])
    rows.append(["reboot required", f"yes (for {pkgs or 'unknown packages'})" if reboot else "no"])
    statuses.append(WARN if reboot else PASS)
    periodic = apt_periodic(cmd(gather, "apt_config")["out"])
    enabled = periodic.get("Unattended-Upgrade", "0") not in ("0", "")
    rows.append(["unattended-upgrades", "enabled (APT::Periodic::Unattended-Upgrade "
                 f"\"{periodic.get('Unattended-Upgrade')}\")" if enabled else "DISABLED"])
    statuses.append(PASS if enabled else FAIL)
    timer = systemctl_show(cmd(gather, "units")["out"]).get("apt-daily-upgrade.timer", {})
    if timer:
        timer_ok = timer.get("ActiveState") == "active"
        rows.append(["apt-daily-upgrade.timer", f"{timer.get('ActiveState', '?')}, {timer.get('UnitFileState', '?')}"])
        statuses.append(PASS if timer_ok else FAIL)
    stamps = gather.get("stamps") or {}
    lists = stamps.get("lists")
    rows.append(["package lists last updated", f"{when(lists)} ({ago(lists, now)})" if lists else "never"])
    statuses.append(WARN if lists is None or now - lists > 3 * 86400 else PASS)
    started, outcome = last_unattended_run(gather.get("unattended_log") or [], int(gather.get("utc_offset") or 0))
    rows.append(["last unattended-upgrades run", f"{when(started)}: {outcome}" if started else "none logged"])
    statuses.append(WARN if outcome.startswith("ERROR") else INFO)
    status = worst([s for s in statuses if s != INFO])
    headline = (f"{len(pending_security)} security" if pending_security else
                ("reboot" if reboot else ("ok" if status == PASS else status)))
    summary = ("security updates are applied automatically every day by unattended-upgrades; a pending one "
               "means that did not happen yet (or failed), a pending reboot means a new kernel or library is "
               "installed but not running yet")
    return Section("updates", title, status, headline, summary, [Table(["", ""], rows, statuses=statuses)])


# ---------------------------------------------------------------- clock


def clock(gather: dict[str, Any]) -> Section:
    title = "Clock sync"
    shown = key_values(cmd(gather, "timedatectl")["out"])
    server = key_values(cmd(gather, "show_timesync")["out"])
    offset = clock_offset(cmd(gather, "timesync")["out"])
    rows = [["NTP service", shown.get("NTP", "?")], ["synchronised", shown.get("NTPSynchronized", "?")],
            ["server", server.get("ServerName") or server.get("ServerAddress") or "?"],
            ["offset", f"{offset * 1000:+.1f} ms" if offset is not None
             else "unknown (timesyncd has no offset past its first sample yet)"],
            ["time zone", shown.get("Timezone", "?")]]
    if not shown:
        return Section("clock", title, UNKNOWN, "unknown", "`timedatectl show` failed: "
                       + short(cmd(gather, "timedatectl")["err"]))
    if shown.get("NTP") != "yes":
        status, summary = FAIL, f"NTP is switched off: the clock drifts, and {EXCHANGES_REJECT}"
    elif shown.get("NTPSynchronized") != "yes":
        status, summary = FAIL, f"the clock is not synchronised: {EXCHANGES_REJECT}"
    elif offset is not None and abs(offset) > CLOCK_MAX_OFFSET:
        status, summary = WARN, f"synchronised, but {abs(offset):.3f} s off (more than {CLOCK_MAX_OFFSET} s)"
    else:
        status, summary = PASS, f"synchronised by systemd-timesyncd ({EXCHANGES_REJECT})"
    headline = f"{offset * 1000:+.0f} ms" if offset is not None and status == PASS else (
        "synced" if status == PASS else ("off" if status == FAIL else "drifting"))
    return Section("clock", title, status, headline, summary, [Table(["", ""], rows)])


# ---------------------------------------------------------------- exchange key audits


def keyaudit(gather: dict[str, Any]) -> Section:
    title = "Exchange API key audits"
    info = gather.get("keyaudit") or {}
    bots = info.get("bots") or {}
    if not bots:
        return Section("keyaudit", title, INFO, "none", "no bot on this host trades on an exchange with an audited key")
    latest: dict[str, tuple[float, str, str, str]] = {}  # bot -> (time, status, reasons, source)
    for stamp, _ident, _pid, message in ((info.get("verdicts") or {}).get("entries") or []):
        try:
            verdict = json.loads(message or "")
        except ValueError:
            continue
        bot = str(verdict.get("bot") or "")
        if bot and stamp >= latest.get(bot, (0,))[0]:
            latest[bot] = (stamp, str(verdict.get("status", "error")), "; ".join(verdict.get("reasons") or []),
                           "daily audit")
    for stamp, _ident, _pid, message in ((info.get("starts") or {}).get("entries") or []):
        match = re.match(r"^keyaudit (\S+) \S+ key \S+: (PASS|WARN|FAIL|ERROR)\s*(.*)$", message)
        if match and stamp >= latest.get(match.group(1), (0,))[0]:
            latest[match.group(1)] = (stamp, match.group(2).lower(), match.group(3), "before the bot started")
    timers = systemctl_show((info.get("timers") or {}).get("out", ""))
    rows, statuses = [], []
    for bot, config in sorted(bots.items()):
        timer = timers.get(f"botvps-keyaudit@{bot}.timer", {})
        next_run = timer.get("NextElapseUSecRealtime") or "?"
        if bot in latest:
            stamp, verdict, reasons, source = latest[bot]
            rows.append([bot, config.get("exchange", ""), verdict.upper(), when(stamp), source, reasons or "-",
                         next_run])
            statuses.append(KEYAUDIT_STATUS.get(verdict, WARN))
        else:
            rows.append([bot, config.get("exchange", ""), "NONE", "-", "-",
                         f"no verdict in the journal over the last {gather.get('days', 30)} days", next_run])
            statuses.append(WARN)
    summary = ("the latest answer of each exchange about the bot's API key: PASS means it cannot withdraw or move "
               "funds and works only from this server's static IPv4; FAIL stops the bot from starting")
    return Section("keyaudit", title, worst(statuses), f"{sum(s == PASS for s in statuses)}/{len(statuses)} pass",
                   summary, [Table(["bot", "exchange", "verdict", "when", "from", "reasons", "next audit"], rows,
                                   statuses=statuses)])
