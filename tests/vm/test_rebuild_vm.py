"""Reproducible rebuilds, end to end: back up server A's two bots, lose A, rebuild on a fresh server B.

Server A is the lab VM of tests/vm/conftest.py (in CI: molecule's debian12 VM, after tests/host and
the drift drills; this module runs last because it destroys it). Real state is planted first, as
the bots' own users: alpha gets files and a symbolic link (it is stopped for the backup), beta a
SQLite database in WAL mode that a writer keeps inserting into during the backup (beta declares
``state_sqlite``, so it is copied online and never stopped). Then, as an operator would:

    invoke bots.backup --inventory INV_A --out BACKUPS ...
    (A is gone: its VM goes back to the snapshot of its first boot, before anything was
     provisioned, and is server B; without that snapshot A is destroyed and B is a new VM)
    invoke rebuild --host B --inventory INV_B --restore-from BACKUPS/A ...

On B, beta trades on the fake exchange as a Bybit key (Bybit shows its IP whitelist): while the whitelist
still holds another address (the old server's, as far as botvps knows), the rebuild's fence keeps every bot
stopped and says why; once it holds B's address only, the rebuild is run again and the bots start.

And on B: drift clean, every backed-up file byte-identical (sha256 read through the guest agent,
not SSH), owned by its bot, both bots running; no secret in any output. A corrupted copy of the
backup is refused, naming the file, before anything is contacted.

    BOTVPS_VM_TESTS=1 .venv/bin/python -m pytest tests/vm/test_rebuild_vm.py -v -s
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import yaml

from botvps import backup as backups
from botvps import rebuild
from botvps import secrets as vault
from botvps.paths import PROJECT_ROOT
from botvps.vm import machine

from .vmlab import MOLECULE_SHARED, PASSWORD_FILE, Lab, log, write_inventory

CONTROLLER_FROM_GUEST = "10.0.2.2"
FAKE_PORT = 18123  # one of beta's egress_ports
OLD_ADDRESS = "198.51.100.7"  # still in the key's whitelist: to botvps, the old server may be alive

pytestmark = [pytest.mark.vm]

NEW_VM = os.environ.get("BOTVPS_REBUILD_VM", "test-rebuild")  # "test-": `invoke test` stops a leftover
BOOTED = "booted"  # the snapshot molecule's create saves (molecule/shared/create.yml), as tests/host's conftest names it
CREATE_DB = """\
import sqlite3, time
db = sqlite3.connect("trades.db")
db.execute("PRAGMA journal_mode=WAL")
db.execute("CREATE TABLE IF NOT EXISTS trades (id INTEGER PRIMARY KEY, pair TEXT, qty REAL, ts REAL)")
rows = [("BTCUSDT", 0.01 * i, time.time()) for i in range(500)]
db.executemany("INSERT INTO trades (pair, qty, ts) VALUES (?, ?, ?)", rows)
db.commit()
"""
# Keeps writing while the backup runs (and for at most 5 minutes).
WRITER = """\
import sqlite3, time
db = sqlite3.connect("trades.db", timeout=30)
end = time.time() + 300
while time.time() < end:
    db.execute("INSERT INTO trades (pair, qty, ts) VALUES ('ETHUSDT', 0.5, ?)", (time.time(),))
    db.commit()
    time.sleep(0.05)
"""
COUNT = "import sqlite3; print(sqlite3.connect('trades.db').execute('SELECT count(*) FROM trades').fetchone()[0])"


def as_bot(bot: str, command: str) -> str:
    """A shell command run as bot-BOT in the bot's own mount namespace, in its state directory (as the bot sees it)."""
    inner = f"cd /var/lib/botvps/{bot} && umask 077 && {command}"
    return (f"pid=$(systemctl show -p MainPID --value botvps-bot-{bot}.service) && nsenter -t $pid -m -- "
            f"setpriv --reuid=bot-{bot} --regid=bot-{bot} --clear-groups -- sh -c {shlex.quote(inner)}")


def invoke(*args: str, timeout: float = 3600) -> tuple[int, str, float]:
    """An invoke task as an operator runs it; (exit code, all output, seconds). The output is echoed."""
    command = [str(Path(sys.executable).parent / "invoke"), *args]
    started = time.monotonic()
    result = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout)
    seconds = time.monotonic() - started
    output = result.stdout + result.stderr
    log(f"\n$ {shlex.join(command)}\n  exit {result.returncode} in {seconds:.0f} s\n{output[-6000:]}")
    return result.returncode, output, seconds


def main_pid(lab: Lab, bot: str) -> str:
    return lab.console(f"systemctl show -p MainPID --value botvps-bot-{bot}.service").strip()


