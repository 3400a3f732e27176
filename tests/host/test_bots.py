"""The bots role on a provisioned VM: real processes, real files, real packets.

Runs in molecule's verify step (testinfra, ansible backend) or by hand::

    BOTVPS_VM_NAME=bots-dev ANSIBLE_VAULT_PASSWORD_FILE=... pytest tests/host/test_bots.py \
        --connection=ansible --ansible-inventory=INVENTORY --hosts='ansible://all'

Root commands go through the VM's guest agent (``botvps.vm`` console), not SSH, so
the test neither trips ufw's SSH rate limit nor depends on the admin's sudo. The
bots' settings and planted secrets come from the inventory (``host.ansible``); the
vault must be readable (ANSIBLE_VAULT_PASSWORD_FILE) for the secret checks.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shlex
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

VM_NAME = os.environ.get("BOTVPS_VM_NAME", "")
pytestmark = pytest.mark.skipif(not VM_NAME, reason="BOTVPS_VM_NAME is not set: no provisioned VM to test")

CONTROLLER_FROM_GUEST = "10.0.2.2"  # QEMU user networking: the controller's loopback
MAX_EXPOSURE = 2.0
# The jit profile gives up MemoryDenyWriteExecute; both profiles measured 1.1 on Debian 12 and 13.
MAX_EXPOSURE_BY_PROFILE = {"default": MAX_EXPOSURE, "jit": MAX_EXPOSURE}


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def agent():
    from botvps.vm import machine

    return machine.load(VM_NAME).console()


def run(agent, command: str, stdin: str | None = None, timeout: float = 120.0):
    return agent.run(command, timeout=timeout, stdin=stdin)


def ok(agent, command: str, **kwargs: Any) -> str:
    result = run(agent, command, **kwargs)
    assert result.exit_code == 0, f"{command}: rc={result.exit_code} {result.stderr.strip()}"
    return result.stdout


def unwrap(value: Any) -> Any:
    """ansible-inventory shows !unsafe values as {"__ansible_unsafe": value}."""
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return value["__ansible_unsafe"]
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


@pytest.fixture(scope="module")
def hostvars(host) -> dict[str, Any]:
    try:
        variables = host.ansible.get_variables()
    except Exception as exc:  # noqa: BLE001 - not the ansible backend
        pytest.skip(f"needs testinfra's ansible backend for the inventory: {exc}")
    return unwrap(variables)


@pytest.fixture(scope="module")
def bots(hostvars) -> list[dict[str, Any]]:
    found = hostvars.get("bots") or []
    if not found:
        pytest.skip("this host has no bots in the inventory")
    return found


@pytest.fixture(scope="module")
def planted(hostvars, bots) -> dict[str, dict[str, str]]:
    secrets = hostvars.get("botvps_secrets")
    if not isinstance(secrets, dict):
        pytest.skip("botvps_secrets is not readable (set ANSIBLE_VAULT_PASSWORD_FILE for the vault)")
    return {b["name"]: {name: str(secrets[b["name"]][name]) for name in b.get("secrets", [])} for b in bots}


def unit(bot: dict[str, Any]) -> str:
    return f"botvps-bot-{bot['name']}.service"


def show(agent, unit_name: str, *props: str) -> dict[str, str]:
    out = ok(agent, f"systemctl show {unit_name} " + " ".join(f"-p {p}" for p in props))
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def wait_active(agent, unit_name: str, timeout: float = 90.0) -> int:
    deadline = time.monotonic() + timeout
    state: dict[str, str] = {}
    while time.monotonic() < deadline:
        state = show(agent, unit_name, "ActiveState", "SubState", "MainPID")
        if state.get("ActiveState") == "active" and state.get("SubState") == "running" and state.get("MainPID", "0") != "0":
            return int(state["MainPID"])
        time.sleep(1)
    raise AssertionError(f"{unit_name} not running after {timeout:.0f} s: {state}")


def environ_of(agent, pid: int) -> dict[str, str]:
    raw = base64.b64decode(ok(agent, f"base64 -w0 /proc/{pid}/environ"))
    pairs = [item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item]
    return {k.decode(): v.decode("utf-8", "surrogateescape") for k, v in pairs}


def journal_since(agent, unit_name: str, cursor_time: str) -> str:
    return ok(agent, f"journalctl --no-pager -o cat -u {unit_name} --since {shlex.quote(cursor_time)}")


def guest_now(agent) -> str:
    return ok(agent, "date '+%Y-%m-%d %H:%M:%S'").strip()


@contextlib.contextmanager
def listener(port: int = 0) -> Iterator[int]:
    """A TCP server on the controller's 127.0.0.1 that answers b'hi' to every connection."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        server.bind(("127.0.0.1", port))
    except OSError as exc:
        server.close()
        pytest.skip(f"cannot listen on 127.0.0.1:{port} on the controller: {exc}")
    server.listen(16)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                with contextlib.suppress(OSError):
                    conn.sendall(b"hi")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=2)
        server.close()


