"""`invoke drift`: is every server still in the state botvps put it in? Strictly read-only.

Three looks at each host, none of which writes anything there:

1. **settings**: the site's roles in Ansible check mode with diff (``playbooks/drift.yml``): every
   task that *would* change something is a drifted setting (host, role, task, paths).
2. **verify**: the verification suite (``tests/host``, testinfra over SSH) with ``--junitxml``;
   every failed test is an item. The console-based tests (which change things on purpose) are
   left out: ``BOTVPS_VM_NAME`` is removed from their environment.
3. **live checks**: one read-only script per host, run in the same playbook call (JSON out, see
   :func:`_probe`), compared here with what the inventory declares (see :func:`evaluate`).

Output: a table per host, ``--json`` (one line: ``{"time", "seconds", "exit", "hosts": [{host,
status, items: [{check, detail, kind}]}]}``) and ``--junit FILE`` (one testcase per check per
host). Exit code: 0 clean, 1 drift, 2 a host unreachable or an error.

A secret value never reaches the output: tasks that carry secrets use ``no_log`` (their results
arrive censored), the secrets files are only ``stat``-ed, never opened, password hashes stay on the
host (the script reports "usable password: yes/no"), and diffs are reduced to their file names.
"""

from __future__ import annotations

import datetime as _dt
import inspect
import ipaddress
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import textwrap
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from botvps import runner
from botvps.paths import PROJECT_ROOT

PLAYBOOK = PROJECT_ROOT / "playbooks" / "drift.yml"

CLEAN, DRIFTED, UNREACHABLE, ERROR = "clean", "drifted", "unreachable", "error"
EXIT = {CLEAN: 0, DRIFTED: 1, UNREACHABLE: 2, ERROR: 2}

# Every check, in report order, with what it looks at (the JUnit testcases, one per check per host).
CHECKS: dict[str, str] = {
    "settings": "Ansible check mode: a setting provisioning would change",
    "verify": "the verification suite (tests/host)",
    "ipv4": "primary IPv4 equals static_ipv4 (egress_ipv4 on a NAT cloud)",
    "security-updates": "no pending security updates",
    "reboot-required": "no reboot pending",
    "clock": "clock synchronised, small offset",
    "listening-sockets": "only declared ports listen beyond loopback",
    "ufw-rules": "ufw active, every rule carries the botvps mark",
    "sshd": "effective sshd settings, no unmanaged drop-in",
    "authorized-keys": "the admin's authorized keys are exactly the inventory's",
    "login-users": "no login-capable user besides the admin and root",
    "bot-services": "every bot's service active, none undeclared",
    "bot-sandbox": "every bot's unit sandboxed as the bots role writes it",
    "bot-secrets": "every bot's secrets file root-only",
}
BOT_CHECKS = ("bot-services", "bot-sandbox", "bot-secrets")
LIVE = "live-checks"  # not a check of its own: where an error of the live script is reported

# Tests of tests/host that are not read-only: `unattended-upgrade --dry-run` downloads the pending
# packages into /var/cache/apt/archives and writes its log (and takes minutes on a slow host).
VERIFY_SKIPPED = ("test_dry_run_uses_the_security_origin",)

CLOCK_MAX_OFFSET = 1.0  # seconds; exchanges reject signed requests a few seconds off (Binance: 5 s window)
KNOWN_SSHD_DROPINS = {"00-botvps.conf", "50-cloud-init.conf"}  # ours, and the provider's (cloud-init)
SSHD_EXPECTED = {
    "passwordauthentication": "no",
    "kbdinteractiveauthentication": "no",
    "permitrootlogin": "no",
    "permitemptypasswords": "no",
    "pubkeyauthentication": "yes",
    "authenticationmethods": "publickey",
}
# sshd keywords that matter for who can log in, and how: named when an unmanaged drop-in sets them.
SSHD_SENSITIVE = {
    "passwordauthentication", "kbdinteractiveauthentication", "challengeresponseauthentication",
    "permitrootlogin", "permitemptypasswords", "pubkeyauthentication", "authenticationmethods",
    "allowusers", "allowgroups", "denyusers", "denygroups", "authorizedkeysfile", "authorizedkeyscommand",
    "authorizedkeyscommanduser", "port", "listenaddress", "usepam", "hostbasedauthentication", "match",
    "permituserenvironment", "allowtcpforwarding", "disableforwarding", "permittunnel", "gatewayports",
    "trustedusercakeys", "authorizedprincipalsfile",
}
# Sandbox settings whose `systemctl show` value can be compared with the unit's setting as written.
SANDBOX_COMPARABLE = (
    "NoNewPrivileges", "CapabilityBoundingSet", "AmbientCapabilities", "ProtectSystem", "ProtectHome",
    "PrivateTmp", "PrivateDevices", "PrivateUsers", "ProtectHostname", "ProtectClock", "ProtectKernelTunables",
    "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups", "ProtectProc", "ProcSubset",
    "RestrictAddressFamilies", "RestrictNamespaces", "RestrictRealtime", "RestrictSUIDSGID", "LockPersonality",
    "MemoryDenyWriteExecute", "SystemCallArchitectures", "DevicePolicy", "KeyringMode", "RemoveIPC", "UMask",
    "IPAddressDeny",
)
NOLOGIN_SHELLS = {"nologin", "false", "sync", "halt", "shutdown"}


# ---------------------------------------------------------------- the report


@dataclass
class Item:
    check: str
    detail: str
    kind: str = "drift"  # "drift" or "error" (a check that could not be made)


@dataclass
class HostReport:
    host: str
    items: list[Item] = field(default_factory=list)
    unreachable: str = ""  # why, when the host could not be reached
    checks: list[str] = field(default_factory=list)  # the checks that applied to this host

    @property
    def status(self) -> str:
        if self.unreachable:
            return UNREACHABLE
        if any(item.kind == "error" for item in self.items):
            return ERROR
        return DRIFTED if self.items else CLEAN

    def add(self, check: str, detail: str, kind: str = "drift") -> None:
        self.items.append(Item(check, detail, kind))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"host": self.host, "status": self.status, "items": [asdict(i) for i in self.items]}
        if self.unreachable:
            out["reason"] = self.unreachable
        return out


def exit_code(reports: list[HostReport]) -> int:
    """0 when every host is clean, 1 when something drifted, 2 when a host is unreachable or errored."""
    if not reports:
        return 2
    return max(EXIT[r.status] for r in reports)


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------- the live probe (runs on the host)


