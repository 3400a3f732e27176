"""Read and write the bots' secrets in the ansible-vault file on the controller.

The vault file (AES256, e.g. ``inventory/group_vars/all/vault.yml``) holds::

    botvps_secrets:
      alpha:
        BINANCE_KEY: !unsafe '...'
        BINANCE_SECRET: !unsafe '...'

Values are written with Ansible's ``!unsafe`` tag so that a secret containing
``{{`` or ``{%`` reaches the bot as it is instead of being templated. Other
top-level variables in the file (say ``ansible_become_password``) are kept.

Plaintext never touches the disk: the YAML is built in memory, encrypted with
ansible-vault's own ``VaultLib`` and written atomically (mode 0600) next to the
target. A value is never part of an error message.

Command line (used by the invoke tasks)::

    python -m botvps.secrets set BOT NAME --vault FILE --vault-password-file F [--from-file FILE]
    python -m botvps.secrets list [BOT] --vault FILE --vault-password-file F

``set`` takes the value from ``--from-file`` (its bytes, the final newline removed
unless ``--keep-final-newline``), else asks for it without echo on a terminal, else
reads stdin like a file. At the terminal a first line starting with ``-----BEGIN``
starts a PEM block that is read up to its ``-----END ...-----`` line (a pasted
private key); a line that filled the terminal's line buffer (4095 bytes, the kernel
drops the rest) is refused. Values may span lines (the env file on the server
double-quotes them, as systemd's EnvironmentFile= reads them). ``list`` prints the
variable names only, never their values.
"""

from __future__ import annotations

import argparse
import getpass
import os
import re
import stat
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

SECRETS_VAR = "botvps_secrets"
BOT_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
VAR_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
HEADER = b"$ANSIBLE_VAULT;1.1;AES256"
# Linux's n_tty keeps at most 4095 bytes of a canonical line (one slot stays for the newline) and drops the rest.
TTY_LINE_LIMIT = 4095
PEM_BEGIN = b"-----BEGIN"
PEM_BEGIN_RE = re.compile(rb"-----BEGIN ([^\r\n]*?)-----\s*")


class SecretsError(Exception):
    """A problem reported to the user; the message never contains a secret value."""


class _Unsafe(str):
    """A string dumped with Ansible's !unsafe tag."""


class _Dumper(yaml.SafeDumper):
    pass


def _represent_unsafe(dumper: yaml.SafeDumper, data: _Unsafe) -> yaml.Node:
    return dumper.represent_scalar("!unsafe", str(data), style="'")


_Dumper.add_representer(_Unsafe, _represent_unsafe)


class _Loader(yaml.SafeLoader):
    pass


def _construct_unsafe(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return _Unsafe(loader.construct_scalar(node))
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]


class _Tagged:
    """Another tagged scalar (e.g. an inline ``!vault`` value), kept exactly as it was."""

    def __init__(self, tag: str, value: str) -> None:
        self.tag, self.value = tag, value