CONNECT = (
    "import socket,sys\n"
    "family = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET\n"
    "s = socket.socket(family, socket.SOCK_STREAM); s.settimeout(5)\n"
    "try:\n"
    "    s.connect((sys.argv[1], int(sys.argv[2]))); print('connected')\n"
    "except OSError as e:\n"
    "    print('failed', e); sys.exit(1)\n"
)


def connect_as(agent, user: str, address: str, port: int) -> bool:
    command = f"runuser -u {user} -- python3 -c {shlex.quote(CONNECT)} {address} {port}"
    return run(agent, command).exit_code == 0


# ---------------------------------------------------------------- users and processes


def test_each_bot_runs_as_its_own_locked_down_user(agent, bots) -> None:
    sshgroup = ok(agent, "getent group sshusers || true").strip()
    for bot in bots:
        user = f"bot-{bot['name']}"
        pid = wait_active(agent, unit(bot))
        assert ok(agent, f"ps -o user= -p {pid}").strip() == user
        entry = ok(agent, f"getent passwd {user}").strip().split(":")
        assert entry[6] in ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false"), entry
        assert int(entry[2]) < 1000, f"{user} is not a system user"
        assert ok(agent, f"id -Gn {user}").split() == [user]
        assert user not in sshgroup.split(":")[-1].split(",")
        assert run(agent, f"sudo -l -U {user} | grep -q 'may run'").exit_code != 0


def test_code_is_root_owned_and_state_is_private(agent, bots) -> None:
    for bot in bots:
        name, user = bot["name"], f"bot-{bot['name']}"
        assert ok(agent, f"stat -c '%U:%G %a' /opt/botvps/{name}/app").strip() == "root:root 755"
        assert ok(agent, f"stat -c '%U %a' /var/lib/botvps/{name}").strip() == f"{user} 700"
        assert run(agent, f"runuser -u {user} -- touch /opt/botvps/{name}/app/x").exit_code != 0
        if is_simplebot(bot):
            # the example bot writes its heartbeat into $STATE_DIRECTORY
            state = json.loads(ok(agent, f"cat /var/lib/botvps/{name}/state.json"))
            assert state["heartbeats"] >= 1


# ---------------------------------------------------------------- secrets


def test_secrets_reach_the_bot_byte_for_byte(agent, bots, planted) -> None:
    for bot in bots:
        env = environ_of(agent, wait_active(agent, unit(bot)))
        for name, value in planted[bot["name"]].items():
            assert env.get(name) == value, f"{bot['name']}: {name} differs from the vault (value not shown)"
        for name, value in (bot.get("environment") or {}).items():
            assert env.get(name) == str(value), f"{bot['name']}: environment {name}"


def test_secrets_file_is_root_0600_and_nowhere_else(agent, bots, planted) -> None:
    values = "\n".join(v for vals in planted.values() for v in vals.values() if len(v) >= 6)
    for bot in bots:
        name = bot["name"]
        assert ok(agent, f"stat -c '%U:%G %a' /etc/botvps/{name}/secrets.env").strip() == "root:root 600"
        assert ok(agent, f"stat -c '%U:%G %a' /etc/botvps/{name}").strip() == "root:root 700"
        assert "secrets.env" in ok(agent, f"systemctl cat {unit(bot)}")
    # Fixed-string search with the values on stdin (never in an argv). The secrets files are
    # searched too: they must be the only hits (and prove the search finds what is there).
    found = run(agent, "grep -rlFf - /etc/botvps /etc/systemd /usr/lib/systemd/system /opt/botvps /var/log "
                       "/var/lib/botvps /usr/local/lib/botvps /tmp /var/tmp 2>/dev/null", stdin=values + "\n")
    # (a value holding a backslash, quote, backtick or $ is escaped in the file: only plain ones match there)
    plain = [b for b in bots if any(len(v) >= 6 and not set(v) & set('\\"`$') for v in planted[b["name"]].values())]
    assert sorted(found.stdout.split()) == sorted(f"/etc/botvps/{b['name']}/secrets.env" for b in plain)
    processes = ok(agent, "ps -eo args")
    assert not [v for v in values.splitlines() if v in processes], "a secret value is in a process's argv"


