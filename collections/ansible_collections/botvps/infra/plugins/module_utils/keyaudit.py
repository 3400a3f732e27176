#!/usr/bin/env python3
"""keyaudit: ask the exchange itself whether a trading bot's API key is safe.

A bot's key must be able to read and trade, must never be able to withdraw or
move funds out, and must only work from the server's static IP.  This program
asks the exchange what the key can do and says PASS, WARN, FAIL or ERROR.

It is deliberately a single file: HMAC keys need nothing but the Python 3
standard library, and private keys (Ed25519, RSA, EC) Debian's
python3-cryptography (38 on bookworm, 43 on trixie), imported only for them.  It
runs on a Debian 12/13 host as ``python3 keyaudit.py`` and is also importable
as ``botvps.keyaudit``.

Usage::

    python3 keyaudit.py --config CONFIG.json --env-file SECRETS.env \
        [--json] [--allow-unchecked]

CONFIG.json (root-owned, not secret)::

    {"bot": "alpha", "exchange": "binance", "key_var": "BINANCE_KEY",
     "secret_var": "BINANCE_SECRET", "passphrase_var": null,
     "static_ipv4": "203.0.113.7", "source_ipv4": null, "base_url": null,
     "timeout": 10, "retries": 3, "expiry_warn_days": 14, "trades": ["spot"]}

``bot``, ``exchange``, ``key_var``, ``secret_var`` and ``static_ipv4`` are
required; the rest default to the values above (``passphrase_var`` is required
for okx).  ``retries`` is the number of retries after the first attempt.

The audit goes out over IPv4 only (the key's whitelist holds the server's IPv4
address; on a dual-stack host an IPv6 connection would be refused by the
exchange), and from ``source_ipv4`` when it is set: the address the bots send
from, so that the exchange sees what it sees from the bots.  ``trades`` lists
what the bot trades (spot, margin, futures): a Binance key that may also trade
what is not listed gets a WARN.

SECRETS.env is a systemd EnvironmentFile; ``--env-file -`` reads the variables
from this process' own environment instead.

Exit codes: 0 pass or warn; 1 fail (the key is unsafe); 2 could not check
(network, timeout, 5xx after retries, the exchange rejected the key, clock skew,
bad config or secrets).  ``--allow-unchecked`` turns a could-not-check caused by
the exchange (network, 5xx, auth, clock skew) into exit 0 with a warning; a FAIL
still exits 1, and a broken config or secrets file still exits 2.

The key is only ever shown as its last four characters; the secret and the
passphrase are never printed, in any form, and no traceback is ever shown.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import dataclasses
import datetime as dt
import email.utils
import hashlib
import hmac
import http.client
import ipaddress
import json
import os
import re
import secrets
import socket
import sys
import time
import types
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

USER_AGENT = "botvps-keyaudit/1 (+https://github.com/botvps)"
EXIT_OK = 0
EXIT_FAIL = 1
EXIT_UNCHECKED = 2

PASS, WARN, FAIL, ERROR = "pass", "warn", "fail", "error"

CLOCK_SKEW_TOLERANCE_S = 30.0
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 4.0


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


class KeyAuditError(Exception):
    """Base class; its message is always safe to print."""


class ConfigError(KeyAuditError):
    """The config or secrets file is unusable (always exit 2)."""


class CheckError(KeyAuditError):
    """The exchange could not be asked, or its answer was unusable."""


class AuthError(CheckError):
    """The exchange rejected the key, its signature or its source IP."""


class ClockSkewError(CheckError):
    """The exchange rejected the request time: this host's clock is off."""


class TransientError(Exception):
    """A network-level failure worth retrying (internal)."""


# --------------------------------------------------------------------------
# systemd EnvironmentFile parser
# --------------------------------------------------------------------------

# The constants and the state machine below follow systemd's
# src/basic/env-file.c (parse_env_file_internal), which is what
# EnvironmentFile= uses: COMMENTS "#;", WHITESPACE " \t\n\r", NEWLINE "\n\r",
# SHELL_NEED_ESCAPE "\"\\`$".  Double-quoted values may span lines; inside them a
# backslash only escapes those four characters (and a newline, which is
# dropped); any other backslash is kept.  Unquoted values lose their trailing
# whitespace, a backslash there escapes any character, and "#" is literal.
_ENV_COMMENTS = "#;"
_ENV_WHITESPACE = " \t\n\r"
_ENV_NEWLINE = "\n\r"
_ENV_SHELL_NEED_ESCAPE = '"\\`$'


class _EnvParser:
    """One pass over an EnvironmentFile; use parse_env_file()."""

    def __init__(self) -> None:
        self.result: dict[str, str] = {}
        self.state = "PRE_KEY"
        self.key: list[str] = []
        self.value: list[str] = []
        self.key_ws: int | None = None  # index where trailing key whitespace starts
        self.value_ws: int | None = None  # same for unquoted values

    def feed(self, text: str) -> dict[str, str]:
        for c in text:
            getattr(self, "_" + self.state.lower())(c)
        if self.state in ("PRE_VALUE", "VALUE", "VALUE_ESCAPE", "SINGLE_QUOTE_VALUE",
                          "DOUBLE_QUOTE_VALUE", "DOUBLE_QUOTE_VALUE_ESCAPE"):
            self._push(chomp_value=self.state == "VALUE")
        return self.result

    def _push(self, chomp_value: bool) -> None:
        key = self.key[: self.key_ws] if self.key_ws is not None else self.key
        value = self.value
        if chomp_value and self.value_ws is not None:
            value = value[: self.value_ws]
        self.result["".join(key)] = "".join(value)
        self.key, self.value, self.key_ws, self.value_ws = [], [], None, None

    def _pre_key(self, c: str) -> None:
        if c in _ENV_COMMENTS:
            self.state = "COMMENT"
        elif c not in _ENV_WHITESPACE:
            self.state = "KEY"
            self.key, self.key_ws = [c], None

    def _key(self, c: str) -> None:
        if c in _ENV_NEWLINE:  # a line without "=" is ignored
            self.state, self.key = "PRE_KEY", []
        elif c == "=":
            self.state, self.value, self.value_ws = "PRE_VALUE", [], None
        else:
            if c not in _ENV_WHITESPACE:
                self.key_ws = None
            elif self.key_ws is None:
                self.key_ws = len(self.key)
            self.key.append(c)

    def _pre_value(self, c: str) -> None:
        if c in _ENV_NEWLINE:
            self.state = "PRE_KEY"
            self._push(chomp_value=False)
        elif c == "'":
            self.state = "SINGLE_QUOTE_VALUE"
        elif c == '"':
            self.state = "DOUBLE_QUOTE_VALUE"
        elif c == "\\":
            self.state = "VALUE_ESCAPE"
        elif c not in _ENV_WHITESPACE:
            self.state = "VALUE"
            self.value.append(c)

    def _value(self, c: str) -> None:
        if c in _ENV_NEWLINE:
            self.state = "PRE_KEY"
            self._push(chomp_value=True)
        elif c == "\\":
            self.state, self.value_ws = "VALUE_ESCAPE", None
        else:
            if c not in _ENV_WHITESPACE:
                self.value_ws = None
            elif self.value_ws is None:
                self.value_ws = len(self.value)
            self.value.append(c)

    def _value_escape(self, c: str) -> None:
        self.state = "VALUE"
        if c not in _ENV_NEWLINE:  # an escaped newline is a line continuation
            self.value.append(c)

    def _single_quote_value(self, c: str) -> None:
        if c == "'":
            self.state = "PRE_VALUE"
        else:
            self.value.append(c)

    def _double_quote_value(self, c: str) -> None:
        if c == '"':
            self.state = "PRE_VALUE"
        elif c == "\\":
            self.state = "DOUBLE_QUOTE_VALUE_ESCAPE"
        else:
            self.value.append(c)

    def _double_quote_value_escape(self, c: str) -> None:
        self.state = "DOUBLE_QUOTE_VALUE"
        if c in _ENV_SHELL_NEED_ESCAPE:
            self.value.append(c)
        elif c != "\n":
            self.value.extend(("\\", c))

    def _comment(self, c: str) -> None:
        if c == "\\":
            self.state = "COMMENT_ESCAPE"
        elif c in _ENV_NEWLINE:
            self.state = "PRE_KEY"

    def _comment_escape(self, c: str) -> None:
        self.state = "PRE_KEY" if c in _ENV_NEWLINE else "COMMENT"