def _probe(args: dict) -> dict:  # pragma: no cover - runs on the host (tests run it locally too)
    """Read everything the live checks need; write nothing. Runs as root on the host, stdlib only.

    Password hashes never leave the host (only "usable: yes/no"); secrets files are stat-ed, not read.
    """
    import glob
    import json as _json
    import os as _os
    import pwd
    import subprocess as _sp
    import time as _time

    env = dict(_os.environ, LC_ALL="C", LANG="C", SYSTEMD_PAGER="", SYSTEMD_COLORS="0")

    def run(argv, timeout=60):
        try:
            p = _sp.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
            return {"rc": p.returncode, "out": p.stdout, "err": p.stderr[-1000:]}
        except (OSError, _sp.TimeoutExpired) as exc:
            return {"rc": -1, "out": "", "err": str(exc)}

    def stat(path):
        try:
            st = _os.stat(path)
        except OSError:
            return None
        return {"mode": st.st_mode & 0o7777, "uid": st.st_uid, "gid": st.st_gid}

    def lines(path):
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                return handle.read().splitlines()
        except OSError:
            return None

    # The two slow ones (apt resolving, timesyncd maybe not answering) run while the rest is read.
    import threading

    slow = {}
    apt_argv = ["apt-get", "-s", "-o", "Debug::NoLocking=1", "-o", "Dir::Cache::pkgcache=",
                "-o", "Dir::Cache::srcpkgcache=", "upgrade"]  # simulated; no lock, binary caches in memory only
    threads = [threading.Thread(target=lambda: slow.__setitem__("apt", run(apt_argv, timeout=120))),
               # timesync-status hangs when timesyncd is off the bus
               threading.Thread(target=lambda: slow.__setitem__("timesync", run(["timedatectl", "timesync-status"], timeout=5)))]
    for thread in threads:
        thread.start()

    out = {"time": _time.time()}
    out["route"] = run(["ip", "-j", "-4", "route", "show", "default"])
    out["addr"] = run(["ip", "-j", "-4", "addr", "show"])
    out["reboot_required"] = _os.path.exists("/var/run/reboot-required")
    out["reboot_pkgs"] = lines("/var/run/reboot-required.pkgs") or []
    out["timedatectl"] = run(["timedatectl", "show"], timeout=20)
    out["ss"] = run(["ss", "-ltnpH"])
    out["ufw_added"] = run(["ufw", "show", "added"])
    out["ufw_status"] = run(["ufw", "status"])
    sshd_t = run(["/usr/sbin/sshd", "-T"])
    out["sshd_rc"] = sshd_t["rc"]
    out["sshd_err"] = sshd_t["err"]
    out["sshd"] = {}
    for line in sshd_t["out"].splitlines():
        key, _, value = line.partition(" ")
        out["sshd"].setdefault(key, value)
    out["sshd_dropins"] = {}
    for path in sorted(glob.glob("/etc/ssh/sshd_config.d/*")):
        content = lines(path) or []
        out["sshd_dropins"][_os.path.basename(path)] = [
            line.strip() for line in content if line.strip() and not line.strip().startswith("#")]

    # What the ssh role's first task reads and would fix (that task cannot run in check mode).
    changed = []
    bits = run(["ssh-keygen", "-l", "-f", "/etc/ssh/ssh_host_rsa_key.pub"])["out"].split()
    if not bits or not bits[0].isdigit() or int(bits[0]) < 4096:
        changed.append("rsa-host-key")
    weak = [n for n in ("ssh_host_ecdsa_key", "ssh_host_dsa_key") if _os.path.exists("/etc/ssh/" + n)]
    moduli_weak = False
    for line in lines("/etc/ssh/moduli") or []:
        fields = line.split()
        if len(fields) >= 5 and not fields[0].startswith("#") and fields[4].isdigit() and int(fields[4]) < 3071:
            moduli_weak = True
            break
    version = run(["ssh", "-V"])["err"]
    match = __import__("re").match(r"OpenSSH_(\d+\.\d+)", version)
    out["ssh_state"] = {
        "openssh": match.group(1) if match else "",
        "socket": run(["systemctl", "is-active", "ssh.socket"])["out"].strip(),
        "kex": ",".join(run(["ssh", "-Q", "kex"])["out"].split()),
        "changed": " ".join(changed + (["moduli"] if moduli_weak else [])),
        "weak_host_keys": weak,
    }

    # The admin's authorized keys (public keys: not secret), in every AuthorizedKeysFile.
    key_files = (out["sshd"].get("authorizedkeysfile") or ".ssh/authorized_keys .ssh/authorized_keys2").split()

    def key_paths(user):
        paths = []
        for entry in key_files:
            entry = entry.replace("%h", user.pw_dir).replace("%u", user.pw_name).replace("%%", "%")
            paths.append(entry if entry.startswith("/") else _os.path.join(user.pw_dir, entry))
        return paths

    try:
        admin = pwd.getpwnam(args["admin_user"])
        out["admin_keys"] = {p: lines(p) for p in key_paths(admin) if lines(p) is not None}
    except KeyError:
        out["admin_keys"] = None

    # Login-capable users: a login shell and a usable password or authorized keys. No hash leaves.
    shadow = {}
    for line in lines("/etc/shadow") or []:
        fields = line.split(":")
        if len(fields) > 1:
            shadow[fields[0]] = "empty" if fields[1] == "" else (
                "no" if fields[1].startswith(("!", "*")) else "yes")
    users = []
    for user in pwd.getpwall():
        shell = user.pw_shell or "/bin/sh"
        if _os.path.basename(shell) in ("nologin", "false", "sync", "halt", "shutdown"):
            continue
        keys = 0
        for path in key_paths(user):
            keys += sum(1 for line in lines(path) or [] if line.strip() and not line.strip().startswith("#"))
        users.append({"name": user.pw_name, "uid": user.pw_uid, "shell": shell,
                      "password": shadow.get(user.pw_name, "no"), "keys": keys})
    out["users"] = users
    try:
        out["ssh_group_members"] = __import__("grp").getgrnam(
            (out["sshd"].get("allowgroups") or "").split()[0]).gr_mem if out["sshd"].get("allowgroups") else None
    except KeyError:
        out["ssh_group_members"] = []

    # The bots: their units (as loaded), secrets files (stat only) and egress rules.
    props = ["LoadState", "ActiveState", "SubState", "Result", "NRestarts", "UnitFileState", "User", "DropInPaths",
             "NeedDaemonReload", "FragmentPath", "NoNewPrivileges", "CapabilityBoundingSet", "AmbientCapabilities", "ProtectSystem",
             "ProtectHome", "PrivateTmp", "PrivateDevices", "PrivateUsers", "ProtectHostname", "ProtectClock",
             "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups",
             "ProtectProc", "ProcSubset", "RestrictAddressFamilies", "RestrictNamespaces", "RestrictRealtime",
             "RestrictSUIDSGID", "LockPersonality", "MemoryDenyWriteExecute", "SystemCallArchitectures",
             "DevicePolicy", "KeyringMode", "RemoveIPC", "UMask", "IPAddressDeny"]
    bots = {}
    for name in args.get("bots") or []:
        shown = run(["systemctl", "show", "botvps-bot-%s.service" % name] + ["--property=" + p for p in props])
        bots[name] = {
            "show": dict(line.split("=", 1) for line in shown["out"].splitlines() if "=" in line),
            "secrets": stat("/etc/botvps/%s/secrets.env" % name),
            "etc": stat("/etc/botvps/%s" % name),
        }
    out["bots"] = bots
    units = set(_os.path.basename(p) for p in glob.glob("/etc/systemd/system/botvps-bot-*.service"))
    listed = run(["systemctl", "list-units", "--all", "--plain", "--no-legend", "botvps-bot-*.service"])["out"]
    units.update(line.split()[0] for line in listed.splitlines() if line.split())
    out["bot_units"] = sorted(units)
    out["egress_loaded"] = (run(["nft", "list", "table", "inet", "botvps_egress"])["rc"] == 0
                            if args.get("bots") else None)
    for thread in threads:
        thread.join()
    out.update(slow)
    return out


