"""Tests for botvps.validate: broken inventories must fail with HOST: FIELD: what -> fix, and never show a secret.

Every case starts from one valid inventory (two hosts, group_vars, host_vars and a
vault-encrypted group_vars/all/vault.yml holding sentinel secrets), breaks one thing, runs the
CLI in-process and expects one line naming the host, the field and the fix.  Every case also
asserts that no sentinel secret (nor the private key's content) appears anywhere in the output.
"""

from __future__ import annotations

import copy
import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("ansible")
from ansible.parsing.vault import VaultLib, VaultSecret  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

from botvps import validate as v  # noqa: E402

VAULT_PASSWORD = "correct horse battery staple"
PUBLIC_IP_1, PUBLIC_IP_2 = "95.216.10.20", "95.216.10.21"


def _sentinel(tag: str) -> str:
    return f"SENTINEL-{tag}-{secrets.token_hex(8)}"


# Planted in the vault of every case; none may ever be printed.
SENTINELS = {name: _sentinel(name) for name in (
    "alpha-key", "alpha-secret", "beta-key", "beta-secret", "beta-pass", "become")}


# --------------------------------------------------------------------------
# Keys (real ones, from ssh-keygen)
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class Keys:
    ed25519_pub: Path
    rsa4096_pub: Path
    rsa2048_pub: Path
    private: Path
    dsa_line: str

    def line(self, path: Path) -> str:
        return path.read_text().strip()


def _keygen(directory: Path, name: str, *args: str) -> Path:
    path = directory / name
    subprocess.run(["ssh-keygen", "-q", "-N", "", "-C", f"{name}@test", "-f", str(path), *args], check=True,
                   stdin=subprocess.DEVNULL)
    return path


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    directory = tmp_path_factory.mktemp("keys")
    ed = _keygen(directory, "ed", "-t", "ed25519")
    rsa4096 = _keygen(directory, "rsa4096", "-t", "rsa", "-b", "4096")
    rsa2048 = _keygen(directory, "rsa2048", "-t", "rsa", "-b", "2048")
    # OpenSSH may be built without DSA: an ssh-dss line is all the check looks at.
    dsa_line = "ssh-dss AAAAB3NzaC1kc3MAAACBAP1/U4EddRIpUt9KnC7s5Of2EbdSPO9EAMMeP4C2USZpRV1AIlH7WT2NWPq/xfW6 old@dsa"
    return Keys(Path(f"{ed}.pub"), Path(f"{rsa4096}.pub"), Path(f"{rsa2048}.pub"), ed, dsa_line)


# --------------------------------------------------------------------------
# Inventories
# --------------------------------------------------------------------------

def base_inventory(keys: Keys) -> dict[str, Any]:
    """A valid inventory: web1 runs alpha (binance), web2 runs beta (okx)."""
    return {
        "hosts": {"web1": {"ansible_host": "127.0.0.1", "ansible_port": 1},
                  "web2": {"ansible_host": "127.0.0.1", "ansible_port": 1}},
        "group_vars": {"all": {
            "admin_user": "ops",
            "admin_key_files": [str(keys.ed25519_pub)],
            "admin_keys": [keys.line(keys.rsa4096_pub)],
            "firewall_admin_cidrs": ["198.51.100.0/24", "2001:db8::/48"],
            "ssh_port": 2222,
            "fail2ban_maxretry": "4",  # quoted int: Ansible converts it
            "updates_auto_reboot": "yes",  # YAML-1.1 style bool: Ansible converts it
            "updates_reboot_time": "04:30",
            "ssh_public_port": "{{ ssh_port }}",  # templated: assumed valid
        }},
        "host_vars": {
            "web1": {
                "static_ipv4": PUBLIC_IP_1,
                "firewall_allowed_ports": [{"port": 8080, "proto": "tcp", "src": "198.51.100.0/24"}],
                "bots": [{
                    "name": "alpha",
                    "source": {"git": "https://example.org/alpha.git", "version": "v1.2.0"},
                    "command": ["python3", "-m", "alpha"],
                    "exchange": "binance",
                    "secrets": ["ALPHA_KEY", "ALPHA_SECRET"],
                    "api_key_var": "ALPHA_KEY",
                    "api_secret_var": "ALPHA_SECRET",
                    "environment": {"LOG_LEVEL": "info"},
                    "egress_ports": [443],
                    "kill_signal": "SIGINT",
                    "timeout_stop_sec": 45,
                    "stop_command": None,
                    "key_audit": True,
                    "key_audit_fail_open": False,
                    "exchange_base_url": None,
                }],
            },
            "web2": {
                "static_ipv4": PUBLIC_IP_2,
                "bots": [{
                    "name": "beta",
                    "source": {"pip": "beta-bot==2.0"},
                    "command": ["beta-bot", "--live"],
                    "exchange": "okx",
                    "secrets": ["OKX_KEY", "OKX_SECRET", "OKX_PASS"],
                    "api_key_var": "OKX_KEY",
                    "api_secret_var": "OKX_SECRET",
                    "api_passphrase_var": "OKX_PASS",
                    "exchange_base_url": "https://www.okx.com",
                }],
            },
        },
        "vault": {
            "ansible_become_password": SENTINELS["become"],
            "botvps_secrets": {
                "alpha": {"ALPHA_KEY": SENTINELS["alpha-key"], "ALPHA_SECRET": SENTINELS["alpha-secret"]},
                "beta": {"OKX_KEY": SENTINELS["beta-key"], "OKX_SECRET": SENTINELS["beta-secret"],
                         "OKX_PASS": SENTINELS["beta-pass"]},
            },
        },
    }


class Unsafe(str):
    """Dumped with Ansible's !unsafe tag, as botvps.secrets writes the vault's values."""


class _VaultDumper(yaml.SafeDumper):
    pass


_VaultDumper.add_representer(Unsafe, lambda dumper, data: dumper.represent_scalar("!unsafe", str(data), style="'"))