def parse_env_file(text: str) -> dict[str, str]:
    """Parse systemd EnvironmentFile syntax into a dict (later lines win)."""
    return _EnvParser().feed(text)


def read_env_file(path: str) -> dict[str, str]:
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise ConfigError(f"cannot read secrets file {path}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        # The exception text would quote the offending byte: never show it.
        raise ConfigError(f"secrets file {path} is not valid UTF-8") from None
    return parse_env_file(text)


# --------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------

EXCHANGE_NAMES = ("binance", "bybit", "okx", "kraken", "coinbase")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_REQUIRED = ("bot", "exchange", "key_var", "secret_var", "static_ipv4")
_DEFAULTS: Mapping[str, Any] = types.MappingProxyType({
    "passphrase_var": None, "source_ipv4": None, "base_url": None, "timeout": 10,
    "retries": 3, "expiry_warn_days": 14, "trades": ("spot",),
})
MARKETS = ("spot", "margin", "futures")


@dataclass(frozen=True)
class Config:
    bot: str
    exchange: str
    key_var: str
    secret_var: str
    passphrase_var: str | None
    static_ipv4: str
    source_ipv4: str | None
    base_url: str | None
    timeout: float
    retries: int
    expiry_warn_days: int
    trades: tuple[str, ...]


def _field_error(name: str, problem: str) -> ConfigError:
    return ConfigError(f"config field '{name}' {problem}")


def _check_str(raw: Mapping[str, Any], name: str) -> str:
    value = raw[name]
    if not isinstance(value, str) or not value.strip():
        raise _field_error(name, "must be a non-empty string")
    return value


def _check_env_name(raw: Mapping[str, Any], name: str) -> str:
    value = _check_str(raw, name)
    if not _ENV_NAME.match(value):
        raise _field_error(name, "must be an environment variable name")
    return value


def _check_number(raw: Mapping[str, Any], name: str, *, integer: bool, minimum: float) -> Any:
    value = raw[name]
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value < minimum:
        kind = "an integer" if integer else "a number"
        raise _field_error(name, f"must be {kind} >= {minimum:g}")
    return value


def _check_ipv4(raw: Mapping[str, Any], name: str) -> str:
    try:
        return str(ipaddress.IPv4Address(_check_str(raw, name)))
    except ipaddress.AddressValueError:
        raise _field_error(name, "must be an IPv4 address") from None


def _check_trades(raw: Mapping[str, Any]) -> tuple[str, ...]:
    value = raw["trades"]
    if not isinstance(value, (list, tuple)) or not all(item in MARKETS for item in value):
        raise _field_error("trades", f"must be a list of {', '.join(MARKETS)}")
    return tuple(value)


def _check_base_url(raw: Mapping[str, Any]) -> str | None:
    value = raw["base_url"]
    if value is None:
        return None
    url = _check_str(raw, "base_url")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise _field_error("base_url", "must be null or an http(s)://host[:port] URL")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise _field_error("base_url", "must not contain a path, query or fragment")
    return f"{parts.scheme}://{parts.netloc}"


def parse_config(raw: Any) -> Config:
    """Validate a decoded CONFIG.json; errors name the offending field."""
    if not isinstance(raw, dict):
        raise ConfigError("config must be a JSON object")
    unknown = sorted(set(raw) - set(_REQUIRED) - set(_DEFAULTS))
    if unknown:
        raise ConfigError(f"config has unknown field '{unknown[0]}'")
    missing = [name for name in _REQUIRED if name not in raw]
    if missing:
        raise ConfigError(f"config is missing required field '{missing[0]}'")
    merged = {**_DEFAULTS, **raw}
    exchange = _check_str(merged, "exchange")
    if exchange not in EXCHANGE_NAMES:
        raise _field_error("exchange", f"must be one of {', '.join(EXCHANGE_NAMES)}")
    passphrase_var = None
    if exchange == "okx":
        if merged["passphrase_var"] is None:
            raise _field_error("passphrase_var", "is required for okx")
        passphrase_var = _check_env_name(merged, "passphrase_var")
    static_ip = _check_ipv4(merged, "static_ipv4")
    source_ip = None if merged["source_ipv4"] is None else _check_ipv4(merged, "source_ipv4")
    return Config(
        bot=_check_str(merged, "bot"),
        exchange=exchange,
        key_var=_check_env_name(merged, "key_var"),
        secret_var=_check_env_name(merged, "secret_var"),
        passphrase_var=passphrase_var,
        static_ipv4=static_ip,
        source_ipv4=source_ip,
        base_url=_check_base_url(merged),
        timeout=float(_check_number(merged, "timeout", integer=False, minimum=0.001)),
        retries=_check_number(merged, "retries", integer=True, minimum=0),
        expiry_warn_days=_check_number(merged, "expiry_warn_days", integer=True, minimum=0),
        trades=_check_trades(merged),
    )


def read_config(path: str) -> Config:
    try:
        with open(path, encoding="utf-8") as handle:
            raw = json.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config {path} is not valid JSON: {exc}") from None
    return parse_config(raw)


# --------------------------------------------------------------------------
# Credentials and redaction
# --------------------------------------------------------------------------


def mask_key(key: str) -> str:
    """The only form in which a key is ever shown: its last four characters."""
    return "..." + key[-4:] if len(key) >= 8 else "..."


@dataclass(frozen=True)
class Credentials:
    key: str = field(repr=False)
    secret: str = field(repr=False)
    passphrase: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        return f"Credentials(key={mask_key(self.key)!r})"


def load_credentials(config: Config, env: Mapping[str, str], source: str) -> Credentials:
    def get(var: str) -> str:
        value = env.get(var)
        if not value:
            raise ConfigError(f"{var} is not set in {source}")
        return value

    return Credentials(
        key=get(config.key_var).strip(),
        secret=get(config.secret_var),
        passphrase=get(config.passphrase_var) if config.passphrase_var else None,
    )


class Redactor:
    """Last line of defence: scrub credentials out of any text we print."""

    def __init__(self, creds: Credentials | None) -> None:
        self._tokens: list[tuple[str, str]] = []
        if creds is None:
            return
        for token in (creds.secret, creds.passphrase):
            self._add_secret(token)
        if len(creds.key) >= 4:
            self._tokens.append((creds.key, mask_key(creds.key)))
        self._tokens.sort(key=lambda pair: -len(pair[0]))

    def _add_secret(self, token: str | None) -> None:
        if not token:
            return
        self._tokens.append((token, "[redacted]"))
        for piece in re.split(r"\s+|\\n", token):  # e.g. the lines of a PEM key
            if len(piece) >= 8 and not piece.startswith("-----"):
                self._tokens.append((piece, "[redacted]"))

    def clean(self, text: str) -> str:
        for token, replacement in self._tokens:
            text = text.replace(token, replacement)
        return text


# --------------------------------------------------------------------------
# HTTP with bounded retries
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpRequest:
    method: str
    url: str
    headers: Mapping[str, str] = field(repr=False)
    body: bytes | None = field(default=None, repr=False)
    source_ipv4: str | None = None  # send from this address (None: the kernel's choice)


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str]  # lower-cased names
    body: bytes = field(repr=False)