def test_a_bot_cannot_read_another_bots_secrets_or_environment(agent, bots) -> None:
    if len(bots) < 2:
        pytest.skip("needs two bots")
    first, second = bots[0], bots[1]
    user = f"bot-{first['name']}"
    other_pid = wait_active(agent, unit(second))
    for path in (f"/etc/botvps/{second['name']}/secrets.env", f"/proc/{other_pid}/environ",
                 f"/etc/botvps/{first['name']}/secrets.env", f"/var/lib/botvps/{second['name']}/state.json"):
        result = run(agent, f"runuser -u {user} -- cat {path}")
        assert result.exit_code != 0 and not result.stdout, f"{user} could read {path}"


def test_no_secret_in_the_journal(agent, planted) -> None:
    journal = ok(agent, "journalctl --no-pager -o export -b | tr -d '\\000'", timeout=300)
    assert "botvps-bot-" in journal
    for bot, values in planted.items():
        for name, value in values.items():
            if len(value) >= 6:
                assert value not in journal, f"{bot}: {name} is in the journal"


# ---------------------------------------------------------------- sandbox


def test_systemd_analyze_security_score(agent, bots) -> None:
    """Each bot's unit scores within its sandbox profile's bound (BOTVPS_SCORES_FILE: where to note the scores)."""
    for bot in bots:
        profile = bot.get("sandbox_profile", "default")
        out = ok(agent, f"systemd-analyze security --no-pager {unit(bot)}")
        match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", out)
        assert match, out[-500:]
        if os.environ.get("BOTVPS_SCORES_FILE"):
            with open(os.environ["BOTVPS_SCORES_FILE"], "a", encoding="utf-8") as scores:
                print(os.environ.get("BOTVPS_VM_NAME", "?"), unit(bot), profile, match.group(1), file=scores)
        assert float(match.group(1)) <= MAX_EXPOSURE_BY_PROFILE[profile], f"{unit(bot)} scores {match.group(1)}:\n{out}"


def test_each_bot_has_its_sandbox_profile_and_no_core_dumps(agent, bots) -> None:
    """jit gives up MemoryDenyWriteExecute and nothing else; every bot has LimitCORE=0."""
    for bot in bots:
        shown = ok(agent, f"systemctl show -p MemoryDenyWriteExecute -p LimitCORE -p NoNewPrivileges {unit(bot)}")
        props = dict(line.split("=", 1) for line in shown.split())
        jit = bot.get("sandbox_profile", "default") == "jit"
        assert props == {"MemoryDenyWriteExecute": "no" if jit else "yes", "LimitCORE": "0",
                         "NoNewPrivileges": "yes"}, f"{unit(bot)}: {props}"


def is_simplebot(bot: dict[str, Any]) -> bool:
    return str((bot.get("source") or {}).get("path", "")).rstrip("/").endswith("simplebot")


def test_stop_is_clean_without_sigkill(agent, bots) -> None:
    """The example bot logs its order cancelling and clean exit; systemd never needs SIGKILL."""
    simplebots = [b for b in bots if is_simplebot(b)]
    if not simplebots:
        pytest.skip("no bot runs examples/simplebot")
    for bot in simplebots:
        wait_active(agent, unit(bot))
        since = guest_now(agent)
        time.sleep(1)
        ok(agent, f"systemctl stop {unit(bot)}", timeout=float(bot.get("timeout_stop_sec", 120)) + 60)
        state = show(agent, unit(bot), "Result", "ExecMainStatus", "ActiveState")
        log = journal_since(agent, unit(bot), since)
        ok(agent, f"systemctl start {unit(bot)}")
        assert state["ActiveState"] == "inactive"
        assert state["Result"] == "success", state
        assert state["ExecMainStatus"] == "0", state
        assert "cancelling open orders" in log and "clean exit" in log, log[-800:]
        assert "SIGKILL" not in log and "timed out" not in log.lower(), log[-800:]
        wait_active(agent, unit(bot))


# ---------------------------------------------------------------- egress