def vault_text(data: dict[str, Any]) -> str:
    tagged = dict(data)
    if isinstance(data.get("botvps_secrets"), dict):
        tagged["botvps_secrets"] = {bot: {k: Unsafe(x) if isinstance(x, str) else x for k, x in values.items()}
                                    for bot, values in data["botvps_secrets"].items()}
    return yaml.dump(tagged, Dumper=_VaultDumper)


def encrypt(text: str, password: str = VAULT_PASSWORD) -> str:
    return VaultLib([("default", VaultSecret(password.encode()))]).encrypt(text).decode()


def write_inventory(directory: Path, inv: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "hosts.yml").write_text(yaml.safe_dump({"all": {"hosts": inv["hosts"]}}))
    for kind in ("group_vars", "host_vars"):
        for name, data in inv.get(kind, {}).items():
            target = directory / kind / name
            target.mkdir(parents=True, exist_ok=True)
            (target / "main.yml").write_text(yaml.safe_dump(data))
    if inv.get("vault") is not None:
        (directory / "group_vars" / "all").mkdir(parents=True, exist_ok=True)
        (directory / "group_vars" / "all" / "vault.yml").write_text(encrypt(vault_text(inv["vault"])))
    for rel, text in inv.get("raw_files", {}).items():
        (directory / rel).parent.mkdir(parents=True, exist_ok=True)
        (directory / rel).write_text(text)
    return directory


@pytest.fixture()
def password_files(tmp_path: Path) -> dict[str, Path]:
    right, wrong = tmp_path / "vault-pass", tmp_path / "wrong-pass"
    right.write_text(VAULT_PASSWORD + "\n")
    wrong.write_text("not the password\n")
    return {"right": right, "wrong": wrong, "missing": tmp_path / "no-such-password-file"}


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = v.main(args)
    out = capsys.readouterr()
    return code, out.out + out.err


def assert_no_secrets(output: str, keys: Keys | None = None) -> None:
    for name, value in SENTINELS.items():
        assert value not in output, f"secret {name} leaked"
        assert "SENTINEL-" not in output, "a sentinel secret leaked"
    if keys is not None:
        body = [ln for ln in keys.private.read_text().splitlines() if "PRIVATE KEY" not in ln]
        assert not any(ln in output for ln in body), "private key material leaked"


def assert_line(output: str, host: str, fld: str, message: str, fix: str) -> None:
    """One line ``HOST: FIELD: ...message... -> ...fix...``."""
    prefix = f"{host}: {fld}: "
    for line in output.splitlines():
        if line.startswith(prefix) and " -> " in line:
            what, _, how = line[len(prefix):].partition(" -> ")
            if message in what and fix in how:
                return
    raise AssertionError(f"no line {prefix}...{message}... -> ...{fix}...\n--- output:\n{output}")


# --------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------

Mutation = Callable[[dict[str, Any], Keys], None]


@dataclass(frozen=True)
class Case:
    id: str
    mutate: Mutation
    host: str
    field: str
    message: str
    fix: str
    exit_code: int = 1
    password: str | None = "right"  # which password file: right, wrong, or None (none given)
    extra: dict = field(default_factory=dict)


def gv(**values: Any) -> Mutation:
    def apply(inv: dict, keys: Keys) -> None:
        inv["group_vars"]["all"].update(values)
    return apply


def hv(host: str, **values: Any) -> Mutation:
    def apply(inv: dict, keys: Keys) -> None:
        inv["host_vars"][host].update(values)
    return apply


def bot(host: str, **values: Any) -> Mutation:
    def apply(inv: dict, keys: Keys) -> None:
        inv["host_vars"][host]["bots"][0].update(values)
    return apply


def drop_bot_key(host: str, key: str) -> Mutation:
    def apply(inv: dict, keys: Keys) -> None:
        del inv["host_vars"][host]["bots"][0][key]
    return apply


def secret(bot_name: str, var: str, value: Any) -> Mutation:
    def apply(inv: dict, keys: Keys) -> None:
        inv["vault"]["botvps_secrets"][bot_name][var] = value
    return apply


def drop_secret(bot_name: str, var: str) -> Mutation:
    def apply(inv: dict, keys: Keys) -> None:
        del inv["vault"]["botvps_secrets"][bot_name][var]
    return apply


def key_lines(*lines: Callable[[Keys], str]) -> Mutation:
    def apply(inv: dict, keys: Keys) -> None:
        inv["group_vars"]["all"]["admin_keys"] = [make(keys) for make in lines]
    return apply


def second_alpha_bot(name: str, api_key: str | None = None) -> Mutation:
    """web1 runs a second bot (a copy of alpha) named ``name``; with api_key, reusing alpha's key value."""
    def apply(inv: dict, keys: Keys) -> None:
        clone = copy.deepcopy(inv["host_vars"]["web1"]["bots"][0])
        clone["name"] = name
        inv["host_vars"]["web1"]["bots"].append(clone)
        if name != "alpha":
            inv["vault"]["botvps_secrets"][name] = {"ALPHA_KEY": api_key or _sentinel("gamma-key"),
                                                    "ALPHA_SECRET": _sentinel("gamma-secret")}
    return apply


def beta_reuses_alpha_key(inv: dict, keys: Keys) -> None:
    inv["vault"]["botvps_secrets"]["beta"]["OKX_KEY"] = SENTINELS["alpha-key"]


def beta_renamed_alpha(inv: dict, keys: Keys) -> None:
    inv["host_vars"]["web2"]["bots"][0]["name"] = "alpha"
    inv["vault"]["botvps_secrets"]["alpha"].update(inv["vault"]["botvps_secrets"]["beta"])


def private_key_file(inv: dict, keys: Keys) -> None:
    inv["group_vars"]["all"]["admin_key_files"] = [str(keys.private)]


def empty_keys(inv: dict, keys: Keys) -> None:
    inv["group_vars"]["all"].update(admin_keys=[], admin_key_files=[])


def broken_hosts_file(inv: dict, keys: Keys) -> None:
    inv.setdefault("raw_files", {})["hosts.yml"] = "all:\n  hosts:\n    web1: {ansible_host: [1\n"