Sender = Callable[[HttpRequest, float], HttpResponse]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Exchange APIs do not redirect; following one would resend the key elsewhere."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def ipv4_connection(address: tuple[str, int], timeout: Any = socket._GLOBAL_DEFAULT_TIMEOUT,
                    source_address: tuple[str, int] | None = None) -> socket.socket:
    """socket.create_connection, over IPv4 only (the whitelist is IPv4)."""
    host, port = address
    try:
        candidates = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror:
        raise OSError(f"{host} has no IPv4 address (keyaudit goes out over IPv4 only, "
                      "the address the exchange whitelists)") from None
    problem: OSError = OSError(f"{host} has no IPv4 address")
    for family, kind, proto, _, sockaddr in candidates:
        sock = socket.socket(family, kind, proto)
        try:
            if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:
                sock.settimeout(timeout)
            if source_address:
                try:
                    sock.bind(source_address)
                except OSError:
                    raise OSError(f"cannot send from {source_address[0]}: that address is "
                                  "not on this host") from None
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            sock.close()
            problem = exc
    raise problem


def _ipv4_handlers(source_ipv4: str | None) -> list[urllib.request.BaseHandler]:
    """urllib handlers whose connections go out over IPv4, from source_ipv4 if set."""
    source = (source_ipv4, 0) if source_ipv4 else None

    class HTTP(http.client.HTTPConnection):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, source_address=source, **kwargs)
            self._create_connection = ipv4_connection

    class HTTPS(http.client.HTTPSConnection):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, source_address=source, **kwargs)
            self._create_connection = ipv4_connection  # TLS is wrapped on top, host name intact

    class HTTPHandler(urllib.request.HTTPHandler):
        def http_open(self, req: urllib.request.Request) -> Any:
            return self.do_open(HTTP, req)

    class HTTPSHandler(urllib.request.HTTPSHandler):
        def https_open(self, req: urllib.request.Request) -> Any:
            return self.do_open(HTTPS, req, context=self._context)

    return [HTTPHandler(), HTTPSHandler()]