def probe_script() -> str:
    """The probe as a stand-alone script: ``python3 -c SCRIPT ARGS_JSON`` prints its JSON."""
    source = textwrap.dedent(inspect.getsource(_probe))
    source = re.sub(r"^def _probe\(args: dict\) -> dict:.*$", "def _probe(args):", source, count=1, flags=re.M)
    return source + "\nimport json, sys\nprint(json.dumps(_probe(json.loads(sys.argv[1]))))\n"


# ---------------------------------------------------------------- the live checks (on the controller)


def _bool(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in ("true", "yes", "1", "on")


def _sysbool(value: str) -> str:
    lowered = value.strip().lower()
    return {"true": "yes", "on": "yes", "1": "yes", "false": "no", "off": "no", "0": "no"}.get(lowered, lowered)


def key_id(line: str) -> str | None:
    """``type base64`` of an authorized_keys line (options and comment dropped), None for a non-key line."""
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    try:
        words = shlex.split(line, posix=True)
    except ValueError:
        words = line.split()
    for i, word in enumerate(words[:-1]):
        if re.match(r"^(ssh-|ecdsa-|sk-)", word) and re.match(r"^[A-Za-z0-9+/]+=*$", words[i + 1]):
            return f"{word} {words[i + 1]}"
    return None


def _key_label(line: str) -> str:
    kid = key_id(line) or line
    kind, _, blob = kid.partition(" ")
    comment = line.split(blob, 1)[1].strip() if blob and blob in line else ""
    return f"{kind} ...{blob[-12:]}" + (f" ({_short(comment, 40)})" if comment else "")


def _port_set(ports: Any) -> set[int]:
    """Ports in firewall_allowed_ports style entries ({port, proto}) or plain numbers; ranges a:b expanded."""
    found: set[int] = set()
    for entry in ports or []:
        if isinstance(entry, dict):
            if str(entry.get("proto", "tcp")).lower() not in ("tcp", "any"):
                continue
            entry = entry.get("port")
        text = str(entry)
        for part in text.split(","):
            low, _, high = part.partition(":")
            if low.strip().isdigit():
                start = int(low)
                end = int(high) if high.strip().isdigit() else start
                if end - start <= 65535:
                    found.update(range(start, end + 1))
    return found


def parse_listening(ss_output: str) -> list[dict[str, Any]]:
    """``ss -ltnpH`` lines as [{address, port, process}]."""
    sockets = []
    for line in ss_output.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        local = fields[3]
        address, _, port = local.rpartition(":")
        if not port.isdigit():
            continue
        address = address.strip("[]").split("%")[0]
        process = ""
        match = re.search(r'users:\(\("([^"]+)",pid=(\d+)', line)
        if match:
            process = f"{match.group(1)} pid {match.group(2)}"
        sockets.append({"address": address, "port": int(port), "process": process})
    return sockets


def is_loopback(address: str) -> bool:
    if address in ("localhost",):
        return True
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def primary_ipv4(route_json: str, addr_json: str) -> tuple[str, list[str]]:
    """(source address of the lowest-metric default route, all global IPv4 addresses)."""
    try:
        routes = json.loads(route_json or "[]")
    except ValueError:
        routes = []
    try:
        links = json.loads(addr_json or "[]")
    except ValueError:
        links = []
    addresses = [a["local"] for link in links for a in link.get("addr_info", [])
                 if a.get("family") == "inet" and a.get("scope") == "global" and a.get("local")]
    routes = sorted((r for r in routes if r.get("dst") == "default"), key=lambda r: r.get("metric", 0))
    primary = ""
    if routes:
        primary = routes[0].get("prefsrc", "")
        if not primary:
            dev = routes[0].get("dev")
            on_dev = [a["local"] for link in links for a in link.get("addr_info", [])
                      if a.get("dev") == dev and a.get("family") == "inet" and a.get("scope") == "global"]
            primary = on_dev[0] if on_dev else ""
    if not primary and addresses:
        primary = addresses[0]
    return primary, addresses


def security_updates(apt_output: str) -> list[str]:
    """Packages `apt-get -s upgrade` would take from a -security suite."""
    found = []
    for line in apt_output.splitlines():
        if line.startswith("Inst ") and re.search(r"\([^)]*-[Ss]ecurity", line):
            found.append(line.split()[1])
    return found


UFW_MARK = "botvps"  # the comment on every ufw rule the firewall role declares
UFW_RESCUE_MARK = "botvps-rescue"  # the ssh role's rollback opened the old port again (roles/ssh/tasks/main.yml)


def ufw_rule_owner(comment: str) -> str:
    """Whose a ufw rule is, from its comment: "declared" (the firewall role's), "rescue" (the ssh role's rollback
    left it: the next provision removes it) or "foreign" (by hand, or another tool). drift and the report judge
    rules by this one reading."""
    comment = comment.strip().strip("'\"")
    return "declared" if comment == UFW_MARK else "rescue" if comment == UFW_RESCUE_MARK else "foreign"


def clock_offset(timesync_status: str) -> float | None:
    """Seconds the clock was off at timesyncd's last poll (``timedatectl timesync-status``'s ``Offset: +1.234ms``).

    None when there is no Offset line, or when that poll was timesyncd's first since it started (``Packet count: 1``):
    the first sample measures the clock the machine booted with (set from the RTC, which counts whole seconds, so
    often most of a second off) before timesyncd corrects it, not how far off the clock is now.
    """
    match = re.search(r"^\s*Offset:\s*([+-]?[\d.]+)\s*(us|ms|s|min)\s*$", timesync_status, re.M)
    packets = re.search(r"^\s*Packet count:\s*(\d+)\s*$", timesync_status, re.M)
    if not match or (packets and int(packets.group(1)) <= 1):
        return None
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0}[match.group(2)]
    return float(match.group(1)) * scale


