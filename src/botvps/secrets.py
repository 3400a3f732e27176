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

    python -m botvps.secrets set BOT NAME --vault FILE --vault-password-file F
    python -m botvps.secrets list [BOT] --vault FILE --vault-password-file F

``set`` asks for the value without echo on a terminal, or reads it from stdin
(one trailing newline removed) when stdin is not a terminal. ``list`` prints the
variable names only, never their values.
"""

from __future__ import annotations

import argparse
import getpass
import os
import re
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
    if "\n" in value or "\r" in value:
        raise SecretsError(
            f"bot {bot}: secret {name} contains a newline, which a systemd environment file "
            "cannot carry; store it on one line (e.g. base64 or with literal \\n)")
    if "\x00" in value:
        raise SecretsError(f"bot {bot}: secret {name} contains a NUL byte")
    if not value:
        raise SecretsError(f"bot {bot}: secret {name} is empty")
    return value


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
    """Encrypt ``variables`` in memory and replace the file atomically (mode 0600)."""
    path = Path(vault_file)
    ciphertext = _vault(password).encrypt(_dump(variables).encode("utf-8"))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(ciphertext)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
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


def _read_value(bot: str, name: str) -> str:
    if sys.stdin.isatty():
        return getpass.getpass(f"Value of {name} for bot {bot} (not echoed): ")
    data = sys.stdin.read()
    if data.endswith("\r\n"):
        data = data[:-2]
    elif data.endswith("\n"):
        data = data[:-1]
    return data


def _password(args: argparse.Namespace) -> bytes:
    if args.vault_password_file:
        return read_password_file(args.vault_password_file)
    env = os.environ.get("BOTVPS_VAULT_PASSWORD_FILE") or os.environ.get("ANSIBLE_VAULT_PASSWORD_FILE")
    if env:
        return read_password_file(env)
    if not sys.stdin.isatty() and args.action == "set":
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
            changed = set_secret(args.vault, password, args.bot, args.name, _read_value(args.bot, args.name))
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
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