def urllib_send(request: HttpRequest, timeout: float) -> HttpResponse:
    """Send one request; any status is a response, network trouble is transient."""
    headers = {"User-Agent": USER_AGENT, **request.headers}  # urllib's own is one CDNs' bot checks refuse
    req = urllib.request.Request(request.url, data=request.body, headers=headers, method=request.method)
    opener = urllib.request.build_opener(_NoRedirect, *_ipv4_handlers(request.source_ipv4))
    try:
        with opener.open(req, timeout=timeout) as resp:
            return HttpResponse(resp.status, _lower(resp.headers.items()), resp.read())
    except urllib.error.HTTPError as exc:
        try:
            body = exc.read()
        except (OSError, http.client.HTTPException):
            body = b""
        return HttpResponse(exc.code, _lower((exc.headers or {}).items()), body)
    except TimeoutError:
        raise TransientError(f"timed out after {timeout:g}s") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            raise TransientError(f"timed out after {timeout:g}s") from None
        raise TransientError(f"connection failed: {reason}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise TransientError(f"connection failed: {type(exc).__name__}") from None


def _lower(items: Any) -> dict[str, str]:
    return {str(name).lower(): str(value) for name, value in items}


def backoff_delay(retry_number: int) -> float:
    """0.5 s, 1 s, 2 s, 4 s, 4 s ... before retry 1, 2, 3 ..."""
    return min(BACKOFF_BASE_S * 2.0 ** (retry_number - 1), BACKOFF_MAX_S)


def send_with_retries(build: Callable[[], HttpRequest], *, send: Sender, timeout: float,
                      retries: int, sleep: Callable[[float], None], label: str) -> HttpResponse:
    """Retry connection errors, timeouts and 5xx; never retry 4xx.

    The request is rebuilt (re-signed) for every attempt because timestamps,
    nonces and JWTs are single-use.
    """
    problem = "no attempt made"
    attempts = retries + 1
    for attempt in range(attempts):
        if attempt:
            sleep(backoff_delay(attempt))
        try:
            response = send(build(), timeout)
        except TransientError as exc:
            problem = str(exc)
            continue
        if response.status >= 500:
            problem = f"HTTP {response.status}"
            continue
        return response
    plural = "s" if attempts != 1 else ""
    raise CheckError(f"could not reach {label}: {problem} ({attempts} attempt{plural})")


# --------------------------------------------------------------------------
# Findings shared by the exchanges
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    level: str  # WARN or FAIL
    message: str


_ANY_IP = ("*", "0.0.0.0", "0.0.0.0/0", "::/0", "::")


def allowlist_findings(entries: Sequence[str], static_ip: str, fence: bool = False) -> list[Finding]:
    """FAIL on no restriction or a list without this host; WARN on extra entries (FAIL when ``fence``: during a
    rebuild an extra entry may be the old server, which could still trade with the key)."""
    cleaned = [str(entry).strip() for entry in entries if str(entry).strip()]
    if not cleaned or any(entry in _ANY_IP for entry in cleaned):
        return [Finding(FAIL, "no IP restriction (key works from any IP)")]
    host = ipaddress.ip_address(static_ip)
    covering, others = [], []
    for entry in cleaned:
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            others.append(entry)
            continue
        if network.prefixlen == 0:
            return [Finding(FAIL, "no IP restriction (key works from any IP)")]
        if host in network:
            covering.append(entry)
        if host not in network or network.num_addresses > 1:
            others.append(entry)  # a range also admits hosts other than this one
    if not covering:
        return [Finding(FAIL, f"IP whitelist does not include {static_ip}")]
    if others and fence:
        return [Finding(FAIL, "IP whitelist also allows " + ", ".join(others) + " (rebuild fence: the old server "
                        f"could still trade with this key; remove every entry but {static_ip})")]
    if others:
        return [Finding(WARN, "IP whitelist also allows " + ", ".join(others))]
    return []


def expiry_findings(expires: dt.datetime | None, now: dt.datetime, warn_days: int,
                    what: str = "key") -> list[Finding]:
    if expires is None:
        return []
    day = expires.strftime("%Y-%m-%d")
    remaining = expires - now
    if remaining.total_seconds() <= 0:
        return [Finding(WARN, f"{what} expired on {day}")]
    if remaining <= dt.timedelta(days=warn_days):
        return [Finding(WARN, f"{what} expires in {remaining.days} days ({day})")]
    return []


def _parse_timestamp(value: Any) -> dt.datetime | None:
    """ISO-8601 text or unix seconds/milliseconds; empty, 0 and None mean 'never'."""
    if value in (None, "", 0, "0"):
        return None
    if isinstance(value, (int, float)) or (isinstance(value, str) and value.isdigit()):
        seconds = float(value)
        if seconds > 1e11:  # milliseconds
            seconds /= 1000
        return dt.datetime.fromtimestamp(seconds, dt.UTC)
    parsed = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _require(payload: Mapping[str, Any], name: str, kind: type | tuple[type, ...],
             label: str) -> Any:
    """Fail closed: a field we rely on must be present with the right type."""
    value = payload.get(name)
    if not isinstance(value, kind):
        raise CheckError(f"{label} response lacks a usable '{name}' field")
    return value


# --------------------------------------------------------------------------
# Signing primitives: HMAC
# --------------------------------------------------------------------------


def hmac_digest(key: bytes, message: bytes, algorithm: str = "sha256") -> bytes:
    return hmac.new(key, message, algorithm).digest()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


# --------------------------------------------------------------------------
# Signing primitives: private keys (Debian's python3-cryptography)
# --------------------------------------------------------------------------
# Ed25519 (Binance, Coinbase), RSA (Binance, Bybit) and EC P-256 (Coinbase)
# keys are read and used with the cryptography package, imported only when a
# key needs it: HMAC keys need nothing beyond the standard library.

_PEM = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.S)


def _crypto() -> types.SimpleNamespace:
    try:
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
    except ImportError:
        raise ValueError("a private key needs Python's cryptography package on the host "
                         "(Debian: apt-get install python3-cryptography)") from None
    return types.SimpleNamespace(hashes=hashes, serialization=serialization, ec=ec,
                                 ed25519=ed25519, padding=padding, rsa=rsa,
                                 decode_dss_signature=decode_dss_signature)


def is_pem(text: str) -> bool:
    return "-----BEGIN " in text


def load_private_key(text: str) -> Any:
    """A PEM private key (PKCS#8, SEC1 or PKCS#1; Ed25519, RSA or EC).

    Raises ValueError with a message that never contains key material.
    """
    if "\n" not in text and "\\n" in text:  # pasted with literal \n escapes
        text = text.replace("\\n", "\n")
    match = _PEM.search(text)
    if not match:
        raise ValueError("not a PEM private key")
    if "ENCRYPTED" in match.group(1) or "Proc-Type:" in match.group(2):
        raise ValueError("encrypted private keys are not supported")
    crypto = _crypto()
    try:
        return crypto.serialization.load_pem_private_key(match.group(0).encode(), password=None)
    except Exception:  # noqa: BLE001 - its messages are not ours to show
        raise ValueError(f"the PEM {match.group(1)} cannot be read") from None


def key_kind(key: Any) -> str:
    """ed25519, rsa, p256, or what the key is when it is none of those."""
    crypto = _crypto()
    if isinstance(key, crypto.ed25519.Ed25519PrivateKey):
        return "ed25519"
    if isinstance(key, crypto.rsa.RSAPrivateKey):
        return "rsa"
    if isinstance(key, crypto.ec.EllipticCurvePrivateKey):
        return "p256" if key.curve.name == "secp256r1" else f"EC {key.curve.name}"
    return type(key).__name__


def asymmetric_key(text: str, exchange: str, kinds: Sequence[str]) -> Any:
    """The exchange secret as a private key of one of ``kinds``; ConfigError otherwise."""
    try:
        key = load_private_key(text)
        kind = key_kind(key)
    except ValueError as exc:
        raise ConfigError(f"the {exchange} secret is unusable: {exc}") from None
    if kind not in kinds:
        raise ConfigError(f"the {exchange} secret is an {kind} key; {exchange} takes "
                          f"{' or '.join(kinds)} keys")
    return key