def test_bot_egress_is_ipv4_on_declared_ports_only(agent, bots) -> None:
    bot = bots[0]
    user = f"bot-{bot['name']}"
    ports = [int(p) for p in bot.get("egress_ports", [443]) if int(p) not in (53, 443)]
    if not ports:
        pytest.skip(f"{bot['name']} declares no egress port a test listener can use (besides 443)")
    with listener(ports[0]) as allowed, listener() as other:
        assert connect_as(agent, user, CONTROLLER_FROM_GUEST, allowed), "declared port blocked"
        assert not connect_as(agent, user, CONTROLLER_FROM_GUEST, other), "undeclared port reachable"
        assert connect_as(agent, "ops", CONTROLLER_FROM_GUEST, other), "the admin is restricted"
        assert connect_as(agent, "root", CONTROLLER_FROM_GUEST, other), "root is restricted"
    # IPv6: a listener inside the VM on [::1], reachable by the admin, not by the bot.
    script = (
        "import socket,subprocess,sys\n"
        "s = socket.socket(socket.AF_INET6); s.bind(('::1', 0)); s.listen(8)\n"
        "port = str(s.getsockname()[1])\n"
        "code = " + repr(CONNECT) + "\n"
        "for user in sys.argv[1:]:\n"
        "    r = subprocess.run(['runuser', '-u', user, '--', 'python3', '-c', code, '::1', port])\n"
        "    print(user, r.returncode)\n"
    )
    out = ok(agent, f"python3 -c {shlex.quote(script)} ops {user}")
    results = dict(line.split()[:2] for line in out.splitlines() if line.split() and line.split()[0] in ("ops", user))
    assert results == {"ops": "0", user: "1"}, out
    uid = ok(agent, f"id -u {user}").strip()
    assert f"meta skuid {uid} jump" in ok(agent, "nft list table inet botvps_egress")
    tables = ok(agent, "nft list tables")
    assert "table inet botvps_egress" in tables
    assert "table ip filter" in tables, "ufw's table is gone"  # ufw (iptables-nft) untouched


# ---------------------------------------------------------------- web UIs over SSH


@pytest.mark.lab
def test_a_bot_ui_is_reached_only_through_an_ssh_tunnel(agent, bots, tmp_path, fresh_rate_limit) -> None:
    """The UI listens on 127.0.0.1 only, the firewall does not open it, another bot cannot connect to it, and
    `invoke tunnel` brings it to the controller; forwarding anywhere else is refused by sshd."""
    import subprocess
    import urllib.request

    import paramiko
    from conftest import LAB_GROUP_VARS, LAB_VAULT_PASSWORD

    from botvps.paths import PROJECT_ROOT
    from botvps.vm import inventory, machine

    with_ui = [b for b in bots if b.get("ui_port")]
    if not with_ui:
        pytest.skip("no bot declares ui_port")
    bot, vm = with_ui[0], machine.load(VM_NAME)
    port, owner = int(bot["ui_port"]), f"bot-{bot['name']}"
    listening = [line.split()[3] for line in ok(agent, f"ss -Hltn 'sport = :{port}'").splitlines() if line.split()]
    assert listening == [f"127.0.0.1:{port}"], f"{bot['name']}'s UI listens on {listening}, not on 127.0.0.1 only"
    assert not re.search(rf"\b{port}\b", ok(agent, "ufw status")), "the firewall opens the UI port"
    others = [f"bot-{b['name']}" for b in bots if b is not bot]
    for user in others:
        assert not connect_as(agent, user, "127.0.0.1", port), f"{user} reaches {bot['name']}'s UI"
    assert connect_as(agent, "ops", "127.0.0.1", port), "the admin (sshd's forward) cannot reach the UI"

    inv = inventory.write(vm, tmp_path / "inventory", {}, group_vars=LAB_GROUP_VARS)
    local = machine.free_port()
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "invoke"), "tunnel", bot["name"], "--inventory", str(inv),
         "--vault-password-file", LAB_VAULT_PASSWORD, "--local-port", str(local)],
        cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        line = process.stdout.readline()  # the URL, once the tunnel is up
        assert f"http://127.0.0.1:{local}/" in line, (line, process.poll(), process.stderr.read() if process.poll()
                                                      is not None else "")
        with urllib.request.urlopen(f"http://127.0.0.1:{local}/", timeout=30) as response:
            page = json.loads(response.read())
        assert page["bot"] == "simplebot" and str(page["uid"]) == ok(agent, f"id -u {owner}").strip(), page
    finally:
        process.terminate()
        process.wait(timeout=30)

    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # the host key is not what this checks
    client.connect("127.0.0.1", port=vm.ssh_port, username="ops", key_filename=str(vm.key_file), allow_agent=False,
                   look_for_keys=False, timeout=20, banner_timeout=30, auth_timeout=30)
    try:
        transport = client.get_transport()
        for target in [("127.0.0.1", 22), ("localhost", port), (CONTROLLER_FROM_GUEST, 443)]:
            with pytest.raises(paramiko.ChannelException):
                transport.open_channel("direct-tcpip", target, ("127.0.0.1", 40000), timeout=20)
        with pytest.raises(paramiko.SSHException):
            transport.request_port_forward("127.0.0.1", 0)  # remote forwarding: off
        transport.open_channel("direct-tcpip", ("127.0.0.1", port), ("127.0.0.1", 40000), timeout=20).close()
    finally:
        client.close()


