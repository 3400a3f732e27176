"""What `invoke report` reads on a host: one read-only script, run as root, that prints one JSON document.

The playbook (``playbooks/report.yml``) runs this file with the host's ``python3 -c``; it needs only
the standard library and writes nothing. It collects raw text (command output, journal lines, log
lines) with as little interpretation as possible: the parsing happens on the controller
(:mod:`botvps.report.parse`), where it is unit-tested.

What it never reads: the bots' ``/etc/botvps/*/secrets.env`` (and nothing else under
``/etc/botvps`` but each bot's ``keyaudit.json``, of which only ``bot`` and ``exchange`` are kept),
password hashes, and the bots' own output: from a bot's journal only keyaudit's verdict lines are
kept, from the daily audit only its JSON verdict's fields.

Arguments (one JSON object in argv[1]): ``days`` (the review period, default 30), ``max_lines``
(per log source, newest kept, default 20000).
"""

import glob
import gzip
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import threading
import time

ENV = dict(os.environ, LC_ALL="C", LANG="C", SYSTEMD_PAGER="", SYSTEMD_COLORS="0", NO_COLOR="1")
# Identifiers of the journal lines the review reads (sshd-session/sshd-auth: OpenSSH >= 9.8/10).
JOURNAL_IDENTIFIERS = ("sshd", "sshd-session", "sshd-auth", "sudo", "fail2ban-server", "fail2ban")
# The sshd and sudo lines worth sending (the rest are connection chatter).
KEEP = ("Accepted ", "Failed ", "nvalid user", "authenticating user", "maximum authentication",
        "COMMAND=", "incorrect password", "NOT in sudoers", "authentication failure", "password is required",
        "] Ban ", "] Unban ", "Restore Ban")
KEYAUDIT_LINE = re.compile(r"^keyaudit \S+ \S+ key \S+: (PASS|WARN|FAIL|ERROR)\b")
KEYAUDIT_FIELDS = ("bot", "exchange", "key", "status", "reasons", "checked_at")
LYNIS_KEYS = ("hardening_index", "report_datetime_start", "report_datetime_end", "lynis_version", "os_name",
              "os_version")


def run(argv, timeout=60):
    """A command's exit code, output and the end of its errors; never raises."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=ENV,
                              stdin=subprocess.DEVNULL, errors="replace")
        return {"rc": done.returncode, "out": done.stdout, "err": done.stderr[-2000:]}
    except (OSError, subprocess.SubprocessError) as exc:
        return {"rc": -1, "out": "", "err": "%s: %s" % (type(exc).__name__, exc)}


def read_text(path, limit=None):
    """A text file (gzip-compressed when it ends in .gz), or None; the last ``limit`` lines only."""
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except (OSError, EOFError):
        return None
    return lines[-limit:] if limit else lines


def mtime(path):
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def rotated(base, since):
    """``base`` and its rotations (base.1, base.2.gz, ...) modified since ``since``, oldest first."""
    paths = [p for p in glob.glob(base + "*") if p == base or re.match(re.escape(base) + r"\.\d+(\.gz)?$", p)]
    paths = [p for p in paths if (mtime(p) or 0) >= since]

    def age(path):
        match = re.search(r"\.(\d+)(\.gz)?$", path[len(base):])
        return int(match.group(1)) if match else 0

    return sorted(paths, key=age, reverse=True)


def log_lines(base, since, keep, limit):
    """Lines of a rotated log (all rotations since ``since``) containing one of ``keep``, newest ``limit``."""
    lines = []
    for path in rotated(base, since):
        lines.extend(line for line in read_text(path) or [] if keep is None or any(k in line for k in keep))
    return {"files": rotated(base, since), "lines": lines[-limit:], "truncated": len(lines) > limit}


def journal(args, since, limit, keep=None):
    """Journal entries [epoch seconds, identifier, pid, message] matching ``args``, newest ``limit``."""
    argv = ["journalctl", "-q", "--no-pager", "-o", "json", "--output-fields=MESSAGE,SYSLOG_IDENTIFIER,_PID",
            "--since=@%d" % since] + list(args)
    done = run(argv, timeout=120)
    entries = []
    for line in done["out"].splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        message = item.get("MESSAGE")
        if isinstance(message, list):  # journald sends non-UTF-8 messages as byte arrays
            message = bytes(b for b in message if isinstance(b, int) and 0 <= b < 256).decode("utf-8", "replace")
        if not isinstance(message, str) or (keep is not None and not keep(message)):
            continue
        entries.append([int(item.get("__REALTIME_TIMESTAMP", "0")) // 1000000, item.get("SYSLOG_IDENTIFIER", ""),
                        item.get("_PID", ""), message])
    return {"rc": done["rc"], "err": done["err"], "entries": entries[-limit:], "truncated": len(entries) > limit}


def identifiers(names):
    """journalctl arguments matching any of these syslog identifiers."""
    return [arg for name in names for arg in ("-t", name)]


def journal_start():
    """Epoch seconds of the oldest journal entry (None when the journal is empty or unreadable)."""
    try:
        process = subprocess.Popen(["journalctl", "-q", "--no-pager", "-o", "json",
                                    "--output-fields=__REALTIME_TIMESTAMP"], stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL, text=True, env=ENV)
    except OSError:
        return None
    try:
        first = process.stdout.readline()
    finally:
        process.kill()
        process.wait()
    try:
        return int(json.loads(first)["__REALTIME_TIMESTAMP"]) // 1000000
    except (ValueError, KeyError, TypeError):
        return None


def keyaudit_verdict(message):
    """The daily audit's JSON verdict, reduced to its known fields (None for any other line)."""
    try:
        item = json.loads(message)
    except ValueError:
        return None
    if not isinstance(item, dict) or "status" not in item:
        return None
    return json.dumps({k: item.get(k) for k in KEYAUDIT_FIELDS})