def sign(key: Any, message: bytes) -> bytes:
    """Ed25519; RSASSA-PKCS1-v1_5 with SHA-256; ECDSA P-256 with SHA-256 as r || s (JWS)."""
    crypto = _crypto()
    kind = key_kind(key)
    if kind == "ed25519":
        return key.sign(message)
    if kind == "rsa":
        return key.sign(message, crypto.padding.PKCS1v15(), crypto.hashes.SHA256())
    r, s = crypto.decode_dss_signature(key.sign(message, crypto.ec.ECDSA(crypto.hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def coinbase_private_key(secret: str) -> Any:
    """A CDP key secret: an EC P-256 PEM (ECDSA keys) or base64 of Ed25519's seed || public key."""
    if is_pem(secret) or "\\n" in secret:
        return asymmetric_key(secret, "coinbase", ("p256", "ed25519"))
    try:
        raw = base64.b64decode(secret.strip(), validate=True)
    except binascii.Error:
        raise ConfigError("the coinbase secret is unusable: neither a PEM private key nor "
                          "an Ed25519 key (base64)") from None
    if len(raw) != 64:
        raise ConfigError("the coinbase secret is unusable: an Ed25519 key is 64 bytes in "
                          f"base64, this is {len(raw)}")
    try:
        return _crypto().ed25519.Ed25519PrivateKey.from_private_bytes(raw[:32])
    except ValueError as exc:
        raise ConfigError(f"the coinbase secret is unusable: {exc}") from None


def build_cdp_jwt(key_name: str, private_key: Any, uri: str, now: int,
                  nonce: str | None = None) -> str:
    """A Coinbase Developer Platform JWT for one REST request (ES256 or EdDSA).

    Per https://docs.cdp.coinbase.com/get-started/authentication/jwt-authentication
    and coinbase-advanced-py's jwt_generator: header {alg ES256 (EdDSA for an
    Ed25519 key), kid = key name, nonce = random hex, typ JWT}; claims {sub = key
    name, iss "cdp", nbf = now, exp = now + 120, uri = "GET api.coinbase.com/..."}.
    """
    alg = "EdDSA" if key_kind(private_key) == "ed25519" else "ES256"
    header = {"alg": alg, "kid": key_name, "nonce": nonce or secrets.token_hex(), "typ": "JWT"}
    claims = {"sub": key_name, "iss": "cdp", "nbf": now, "exp": now + 120, "uri": uri}
    signing_input = ".".join(
        b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims))
    return signing_input + "." + b64url(sign(private_key, signing_input.encode("ascii")))


# --------------------------------------------------------------------------
# Exchanges
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Context:
    static_ipv4: str
    expiry_warn_days: int
    now: dt.datetime
    trades: tuple[str, ...]
    fence: bool = False  # a rebuild's fence: an IP whitelist entry other than static_ipv4 is a FAIL


class Exchange:
    """One exchange: how to sign the request, read errors, and judge the key."""

    name = ""
    default_base_url = ""
    path = ""
    auth_codes: frozenset[str] = frozenset()
    skew_codes: frozenset[str] = frozenset()
    private_key_kinds: tuple[str, ...] = ()  # besides HMAC secrets: the private keys it takes (PEM)
    shows_allowlist = False  # its answer lists the key's IP whitelist (else only whether it has one, or nothing)

    def __init__(self, creds: Credentials) -> None:
        self.creds = creds
        self._private_key = (asymmetric_key(creds.secret, self.name, self.private_key_kinds)
                             if self.private_key_kinds and is_pem(creds.secret) else None)

    def signature(self, message: bytes) -> str:
        """HMAC-SHA256 hex with an HMAC secret; base64 of the private key's signature otherwise."""
        if self._private_key is None:
            return hmac_digest(self.creds.secret.encode(), message).hex()
        return b64(sign(self._private_key, message))

    def build_request(self, base_url: str, now: float) -> HttpRequest:
        raise NotImplementedError

    def error_of(self, status: int, body: Any) -> tuple[str, str] | None:
        """(code, message) if the decoded body is an exchange error."""
        raise NotImplementedError

    def payload_of(self, body: Any) -> Any:
        return body

    def evaluate(self, payload: Mapping[str, Any], ctx: Context) -> list[Finding]:
        raise NotImplementedError

    def check_response(self, resp: HttpResponse, now: float) -> Mapping[str, Any]:
        body = _decode_json(resp.body)
        error = self.error_of(resp.status, body)
        if error is None and resp.status != 200:
            error = (f"HTTP {resp.status}", _short_text(resp.body))
        if error is None:
            payload = self.payload_of(body)
            if not isinstance(payload, dict):
                raise CheckError(f"{self.name} returned an unexpected response shape")
            return payload
        code, message = error
        if resp.status == 451 or (resp.status == 403 and body is None):
            raise CheckError(f"{self.name} refused this server's location (HTTP {resp.status} from its network, "
                             "not an answer about the key): the exchange does not serve the country or network "
                             "this server is in; run the bot from a server in a region it serves")
        text = f"{code} {message}".strip()
        if code in self.skew_codes:
            raise ClockSkewError(f"{self.name} rejected the request time: {text}; "
                                 "the clock on this host is off, check time sync "
                                 "(timedatectl status, chronyc tracking)")
        if code in self.auth_codes or resp.status in (401, 403):
            skew = _server_clock_skew(resp, now)
            if skew is not None and abs(skew) > CLOCK_SKEW_TOLERANCE_S:
                raise ClockSkewError(
                    f"{self.name} rejected the key ({text}) and its clock differs from "
                    f"this host's by {skew:+.0f}s; check time sync "
                    "(timedatectl status, chronyc tracking)")
            raise AuthError(f"{self.name} rejected the key: {text}{self.auth_hint(code)}")
        raise CheckError(f"{self.name} returned an error: {text}")

    def auth_hint(self, code: str) -> str:
        return ""


def _decode_json(raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None


def _short_text(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace")
    text = re.sub(r"<[^>]*>", " ", text)  # HTML error pages
    return " ".join(text.split())[:200]


MAIN_ACCOUNT = ("the key belongs to the main account: trade from a sub-account holding only the bot's funds, so a "
                "leaked key cannot reach the rest")


def _server_clock_skew(resp: HttpResponse, now: float) -> float | None:
    """Server Date header minus local time, in seconds, if the server sent one."""
    try:
        parsed = email.utils.parsedate_to_datetime(resp.headers.get("date", ""))
    except (TypeError, ValueError, IndexError):
        return None
    return float(parsed.timestamp() - now) if parsed else None


def _millis(now: float) -> int:
    return int(now * 1000)


class Binance(Exchange):
    """GET /sapi/v1/account/apiRestrictions (Wallet: "Get API Key Permission").

    Docs: developers.binance.com/docs/wallet/account/api-key-permission and
    .../binance-spot-api-docs/rest-api/endpoint-security-type: HMAC-SHA256 hex
    of the query string (timestamp, recvWindow), appended as the last
    parameter "signature"; key in the X-MBX-APIKEY header.  An Ed25519 or RSA
    key (the secret is its PEM private key; .../faqs/api_key_types) signs the
    same string, Ed25519 or RSASSA-PKCS1-v1_5 SHA-256, base64, URL-encoded.  The response only
    says whether an IP restriction exists (ipRestrict), not which IPs; a
    restricted key that answers at all is reachable from this host.
    """

    name = "binance"
    default_base_url = "https://api.binance.com"
    path = "/sapi/v1/account/apiRestrictions"
    recv_window_ms = 5000
    auth_codes = frozenset({"-1022", "-2008", "-2014", "-2015"})
    skew_codes = frozenset({"-1021"})
    private_key_kinds = ("ed25519", "rsa")

    def build_request(self, base_url: str, now: float) -> HttpRequest:
        query = urllib.parse.urlencode(
            {"timestamp": _millis(now), "recvWindow": self.recv_window_ms})
        signature = urllib.parse.quote(self.signature(query.encode()), safe="")  # base64 has + / =
        return HttpRequest("GET", f"{base_url}{self.path}?{query}&signature={signature}",
                           {"X-MBX-APIKEY": self.creds.key})

    def error_of(self, status: int, body: Any) -> tuple[str, str] | None:
        if status != 200 and isinstance(body, dict) and "code" in body:
            return str(body["code"]), str(body.get("msg", ""))
        return None

    def auth_hint(self, code: str) -> str:
        if code == "-2015":
            return " (wrong key, or this host's IP is not on the key's whitelist)"
        return ""

    def evaluate(self, payload: Mapping[str, Any], ctx: Context) -> list[Finding]:
        flags = {
            "enableWithdrawals": "withdrawals enabled",
            "enableInternalTransfer": "internal transfer enabled",
            "permitsUniversalTransfer": "universal transfer enabled",
        }
        findings = [Finding(FAIL, text) for name, text in flags.items()
                    if _require(payload, name, bool, self.name)]
        if not _require(payload, "ipRestrict", bool, self.name):
            findings.append(Finding(FAIL, "no IP restriction (key works from any IP)"))
        for market, flag in (("margin", "enableMargin"), ("futures", "enableFutures")):
            if payload.get(flag) is True and market not in ctx.trades:
                findings.append(Finding(WARN, f"{market} trading enabled ({flag}) but the bot "
                                        f"does not declare it: turn it off for this key at "
                                        f"Binance, or add {market} to the bot's trades"))
        expiry = _parse_timestamp(payload.get("tradingAuthorityExpirationTime"))
        return findings + expiry_findings(expiry, ctx.now, ctx.expiry_warn_days,
                                          "spot trading permission")


class Bybit(Exchange):
    """GET /v5/user/query-api ("Get API Key Information").

    Docs: bybit-exchange.github.io/docs/v5/guide (authentication) and
    .../docs/v5/user/apikey-info.  Signature: HMAC-SHA256 hex of
    timestamp + api_key + recv_window + queryString, sent in X-BAPI-SIGN with
    X-BAPI-API-KEY, X-BAPI-TIMESTAMP and X-BAPI-RECV-WINDOW; a self-generated
    RSA key (the secret is its PEM private key) signs the same string with
    RSASSA-PKCS1-v1_5 SHA-256, base64 (pybit's generate_signature).  Errors
    come back as HTTP 200 with a non-zero retCode.
    """

    name = "bybit"
    shows_allowlist = True
    default_base_url = "https://api.bybit.com"
    path = "/v5/user/query-api"
    recv_window_ms = 5000
    auth_codes = frozenset({"10003", "10004", "10005", "10007", "10009", "10010", "33004"})
    skew_codes = frozenset({"10002"})
    private_key_kinds = ("rsa",)
    transfer_permissions = ("AccountTransfer", "SubMemberTransfer", "SubMemberTransferList")

    def build_request(self, base_url: str, now: float) -> HttpRequest:
        timestamp, recv_window, query = str(_millis(now)), str(self.recv_window_ms), ""
        prehash = (timestamp + self.creds.key + recv_window + query).encode()
        signature = self.signature(prehash)
        headers = {"X-BAPI-API-KEY": self.creds.key, "X-BAPI-TIMESTAMP": timestamp,
                   "X-BAPI-RECV-WINDOW": recv_window, "X-BAPI-SIGN": signature,
                   "X-BAPI-SIGN-TYPE": "2"}
        return HttpRequest("GET", base_url + self.path, headers)

    def error_of(self, status: int, body: Any) -> tuple[str, str] | None:
        if isinstance(body, dict) and body.get("retCode", 0) != 0:
            return str(body["retCode"]), str(body.get("retMsg", ""))
        return None

    def payload_of(self, body: Any) -> Any:
        return body.get("result") if isinstance(body, dict) else None

    def evaluate(self, payload: Mapping[str, Any], ctx: Context) -> list[Finding]:
        permissions = _require(payload, "permissions", dict, self.name)
        granted = [str(p).lower() for group in permissions.values()
                   if isinstance(group, list) for p in group]
        findings = []
        if "withdraw" in granted:
            findings.append(Finding(FAIL, "withdrawals enabled"))
        # Wallet permissions that move funds: between the account's own wallets, and to or from sub-accounts
        # (funds sent to a sub-account leave this key's account). A trading bot needs none of them.
        findings += [Finding(FAIL, f"transfers enabled (Wallet: {name})") for name in self.transfer_permissions
                     if name.lower() in granted]
        ips = _require(payload, "ips", list, self.name)
        findings += allowlist_findings(ips, ctx.static_ipv4, ctx.fence)
        if payload.get("isMaster") is True:
            findings.append(Finding(WARN, MAIN_ACCOUNT))
        try:
            expires = _parse_timestamp(payload.get("expiredAt"))
        except ValueError:
            return findings + [Finding(WARN, "could not read the key's expiredAt")]
        return findings + expiry_findings(expires, ctx.now, ctx.expiry_warn_days)


class Okx(Exchange):
    """GET /api/v5/account/config ("Get account configuration").

    Docs: okx.com/docs-v5/en/#overview-rest-authentication: OK-ACCESS-SIGN is
    base64(HMAC-SHA256(timestamp + method + requestPath + body)) with the
    timestamp in ISO-8601 UTC milliseconds, also sent as OK-ACCESS-TIMESTAMP,
    plus OK-ACCESS-KEY and OK-ACCESS-PASSPHRASE.  The response's "perm" is a
    comma-separated list (read_only, trade, withdraw) and "ip" a
    comma-separated list, "" when no IP is bound.  Requests more than 30 s off
    the server clock get 50102.
    """

    name = "okx"
    shows_allowlist = True
    default_base_url = "https://www.okx.com"
    path = "/api/v5/account/config"
    auth_codes = frozenset({"50100", "50101", "50103", "50104", "50105", "50106", "50107",
                            "50108", "50109", "50110", "50111", "50112", "50113", "50114",
                            "50119"})
    skew_codes = frozenset({"50102"})

    def build_request(self, base_url: str, now: float) -> HttpRequest:
        stamp = dt.datetime.fromtimestamp(now, dt.UTC)
        timestamp = stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"
        prehash = timestamp + "GET" + self.path + ""
        signature = b64(hmac_digest(self.creds.secret.encode(), prehash.encode()))
        headers = {"OK-ACCESS-KEY": self.creds.key, "OK-ACCESS-SIGN": signature,
                   "OK-ACCESS-TIMESTAMP": timestamp,
                   "OK-ACCESS-PASSPHRASE": self.creds.passphrase or "",
                   "Content-Type": "application/json"}
        return HttpRequest("GET", base_url + self.path, headers)

    def error_of(self, status: int, body: Any) -> tuple[str, str] | None:
        if isinstance(body, dict) and str(body.get("code", "0")) != "0":
            return str(body["code"]), str(body.get("msg", ""))
        return None

    def payload_of(self, body: Any) -> Any:
        data = body.get("data") if isinstance(body, dict) else None
        return data[0] if isinstance(data, list) and data else None

    def evaluate(self, payload: Mapping[str, Any], ctx: Context) -> list[Finding]:
        perms = [p.strip() for p in _require(payload, "perm", str, self.name).split(",")]
        findings = [Finding(FAIL, "withdrawals enabled")] if "withdraw" in perms else []
        ips = _require(payload, "ip", str, self.name).split(",")
        findings += allowlist_findings(ips, ctx.static_ipv4, ctx.fence)
        uid, main = payload.get("uid"), payload.get("mainUid")
        return findings + ([Finding(WARN, MAIN_ACCOUNT)] if uid and uid == main else [])


class Kraken(Exchange):
    """POST /0/private/GetApiKeyInfo ("Get API Key Info").

    Docs: docs.kraken.com/api-reference/account-data/get-api-key-info and the
    spot REST authentication guide: API-Sign = base64(HMAC-SHA512(
    base64decode(secret), uri_path + SHA256(nonce + postdata))).  The
    documented result holds "permissions" (e.g. "withdraw-funds"),
    "ipAllowlist" (entries may be CIDRs) and "validUntil" (unix seconds, "0"
    for none).  Errors are an "error" list such as "EAPI:Invalid key".

    The nonce is in milliseconds like most clients, so that the bot sharing
    this key does not afterwards send nonces smaller than ours; it is kept
    strictly increasing across retries within this run.
    """

    name = "kraken"
    shows_allowlist = True
    default_base_url = "https://api.kraken.com"
    path = "/0/private/GetApiKeyInfo"
    auth_codes = frozenset({"EAPI:Invalid key", "EAPI:Invalid signature",
                            "EGeneral:Permission denied", "EAPI:Invalid OTP",
                            "EAPI:Bad request"})
    skew_codes = frozenset({"EAPI:Invalid nonce"})

    def __init__(self, creds: Credentials) -> None:
        super().__init__(creds)
        try:
            self._secret = base64.b64decode(creds.secret.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError("the kraken secret is not valid base64") from None
        self._last_nonce = 0

    def _nonce(self, now: float) -> int:
        self._last_nonce = max(_millis(now), self._last_nonce + 1)
        return self._last_nonce

    def build_request(self, base_url: str, now: float) -> HttpRequest:
        nonce = str(self._nonce(now))
        postdata = urllib.parse.urlencode({"nonce": nonce})
        inner = hashlib.sha256((nonce + postdata).encode()).digest()
        signature = b64(hmac_digest(self._secret, self.path.encode() + inner, "sha512"))
        headers = {"API-Key": self.creds.key, "API-Sign": signature,
                   "Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
        return HttpRequest("POST", base_url + self.path, headers, postdata.encode())

    def error_of(self, status: int, body: Any) -> tuple[str, str] | None:
        # Each entry is SEVERITY CATEGORY:MESSAGE; severity W is a warning that comes with a result.
        errors = [str(e) for e in body.get("error") or [] if not str(e).startswith("W")] \
            if isinstance(body, dict) else None
        if errors:
            return errors[0], ""
        return None

    def payload_of(self, body: Any) -> Any:
        return body.get("result") if isinstance(body, dict) else None

    def evaluate(self, payload: Mapping[str, Any], ctx: Context) -> list[Finding]:
        permissions = [str(p).lower() for p in
                       _require(payload, "permissions", list, self.name)]
        findings = []
        if any("withdraw" in p for p in permissions):
            findings.append(Finding(FAIL, "withdrawals enabled"))
        allow = _require(payload, "ipAllowlist", list, self.name)
        findings += allowlist_findings(allow, ctx.static_ipv4, ctx.fence)
        try:
            expires = _parse_timestamp(payload.get("validUntil"))
        except ValueError:
            return findings + [Finding(WARN, "could not read the key's validUntil")]
        return findings + expiry_findings(expires, ctx.now, ctx.expiry_warn_days)


class Coinbase(Exchange):
    """GET /api/v3/brokerage/key_permissions (Advanced Trade "Get API Key Permissions").

    Docs: docs.cdp.coinbase.com/api-reference/advanced-trade-api/rest-api/
    data-api/get-api-key-permissions; authenticated with a CDP JWT (ES256 for
    an ECDSA key, EdDSA for an Ed25519 one) in "Authorization: Bearer" (see
    build_cdp_jwt).  The response has can_view,
    can_trade, can_transfer, portfolio_uuid, portfolio_type (DEFAULT: the
    account's primary portfolio, WARN); it says nothing about IP allowlists.  A bad JWT gets HTTP 401 "Unauthorized".
    """

    name = "coinbase"
    default_base_url = "https://api.coinbase.com"
    path = "/api/v3/brokerage/key_permissions"

    def __init__(self, creds: Credentials) -> None:
        super().__init__(creds)
        self._private_key = coinbase_private_key(creds.secret)

    def build_request(self, base_url: str, now: float) -> HttpRequest:
        host = urllib.parse.urlsplit(base_url).netloc
        token = build_cdp_jwt(self.creds.key, self._private_key, f"GET {host}{self.path}",
                              int(now))
        return HttpRequest("GET", base_url + self.path, {"Authorization": f"Bearer {token}"})

    def error_of(self, status: int, body: Any) -> tuple[str, str] | None:
        if status != 200 and isinstance(body, dict):
            message = body.get("message") or body.get("error_details") or body.get("error")
            return f"HTTP {status}", str(message or "")
        return None

    def evaluate(self, payload: Mapping[str, Any], ctx: Context) -> list[Finding]:
        findings = []
        if _require(payload, "can_transfer", bool, self.name):
            findings.append(Finding(FAIL, "transfers enabled (can_transfer)"))
        findings.append(Finding(WARN, "IP restriction cannot be checked via the Coinbase API; "
                                      "check the key's IP allowlist in the CDP portal"))
        if payload.get("portfolio_type") == "DEFAULT":  # the account's primary portfolio
            findings.append(Finding(WARN, "the key trades the default portfolio: trade from a portfolio "
                                          "holding only the bot's funds (a key made for it), so a leaked "
                                          "key cannot reach the rest"))
        return findings


EXCHANGES: Mapping[str, type[Exchange]] = types.MappingProxyType({
    cls.name: cls for cls in (Binance, Bybit, Okx, Kraken, Coinbase)})


# --------------------------------------------------------------------------
# Audit
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditResult:
    status: str
    reasons: tuple[str, ...]


def summarize(findings: Sequence[Finding]) -> AuditResult:
    fails = [f.message for f in findings if f.level == FAIL]
    warns = [f.message for f in findings if f.level == WARN]
    if fails:
        return AuditResult(FAIL, tuple(fails + warns))
    return AuditResult(WARN if warns else PASS, tuple(warns))


def audit(config: Config, creds: Credentials, *, send: Sender = urllib_send,
          sleep: Callable[[float], None] = time.sleep,
          clock: Callable[[], float] = time.time, fence: bool = False) -> AuditResult:
    """Ask the exchange about the key; raises CheckError if it cannot tell."""
    exchange = EXCHANGES[config.exchange](creds)
    base_url = config.base_url or exchange.default_base_url
    response = send_with_retries(
        lambda: dataclasses.replace(exchange.build_request(base_url, clock()),
                                    source_ipv4=config.source_ipv4),
        send=send, timeout=config.timeout, retries=config.retries, sleep=sleep,
        label=config.exchange)
    payload = exchange.check_response(response, clock())
    now = dt.datetime.fromtimestamp(clock(), dt.UTC)
    ctx = Context(config.static_ipv4, config.expiry_warn_days, now, config.trades, fence)
    return summarize(exchange.evaluate(payload, ctx))


# --------------------------------------------------------------------------
# Output and CLI
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Report:
    bot: str | None
    exchange: str | None
    key: str | None  # already masked
    status: str
    reasons: tuple[str, ...]
    checked_at: str

    def as_text(self) -> str:
        line = (f"keyaudit {self.bot or '?'} {self.exchange or '?'} "
                f"key {self.key or '?'}: {self.status.upper()}")
        return line + (" " + "; ".join(self.reasons) if self.reasons else "")

    def as_json(self) -> str:
        return json.dumps({"bot": self.bot, "exchange": self.exchange, "key": self.key,
                           "status": self.status, "reasons": list(self.reasons),
                           "checked_at": self.checked_at}, sort_keys=False)


def _iso_utc(timestamp: float) -> str:
    moment = dt.datetime.fromtimestamp(timestamp, dt.UTC).replace(microsecond=0)
    return moment.isoformat().replace("+00:00", "Z")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keyaudit", description="Check with the exchange that a bot's API key "
        "cannot withdraw and only works from this server's static IP.")
    parser.add_argument("--config", required=True, help="CONFIG.json (not secret)")
    parser.add_argument("--env-file", required=True,
                        help="systemd EnvironmentFile with the secrets, or - for the "
                             "environment of this process")
    parser.add_argument("--json", action="store_true", help="print a JSON object")
    parser.add_argument("--allow-unchecked", action="store_true",
                        help="exit 0 (with a warning) when the exchange cannot be asked")
    parser.add_argument("--fence", action="store_true",
                        help="rebuild fence: an IP whitelist entry other than static_ipv4 is a FAIL, not a WARN")
    return parser


@dataclass
class _Run:
    """What is known so far, for reporting whatever happens."""

    config: Config | None = None
    creds: Credentials | None = None


def _run(args: argparse.Namespace, run: _Run, environ: Mapping[str, str], send: Sender,
         sleep: Callable[[float], None], clock: Callable[[], float]) -> AuditResult:
    run.config = read_config(args.config)
    if args.env_file == "-":
        env, source = environ, "the environment"
    else:
        env, source = read_env_file(args.env_file), args.env_file
    run.creds = load_credentials(run.config, env, source)
    return audit(run.config, run.creds, send=send, sleep=sleep, clock=clock, fence=args.fence)


def main(argv: Sequence[str] | None = None, *, environ: Mapping[str, str] | None = None,
         send: Sender = urllib_send, sleep: Callable[[float], None] = time.sleep,
         clock: Callable[[], float] = time.time, stdout: TextIO | None = None,
         stderr: TextIO | None = None) -> int:
    out, err = stdout or sys.stdout, stderr or sys.stderr
    args = build_parser().parse_args(argv)
    run = _Run()
    exit_code, warning = EXIT_UNCHECKED, None
    try:
        result = _run(args, run, os.environ if environ is None else environ, send, sleep,
                      clock)
        exit_code = EXIT_FAIL if result.status == FAIL else EXIT_OK
    except ConfigError as exc:
        result = AuditResult(ERROR, (str(exc),))
        warning = f"keyaudit: {exc}"
    except CheckError as exc:
        reasons: tuple[str, ...] = (str(exc),)
        if args.allow_unchecked:
            exit_code = EXIT_OK
            reasons += ("not verified; continuing because of --allow-unchecked",)
            warning = "keyaudit: WARNING: could not check the key; continuing because " \
                      "--allow-unchecked is set"
        result = AuditResult(ERROR, reasons)
    except KeyboardInterrupt:
        result = AuditResult(ERROR, ("interrupted",))
    except Exception as exc:  # noqa: BLE001 - never show a traceback, it may hold secrets
        result = AuditResult(ERROR, (f"internal error ({type(exc).__name__})",))
    report = Report(
        bot=run.config.bot if run.config else None,
        exchange=run.config.exchange if run.config else None,
        key=mask_key(run.creds.key) if run.creds else None,
        status=result.status, reasons=result.reasons, checked_at=_iso_utc(clock()))
    redactor = Redactor(run.creds)
    print(redactor.clean(report.as_json() if args.json else report.as_text()), file=out)
    if warning:
        print(redactor.clean(warning), file=err)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