def broken_host_vars(inv: dict, keys: Keys) -> None:
    inv.setdefault("raw_files", {})["host_vars/web2/broken.yml"] = "ssh_port: [unclosed\n"


CASES = [
    # --- unknown keys (typos), with the closest option suggested
    Case("typo-ssh", hv("web1", ssh_prot=2222), "web1", "ssh_prot", "unknown option", "did you mean 'ssh_port'"),
    Case("typo-firewall", gv(firewall_admin_cidr=["198.51.100.0/24"]), "web2", "firewall_admin_cidr",
         "unknown option", "'firewall_admin_cidrs'"),
    Case("typo-fail2ban", hv("web2", fail2ban_maxretries=3), "web2", "fail2ban_maxretries", "unknown option",
         "'fail2ban_maxretry'"),
    Case("typo-updates", gv(updates_autoreboot=True), "web1", "updates_autoreboot", "unknown option",
         "'updates_auto_reboot'"),
    Case("typo-admin", gv(admin_key=["x"]), "web1", "admin_key", "unknown option", "'admin_keys'"),
    Case("typo-timesync", gv(timesync_ntp_server=["pool.ntp.org"]), "web1", "timesync_ntp_server",
         "unknown option", "'timesync_ntp_servers'"),
    Case("unknown-var-bots", hv("web1", bot=[]), "web1", "bot", "unknown variable", "did you mean 'bots'"),
    Case("unknown-var-plain", gv(my_setting="x"), "web1", "my_setting", "unknown variable",
         "list it in botvps_own_vars"),
    # --- what the controller can know before anything connects
    Case("static-ipv4-whitespace", hv("web1", static_ipv4=PUBLIC_IP_1 + " "), "web1", "static_ipv4",
         "white space around", "without spaces"),
    Case("cidr-whitespace", gv(firewall_admin_cidrs=[" 198.51.100.0/24"]), "web1", "firewall_admin_cidrs[0]",
         "white space around", "without spaces"),
    Case("source-path-missing", bot("web1", source={"path": "examples/no-such-bot"}), "web1",
         "bots.alpha.source.path", "is no directory on the controller", "absolute or relative"),
    Case("secret-also-in-environment", bot("web1", environment={"ALPHA_KEY": "x"}), "web1",
         "bots.alpha.environment.ALPHA_KEY", "is also one of the bot's secrets", "remove it from environment"),
    Case("private-key-missing", hv("web2", ansible_ssh_private_key_file="/nonexistent/id_ed25519"), "web2",
         "ansible_ssh_private_key_file", "names no file on the controller", "ssh-agent"),
    Case("typo-in-bot", bot("web1", comand=["x"]), "web1", "bots.alpha.comand", "unknown key",
         "did you mean 'command'"),
    Case("typo-in-allowed-port", hv("web1", firewall_allowed_ports=[{"port": 8080, "prot": "tcp"}]), "web1",
         "firewall_allowed_ports[0].prot", "unknown key", "did you mean 'proto'"),
    Case("role-internal-var", hv("web1", ssh_dropin="/tmp/x"), "web1", "ssh_dropin", "inventory cannot change it",
         "remove it"),
    # --- wrong types
    Case("type-int", hv("web1", ssh_max_auth_tries="three"), "web1", "ssh_max_auth_tries",
         "must be a whole number", "ssh_max_auth_tries: 3"),
    Case("type-bool", gv(firewall_enabled="maybe"), "web1", "firewall_enabled", "must be true or false",
         "firewall_enabled: true"),
    Case("type-list", gv(admin_keys="ssh-ed25519 AAAA"), "web1", "admin_keys", "must be a YAML list",
         "admin_keys: [item, ...]"),
    Case("type-dict", hv("web2", ssh_extra_settings=["X11Forwarding no"]), "web2", "ssh_extra_settings",
         "must be a mapping", "ssh_extra_settings:"),
    Case("type-choices", hv("web1", firewall_allowed_ports=[{"port": 8080, "proto": "tcpp"}]), "web1",
         "firewall_allowed_ports[0].proto", "is not one of tcp, udp", "did you mean 'tcp'"),
    Case("type-nested-int", hv("web1", firewall_allowed_ports=[{"port": "http"}]), "web1",
         "firewall_allowed_ports[0].port", "must be a whole number", "port:"),
    Case("type-null", gv(ssh_port=None), "web1", "ssh_port", "is empty (null)", "remove the line"),
    Case("type-bot-list-element", bot("web1", egress_ports=[443, "https"]), "web1", "bots.alpha.egress_ports[1]",
         "must be a whole number", "egress_ports"),
    Case("type-bot-bool", bot("web1", key_audit="sometimes"), "web1", "bots.alpha.key_audit",
         "must be true or false", "key_audit: true"),
    Case("type-bot-signal", bot("web1", kill_signal="SIGKILL"), "web1", "bots.alpha.kill_signal",
         "is not one of SIGTERM, SIGINT", "use one of SIGTERM, SIGINT"),
    Case("type-bot-list-choice", bot("web1", trades=["spot", "options"]), "web1", "bots.alpha.trades[1]",
         "is not one of spot, margin, futures", "use one of spot, margin, futures"),
    Case("bot-env-not-string", bot("web1", environment={"WORKERS": 4}), "web1", "bots.alpha.environment.WORKERS",
         "must be a string", 'quote it: WORKERS: "..."'),
    Case("bot-missing-command", drop_bot_key("web2", "command"), "web2", "bots.beta.command", "is missing",
         "add command:"),
    Case("bot-timeout", bot("web1", timeout_stop_sec=0), "web1", "bots.alpha.timeout_stop_sec",
         "not a positive number", "e.g. 30"),
    Case("bot-base-url", bot("web1", exchange_base_url="ftp://api.binance.com/v3"), "web1",
         "bots.alpha.exchange_base_url", "is not an http(s)://host[:port] URL", "https://api.binance.com"),
    Case("bot-ui-port-privileged", bot("web1", ui_port=80), "web1", "bots.alpha.ui_port", "not a port from 1024",
         "ui_port: 8080"),
    Case("bot-ui-port-is-ssh", lambda inv, keys: (hv("web1", ssh_port=2222)(inv, keys), bot("web1", ui_port=2222)(inv, keys)),
         "web1", "bots.alpha.ui_port", "is ssh_port", "another port"),
    Case("bot-ui-port-public", lambda inv, keys: (hv("web1", firewall_allowed_ports=[{"port": 8080}])(inv, keys),
                                                 bot("web1", ui_port=8080)(inv, keys)),
         "web1", "bots.alpha.ui_port", "opened to the internet", "invoke tunnel BOT"),
    Case("bot-ui-port-twice", lambda inv, keys: (bot("web1", ui_port=8080)(inv, keys), inv["host_vars"]["web1"]["bots"].append(
        {**inv["host_vars"]["web1"]["bots"][0], "name": "alpha2", "key_audit": False, "exchange": "none", "ui_port": 8080})),
         "web1", "bots.alpha2.ui_port", "is also alpha's UI port", "a port of its own"),
    Case("bot-state-sqlite-escapes", bot("web1", state_sqlite=["../../etc/shadow"]), "web1", "bots.alpha.state_sqlite[0]",
         "has an empty, '.' or '..' component", "relative to the bot's state directory"),
    Case("bot-state-sqlite-absolute", bot("web1", state_sqlite=["/var/lib/botvps/alpha/t.db"]), "web1",
         "bots.alpha.state_sqlite[0]", "is absolute", "e.g. tradesv3.sqlite"),
    Case("type-bot-state-sqlite", bot("web1", state_sqlite="trades.db"), "web1", "bots.alpha.state_sqlite",
         "must be a YAML list", "["),
    # --- static_ipv4
    Case("ip-invalid", hv("web1", static_ipv4="95.216.10.300"), "web1", "static_ipv4", "is not an IP address",
         "public IPv4 address"),
    Case("ip-private", hv("web2", static_ipv4="10.1.2.3"), "web2", "static_ipv4",
         "10.1.2.3 is a private address; the exchange needs the server's public address", "botvps_lab: true"),
    Case("ip-loopback", hv("web2", static_ipv4="127.0.0.1"), "web2", "static_ipv4", "loopback",
         "public IPv4 address"),
    Case("ip-documentation", hv("web1", static_ipv4="203.0.113.10"), "web1", "static_ipv4",
         "documentation (example) address", "public IPv4 address"),
    Case("ip-cgnat", hv("web2", static_ipv4="100.64.1.2"), "web2", "static_ipv4", "carrier-grade NAT",
         "public IPv4 address"),
    Case("ip-v6", hv("web1", static_ipv4="2a01:4f9::1"), "web1", "static_ipv4", "is an IPv6 address",
         "public IPv4 address"),
    Case("ip-missing-with-bots", hv("web1", static_ipv4=""), "web1", "static_ipv4", "this host runs bots",
         "set static_ipv4"),
    Case("ip-is-a-secret", hv("web1", static_ipv4=SENTINELS["alpha-key"]), "web1", "static_ipv4",
         "is not an IP address", "public IPv4 address"),
    Case("egress-not-ipv4", hv("web1", egress_ipv4="2a01:4f9::1"), "web1", "egress_ipv4", "is not an IPv4 address",
         "egress_ipv4: 172.31.5.10"),
    Case("egress-garbage", hv("web1", egress_ipv4="eth0"), "web1", "egress_ipv4", "is not an IPv4 address",
         "default route"),
    Case("public-ipv4-url", hv("web1", preflight_public_ipv4_url="api.ipify.org"), "web1",
         "preflight_public_ipv4_url", "is not an http(s) URL", "https://api.ipify.org"),
    # --- CIDRs
    Case("cidr-invalid", gv(firewall_admin_cidrs=["198.51.100.0/33"]), "web1", "firewall_admin_cidrs[0]",
         "is not a valid CIDR", "198.51.100.7/32"),
    Case("cidr-garbage", gv(firewall_admin_cidrs=["office"]), "web2", "firewall_admin_cidrs[0]",
         "is not a valid CIDR", "2001:db8::/48"),
    Case("cidr-host-bits-v4", gv(firewall_admin_cidrs=["198.51.100.7/24"]), "web1", "firewall_admin_cidrs[0]",
         "has host bits set", "write 198.51.100.0/24"),
    Case("cidr-host-bits-v6", gv(firewall_admin_cidrs=["198.51.100.0/24", "2001:db8::1/48"]), "web1",
         "firewall_admin_cidrs[1]", "has host bits set", "write 2001:db8::/48"),
    Case("cidr-empty", gv(firewall_admin_cidrs=[]), "web1", "firewall_admin_cidrs", "nobody reach SSH",
         "0.0.0.0/0"),
    Case("allowed-port-src", hv("web1", firewall_allowed_ports=[{"port": 8080, "src": "198.51.100.1/24"}]), "web1",
         "firewall_allowed_ports[0].src", "has host bits set", "write 198.51.100.0/24"),
    # --- SSH port
    Case("ssh-port-high", gv(ssh_port=70000), "web1", "ssh_port", "70000 is out of range", "between 1 and 65535"),
    Case("ssh-port-zero", hv("web2", ssh_port=0), "web2", "ssh_port", "0 is out of range", "between 1 and 65535"),
    Case("ssh-port-quoted-high", gv(ssh_port="65536"), "web2", "ssh_port", "65536 is out of range",
         "between 1 and 65535"),
    Case("ssh-port-clash", gv(ssh_port=8080), "web1", "ssh_port", "8080 clashes with firewall_allowed_ports[0]",
         "choose a different ssh_port"),
    Case("bootstrap-port", gv(connect_bootstrap_port=100000), "web1", "connect_bootstrap_port", "out of range",
         "between 1 and 65535"),
    # --- admin keys
    Case("key-file-missing", gv(admin_key_files=["/nonexistent/botvps/id_ed25519.pub"]), "web1",
         "admin_key_files[0]", "/nonexistent/botvps/id_ed25519.pub does not exist", "existing .pub file"),
    Case("key-malformed", key_lines(lambda k: "ssh-ed25519 this-is-not-base64!! me@laptop"), "web1",
         "admin_keys[0]", "not valid base64", "copy the whole .pub line"),
    Case("key-not-a-key", key_lines(lambda k: "hello"), "web2", "admin_keys[0]", "not an OpenSSH public key line",
         "paste the whole line"),
    Case("key-private-file", private_key_file, "web1", "admin_key_files[0]", "is a PRIVATE key",
         "use the public key instead"),
    Case("key-private-line", key_lines(lambda k: k.private.read_text()), "web1", "admin_keys[0]",
         "this is a PRIVATE key", "give the public key"),
    Case("key-dsa", key_lines(lambda k: k.dsa_line), "web1", "admin_keys[0]", "DSA keys are refused",
         "ssh-keygen -t ed25519"),
    Case("key-rsa-2048", key_lines(lambda k: k.line(k.rsa4096_pub), lambda k: k.line(k.rsa2048_pub)), "web1",
         "admin_keys[1]", "RSA key of 2048 bits", "ssh-keygen -t rsa -b 4096"),
    Case("key-list-empty", empty_keys, "web2", "admin_keys", "no SSH public key", "admin_key_files: [~/.ssh/"),
    Case("key-hardware-required", gv(admin_require_hardware_keys=True), "web1", "admin_keys[0]",
         "ssh-rsa key but admin_require_hardware_keys is true", "ssh-keygen -t ed25519-sk"),
    # --- bots
    Case("bot-name-invalid", bot("web1", name="Alpha_Bot"), "web1", "bots[0].name",
         "is not a valid bot name", "'grid-btc'"),
    Case("bot-name-too-long", bot("web2", name="b" * 32), "web2", "bots[0].name",
         "is not a valid bot name", "at most 31 characters"),
    Case("bot-duplicate-same-host", second_alpha_bot("alpha"), "web1", "bots.alpha.name",
         "'alpha' is already used on this host", "unique name"),
    Case("bot-duplicate-across-hosts", beta_renamed_alpha, "web2", "bots.alpha.name",
         "'alpha' is already used on host web1", "unique name"),
    Case("bot-source-two-kinds", bot("web2", source={"pip": "beta-bot", "git": "https://x/y.git"}), "web2",
         "bots.beta.source", "has git, pip: exactly one is needed", "exactly one of source.path"),
    Case("bot-source-none", bot("web2", source={}), "web2", "bots.beta.source", "has none of path, git, pip",
         "exactly one of"),
    Case("bot-command-empty", bot("web1", command=[]), "web1", "bots.alpha.command", "is an empty list",
         "command: [python3"),
    Case("bot-exchange-unknown", bot("web1", exchange="binanse"), "web1", "bots.alpha.exchange",
         "is not one of binance, bybit, okx, kraken, coinbase, none", "did you mean 'binance'"),
    Case("bot-okx-no-passphrase", bot("web2", api_passphrase_var=None), "web2", "bots.beta.api_passphrase_var",
         "okx API keys have a passphrase", "set api_passphrase_var"),
    Case("bot-key-var-not-a-secret", bot("web1", api_key_var="BINANCE_KEY"), "web1", "bots.alpha.api_key_var",
         "BINANCE_KEY is not one of the bot's secrets", "add BINANCE_KEY to bots.alpha.secrets"),
    Case("bot-no-key-var", drop_bot_key("web1", "api_secret_var"), "web1", "bots.alpha.api_secret_var",
         "needs its API key and secret", "set api_secret_var"),
    Case("bot-secret-name", bot("web1", secrets=["ALPHA_KEY", "ALPHA_SECRET", "2FA-CODE"]), "web1",
         "bots.alpha.secrets[2]", "is not a valid environment variable name", "BINANCE_API_KEY"),
    # --- secrets and the vault
    Case("secret-missing", drop_secret("alpha", "ALPHA_SECRET"), "web1", "botvps_secrets.alpha.ALPHA_SECRET",
         "lists secret ALPHA_SECRET but the vault has no value",
         "invoke secrets.set alpha ALPHA_SECRET --inventory"),
    Case("secret-newline", secret("beta", "OKX_SECRET", SENTINELS["beta-secret"] + "\n"), "web2",
         "botvps_secrets.beta.OKX_SECRET", "OKX_SECRET of bot 'beta' is one line ending in a line break",
         "single-line string"),
    Case("secret-nul", secret("alpha", "ALPHA_KEY", "SENTINEL-a\x00SENTINEL-b-more"), "web1",
         "botvps_secrets.alpha.ALPHA_KEY", "contains a NUL byte", "store it without"),
    Case("secret-plaintext", hv("web2", botvps_secrets={"beta": {"OKX_KEY": SENTINELS["beta-key"],
                                                                "OKX_SECRET": SENTINELS["beta-secret"],
                                                                "OKX_PASS": SENTINELS["beta-pass"]}}), "web2",
         "botvps_secrets.beta.OKX_KEY", "is in plaintext", "invoke secrets.set beta OKX_KEY"),
    Case("api-key-shared-same-host", second_alpha_bot("gamma", api_key=SENTINELS["alpha-key"]), "web1",
         "bots.gamma.api_key_var", "web1/gamma uses the same API key (ALPHA_KEY) as bot web1/alpha",
         "separate API key"),
    Case("api-key-shared-across-hosts", beta_reuses_alpha_key, "web2", "bots.beta.api_key_var",
         "web2/beta uses the same API key (OKX_KEY) as bot web1/alpha", "separate API key"),
    Case("vault-wrong-password", lambda inv, k: None, "web1,web2", "group_vars/all/vault.yml",
         "cannot be decrypted with the given password", "--vault-password-file", exit_code=2, password="wrong"),
    Case("vault-no-password", lambda inv, k: None, "web1,web2", "group_vars/all/vault.yml",
         "no vault password was given", "BOTVPS_VAULT_PASSWORD_FILE", exit_code=2, password=None),
    Case("vault-password-file-missing", lambda inv, k: None, "all", "vault password file", "does not exist",
         "--vault-password-file", exit_code=2, password="missing"),
    # --- other options
    Case("reboot-time", gv(updates_reboot_time="25:00"), "web1", "updates_reboot_time", "not a time of day",
         '"04:30"'),
    Case("ansible-port", hv("web1", **{}), "web1", "ansible_port", "is not a port", "1-65535",
         extra={"hosts": {"web1": {"ansible_host": "127.0.0.1", "ansible_port": "ssh"}}}),
    Case("broken-vars-file", broken_host_vars, "web2", "host_vars/web2/broken.yml", "is not valid YAML (line 2)",
         "fix the YAML"),
    Case("broken-hosts-file", broken_hosts_file, "all", "hosts.yml", "cannot be parsed as an inventory: line 4",
         "fix the YAML"),
]


