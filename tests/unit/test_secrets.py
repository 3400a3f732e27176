"""botvps.secrets: the vault file of the bots' secrets (real ansible-vault, no mocks)."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

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


def pem(sentinel: str = "SENTINELpem") -> str:
    """An EC private key in PEM form, as Coinbase hands it out (the body is not a real key)."""
    body = "MHcCAQEEI" + sentinel + "AoGCCqGSM49AwEHoUQDQgAE" + "x" * 20
    return f"-----BEGIN EC PRIVATE KEY-----\n{body[:64]}\n{body[64:]}ZQ==\n-----END EC PRIVATE KEY-----\n"


MULTILINE = [pem(), pem().rstrip("\n"), "line one\r\nline two\r\n", "  lead\n\ntrail  \n\t$x \"q\" `c` \\ {{ j }}",
             "\nstarts with a newline", "ünïcødé\n€"]


def view(vault: Path, tmp_path: Path) -> dict[str, Any]:
    """The vault decrypted by the ansible-vault binary, !unsafe values as plain strings."""
    password_file = tmp_path / "view-pw"
    password_file.write_text(PASSWORD + "\n")
    out = subprocess.run(
        [str(Path(sys.executable).with_name("ansible-vault")), "view", "--vault-password-file",
         str(password_file), str(vault)], capture_output=True, check=True).stdout

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!unsafe", lambda load, node: load.construct_scalar(node))
    return yaml.load(out.decode("utf-8"), Loader=Loader)  # noqa: S506


@pytest.mark.parametrize("value", MULTILINE)
def test_multiline_values_are_stored_byte_for_byte(vault: Path, tmp_path: Path, value: str) -> None:
    assert set_secret(vault, PASSWORD, "alpha", "COINBASE_SECRET", value) is True
    assert get_secrets(vault, PASSWORD, "alpha") == {"COINBASE_SECRET": value}
    assert view(vault, tmp_path)["botvps_secrets"]["alpha"]["COINBASE_SECRET"].encode() == value.encode()


@pytest.mark.parametrize("bad", ["zqtrailing\n", "zqcrlf\r\n", "zqcr\r"])
def test_one_line_ending_in_a_newline_is_refused_naming_the_variable_not_the_value(vault: Path, bad: str) -> None:
    with pytest.raises(SecretsError) as caught:
        set_secret(vault, PASSWORD, "alpha", "BINANCE_SECRET", bad)
    message = str(caught.value)
    assert "alpha" in message and "BINANCE_SECRET" in message and "line break" in message
    assert "zq" not in message
    assert not vault.exists()


def test_bad_unicode_nul_and_empty_are_refused(vault: Path) -> None:
    for bad, reason in [("zq\udcffzq", "not valid UTF-8"), ("zqa\x00zqb", "NUL byte"), ("", "empty")]:
        with pytest.raises(SecretsError) as caught:
            set_secret(vault, PASSWORD, "alpha", "BINANCE_SECRET", bad)
        assert reason in str(caught.value) and "BINANCE_SECRET" in str(caught.value)
        assert "zq" not in str(caught.value)
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
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(TRICKY.encode() + b"\n")))
    code = secrets.main(["set", "alpha", "BINANCE_SECRET", "--vault", str(vault),
                         "--vault-password-file", str(password_file)])
    out = capsys.readouterr()
    assert code == 0
    assert TRICKY not in out.out + out.err
    assert get_secrets(vault, PASSWORD, "alpha") == {"BINANCE_SECRET": TRICKY}
    assert secrets.main(["list", "--vault", str(vault), "--vault-password-file", str(password_file)]) == 0
    assert capsys.readouterr().out == "alpha BINANCE_SECRET\n"


# ---------------------------------------------------------------- the command


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "vault-pass"
    path.write_text(PASSWORD + "\n")
    path.chmod(0o600)
    return path


def run_set(vault: Path, password_file: Path, *flags: str, stdin: bytes = b"", name: str = "COINBASE_SECRET",
            prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """python -m botvps.secrets set alpha NAME ... (what the invoke task calls), stdin a pipe."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("VAULT_PASSWORD_FILE")}
    env["PYTHONPATH"] = str(Path(secrets.__file__).parents[1])
    result = subprocess.run(
        [*prefix, sys.executable, "-m", "botvps.secrets", "set", "alpha", name, "--vault", str(vault),
         "--vault-password-file", str(password_file), *flags], input=stdin, capture_output=True, env=env, timeout=60)
    return subprocess.CompletedProcess(result.args, result.returncode, result.stdout.decode(), result.stderr.decode())


def assert_one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("botvps.secrets: "), result.stderr
    for word in words:
        assert word in lines[0]