def _construct_other(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        raise SecretsError(f"unsupported YAML tag !{suffix} in the vault file")
    return _Tagged("!" + suffix, loader.construct_scalar(node))


def _represent_tagged(dumper: yaml.SafeDumper, data: _Tagged) -> yaml.Node:
    return dumper.represent_scalar(data.tag, data.value, style="|" if "\n" in data.value else None)


_Loader.add_constructor("!unsafe", _construct_unsafe)
_Loader.add_multi_constructor("!", _construct_other)
_Dumper.add_representer(_Tagged, _represent_tagged)


# ---------------------------------------------------------------- validation


def check_names(bot: str, name: str) -> None:
    if not BOT_NAME_RE.match(bot):
        raise SecretsError(f"bot name {bot!r} must match {BOT_NAME_RE.pattern}")
    if not VAR_NAME_RE.match(name):
        raise SecretsError(f"bot {bot}: {name!r} is not an environment variable name")


def check_value(bot: str, name: str, value: object) -> str:
    """Return the value as a string, or refuse it; the error names bot and variable only."""
    if not isinstance(value, str):
        raise SecretsError(f"bot {bot}: secret {name} must be a string")
    if "\x00" in value:
        raise SecretsError(f"bot {bot}: secret {name} contains a NUL byte, which no environment variable can carry")
    if not value:
        raise SecretsError(f"bot {bot}: secret {name} is empty")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise SecretsError(f"bot {bot}: secret {name} is not valid UTF-8") from None
    if is_line_with_newline(value):
        raise SecretsError(f"bot {bot}: secret {name} is one line ending in a line break, which the exchange "
                           "would reject as part of the key; store it without (drop --keep-final-newline)")
    return value


def is_line_with_newline(value: str) -> bool:
    """A single line followed by line breaks (a YAML '|' block, or a file's last newline kept)."""
    body = value.rstrip("\r\n")
    return body != value and "\n" not in body and "\r" not in body


def decode_value(bot: str, name: str, data: bytes) -> str:
    """The bytes of a value as text; anything but UTF-8 is refused (the error names the variable only)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        # The exception text would quote the offending bytes: never show them.
        raise SecretsError(f"bot {bot}: secret {name} is not valid UTF-8; nothing stored "
                           "(convert it first, e.g. iconv -t UTF-8, or base64 it)") from None


# ---------------------------------------------------------------- vault


def _vault(password: str | bytes):  # -> VaultLib, imported lazily (ansible is slow to import)
    from ansible.parsing.vault import VaultLib, VaultSecret

    secret = password.encode() if isinstance(password, str) else password
    if not secret:
        raise SecretsError("the vault password is empty")
    return VaultLib([("default", VaultSecret(secret))])


def read_password_file(path: str | os.PathLike[str]) -> bytes:
    """A vault password file as ansible reads it (an executable one is run)."""
    from ansible.errors import AnsibleError
    from ansible.parsing.dataloader import DataLoader
    from ansible.parsing.vault import get_file_vault_secret

    try:
        secret = get_file_vault_secret(filename=str(path), loader=DataLoader())
        secret.load()
    except AnsibleError as exc:
        raise SecretsError(f"cannot read the vault password file {path}: {exc.message}") from None
    return secret.bytes


def load_vault(vault_file: str | os.PathLike[str], password: str | bytes) -> dict[str, Any]:
    """The decrypted top-level variables of the vault file ({} when it does not exist)."""
    from ansible.errors import AnsibleError

    path = Path(vault_file)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise SecretsError(f"cannot read {path}: {exc.strerror}") from None
    if not data.lstrip().startswith(b"$ANSIBLE_VAULT;"):
        raise SecretsError(f"{path} is not an ansible-vault encrypted file; refusing to use plaintext secrets")
    try:
        plaintext = _vault(password).decrypt(data)
    except AnsibleError:
        raise SecretsError(f"cannot decrypt {path}: wrong vault password or damaged file") from None
    try:
        loaded = yaml.load(plaintext.decode("utf-8"), Loader=_Loader)  # noqa: S506 - SafeLoader subclass
    except (yaml.YAMLError, UnicodeDecodeError):
        # The parser's message quotes the offending text, which may be a secret.
        raise SecretsError(f"{path} decrypts but is not valid YAML (details hidden: they could show a secret)") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise SecretsError(f"{path} must hold a YAML mapping of variables")
    return loaded


def _dump(variables: Mapping[str, Any]) -> str:
    doc = dict(variables)
    table = doc.get(SECRETS_VAR)
    if isinstance(table, dict):
        # botvps_secrets: {bot: {VAR: value}}: every value gets the !unsafe tag
        doc[SECRETS_VAR] = {bot: ({k: _Unsafe(v) if isinstance(v, str) else v for k, v in bot_vars.items()}
                                  if isinstance(bot_vars, dict) else bot_vars)
                            for bot, bot_vars in table.items()}
    return "---\n" + yaml.dump(doc, Dumper=_Dumper, default_flow_style=False, sort_keys=True,
                               allow_unicode=True, width=1 << 30)


def save_vault(vault_file: str | os.PathLike[str], password: str | bytes, variables: Mapping[str, Any]) -> None:
    """Encrypt ``variables`` in memory and replace the file atomically (mode 0600); a symlink's target is replaced."""
    path = Path(vault_file)
    target = Path(os.path.realpath(path))  # a symlinked vault keeps its link: the file it points to is replaced
    ciphertext = _vault(password).encrypt(_dump(variables).encode("utf-8"))
    where = f"{target} (the target of the symlink {path})" if path.is_symlink() else str(path)
    try:
        _write_atomically(target, ciphertext)
    except OSError as exc:
        raise SecretsError(f"cannot write {where}: {exc.strerror or exc}; nothing stored "
                           f"(make {target.parent} writable, or give another --vault)") from None


def _write_atomically(target: Path, data: bytes) -> None:
    """Write a temporary file next to ``target`` (mode 0600), fsync it and rename it over ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# ---------------------------------------------------------------- API


def get_secrets(vault_file: str | os.PathLike[str], password: str | bytes,
                bot: str | None = None) -> dict[str, Any]:
    """All bots' secrets ({bot: {VAR: value}}), or one bot's ({VAR: value}) when bot is given."""
    table = load_vault(vault_file, password).get(SECRETS_VAR) or {}
    if not isinstance(table, dict):
        raise SecretsError(f"{vault_file}: {SECRETS_VAR} must be a mapping of bot names")
    plain = {str(b): ({str(k): str(v) for k, v in vs.items()} if isinstance(vs, dict) else {})
             for b, vs in table.items()}
    if bot is None:
        return plain
    return plain.get(bot, {})


def set_secret(vault_file: str | os.PathLike[str], password: str | bytes, bot: str, name: str,
               value: str) -> bool:
    """Store one secret, keeping every other value; returns False when it was already set so."""
    check_names(bot, name)
    value = check_value(bot, name, value)
    variables = load_vault(vault_file, password)
    table = variables.get(SECRETS_VAR) or {}
    if not isinstance(table, dict):
        raise SecretsError(f"{vault_file}: {SECRETS_VAR} must be a mapping of bot names")
    bot_vars = table.get(bot) or {}
    if not isinstance(bot_vars, dict):
        raise SecretsError(f"{vault_file}: {SECRETS_VAR}.{bot} must be a mapping of variable names")
    if bot_vars.get(name) == value and Path(vault_file).exists():
        return False
    variables[SECRETS_VAR] = {**table, bot: {**bot_vars, name: value}}
    save_vault(vault_file, password, variables)
    return True


def delete_secret(vault_file: str | os.PathLike[str], password: str | bytes, bot: str, name: str) -> bool:
    """Remove one secret; returns False when it was not there."""
    check_names(bot, name)
    variables = load_vault(vault_file, password)
    table = dict(variables.get(SECRETS_VAR) or {})
    bot_vars = dict(table.get(bot) or {})
    if name not in bot_vars:
        return False
    del bot_vars[name]
    table[bot] = bot_vars
    variables[SECRETS_VAR] = table
    save_vault(vault_file, password, variables)
    return True


# ---------------------------------------------------------------- CLI


def _strip_final_newline(data: bytes) -> bytes:
    if data.endswith(b"\r\n"):
        return data[:-2]
    return data[:-1] if data.endswith(b"\n") else data


def _read_value(args: argparse.Namespace) -> str:
    """The value from --from-file, the terminal or stdin, as checked text."""
    bot, name = args.bot, args.name
    if args.from_file:
        try:
            data = Path(args.from_file).read_bytes()
        except OSError as exc:
            raise SecretsError(f"cannot read {args.from_file} (--from-file for {name}): {exc.strerror}") from None
    elif sys.stdin.isatty():
        return decode_value(bot, name, read_tty_value(sys.stdin.fileno(), bot, name))
    else:
        data = sys.stdin.buffer.read()
    return decode_value(bot, name, data if args.keep_final_newline else _strip_final_newline(data))


def read_tty_value(fd: int, bot: str, name: str) -> bytes:
    """Ask for a value at the terminal without echo: one line, or a pasted PEM block up to its END line."""
    import termios

    saved = termios.tcgetattr(fd)
    quiet = termios.tcgetattr(fd)
    quiet[3] = (quiet[3] & ~termios.ECHO) | termios.ICANON
    termios.tcsetattr(fd, termios.TCSAFLUSH, quiet)  # like getpass: typed-ahead input is dropped
    try:
        print(f"Value of {name} for bot {bot} (not echoed; paste a PEM key as it is): ", end="", file=sys.stderr,
              flush=True)
        lines = _tty_lines(fd, bot, name)
        if _rest(fd).strip():  # a trailing blank line of a paste is fine
            raise SecretsError(f"bot {bot}: more input followed the value of {name}; nothing stored (a multi-line "
                               "value must be a PEM block starting with -----BEGIN, or use --from-file FILE)")
    finally:
        termios.tcsetattr(fd, termios.TCSAFLUSH, saved)  # drops what is left, so it never reaches the shell
        print(file=sys.stderr, flush=True)
    return b"\n".join(lines)


def _tty_lines(fd: int, bot: str, name: str) -> list[bytes]:
    first = _tty_line(fd, bot, name)
    if first is None:
        raise SecretsError(f"bot {bot}: no value given for {name} (input ended); nothing stored")
    if not first.startswith(PEM_BEGIN):
        return [first]
    begin = PEM_BEGIN_RE.fullmatch(first)
    end = b"-----END " + begin.group(1) + b"-----" if begin else None
    lines = [first]
    while not _pem_done(lines, end):
        line = _tty_line(fd, bot, name)
        if line is None:
            raise SecretsError(f"bot {bot}: input ended before the -----END line of {name}; nothing stored")
        lines.append(line)
    return lines


def _pem_done(lines: list[bytes], end: bytes | None) -> bool:
    """Whether the last line read closes the PEM block (its END line, or any END line after a bare BEGIN)."""
    last = lines[-1].strip()
    if end is not None:
        return len(lines) > 1 and last == end
    tail = last[len(PEM_BEGIN):] if len(lines) == 1 else last
    return b"-----END" in tail and last.endswith(b"-----")


def _tty_line(fd: int, bot: str, name: str) -> bytes | None:
    """One canonical-mode line without its newline; None at end of input."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 65536)
        if not chunk:
            if not data:
                return None
            break
        data += chunk
    line = data[:-1] if data.endswith(b"\n") else data
    if len(line) >= _line_limit(fd):
        raise SecretsError(f"bot {bot}: a line of {name} reached the terminal's limit of {_line_limit(fd)} bytes "
                           "and may have been cut by the kernel; nothing stored: put the value in a file and use "
                           "--from-file FILE")
    return line


def _line_limit(fd: int) -> int:
    if sys.platform.startswith("linux"):
        return TTY_LINE_LIMIT
    try:
        return os.fpathconf(fd, "PC_MAX_CANON") - 1
    except (OSError, ValueError):
        return TTY_LINE_LIMIT


def _rest(fd: int) -> bytes:
    """What was typed or pasted after the value, complete lines or not, read without waiting."""
    import termios

    attrs = termios.tcgetattr(fd)
    attrs[3] &= ~termios.ICANON  # the kernel keeps its buffer; a partial line becomes readable too
    attrs[6][termios.VMIN], attrs[6][termios.VTIME] = 0, 0
    termios.tcsetattr(fd, termios.TCSANOW, attrs)
    rest = b""
    while chunk := os.read(fd, 65536):
        rest += chunk
    return rest


def warn_loose_password_file(path: str | os.PathLike[str]) -> None:
    """Warn on stderr when group or others can read (or write) the vault password file."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # read_password_file reports it
    if stat.S_ISREG(mode) and mode & 0o077:
        print(f"botvps.secrets: warning: the vault password file {path} is readable by group/others "
              f"(mode {stat.S_IMODE(mode):04o}); fix: chmod go-rwx {path}", file=sys.stderr)


def _password(args: argparse.Namespace) -> bytes:
    path = (args.vault_password_file or os.environ.get("BOTVPS_VAULT_PASSWORD_FILE")
            or os.environ.get("ANSIBLE_VAULT_PASSWORD_FILE"))
    if path:
        warn_loose_password_file(path)
        return read_password_file(path)
    if not sys.stdin.isatty() and args.action == "set" and not getattr(args, "from_file", None):
        raise SecretsError("give --vault-password-file when the value comes from stdin")
    return getpass.getpass("Vault password: ").encode()


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="botvps.secrets", description="Manage the bots' secrets in the vault file.")
    sub = root.add_subparsers(dest="action", required=True)
    for action, helptext in (("set", "store a secret (value asked without echo, or read from stdin)"),
                             ("delete", "remove a secret"), ("list", "list secret names (never values)")):
        cmd = sub.add_parser(action, help=helptext)
        if action == "list":
            cmd.add_argument("bot", nargs="?")
        else:
            cmd.add_argument("bot")
            cmd.add_argument("name")
        if action == "set":
            cmd.add_argument("--from-file", metavar="FILE", help="read the value from FILE (e.g. a PEM private key)")
            cmd.add_argument("--keep-final-newline", action="store_true",
                             help="keep the final newline of --from-file or stdin (removed by default)")
        cmd.add_argument("--vault", required=True, help="the ansible-vault file, e.g. inventory/group_vars/all/vault.yml")
        cmd.add_argument("--vault-password-file", help="as for ansible-playbook (default: $BOTVPS_VAULT_PASSWORD_FILE "
                                                        "or $ANSIBLE_VAULT_PASSWORD_FILE, else asked)")
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        password = _password(args)
        if args.action == "set":
            check_names(args.bot, args.name)
            changed = set_secret(args.vault, password, args.bot, args.name, _read_value(args))
            print(f"{args.name} for bot {args.bot}: {'stored' if changed else 'unchanged'} in {args.vault}",
                  file=sys.stderr)
        elif args.action == "delete":
            changed = delete_secret(args.vault, password, args.bot, args.name)
            print(f"{args.name} for bot {args.bot}: {'removed' if changed else 'was not set'}", file=sys.stderr)
        else:
            table = get_secrets(args.vault, password)
            for bot in sorted(table):
                if args.bot is None or bot == args.bot:
                    for name in sorted(table[bot]):
                        print(f"{bot} {name}")
    except SecretsError as exc:
        print(f"botvps.secrets: {exc}", file=sys.stderr)
        return 2
    except EOFError:  # Ctrl-D at the vault password prompt
        print("\nbotvps.secrets: input ended before the vault password was given; nothing changed", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