def state_listing(console, bot: str) -> dict[str, str]:
    """Every entry of a bot's state directory, read as root through the guest agent: type, owner, mode, sha256."""
    root = f"/var/lib/botvps/{bot}"
    listing = console(f"cd {root} && find . -printf '%P\\t%y %u %m\\n'")
    sums = console(f"cd {root} && find . -type f -print0 | xargs -0r sha256sum")
    found = {(line.split("\t")[0] or "."): line.split("\t")[1] for line in listing.splitlines() if "\t" in line}
    for line in sums.splitlines():
        digest, path = line.split(None, 1)
        found[path.strip()[2:]] += " " + digest
    return found


def heartbeats(text: str) -> int:
    return int(json.loads(text)["heartbeats"])


# ---------------------------------------------------------------- server A: real state, then the backup


@pytest.fixture(scope="module")
def planted(lab: Lab) -> dict:
    lab.console(as_bot("alpha", "mkdir -p journal && head -c 300000 /dev/urandom > journal/orders.bin && "
                                "printf 'pair,qty\\nBTCUSDT,0.01\\n' > journal/fills.csv && "
                                "ln -sfn journal/orders.bin latest"))
    lab.console(as_bot("beta", f"python3 -c {shlex.quote(CREATE_DB)}"))
    writer = lab.console(as_bot("beta", f"setsid python3 -c {shlex.quote(WRITER)} >/dev/null 2>&1 & echo $!")).strip()
    time.sleep(2)
    files = state_listing(lab.console, "alpha")
    pids = {bot: main_pid(lab, bot) for bot in lab.bots}
    return {"writer": writer, "alpha": files, "pids": pids}


@pytest.fixture(scope="module")
def backed_up(lab: Lab, planted: dict) -> dict:
    out = lab.tmp / "backups"
    lab.fresh_rate_limit()
    code, output, seconds = invoke("bots.backup", "--inventory", str(lab.inventory), "--vault-password-file",
                                   str(lab.password_file), "--out", str(out))
    rows = lab.console(as_bot("beta", f"python3 -c {shlex.quote(COUNT)}"))
    lab.console(f"kill {planted['writer']}", check=False)
    states = {bot: lab.console(f"systemctl is-active botvps-bot-{bot}.service", check=False).strip()
              for bot in lab.bots}
    pids = {bot: main_pid(lab, bot) for bot in lab.bots}
    log(f"backup: exit {code} in {seconds:.1f} s")
    found = backups.load(out / lab.vm.name) if code == 0 else None
    return {"code": code, "output": output, "seconds": seconds, "backup": found, "states": states, "pids": pids,
            "rows_after": int(rows.strip() or 0), "out": out}


def test_backup_succeeds_and_is_verified(backed_up):
    assert backed_up["code"] == 0, backed_up["output"][-3000:]
    assert "every checksum verified" in backed_up["output"]
    assert sorted(backed_up["backup"].bots) == ["alpha", "beta"]


def test_backup_stops_alpha_gracefully_and_starts_it_again(backed_up, planted):
    alpha = backed_up["backup"].bots["alpha"]
    assert alpha["method"] == "stopped" and alpha["was_running"] is True
    assert backed_up["states"]["alpha"] == "active"
    assert backed_up["pids"]["alpha"] != planted["pids"]["alpha"]  # a new process: it was stopped and started


def test_backup_copies_beta_online_without_stopping_it(backed_up, planted):
    beta = backed_up["backup"].bots["beta"]
    assert beta["method"] == "sqlite-online" and beta["sqlite"] == ["trades.db"]
    assert backed_up["states"]["beta"] == "active"
    assert backed_up["pids"]["beta"] == planted["pids"]["beta"]  # the same process throughout
    paths = [entry["path"] for entry in beta["entries"]]
    assert "trades.db" in paths and not any(p.endswith(("-wal", "-shm", "-journal")) for p in paths)


def test_backup_has_alphas_files_as_they_were(backed_up, planted):
    entries = {e["path"]: e for e in backed_up["backup"].bots["alpha"]["entries"]}
    for path in ("journal/orders.bin", "journal/fills.csv"):
        assert planted["alpha"][path].split()[-1] == entries[path]["sha256"]
    assert entries["latest"]["type"] == "symlink" and entries["latest"]["target"] == "journal/orders.bin"


def test_the_online_sqlite_copy_is_a_consistent_database(backed_up, tmp_path):
    backup = backed_up["backup"]
    with tarfile.open(backup.archive("beta")) as tar:
        (tmp_path / "trades.db").write_bytes(tar.extractfile("trades.db").read())  # type: ignore[union-attr]
    db = sqlite3.connect(tmp_path / "trades.db")
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    rows = db.execute("SELECT count(*) FROM trades").fetchone()[0]
    assert 500 < rows <= backed_up["rows_after"]  # the writer's rows up to the copy, none torn


