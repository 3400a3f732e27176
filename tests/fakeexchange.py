#!/usr/bin/env python3
"""A fake exchange API server for keyaudit tests.

It serves the five key-introspection endpoints keyaudit uses and checks every
request the way the exchange does (signature, timestamp window, passphrase,
nonce, JWT), answering failures in that exchange's own error format:

    binance  GET  /sapi/v1/account/apiRestrictions   HMAC-SHA256, Ed25519 or RSA
                                                     query signature
    bybit    GET  /v5/user/query-api                 X-BAPI-* headers (HMAC or RSA)
    okx      GET  /api/v5/account/config             OK-ACCESS-* headers
    kraken   POST /0/private/GetApiKeyInfo           API-Key / API-Sign
    coinbase GET  /api/v3/brokerage/key_permissions  ES256 or EdDSA JWT

A key whose secret is a PEM private key (or, for coinbase, base64 of an Ed25519
key) is checked against its public key with the `cryptography` package, as the
exchange checks the public key it was given.

In-process use (tests)::

    with FakeExchange() as fake:                      # 127.0.0.1, ephemeral port
        fake.add_key("KEY", exchange="binance", secret="s3cret",
                     ips=["203.0.113.7"])
        fake.update_key("KEY", withdraw=True)         # change it at run time
        ... point keyaudit's base_url at fake.base_url ...
        fake.attempts("KEY")                          # requests seen for KEY

Standalone (e.g. reached from a VM at 10.0.2.2:PORT)::

    python3 tests/fakeexchange.py --port 0 --bind 0.0.0.0 --state state.json

prints the port on stdout and serves until SIGTERM/SIGINT.  The state file is
re-read on every request (write it atomically, see write_state_file), so a
test can change permissions while the server runs::

    {"clock_offset": 0, "client_ip": null,
     "keys": {"KEY": {"exchange": "binance", "secret": "s3cret", ...}}}

Per-key fields (see KEY_DEFAULTS): exchange, secret, passphrase (okx),
withdraw, internal_transfer, universal_transfer, ips ([] = unrestricted),
expires_at (unix seconds or null), fail_5xx (the first N requests get HTTP
503), slow + delay (the first N requests are answered only after `delay`
seconds), min_nonce (kraken), main_account (bybit's isMaster, okx's uid == mainUid, coinbase's DEFAULT portfolio), blocked (an HTTP status, 403 or 451: the
exchange's CDN refuses this server's location with an HTML page), override (dict merged into the result object), warnings (kraken: "W..." entries
in the reply's error list, beside a result).
fail_5xx/slow count from the moment the key's settings last changed.

Server-wide: clock_offset (seconds added to the server clock, to provoke
clock-skew errors) and client_ip (pretend requests come from this IP and
enforce each key's IP whitelist, as the real exchanges do; null = don't).
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import email.utils
import hashlib
import hmac
import ipaddress
import json
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

KEY_DEFAULTS: Mapping[str, Any] = {
    "exchange": None, "secret": None, "passphrase": None,
    "withdraw": False, "internal_transfer": False, "universal_transfer": False,
    "ips": [], "expires_at": None, "fail_5xx": 0, "slow": 0, "delay": 0.0,
    "min_nonce": 0, "override": {}, "warnings": [], "blocked": 0, "main_account": False,
}
# What a CDN in front of an exchange answers a request from a blocked country (HTTP 403, CloudFront's page), or
# Cloudflare's browser check answers a client that gives urllib's default User-Agent.
BLOCKED_PAGE = (b"<!DOCTYPE HTML><HTML><HEAD><TITLE>ERROR: The request could not be satisfied</TITLE></HEAD><BODY>"
                b"<H1>403 ERROR</H1><H2>The request could not be satisfied.</H2>The Amazon CloudFront distribution "
                b"is configured to block access from your country.</BODY></HTML>")

Reply = tuple[int, str, bytes]  # status, content type, body


def write_state_file(path: str | os.PathLike[str], state: Mapping[str, Any]) -> None:
    """Atomically replace the state file (the server re-reads it per request)."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".fakeexchange-")
    with os.fdopen(fd, "w") as handle:
        json.dump(state, handle)
    os.replace(tmp, target)


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: Mapping[str, str]  # lower-cased names
    body: bytes
    now: float  # server clock, clock_offset applied
    client_ip: str | None


