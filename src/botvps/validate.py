"""Validate an inventory before anything connects to a host: one error line per problem.

Every line names the HOST, the FIELD, what is wrong and how to fix it::

    web1: ssh_port: 70000 is out of range -> choose a port between 1 and 65535

The schema comes from the roles themselves (``roles/*/meta/argument_specs.yml``, entry
point ``main``, all roles merged; defaults from ``roles/*/defaults/main.yml``), plus the
``bots`` structure below.  Semantic checks (public static IP, CIDRs, SSH keys, bots and
their vaulted secrets) are small separate functions.  Values are read with Ansible's own
inventory code, so group_vars, host_vars and vault-encrypted files resolve exactly as
ansible-playbook sees them.  Templated strings (``{{ ... }}``) are never rendered: they
are assumed valid.

No secret value is ever printed: messages name the bot and the variable, never the value,
and every message is scrubbed of every secret value before it is returned.

CLI::

    python -m botvps.validate INVENTORY_DIR [--vault-password-file F] [--no-reach]

Exit codes: 0 valid (and every host reachable), 1 invalid input (problems printed),
2 a host cannot be reached or a vault cannot be decrypted.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import difflib
import functools
import importlib.util
import io
import ipaddress
import os
import re
import socket
import sys
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from botvps.paths import PROJECT_ROOT
from botvps.report.redact import MIN_SECRET_LEN, Redactor
from botvps.secrets import is_line_with_newline

ROLES_DIR = PROJECT_ROOT / "roles"
NET_FILTER = PROJECT_ROOT / "collections" / "ansible_collections" / "botvps" / "infra" / "plugins" / "filter" / "net.py"
VAULT_ENV = "BOTVPS_VAULT_PASSWORD_FILE"
HOW_TO_PASS_VAULT = f"pass the vault password file with --vault-password-file FILE or {VAULT_ENV}=FILE"

EXIT_OK, EXIT_INVALID, EXIT_UNREACHABLE = 0, 1, 2

EXCHANGES = ("binance", "bybit", "okx", "kraken", "coinbase", "none")
BOT_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
REBOOT_TIME_RE = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")

# The ``bots`` variable, one entry per bot, when roles/bots/meta/argument_specs.yml does not
# document it (the role's own spec wins when it does; a unit test keeps this fallback and the role's
# bots_entry_defaults equal to that spec).
BOT_OPTIONS: dict[str, dict[str, Any]] = {
    "name": {"type": "str", "required": True},
    "source": {"type": "dict", "required": True, "options": {
        "path": {"type": "path"}, "git": {"type": "str"}, "version": {"type": "str"}, "pip": {"type": "str"}}},
    "command": {"type": "list", "elements": "str", "required": True},
    "exchange": {"type": "str", "choices": list(EXCHANGES), "default": "none"},
    "secrets": {"type": "list", "elements": "str", "default": []},
    "api_key_var": {"type": "str"},
    "api_secret_var": {"type": "str"},
    "api_passphrase_var": {"type": "str"},
    "environment": {"type": "dict", "default": {}},
    "egress_ports": {"type": "list", "elements": "int", "default": [443]},
    "ui_port": {"type": "int"},
    "kill_signal": {"type": "str", "choices": ["SIGTERM", "SIGINT"], "default": "SIGTERM"},
    "timeout_stop_sec": {"type": "int", "default": 120},
    "stop_command": {"type": "list", "elements": "str"},
    "key_audit": {"type": "bool", "default": True},
    "key_audit_fail_open": {"type": "bool", "default": False},
    "sandbox_profile": {"type": "str", "choices": ["default", "jit"], "default": "default"},
    "trades": {"type": "list", "elements": "str", "choices": ["spot", "margin", "futures"], "default": ["spot"]},
    "exchange_base_url": {"type": "str"},
    "state_sqlite": {"type": "list", "elements": "str", "default": []},
    "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
}

# Variables botvps reads that belong to no role.
EXTRA_OPTIONS: dict[str, dict[str, Any]] = {
    "bots": {"type": "list", "elements": "dict", "default": [], "options": BOT_OPTIONS},
    "botvps_secrets": {"type": "dict", "default": {}},
    "botvps_lab": {"type": "bool", "default": False},
    "botvps_own_vars": {"type": "list", "elements": "str", "default": []},
}
# Ansible's magic variables that show up in a host's variables (besides every ansible_* name).
MAGIC_VARS = frozenset({"group_names", "groups", "hostvars", "omit", "inventory_dir", "inventory_file",
                        "inventory_hostname", "inventory_hostname_short", "playbook_dir"})
EXTRA_PREFIXES = ("bots_",)

# Inventory variables whose values are credentials, besides botvps_secrets and vaulted values.
SECRET_VAR_RE = re.compile(r"^vault_|pass$|password$|passphrase$|secret$|token$", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Problem:
    host: str
    field: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.host}: {self.field}: {self.message} -> {self.fix}"


class InventoryError(Exception):
    """The inventory could not be loaded; ``exit_code`` is 2 for a vault that will not decrypt, else 1."""

    def __init__(self, problems: list[Problem], exit_code: int = EXIT_INVALID) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems
        self.exit_code = exit_code


class SecretStr(str):
    """A string that came out of a vault: never shown."""

    def __repr__(self) -> str:
        return "'<secret>'"


def format_problems(problems: Iterable[Problem]) -> str:
    """One line per problem: ``HOST: FIELD: what is wrong -> how to fix``."""
    return "\n".join(str(p) for p in problems)


# --------------------------------------------------------------------------
# Loading the inventory with Ansible's own code
# --------------------------------------------------------------------------

def _vault_secrets(loader: Any, vault_password_file: str | None) -> list:
    from ansible import constants as C
    from ansible.cli import CLI

    if vault_password_file and not Path(vault_password_file).expanduser().exists():
        raise InventoryError([Problem("all", "vault password file", f"{vault_password_file} does not exist",
                                      HOW_TO_PASS_VAULT)], EXIT_UNREACHABLE)
    files = [str(Path(vault_password_file).expanduser())] if vault_password_file else []
    try:
        return CLI.setup_vault_secrets(loader, vault_ids=list(C.DEFAULT_VAULT_IDENTITY_LIST or []),
                                       vault_password_files=files, ask_vault_pass=False, auto_prompt=False,
                                       initialize_context=False)
    except Exception as err:  # noqa: BLE001 - Ansible raises many kinds here
        raise InventoryError([Problem("all", "vault password file", f"cannot read it ({_first_line(err)})",
                                      HOW_TO_PASS_VAULT)], EXIT_UNREACHABLE) from None


def _first_line(err: BaseException) -> str:
    text = str(getattr(err, "message", "") or err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _encrypted_files(inventory_dir: Path) -> list[Path]:
    from ansible.parsing.vault import is_encrypted_file

    found = []
    for path in sorted(inventory_dir.rglob("*")):
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(inventory_dir).parts):
            with path.open("rb") as handle:
                if is_encrypted_file(handle):
                    found.append(path)
    return found


VARS_SUFFIXES = ("", ".yml", ".yaml", ".json")  # the files Ansible's host_group_vars plugin reads


def _vars_entry_name(entry: Path) -> str:
    """The host or group a host_vars/ or group_vars/ entry is for: a directory's name, a file's stem."""
    return entry.stem if entry.is_file() and entry.suffix in VARS_SUFFIXES else entry.name


def _hosts_for_file(rel: Path, inventory: Any) -> str:
    """Which hosts a vars file applies to (group_vars/G/... or host_vars/H/...); inventory is an InventoryManager."""
    parts = rel.parts
    if len(parts) >= 2 and parts[0] in ("group_vars", "host_vars"):
        name = parts[1]
        if len(parts) == 2 and Path(name).suffix in VARS_SUFFIXES[1:]:
            name = Path(name).stem
        if parts[0] == "host_vars":
            return name
        if inventory is not None and name in inventory.groups:
            names = sorted(h.name for h in inventory.groups[name].get_hosts())
            if names:
                return ",".join(names)
        return name
    return "all"


def _check_vault_files(inventory_dir: Path, secrets: list, inventory: Any) -> list[Problem]:
    from ansible.errors import AnsibleError
    from ansible.parsing.vault import VaultLib

    problems = []
    vault = VaultLib(secrets)
    for path in _encrypted_files(inventory_dir):
        rel = path.relative_to(inventory_dir)
        try:
            vault.decrypt(path.read_bytes())
        except AnsibleError:
            if secrets:
                message = f"vault file {path} cannot be decrypted with the given password (wrong password?)"
            else:
                message = f"vault file {path} is encrypted and no vault password was given"
            problems.append(Problem(_hosts_for_file(rel, inventory), str(rel), message, HOW_TO_PASS_VAULT))
    return problems


def _check_vars_files(inventory_dir: Path, loader: Any, inventory: Any) -> list[Problem]:
    """group_vars/host_vars files that are not YAML mappings (Ansible's error would not name the file)."""
    from ansible.errors import AnsibleError

    problems = []
    for kind in ("group_vars", "host_vars"):
        root = inventory_dir / kind
        for path in sorted(root.rglob("*")) if root.is_dir() else []:
            rel = path.relative_to(inventory_dir)
            if not path.is_file() or any(part.startswith(".") for part in rel.parts) or path.suffix not in \
                    VARS_SUFFIXES:
                continue
            try:
                data = loader.load_from_file(str(path))
            except AnsibleError as err:
                origin = getattr(err, "obj", None)
                where = f" (line {origin.line_num})" if getattr(origin, "line_num", None) else ""
                problems.append(Problem(_hosts_for_file(rel, inventory), str(rel),
                                        f"is not valid YAML{where}: {_first_line(err)}", "fix the YAML in that file"))
                continue
            if data is not None and not isinstance(data, Mapping):
                problems.append(Problem(_hosts_for_file(rel, inventory), str(rel), "is not a mapping of variables",
                                        "write it as variable: value lines"))
    return problems


def _check_stray_vars_files(inventory_dir: Path, inventory: Any) -> list[Problem]:
    """host_vars/ and group_vars/ entries named after no host or group: Ansible ignores them silently, so what
    they hold (a renamed host's bots, say) would never be deployed, and the run would say nothing."""
    problems = []
    for kind, names in (("host_vars", {h.name for h in inventory.get_hosts()}), ("group_vars", set(inventory.groups))):
        root = inventory_dir / kind
        for path in sorted(root.iterdir()) if root.is_dir() else []:
            if path.name.startswith(".") or (path.is_file() and path.suffix not in VARS_SUFFIXES):
                continue
            name = _vars_entry_name(path)
            if name in names:
                continue
            what = "host" if kind == "host_vars" else "group"
            guess = _suggest(name, names)
            rel = path.relative_to(inventory_dir)
            problems.append(Problem("all", str(rel), f"is named after no {what} of the inventory, so Ansible would "
                                    f"ignore it ({what}s: {', '.join(sorted(names)) or 'none'})",
                                    f"rename it to {kind}/{guess}{path.suffix if path.is_file() else ''}"
                                    if guess else f"rename it after one of those {what}s, or delete it"))
    return problems


class _Plain:
    """Turns Ansible's tagged values into plain Python; vaulted strings become SecretStr."""

    def __init__(self, secrets: list, encrypted_files: set[str]) -> None:
        from ansible.parsing.vault import VaultLib

        self.vault = VaultLib(secrets)
        self.encrypted_files = encrypted_files
        self.problems: list[tuple[str, str]] = []  # (field, where)

    def convert(self, value: Any, field: str) -> Any:
        from ansible._internal._datatag._tags import Origin, VaultedValue
        from ansible.errors import AnsibleError
        from ansible.parsing.vault import EncryptedString, VaultHelper

        if isinstance(value, EncryptedString):
            origin = Origin.get_tag(value)
            try:
                return SecretStr(self.vault.decrypt(VaultHelper.get_ciphertext(value, with_tags=False)).decode())
            except AnsibleError:
                self.problems.append((field, str(origin) if origin else "an inline !vault value"))
                return SecretStr("")
        if isinstance(value, Mapping):
            return {str(k): self.convert(v, f"{field}.{k}") for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.convert(v, f"{field}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, bool) or value is None:
            return value
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float):
            return float(value)
        if isinstance(value, str):
            origin = Origin.get_tag(value)
            if VaultedValue.is_tagged_on(value) or (origin and origin.path in self.encrypted_files):
                return SecretStr(str.__str__(value))
            return str.__str__(value)
        return value


def _unparsed_inventory_files(inventory_dir: Path, manager: Any, loader: Any) -> list[Problem]:
    """Inventory files Ansible could not parse (it only warns; here it is an error)."""
    from ansible.inventory.manager import IGNORED

    processed = {str(Path(p)) for p in manager._inventory.processed_sources if p}  # noqa: SLF001
    problems = []
    for path in sorted(inventory_dir.iterdir()):
        if path.is_dir() or IGNORED.search(path.name.encode()) or str(path) in processed:
            continue
        try:
            loader.load_from_file(str(path))
            reason = "it is not an Ansible inventory"
        except Exception as err:  # noqa: BLE001
            line = getattr(getattr(err, "obj", None), "line_num", None)
            reason = (f"line {line}: " if line else "") + _first_line(err)
        problems.append(Problem("all", path.name, f"cannot be parsed as an inventory: {reason}",
                                "fix the YAML (ansible-inventory -i DIR --list shows the details)"))
    return problems


def _forget_cached_vars_files() -> None:
    """host_group_vars remembers which vars files it found, for the life of the process: forget them."""
    for name in ("ansible.plugins.vars.host_group_vars",
                 "ansible_collections.ansible.builtin.plugins.vars.host_group_vars"):
        module = sys.modules.get(name)
        if module is not None and isinstance(getattr(module, "FOUND", None), dict):
            module.FOUND.clear()


def load_inventory(inventory_dir: str | os.PathLike, vault_password_file: str | None = None) -> dict[str, dict]:
    """Every host's inventory variables, as ansible-playbook resolves them (no role defaults, nothing templated).

    Raises InventoryError (exit_code 2 when a vault cannot be decrypted, 1 for a broken inventory).
    """
    from ansible.errors import AnsibleError
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.vars.manager import VariableManager

    inventory_dir = Path(inventory_dir).resolve()
    if not inventory_dir.is_dir():
        raise InventoryError([Problem("all", "inventory", f"{inventory_dir} is not a directory",
                                      "give the inventory directory (the one holding hosts.yml)")])
    _forget_cached_vars_files()
    loader = DataLoader()
    secrets = _vault_secrets(loader, vault_password_file)
    loader.set_vault_secrets(secrets)
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # Ansible's warnings: our own messages say it better
            manager = InventoryManager(loader=loader, sources=[str(inventory_dir)])
    except AnsibleError:
        manager = None
    vault_problems = _check_vault_files(inventory_dir, secrets, manager)
    if vault_problems:
        raise InventoryError(vault_problems, EXIT_UNREACHABLE)
    if manager is None:
        raise InventoryError([Problem("all", "inventory", f"{inventory_dir} cannot be parsed",
                                      "run ansible-inventory -i DIR --list to see why")])
    problems = _unparsed_inventory_files(inventory_dir, manager, loader)
    problems += _check_vars_files(inventory_dir, loader, manager)
    problems += _check_stray_vars_files(inventory_dir, manager)
    hosts_found = manager.get_hosts()
    if not hosts_found and not problems:
        problems.append(Problem("all", "inventory", f"no hosts in {inventory_dir}",
                                "list your servers in hosts.yml (all: hosts: NAME: ansible_host: ADDRESS)"))
    if problems:
        raise InventoryError(problems)

    encrypted = {str(p) for p in _encrypted_files(inventory_dir)}
    variables = VariableManager(loader=loader, inventory=manager)
    plain = _Plain(secrets, encrypted)
    hosts: dict[str, dict] = {}
    undecryptable = False
    for host in hosts_found:
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                raw = variables.get_vars(host=host, include_hostvars=False)
        except AnsibleError as err:
            origin = getattr(err, "obj", None)
            where = f" in {origin}" if origin else ""
            problems.append(Problem(host.name, "vars", f"cannot be loaded{where}: {_first_line(err)}",
                                    "fix that group_vars/host_vars file (ansible-inventory -i DIR --host HOST)"))
            continue
        raw = {k: v for k, v in raw.items() if k not in ("groups", "omit", "hostvars")}
        hosts[host.name] = {k: plain.convert(v, k) for k, v in raw.items()}
        for field, where in plain.problems:
            undecryptable = True
            problems.append(Problem(host.name, field, f"the inline vault value in {where} cannot be decrypted "
                                    + ("with the given password" if secrets else "(no vault password was given)"),
                                    HOW_TO_PASS_VAULT))
        plain.problems.clear()
    if problems:
        raise InventoryError(problems, EXIT_UNREACHABLE if undecryptable else EXIT_INVALID)
    return hosts


# --------------------------------------------------------------------------
# The schema, from the roles
# --------------------------------------------------------------------------

@dataclasses.dataclass
class Schema:
    options: dict[str, dict]  # every option of every role (entry point main), merged
    defaults: dict[str, Any]  # every role's defaults/main.yml, merged
    internal: dict[str, str]  # variable set in roles/ROLE/vars/main.yml -> ROLE
    owner: dict[str, str]  # option -> role that documents it
    prefixes: tuple[str, ...]
    errors: list[Problem]  # role files that cannot be read (a botvps bug; ansible-playbook would fail too)

    @property
    def bot_options(self) -> dict[str, dict]:
        return self.options.get("bots", {}).get("options") or BOT_OPTIONS


class _RoleLoader(yaml.SafeLoader):
    """SafeLoader that reads Ansible's own tags (!unsafe, !vault) as plain values."""


_RoleLoader.add_multi_constructor("!", lambda loader, suffix, node: (
    loader.construct_scalar(node) if isinstance(node, yaml.ScalarNode) else
    loader.construct_sequence(node) if isinstance(node, yaml.SequenceNode) else loader.construct_mapping(node)))


def _load_yaml(path: Path, errors: list[Problem]) -> dict:
    try:
        data = yaml.load(path.read_text(), Loader=_RoleLoader) or {}  # noqa: S506 - a SafeLoader
    except (OSError, yaml.YAMLError) as err:
        where = getattr(err, "problem_mark", None)
        at = f" (line {where.line + 1})" if where else ""
        errors.append(Problem("all", str(path.relative_to(PROJECT_ROOT) if path.is_relative_to(PROJECT_ROOT)
                                             else path), f"cannot be parsed{at}: {getattr(err, 'problem', err)}",
                              "fix that role file (a bug in botvps, not in the inventory: ansible-playbook "
                              "would fail on it too)"))
        return {}
    return data if isinstance(data, dict) else {}


def load_schema(roles_dir: str | os.PathLike = ROLES_DIR) -> Schema:
    roles_dir = Path(roles_dir)
    options: dict[str, dict] = {}
    owner: dict[str, str] = {}
    defaults: dict[str, Any] = {}
    internal: dict[str, str] = {}
    errors: list[Problem] = []
    prefixes = set(EXTRA_PREFIXES)
    for role in sorted(p for p in roles_dir.iterdir() if p.is_dir()):
        prefixes.add(role.name + "_")
        spec_file = role / "meta" / "argument_specs.yml"
        if spec_file.exists():
            spec = (_load_yaml(spec_file, errors).get("argument_specs") or {}).get("main") or {}
            for name, option in (spec.get("options") or {}).items():
                if name in options:  # documented by two roles: required if either says so
                    options[name] = {**option, **options[name],
                                     "required": bool(option.get("required") or options[name].get("required"))}
                else:
                    options[name] = dict(option)
                    owner[name] = role.name
        for sub, target in (("defaults", defaults), ("vars", None)):
            path = role / sub / "main.yml"
            if path.exists():
                data = _load_yaml(path, errors)
                if target is None:
                    internal.update({name: role.name for name in data})
                else:
                    target.update(data)
    for name, option in EXTRA_OPTIONS.items():
        options.setdefault(name, option)
        owner.setdefault(name, "botvps")
        defaults.setdefault(name, option.get("default"))
    return Schema(options, defaults, internal, owner, tuple(sorted(prefixes)), errors)


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------

@dataclasses.dataclass
class Context:
    schema: Schema
    secrets: set[str]
    net: Any  # the collection's net.py filter module


def is_templated(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


@functools.lru_cache(maxsize=1)
def _net_module() -> Any:
    spec = importlib.util.spec_from_file_location("_botvps_infra_filter_net", NET_FILTER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _show(value: Any, ctx: Context) -> str:
    """What a message says of a value: its kind, never its content (any field may hold a pasted secret)."""
    if isinstance(value, SecretStr):
        return "(a vaulted value)"
    if isinstance(value, str):
        return f"a {len(value)}-character string" if value else "an empty string"
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, (dict, list)):
        return f"a {'dict' if isinstance(value, dict) else 'list'}"
    return f"a {type(value).__name__}"


def _suggest(word: str, candidates: Iterable[str]) -> str | None:
    matches = difflib.get_close_matches(word, sorted(set(candidates)), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _as_int(value: Any) -> int | None:
    from ansible.module_utils.common.validation import check_type_int

    if isinstance(value, bool) or value is None or is_templated(value):
        return None
    try:
        return check_type_int(value)
    except TypeError:
        return None


def _as_bool(value: Any, default: bool = False) -> bool:
    from ansible.module_utils.common.validation import check_type_bool

    if value is None or is_templated(value):
        return default
    try:
        return check_type_bool(value)
    except TypeError:
        return default


def _collect_secrets(hosts: Mapping[str, Mapping]) -> set[str]:
    """Every secret value: botvps_secrets, vaulted values, password-like variables."""
    found: set[str] = set()

    def walk(value: Any, secret: bool) -> None:
        if isinstance(value, Mapping):
            for item in value.values():
                walk(item, secret)
        elif isinstance(value, list):
            for item in value:
                walk(item, secret)
        elif isinstance(value, str) and (secret or isinstance(value, SecretStr)) and not is_templated(value):
            for part in [value, *value.splitlines()]:
                if len(part.strip()) >= MIN_SECRET_LEN:
                    found.add(part.strip())

    for hostvars in hosts.values():
        for key, value in hostvars.items():
            walk(value, key == "botvps_secrets" or bool(SECRET_VAR_RE.search(key)))
    return found


def _redact(problem: Problem, redactor: Redactor) -> Problem:
    return Problem(*(redactor.known(getattr(problem, name)) for name in ("host", "field", "message", "fix")))


# --------------------------------------------------------------------------
# Schema checks: unknown keys and types, from argument_specs
# --------------------------------------------------------------------------

TYPE_WORDS = {"int": "a whole number", "str": "a string", "bool": "true or false", "list": "a list",
              "dict": "a mapping (key: value)", "path": "a path (a string)", "float": "a number"}


def _example(field: str, spec: Mapping) -> str:
    if "default" in spec and spec["default"] not in (None, "", [], {}):
        shown = yaml.safe_dump(spec["default"], default_flow_style=True).strip().removesuffix("...").strip()
        return f"{field.rsplit('.', 1)[-1]}: {shown}"
    kind = spec.get("type", "str")
    example = {"int": "22", "bool": "true", "list": "[...]", "dict": "{...}"}.get(kind, '"..."')
    return f"{field.rsplit('.', 1)[-1]}: {example}"


def _is_port_field(field: str) -> bool:
    leaf = re.sub(r"\[\d+\]$", "", field.rsplit(".", 1)[-1])
    return leaf == "port" or leaf.endswith("_port") or leaf.endswith("ports")


def check_value(host: str, field: str, value: Any, spec: Mapping, ctx: Context) -> list[Problem]:
    """Type, elements, choices and nested options of one value, with Ansible's conversions."""
    from ansible.module_utils.common.validation import check_type_bool, check_type_float, check_type_int

    if is_templated(value):
        return []
    kind = spec.get("type", "str")
    word = TYPE_WORDS.get(kind, kind)
    if value is None:
        if not spec.get("required") and spec.get("default") is None:
            return []  # an optional setting left unset
        return [Problem(host, field, f"is empty (null) but must be {word}",
                        f"give a value ({_example(field, spec)}) or remove the line to use the default")]
    wrong = Problem(host, field, f"must be {word}, not {_show(value, ctx)}", f"write it as {_example(field, spec)}")
    converted: Any = value
    if kind == "int":
        if isinstance(value, bool) or isinstance(value, (list, dict)):
            return [wrong]
        try:
            converted = check_type_int(value)
        except TypeError:
            return [wrong]
        if _is_port_field(field) and not 1 <= converted <= 65535:
            return [Problem(host, field, f"{converted} is out of range for a port",
                            "choose a port between 1 and 65535")]
    elif kind == "float":
        try:
            converted = check_type_float(value)
        except TypeError:
            return [wrong]
    elif kind == "bool":
        try:
            converted = check_type_bool(value)
        except TypeError:
            return [wrong]
    elif kind in ("str", "path"):
        if isinstance(value, (list, dict)):  # Ansible would stringify it; the role would not work
            return [wrong]
        converted = str(value)
    elif kind == "list":
        if not isinstance(value, list):  # Ansible splits "a,b" into a list, the roles use the raw value
            return [Problem(host, field, f"must be a YAML list, not {_show(value, ctx)}",
                            f"write it as a list: {field.rsplit('.', 1)[-1]}: [item, ...]")]
        problems: list[Problem] = []
        element = {"type": spec.get("elements", "raw"), **({"options": spec["options"]} if "options" in spec else {}),
                   **({"choices": spec["choices"]} if "choices" in spec else {})}
        for index, item in enumerate(value):
            problems += check_value(host, f"{field}[{index}]", item, element, ctx)
        return problems
    elif kind == "dict":
        if not isinstance(value, dict):
            return [wrong]
        if "options" in spec:
            return check_options(host, field, value, spec["options"], ctx)
        return []
    choices = spec.get("choices")
    if choices and converted not in choices and str(converted) not in map(str, choices):
        guess = _suggest(str(converted), map(str, choices))
        listed = ", ".join(map(str, choices))
        return [Problem(host, field, f"{_show(value, ctx)} is not one of {listed}",
                        f"did you mean {guess!r}? (use one of {listed})" if guess else f"use one of {listed}")]
    return []


def check_options(host: str, field: str, value: Mapping, options: Mapping[str, Mapping], ctx: Context) -> list[Problem]:
    """A mapping with documented keys: unknown keys (with a suggestion), required keys, each value."""
    problems = []
    for key, item in value.items():
        if key not in options:
            guess = _suggest(str(key), options)
            problems.append(Problem(host, f"{field}.{key}", "unknown key",
                                    f"did you mean {guess!r}?" if guess else
                                    f"remove it; the known keys are {', '.join(options)}"))
        else:
            problems += check_value(host, f"{field}.{key}", item, options[key], ctx)
    for key, spec in options.items():
        if spec.get("required") and key not in value:
            problems.append(Problem(host, f"{field}.{key}", "is missing", f"add {_example(key, spec)}"))
    return problems


def check_unknown_keys(host: str, hostvars: Mapping, ctx: Context) -> list[Problem]:
    """Variables no role, Ansible nor the operator (botvps_own_vars) knows: typos."""
    schema = ctx.schema
    documented = set(schema.options) | set(schema.defaults)
    declared = hostvars.get("botvps_own_vars")
    own = {n for n in declared if isinstance(n, str)} if isinstance(declared, list) else set()
    problems = []
    for key in hostvars:
        if key in documented:
            continue
        if key in schema.internal:
            role = schema.internal[key]
            problems.append(Problem(host, key, f"is set inside the {role} role (roles/{role}/vars/main.yml), "
                                    "the inventory cannot change it", "remove it from the inventory"))
            continue
        prefix = next((p for p in schema.prefixes if key.startswith(p)), None)
        if prefix is None:
            if key.startswith("ansible_") or key in MAGIC_VARS or key in own:
                continue
            guess = _suggest(key, documented | own)
            problems.append(Problem(host, key, "unknown variable (no role option, Ansible variable or declared "
                                    "own variable has this name)", f"did you mean {guess!r}?" if guess else
                                    "remove it, or list it in botvps_own_vars if it is yours"))
            continue
        role = prefix[:-1]
        guess = _suggest(key, [o for o in documented if o.startswith(prefix)]) or _suggest(key, documented)
        problems.append(Problem(host, key, f"unknown option (no {role} option has this name)",
                                f"did you mean {guess!r}?" if guess else
                                f"remove it; see roles/{role}/meta/argument_specs.yml for the options"))
    return problems


def check_types(host: str, hostvars: Mapping, ctx: Context) -> list[Problem]:
    """Every documented option the inventory sets, against its spec (bots: check_bots_schema)."""
    problems = []
    merged = {**ctx.schema.defaults, **hostvars}
    for name, spec in ctx.schema.options.items():
        if name == "bots":
            continue
        if name in hostvars:
            problems += check_value(host, name, hostvars[name], spec, ctx)
        elif spec.get("required") and name not in merged:
            problems.append(Problem(host, name, "is required and not set", f"set {_example(name, spec)}"))
    return problems


# --------------------------------------------------------------------------
# Semantic checks: one small function each; (host, merged hostvars, ctx) -> problems
# --------------------------------------------------------------------------

DOCUMENTATION_NETS = tuple(ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"))
SHARED_NET = ipaddress.ip_network("100.64.0.0/10")


def _non_public_kind(address: ipaddress.IPv4Address) -> str | None:
    """Why ``address`` is not a public address, or None when it is one."""
    checks = (
        ("loopback", address.is_loopback), ("link-local", address.is_link_local),
        ("multicast", address.is_multicast), ("unspecified", address.is_unspecified),
        ("reserved", address.is_reserved),
        ("documentation (example)", any(address in net for net in DOCUMENTATION_NETS)),
        ("carrier-grade NAT (shared)", address in SHARED_NET),
        ("private", address.is_private), ("non-public", not address.is_global))
    return next((label for label, flag in checks if flag), None)


def check_static_ipv4(host: str, hv: Mapping, ctx: Context) -> list[Problem]:
    value = hv.get("static_ipv4", "")
    if value in ("", None) or is_templated(value) or not isinstance(value, str):
        if value in ("", None) and _enabled_bots(hv):
            return [Problem(host, "static_ipv4", "is empty but this host runs bots: the exchange whitelists "
                            "the server's public IPv4 address", "set static_ipv4 to the server's public IPv4 address")]
        return []
    if value != value.strip():
        return [Problem(host, "static_ipv4", "has white space around the address",
                        "write the address alone, without spaces or a newline around it")]
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return [Problem(host, "static_ipv4", f"{_show(value, ctx)} is not an IP address",
                        "set the server's public IPv4 address, e.g. static_ipv4: 95.216.10.20")]
    if address.version != 4:
        return [Problem(host, "static_ipv4", f"{address} is an IPv6 address",
                        "set the server's public IPv4 address (the one the exchange whitelists)")]
    kind = _non_public_kind(address)
    if kind and not _as_bool(hv.get("botvps_lab")):
        return [Problem(host, "static_ipv4", f"{address} is a {kind} address; the exchange needs the server's "
                        "public address to whitelist", "set the public IPv4 address of the server "
                        "(botvps_lab: true allows a private one, for local test VMs only)")]
    return []


def check_egress_ipv4(host: str, hv: Mapping, ctx: Context) -> list[Problem]:
    """egress_ipv4 (NAT clouds): an IPv4 address, private allowed; preflight_public_ipv4_url: an http(s) URL."""
    problems = []
    value = hv.get("egress_ipv4", "")
    if isinstance(value, str) and value and not is_templated(value):
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            address = None
        if address is None or address.version != 4:
            problems.append(Problem(host, "egress_ipv4", f"{_show(value, ctx)} is not an IPv4 address",
                                    "set the address the bots' packets leave the server's interface with "
                                    "(on a NAT cloud its private address, e.g. egress_ipv4: 172.31.5.10), or "
                                    "remove egress_ipv4 to use the default route's"))
    url = hv.get("preflight_public_ipv4_url", "")
    if isinstance(url, str) and url and not is_templated(url):
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            problems.append(Problem(host, "preflight_public_ipv4_url", f"{_show(url, ctx)} is not an http(s) URL",
                                    "give a \"what is my address\" service, e.g. https://api.ipify.org"))
    return problems


def _check_network(host: str, field: str, value: Any, ctx: Context, allow_any: bool = False,
                   allow_address: bool = True) -> list[Problem]:
    if is_templated(value) or not isinstance(value, (str, int)) or isinstance(value, bool):
        return []
    text = str(value)
    if text != text.strip():
        return [Problem(host, field, "has white space around the network",
                        "write the network alone, without spaces or a newline around it")]
    if allow_any and text == "any":
        return []
    try:
        ipaddress.ip_network(text, strict=True)
        return []
    except ValueError as err:
        if "has host bits set" in str(err):
            network = ipaddress.ip_network(text, strict=False)
            return [Problem(host, field, f"{text} has host bits set (it is not a network address)",
                            f"write {network} (or {ipaddress.ip_interface(text).ip}/"
                            f"{network.max_prefixlen} for that single address)")]
    return [Problem(host, field, f"{_show(value, ctx)} is not a valid CIDR",
                    "write an IPv4 or IPv6 network, e.g. 198.51.100.7/32 or 2001:db8::/48"
                    + (", or any" if allow_any else ""))]


def check_admin_cidrs(host: str, hv: Mapping, ctx: Context) -> list[Problem]:
    cidrs = hv.get("firewall_admin_cidrs")
    if not isinstance(cidrs, list):
        return []
    if not cidrs and _as_bool(hv.get("firewall_enabled", True), True):
        return [Problem(host, "firewall_admin_cidrs", "is empty: the firewall would let nobody reach SSH",
                        "list the networks you administer from, e.g. [198.51.100.7/32], or [0.0.0.0/0, ::/0]")]
    problems = []
    for index, cidr in enumerate(cidrs):
        problems += _check_network(host, f"firewall_admin_cidrs[{index}]", cidr, ctx)
    return problems


def check_other_networks(host: str, hv: Mapping, ctx: Context) -> list[Problem]:
    """fail2ban_ignoreip entries and firewall_allowed_ports sources are addresses or networks too."""
    problems = []
    ignore = hv.get("fail2ban_ignoreip")
    for index, item in enumerate(ignore if isinstance(ignore, list) else []):
        problems += _check_network(host, f"fail2ban_ignoreip[{index}]", item, ctx)
    ports = hv.get("firewall_allowed_ports")
    for index, item in enumerate(ports if isinstance(ports, list) else []):
        if isinstance(item, dict) and "src" in item:
            problems += _check_network(host, f"firewall_allowed_ports[{index}].src", item["src"], ctx,
                                       allow_any=True)
    return problems


def check_ssh_port(host: str, hv: Mapping, ctx: Context) -> list[Problem]:
    """ssh_port must not be a port the firewall opens for something else (a bot's port)."""
    port = _as_int(hv.get("ssh_port", 22))
    if port is None or not 1 <= port <= 65535:
        return []  # reported by check_value
    problems = []
    allowed = hv.get("firewall_allowed_ports")
    for index, item in enumerate(allowed if isinstance(allowed, list) else []):
        if isinstance(item, dict) and _as_int(item.get("port")) == port and str(item.get("proto", "tcp")) == "tcp":
            problems.append(Problem(host, "ssh_port", f"{port} clashes with firewall_allowed_ports[{index}] "
                                    f"(port {port}/tcp, declared for another service)",
                                    "choose a different ssh_port, or move that service to another port"))
    return problems


def check_ui_ports(host: str, hv: Mapping, ctx: Context) -> list[Problem]:
    """bots[].ui_port: 1024-65535, one bot per port, never ssh_port, never a port the firewall opens."""
    problems: list[Problem] = []
    owner: dict[int, str] = {}
    ssh_port = _as_int(hv.get("ssh_port", 22))
    allowed = hv.get("firewall_allowed_ports")
    opened = {_as_int(item.get("port")) for item in (allowed if isinstance(allowed, list) else [])
              if isinstance(item, dict) and str(item.get("proto", "tcp")) == "tcp"}
    for field, bot in _bots(hv):
        if "ui_port" not in bot or bot.get("ui_port") is None or bot.get("state") == "absent":
            continue
        port = _as_int(bot.get("ui_port"))
        if port is None:
            continue  # reported by check_value
        where = f"{field}.ui_port"
        if not 1024 <= port <= 65535:
            problems.append(Problem(host, where, f"{port} is not a port from 1024 to 65535",
                                    "give the port the bot's UI listens on at 127.0.0.1, e.g. ui_port: 8080"))
        elif port in owner:
            problems.append(Problem(host, where, f"{port} is also {owner[port]}'s UI port",
                                    f"give each bot's UI a port of its own, e.g. {max(owner) + 1}"))
        elif port == ssh_port:
            problems.append(Problem(host, where, f"{port} is ssh_port", "give the bot's UI another port, e.g. 8080"))
        elif port in opened:
            problems.append(Problem(host, where, f"{port} is opened to the internet in firewall_allowed_ports",
                                    "remove that firewall_allowed_ports entry: a bot's UI is reached over an SSH "
                                    "tunnel (invoke tunnel BOT), never a public port"))
        owner.setdefault(port, str(bot.get("name") or field))
    return problems


def check_private_key_file(host: str, hv: Mapping, ctx: Context) -> list[Problem]:
    """ansible_ssh_private_key_file must exist on the controller (else every connection fails after a timeout)."""
    path = hv.get("ansible_ssh_private_key_file", hv.get("ansible_private_key_file"))
    if not isinstance(path, str) or not path or is_templated(path):
        return []
    if not Path(os.path.expanduser(path)).is_file():
        name = "ansible_ssh_private_key_file" if "ansible_ssh_private_key_file" in hv else "ansible_private_key_file"
        return [Problem(host, name, "names no file on the controller",
                        "give the path of the private key you log in with (e.g. ~/.ssh/id_ed25519), or remove it "
                        "to use your ssh-agent")]
    return []


def check_ansible_port(host: str, hv: Mapping, ctx: Context) -> list[Problem]:
    if "ansible_port" not in hv or is_templated(hv["ansible_port"]):
        return []
    port = _as_int(hv["ansible_port"])
    if port is None or not 1 <= port <= 65535:
        return [Problem(host, "ansible_port", f"{_show(hv['ansible_port'], ctx)} is not a port",
                        "set ansible_port to the port sshd answers on (1-65535), or remove it")]
    return []


def check_reboot_time(host: str, hv: Mapping, ctx: Context) -> list[Problem]:
    value = hv.get("updates_reboot_time", "04:30")
    if isinstance(value, str) and not is_templated(value) and not REBOOT_TIME_RE.match(value):
        return [Problem(host, "updates_reboot_time", f"{_show(value, ctx)} is not a time of day (HH:MM)",
                        'write it quoted as 24-hour HH:MM, e.g. updates_reboot_time: "04:30"')]
    if isinstance(value, int) and not isinstance(value, bool):  # YAML 1.1 reads 04:30 unquoted as 270
        return [Problem(host, "updates_reboot_time", "is a number (YAML reads an unquoted 04:30 as minutes)",
                        'quote it: updates_reboot_time: "04:30"')]
    return []


def _key_problem_parts(problem: str) -> tuple[str, str]:
    what, sep, fix = problem.partition(": ")
    if sep and fix:
        return what, fix
    return problem, "paste the whole line of your .pub file (ssh-keygen -t ed25519 makes one)"


def _resolve_key_file(raw: str) -> list[Path]:
    path = Path(os.path.expandvars(raw)).expanduser()
    if path.is_absolute():
        return [path]
    # the role reads it with query('file'): the role's files/, the role, then the playbook's dirs
    return [ROLES_DIR / "admin" / "files" / path, ROLES_DIR / "admin" / path,
            PROJECT_ROOT / "playbooks" / "files" / path, PROJECT_ROOT / "playbooks" / path]


USER_NAME_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")  # Debian's adduser, without NAME_REGEX changes
# Accounts Debian or botvps already own: an admin with one of these names would take it over or clash.
RESERVED_USERS = frozenset({"root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news", "uucp",
                            "proxy", "www-data", "backup", "list", "irc", "nobody", "systemd-network",
                            "systemd-timesync", "messagebus", "sshd", "_apt", "polkitd"})


def check_admin_user(host: str, hv: Mapping, ctx: Context) -> list[Problem]:
    """The admin account's name: a valid Linux user name, not a system account's, not a bot's (bot-NAME)."""
    name = hv.get("admin_user")
    if not isinstance(name, str) or is_templated(name):
        return []  # a type problem is reported by check_types
    if not USER_NAME_RE.match(name):
        return [Problem(host, "admin_user", f"{_show(name, ctx)} is not a valid user name",
                        "use lowercase letters, digits, '_' and '-', starting with a letter, e.g. 'ops'")]
    if name in RESERVED_USERS or name.startswith("bot-"):
        return [Problem(host, "admin_user", f"{name!r} is a system account's name" if name in RESERVED_USERS else
                        "names starting with 'bot-' are the bots' own users", "choose another name, e.g. 'ops'")]
    return []


def check_admin_keys(host: str, hv: Mapping, ctx: Context) -> list[Problem]:
    """admin_keys lines and admin_key_files: real public keys, strong enough, and at least one."""
    keys, files = hv.get("admin_keys", []), hv.get("admin_key_files", [])
    if not isinstance(keys, list) or not isinstance(files, list):
        return []  # templated (assumed valid) or the wrong type (reported by check_types)
    hardware = _as_bool(hv.get("admin_require_hardware_keys"))
    problems: list[Problem] = []
    usable = 0
    templated = False
    lines: list[tuple[str, str]] = []  # (field, key line)
    for index, line in enumerate(keys):
        if is_templated(line):
            templated = True
        elif isinstance(line, str):
            for part in (line.splitlines() if "PRIVATE KEY" not in line else [line]):
                if part.strip():
                    lines.append((f"admin_keys[{index}]", part))
    for index, raw in enumerate(files):
        field = f"admin_key_files[{index}]"
        if is_templated(raw):
            templated = True
            continue
        if not isinstance(raw, str):
            continue
        candidates = _resolve_key_file(raw)
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            problems.append(Problem(host, field, f"public key file {candidates[0]} does not exist",
                                    "give the path of an existing .pub file (absolute or ~/...), "
                                    "e.g. ~/.ssh/id_ed25519.pub"))
            continue
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as err:
            problems.append(Problem(host, field, f"cannot read {path} ({type(err).__name__})",
                                    "give a readable OpenSSH public key file (.pub)"))
            continue
        if "PRIVATE KEY" in text:
            problems.append(Problem(host, field, f"{path} is a PRIVATE key",
                                    f"use the public key instead ({path}.pub); keep the private key off the inventory"))
            continue
        file_lines = [(n, ln) for n, ln in enumerate(text.splitlines(), 1) if ln.strip()]
        if not file_lines:
            problems.append(Problem(host, field, f"{path} is empty", "give a file holding an OpenSSH public key"))
        lines += [(f"{field} ({path} line {n})", ln) for n, ln in file_lines]
    for field, line in lines:
        problem = ctx.net.ssh_key_problem(line)
        if problem:
            what, fix = _key_problem_parts(problem)
            problems.append(Problem(host, field, what, fix))
        elif hardware and not ctx.net.is_hardware_key(line):
            problems.append(Problem(host, field, f"is a {line.split()[0]} key but admin_require_hardware_keys is "
                                    "true", "use a FIDO2 key (ssh-keygen -t ed25519-sk) or set "
                                    "admin_require_hardware_keys: false"))
        else:
            usable += 1
    if not lines and not templated and not problems:
        problems.append(Problem(host, "admin_keys", "the admin has no SSH public key (admin_keys and "
                                "admin_key_files are both empty): nobody could log in",
                                "add admin_key_files: [~/.ssh/id_ed25519.pub] or admin_keys: "
                                "['ssh-ed25519 AAAA... you@laptop']"))
    return problems


# ---- bots -----------------------------------------------------------------

def _bot_label(index: int, bot: Mapping) -> str:
    name = bot.get("name")
    valid = isinstance(name, str) and BOT_NAME_RE.match(name) and not is_templated(name)
    return f"bots.{name}" if valid else f"bots[{index}]"  # an invalid name is not shown: it may be a paste


def _bots(hv: Mapping) -> list[tuple[str, dict]]:
    """(field, bot) for each bot entry that is a mapping."""
    bots = hv.get("bots")
    if not isinstance(bots, list):
        return []
    return [(_bot_label(index, bot), bot) for index, bot in enumerate(bots) if isinstance(bot, dict)]


def _enabled_bots(hv: Mapping) -> list[dict]:
    return [bot for _, bot in _bots(hv) if str(bot.get("exchange", "none")) != "none"]


def check_bots_schema(host: str, hv: Mapping, ctx: Context) -> list[Problem]:
    bots = hv.get("bots", [])
    if is_templated(bots):
        return []
    if not isinstance(bots, list):
        return check_value(host, "bots", bots, EXTRA_OPTIONS["bots"], ctx)
    problems = []
    for index, bot in enumerate(bots):
        if is_templated(bot):
            continue
        if not isinstance(bot, dict):
            problems.append(Problem(host, f"bots[{index}]", f"must be a mapping (name:, source:, command:, ...), "
                                    f"not {_show(bot, ctx)}", "write each bot as a mapping under bots:"))
            continue
        problems += check_options(host, _bot_label(index, bot), bot, ctx.schema.bot_options, ctx)
    return problems


def check_bot_fields(host: str, hv: Mapping, ctx: Context) -> list[Problem]:
    """What the types cannot say: names, sources, commands, key variables, URLs."""
    problems = []
    for field, bot in _bots(hv):
        name = bot.get("name")
        if isinstance(name, str) and not is_templated(name) and not BOT_NAME_RE.match(name):
            problems.append(Problem(host, f"{field}.name", f"{_show(name, ctx)} is not a valid bot name (it becomes "
                                    "the user bot-NAME and the unit name)", "use lowercase letters, digits and "
                                    "'-', starting with a letter, at most 31 characters, e.g. 'grid-btc'"))
        problems += _check_bot_source(host, field, bot.get("source"), hv, ctx)
        command = bot.get("command")
        if isinstance(command, list) and not command:
            problems.append(Problem(host, f"{field}.command", "is an empty list",
                                    "give the program and its arguments, e.g. command: [python3, -m, mybot]"))
        stop = bot.get("stop_command")
        if isinstance(stop, list) and not stop:
            problems.append(Problem(host, f"{field}.stop_command", "is an empty list",
                                    "give a command, or null for the kill_signal alone"))
        problems += _check_bot_secrets_decl(host, field, bot, ctx)
        problems += _check_bot_environment(host, field, bot.get("environment"), ctx)
        env, names = bot.get("environment"), bot.get("secrets")
        if isinstance(env, dict) and isinstance(names, list):
            problems += [Problem(host, f"{field}.environment.{key}", "is also one of the bot's secrets: one of the "
                                 "two values would silently win", "keep it in secrets (the vault) and remove it "
                                 "from environment") for key in env if key in names]
        timeout = _as_int(bot.get("timeout_stop_sec"))
        if "timeout_stop_sec" in bot and timeout is not None and timeout <= 0:
            problems.append(Problem(host, f"{field}.timeout_stop_sec", f"{timeout} is not a positive number of "
                                    "seconds", "give the seconds the bot may take to stop, e.g. 30"))
        problems += _check_bot_state_sqlite(host, field, bot.get("state_sqlite"), ctx)
        url = bot.get("exchange_base_url")
        if isinstance(url, str) and not is_templated(url):
            parsed = urllib.parse.urlsplit(url)
            if parsed.scheme not in ("http", "https") or not parsed.netloc or parsed.path not in ("", "/") \
                    or parsed.query or parsed.fragment:
                problems.append(Problem(host, f"{field}.exchange_base_url", f"{_show(url, ctx)} is not an "
                                        "http(s)://host[:port] URL", "give scheme and host only, e.g. "
                                        "https://api.binance.com, or null for the exchange's default"))
    return problems


def state_path_problem(path: str) -> str | None:
    """Why ``path`` cannot name a file inside a bot's state directory (None when it can)."""
    if not path:
        return "is empty"
    if "\x00" in path:
        return "contains a NUL character"
    if path.startswith("/"):
        return "is absolute"
    if any(part in ("", ".", "..") for part in path.rstrip("/").split("/")) or path.endswith("/"):
        return "has an empty, '.' or '..' component"
    return None


def _check_bot_state_sqlite(host: str, field: str, paths: Any, ctx: Context) -> list[Problem]:
    problems = []
    for index, path in enumerate(paths if isinstance(paths, list) else []):
        if not isinstance(path, str) or is_templated(path):
            continue
        why = state_path_problem(path)
        if why:
            problems.append(Problem(host, f"{field}.state_sqlite[{index}]", f"{_show(path, ctx)} {why}",
                                    "give the database's path relative to the bot's state directory "
                                    "/var/lib/botvps/NAME, e.g. tradesv3.sqlite or data/bot.db"))
    return problems


def _source_root(hv: Mapping, ctx: Context) -> Path | None:
    """bots_source_root as the role resolves it (its default, playbook_dir's parent: the botvps checkout); None
    when templated otherwise."""
    root = hv.get("bots_source_root")
    if root is None or root == ctx.schema.defaults.get("bots_source_root"):
        return PROJECT_ROOT
    return Path(os.path.expanduser(root)) if isinstance(root, str) and not is_templated(root) else None


def _check_bot_source(host: str, field: str, source: Any, hv: Mapping, ctx: Context) -> list[Problem]:
    if not isinstance(source, dict):
        return []
    path, root = source.get("path"), _source_root(hv, ctx)
    if isinstance(path, str) and path and not is_templated(path) and root is not None and len(source) == 1:
        if not (root / os.path.expanduser(path)).is_dir():
            return [Problem(host, f"{field}.source.path", "is no directory on the controller (a relative path is "
                            f"taken from bots_source_root, {'the botvps checkout' if root == PROJECT_ROOT else root})",
                            "give the directory that holds the bot's code, absolute or relative to it")]
    kinds = [k for k in ("path", "git", "pip") if k in source]
    if len(kinds) != 1:
        what = "has none of path, git, pip" if not kinds else f"has {', '.join(kinds)}"
        return [Problem(host, f"{field}.source", f"{what}: exactly one is needed",
                        "give exactly one of source.path (a directory on the controller), source.git (a "
                        "repository URL, with optional version) or source.pip (a requirement)")]
    if "version" in source and kinds != ["git"]:
        return [Problem(host, f"{field}.source.version", "only applies to source.git",
                        "remove version, or pin the version in the pip requirement")]
    return []


def _check_bot_secrets_decl(host: str, field: str, bot: Mapping, ctx: Context) -> list[Problem]:
    problems = []
    names = bot.get("secrets", [])
    names = names if isinstance(names, list) else []
    for index, name in enumerate(names):
        if isinstance(name, str) and not is_templated(name) and not ENV_NAME_RE.match(name):
            problems.append(Problem(host, f"{field}.secrets[{index}]", f"{_show(name, ctx)} is not a valid "
                                    "environment variable name", "use letters, digits and '_', not starting "
                                    "with a digit, e.g. BINANCE_API_KEY"))
    exchange = bot.get("exchange", "none")
    if exchange not in EXCHANGES:
        return problems  # reported by the schema check
    for var in ("api_key_var", "api_secret_var", "api_passphrase_var"):
        value = bot.get(var)
        if value is None or is_templated(value) or not isinstance(value, str):
            if var != "api_passphrase_var" and exchange != "none" and value is None:
                problems.append(Problem(host, f"{field}.{var}", f"is missing: a bot on {exchange} needs its "
                                        "API key and secret", f"set {var} to the secret holding it "
                                        "(one of the bot's secrets)"))
            continue
        if value not in names:
            problems.append(Problem(host, f"{field}.{var}", f"{value} is not one of the bot's secrets",
                                    f"add {value} to {field}.secrets (and to the vault)"))
    if exchange == "okx" and bot.get("api_passphrase_var") in (None, ""):
        problems.append(Problem(host, f"{field}.api_passphrase_var", "is missing: okx API keys have a "
                                "passphrase", "set api_passphrase_var to the secret holding the passphrase "
                                "(and list it in secrets)"))
    return problems


def _check_bot_environment(host: str, field: str, env: Any, ctx: Context) -> list[Problem]:
    problems = []
    for key, value in (env.items() if isinstance(env, dict) else []):
        if not ENV_NAME_RE.match(str(key)):
            problems.append(Problem(host, f"{field}.environment.{key}", "is not a valid environment variable "
                                    "name", "use letters, digits and '_', not starting with a digit"))
        if not isinstance(value, str):
            problems.append(Problem(host, f"{field}.environment.{key}", f"must be a string, not "
                                    f"{_show(value, ctx)}", f'quote it: {key}: "..." (YAML reads it unquoted as a '
                                    f'{type(value).__name__})' if isinstance(value, (int, float, bool)) else
                                    "give a string value"))
    return problems


def check_bot_secrets(host: str, hv: Mapping, ctx: Context) -> list[Problem]:
    """Every secret a bot lists is in the vault (botvps_secrets[bot]) and is one line. Never shows a value."""
    vault = hv.get("botvps_secrets", {})
    if is_templated(vault):
        return []
    if not isinstance(vault, dict):
        return []  # reported by check_types
    problems = []
    for field, bot in _bots(hv):
        name, names = bot.get("name"), bot.get("secrets", [])
        if not isinstance(name, str) or is_templated(name) or not BOT_NAME_RE.match(name) or not isinstance(
                names, list):
            continue  # an invalid name is reported by check_bot_fields
        entry = vault.get(name, {})
        if is_templated(entry):
            continue
        if not isinstance(entry, dict):
            problems.append(Problem(host, f"botvps_secrets.{name}", "must be a mapping of variable: value",
                                    f"write it as botvps_secrets: {{{name}: {{VARIABLE: value}}}} in the vault"))
            continue
        for var in names:
            if not isinstance(var, str) or is_templated(var) or not ENV_NAME_RE.match(var):
                continue  # an invalid name is reported by _check_bot_secrets_decl
            where = f"botvps_secrets.{name}.{var}"
            if var not in entry or entry[var] in (None, ""):
                problems.append(Problem(host, where, f"bot {name!r} lists secret {var} but the vault has no "
                                        "value for it", f"add it: .venv/bin/{_secrets_set(name, var)} "
                                        f"(or remove {var} from the bot's secrets)"))
                continue
            value = entry[var]
            if is_templated(value):
                continue
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                problems.append(Problem(host, where, f"the secret {var} of bot {name!r} is not a string",
                                        "store it as a single-line string in the vault"))
            elif isinstance(value, str) and is_line_with_newline(value):
                # Multi-line values (PEM keys) are fine: the env file double-quotes them for systemd.
                problems.append(Problem(host, where, f"the secret {var} of bot {name!r} is one line ending in a "
                                        "line break (a YAML '|' block adds one at the end)", "store it as a quoted "
                                        "single-line string (or use '|-'); the value is not shown"))
            elif isinstance(value, str) and "\x00" in value:
                problems.append(Problem(host, where, f"the secret {var} of bot {name!r} contains a NUL byte",
                                        "store it without (no environment variable can carry one); the value "
                                        "is not shown"))
    return problems


def _secret_values(hv: Mapping) -> Iterable[tuple[str, str, Any]]:
    """(bot, variable, value) for every value in botvps_secrets."""
    vault = hv.get("botvps_secrets")
    for name, entry in (vault.items() if isinstance(vault, dict) else []):
        for var, value in (entry.items() if isinstance(entry, dict) else []):
            yield str(name), str(var), value


def _secrets_set(name: str, var: str) -> str:
    """The command that stores bot ``name``'s secret ``var`` in the vault (placeholders for names it refuses)."""
    valid = BOT_NAME_RE.match(name) and ENV_NAME_RE.match(var)
    return f"invoke secrets.set {name if valid else 'BOT'} {var if valid else 'NAME'} --inventory INVENTORY"


def check_secrets_vaulted(host: str, hv: Mapping, ctx: Context) -> list[Problem]:
    """Every string in botvps_secrets must come from the vault (a SecretStr), not a plain vars file."""
    return [Problem(host, f"botvps_secrets.{name}.{var}", "is in plaintext in the inventory (not in the vault)",
                    f"delete it there and store it with {_secrets_set(name, var)}")
            for name, var, value in _secret_values(hv)
            if isinstance(value, str) and not isinstance(value, SecretStr) and not is_templated(value)]


SEMANTIC_CHECKS: tuple[Callable[[str, Mapping, Context], list[Problem]], ...] = (
    check_static_ipv4, check_egress_ipv4, check_admin_cidrs, check_other_networks, check_ssh_port, check_ui_ports, check_ansible_port, check_private_key_file,
    check_reboot_time, check_admin_user, check_admin_keys, check_bots_schema, check_bot_fields, check_bot_secrets,
    check_secrets_vaulted,
)


# ---- across hosts -----------------------------------------------------------

def check_duplicate_bots(merged: Mapping[str, Mapping], ctx: Context) -> list[Problem]:
    """A bot name is a user and a unit: unique across the whole inventory."""
    seen: dict[str, str] = {}
    problems = []
    for host, hv in merged.items():
        for field, bot in _bots(hv):
            name = bot.get("name")
            if not isinstance(name, str) or is_templated(name):
                continue
            if name in seen:
                other = seen[name]
                where = "on this host" if other == host else f"on host {other}"
                problems.append(Problem(host, f"{field}.name", f"bot name {name!r} is already used {where}",
                                        "give each bot a unique name across the inventory (define each bot "
                                        "once, in host_vars of the host that runs it)"))
            else:
                seen[name] = host
    return problems


def check_shared_api_keys(merged: Mapping[str, Mapping], ctx: Context) -> list[Problem]:
    """Two bots must not share an API key (rate limits, nonces, and a leak would hit both). Never shows the key."""
    owners: dict[str, tuple[str, str, str]] = {}
    problems = []
    for host, hv in merged.items():
        vault = hv.get("botvps_secrets")
        if not isinstance(vault, dict):
            continue
        for field, bot in _bots(hv):
            name, var = bot.get("name"), bot.get("api_key_var")
            entry = vault.get(name) if isinstance(name, str) else None
            if not isinstance(entry, dict) or not isinstance(var, str):
                continue
            key = entry.get(var)
            if not isinstance(key, str) or not key.strip() or is_templated(key):
                continue
            key = key.strip()
            if key in owners and owners[key][:2] != (host, name):
                other_host, other_bot, other_var = owners[key]
                problems.append(Problem(host, f"{field}.api_key_var", f"bot {host}/{name} uses the same API key "
                                        f"({var}) as bot {other_host}/{other_bot} ({other_var})",
                                        "create a separate API key at the exchange for each bot"))
            else:
                owners.setdefault(key, (host, name, var))
    return problems


CROSS_HOST_CHECKS = (check_duplicate_bots, check_shared_api_keys)


def validate(hosts: Mapping[str, Mapping], roles_dir: str | os.PathLike = ROLES_DIR) -> list[Problem]:
    """Every problem in every host's variables (``hosts`` as from load_inventory); [] when all is well."""
    schema = load_schema(roles_dir)
    ctx = Context(schema=schema, secrets=_collect_secrets(hosts), net=_net_module())
    problems: list[Problem] = list(schema.errors)
    merged_all: dict[str, dict] = {}
    for host, hostvars in hosts.items():
        merged = {**schema.defaults, **hostvars}
        merged_all[host] = merged
        problems += check_unknown_keys(host, hostvars, ctx)
        problems += check_types(host, hostvars, ctx)
        for check in SEMANTIC_CHECKS:
            problems += check(host, merged, ctx)
    for cross in CROSS_HOST_CHECKS:
        problems += cross(merged_all, ctx)
    unique = list(dict.fromkeys(problems))
    redactor = Redactor(ctx.secrets)
    return [_redact(p, redactor) for p in unique]


# --------------------------------------------------------------------------
# Reachability (after validation)
# --------------------------------------------------------------------------

def _ports(hv: Mapping) -> list[int]:
    """ansible_port when set; else the ports the connect role tries (the admin's, then the handover port)."""
    if "ansible_port" in hv:
        port = _as_int(hv["ansible_port"])
        return [port] if port else []
    candidates = [hv.get("ssh_public_port"), hv.get("ssh_port"), hv.get("connect_bootstrap_port"), 22]
    ports = [p for p in (_as_int(c) for c in candidates) if p and 1 <= p <= 65535]
    return list(dict.fromkeys(ports))


def _connect(address: str, port: int, timeout: float) -> str:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return ""
    except socket.timeout:
        return f"no answer within {timeout:g}s"
    except OSError as err:
        return err.strerror or type(err).__name__


def check_reachable(hosts: Mapping[str, Mapping], timeout: float = 5) -> list[Problem]:
    """TCP-connect to every host's SSH port, in parallel; one problem per host that does not answer."""
    jobs: dict[str, tuple[str, list[int]]] = {}
    for host, hv in hosts.items():
        address = hv.get("ansible_host", host)
        if hv.get("ansible_connection") in ("local",) or is_templated(address) or not isinstance(address, str):
            continue
        ports = _ports(hv)
        if ports:
            jobs[host] = (address, ports)

    def probe(item: tuple[str, tuple[str, list[int]]]) -> Problem | None:
        host, (address, ports) = item
        failures = []
        for port in ports:
            reason = _connect(address, port, timeout)
            if not reason:
                return None
            failures.append(f"{address}:{port} ({reason})")
        return Problem(host, "ansible_host", "cannot reach " + " nor ".join(failures),
                       "check that the server runs and that ansible_host/ansible_port are right "
                       "(and that no firewall blocks this controller)")

    if not jobs:
        return []
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(32, len(jobs))) as pool:
        results = list(pool.map(probe, jobs.items()))
    return [r for r in results if r]


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------

EXAMPLE_PASSWORD = PROJECT_ROOT / "examples" / "vault-password.example"
EXAMPLE_VAULT = PROJECT_ROOT / "inventory.example" / "group_vars" / "all" / "vault.yml"
MAKE_YOUR_OWN_VAULT = ("make a vault of your own: delete the copied group_vars/all/vault.yml, write a new password "
                       "to a file of yours (chmod 600), then invoke secrets.set BOT VAR --inventory INVENTORY "
                       "--vault-password-file FILE for each secret")


@functools.lru_cache(maxsize=1)
def _example_values() -> frozenset[str]:
    """The secret values of the example vault (placeholders everyone can read)."""
    from ansible.parsing.vault import VaultLib, VaultSecret

    try:
        secret = VaultSecret(EXAMPLE_PASSWORD.read_bytes().strip())
        plain = VaultLib([("default", secret)]).decrypt(EXAMPLE_VAULT.read_bytes())
        data = yaml.load(plain, Loader=_RoleLoader) or {}  # noqa: S506 - a SafeLoader that reads !unsafe
    except Exception:  # noqa: BLE001 - no example vault to compare with: nothing to refuse
        return frozenset()
    bots = data.get("botvps_secrets") if isinstance(data, dict) else None
    return frozenset(str(value) for entry in (bots or {}).values() if isinstance(entry, dict)
                     for value in entry.values() if value not in (None, ""))


def check_example_vault(hosts: Mapping[str, Mapping], vault_password_file: str | None) -> list[Problem]:
    """The example vault's password, or one of its values, in a real inventory: both are public."""
    problems = []
    try:
        same_password = bool(vault_password_file) and Path(vault_password_file).read_bytes().strip() == \
            EXAMPLE_PASSWORD.read_bytes().strip()
    except OSError:
        same_password = False
    if same_password:
        problems.append(Problem("all", "vault password file", f"{vault_password_file} holds the example "
                                "vault's password (examples/vault-password.example), which anyone can read",
                                MAKE_YOUR_OWN_VAULT))
    examples = _example_values()
    return problems + [Problem(host, f"botvps_secrets.{name}.{var}", "is the example vault's placeholder, not a key "
                               f"of yours", f"store your key with {_secrets_set(name, var)}")
                       for host, hv in hosts.items() for name, var, value in _secret_values(hv)
                       if isinstance(value, str) and value in examples]


def check(inventory: str | os.PathLike, vault_password_file: str | None = None, reach: bool = True,
          timeout: float = 5, roles_dir: str | os.PathLike = ROLES_DIR) -> tuple[int, str]:
    """Validate (and, with ``reach``, contact) an inventory: (exit code, report)."""
    try:
        hosts = load_inventory(inventory, vault_password_file)
    except InventoryError as err:
        return err.exit_code, format_problems(err.problems)
    problems = check_example_vault(hosts, vault_password_file) + validate(hosts, roles_dir)
    if problems:
        return EXIT_INVALID, (format_problems(problems)
                              + f"\n{len(problems)} problem(s); nothing was changed on any host")
    if reach:
        unreachable = check_reachable(hosts, timeout)
        if unreachable:
            return EXIT_UNREACHABLE, format_problems(unreachable)
    return EXIT_OK, f"ok: {len(hosts)} host(s) valid" + (" and reachable" if reach else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m botvps.validate",
                                     description="Check an inventory before anything connects to a host.")
    parser.add_argument("inventory", help="the inventory directory (hosts.yml, group_vars/, host_vars/)")
    parser.add_argument("--vault-password-file", default=os.environ.get(VAULT_ENV) or None,
                        help=f"vault password file (default: ${VAULT_ENV})")
    parser.add_argument("--no-reach", action="store_true", help="do not check that the hosts answer on SSH")
    parser.add_argument("--roles-dir", default=str(ROLES_DIR), help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, default=5, help="seconds to wait for each host (default 5)")
    args = parser.parse_args(argv)
    code, report = check(args.inventory, args.vault_password_file, not args.no_reach, args.timeout, args.roles_dir)
    print(report, file=sys.stderr if code else sys.stdout)
    return code


if __name__ == "__main__":
    sys.exit(main())