def test_cli_stores_a_multiline_value_from_stdin_byte_for_byte(vault: Path, password_file: Path) -> None:
    value = pem("SENTINELstdin")
    result = run_set(vault, password_file, stdin=value.encode() + b"\n")
    assert result.returncode == 0, result.stderr
    assert "SENTINEL" not in result.stdout + result.stderr and "COINBASE_SECRET" in result.stderr
    assert get_secrets(vault, PASSWORD, "alpha") == {"COINBASE_SECRET": value}


@pytest.mark.parametrize(("flags", "stored"), [((), pem().rstrip("\n")), (("--keep-final-newline",), pem())])
def test_cli_from_file_reads_the_files_bytes(vault: Path, password_file: Path, tmp_path: Path,
                                             flags: tuple[str, ...], stored: str) -> None:
    key_file = tmp_path / "cdp_api_key.pem"
    key_file.write_bytes(pem().encode())
    result = run_set(vault, password_file, "--from-file", str(key_file), *flags)
    assert result.returncode == 0, result.stderr
    assert "SENTINEL" not in result.stdout + result.stderr
    assert get_secrets(vault, PASSWORD, "alpha") == {"COINBASE_SECRET": stored}


@pytest.mark.parametrize(("data", "reason"), [(b"SENTINELa\xffSENTINELb\n", "is not valid UTF-8"),
                                              (b"SENTINELa\x00SENTINELb\n", "NUL byte"),
                                              (b"\xc3SENTINEL", "is not valid UTF-8")])
def test_cli_refuses_bad_bytes_naming_the_variable(vault: Path, password_file: Path, tmp_path: Path,
                                                   data: bytes, reason: str) -> None:
    key_file = tmp_path / "bad.pem"
    key_file.write_bytes(data)
    for result in (run_set(vault, password_file, "--from-file", str(key_file)), run_set(vault, password_file,
                                                                                         stdin=data)):
        assert_one_line_error(result, "COINBASE_SECRET", reason)
        assert "SENTINEL" not in result.stdout + result.stderr
    assert not vault.exists()


def test_cli_from_a_missing_file_is_a_clear_error(vault: Path, password_file: Path, tmp_path: Path) -> None:
    assert_one_line_error(run_set(vault, password_file, "--from-file", str(tmp_path / "nope.pem")),
                          "nope.pem", "No such file")


def test_symlinked_vault_keeps_its_link_and_the_target_is_written(tmp_path: Path) -> None:
    real = tmp_path / "private" / "vault.yml"
    link = tmp_path / "inventory" / "group_vars" / "all" / "vault.yml"
    link.parent.mkdir(parents=True)
    set_secret(real, PASSWORD, "alpha", "K", "first")
    link.symlink_to(os.path.relpath(real, link.parent))
    assert set_secret(link, PASSWORD, "alpha", "K", "second") is True
    assert link.is_symlink() and link.resolve() == real
    assert get_secrets(real, PASSWORD, "alpha") == {"K": "second"}
    assert stat.S_IMODE(real.stat().st_mode) == 0o600
    assert sorted(p.name for p in real.parent.iterdir()) == ["vault.yml"]
    assert sorted(p.name for p in link.parent.iterdir()) == ["vault.yml"]


def test_unwritable_symlink_target_is_named(tmp_path: Path, password_file: Path) -> None:
    target = tmp_path / "ro" / "vault.yml"
    target.parent.mkdir()
    link = tmp_path / "vault.yml"
    link.symlink_to(target)
    target.parent.chmod(0o555)
    try:
        result = run_set(link, password_file, stdin=b"SENTINELsym\n", prefix=unprivileged())
    finally:
        target.parent.chmod(0o755)
    assert_one_line_error(result, f"cannot write {target} (the target of the symlink {link})", "nothing stored")
    assert "SENTINEL" not in result.stderr and link.is_symlink() and not target.exists()


def test_dangling_symlinked_vault_creates_its_target(tmp_path: Path) -> None:
    real = tmp_path / "private" / "vault.yml"
    real.parent.mkdir()
    link = tmp_path / "vault.yml"
    link.symlink_to(real)
    set_secret(link, PASSWORD, "alpha", "K", "v")
    assert link.is_symlink() and get_secrets(real, PASSWORD, "alpha") == {"K": "v"}


def unprivileged() -> tuple[str, ...]:
    """A command prefix under which file modes apply (root writes anywhere: drop the capabilities that let it)."""
    if os.geteuid() != 0:
        return ()
    if not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv")
    return ("setpriv", "--bounding-set=-dac_override,-dac_read_search", "--")


def test_read_only_directory_is_a_clear_error(tmp_path: Path, password_file: Path) -> None:
    directory = tmp_path / "ro"
    directory.mkdir()
    directory.chmod(0o555)
    try:
        result = run_set(directory / "vault.yml", password_file, stdin=b"SENTINELro\n", prefix=unprivileged())
    finally:
        directory.chmod(0o755)
    assert_one_line_error(result, "cannot write", str(directory / "vault.yml"), "Permission denied")
    assert "SENTINEL" not in result.stderr + result.stdout
    assert list(directory.iterdir()) == []