@dataclass
class _Counter:
    fingerprint: str = ""
    since_change: int = 0


@dataclass
class _State:
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    clock_offset: float = 0.0
    client_ip: str | None = None


def _json_reply(status: int, payload: Any) -> Reply:
    return status, "application/json", json.dumps(payload).encode()


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ip_allowed(client_ip: str | None, ips: list[str]) -> bool:
    if client_ip is None or not ips:
        return True
    host = ipaddress.ip_address(client_ip)
    for entry in ips:
        try:
            if entry == "*" or host in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


# ---------------------------------------------------------------- asymmetric keys

def _private_key(secret: str) -> Any:
    """The key behind a secret: a PEM private key, or base64 of Ed25519's seed || public key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    if "-----BEGIN " in secret:
        return serialization.load_pem_private_key(secret.encode(), password=None)
    return ed25519.Ed25519PrivateKey.from_private_bytes(base64.b64decode(secret)[:32])


def _signature_valid(secret: str, message: bytes, signature: bytes) -> bool:
    """Verify with the public key: Ed25519, RSASSA-PKCS1-v1_5 SHA-256, or ECDSA P-256 as r || s."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    public = _private_key(secret).public_key()
    try:
        if isinstance(public, ed25519.Ed25519PublicKey):
            public.verify(signature, message)
        elif isinstance(public, rsa.RSAPublicKey):
            public.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(public, ec.EllipticCurvePublicKey) and len(signature) == 64:
            der = encode_dss_signature(int.from_bytes(signature[:32], "big"),
                                       int.from_bytes(signature[32:], "big"))
            public.verify(der, message, ec.ECDSA(hashes.SHA256()))
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _is_hmac(secret: str) -> bool:
    return "-----BEGIN " not in secret