# ---------------------------------------------------------------- key audit


def test_key_audit_timer_is_enabled(agent, bots, hostvars) -> None:
    audited = [b for b in bots if b.get("exchange", "none") != "none" and b.get("key_audit", True)]
    if not audited:
        pytest.skip("no bot with a key audit")
    for bot in audited:
        assert ok(agent, f"systemctl is-enabled botvps-keyaudit@{bot['name']}.timer").strip() == "enabled"
        assert ok(agent, f"systemctl is-active botvps-keyaudit@{bot['name']}.timer").strip() == "active"
        config = json.loads(ok(agent, f"cat /etc/botvps/{bot['name']}/keyaudit.json"))
        assert config["bot"] == bot["name"] and config["exchange"] == bot["exchange"]
        # the audit goes out from the address the bots' egress rule lets out (issue 17)
        assert config["source_ipv4"] == config["static_ipv4"] == hostvars["static_ipv4"]
        assert ok(agent, f"stat -c '%U %a' /usr/local/lib/botvps/keyaudit.py").strip() == "root 755"
        # the check before each start runs as the bot, sandboxed, not as root (no "+": flags=privileged)
        pre = ok(agent, f"systemctl show -p ExecStartPreEx -p User {unit(bot)}")
        assert "keyaudit.py" in pre and "privileged" not in pre and f"User=bot-{bot['name']}" in pre, pre


SIGN_EVERY_KEY_TYPE = (
    "from cryptography.hazmat.primitives import hashes; "
    "from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa; "
    "ed25519.Ed25519PrivateKey.generate().sign(b'm'); "
    "rsa.generate_private_key(public_exponent=65537, key_size=2048).sign(b'm', padding.PKCS1v15(), hashes.SHA256()); "
    "ec.generate_private_key(ec.SECP256R1()).sign(b'm', ec.ECDSA(hashes.SHA256())); print('signed')")


def test_keyaudit_signs_private_keys_inside_its_sandbox(agent, bots) -> None:
    """Debian's python3-cryptography signs Ed25519, RSA and ECDSA under the audit's W^X and syscall filter."""
    if not [b for b in bots if b.get("exchange", "none") != "none"]:
        pytest.skip("no bot on an exchange")
    sandbox = ("-p MemoryDenyWriteExecute=yes -p SystemCallFilter=@system-service "
               "-p 'SystemCallFilter=~@privileged @resources' -p NoNewPrivileges=yes")
    out = ok(agent, f'systemd-run --quiet --wait --pipe {sandbox} /usr/bin/python3 -c "{SIGN_EVERY_KEY_TYPE}"')
    assert out.strip() == "signed"