def authorized_keys():
    """Fingerprints and comments of every login-capable user's authorized keys (public keys, not secret)."""
    found = {}
    for user in pwd.getpwall():
        if os.path.basename(user.pw_shell or "") in ("nologin", "false", "sync", "halt", "shutdown"):
            continue
        for name in ("authorized_keys", "authorized_keys2"):
            path = os.path.join(user.pw_dir, ".ssh", name)
            if os.path.isfile(path):
                found.setdefault(user.pw_name, []).append(run(["ssh-keygen", "-l", "-E", "sha256", "-f", path]))
    return found


def lynis():
    """Whether lynis is installed, and the key lines of its last report (never run here: it writes logs)."""
    out = {"path": shutil.which("lynis") or "", "version": run(["dpkg-query", "-W", "-f=${Version}", "lynis"])}
    report = read_text("/var/log/lynis-report.dat")
    out["report"] = None if report is None else {
        "mtime": mtime("/var/log/lynis-report.dat"),
        "values": {k: v for k, _, v in (line.partition("=") for line in report) if k in LYNIS_KEYS},
        "warnings": [line.partition("=")[2] for line in report if line.startswith("warning[]=")][:50],
        "suggestions": sum(1 for line in report if line.startswith("suggestion[]=")),
    }
    return out