def test_enough_cases() -> None:
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_broken_inventory(case: Case, keys: Keys, tmp_path: Path, password_files: dict[str, Path],
                          capsys: pytest.CaptureFixture[str]) -> None:
    inv = base_inventory(keys)
    case.mutate(inv, keys)
    for host, values in case.extra.get("hosts", {}).items():
        inv["hosts"][host] = values
    directory = write_inventory(tmp_path / "inventory", inv)
    args = [str(directory), "--no-reach"]
    if case.password:
        args += ["--vault-password-file", str(password_files[case.password])]
    code, output = run_cli(args, capsys)
    assert code == case.exit_code, output
    assert_line(output, case.host, case.field, case.message, case.fix)
    assert_no_secrets(output, keys)


# --------------------------------------------------------------------------
# Valid inventories, the API, reachability
# --------------------------------------------------------------------------

@pytest.fixture()
def listener() -> Iterator[int]:
    """A port on 127.0.0.1 that accepts connections (a bound, listening socket; nothing else runs)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_valid_inventory_passes(keys: Keys, tmp_path: Path, password_files: dict[str, Path], listener: int,
                                capsys: pytest.CaptureFixture[str]) -> None:
    inv = base_inventory(keys)
    for host in inv["hosts"].values():
        host["ansible_port"] = listener
    directory = write_inventory(tmp_path / "inventory", inv)
    code, output = run_cli([str(directory), "--vault-password-file", str(password_files["right"])], capsys)
    assert code == 0, output
    assert "ok: 2 host(s) valid and reachable" in output
    assert_no_secrets(output)


def test_multiline_pem_secret_passes(keys: Keys, tmp_path: Path, password_files: dict[str, Path],
                                     capsys: pytest.CaptureFixture[str]) -> None:
    # A PEM private key (Coinbase's EC key) spans lines: the env file double-quotes it, as systemd reads it.
    inv = base_inventory(keys)
    pem = "-----BEGIN EC PRIVATE KEY-----\nSENTINEL-pem-" + "A" * 60 + "\n-----END EC PRIVATE KEY-----\n"
    inv["vault"]["botvps_secrets"]["alpha"]["ALPHA_SECRET"] = pem
    directory = write_inventory(tmp_path / "inventory", inv)
    code, output = run_cli([str(directory), "--no-reach", "--vault-password-file", str(password_files["right"])],
                           capsys)
    assert code == 0, output
    assert "SENTINEL-pem" not in output


def test_vault_password_from_environment(keys: Keys, tmp_path: Path, password_files: dict[str, Path],
                                         monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(v.VAULT_ENV, str(password_files["right"]))
    directory = write_inventory(tmp_path / "inventory", base_inventory(keys))
    code, output = run_cli([str(directory), "--no-reach"], capsys)
    assert code == 0, output


def test_lab_allows_a_private_static_ipv4(keys: Keys, tmp_path: Path, password_files: dict[str, Path],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    inv = base_inventory(keys)
    inv["host_vars"]["web1"].update(static_ipv4="10.0.2.15", botvps_lab=True)
    directory = write_inventory(tmp_path / "inventory", inv)
    code, output = run_cli([str(directory), "--no-reach", "--vault-password-file", str(password_files["right"])],
                           capsys)
    assert code == 0, output


def test_a_nat_cloud_host_declares_a_private_egress_ipv4(keys: Keys, tmp_path: Path, password_files: dict[str, Path],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    inv = base_inventory(keys)
    inv["host_vars"]["web1"].update(egress_ipv4="172.31.5.10", preflight_public_ipv4_url="http://10.0.2.2:8080/ip")
    directory = write_inventory(tmp_path / "inventory", inv)
    code, output = run_cli([str(directory), "--no-reach", "--vault-password-file", str(password_files["right"])],
                           capsys)
    assert code == 0, output


def test_load_inventory_resolves_like_ansible(keys: Keys, tmp_path: Path, password_files: dict[str, Path]) -> None:
    inv = base_inventory(keys)
    inv["host_vars"]["web2"]["ssh_port"] = 2200  # host_vars beat group_vars
    directory = write_inventory(tmp_path / "inventory", inv)
    hosts = v.load_inventory(directory, str(password_files["right"]))
    assert set(hosts) == {"web1", "web2"}
    assert hosts["web1"]["ssh_port"] == 2222 and hosts["web2"]["ssh_port"] == 2200
    assert hosts["web1"]["ssh_public_port"] == "{{ ssh_port }}"  # not templated
    assert hosts["web1"]["fail2ban_maxretry"] == "4"
    key = hosts["web1"]["botvps_secrets"]["alpha"]["ALPHA_KEY"]
    assert key == SENTINELS["alpha-key"] and isinstance(key, v.SecretStr)
    assert SENTINELS["alpha-key"] not in repr(hosts)
    assert v.validate(hosts) == []


def test_validate_api_and_format(keys: Keys) -> None:
    hosts = {"db": {"ssh_port": 0, "admin_keys": [keys.line(keys.ed25519_pub)],
                    "botvps_secrets": {"x": {"K": v.SecretStr(SENTINELS["become"])}}}}
    problems = v.validate(hosts)
    assert problems == [v.Problem("db", "ssh_port", "0 is out of range for a port",
                                  "choose a port between 1 and 65535")]
    assert v.format_problems(problems) == "db: ssh_port: 0 is out of range for a port -> choose a port between 1 and 65535"


def test_every_message_is_scrubbed_of_secrets() -> None:
    """Even a check that would show a value cannot show a secret: validate() scrubs every message."""
    hosts = {"db": {"admin_keys": ["ssh-ed25519 AAAA"], "ansible_become_password": SENTINELS["become"],
                    "admin_user": {"oops": 1}, "updates_reboot_time": SENTINELS["become"]}}
    output = v.format_problems(v.validate(hosts))
    assert "db: updates_reboot_time:" in output
    assert_no_secrets(output)


def test_unreachable_host(keys: Keys, tmp_path: Path, password_files: dict[str, Path], listener: int) -> None:
    port = free_port()
    inv = base_inventory(keys)
    inv["hosts"]["web1"]["ansible_port"] = port
    inv["hosts"]["web2"]["ansible_port"] = listener
    directory = write_inventory(tmp_path / "inventory", inv)
    env = {**os.environ, v.VAULT_ENV: str(password_files["right"])}
    result = subprocess.run([sys.executable, "-m", "botvps.validate", str(directory), "--timeout", "3"],
                            capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert f"web1: ansible_host: cannot reach 127.0.0.1:{port} (" in output
    assert "web2" not in output
    assert_line(output, "web1", "ansible_host", f"cannot reach 127.0.0.1:{port}", "ansible_port")
    assert_no_secrets(output)


def test_check_reachable_in_parallel(listener: int) -> None:
    closed = free_port()
    hosts = {f"h{i}": {"ansible_host": "127.0.0.1", "ansible_port": closed} for i in range(4)}
    hosts["up"] = {"ansible_host": "127.0.0.1", "ansible_port": listener}
    problems = v.check_reachable(hosts, timeout=2)
    assert sorted(p.host for p in problems) == ["h0", "h1", "h2", "h3"]
    assert all(f"cannot reach 127.0.0.1:{closed}" in p.message for p in problems)


def test_invalid_input_is_reported_before_reachability(keys: Keys, tmp_path: Path, password_files: dict[str, Path],
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    inv = base_inventory(keys)
    inv["hosts"]["web1"]["ansible_port"] = free_port()
    inv["host_vars"]["web1"]["ssh_prot"] = 1
    directory = write_inventory(tmp_path / "inventory", inv)
    code, output = run_cli([str(directory), "--vault-password-file", str(password_files["right"])], capsys)
    assert code == 1
    assert "cannot reach" not in output


def test_inline_vault_value(keys: Keys, tmp_path: Path, password_files: dict[str, Path],
                            capsys: pytest.CaptureFixture[str]) -> None:
    """A single !vault value in a plain vars file: decrypted with the right password, exit 2 with a wrong one."""
    inv = base_inventory(keys)
    inv["vault"]["botvps_secrets"]["beta"].pop("OKX_PASS")
    token = _sentinel("inline")
    inline = "".join(f"      {line}\n" for line in encrypt(token).splitlines())
    inv["raw_files"] = {"host_vars/web2/inline.yml": f"botvps_secrets:\n  beta:\n    OKX_PASS: !vault |\n{inline}"}
    directory = write_inventory(tmp_path / "inventory", inv)
    hosts = v.load_inventory(directory, str(password_files["right"]))
    # host_vars replace group_vars' botvps_secrets as a whole (hash_behaviour=replace), as in ansible-playbook
    assert hosts["web2"]["botvps_secrets"] == {"beta": {"OKX_PASS": token}}
    assert isinstance(hosts["web2"]["botvps_secrets"]["beta"]["OKX_PASS"], v.SecretStr)
    code, output = run_cli([str(directory), "--no-reach", "--vault-password-file", str(password_files["wrong"])],
                           capsys)
    assert code == 2, output
    assert_line(output, "web1,web2", "group_vars/all/vault.yml", "cannot be decrypted", "--vault-password-file")
    (directory / "group_vars" / "all" / "vault.yml").unlink()
    code, output = run_cli([str(directory), "--no-reach", "--vault-password-file", str(password_files["wrong"])],
                           capsys)
    assert code == 2, output
    assert_line(output, "web2", "botvps_secrets.beta.OKX_PASS", "inline.yml", "--vault-password-file")
    assert token not in output


@pytest.mark.parametrize("rel, fix", [
    ("host_vars/web1-old.yml", "rename it to host_vars/web1.yml"),  # a host renamed since
    ("host_vars/web-1/main.yml", "rename it to host_vars/web1"),
    ("group_vars/webservers.yml", "rename it after one of those groups, or delete it"),
])
def test_a_vars_file_named_after_no_host_or_group_is_refused(keys: Keys, tmp_path: Path,
                                                             password_files: dict[str, Path], rel: str,
                                                             fix: str) -> None:
    inv = base_inventory(keys)
    inv["raw_files"] = {rel: yaml.safe_dump({"bots": [], "admin_user": "SENTINEL-stray-value"})}
    directory = write_inventory(tmp_path / "inventory", inv)
    with pytest.raises(v.InventoryError) as raised:
        v.load_inventory(directory, str(password_files["right"]))
    text = v.format_problems(raised.value.problems)
    entry = rel.split("/")[0] + "/" + rel.split("/")[1]
    assert entry in text and "is named after no" in text and fix in text, text
    assert "SENTINEL-stray-value" not in text


# A secret pasted into the wrong field: each of these is refused, naming the field, and the value appears
# nowhere in what validate prints (short, printable, token-like: nothing about it says "secret").
PASTED = "Zq7pasted9Xk"
PASTED_FIELDS = [
    (gv(admin_user=PASTED + "!"), "admin_user"),
    (hv("web1", static_ipv4=PASTED), "static_ipv4"),
    (gv(firewall_admin_cidrs=[PASTED]), "firewall_admin_cidrs"),
    (gv(ssh_port=PASTED), "ssh_port"),
    (gv(updates_reboot_time=PASTED), "updates_reboot_time"),
    (gv(updates_auto_reboot=PASTED), "updates_auto_reboot"),
    (bot("web1", name=PASTED + "!"), "bots"),
    (bot("web1", exchange=PASTED), "bots.alpha.exchange"),
    (bot("web1", kill_signal=PASTED), "bots.alpha.kill_signal"),
    (bot("web1", exchange_base_url=PASTED), "bots.alpha.exchange_base_url"),
    (bot("web1", secrets=["ALPHA_KEY", "ALPHA_SECRET", PASTED + "-x"]), "bots.alpha.secrets[2]"),
    (bot("web1", environment={"TOKEN": 73915402886}), "bots.alpha.environment.TOKEN"),
    (bot("web1", timeout_stop_sec=PASTED), "bots.alpha.timeout_stop_sec"),
]


@pytest.mark.parametrize("mutate, field", PASTED_FIELDS, ids=[f for _, f in PASTED_FIELDS])
def test_a_value_pasted_into_a_field_is_never_echoed(mutate, field: str, keys: Keys, tmp_path: Path,
                                                     password_files: dict[str, Path],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    inv = base_inventory(keys)
    mutate(inv, keys)
    directory = write_inventory(tmp_path / "inventory", inv)
    code, output = run_cli([str(directory), "--no-reach", "--vault-password-file", str(password_files["right"])],
                           capsys)
    assert code != 0, output
    assert f" {field}" in output, output
    assert PASTED not in output and "73915402886" not in output, output


@pytest.mark.parametrize("name, message", [("Ops", "is not a valid user name"), ("root", "a system account's name"),
                                           ("bot-alpha", "the bots' own users"), ("op s", "is not a valid user")])
def test_an_admin_user_that_would_clash_or_fail_is_refused(name: str, message: str, keys: Keys) -> None:
    inv = base_inventory(keys)
    hosts = {"web1": {**inv["group_vars"]["all"], **inv["host_vars"]["web1"], "admin_user": name}}
    problems = [p for p in v.validate(hosts) if p.field == "admin_user"]
    assert problems and message in problems[0].message, problems
    assert "'ops'" in problems[0].fix


def test_the_example_vaults_password_and_placeholders_are_refused(keys: Keys, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    example_password = v.EXAMPLE_PASSWORD.read_text().strip()
    [placeholder, *_] = sorted(v._example_values())
    inv = base_inventory(keys)
    inv["vault"]["botvps_secrets"]["alpha"]["ALPHA_KEY"] = placeholder
    directory = write_inventory(tmp_path / "inventory", inv)
    vault = directory / "group_vars" / "all" / "vault.yml"
    vault.write_text(encrypt(vault_text(inv["vault"]), example_password))
    password = tmp_path / "my-copy-of-the-example-password"
    password.write_text(example_password + "\n")
    code, output = run_cli([str(directory), "--no-reach", "--vault-password-file", str(password)], capsys)
    assert code == v.EXIT_INVALID, output
    assert_line(output, "all", "vault password file", "the example vault's password", "a vault of your own")
    assert_line(output, "web1", "botvps_secrets.alpha.ALPHA_KEY", "the example vault's placeholder",
                "invoke secrets.set alpha ALPHA_KEY")
    assert placeholder not in output and example_password not in output


# Every example a fix gives (validate's "e.g. ...") is a value validate itself accepts in that field.
FIX_EXAMPLES = [
    (hv("web1", static_ipv4="95.216.10.20"), "static_ipv4"),
    (gv(firewall_admin_cidrs=["198.51.100.7/32", "2001:db8::/48"]), "firewall_admin_cidrs"),
    (gv(firewall_admin_cidrs=["0.0.0.0/0", "::/0"]), "firewall_admin_cidrs"),
    (gv(updates_reboot_time="04:30"), "updates_reboot_time"),
    (gv(admin_user="ops"), "admin_user"),
    (bot("web1", command=["python3", "-m", "mybot"]), "bots.alpha.command"),
    (bot("web1", timeout_stop_sec=30), "bots.alpha.timeout_stop_sec"),
    (bot("web1", state_sqlite=["tradesv3.sqlite", "data/bot.db"]), "bots.alpha.state_sqlite"),
    (bot("web1", exchange_base_url="https://api.binance.com"), "bots.alpha.exchange_base_url"),
    (bot("web1", secrets=["ALPHA_KEY", "ALPHA_SECRET", "BINANCE_API_KEY"]), "bots.alpha.secrets"),
    (bot("web1", name="grid-btc"), "bots.grid-btc.name"),
]


@pytest.mark.parametrize("mutate, field", FIX_EXAMPLES, ids=[f"{f}-{i}" for i, (_, f) in enumerate(FIX_EXAMPLES)])
def test_the_examples_in_fixes_are_accepted(mutate, field: str, keys: Keys) -> None:
    inv = base_inventory(keys)
    mutate(inv, keys)
    hosts = {"web1": {**inv["group_vars"]["all"], **inv["host_vars"]["web1"]}}
    assert [p for p in v.validate(hosts) if p.field.startswith(field)] == []


def test_the_bot_defaults_are_the_specs_everywhere() -> None:
    """argument_specs.yml is the one source: validate's fallback and the role's bots_entry_defaults agree."""
    spec = v.load_schema().options["bots"]["options"]
    entry_defaults = yaml.safe_load((v.ROLES_DIR / "bots" / "vars" / "main.yml").read_text())["bots_entry_defaults"]
    for name, option in spec.items():
        fallback = v.BOT_OPTIONS.get(name, {})
        assert (fallback.get("type"), fallback.get("default"), fallback.get("choices")) == \
            (option.get("type"), option.get("default"), option.get("choices")), name
        if "default" in option:
            assert entry_defaults.get(name) == option["default"], name
    assert set(v.BOT_OPTIONS) == set(spec)