def test_no_secret_in_the_backup_or_its_output(lab, backed_up):
    assert lab.leaked(backed_up["output"]) == []
    backup = backed_up["backup"]
    contents = [(backup.directory / "manifest.json").read_text()]
    for bot in backup.bots:
        with tarfile.open(backup.archive(bot)) as tar:
            contents += [tar.extractfile(m).read().decode(errors="replace")  # type: ignore[union-attr]
                         for m in tar if m.isfile()]
    assert lab.leaked("\n".join(contents)) == []


# ---------------------------------------------------------------- A destroyed, B rebuilt


@pytest.fixture(scope="module")
def bybit(lab: Lab):
    """The fake exchange on the controller (10.0.2.2:18123 from the VM), holding beta's key as a Bybit key whose
    whitelist holds the new address and OLD_ADDRESS."""
    sys.path.insert(0, str(PROJECT_ROOT / "tests"))
    from fakeexchange import FakeExchange

    secrets = vault.load_vault(MOLECULE_SHARED / "group_vars" / "all" / "vault.yml",
                               vault.read_password_file(PASSWORD_FILE))["botvps_secrets"]["beta"]
    fake = FakeExchange(port=FAKE_PORT, client_ip="10.0.2.15").start()
    fake.add_key(secrets["BINANCE_KEY"], exchange="bybit", secret=secrets["BINANCE_SECRET"],
                 ips=["10.0.2.15", OLD_ADDRESS])
    try:
        yield fake, secrets["BINANCE_KEY"]
    finally:
        fake.stop()


def server_b_inventory(vm: machine.VM, directory: Path) -> Path:
    """Molecule's inventory for B, with beta's key at the fake exchange as a Bybit key."""
    bots = yaml.safe_load((MOLECULE_SHARED / "group_vars" / "all" / "main.yml").read_text())["bots"]
    for bot in bots:
        if bot["name"] == "beta":
            bot.update(exchange="bybit", exchange_base_url=f"http://{CONTROLLER_FROM_GUEST}:{FAKE_PORT}")
    return write_inventory(vm, directory, bots=bots)


@pytest.fixture(scope="module")
def rebuilt(lab: Lab, backed_up: dict, bybit):
    """Server A is gone; B is a fresh server. With A's snapshot of its first boot (molecule's VM: saved before
    anything was provisioned, botvps.vm.machine.up), B is A's VM restored to it: a server as the provider hands it
    over, in seconds instead of a new VM's boot. Else a new VM is booted."""
    assert backed_up["code"] == 0, "no backup to rebuild from"
    started = time.monotonic()
    fresh = lab.vm if BOOTED in lab.vm.snapshots() else None
    try:
        if fresh:
            log(f"rebuild: {fresh.name} restored to {BOOTED!r} (server A is gone) in {fresh.restore(BOOTED):.1f} s")
            vm = fresh
        else:
            machine.down(lab.vm.name)  # server A is gone
            vm = machine.up(NEW_VM, suite="bookworm", user="root", forwards=(8080, 2222), log=log)
        boot = time.monotonic() - started
        inv = server_b_inventory(vm, lab.tmp / "inventory-new")
        report = lab.tmp / "rebuild.json"
        command = ["rebuild", "--host", vm.name, "--inventory", str(inv), "--vault-password-file",
                   str(lab.password_file), "--restore-from", str(backed_up["out"] / lab.vm.name), "--report", str(report)]
        # The fence: OLD_ADDRESS is still in the whitelist: provisioned, and no bot started.
        held_code, held_output, held_seconds = invoke(*command)
        held = {bot: vm.console().run(f"systemctl is-active botvps-bot-{bot}.service").stdout.strip()
                for bot in ("alpha", "beta")}
        log(f"rebuild: fenced run exit {held_code} in {held_seconds:.0f} s, bots {held}")
        fake, key = bybit
        fake.update_key(key, ips=["10.0.2.15"])  # the operator moves the whitelist to the new address only
        lab.fresh_rate_limit()
        code, output, seconds = invoke(*command)
        log(f"rebuild: {vm.name} ready in {boot:.0f} s, invoke rebuild exit {code} in {seconds:.0f} s")

        def console(command: str) -> str:
            result = vm.console().run(command)
            assert result.exit_code == 0, result.stderr
            return result.stdout

        yield {"vm": vm, "inventory": inv, "code": code, "output": output, "seconds": seconds, "boot": boot,
               "held": {"code": held_code, "output": held_output, "states": held},
               "report": json.loads(report.read_text()) if report.exists() else {}, "console": console}
    finally:
        if not fresh:
            machine.down(NEW_VM)