def _b64_decode(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        return b""


# ---------------------------------------------------------------- binance

def _binance_key(req: Request) -> str | None:
    return req.headers.get("x-mbx-apikey")


def _binance_error(status: int, code: int, msg: str) -> Reply:
    return _json_reply(status, {"code": code, "msg": msg})


def binance(req: Request, key: str | None, state: dict[str, Any] | None, fake: FakeExchange) -> Reply:
    # Spot API docs, "Endpoint security type" / "Timing security".
    if not key:
        return _binance_error(401, -2014, "API-key format invalid.")
    if state is None or not _ip_allowed(req.client_ip, state["ips"]):
        return _binance_error(401, -2015, "Invalid API-key, IP, or permissions for action.")
    unsigned, sep, signature = req.query.rpartition("&signature=")
    params = dict(parse_qsl(unsigned))
    if not sep or "timestamp" not in params:
        return _binance_error(400, -1102, "Mandatory parameter 'timestamp' was not sent, "
                                          "was empty/null, or malformed.")
    recv_window = int(params.get("recvWindow", 5000))
    server_ms = int(req.now * 1000)
    timestamp = int(params["timestamp"])
    if not (timestamp < server_ms + 1000 and server_ms - timestamp <= recv_window):
        return _binance_error(400, -1021, "Timestamp for this request is outside of the "
                                          "recvWindow.")
    if _is_hmac(state["secret"]):
        expected = hmac.new(state["secret"].encode(), unsigned.encode(), hashlib.sha256).hexdigest()
        valid = hmac.compare_digest(expected, signature.lower())
    else:  # Ed25519 / RSA keys: base64, URL-encoded
        valid = _signature_valid(state["secret"], unsigned.encode(), _b64_decode(unquote(signature)))
    if not valid:
        return _binance_error(400, -1022, "Signature for this request is not valid.")
    result = {
        "ipRestrict": bool(state["ips"]), "createTime": 1623840271000,
        "enableReading": True, "enableWithdrawals": state["withdraw"],
        "enableInternalTransfer": state["internal_transfer"], "enableMargin": False,
        "enableFutures": False, "permitsUniversalTransfer": state["universal_transfer"],
        "enableVanillaOptions": False, "enableFixApiTrade": False,
        "enableFixReadOnly": False, "enableSpotAndMarginTrading": True,
        "enablePortfolioMarginTrading": False,
    }
    return _json_reply(200, {**result, **state["override"]})


# ---------------------------------------------------------------- bybit

def _bybit_key(req: Request) -> str | None:
    return req.headers.get("x-bapi-api-key")


def _bybit_reply(code: int, msg: str, result: Any, now: float) -> Reply:
    # Bybit answers errors with HTTP 200 and a non-zero retCode.
    return _json_reply(200, {"retCode": code, "retMsg": msg, "result": result,
                             "retExtInfo": {}, "time": int(now * 1000)})


def bybit(req: Request, key: str | None, state: dict[str, Any] | None, fake: FakeExchange) -> Reply:
    # v5 guide, "Authentication": server_time - recv_window <= timestamp < server_time + 1000.
    if not key or state is None:
        return _bybit_reply(10003, "API key is invalid.", {}, req.now)
    timestamp = req.headers.get("x-bapi-timestamp", "")
    recv_window = req.headers.get("x-bapi-recv-window", "5000")
    server_ms = int(req.now * 1000)
    if not timestamp.isdigit() or not (
            server_ms - int(recv_window) <= int(timestamp) < server_ms + 1000):
        return _bybit_reply(10002, "invalid request, please check your server timestamp or "
                                   f"recv_window param. req_timestamp[{timestamp}],"
                                   f"server_timestamp[{server_ms}],recv_window[{recv_window}]",
                            {}, req.now)
    origin = timestamp + key + recv_window + req.query
    if _is_hmac(state["secret"]):
        expected = hmac.new(state["secret"].encode(), origin.encode(), hashlib.sha256).hexdigest()
        valid = hmac.compare_digest(expected, req.headers.get("x-bapi-sign", ""))
    else:  # RSA keys: base64
        valid = _signature_valid(state["secret"], origin.encode(),
                                 _b64_decode(req.headers.get("x-bapi-sign", "")))
    if not valid:
        return _bybit_reply(10004, f"error sign! origin_string[{origin}]", {}, req.now)
    if not _ip_allowed(req.client_ip, state["ips"]):
        return _bybit_reply(10010, "Unmatched IP, please check your API key's bound IP "
                                   "addresses.", {}, req.now)
    wallet = ["AccountTransfer", "SubMemberTransfer"] if state["internal_transfer"] else []
    wallet += ["Withdraw"] if state["withdraw"] else []
    expires = state["expires_at"]
    result = {
        "id": "13770661", "note": "botvps", "apiKey": key, "readOnly": 0, "secret": "",
        "permissions": {"ContractTrade": ["Order", "Position"], "Spot": ["SpotTrade"],
                        "Wallet": wallet, "Options": [], "Derivatives": [],
                        "CopyTrading": [], "BlockTrade": [], "Exchange": [], "NFT": [],
                        "Affiliate": [], "Earn": []},
        "ips": state["ips"] or ["*"], "type": 1,
        "deadlineDay": max(0, int((expires - req.now) // 86400)) if expires else 0,
        "expiredAt": _iso(expires) if expires else "",
        "createdAt": "2024-01-02T03:04:05Z", "unified": 0, "uta": 1, "userID": 24617703,
        "inviterID": 0, "vipLevel": "No VIP", "mktMakerLevel": "0", "affiliateID": 0,
        "rsaPublicKey": "", "isMaster": state["main_account"],
        "parentUid": "0" if state["main_account"] else "24617700", "kycLevel": "LEVEL_DEFAULT",
        "kycRegion": "",
    }
    return _bybit_reply(0, "", {**result, **state["override"]}, req.now)


# ---------------------------------------------------------------- okx

def _okx_key(req: Request) -> str | None:
    return req.headers.get("ok-access-key")


def _okx_error(code: str, msg: str) -> Reply:
    return _json_reply(401, {"code": code, "msg": msg, "data": []})


def okx(req: Request, key: str | None, state: dict[str, Any] | None, fake: FakeExchange) -> Reply:
    # docs-v5 "REST Authentication" and the "API Class" error code table.
    if not key:
        return _okx_error("50103", 'Request header "OK-ACCESS-KEY" cannot be empty.')
    if state is None:
        return _okx_error("50111", "Invalid OK-ACCESS-KEY.")
    stamp = req.headers.get("ok-access-timestamp", "")
    try:
        sent = dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=dt.UTC).timestamp()
    except ValueError:
        return _okx_error("50112", "Invalid OK-ACCESS-TIMESTAMP.")
    if abs(req.now - sent) > 30:
        return _okx_error("50102", "Timestamp request expired.")
    if req.headers.get("ok-access-passphrase") != state["passphrase"]:
        return _okx_error("50105", 'Request header "OK-ACCESS-PASSPHRASE" incorrect.')
    path = req.path + (f"?{req.query}" if req.query else "")
    prehash = stamp + req.method + path + req.body.decode()
    expected = base64.b64encode(hmac.new(state["secret"].encode(), prehash.encode(),
                                         hashlib.sha256).digest()).decode()
    if not hmac.compare_digest(expected, req.headers.get("ok-access-sign", "")):
        return _okx_error("50113", "Invalid Sign")
    if not _ip_allowed(req.client_ip, state["ips"]):
        return _okx_error("50110", f"Your IP {req.client_ip} is not included in your API "
                                   "key's IP whitelist.")
    perm = ["read_only", "trade"] + (["withdraw"] if state["withdraw"] else [])
    config = {
        "uid": "44705892343619584" if state["main_account"] else "44705892343619585",
        "mainUid": "44705892343619584", "acctLv": "2",
        "acctStpMode": "cancel_maker", "posMode": "net_mode", "autoLoan": False,
        "greeksType": "PA", "level": "Lv1", "levelTmp": "", "ctIsoMode": "automatic",
        "mgnIsoMode": "automatic", "spotOffsetType": "", "roleType": "0",
        "traderInsts": [], "spotRoleType": "0", "spotTraderInsts": [], "opAuth": "0",
        "kycLv": "2", "label": "botvps", "ip": ",".join(state["ips"]),
        "perm": ",".join(perm), "liquidationGear": "-1", "enableSpotBorrow": False,
        "spotBorrowAutoRepay": False, "type": "0",
    }
    return _json_reply(200, {"code": "0", "msg": "", "data": [{**config, **state["override"]}]})


# ---------------------------------------------------------------- kraken

def _kraken_key(req: Request) -> str | None:
    return req.headers.get("api-key")


def _kraken_reply(errors: list[str], result: Any = None) -> Reply:
    payload: dict[str, Any] = {"error": errors}
    if result is not None:
        payload["result"] = result
    return _json_reply(200, payload)


def _kraken_nonce(req: Request) -> str | None:
    if req.headers.get("content-type", "").startswith("application/json"):
        try:
            return str(json.loads(req.body)["nonce"])
        except (ValueError, KeyError, TypeError):
            return None
    return dict(parse_qsl(req.body.decode())).get("nonce")


def kraken(req: Request, key: str | None, state: dict[str, Any] | None, fake: FakeExchange) -> Reply:
    # Spot REST authentication: API-Sign = b64(HMAC-SHA512(b64dec(secret),
    # path + SHA256(nonce + postdata))); nonces must always increase.
    if not key or state is None:
        return _kraken_reply(["EAPI:Invalid key"])
    nonce = _kraken_nonce(req)
    if nonce is None or not nonce.isdigit():
        return _kraken_reply(["EAPI:Invalid nonce"])
    inner = hashlib.sha256((nonce + req.body.decode()).encode()).digest()
    expected = base64.b64encode(hmac.new(base64.b64decode(state["secret"]),
                                         req.path.encode() + inner,
                                         hashlib.sha512).digest()).decode()
    if not hmac.compare_digest(expected, req.headers.get("api-sign", "")):
        return _kraken_reply(["EAPI:Invalid signature"])
    if not fake._accept_nonce(key, int(nonce), int(state["min_nonce"])):
        return _kraken_reply(["EAPI:Invalid nonce"])
    if not _ip_allowed(req.client_ip, state["ips"]):
        return _kraken_reply(["EGeneral:Permission denied"])
    permissions = ["query-funds", "query-open-trades", "query-closed-trades",
                   "modify-trades", "cancel-close-trades"]
    permissions += ["withdraw-funds"] if state["withdraw"] else []
    expires = state["expires_at"]
    result = {
        "apiKeyName": "botvps", "apiKey": key, "nonce": nonce, "nonceWindow": 0,
        "permissions": permissions, "iban": "AA88 N84G WOAK NMOI",
        "validUntil": str(int(expires)) if expires else "0", "queryFrom": "0",
        "queryTo": "0", "createdTime": "1772542900", "modifiedTime": "1772543095",
        "ipAllowlist": state["ips"], "lastUsed": str(int(req.now)),
    }
    return _kraken_reply(list(state["warnings"]), {**result, **state["override"]})


# ---------------------------------------------------------------- coinbase

def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _coinbase_jwt(req: Request) -> tuple[dict[str, Any], dict[str, Any], str, bytes] | None:
    auth = req.headers.get("authorization", "")
    if not auth.startswith("Bearer "):
        return None
    try:
        head, claims, sig = auth[len("Bearer "):].split(".")
        return (json.loads(_b64url_decode(head)), json.loads(_b64url_decode(claims)),
                f"{head}.{claims}", _b64url_decode(sig))
    except (ValueError, TypeError):
        return None


def _coinbase_key(req: Request) -> str | None:
    jwt = _coinbase_jwt(req)
    kid = jwt[0].get("kid") if jwt and isinstance(jwt[0], dict) else None
    return kid if isinstance(kid, str) else None


def _coinbase_claims_ok(req: Request, key: str, head: dict[str, Any],
                        claims: dict[str, Any]) -> bool:
    expected_uri = f"{req.method} {req.headers.get('host', '')}{req.path}"
    nbf, exp = claims.get("nbf"), claims.get("exp")
    return (head.get("alg") in ("ES256", "EdDSA") and isinstance(head.get("nonce"), str)
            and bool(head["nonce"]) and claims.get("iss") == "cdp"
            and claims.get("sub") == key and claims.get("uri") == expected_uri
            and isinstance(nbf, int) and isinstance(exp, int)
            and nbf <= req.now + 1 and req.now < exp and exp - nbf <= 120)


def coinbase(req: Request, key: str | None, state: dict[str, Any] | None, fake: FakeExchange) -> Reply:
    # CDP JWT authentication; the real API answers any bad token with 401.
    unauthorized: Reply = (401, "text/plain; charset=utf-8", b"Unauthorized\n")
    jwt = _coinbase_jwt(req)
    if jwt is None or key is None or state is None:
        return unauthorized
    head, claims, signing_input, signature = jwt
    if not _coinbase_claims_ok(req, key, head, claims):
        return unauthorized
    from cryptography.hazmat.primitives.asymmetric import ed25519

    ed25519_key = isinstance(_private_key(state["secret"]), ed25519.Ed25519PrivateKey)
    if head["alg"] != ("EdDSA" if ed25519_key else "ES256") or not _signature_valid(
            state["secret"], signing_input.encode(), signature):
        return unauthorized
    if not _ip_allowed(req.client_ip, state["ips"]):
        return unauthorized
    result = {"can_view": True, "can_trade": True,
              "can_transfer": bool(state["withdraw"] or state["internal_transfer"]),
              "portfolio_uuid": "8f2c1c9e-52e8-4d8b-9c36-0d3c0d0b6f3a",
              "portfolio_type": "DEFAULT" if state["main_account"] else "CONSUMER"}
    return _json_reply(200, {**result, **state["override"]})


Handler = Callable[[Request, "str | None", "dict[str, Any] | None", "FakeExchange"], Reply]

ROUTES: Mapping[tuple[str, str], tuple[str, Callable[[Request], str | None], Handler]] = {
    ("GET", "/sapi/v1/account/apiRestrictions"): ("binance", _binance_key, binance),
    ("GET", "/v5/user/query-api"): ("bybit", _bybit_key, bybit),
    ("GET", "/api/v5/account/config"): ("okx", _okx_key, okx),
    ("POST", "/0/private/GetApiKeyInfo"): ("kraken", _kraken_key, kraken),
    ("GET", "/api/v3/brokerage/key_permissions"): ("coinbase", _coinbase_key, coinbase),
}


# ---------------------------------------------------------------- server

class _RequestHandler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep tests quiet
        pass

    def date_time_string(self, timestamp: float | None = None) -> str:
        offset = self.server.fake._snapshot().clock_offset
        return email.utils.formatdate(time.time() + offset, usegmt=True)

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, ctype, payload = self.server.fake._handle(
            method, parts.path, parts.query,
            {k.lower(): v for k, v in self.headers.items()}, body, self.client_address[0])
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client timed out and went away: expected for slow responses


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], fake: FakeExchange) -> None:
        self.fake = fake
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _RequestHandler)