def test_bot_does_not_start_with_a_key_that_fails_the_audit(agent, bots, planted, hostvars) -> None:
    """The fake exchange on the controller says the key may withdraw: the bot must not start."""
    candidates = [b for b in bots if b.get("exchange", "none") != "none" and b.get("key_audit", True)
                  and str(b.get("exchange_base_url") or "").startswith(f"http://{CONTROLLER_FROM_GUEST}:")]
    if not candidates:
        pytest.skip(f"no audited bot with exchange_base_url on http://{CONTROLLER_FROM_GUEST}:PORT (the fake exchange)")
    bot = candidates[0]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from fakeexchange import FakeExchange

    port = int(bot["exchange_base_url"].rsplit(":", 1)[1].strip("/"))
    key, secret = planted[bot["name"]][bot["api_key_var"]], planted[bot["name"]][bot["api_secret_var"]]
    static_ip = hostvars.get("static_ipv4")
    try:
        fake = FakeExchange(port=port, client_ip=static_ip).start()
    except OSError as exc:
        pytest.skip(f"cannot run the fake exchange on 127.0.0.1:{port}: {exc}")
    name = unit(bot)
    try:
        fields: dict[str, Any] = {"ips": [static_ip]}
        if bot["exchange"] == "okx":
            fields["passphrase"] = planted[bot["name"]][bot["api_passphrase_var"]]
        fake.add_key(key, exchange=bot["exchange"], secret=secret, **fields)
        # A safe key: the audit signs with the secret from secrets.env and passes.
        since = guest_now(agent)
        time.sleep(1)
        ok(agent, f"systemctl restart {name}")
        wait_active(agent, name)
        assert fake.attempts(key) >= 1
        assert re.search(r"keyaudit .* PASS", journal_since(agent, name, since)), "audit did not pass"
        # The daily audit writes its JSON verdict to the journal.
        since = guest_now(agent)
        time.sleep(1)
        ok(agent, f"systemctl start botvps-keyaudit@{bot['name']}.service")
        verdict = journal_since(agent, f"botvps-keyaudit@{bot['name']}.service", since)
        assert '"status": "pass"' in verdict, verdict
        # The key gains withdrawal rights: the next start is refused, even with fail-open.
        fake.update_key(key, withdraw=True)
        since = guest_now(agent)
        time.sleep(1)
        assert run(agent, f"systemctl restart {name}").exit_code != 0
        state = show(agent, name, "ActiveState", "MainPID")
        assert state["MainPID"] == "0", f"{name} started with an unsafe key: {state}"
        log = journal_since(agent, name, since)
        assert "FAIL" in log and "clean exit" in log, log[-800:]
        assert key not in log and secret not in log
    finally:
        fake.update_key(key, withdraw=False)
        run(agent, f"systemctl reset-failed {name}; systemctl restart {name}")
        try:
            wait_active(agent, name)
        finally:
            fake.stop()


@pytest.mark.lab
@pytest.mark.restore("provisioned")
@pytest.mark.drills("retire")
def test_a_bot_retired_by_state_absent_is_stopped_and_its_key_deleted(agent, bots, tmp_path) -> None:
    """gamma joins (a copy of a bot without an exchange), then its entry goes missing: it keeps running
    (same MainPID) and the run names it. Then its entry says state: absent: the next run stops it as any
    stop does (its signal, its time), deletes its unit, secrets file and code, keeps its state, and restarts
    no other bot; the run after that changes nothing."""
    from conftest import lab_provision

    from botvps.vm import machine

    template = next((b for b in bots if b.get("exchange", "none") == "none"), None)
    if template is None:
        pytest.skip("no bot without an exchange to copy")
    vm = machine.load(VM_NAME)
    others = {b["name"]: wait_active(agent, unit(b)) for b in bots}

    def provision_bots(**overrides: Any):
        result = lab_provision(vm, tmp_path / "inventory", ["--tags", "bots"], **overrides)
        assert result.returncode == 0, result.output[-3000:]
        return result

    # No vaulted secret (the lab vault has none for gamma): simplebot takes its "key" from the environment.
    # Not alpha's UI port: one bot per UI port (validation refuses a second).
    gamma = {**{k: v for k, v in template.items() if k != "ui_port"}, "name": "gamma", "secrets": [],
             "environment": {"SIMPLEBOT_KEY_VAR": "GAMMA_DEMO_ID", "GAMMA_DEMO_ID": "not-an-api-key"}}
    provision_bots(bots=[*bots, gamma])
    wait_active(agent, "botvps-bot-gamma.service")
    ok(agent, "test -f /etc/botvps/gamma/secrets.env && test -d /opt/botvps/gamma/app")
    ok(agent, "echo kept > /var/lib/botvps/gamma/marker")
    gamma_pid = wait_active(agent, "botvps-bot-gamma.service")
    missing = provision_bots()  # molecule's bots only: gamma's entry is missing (a typo, a lost file)
    assert wait_active(agent, "botvps-bot-gamma.service") == gamma_pid, "a bot missing from the inventory was stopped"
    said = " ".join(missing.output.split())  # Ansible wraps its warnings
    assert "left as they are: gamma" in said and "state: absent" in said, missing.output[-2000:]
    since = guest_now(agent)
    time.sleep(1)
    retired = provision_bots(bots=[*bots, {**gamma, "state": "absent"}])
    assert retired.changed >= 1
    assert show(agent, "botvps-bot-gamma.service", "LoadState")["LoadState"] == "not-found"
    assert run(agent, "pgrep -u bot-gamma").exit_code == 1, "a process of the retired bot still runs"
    assert run(agent, "test -e /etc/botvps/gamma || test -e /opt/botvps/gamma").exit_code == 1
    assert ok(agent, "cat /var/lib/botvps/gamma/marker").strip() == "kept", "the retired bot's state was deleted"
    log = journal_since(agent, "botvps-bot-gamma.service", since)
    assert "clean exit" in log and "SIGKILL" not in log, log[-800:]
    for name, pid in others.items():
        assert wait_active(agent, f"botvps-bot-{name}.service") == pid, f"{name} was restarted"
    assert provision_bots(bots=[*bots, {**gamma, "state": "absent"}]).changed == 0


