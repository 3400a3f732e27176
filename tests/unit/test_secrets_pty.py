"""`invoke secrets.set` at a real terminal: a pseudo-terminal drives the command as an operator types or pastes."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "pty vault password"
SENTINEL = "SENTINELptyQ7x"
PEM = ("-----BEGIN EC PRIVATE KEY-----\n"
       f"MHcCAQEEIB{SENTINEL}kXx0mvZbKq9f1k0m3u4W7Vh2y0eGZ6o1c5TgoAoGCCqGSM49\n"
       "AwEHoUQDQgAE8z1Xp1lYq3mQe7nKc2o0Hq8d2v1b0m9YkYQn0cJ3mQv6xw0B1pZt\n"
       "c5W7dQZ9o4aA2bCkq3nR8sV1eYlM0g==\n"
       "-----END EC PRIVATE KEY-----")


class Terminal:
    """A command on the slave side of a pty (its controlling terminal); we are the keyboard and the screen."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: never return into pytest
            try:
                os.chdir(ROOT)
                os.execve(argv[0], argv, env)
            finally:
                os._exit(127)
        self.output = b""

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return True
        try:
            chunk = os.read(self.fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            chunk = b""
        self.output += chunk
        return bool(chunk)

    def expect(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text.encode() not in self.output:
            if time.monotonic() > deadline or not self._read(0.2):
                raise AssertionError(f"{text!r} not shown; the terminal shows {self.output!r}")

    def type(self, data: bytes) -> None:
        os.write(self.fd, data)

    def finish(self, timeout: float = 60) -> tuple[int, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._read(0.2):
            pass
        _, status = os.waitpid(self.pid, 0)
        os.close(self.fd)
        return os.waitstatus_to_exitcode(status), self.output.decode("utf-8", "replace")


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    return tmp_path / "inventory"


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "vault-pass"
    path.write_text(PASSWORD + "\n")
    path.chmod(0o600)
    return path


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("VAULT_PASSWORD_FILE")}
    return {**env, "PYTHONPATH": str(ROOT / "src"), "TERM": "dumb"}


def invoke_set(inventory: Path, password_file: Path | None, name: str = "COINBASE_SECRET") -> Terminal:
    """invoke secrets.set alpha NAME, exactly as the README has the operator type it."""
    argv = [sys.executable, "-m", "invoke", "secrets.set", "alpha", name, "--inventory", str(inventory)]
    return Terminal(argv + (["--vault-password-file", str(password_file)] if password_file else []), environment())


def stored(inventory: Path, tmp_path: Path, name: str = "COINBASE_SECRET") -> bytes:
    """The value in the vault, decrypted by the ansible-vault binary."""
    password_file = tmp_path / "view-pass"
    password_file.write_text(PASSWORD + "\n")
    out = subprocess.run([str(Path(sys.executable).with_name("ansible-vault")), "view", "--vault-password-file",
                          str(password_file), str(inventory / "group_vars/all/vault.yml")],
                         capture_output=True, check=True).stdout

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!unsafe", lambda load, node: load.construct_scalar(node))
    return yaml.load(out.decode("utf-8"), Loader=Loader)["botvps_secrets"]["alpha"][name].encode()  # noqa: S506


def refused(code: int, screen: str, *words: str) -> None:
    assert code == 2, screen
    assert "Traceback" not in screen
    errors = [line for line in screen.splitlines() if line.startswith("botvps.secrets:")]
    assert len(errors) == 1, screen
    for word in words:
        assert word in errors[0], screen


def test_pasted_pem_key_is_stored_byte_for_byte(inventory: Path, password_file: Path, tmp_path: Path) -> None:
    term = invoke_set(inventory, password_file)
    term.expect("not echoed")
    term.type(PEM.replace("\n", "\r").encode() + b"\r")  # a terminal sends CR for each line break of a paste
    code, screen = term.finish()
    assert code == 0, screen
    assert "COINBASE_SECRET for bot alpha: stored" in screen
    assert SENTINEL not in screen and "AwEHoUQDQgAE" not in screen
    assert stored(inventory, tmp_path) == PEM.encode()


@pytest.mark.parametrize("length", [4095, 6000])
def test_line_cut_by_the_terminal_is_refused(inventory: Path, password_file: Path, length: int) -> None:
    term = invoke_set(inventory, password_file)
    term.expect("not echoed")
    term.type((SENTINEL + "a" * (length - len(SENTINEL))).encode() + b"\r")
    code, screen = term.finish()
    refused(code, screen, "COINBASE_SECRET", "4095", "--from-file")
    assert SENTINEL not in screen
    assert not (inventory / "group_vars/all/vault.yml").exists()


def test_line_just_under_the_limit_is_stored_one_at_it_refused(inventory: Path, password_file: Path,
                                                               tmp_path: Path) -> None:
    value = (SENTINEL + "b" * 5000)[:4094]
    for line, code_wanted in [(value, 0), (value + "c", 2)]:
        term = invoke_set(inventory, password_file)
        term.expect("not echoed")
        term.type(line.encode() + b"\r")
        code, screen = term.finish()
        assert code == code_wanted, screen
        assert SENTINEL not in screen
    assert "4095" in screen and "--from-file" in screen
    assert stored(inventory, tmp_path) == value.encode()


def test_ctrl_d_at_the_value_prompt(inventory: Path, password_file: Path) -> None:
    term = invoke_set(inventory, password_file)
    term.expect("not echoed")
    term.type(b"\x04")
    code, screen = term.finish()
    refused(code, screen, "no value given for COINBASE_SECRET", "nothing stored")
    assert not (inventory / "group_vars/all/vault.yml").exists()


def test_ctrl_d_inside_a_pem_block(inventory: Path, password_file: Path) -> None:
    term = invoke_set(inventory, password_file)
    term.expect("not echoed")
    term.type("\r".join(PEM.splitlines()[:2]).encode() + b"\r\x04")
    code, screen = term.finish()
    refused(code, screen, "-----END line of COINBASE_SECRET", "nothing stored")
    assert SENTINEL not in screen
    assert not (inventory / "group_vars/all/vault.yml").exists()


def test_ctrl_d_at_the_vault_password_prompt(inventory: Path) -> None:
    term = invoke_set(inventory, None)
    term.expect("Vault password:")
    term.type(b"\x04")
    code, screen = term.finish()
    refused(code, screen, "vault password")


def test_pem_paste_ending_in_a_blank_line_is_stored(inventory: Path, password_file: Path, tmp_path: Path) -> None:
    term = invoke_set(inventory, password_file)
    term.expect("not echoed")
    term.type(PEM.replace("\n", "\r").encode() + b"\r\r")
    code, screen = term.finish()
    assert code == 0, screen
    assert stored(inventory, tmp_path) == PEM.encode()


@pytest.mark.parametrize("rest", ["\r", ""])  # the second line complete, or still waiting for its Enter
def test_more_lines_pasted_than_one_value_are_refused(inventory: Path, password_file: Path, rest: str) -> None:
    term = invoke_set(inventory, password_file)
    term.expect("not echoed")
    term.type(f"{SENTINEL}-key\r{SENTINEL}-secret{rest}".encode())
    code, screen = term.finish()
    refused(code, screen, "more input followed the value of COINBASE_SECRET", "--from-file")
    assert SENTINEL not in screen
    assert not (inventory / "group_vars/all/vault.yml").exists()


def test_invalid_utf8_at_the_terminal_is_refused(inventory: Path, password_file: Path) -> None:
    term = invoke_set(inventory, password_file)
    term.expect("not echoed")
    term.type(b"\xff\xfe" + SENTINEL.encode() + b"\r")
    code, screen = term.finish()
    refused(code, screen, "COINBASE_SECRET is not valid UTF-8")
    assert SENTINEL not in screen
