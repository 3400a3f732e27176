"""`invoke demo`'s inventory: a valid one with a bot whose stand-in key is only in the encrypted vault.

The demo itself boots a VM (run by hand: `invoke demo`); what it provisions with is checked here, by the same
validation `invoke provision` runs first.
"""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("ansible")

from botvps import demo, secrets, validate  # noqa: E402
from botvps.vm import machine  # noqa: E402


@pytest.fixture
def vm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> machine.VM:
    monkeypatch.setenv("BOTVPS_HOME", str(tmp_path / "home"))
    vm = machine.VM(name="demo", suite="bookworm", user="root", ssh_port=2222, password="x", accel="tcg")
    vm.directory.mkdir(parents=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(vm.key_file)], check=True)
    return vm


def test_the_demo_inventory_is_valid_and_its_key_is_only_in_the_vault(vm: machine.VM, tmp_path: Path) -> None:
    inv, password = demo.write_inventory(vm, tmp_path / "demo")
    assert stat.S_IMODE(password.stat().st_mode) == 0o600
    assert inv not in password.parents, "Ansible would read the password file as an inventory source"
    code, report = validate.check(inv, str(password), reach=False)
    assert code == validate.EXIT_OK, report
    [host] = validate.load_inventory(inv, str(password)).values()
    assert [b["name"] for b in host["bots"]] == [demo.BOT]

    vault = inv / "group_vars" / "all" / "vault.yml"
    key = secrets.get_secrets(vault, secrets.read_password_file(password), demo.BOT)[demo.KEY_VAR]
    assert key.startswith("demo-") and len(key) > 20
    assert vault.read_bytes().startswith(secrets.HEADER)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert not [p for p in files if key.encode() in p.read_bytes()], "the key is in plaintext on disk"

    # A second demo keeps the key and the password: the bot is not restarted with a new one each time.
    again, password_again = demo.write_inventory(vm, tmp_path / "demo")
    assert (again, password_again) == (inv, password)
    assert secrets.get_secrets(vault, secrets.read_password_file(password), demo.BOT)[demo.KEY_VAR] == key