@pytest.mark.lab
@pytest.mark.restore("provisioned")
@pytest.mark.drills("retire")
def test_a_typo_or_a_misnamed_host_vars_file_stops_no_bot(agent, bots, tmp_path) -> None:
    """The host's bots written under ``bot:``, or kept in a host_vars file named after no host: the provision
    says why, and every bot runs on with the same MainPID."""
    import yaml
    from conftest import LAB_GROUP_VARS, LAB_VAULT_PASSWORD

    from botvps import provision
    from botvps.vm import inventory, machine

    vm = machine.load(VM_NAME)
    before = {b["name"]: wait_active(agent, unit(b)) for b in bots}
    group = yaml.safe_load((LAB_GROUP_VARS / "all" / "main.yml").read_text())
    declared = group.pop("bots")
    cases = {"typo": ({**group, "bot": declared}, None),
             "host_vars": (group, f"{vm.name}-old")}  # the file of a host renamed since
    for case, (group_vars, stray_host) in cases.items():
        inv = inventory.write(vm, tmp_path / case, group_vars=LAB_GROUP_VARS)
        (inv / "group_vars" / "all" / "main.yml").write_text(yaml.safe_dump(group_vars, sort_keys=False))
        if stray_host:
            (inv / "host_vars").mkdir()
            (inv / "host_vars" / f"{stray_host}.yml").write_text(yaml.safe_dump({"bots": declared}))
        result = provision.provision(inv, vault_password_file=LAB_VAULT_PASSWORD, extra=["--tags", "bots"],
                                     echo=False)
        said = " ".join(result.output.split())
        refused = result.returncode != 0 and ("'bot'" in said or "bot:" in said or stray_host in said)
        named = result.returncode == 0 and "left as they are: alpha, beta" in said
        assert refused or named, f"{case}: the provision did not say why the bots are not deployed:\n" \
                                 f"{result.output[-3000:]}"
        for name, pid in before.items():
            assert wait_active(agent, f"botvps-bot-{name}.service") == pid, f"{case}: {name} was stopped or restarted"


@pytest.mark.lab
@pytest.mark.restore("provisioned")
@pytest.mark.drills("retire")
def test_a_bot_is_not_restarted_into_a_certain_failure(agent, bots, tmp_path) -> None:
    """alpha's command changed to a program that does not exist: it is not restarted (same MainPID) and the run
    fails naming it. Then to one that exits at once (/bin/false): the run fails naming alpha and its journal."""
    from conftest import lab_provision

    from botvps.vm import machine

    vm = machine.load(VM_NAME)
    alpha = next(b for b in bots if b["name"] == "alpha")
    others = [b for b in bots if b["name"] != "alpha"]
    pid = wait_active(agent, "botvps-bot-alpha.service")
    missing = lab_provision(vm, tmp_path / "missing", ["--tags", "bots"],
                            bots=[{**alpha, "command": ["/usr/local/bin/no-such-bot"]}, *others])
    said = " ".join(missing.output.split())
    assert missing.returncode != 0 and "botvps-bot-alpha.service" in said and "not executable" in said, \
        missing.output[-3000:]
    assert wait_active(agent, "botvps-bot-alpha.service") == pid, "alpha was restarted into a certain failure"
    crashing = lab_provision(vm, tmp_path / "crashing", ["--tags", "bots"],
                             bots=[{**alpha, "command": ["/bin/false"]}, *others])
    said = " ".join(crashing.output.split())
    assert crashing.returncode != 0 and "journalctl -u botvps-bot-alpha.service" in said, crashing.output[-3000:]