def test_loose_vault_password_file_is_warned_about(vault: Path, password_file: Path) -> None:
    for mode, warned in [(0o644, True), (0o640, True), (0o604, True), (0o600, False), (0o400, False)]:
        password_file.chmod(mode)
        result = run_set(vault, password_file, stdin=f"SENTINELpw{mode}\n".encode())
        assert result.returncode == 0, result.stderr
        warning = (f"botvps.secrets: warning: the vault password file {password_file} is readable by group/others "
                   f"(mode {mode:04o}); fix: chmod go-rwx {password_file}")
        assert (warning in result.stderr.splitlines()) is warned, (mode, result.stderr)
        assert "SENTINEL" not in result.stderr and PASSWORD not in result.stderr


# ---------------------------------------------------------------- the env file on the host


ROOT = Path(__file__).resolve().parents[2]
ENV_PLAYBOOK = """\
- hosts: localhost
  gather_facts: false
  vars_files: ["{{ role }}/defaults/main.yml", "{{ role }}/vars/main.yml", "{{ vault }}"]
  vars:
    bots:
      - {name: alpha, source: {pip: alpha-bot}, command: [python3], exchange: coinbase, key_audit: false,
         secrets: "{{ names }}", api_key_var: "{{ names[0] }}", api_secret_var: "{{ names[1] }}"}
  tasks:
    - name: The role's checks of the bots and their secrets
      ansible.builtin.copy:
        dest: "{{ problems }}"
        content: "{{ bots_problems | to_json }}"
    - name: Write secrets.env from the role's bots_secret_files, with its module (owned by us, not root)
      botvps.infra.files:
        files: "{{ bots_secret_files | map('combine', {'owner': me, 'group': grp}) | list }}"
      no_log: true
"""


def render_env_file(tmp_path: Path, password_file: Path, values: dict[str, str],
                    by_hand: bool = False) -> tuple[list[str], bytes]:
    """The bots role's problems and the secrets.env it writes for bot alpha (vault from set_secret, or by hand)."""
    import grp
    import json
    import pwd

    vault = tmp_path / "vault.yml"
    if by_hand:
        secrets.save_vault(vault, PASSWORD, {"botvps_secrets": {"alpha": values}})
    for name, value in values.items() if not by_hand else ():
        set_secret(vault, PASSWORD, "alpha", name, value)
    play = tmp_path / "play"
    play.mkdir()
    (play / "play.yml").write_text(ENV_PLAYBOOK)
    (play / "templates").symlink_to(ROOT / "roles/bots/templates")  # where lookup('template', ...) looks
    extra = {"vault": str(vault), "role": str(ROOT / "roles/bots"), "names": list(values),
             "bots_config_dir": str(tmp_path / "etc"), "problems": str(tmp_path / "problems.json"),
             "me": pwd.getpwuid(os.geteuid()).pw_name, "grp": grp.getgrgid(os.getegid()).gr_name,
             "ansible_python_interpreter": sys.executable}
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(ROOT / "collections"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"), "ANSIBLE_REMOTE_TEMP": str(tmp_path / "ansible-tmp")}
    result = subprocess.run(
        [str(Path(sys.executable).with_name("ansible-playbook")), "-i", "localhost,", "-c", "local",
         "--vault-password-file", str(password_file), "-e", json.dumps(extra), "play.yml"],
        cwd=play, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SENTINEL" not in result.stdout + result.stderr
    problems = json.loads((tmp_path / "problems.json").read_text())
    env_file = tmp_path / "etc" / "alpha" / "secrets.env"
    return problems, env_file.read_bytes() if env_file.exists() else b""


def test_env_file_on_the_host_carries_multiline_values(tmp_path: Path, password_file: Path) -> None:
    """vault -> the bots role's checks, secrets.env.j2 and botvps.infra.files -> systemd's EnvironmentFile rules."""
    from botvps.hostcode import keyaudit

    values = {f"V{i}": value for i, value in enumerate(["key-SENTINELk", *MULTILINE, TRICKY, "'single'", "x=y #;"])}
    problems, text = render_env_file(tmp_path, password_file, values)
    assert problems == []
    assert keyaudit.parse_env_file(text.decode("utf-8")) == values


def test_role_refuses_one_line_ending_in_a_newline(tmp_path: Path, password_file: Path) -> None:
    # set_secret refuses it; a vault edited by hand with a YAML '|' block can still hold one.
    problems, text = render_env_file(tmp_path, password_file, {"K": "key-SENTINELk", "S": "SENTINELs\n"},
                                     by_hand=True)
    assert problems == ["bot alpha: secret S is one line ending in a line break (a YAML | block adds one; use |-)"]