def test_an_old_address_in_the_keys_whitelist_keeps_every_bot_stopped(rebuilt):
    """The fence: the rebuild provisions B, asks the exchange from B, and starts nothing while OLD_ADDRESS is listed."""
    held = rebuilt["held"]
    assert held["code"] == 1, held["output"][-4000:]
    assert held["states"] == {"alpha": "inactive", "beta": "inactive"}, held["output"][-3000:]
    assert f"no bot was started on {rebuilt['vm'].name}" in held["output"]
    assert f"beta: FAIL IP whitelist also allows {OLD_ADDRESS} (rebuild fence" in held["output"]
    assert "Bybit: Account > API > the key > Edit" in held["output"] and "run the rebuild again" in held["output"]


def test_once_the_whitelist_holds_only_the_new_address_the_bots_start(rebuilt):
    assert "beta: fenced (the key's IP whitelist holds only 10.0.2.15)" in rebuilt["output"]


def test_rebuild_succeeds(rebuilt):
    assert rebuilt["code"] == 0, rebuilt["output"][-4000:]
    log(f"rebuild phases (s): {rebuilt['report'].get('seconds')}")


def test_the_rebuilt_server_has_no_drift(rebuilt):
    [host] = rebuilt["report"]["drift"]
    unexpected = [item for item in host["items"] if item["check"] not in rebuild.PENDING_MAINTENANCE]
    assert unexpected == []
    assert host["status"] in ("clean", "drifted")


def test_both_bots_run_on_the_rebuilt_server(rebuilt):
    for bot in ("alpha", "beta"):
        assert rebuilt["console"](f"systemctl is-active botvps-bot-{bot}.service").strip() == "active"


def test_the_state_is_byte_identical_to_the_backup(rebuilt, backed_up):
    backup = backed_up["backup"]
    for bot in ("alpha", "beta"):
        on_b = state_listing(rebuilt["console"], bot)
        for entry in backup.bots[bot]["entries"]:
            found = on_b.get(entry["path"])
            assert found, f"{bot}: {entry['path']} is missing on the new server"
            kind, owner, mode, *digest = found.split()
            assert owner == f"bot-{bot}", f"{bot}: {entry['path']} is owned by {owner}"
            assert int(mode, 8) == int(entry["mode"], 8) & 0o1777
            if entry["type"] == "file" and entry["path"] != "state.json":  # the running bot rewrites state.json
                assert digest == [entry["sha256"]], f"{bot}: {entry['path']} differs from the backup"
    # Every file, state.json included, matched the manifest when it was written (before the bots started).
    assert rebuilt["report"]["restore"]["restored"] == {
        bot: sum(e["type"] == "file" for e in backup.bots[bot]["entries"]) for bot in ("alpha", "beta")}


def test_the_bots_carry_on_from_the_restored_state(rebuilt, backed_up, tmp_path):
    backup = backed_up["backup"]
    for bot in ("alpha", "beta"):
        with tarfile.open(backup.archive(bot)) as tar:
            saved = heartbeats(tar.extractfile("state.json").read())  # type: ignore[union-attr]
        now = heartbeats(rebuilt["console"](f"cat /var/lib/botvps/{bot}/state.json"))
        assert now > saved, f"{bot}: {now} heartbeats on the new server, {saved} in the backup: it started from scratch"


def test_rebuild_prints_the_new_address_and_the_whitelist_steps(rebuilt):
    output = rebuilt["output"]
    assert "new static IPv4: 10.0.2.15" in output
    assert "beta (bybit, the key in BINANCE_KEY): Bybit: Account > API" in output
    assert f"invoke audit-keys --host {rebuilt['vm'].name} --bot beta" in output
    assert "alpha: no exchange key" in output


def test_no_secret_in_the_rebuild_output(lab, rebuilt):
    assert lab.leaked(rebuilt["output"]) == []
    assert lab.leaked(rebuilt["held"]["output"]) == []
    assert lab.leaked(json.dumps(rebuilt["report"])) == []


def test_a_corrupted_backup_is_refused_before_anything_changes(lab, rebuilt, backed_up):
    damaged = lab.tmp / "damaged"
    shutil.copytree(backed_up["backup"].directory, damaged)
    data = bytearray((damaged / "alpha.tar.gz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (damaged / "alpha.tar.gz").write_bytes(bytes(data))
    before = state_listing(rebuilt["console"], "alpha")
    code, output, seconds = invoke("rebuild", "--host", rebuilt["vm"].name, "--inventory", str(rebuilt["inventory"]),
                                   "--vault-password-file", str(lab.password_file), "--restore-from", str(damaged))
    assert code == 2
    assert f"{damaged / 'alpha.tar.gz'}: sha256" in output and "Nothing was changed" in output
    assert "PLAY" not in output  # nothing was contacted
    after = state_listing(rebuilt["console"], "alpha")
    after.pop("state.json")  # the running bot's heartbeat
    before.pop("state.json")
    assert after == before