class FakeExchange:
    """Threaded fake exchange on host:port (port 0 = ephemeral)."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0,
                 state_file: str | os.PathLike[str] | None = None,
                 clock_offset: float = 0.0, client_ip: str | None = None) -> None:
        self._address = (host, port)
        self._state_file = Path(state_file) if state_file else None
        self._state = _State(clock_offset=clock_offset, client_ip=client_ip)
        self._lock = threading.Lock()
        self._attempts: dict[str, int] = {}
        self._counters: dict[str, _Counter] = {}
        self._nonces: dict[str, int] = {}
        self.requests: list[tuple[str, str, str | None, int]] = []  # method, path, key, status
        self.peers: list[str] = []  # each request's source address, as the socket saw it
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle
    def start(self) -> FakeExchange:
        self._server = _Server(self._address, self)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeExchange:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        host = self._address[0]
        host = "127.0.0.1" if host in ("", "0.0.0.0") else f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    # -- configuration (in-process; a state file, if given, takes precedence)
    def add_key(self, api_key: str, *, exchange: str, secret: str, **fields: Any) -> None:
        unknown = set(fields) - set(KEY_DEFAULTS)
        if unknown or exchange not in {route[0] for route in ROUTES.values()}:
            raise ValueError(f"bad key settings: {sorted(unknown) or exchange}")
        with self._lock:
            self._state.keys[api_key] = {**KEY_DEFAULTS, **fields,
                                         "exchange": exchange, "secret": secret}

    def update_key(self, api_key: str, **fields: Any) -> None:
        unknown = set(fields) - set(KEY_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown key settings: {sorted(unknown)}")
        with self._lock:
            self._state.keys[api_key].update(fields)

    def remove_key(self, api_key: str) -> None:
        with self._lock:
            self._state.keys.pop(api_key, None)

    def set_clock_offset(self, seconds: float) -> None:
        with self._lock:
            self._state.clock_offset = seconds

    def set_client_ip(self, ip: str | None) -> None:
        with self._lock:
            self._state.client_ip = ip

    def attempts(self, api_key: str) -> int:
        """How many requests carried this key (including 5xx and slow ones)."""
        with self._lock:
            return self._attempts.get(api_key, 0)

    # -- internals
    def _snapshot(self) -> _State:
        if self._state_file is None:
            with self._lock:
                return _State({k: dict(v) for k, v in self._state.keys.items()},
                              self._state.clock_offset, self._state.client_ip)
        try:
            raw = json.loads(self._state_file.read_text())
        except (OSError, ValueError):
            return self._state  # keep the last good state if the file is mid-write
        keys = {name: {**KEY_DEFAULTS, **settings}
                for name, settings in raw.get("keys", {}).items()}
        with self._lock:
            self._state = _State(keys, float(raw.get("clock_offset", 0)), raw.get("client_ip"))
            return self._state

    def _count(self, api_key: str, settings: dict[str, Any] | None) -> int:
        """Record one attempt; return its number since the key's settings changed."""
        fingerprint = json.dumps(settings, sort_keys=True, default=str)
        with self._lock:
            self._attempts[api_key] = self._attempts.get(api_key, 0) + 1
            counter = self._counters.setdefault(api_key, _Counter())
            if counter.fingerprint != fingerprint:
                counter.fingerprint, counter.since_change = fingerprint, 0
            counter.since_change += 1
            return counter.since_change

    def _accept_nonce(self, api_key: str, nonce: int, minimum: int) -> bool:
        with self._lock:
            if nonce <= max(self._nonces.get(api_key, 0), minimum):
                return False
            self._nonces[api_key] = nonce
            return True

    def _handle(self, method: str, path: str, query: str, headers: Mapping[str, str],
                body: bytes, peer: str) -> Reply:
        with self._lock:
            self.peers.append(peer)
        route = ROUTES.get((method, path))
        if route is None:
            return _json_reply(404, {"error": "not found", "path": path})
        exchange, key_of, handler = route
        state = self._snapshot()
        req = Request(method, path, query, headers, body, time.time() + state.clock_offset,
                      state.client_ip)
        key = key_of(req)
        settings = state.keys.get(key) if key else None
        if settings is not None and settings["exchange"] != exchange:
            settings = None
        reply = self._maybe_misbehave(key, settings, req) or handler(req, key, settings, self)
        with self._lock:
            self.requests.append((method, path, key, reply[0]))
        return reply

    def _maybe_misbehave(self, key: str | None, settings: dict[str, Any] | None, req: Request) -> Reply | None:
        if req.headers.get("user-agent", "").startswith("Python-urllib"):
            return 403, "text/html", BLOCKED_PAGE  # Cloudflare's browser check
        if key is None or settings is None:
            return None
        if settings["blocked"]:
            return int(settings["blocked"]), "text/html", BLOCKED_PAGE
        attempt = self._count(key, settings)
        if attempt <= int(settings["fail_5xx"]):
            return 503, "text/html", b"<html><body><h1>503 Service Unavailable</h1></body></html>"
        if attempt <= int(settings["slow"]):
            time.sleep(float(settings["delay"]))
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fake exchange API server for keyaudit tests")
    parser.add_argument("--port", type=int, default=0, help="port (0 = pick a free one)")
    parser.add_argument("--bind", default="127.0.0.1", help="bind address")
    parser.add_argument("--state", required=True, help="JSON state file, re-read per request")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    fake = FakeExchange(host=args.bind, port=args.port, state_file=args.state).start()
    print(fake.port, flush=True)
    try:
        stop.wait()
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