def evaluate(expect: dict[str, Any], facts: dict[str, Any], report: HostReport) -> None:
    """Compare the probe's facts with what the inventory declares; add an item per difference."""
    checks = ["ipv4", "security-updates", "reboot-required", "clock", "listening-sockets", "login-users",
              "authorized-keys"]
    ssh_on, fw_on, time_on = (_bool(expect.get(k, True)) for k in ("ssh_enabled", "firewall_enabled", "timesync_enabled"))
    bots = [b for b in expect.get("bots") or [] if b]

    # ipv4
    # A host without static_ipv4 on its interface is a NAT cloud's: preflight (in the check-mode play) asks
    # the world which address it sees, and a wrong answer is a settings item; here only a declared
    # egress_ipv4 must be the primary address.
    static, declared = str(expect.get("static_ipv4") or ""), str(expect.get("egress_ipv4") or "").strip()
    primary, addresses = primary_ipv4(facts.get("route", {}).get("out", ""), facts.get("addr", {}).get("out", ""))
    listed = f"addresses: {', '.join(addresses) or 'none'}"
    if static and declared and primary != declared:
        report.add("ipv4", f"primary IPv4 is {primary or 'none'}, egress_ipv4 is {declared} ({listed}): the bots' "
                           f"packets leave with {primary or 'nothing'}, which the egress rules drop")
    elif static and not declared and static in addresses and primary != static:
        report.add("ipv4", f"primary IPv4 is {primary or 'none'}, static_ipv4 is {static} (the host has it too, but "
                           f"not as its primary address; {listed}): the exchange would see {primary or 'nothing'}")

    # security-updates
    apt = facts.get("apt", {})
    if apt.get("rc") != 0:
        report.add("security-updates", f"apt-get -s upgrade failed: {_short(apt.get('err', ''))}", "error")
    else:
        pending = security_updates(apt.get("out", ""))
        if pending:
            report.add("security-updates", f"{len(pending)} security update(s) pending: {_short(', '.join(pending), 160)}")

    # reboot-required
    if facts.get("reboot_required"):
        pkgs = ", ".join(facts.get("reboot_pkgs") or []) or "unknown packages"
        report.add("reboot-required", f"a reboot is pending (/var/run/reboot-required; for {_short(pkgs, 120)})")

    # clock
    if time_on:
        shown = dict(line.split("=", 1) for line in facts.get("timedatectl", {}).get("out", "").splitlines() if "=" in line)
        if shown.get("NTP") == "no":
            report.add("clock", "NTP is switched off (timedatectl NTP=no)")
        elif shown.get("NTPSynchronized") != "yes":
            report.add("clock", "the clock is not synchronised (timedatectl NTPSynchronized="
                                f"{shown.get('NTPSynchronized', '?')})")
        offset = clock_offset(facts.get("timesync", {}).get("out", ""))
        if offset is not None and abs(offset) > CLOCK_MAX_OFFSET:
            report.add("clock", f"clock offset {offset:+.3f} s (more than {CLOCK_MAX_OFFSET} s)")

    # listening-sockets
    declared = _port_set([expect.get("ssh_port", 22)]) | _port_set(expect.get("firewall_allowed_ports"))
    seen: dict[tuple[int, str], list[str]] = {}
    for sock in parse_listening(facts.get("ss", {}).get("out", "")):
        if sock["port"] in declared or is_loopback(sock["address"]):
            continue
        seen.setdefault((sock["port"], sock["process"]), []).append(sock["address"] or "*")
    for (port, process), addrs in sorted(seen.items()):
        report.add("listening-sockets", f"TCP port {port} listens on {', '.join(addrs)} ({process or 'unknown process'}) "
                                        f"but is not declared (ssh_port, firewall_allowed_ports: {sorted(declared)})")

    # ufw-rules
    if fw_on:
        checks.append("ufw-rules")
        added, status = facts.get("ufw_added", {}), facts.get("ufw_status", {})
        if added.get("rc") != 0 or status.get("rc") != 0:
            report.add("ufw-rules", f"ufw cannot be read: {_short(added.get('err') or status.get('err') or '')}", "error")
        else:
            if "Status: active" not in status.get("out", ""):
                report.add("ufw-rules", "ufw is not active")
            for line in filter(str.strip, added.get("out", "").splitlines()[1:]):
                owner = ufw_rule_owner(line.rpartition(" comment ")[2] if " comment " in line else "")
                if owner == "rescue":
                    report.add("ufw-rules", f"rescue rule left by a rolled-back SSH change: {line.strip()} "
                                            "(the next invoke provision removes it)")
                elif owner == "foreign":
                    report.add("ufw-rules", f"rule without the botvps mark: {line.strip()}")

    # sshd
    if ssh_on:
        checks.append("sshd")
        sshd = facts.get("sshd") or {}
        if facts.get("sshd_rc") not in (0, None) or not sshd:
            report.add("sshd", f"sshd -T fails, the configuration is broken: {_short(facts.get('sshd_err', ''))}")
        else:
            wanted = dict(SSHD_EXPECTED, port=str(expect.get("ssh_port", 22)))
            for key, value in wanted.items():
                if key in sshd and sshd[key] != value:
                    report.add("sshd", f"effective {key} is {sshd[key]}, expected {value} (sshd -T)")
        dropins = facts.get("sshd_dropins") or {}
        if "00-botvps.conf" not in dropins:
            report.add("sshd", "botvps' drop-in /etc/ssh/sshd_config.d/00-botvps.conf is missing")
        for name, lines in sorted(dropins.items()):
            if name in KNOWN_SSHD_DROPINS:
                continue
            sensitive = [line for line in lines if line.split()[0].lower() in SSHD_SENSITIVE]
            order = "read before botvps' own, so its settings win" if name < "00-botvps.conf" else (
                "read after botvps' own drop-in, which still wins for the settings both set")
            what = f"sets {_short('; '.join(sensitive), 120)}" if sensitive else f"{len(lines)} setting(s)"
            report.add("sshd", f"unmanaged drop-in /etc/ssh/sshd_config.d/{name} {what} ({order})")
        state = facts.get("ssh_state") or {}
        if state.get("changed"):
            report.add("settings", f"ssh: host keys/moduli would be fixed: {state['changed'].strip()}")
        if _bool(expect.get("ssh_remove_weak_host_keys", True)) and state.get("weak_host_keys"):
            report.add("settings", f"ssh: weak host keys would be removed: {', '.join(state['weak_host_keys'])}")

    # authorized-keys
    admin = str(expect.get("admin_user") or "")
    expected_ids = {k for k in (key_id(line) for line in expect.get("admin_keys") or []) if k}
    files = facts.get("admin_keys")
    if files is None:
        report.add("authorized-keys", f"the admin account {admin} does not exist")
    else:
        present: set[str] = set()
        for path, lines in sorted(files.items()):
            for line in lines or []:
                kid = key_id(line)
                if kid is None:
                    continue
                present.add(kid)
                if kid not in expected_ids:
                    report.add("authorized-keys", f"{path} has a key not in the inventory: {_key_label(line)}")
        missing = expected_ids - present
        if missing:
            report.add("authorized-keys", f"{len(missing)} inventory key(s) missing from {admin}'s authorized_keys")

    # login-users
    allowed_group = facts.get("ssh_group_members")
    for user in facts.get("users") or []:
        if user["name"] in ("root", admin) or not (user.get("password") in ("yes", "empty") or user.get("keys")):
            continue
        means = [{"yes": "a password", "empty": "an EMPTY password"}[user["password"]]] if user.get("password") in ("yes", "empty") else []
        if user.get("keys"):
            means.append(f"{user['keys']} authorized key(s)")
        ssh = "" if allowed_group is None else (" (in the SSH group)" if user["name"] in allowed_group
                                                else " (not in the SSH group: console/su only)")
        report.add("login-users", f"user {user['name']} (uid {user['uid']}, shell {user['shell']}) can log in with "
                                  f"{' and '.join(means)}{ssh}")

    # bots
    units = set(facts.get("bot_units") or [])
    declared_units = {f"botvps-bot-{name}.service" for name in bots}
    if bots or units:
        checks.extend(BOT_CHECKS)
    for unit in sorted(units - declared_units):
        report.add("bot-services", f"{unit} is on the host but not in the inventory")
    for name in bots:
        sandbox = (expect.get("bots_sandbox") or {}).get(name) or {}
        unit = f"botvps-bot-{name}.service"
        data = (facts.get("bots") or {}).get(name) or {}
        show = data.get("show") or {}
        if show.get("LoadState") != "loaded":
            report.add("bot-services", f"{unit} is {show.get('LoadState', 'unknown')} (not installed?)")
        elif show.get("ActiveState") != "active":
            why = f"{show.get('ActiveState')} ({show.get('SubState')})"
            # failed (not auto-restart) after restarts: the start limit made systemd give up (systemd 257
            # keeps Result=exit-code then; older ones say start-limit-hit).
            if show.get("Result") == "start-limit-hit" or (show.get("ActiveState") == "failed"
                                                            and show.get("NRestarts", "0") not in ("", "0")):
                why += (f", crash loop: systemd stopped restarting it after {show.get('NRestarts', '?')} restarts "
                        f"(journalctl -u {unit}; fix the cause, then provision or systemctl reset-failed + start)")
            report.add("bot-services", f"{unit} is not running: {why}")
        if show.get("LoadState") == "loaded":
            if show.get("User") != f"bot-{name}":
                report.add("bot-sandbox", f"{unit} runs as {show.get('User') or 'root'}, not bot-{name}")
            if show.get("DropInPaths"):
                report.add("bot-sandbox", f"{unit} is changed by drop-in(s) botvps did not write: {show['DropInPaths']}")
            if show.get("NeedDaemonReload") == "yes":
                report.add("bot-sandbox", f"{unit} changed on disk since systemd loaded it (daemon-reload pending)")
            for setting in SANDBOX_COMPARABLE:
                if setting not in sandbox or setting not in show:
                    continue
                want = sandbox[setting]
                want = " ".join(want) if isinstance(want, list) else str(want)
                have = show[setting]
                if setting == "RestrictAddressFamilies":
                    same = set(want.split()) == set(have.split())
                elif setting == "UMask":
                    same = want.lstrip("0") == have.lstrip("0")
                else:
                    same = _sysbool(want) == _sysbool(have)
                if not same:
                    report.add("bot-sandbox", f"{unit}: {setting} is {have or '(empty)'}, the bots role sets {want or '(empty)'}")
        for label, info, mode in (("secrets file", data.get("secrets"), 0o600), ("directory", data.get("etc"), 0o700)):
            path = f"/etc/botvps/{name}" + ("/secrets.env" if label == "secrets file" else "")
            if info is None:
                report.add("bot-secrets", f"{label} {path} is missing")
            elif info["mode"] & 0o077 or info["uid"] != 0 or info["gid"] != 0 or info["mode"] != mode:
                open_to = "readable by others" if info["mode"] & 0o004 else "open to its group" if info["mode"] & 0o070 else ""
                report.add("bot-secrets", f"{label} {path} has mode {info['mode']:04o}, uid {info['uid']}, gid {info['gid']} "
                                          f"(expected {mode:04o} root:root){': ' + open_to if open_to else ''}")
    if bots and facts.get("egress_loaded") is False:
        report.add("bot-sandbox", "the bots' egress rules (nftables table inet botvps_egress) are not loaded")

    for check in checks:
        if check not in report.checks:
            report.checks.append(check)