# ---------------------------------------------------------------- NAT clouds (issue 17)


class WhatIsMyAddress:
    """A loopback stand-in for api.ipify.org: answers ``address`` to every GET and counts them."""

    def __init__(self, address: str) -> None:
        import http.server

        self.address, self.asked = address, 0
        stand_in = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                stand_in.asked += 1
                self.send_response(200)
                self.end_headers()
                self.wfile.write(stand_in.address.encode() + b"\n")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://{CONTROLLER_FROM_GUEST}:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.lab
@pytest.mark.restore("provisioned")
@pytest.mark.drills("nat")
def test_a_nat_cloud_host_sends_from_its_private_address(agent, bots, planted, tmp_path) -> None:
    """static_ipv4 is not on the interface and the world (a stand-in on 10.0.2.2) sees it: the provision passes,
    the egress rules let the bots out from the default route's address, and the audit, sent from it as the bot,
    passes at an exchange that sees static_ipv4. When the world sees another address, the provision is refused
    before anything changes, naming the clouds' fix, and every bot runs on."""
    from conftest import lab_provision

    from botvps.vm import machine

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from fakeexchange import FakeExchange

    audited = [b for b in bots if b.get("exchange", "none") != "none" and b.get("key_audit", True)
               and str(b.get("exchange_base_url") or "").startswith(f"http://{CONTROLLER_FROM_GUEST}:")]
    if not audited:
        pytest.skip(f"no audited bot with exchange_base_url on http://{CONTROLLER_FROM_GUEST}:PORT (the fake exchange)")
    bot, vm = audited[0], machine.load(VM_NAME)
    nat_ip, private = "198.51.100.7", ok(agent, "ip -o -4 route get 10.0.2.2 | sed -n 's/.* src \\([0-9.]*\\).*/\\1/p'").strip()
    assert private and private != nat_ip
    world = WhatIsMyAddress(nat_ip)
    port = int(bot["exchange_base_url"].rsplit(":", 1)[1].strip("/"))
    key, secret = planted[bot["name"]][bot["api_key_var"]], planted[bot["name"]][bot["api_secret_var"]]
    fake = FakeExchange(port=port, client_ip=nat_ip).start()  # the cloud translates the source to static_ipv4
    try:
        fake.add_key(key, exchange=bot["exchange"], secret=secret, ips=[nat_ip])
        result = lab_provision(vm, tmp_path / "nat", ["--tags", "bots"], static_ipv4=nat_ip,
                               preflight_public_ipv4_url=world.url)
        assert result.returncode == 0, result.output[-3000:]
        assert world.asked >= 1, "preflight did not ask which address the world sees"
        rules = ok(agent, "nft list table inet botvps_egress")
        assert f"ip saddr != {private}" in rules and nat_ip not in rules, rules
        config = json.loads(ok(agent, f"cat /etc/botvps/{bot['name']}/keyaudit.json"))
        assert (config["static_ipv4"], config["source_ipv4"]) == (nat_ip, private)
        # The audit before the start goes out as the bot, through its egress chain, and passes.
        name = unit(bot)
        since = guest_now(agent)
        time.sleep(1)
        attempts = fake.attempts(key)
        ok(agent, f"systemctl restart {name}")
        wait_active(agent, name)
        log = journal_since(agent, name, since)
        assert fake.attempts(key) > attempts and re.search(r"keyaudit .* PASS", log), log[-1500:]

        # The world sees another address (the Elastic IP was released): refused, nothing changed.
        before = {b["name"]: wait_active(agent, unit(b)) for b in bots}
        egress_file = ok(agent, "sha256sum /etc/botvps/egress.nft")
        world.address = "198.51.100.8"
        refused = lab_provision(vm, tmp_path / "moved", ["--tags", "bots"], static_ipv4=nat_ip, preflight_public_ipv4_url=world.url)
        said = " ".join(refused.output.split())
        assert refused.returncode != 0 and "come from 198.51.100.8, not from static_ipv4 198.51.100.7" in said \
            and "Elastic IP" in said, refused.output[-3000:]
        assert refused.changed == 0
        assert ok(agent, "sha256sum /etc/botvps/egress.nft") == egress_file
        for name_, pid in before.items():
            assert wait_active(agent, f"botvps-bot-{name_}.service") == pid, f"{name_} was restarted"
    finally:
        world.stop()
        fake.stop()
