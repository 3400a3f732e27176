"""botvps.secrets: the vault file of the bots' secrets (real ansible-vault, no mocks)."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from botvps import secrets
from botvps.secrets import SecretsError, get_secrets, set_secret

PASSWORD = "correct horse battery staple"
TRICKY = "a$b\"c'd\\e f#g=h`i{{ j }}%k;l"


@pytest.fixture
def vault(tmp_path: Path) -> Path:
    return tmp_path / "inventory" / "group_vars" / "all" / "vault.yml"


def test_round_trip_with_tricky_characters(vault: Path) -> None:
    assert set_secret(vault, PASSWORD, "alpha", "BINANCE_SECRET", TRICKY) is True
    assert get_secrets(vault, PASSWORD, "alpha") == {"BINANCE_SECRET": TRICKY}
    assert get_secrets(vault, PASSWORD) == {"alpha": {"BINANCE_SECRET": TRICKY}}


def test_other_values_are_kept(vault: Path) -> None:
    set_secret(vault, PASSWORD, "alpha", "BINANCE_KEY", "key-alpha-1234")
    set_secret(vault, PASSWORD, "alpha", "BINANCE_SECRET", "secret-alpha")
    set_secret(vault, PASSWORD, "beta", "BYBIT_KEY", "key-beta-5678")
    set_secret(vault, PASSWORD, "alpha", "BINANCE_SECRET", "rotated")
    assert get_secrets(vault, PASSWORD) == {
        "alpha": {"BINANCE_KEY": "key-alpha-1234", "BINANCE_SECRET": "rotated"},
        "beta": {"BYBIT_KEY": "key-beta-5678"},
    }


def test_other_top_level_variables_are_kept(vault: Path) -> None:
    secrets.save_vault(vault, PASSWORD, {"ansible_become_password": "sudo-pw"})
    set_secret(vault, PASSWORD, "alpha", "K", "v")
    assert secrets.load_vault(vault, PASSWORD)["ansible_become_password"] == "sudo-pw"


def test_setting_the_same_value_again_does_not_rewrite(vault: Path) -> None:
    set_secret(vault, PASSWORD, "alpha", "K", "value")
    before = vault.read_bytes()
    assert set_secret(vault, PASSWORD, "alpha", "K", "value") is False
    assert vault.read_bytes() == before


def test_file_is_an_aes256_vault_with_mode_0600_and_no_plaintext(vault: Path) -> None:
    set_secret(vault, PASSWORD, "alpha", "BINANCE_SECRET", TRICKY)
    data = vault.read_bytes()
    assert data.splitlines()[0] == b"$ANSIBLE_VAULT;1.1;AES256"
    assert stat.S_IMODE(vault.stat().st_mode) == 0o600
    assert b"BINANCE_SECRET" not in data and TRICKY.encode() not in data
    leftovers = [p.name for p in vault.parent.iterdir() if p != vault]
    assert leftovers == []


def test_ansible_vault_cli_decrypts_it_and_values_are_unsafe(vault: Path, tmp_path: Path) -> None:
    set_secret(vault, PASSWORD, "alpha", "BINANCE_SECRET", TRICKY)
    password_file = tmp_path / "pw"
    password_file.write_text(PASSWORD + "\n")
    out = subprocess.run(
        [str(Path(sys.executable).with_name("ansible-vault")), "view", "--vault-password-file",
         str(password_file), str(vault)], capture_output=True, text=True, check=True).stdout
    assert "!unsafe" in out  # Ansible must not template a value holding "{{"
    class Loader(yaml.SafeLoader):
        pass

    loader = Loader
    loader.add_constructor("!unsafe", lambda load, node: load.construct_scalar(node))
    assert yaml.load(out, Loader=loader)["botvps_secrets"]["alpha"]["BINANCE_SECRET"] == TRICKY  # noqa: S506


@pytest.mark.parametrize("bad", ["zq1line\nzq2line", "zqtrailing\n", "zqcr\rzqhere"])
def test_newline_is_refused_naming_bot_and_variable_not_the_value(vault: Path, bad: str) -> None:
    with pytest.raises(SecretsError) as caught:
        set_secret(vault, PASSWORD, "alpha", "BINANCE_SECRET", bad)
    message = str(caught.value)
    assert "alpha" in message and "BINANCE_SECRET" in message and "newline" in message
    for piece in bad.split():
        assert piece not in message
    assert not vault.exists()


def test_wrong_password_fails_without_showing_anything_secret(vault: Path) -> None:
    set_secret(vault, PASSWORD, "alpha", "BINANCE_SECRET", TRICKY)
    with pytest.raises(SecretsError) as caught:
        get_secrets(vault, "wrong password")
    assert TRICKY not in str(caught.value) and PASSWORD not in str(caught.value)
    assert "wrong vault password" in str(caught.value)


def test_broken_yaml_inside_the_vault_is_reported_without_its_text(vault: Path) -> None:
    from ansible.parsing.vault import VaultLib, VaultSecret

    leaked = "SUPERSECRETVALUE"
    bad = f"botvps_secrets: {{alpha: {{K: [{leaked}\n"
    vault.parent.mkdir(parents=True)
    vault.write_bytes(VaultLib([("default", VaultSecret(PASSWORD.encode()))]).encrypt(bad))
    with pytest.raises(SecretsError) as caught:
        get_secrets(vault, PASSWORD)
    assert leaked not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_plaintext_file_is_refused(vault: Path) -> None:
    vault.parent.mkdir(parents=True)
    vault.write_text("botvps_secrets: {alpha: {K: plain}}\n")
    with pytest.raises(SecretsError, match="not an ansible-vault encrypted file"):
        get_secrets(vault, PASSWORD)


@pytest.mark.parametrize(("bot", "name"), [("Alpha", "K"), ("alpha", "1BAD"), ("alpha", "A-B")])
def test_bad_names_are_refused(vault: Path, bot: str, name: str) -> None:
    with pytest.raises(SecretsError):
        set_secret(vault, PASSWORD, bot, name, "v")


def test_cli_set_reads_stdin_and_never_prints_the_value(vault: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    password_file = tmp_path / "pw"
    password_file.write_text(PASSWORD + "\n")
    monkeypatch.setattr(sys, "stdin", io.StringIO(TRICKY + "\n"))
    code = secrets.main(["set", "alpha", "BINANCE_SECRET", "--vault", str(vault),
                         "--vault-password-file", str(password_file)])
    out = capsys.readouterr()
    assert code == 0
    assert TRICKY not in out.out + out.err
    assert get_secrets(vault, PASSWORD, "alpha") == {"BINANCE_SECRET": TRICKY}
    assert secrets.main(["list", "--vault", str(vault), "--vault-password-file", str(password_file)]) == 0
    assert capsys.readouterr().out == "alpha BINANCE_SECRET\n"


def test_cli_refuses_a_multiline_value_from_stdin(vault: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    password_file = tmp_path / "pw"
    password_file.write_text(PASSWORD)
    env = {**os.environ, "PYTHONPATH": str(Path(secrets.__file__).parents[1])}
    result = subprocess.run(
        [sys.executable, "-m", "botvps.secrets", "set", "alpha", "BINANCE_SECRET", "--vault", str(vault),
         "--vault-password-file", str(password_file)],
        input="first-line-xyz\nsecond-line-xyz\n", capture_output=True, text=True, env=env)
    assert result.returncode == 2
    assert "alpha" in result.stderr and "BINANCE_SECRET" in result.stderr
    assert "line-xyz" not in result.stderr + result.stdout
    assert not vault.exists()