# ---------------------------------------------------------------- the playbook's JSON output


def _role_and_task(name: str) -> tuple[str, str]:
    role, sep, task = name.partition(" : ")
    return (role.strip(), task.strip()) if sep else ("", name.strip())


def _diff_paths(diff: Any) -> list[str]:
    paths = []
    for part in diff if isinstance(diff, list) else [diff] if isinstance(diff, dict) else []:
        for key in ("after_header", "before_header"):
            header = part.get(key) if isinstance(part, dict) else None
            if header and header not in paths and not str(header).startswith(("before", "after")):
                paths.append(str(header))
                break
    return paths


def _change_detail(result: dict[str, Any]) -> str:
    """What a check-mode task would change, from its result (file names, rules, units; no contents)."""
    parts = []
    paths = result.get("changed_paths") or _diff_paths(result.get("diff"))
    if paths:
        parts.append("would change " + ", ".join(str(p) for p in paths))
    for key, label in (("retired_now", "would retire"), ("added", "would add"), ("deleted", "would delete"),
                       ("enabled_now", "would enable"),
                       ("started_now", "would start"), ("restarted_now", "would restart")):
        if result.get(key):
            parts.append(f"{label} {', '.join(str(v) for v in result[key])}")
    if result.get("defaults_set"):
        parts.append("would set ufw defaults " + ", ".join(f"{k} {v}" for k, v in result["defaults_set"].items()))
    return _short("; ".join(parts) or "would change", 300)