def gather(args):
    days = int(args.get("days", 30))
    limit = int(args.get("max_lines", 20000))
    now = time.time()
    since = int(now - days * 86400)
    out = {"probe": 1, "time": now, "since": since, "days": days, "utc_offset": time.localtime().tm_gmtoff}

    slow = {}
    units = sorted(os.path.basename(p) for p in glob.glob("/etc/systemd/system/botvps-bot-*.service"))

    def later(key, argv, timeout):
        thread = threading.Thread(target=lambda: slow.__setitem__(key, run(argv, timeout)))
        thread.start()
        return thread

    # The slow ones run while the rest is read: apt resolving (simulated: no lock, binary caches in
    # memory only; the longest by far), ufw and fail2ban-client (Python programs, slow to start),
    # systemd-analyze per bot unit, timesyncd (hangs when it is off the bus).
    threads = [later("apt", ["apt-get", "-s", "-o", "Debug::NoLocking=1", "-o", "Dir::Cache::pkgcache=",
                             "-o", "Dir::Cache::srcpkgcache=", "upgrade"], 180),
               later("timesync", ["timedatectl", "timesync-status"], 5),
               later("ufw_status", ["ufw", "status", "verbose"], 60),
               later("ufw_added", ["ufw", "show", "added"], 60),
               later("fail2ban_status", ["fail2ban-client", "status", "sshd"], 30)]
    threads += [later("security:" + unit, ["systemd-analyze", "security", "--no-pager", unit], 120) for unit in units]

    out["os_release"] = dict(line.split("=", 1) for line in read_text("/etc/os-release") or [] if "=" in line)
    out["kernel"] = os.uname().release
    out["hostname"] = os.uname().nodename
    out["uptime"] = (read_text("/proc/uptime") or ["0"])[0].split()[0]
    out["reboot_required"] = os.path.exists("/var/run/reboot-required")
    out["reboot_pkgs"] = read_text("/var/run/reboot-required.pkgs") or []
    out["apt_config"] = run(["apt-config", "dump", "APT::Periodic"])
    lists = [mtime(p) for p in
             ["/var/lib/apt/periodic/update-success-stamp"] + glob.glob("/var/lib/apt/lists/*Release")]
    out["stamps"] = {"lists": max([t for t in lists if t] or [None], key=lambda t: t or 0),
                     "unattended": mtime("/var/lib/apt/periodic/unattended-upgrades-stamp")}
    out["unattended_log"] = read_text("/var/log/unattended-upgrades/unattended-upgrades.log", 200) or []
    out["units"] = run(["systemctl", "show", "--property=Id,ActiveState,SubState,UnitFileState",
                        "unattended-upgrades.service", "apt-daily.timer", "apt-daily-upgrade.timer",
                        "fail2ban.service", "systemd-timesyncd.service", "ufw.service", "ssh.service"] + units)
    out["timedatectl"] = run(["timedatectl", "show"], 20)
    out["show_timesync"] = run(["timedatectl", "show-timesync"], 20)
    out["lynis"] = lynis()
    out["authorized_keys"] = authorized_keys()

    # Exchange key audits: which bots are audited (bot and exchange only), their timers, their verdicts.
    audited = {}
    for path in sorted(glob.glob("/etc/botvps/*/keyaudit.json")):
        try:
            with open(path, encoding="utf-8") as handle:
                config = json.load(handle)
            audited[config["bot"]] = {"exchange": config.get("exchange", "")}
        except (OSError, ValueError, KeyError, TypeError):
            audited[os.path.basename(os.path.dirname(path))] = {"exchange": "", "error": "unreadable keyaudit.json"}
    out["keyaudit"] = {
        "bots": audited,
        "timers": run(["systemctl", "show", "--property=Id,ActiveState,LastTriggerUSec,NextElapseUSecRealtime"]
                      + ["botvps-keyaudit@%s.timer" % bot for bot in audited]) if audited else None,
        "verdicts": journal(["-t", "botvps-keyaudit"], since, limit, keep=keyaudit_verdict),
        "starts": journal(identifiers(u[:-len(".service")] for u in units), since, limit,
                          keep=lambda m: bool(KEYAUDIT_LINE.match(m))) if units else None,
    }
    for entry in out["keyaudit"]["verdicts"]["entries"]:
        entry[3] = keyaudit_verdict(entry[3])

    # The monthly review.
    out["journal_start"] = journal_start()
    out["journal_persistent"] = os.path.isdir("/var/log/journal")
    out["journal"] = journal(identifiers(JOURNAL_IDENTIFIERS), since, limit, keep=lambda m: any(k in m for k in KEEP))
    out["fail2ban_log"] = log_lines("/var/log/fail2ban.log", since, ("] Ban ", "] Unban ", "Restore Ban"), limit)
    out["apt_history"] = log_lines("/var/log/apt/history.log", since, None, limit)

    for thread in threads:
        thread.join()
    for key in ("apt", "timesync", "ufw_status", "ufw_added", "fail2ban_status"):
        out[key] = slow.get(key)
    out["security"] = {unit: slow.get("security:" + unit) for unit in units}
    out["seconds"] = round(time.time() - now, 1)
    return out


if __name__ == "__main__":
    print(json.dumps(gather(json.loads(sys.argv[1]) if len(sys.argv) > 1 else {})))