def parse_playbook(output: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per host, from the JSON callback's output: unreachable, changed tasks, failures, probe, declared."""
    hosts: dict[str, dict[str, Any]] = {}

    def entry(host: str) -> dict[str, Any]:
        return hosts.setdefault(host, {"unreachable": "", "changed": [], "failed": [], "probe": None,
                                       "expect": None, "checked": False})

    for host in (output.get("stats") or {}):
        entry(host)
    for play_index, play in enumerate(output.get("plays") or []):
        for task in play.get("tasks") or []:
            info = task.get("task") or {}
            role, name = _role_and_task(info.get("name", ""))
            handler = "/handlers/" in str(info.get("path", ""))
            for host, result in (task.get("hosts") or {}).items():
                state = entry(host)
                if result.get("unreachable"):
                    state["unreachable"] = state["unreachable"] or _short(result.get("msg", "unreachable"))
                    continue
                if name.startswith("Drift, read the live state"):
                    state["probe"] = result
                    continue
                if name.startswith("Drift, what the inventory declares"):
                    state["expect"] = result.get("msg") if isinstance(result.get("msg"), dict) else None
                    continue
                if play_index > 0:
                    state["checked"] = True
                if result.get("failed"):
                    msg = result.get("msg") or result.get("stderr") or "failed"
                    if role == "connect" and play_index == 0:
                        state["unreachable"] = _short(result.get("stderr") or msg)
                        continue
                    assertion = "assertion" in result or result.get("action") in ("assert", "ansible.builtin.assert")
                    state["failed"].append({"role": role, "task": name, "msg": _short(msg, 300),
                                            "assertion": assertion, "play": play_index})
                elif result.get("changed") and not handler and play_index > 0:
                    state["changed"].append({"role": role, "task": name, "what": _change_detail(result),
                                             "hidden": "censored" in result})
    return hosts


def settings_items(state: dict[str, Any], report: HostReport) -> None:
    for change in state["changed"]:
        where = f"{change['role']}: {change['task']}" if change["role"] else change["task"]
        what = "would change (details hidden: no_log)" if change["hidden"] else change["what"]
        report.add("settings", f"{where}: {what}")
    for failure in state["failed"]:
        where = f"{failure['role']}: {failure['task']}" if failure["role"] else failure["task"]
        if failure["assertion"]:
            report.add("settings", f"{where}: {failure['msg']}")
        else:
            report.add("settings", f"{where}: failed in check mode: {failure['msg']}", "error")


# ---------------------------------------------------------------- the verification suite


def parse_junit(xml_text: str, hosts: list[str]) -> dict[str, list[str]]:
    """Failed/errored testcases of a pytest JUnit file, per host (testinfra's ``ansible://HOST`` id)."""
    failures: dict[str, list[str]] = {h: [] for h in hosts}
    root = ET.fromstring(xml_text)
    for case in root.iter("testcase"):
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        if problem is None:
            continue
        name = case.get("name", "")
        module = (case.get("classname") or "").rsplit(".", 1)[-1]
        candidates = [h for h in hosts if f"ansible://{h}" in name]
        owner = max(candidates, key=len) if candidates else None
        test = name.replace(f"ansible://{owner}", "").replace("[-", "[").replace("[]", "") if owner else name
        message = (problem.get("message") or problem.text or "").strip().splitlines()
        detail = f"{module}.py::{test}: {_short(message[0] if message else problem.tag, 160)}"
        for host in [owner] if owner else hosts:
            failures.setdefault(host, []).append(detail)
    return failures


def run_verify(inventory: Path, hosts: list[str], vault_password_file: str | None) -> tuple[dict[str, list[str]], str]:
    """Run tests/host against ``hosts`` (read-only tests only), one pytest per host at the same time;
    (failures per host, error text)."""
    try:
        import testinfra  # noqa: F401
    except ImportError:
        return {}, "pytest-testinfra is not installed (pip install -e .[dev])"
    if not hosts:
        return {}, ""
    with ThreadPoolExecutor(max_workers=min(len(hosts), 20)) as pool:
        results = list(pool.map(lambda host: _verify_host(inventory, host, vault_password_file), hosts))
    failures: dict[str, list[str]] = {}
    errors = []
    for host, (found, error) in zip(hosts, results):
        failures.update(found)
        if error:
            errors.append(f"{host}: {error}" if len(hosts) > 1 else error)
    return failures, "; ".join(errors)


def _verify_host(inventory: Path, host: str, vault_password_file: str | None) -> tuple[dict[str, list[str]], str]:
    from botvps import verify

    with tempfile.TemporaryDirectory(prefix="botvps-drift-") as tmp:
        junit = Path(tmp) / "verify.xml"
        extra = [f"--hosts=ansible://{host}", f"--junitxml={junit}",
                 "-o", "junit_family=xunit2", "-k", " and ".join(f"not {name}" for name in VERIFY_SKIPPED)]
        env = verify.environment(vault_password_file=vault_password_file or None)  # no console-based checks
        # ansible.cfg asks for ControlMaster but names no ControlPath, so testinfra would open a new SSH
        # connection per command and trip ufw's limit (6 per 30 s): give it a path to share one.
        env["ANSIBLE_SSH_EXTRA_ARGS"] = f"-o ControlPath={tmp}/%C"
        result = subprocess.run(verify.command(inventory, host, extra), cwd=PROJECT_ROOT, env=env,
                                capture_output=True, text=True)
        if not junit.exists():
            tail = (result.stdout + result.stderr).strip().splitlines()[-5:]
            return {}, f"the verification suite did not run (exit {result.returncode}): {_short(' | '.join(tail), 300)}"
        try:
            return parse_junit(junit.read_text(), [host]), ""
        except ET.ParseError as exc:
            return {}, f"cannot read the verification suite's JUnit file: {exc}"


# ---------------------------------------------------------------- the run


def ansible_args(limit: str | None, vault_password_file: str | None) -> list[str]:
    args = ["--check", "--diff"]
    if limit:
        args += ["--limit", limit]
    if vault_password_file:
        args += ["--vault-password-file", vault_password_file]
    return args


def extra_vars() -> str:
    """The probe (never templated: !unsafe) and the ssh role's host state, as an extra-vars YAML file.

    The ssh role's first task reads the host (and fixes weak keys) with a shell command, which
    check mode skips; its result then feeds the role's template. As an extra variable (which
    outranks a registered one), ``ssh_host_keys`` takes what the probe read instead.
    """
    script = probe_script().replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    ssh = json.dumps({"stdout": "{{ drift_ssh_state | default({}) | to_json }}", "changed": False})
    return f'drift_probe_script: !unsafe "{script}"\nssh_host_keys: {ssh}\n'


def run_playbook(inventory: Path, limit: str | None, vault_password_file: str | None) -> tuple[dict | None, str]:
    with tempfile.TemporaryDirectory(prefix="botvps-drift-") as tmp:
        extra = Path(tmp) / "extra.yml"
        extra.write_text(extra_vars())
        return runner.json_playbook(PLAYBOOK, inventory, [*ansible_args(limit, vault_password_file), "-e", f"@{extra}"])


def check(inventory: Path, limit: str | None = None, vault_password_file: str | None = None,
          log=lambda msg: print(msg, file=sys.stderr), suite: bool = True) -> list[HostReport]:
    """Run every look at the hosts (``suite=False``: all but the verification suite); one report per host."""
    log(f"drift: check mode and live checks ({PLAYBOOK.relative_to(PROJECT_ROOT)}) ...")
    started = time.monotonic()
    output, stderr = run_playbook(inventory, limit, vault_password_file)
    log(f"drift: playbook done in {time.monotonic() - started:.0f} s")
    if output is None:
        lines = [line for line in stderr.splitlines() if line.strip()]
        report = HostReport(host=limit or "all")
        report.add("settings", f"ansible-playbook failed: {_short(' | '.join(lines[-4:]), 400)}", "error")
        return [report]
    parsed = parse_playbook(output)
    reports: dict[str, HostReport] = {}
    for host, state in sorted(parsed.items()):
        report = reports[host] = HostReport(host)
        if state["unreachable"]:
            report.unreachable = state["unreachable"]
            continue
        report.checks.append("settings")
        settings_items(state, report)
        if not state["checked"] and not state["failed"]:
            report.add("settings", "the check-mode play did not run for this host", "error")
        probe, expect = state["probe"], state["expect"]
        if not probe or probe.get("rc") != 0 or expect is None:
            why = _short((probe or {}).get("stderr") or (probe or {}).get("msg") or "no result")
            report.add(LIVE, f"the live checks did not run: {why}", "error")
            continue
        try:
            facts = json.loads(probe.get("stdout") or "")
        except ValueError:
            report.add(LIVE, "the live checks returned no JSON", "error")
            continue
        evaluate(expect, facts, report)
    reachable = [h for h, r in reports.items() if not r.unreachable]
    if reachable and suite:
        log(f"drift: verification suite on {', '.join(reachable)} ...")
        started = time.monotonic()
        failures, error = run_verify(inventory, reachable, vault_password_file)
        log(f"drift: verification suite done in {time.monotonic() - started:.0f} s")
        for host in reachable:
            reports[host].checks.insert(1, "verify")
            if error:
                reports[host].add("verify", error, "error")
            for detail in failures.get(host, []):
                reports[host].add("verify", detail)
    order = list(CHECKS)
    for report in reports.values():
        report.items.sort(key=lambda item: order.index(item.check) if item.check in order else len(order))
    return list(reports.values())


# ---------------------------------------------------------------- output


def to_json(reports: list[HostReport], seconds: float, when: str | None = None) -> str:
    return json.dumps({"time": when or now(), "seconds": round(seconds, 1), "exit": exit_code(reports),
                       "hosts": [r.to_dict() for r in reports]}, separators=(",", ":"))


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def table(reports: list[HostReport], seconds: float | None = None) -> str:
    rows = []
    for report in reports:
        status = report.status.upper() if report.status != CLEAN else "clean"
        count = f" ({len(report.items)} item{'s' if len(report.items) != 1 else ''})" if report.items else ""
        rows.append(f"{report.host}: {status}{count}")
        if report.unreachable:
            rows.append(f"  {'reachable':18} {report.unreachable}")
        for item in report.items:
            mark = " [error]" if item.kind == "error" else ""
            rows.append(f"  {item.check:18} {item.detail}{mark}")
    counts = {s: sum(1 for r in reports if r.status == s) for s in (CLEAN, DRIFTED, UNREACHABLE, ERROR)}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    rows.append(f"drift: {summary or 'no hosts'}" + (f" in {seconds:.0f} s" if seconds is not None else "")
                + f" (exit {exit_code(reports)})")
    return "\n".join(rows)


def junit_xml(reports: list[HostReport]) -> str:
    """JUnit XML: one testsuite per host, one testcase per check."""
    suites = ET.Element("testsuites", name="botvps drift")
    for report in reports:
        suite = ET.SubElement(suites, "testsuite", name=report.host)
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        extra = {i.check: "" for i in report.items if i.check not in CHECKS}
        for check_name, description in {**CHECKS, **extra}.items():
            case = ET.SubElement(suite, "testcase", classname=f"drift.{report.host}", name=check_name)
            counts["tests"] += 1
            items = [i for i in report.items if i.check == check_name]
            if report.unreachable:
                ET.SubElement(case, "error", message=f"unreachable: {report.unreachable}")
                counts["errors"] += 1
            elif any(i.kind == "error" for i in items):
                error = ET.SubElement(case, "error", message=next(i.detail for i in items if i.kind == "error"))
                error.text = "\n".join(i.detail for i in items)
                counts["errors"] += 1
            elif items:
                failure = ET.SubElement(case, "failure", message=f"{len(items)} drifted: {items[0].detail}")
                failure.text = "\n".join(i.detail for i in items)
                counts["failures"] += 1
            elif check_name not in report.checks:
                ET.SubElement(case, "skipped", message=f"not applicable to this host ({description})")
                counts["skipped"] += 1
        for key, value in counts.items():
            suite.set(key, str(value))
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def run(inventory: Path = Path("inventory"), limit: str | None = None, as_json: bool = False,
        junit: str | None = None, vault_password_file: str | None = None) -> int:
    """`invoke drift`: check, print, return the exit code."""
    started = time.monotonic()
    if not Path(inventory).exists():
        print(f"drift: no inventory at {inventory}", file=sys.stderr)
        return 2
    reports = check(Path(inventory), limit, vault_password_file)
    seconds = time.monotonic() - started
    if junit:
        Path(junit).write_text(junit_xml(reports))
    print(to_json(reports, seconds) if as_json else table(reports, seconds))
    return exit_code(reports)


# ---------------------------------------------------------------- history and schedule


def history_file() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "botvps" / "drift-history.jsonl"


def read_history(path: Path, host: str | None = None) -> tuple[list[dict[str, Any]], int]:
    """Rows {time, host, status, items} from the history file, oldest first; and the unreadable line count."""
    rows: list[dict[str, Any]] = []
    bad = 0
    try:
        text = path.read_text()
    except OSError:
        return rows, 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            run_result = json.loads(line)
            for entry in run_result["hosts"]:
                if host and entry["host"] != host:
                    continue
                rows.append({"time": run_result.get("time", "?"), "host": entry["host"], "status": entry["status"],
                             "items": len(entry.get("items") or []),
                             "checks": sorted({i.get("check", "?") for i in entry.get("items") or []})})
        except (ValueError, KeyError, TypeError):
            bad += 1
    rows.sort(key=lambda r: (r["time"], r["host"]))
    return rows, bad


def format_history(rows: list[dict[str, Any]], bad: int = 0) -> str:
    if not rows:
        out = ["no drift runs recorded yet"]
    else:
        out = [f"{'time':20}  {'host':24}  {'status':11}  {'items':>5}  checks"]
        for row in rows:
            out.append(f"{row['time']:20}  {row['host']:24}  {row['status']:11}  {row['items']:>5}  {', '.join(row['checks'])}")
    if bad:
        out.append(f"({bad} unreadable line{'s' if bad != 1 else ''} skipped)")
    return "\n".join(out)


def history(host: str | None = None, path: Path | None = None) -> int:
    rows, bad = read_history(path or history_file(), host)
    print(format_history(rows, bad))
    return 0


def schedule_units(inventory: Path, vault_password_file: str | None = None, limit: str | None = None,
                   history_path: Path | None = None, project: Path = PROJECT_ROOT,
                   invoke: Path | None = None) -> dict[str, str]:
    """The systemd user service and timer that run `invoke drift --json` daily into the history file."""
    invoke = invoke or Path(sys.executable).parent / "invoke"
    history_path = history_path or history_file()
    args = [str(invoke), "drift", "--json", "--inventory", str(Path(inventory).resolve())]
    if limit:
        args += ["--limit", limit]
    if vault_password_file:
        args += ["--vault-password-file", str(Path(vault_password_file).resolve())]
    command = " ".join(shlex.quote(a) for a in args) + " >> " + shlex.quote(str(history_path))
    # systemd expands % specifiers and $VARIABLES even inside quotes: keep them literal.
    command = command.replace("%", "%%").replace("$", "$$")
    service = f"""\
# Written by `invoke drift.schedule`: check the servers for drift (read-only) and keep the result.
[Unit]
Description=botvps drift check (read-only) of {Path(inventory).resolve()}
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
WorkingDirectory={project}
ExecStartPre=/usr/bin/mkdir -p {shlex.quote(str(history_path.parent))}
# One JSON line per run. Exit 1 (drift) or 2 (unreachable/error) marks the run failed: systemctl --user --failed.
ExecStart=/bin/sh -c {shlex.quote(command)}
TimeoutStartSec=1h
Nice=10
"""
    timer = """\
# Written by `invoke drift.schedule`.
[Unit]
Description=Daily botvps drift check

[Timer]
OnCalendar=daily
RandomizedDelaySec=1h
Persistent=true

[Install]
WantedBy=timers.target
"""
    return {"botvps-drift.service": service, "botvps-drift.timer": timer}


def user_unit_dir() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "systemd" / "user"


def schedule(inventory: Path = Path("inventory"), vault_password_file: str | None = None, limit: str | None = None,
             install: bool = False) -> int:
    units = schedule_units(inventory, vault_password_file, limit)
    if not install:
        for name, text in units.items():
            print(f"# ~/.config/systemd/user/{name}\n{text}")
        print("# install with: invoke drift.schedule --install  (and `loginctl enable-linger` to run while logged out)")
        return 0
    directory = user_unit_dir()
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in units.items():
        (directory / name).write_text(text)
        print(f"wrote {directory / name}")
    history_file().parent.mkdir(parents=True, exist_ok=True)
    enable = ["systemctl", "--user", "enable", "--now", "botvps-drift.timer"]
    try:
        subprocess.run(["systemctl", "--user", "daemon-reload"], check=True, capture_output=True, timeout=30)
        subprocess.run(enable, check=True, capture_output=True, timeout=30)
        print("enabled botvps-drift.timer; history goes to " + str(history_file()))
    except (OSError, subprocess.SubprocessError):
        print("could not reach the systemd user manager; when you can, run: systemctl --user daemon-reload && "
              + " ".join(enable))
    print("to run it while you are logged out: loginctl enable-linger " + os.environ.get("USER", "$USER"))
    return 0
