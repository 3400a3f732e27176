"""Tests for botvps.keyaudit against tests/fakeexchange.py (all on 127.0.0.1)."""

from __future__ import annotations

import ast
import base64
import dataclasses
import hashlib
import hmac
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

ROOT = Path(__file__).resolve().parents[2]
KEYAUDIT = ROOT / "collections" / "ansible_collections" / "botvps" / "infra" / "plugins" / "module_utils" / "keyaudit.py"
FAKE = ROOT / "tests" / "fakeexchange.py"
for extra in (ROOT / "src", ROOT / "tests"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

import fakeexchange  # noqa: E402
from fakeexchange import FakeExchange, write_state_file  # noqa: E402

from botvps.hostcode import keyaudit  # noqa: E402

STATIC_IP = "203.0.113.7"
OTHER_IP = "198.51.100.9"
# Secrets full of the characters the env-file escaping has to get right.
NASTY = ' $HOME `id` "q" \\back #hash =eq  '


def _pem(key: Any, fmt: serialization.PrivateFormat) -> str:
    return key.private_bytes(serialization.Encoding.PEM, fmt,
                             serialization.NoEncryption()).decode()


def _kraken_secret(tag: bytes) -> str:
    return base64.b64encode(tag.ljust(64, b"\x5a")).decode()


COINBASE_KEY = ec.generate_private_key(ec.SECP256R1())
COINBASE_WRONG_KEY = ec.generate_private_key(ec.SECP256R1())


@dataclass(frozen=True)
class Case:
    exchange: str
    key: str
    secret: str
    wrong_secret: str
    bad_secret_error: str
    unknown_key_error: str
    ip_rejected_error: str
    passphrase: str | None = None


BINANCE_2015 = ("binance rejected the key: -2015 Invalid API-key, IP, or permissions for "
                "action. (wrong key, or this host's IP is not on the key's whitelist)")

CASES = {
    "binance": Case(
        "binance", "BNkeyA1b2C3d4E5f6G7h8-7f3a", "SENTINEL-binance" + NASTY, "wrong-secret",
        "binance rejected the key: -1022 Signature for this request is not valid.",
        BINANCE_2015, BINANCE_2015),
    "bybit": Case(
        "bybit", "BYkeyQ9w8E7r6T5y4U3-b7b7", "SENTINEL-bybit" + NASTY, "wrong-secret",
        "bybit rejected the key: 10004 error sign! origin_string[",
        "bybit rejected the key: 10003 API key is invalid.",
        "bybit rejected the key: 10010 Unmatched IP, please check your API key's bound IP "
        "addresses."),
    "okx": Case(
        "okx", "0b1c2d3e-okx-key-4f5a6b7c-c0c0", "SENTINEL-okx" + NASTY, "wrong-secret",
        "okx rejected the key: 50113 Invalid Sign",
        "okx rejected the key: 50111 Invalid OK-ACCESS-KEY.",
        "okx rejected the key: 50110 Your IP 203.0.113.7 is not included in your API key's "
        "IP whitelist.",
        passphrase="SENTINEL-PASSPHRASE-okx" + NASTY),
    "kraken": Case(
        "kraken", "KRkey/Zx8+Yw7Vu6Ts5Rq4Po3Nm2Lk1J-1k1k",
        _kraken_secret(b"SENTINEL-kraken-secret"), _kraken_secret(b"wrong"),
        "kraken rejected the key: EAPI:Invalid signature",
        "kraken rejected the key: EAPI:Invalid key",
        "kraken rejected the key: EGeneral:Permission denied"),
    "coinbase": Case(
        "coinbase", "organizations/0c3e7a4b/apiKeys/5d2e9f1a-2b3c-4d5e-c0b1",
        _pem(COINBASE_KEY, serialization.PrivateFormat.TraditionalOpenSSL),
        _pem(COINBASE_WRONG_KEY, serialization.PrivateFormat.TraditionalOpenSSL),
        "coinbase rejected the key: HTTP 401 Unauthorized",
        "coinbase rejected the key: HTTP 401 Unauthorized",
        "coinbase rejected the key: HTTP 401 Unauthorized"),
}
ALL = list(CASES)
WITH_IP_LIST = ["bybit", "okx", "kraken"]  # exchanges that report the whitelist itself


# ------------------------------------------------------------------ helpers


def ansible_env_line(name: str, value: str) -> str:
    """What our Ansible role writes: NAME="value" with \\ \" \\$ ` escaped."""
    escaped = (value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
               .replace("`", "\\`"))
    return f'{name}="{escaped}"\n'


def env_vars(case: Case, secret: str | None = None) -> dict[str, str]:
    prefix = case.exchange.upper()
    env = {f"{prefix}_KEY": case.key, f"{prefix}_SECRET": secret or case.secret}
    if case.passphrase:
        env[f"{prefix}_PASSPHRASE"] = case.passphrase
    return env


def make_config(case: Case, base_url: str, **overrides: Any) -> dict[str, Any]:
    prefix = case.exchange.upper()
    config = {"bot": "alpha", "exchange": case.exchange, "key_var": f"{prefix}_KEY",
              "secret_var": f"{prefix}_SECRET",
              "passphrase_var": f"{prefix}_PASSPHRASE" if case.passphrase else None,
              "static_ipv4": STATIC_IP, "base_url": base_url, "timeout": 5, "retries": 2,
              "expiry_warn_days": 14}
    config.update(overrides)
    return config


def write_inputs(tmp_path: Path, config: dict[str, Any], env: dict[str, str]) -> list[str]:
    config_path, env_path = tmp_path / "config.json", tmp_path / "secrets.env"
    config_path.write_text(json.dumps(config))
    env_path.write_text("# written by ansible\n\n" + "".join(
        ansible_env_line(name, value) for name, value in env.items()))
    return ["--config", str(config_path), "--env-file", str(env_path)]


def assert_no_leak(text: str, case: Case) -> None:
    """The secret/passphrase never appear; the key only as its last four."""
    for secret in (case.secret, case.wrong_secret, case.passphrase):
        if not secret:
            continue
        assert secret not in text
        for piece in secret.split():
            if len(piece) >= 8 and not piece.startswith("-----"):
                assert piece not in text
    assert "SENTINEL" not in text
    assert case.key not in text
    assert case.key[:-4] not in text and case.key[:8] not in text


@dataclass
class Outcome:
    code: int
    out: str
    err: str
    sleeps: list[float]

    @property
    def report(self) -> dict[str, Any]:
        return json.loads(self.out)


def run_audit(tmp_path: Path, case: Case, config: dict[str, Any], *flags: str,
              secret: str | None = None) -> Outcome:
    args = write_inputs(tmp_path, config, env_vars(case, secret))
    out, err, sleeps = io.StringIO(), io.StringIO(), []
    code = keyaudit.main([*args, "--json", *flags], sleep=sleeps.append, stdout=out,
                         stderr=err)
    outcome = Outcome(code, out.getvalue(), err.getvalue(), sleeps)
    assert_no_leak(outcome.out + outcome.err, case)
    return outcome


def run_cli(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    # The system python3: keyaudit must not need anything beyond the stdlib.
    return subprocess.run(["python3", str(KEYAUDIT), *args], capture_output=True, text=True,
                          timeout=30, env={"PATH": os.environ.get("PATH", "/usr/bin")},
                          **kwargs)


@pytest.fixture
def fake() -> Iterator[FakeExchange]:
    with FakeExchange() as server:
        yield server


def add(fake: FakeExchange, case: Case, **fields: Any) -> None:
    fields.setdefault("ips", [STATIC_IP])
    if case.passphrase:
        fields.setdefault("passphrase", case.passphrase)
    fake.add_key(case.key, exchange=case.exchange, secret=case.secret, **fields)


# ------------------------------------------------------------------ verdicts


@pytest.mark.parametrize("name", ALL)
def test_clean_key_passes(name: str, fake: FakeExchange, tmp_path: Path) -> None:
    case = CASES[name]
    add(fake, case)
    result = run_audit(tmp_path, case, make_config(case, fake.base_url))
    assert result.code == 0
    report = result.report
    assert report["key"] == "..." + case.key[-4:]
    assert (report["bot"], report["exchange"]) == ("alpha", name)
    if name == "coinbase":  # the API cannot tell us about IP allowlists
        assert report["status"] == "warn"
        assert report["reasons"] == [
            "IP restriction cannot be checked via the Coinbase API; check the key's IP "
            "allowlist in the CDP portal"]
    else:
        assert (report["status"], report["reasons"]) == ("pass", [])
    assert fake.attempts(case.key) == 1


@pytest.mark.parametrize("name", ALL)
def test_withdrawal_permission_fails(name: str, fake: FakeExchange, tmp_path: Path) -> None:
    case = CASES[name]
    add(fake, case, withdraw=True)
    result = run_audit(tmp_path, case, make_config(case, fake.base_url))
    assert result.code == 1
    assert result.report["status"] == "fail"
    expected = "transfers enabled (can_transfer)" if name == "coinbase" else "withdrawals enabled"
    assert expected in result.report["reasons"]


def test_binance_transfer_permissions_fail(fake: FakeExchange, tmp_path: Path) -> None:
    case = CASES["binance"]
    add(fake, case, internal_transfer=True, universal_transfer=True)
    result = run_audit(tmp_path, case, make_config(case, fake.base_url))
    assert result.code == 1
    assert result.report["reasons"] == ["internal transfer enabled", "universal transfer enabled"]


@pytest.mark.parametrize("status", [403, 451])
@pytest.mark.parametrize("name", ["binance", "bybit"])
def test_a_blocked_location_is_named_as_such(name: str, status: int, fake: FakeExchange, tmp_path: Path) -> None:
    case = CASES[name]
    add(fake, case, blocked=status)
    result = run_audit(tmp_path, case, make_config(case, fake.base_url))
    assert result.code == 2  # could not check: never a verdict on the key
    [reason] = result.report["reasons"]
    assert f"refused this server's location (HTTP {status}" in reason and "rejected the key" not in reason


def test_the_audit_sends_a_user_agent_of_its_own(fake: FakeExchange, tmp_path: Path) -> None:
    case = CASES["okx"]  # the fake answers urllib's default User-Agent as Cloudflare's browser check does
    add(fake, case)
    result = run_audit(tmp_path, case, make_config(case, fake.base_url))
    assert (result.code, result.report["status"]) == (0, "pass"), result.report


def test_a_coinbase_key_on_the_default_portfolio_is_warned_about(fake: FakeExchange, tmp_path: Path) -> None:
    case = CASES["coinbase"]
    add(fake, case, main_account=True)
    result = run_audit(tmp_path, case, make_config(case, fake.base_url))
    assert (result.code, result.report["status"]) == (0, "warn"), result.report
    assert result.report["reasons"][1:] == [
        "the key trades the default portfolio: trade from a portfolio holding only the bot's funds (a key "
        "made for it), so a leaked key cannot reach the rest"]


@pytest.mark.parametrize("name", ["bybit", "okx"])
def test_a_main_account_key_is_warned_about(name: str, fake: FakeExchange, tmp_path: Path) -> None:
    case = CASES[name]
    add(fake, case, main_account=True)
    result = run_audit(tmp_path, case, make_config(case, fake.base_url))
    assert (result.code, result.report["status"]) == (0, "warn"), result.report  # a warning: the bot still starts
    assert any("main account" in r and "sub-account" in r for r in result.report["reasons"]), result.report


def test_a_kraken_reply_with_warnings_only_is_judged(fake: FakeExchange, tmp_path: Path) -> None:
    case = CASES["kraken"]
    add(fake, case, warnings=["WGeneral:Deprecated endpoint"])
    result = run_audit(tmp_path, case, make_config(case, fake.base_url))
    assert (result.code, result.report["status"]) == (0, "pass"), result.report


@pytest.mark.parametrize("market, flag", [("margin", "enableMargin"), ("futures", "enableFutures")])
def test_a_binance_key_that_may_trade_undeclared_markets_is_warned_about(
        market: str, flag: str, fake: FakeExchange, tmp_path: Path) -> None:
    case = CASES["binance"]
    add(fake, case, override={flag: True})
    result = run_audit(tmp_path, case, make_config(case, fake.base_url))
    assert (result.code, result.report["status"]) == (0, "warn"), result.report
    assert result.report["reasons"] == [
        f"{market} trading enabled ({flag}) but the bot does not declare it: turn it off for "
        f"this key at Binance, or add {market} to the bot's trades"]
    declared = run_audit(tmp_path, case, make_config(case, fake.base_url, trades=["spot", market]))
    assert (declared.code, declared.report["status"]) == (0, "pass"), declared.report


def test_bybit_transfer_permissions_fail(fake: FakeExchange, tmp_path: Path) -> None:
    case = CASES["bybit"]
    add(fake, case, internal_transfer=True)
    result = run_audit(tmp_path, case, make_config(case, fake.base_url))
    assert result.code == 1
    assert result.report["reasons"] == ["transfers enabled (Wallet: AccountTransfer)",
                                        "transfers enabled (Wallet: SubMemberTransfer)"]


@pytest.mark.parametrize("name", ["binance", *WITH_IP_LIST])
def test_no_ip_restriction_fails(name: str, fake: FakeExchange, tmp_path: Path) -> None:
    case = CASES[name]
    add(fake, case, ips=[])
    result = run_audit(tmp_path, case, make_config(case, fake.base_url))
    assert result.code == 1
    assert result.report["reasons"] == ["no IP restriction (key works from any IP)"]


@pytest.mark.parametrize("name", WITH_IP_LIST)
def test_whitelist_without_host_ip_fails(name: str, fake: FakeExchange, tmp_path: Path) -> None:
    case = CASES[name]
    add(fake, case, ips=[OTHER_IP])
    result = run_audit(tmp_path, case, make_config(case, fake.base_url))
    assert result.code == 1
    assert result.report["reasons"] == [f"IP whitelist does not include {STATIC_IP}"]


@pytest.mark.parametrize("name", ALL)
def test_exchange_refusing_this_host_ip_is_surfaced(name: str, fake: FakeExchange,
                                                    tmp_path: Path) -> None:
    """When the exchange itself enforces the whitelist (Binance's only signal)."""
    case = CASES[name]
    add(fake, case, ips=[OTHER_IP])
    fake.set_client_ip(STATIC_IP)
    result = run_audit(tmp_path, case, make_config(case, fake.base_url))
    assert result.code == 2
    assert result.report["status"] == "error"
    assert result.report["reasons"] == [case.ip_rejected_error]


@pytest.mark.parametrize("ips, status, reasons", [
    ([STATIC_IP, OTHER_IP], "warn", [f"IP whitelist also allows {OTHER_IP}"]),
    (["203.0.113.0/24"], "warn", ["IP whitelist also allows 203.0.113.0/24"]),
    (["0.0.0.0/0"], "fail", ["no IP restriction (key works from any IP)"]),
])
def test_allowlist_shapes(ips: list[str], status: str, reasons: list[str],
                          fake: FakeExchange, tmp_path: Path) -> None:
    case = CASES["kraken"]  # Kraken documents CIDR entries
    add(fake, case, ips=ips)
    result = run_audit(tmp_path, case, make_config(case, fake.base_url))
    assert (result.report["status"], result.report["reasons"]) == (status, reasons)


@pytest.mark.parametrize("name", WITH_IP_LIST)
def test_a_rebuild_fence_fails_a_whitelist_that_still_holds_another_address(name: str, fake: FakeExchange,
                                                                            tmp_path: Path) -> None:
    """--fence (invoke rebuild): the extra entry that is a WARN otherwise may be the old server: a FAIL."""
    case = CASES[name]
    add(fake, case, ips=[STATIC_IP, OTHER_IP])
    result = run_audit(tmp_path, case, make_config(case, fake.base_url), "--fence")
    assert (result.code, result.report["status"]) == (1, "fail")
    [reason] = result.report["reasons"]
    assert reason.startswith(f"IP whitelist also allows {OTHER_IP} (rebuild fence") and f"but {STATIC_IP}" in reason
    assert run_audit(tmp_path, case, make_config(case, fake.base_url)).report["status"] == "warn"  # no fence: WARN
    fake.update_key(case.key, ips=[STATIC_IP])
    assert run_audit(tmp_path, case, make_config(case, fake.base_url), "--fence").code == 0


@pytest.mark.parametrize("name", ["bybit", "kraken"])
def test_key_expiry_warns_within_window(name: str, fake: FakeExchange, tmp_path: Path) -> None:
    case = CASES[name]
    add(fake, case, expires_at=time.time() + 5 * 86400 + 3600)
    result = run_audit(tmp_path, case, make_config(case, fake.base_url))
    assert result.code == 0
    assert result.report["status"] == "warn"
    assert re.fullmatch(r"key expires in 5 days \(\d{4}-\d\d-\d\d\)", result.report["reasons"][0])
    fake.update_key(case.key, expires_at=time.time() + 60 * 86400)
    assert run_audit(tmp_path, case, make_config(case, fake.base_url)).report["status"] == "pass"


def test_coinbase_pkcs8_key_works(fake: FakeExchange, tmp_path: Path) -> None:
    pkcs8 = _pem(COINBASE_KEY, serialization.PrivateFormat.PKCS8)
    case = CASES["coinbase"]
    add(fake, case)
    result = run_audit(tmp_path, case, make_config(case, fake.base_url), secret=pkcs8)
    assert (result.code, result.report["status"]) == (0, "warn")


# ------------------------------------------------------------------ auth errors


@pytest.mark.parametrize("name", ALL)
def test_bad_secret_surfaces_exchange_error(name: str, fake: FakeExchange,
                                            tmp_path: Path) -> None:
    case = CASES[name]
    add(fake, case)
    result = run_audit(tmp_path, case, make_config(case, fake.base_url),
                       secret=case.wrong_secret)
    assert result.code == 2
    [reason] = result.report["reasons"]
    assert reason.startswith(case.bad_secret_error)
    assert fake.attempts(case.key) == 1 and result.sleeps == []  # 4xx/auth: no retry


def test_bybit_error_echoing_the_key_is_masked(fake: FakeExchange, tmp_path: Path) -> None:
    case = CASES["bybit"]
    add(fake, case)
    result = run_audit(tmp_path, case, make_config(case, fake.base_url),
                       secret=case.wrong_secret)
    # Bybit echoes origin_string = timestamp + key + recv_window; only ...b7b7 may show.
    assert re.search(r"origin_string\[\d+\.\.\.b7b75000\]", result.report["reasons"][0])


@pytest.mark.parametrize("name", ALL)
def test_unknown_key_surfaces_exchange_error(name: str, fake: FakeExchange,
                                             tmp_path: Path) -> None:
    case = CASES[name]
    result = run_audit(tmp_path, case, make_config(case, fake.base_url))
    assert result.code == 2
    assert result.report["reasons"] == [case.unknown_key_error]


def test_okx_wrong_passphrase(fake: FakeExchange, tmp_path: Path) -> None:
    case = CASES["okx"]
    add(fake, case, passphrase="another passphrase")
    result = run_audit(tmp_path, case, make_config(case, fake.base_url))
    assert result.code == 2
    assert result.report["reasons"] == [
        'okx rejected the key: 50105 Request header "OK-ACCESS-PASSPHRASE" incorrect.']


@pytest.mark.parametrize("name, code", [
    ("binance", "-1021 Timestamp for this request is outside of the recvWindow."),
    ("bybit", "10002 invalid request, please check your server timestamp"),
    ("okx", "50102 Timestamp request expired."),
    ("kraken", "EAPI:Invalid nonce"),
    ("coinbase", "HTTP 401 Unauthorized"),
])
def test_clock_skew_tells_operator_to_check_time_sync(name: str, code: str,
                                                      fake: FakeExchange,
                                                      tmp_path: Path) -> None:
    case = CASES[name]
    if name == "kraken":  # Kraken has no time window, only ever-increasing nonces
        add(fake, case, min_nonce=int(time.time() * 1000) + 3_600_000)
    else:
        add(fake, case)
        fake.set_clock_offset(3600)
    result = run_audit(tmp_path, case, make_config(case, fake.base_url))
    assert result.code == 2
    [reason] = result.report["reasons"]
    assert code in reason and "check time sync" in reason
    assert fake.attempts(case.key) == 1


# ------------------------------------------------------------------ retries


@pytest.mark.parametrize("name", ALL)
def test_5xx_is_retried_then_fails_closed(name: str, fake: FakeExchange, tmp_path: Path) -> None:
    case = CASES[name]
    add(fake, case, fail_5xx=100)
    result = run_audit(tmp_path, case, make_config(case, fake.base_url, retries=2))
    assert result.code == 2
    assert result.report["reasons"] == [f"could not reach {name}: HTTP 503 (3 attempts)"]
    assert fake.attempts(case.key) == 3
    assert result.sleeps == [0.5, 1.0]


@pytest.mark.parametrize("name", ALL)
def test_allow_unchecked_makes_5xx_exit_0_with_warning(name: str, fake: FakeExchange,
                                                       tmp_path: Path) -> None:
    case = CASES[name]
    add(fake, case, fail_5xx=100)
    result = run_audit(tmp_path, case, make_config(case, fake.base_url, retries=1),
                       "--allow-unchecked")
    assert result.code == 0
    assert result.report["status"] == "error"
    assert "--allow-unchecked" in result.report["reasons"][-1]
    assert "WARNING: could not check the key" in result.err
    assert fake.attempts(case.key) == 2


@pytest.mark.parametrize("name", ALL)
def test_5xx_then_recovery_passes(name: str, fake: FakeExchange, tmp_path: Path) -> None:
    """Each retry is freshly signed (new timestamp, nonce, JWT) and accepted."""
    case = CASES[name]
    add(fake, case, fail_5xx=2)
    result = run_audit(tmp_path, case, make_config(case, fake.base_url, retries=3))
    assert result.code == 0 and result.report["status"] in ("pass", "warn")
    assert fake.attempts(case.key) == 3
    assert result.sleeps == [0.5, 1.0]


@pytest.mark.parametrize("name", ALL)
def test_timeouts_are_retried_then_fail_closed(name: str, fake: FakeExchange,
                                               tmp_path: Path) -> None:
    case = CASES[name]
    add(fake, case, slow=100, delay=1.5)
    config = make_config(case, fake.base_url, timeout=0.25, retries=1)
    result = run_audit(tmp_path, case, config)
    assert result.code == 2
    assert result.report["reasons"] == [f"could not reach {name}: timed out after 0.25s "
                                        "(2 attempts)"]
    assert fake.attempts(case.key) == 2
    unchecked = run_audit(tmp_path, case, config, "--allow-unchecked")
    assert unchecked.code == 0 and "WARNING" in unchecked.err


def test_connection_refused_is_retried(tmp_path: Path) -> None:
    case = CASES["okx"]
    with FakeExchange() as server:
        dead_url = server.base_url
    result = run_audit(tmp_path, case, make_config(case, dead_url, retries=2))
    assert result.code == 2
    assert result.report["reasons"][0].startswith("could not reach okx: connection failed")
    assert result.sleeps == [0.5, 1.0]


def test_redirects_are_not_followed(tmp_path: Path) -> None:
    hits: list[str] = []

    class Redirecting(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            hits.append(self.path)
            self.send_response(302)
            self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Redirecting)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        case = CASES["bybit"]
        url = f"http://127.0.0.1:{server.server_address[1]}"
        result = run_audit(tmp_path, case, make_config(case, url))
    finally:
        server.shutdown()
        server.server_close()
    assert result.code == 2
    assert result.report["reasons"] == ["bybit returned an error: HTTP 302"]
    assert hits == ["/v5/user/query-api"]


def test_the_audit_goes_out_over_ipv4_only(tmp_path: Path) -> None:
    """An exchange reached only over IPv6 is not asked: the whitelist holds an IPv4 address."""
    case = CASES["bybit"]
    with FakeExchange(host="::1") as fake6:
        add(fake6, case)
        result = run_audit(tmp_path, case, make_config(case, fake6.base_url))
        assert fake6.peers == []
    assert result.code == 2
    assert result.report["reasons"] == [
        "could not reach bybit: connection failed: ::1 has no IPv4 address (keyaudit goes "
        "out over IPv4 only, the address the exchange whitelists) (3 attempts)"]


def test_the_audit_sends_from_source_ipv4(fake: FakeExchange, tmp_path: Path) -> None:
    """The exchange sees the audit come from the address the bots send from."""
    case = CASES["okx"]
    add(fake, case)
    result = run_audit(tmp_path, case, make_config(case, fake.base_url, source_ipv4="127.0.0.2"))
    assert (result.code, fake.peers) == (0, ["127.0.0.2"]), result.report


def test_a_source_ipv4_not_on_the_host_is_named(fake: FakeExchange, tmp_path: Path) -> None:
    case = CASES["okx"]
    add(fake, case)
    result = run_audit(tmp_path, case, make_config(case, fake.base_url, source_ipv4=STATIC_IP,
                                                   retries=0))
    assert (result.code, fake.peers) == (2, [])
    assert result.report["reasons"] == [
        f"could not reach okx: connection failed: cannot send from {STATIC_IP}: that address "
        "is not on this host (1 attempt)"]


def test_real_fail_still_exits_1_with_allow_unchecked(fake: FakeExchange,
                                                      tmp_path: Path) -> None:
    case = CASES["bybit"]
    add(fake, case, withdraw=True)
    result = run_audit(tmp_path, case, make_config(case, fake.base_url), "--allow-unchecked")
    assert result.code == 1 and result.err == ""


def test_backoff_schedule() -> None:
    assert [keyaudit.backoff_delay(n) for n in range(1, 7)] == [0.5, 1, 2, 4, 4, 4]


def test_kraken_nonce_strictly_increases_within_a_run() -> None:
    creds = keyaudit.Credentials("KRkey-0123456789", CASES["kraken"].secret)
    kraken = keyaudit.Kraken(creds)
    nonces = [kraken._nonce(1_700_000_000.0) for _ in range(3)]
    assert nonces == [1_700_000_000_000, 1_700_000_000_001, 1_700_000_000_002]


# ------------------------------------------------------------------ secrecy


def test_unexpected_exception_never_prints_secrets(tmp_path: Path) -> None:
    case = CASES["okx"]

    def exploding_send(request: keyaudit.HttpRequest, timeout: float) -> keyaudit.HttpResponse:
        raise RuntimeError(f"boom {case.secret} {case.passphrase} {case.key}")

    args = write_inputs(tmp_path, make_config(case, "http://127.0.0.1:9"), env_vars(case))
    out, err = io.StringIO(), io.StringIO()
    code = keyaudit.main(args, send=exploding_send, stdout=out, stderr=err)
    assert code == 2
    assert out.getvalue().strip().endswith("ERROR internal error (RuntimeError)")
    assert_no_leak(out.getvalue() + err.getvalue(), case)


def test_redactor_scrubs_every_form() -> None:
    case = CASES["coinbase"]
    creds = keyaudit.Credentials(case.key, case.secret, "pass-phrase-123")
    body_line = case.secret.splitlines()[1]
    text = keyaudit.Redactor(creds).clean(f"{case.key} {body_line} pass-phrase-123")
    assert text == "...c0b1 [redacted] [redacted]"
    assert case.key not in repr(creds) and case.secret not in repr(creds)


def test_coinbase_error_path_hides_pem(fake: FakeExchange, tmp_path: Path) -> None:
    case = CASES["coinbase"]
    broken = case.secret.replace("BEGIN EC PRIVATE KEY", "BEGIN RSA PRIVATE KEY").replace(
        "END EC PRIVATE KEY", "END RSA PRIVATE KEY")
    result = run_audit(tmp_path, case, make_config(case, fake.base_url), secret=broken)
    assert result.code == 2
    assert result.report["reasons"] == [
        "the coinbase secret is unusable: the PEM RSA PRIVATE KEY cannot be read"]


# ------------------------------------------------------------------ output format


def test_text_summary_line(fake: FakeExchange, tmp_path: Path) -> None:
    case = CASES["binance"]
    add(fake, case, withdraw=True, ips=[])
    args = write_inputs(tmp_path, make_config(case, fake.base_url), env_vars(case))
    out = io.StringIO()
    assert keyaudit.main(args, stdout=out, stderr=io.StringIO()) == 1
    assert out.getvalue() == ("keyaudit alpha binance key ...7f3a: FAIL withdrawals enabled; "
                              "no IP restriction (key works from any IP)\n")


def test_json_report_shape(fake: FakeExchange, tmp_path: Path) -> None:
    case = CASES["okx"]
    add(fake, case)
    report = run_audit(tmp_path, case, make_config(case, fake.base_url)).report
    assert list(report) == ["bot", "exchange", "key", "status", "reasons", "checked_at"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", report["checked_at"])


def test_env_file_dash_reads_own_environment(fake: FakeExchange, tmp_path: Path) -> None:
    case = CASES["bybit"]
    add(fake, case)
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(make_config(case, fake.base_url)))
    out = io.StringIO()
    code = keyaudit.main(["--config", str(config_path), "--env-file", "-"],
                         environ=env_vars(case), stdout=out, stderr=io.StringIO())
    assert (code, out.getvalue()) == (0, "keyaudit alpha bybit key ...b7b7: PASS\n")


# ------------------------------------------------------------------ config errors


@pytest.mark.parametrize("change, field", [
    ({"surprise": 1}, "surprise"),
    ({"static_ipv4": None}, "static_ipv4"),
    ({"static_ipv4": "300.1.2.3"}, "static_ipv4"),
    ({"source_ipv4": "2001:db8::7"}, "source_ipv4"),
    ({"timeout": "10"}, "timeout"),
    ({"timeout": 0}, "timeout"),
    ({"retries": -1}, "retries"),
    ({"retries": True}, "retries"),
    ({"exchange": "ftx"}, "exchange"),
    ({"key_var": "1NOT-A-NAME"}, "key_var"),
    ({"base_url": "ftp://example.org"}, "base_url"),
    ({"base_url": "http://127.0.0.1:1/api"}, "base_url"),
    ({"passphrase_var": None}, "passphrase_var"),
    ({"expiry_warn_days": 1.5}, "expiry_warn_days"),
    ({"trades": ["spot", "options"]}, "trades"),
    ({"trades": "futures"}, "trades"),
])
def test_config_errors_name_the_field(change: dict[str, Any], field: str,
                                      tmp_path: Path) -> None:
    case = CASES["okx"]
    config = make_config(case, "http://127.0.0.1:9")
    for name, value in change.items():
        if value is None and name == "static_ipv4":
            del config[name]
        else:
            config[name] = value
    result = run_audit(tmp_path, case, config, "--allow-unchecked")
    assert result.code == 2  # --allow-unchecked never excuses a broken config
    assert f"'{field}'" in result.report["reasons"][0]
    assert f"'{field}'" in result.err


def test_missing_secret_variable_is_named(tmp_path: Path) -> None:
    case = CASES["binance"]
    args = write_inputs(tmp_path, make_config(case, "http://127.0.0.1:9"),
                        {"BINANCE_KEY": case.key})
    err = io.StringIO()
    assert keyaudit.main(args, stdout=io.StringIO(), stderr=err) == 2
    assert "BINANCE_SECRET is not set" in err.getvalue()


def test_unreadable_config_exits_2(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    out = io.StringIO()
    code = keyaudit.main(["--config", str(tmp_path / "config.json"), "--env-file", "-"],
                         environ={}, stdout=out, stderr=io.StringIO())
    assert code == 2 and "not valid JSON" in out.getvalue()


# ------------------------------------------------------------------ env-file parser


@pytest.mark.parametrize("text, expected", [
    ('A="a\\$b"', {"A": "a$b"}),
    ('A="say \\"hi\\""', {"A": 'say "hi"'}),
    ('A="back\\\\slash"', {"A": "back\\slash"}),
    ('A="tick\\`x\\`"', {"A": "tick`x`"}),
    ('A="keeps\\n as two chars"', {"A": "keeps\\n as two chars"}),
    ('A="spaces # not a comment"', {"A": "spaces # not a comment"}),
    ('A="k=v=w"', {"A": "k=v=w"}),
    ('A=x=y', {"A": "x=y"}),
    ("A='single $x \\ \"q\" `t`'", {"A": 'single $x \\ "q" `t`'}),
    ("A=unquoted value  \t", {"A": "unquoted value"}),
    ("A=val#ue", {"A": "val#ue"}),
    ("A=trailing\\ ", {"A": "trailing "}),
    ("A=esc\\$aped", {"A": "esc$aped"}),
    ("# comment\n; also a comment\n\nA=1\n", {"A": "1"}),
    ("  A = spaced  \n", {"A": "spaced"}),
    ('A="multi\nline"\nB=2', {"A": "multi\nline", "B": "2"}),
    ('A="joined\\\nline"', {"A": "joinedline"}),
    ("A=con\\\ntinued", {"A": "continued"}),
    ("A=1\nA=2\n", {"A": "2"}),
    ("NO_EQUALS_SIGN\nA=1", {"A": "1"}),
    ("A=\nB=", {"A": "", "B": ""}),
    ('A="x"y', {"A": "xy"}),
    ("A=1\r\nB=2\r\n", {"A": "1", "B": "2"}),
    ('A="x" # no inline comments in systemd', {"A": "x# no inline comments in systemd"}),
    ("# comment \\\nA=1", {"A": "1"}),
])
def test_env_file_parser(text: str, expected: dict[str, str]) -> None:
    assert keyaudit.parse_env_file(text) == expected


@pytest.mark.parametrize("value", [
    NASTY, 'a"b', "a\\b", "a$b", "a`b", "trailing\\", "$$", "# leading hash", "a=b=c",
    "  padded  ", "multi\nline\n", CASES["coinbase"].secret, "üñí©ødé",
])
def test_env_file_round_trips_ansible_quoting(value: str) -> None:
    text = "FIRST=1\n" + ansible_env_line("V", value) + "LAST=2\n"
    assert keyaudit.parse_env_file(text) == {"FIRST": "1", "V": value, "LAST": "2"}


def test_env_file_not_utf8_is_reported_without_content(tmp_path: Path) -> None:
    path = tmp_path / "secrets.env"
    path.write_bytes(b'SECRET="\xffSENTINEL"\n')
    with pytest.raises(keyaudit.ConfigError) as info:
        keyaudit.read_env_file(str(path))
    assert "SENTINEL" not in str(info.value) and "not valid UTF-8" in str(info.value)


# ------------------------------------------------------------------ ECDSA / PEM / JWT


def _ed25519_cdp(key: ed25519.Ed25519PrivateKey) -> str:
    """A CDP Ed25519 secret: base64 of the 32-byte seed and the 32-byte public key."""
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                            serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw + public).decode()


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


PKCS8, PKCS1 = serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL
# Each exchange's private-key types (Binance: api_key_types FAQ; Bybit: self-generated RSA keys;
# Coinbase: CDP's ECDSA PEM or Ed25519 base64), with a key of the same type that is not the one.
KEY_TYPES = {
    "binance-ed25519": ("binance", lambda: _pem(ed25519.Ed25519PrivateKey.generate(), PKCS8)),
    "binance-rsa": ("binance", lambda: _pem(_rsa(), PKCS8)),
    "bybit-rsa": ("bybit", lambda: _pem(_rsa(), PKCS1)),
    "coinbase-ed25519": ("coinbase", lambda: _ed25519_cdp(ed25519.Ed25519PrivateKey.generate())),
    "coinbase-ecdsa-pkcs8": ("coinbase", lambda: _pem(ec.generate_private_key(ec.SECP256R1()), PKCS8)),
}


@pytest.mark.parametrize("kind", list(KEY_TYPES))
def test_private_key_types_are_signed_as_the_exchange_verifies(kind: str, fake: FakeExchange,
                                                                tmp_path: Path) -> None:
    """The fake checks each signature with the public key; a clean key passes, an unsafe one fails."""
    exchange, make = KEY_TYPES[kind]
    case = dataclasses.replace(CASES[exchange], secret=make(), wrong_secret=make())
    add(fake, case)
    result = run_audit(tmp_path, case, make_config(case, fake.base_url))
    assert (result.code, result.report["status"]) == (0, "warn" if exchange == "coinbase" else "pass"), \
        result.report
    fake.update_key(case.key, withdraw=True)
    assert run_audit(tmp_path, case, make_config(case, fake.base_url)).code == 1
    fake.update_key(case.key, withdraw=False)
    wrong = run_audit(tmp_path, case, make_config(case, fake.base_url), secret=case.wrong_secret)
    assert wrong.code == 2 and wrong.report["reasons"][0].startswith(case.bad_secret_error), wrong.report


@pytest.mark.parametrize("exchange, secret, problem", [
    ("bybit", _pem(ed25519.Ed25519PrivateKey.generate(), PKCS8),
     "the bybit secret is an ed25519 key; bybit takes rsa keys"),
    ("binance", _pem(ec.generate_private_key(ec.SECP256R1()), PKCS8),
     "the binance secret is an p256 key; binance takes ed25519 or rsa keys"),
    ("coinbase", _pem(ec.generate_private_key(ec.SECP384R1()), PKCS1),
     "the coinbase secret is an EC secp384r1 key; coinbase takes p256 or ed25519 keys"),
    ("coinbase", ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, PKCS8, serialization.BestAvailableEncryption(b"pw")).decode(),
     "the coinbase secret is unusable: encrypted private keys are not supported"),
    ("coinbase", "just some text", "the coinbase secret is unusable: neither a PEM private key nor an "
                                   "Ed25519 key (base64)"),
    ("coinbase", base64.b64encode(b"x" * 32).decode(),
     "the coinbase secret is unusable: an Ed25519 key is 64 bytes in base64, this is 32"),
])
def test_unusable_private_keys_are_named(exchange: str, secret: str, problem: str,
                                         tmp_path: Path) -> None:
    case = dataclasses.replace(CASES[exchange], secret=secret)
    result = run_audit(tmp_path, case, make_config(case, "http://127.0.0.1:9"))
    assert (result.code, result.report["reasons"]) == (2, [problem])


def test_pem_with_literal_backslash_n_is_accepted() -> None:
    flattened = CASES["coinbase"].secret.replace("\n", "\\n")
    key = keyaudit.coinbase_private_key(flattened)
    assert key.private_numbers() == COINBASE_KEY.private_numbers()


def test_a_private_key_without_the_cryptography_package_is_named(tmp_path: Path) -> None:
    """python3 -S has no dist-packages: an HMAC key still works, a PEM key names the package."""
    for exchange, expected in (("bybit", 0), ("coinbase", 2)):
        case = CASES[exchange]
        with FakeExchange() as fake:
            add(fake, case)
            args = write_inputs(tmp_path, make_config(case, fake.base_url), env_vars(case))
            done = subprocess.run(["python3", "-S", str(KEYAUDIT), *args, "--json"], capture_output=True,
                                  text=True, timeout=30)
        assert done.returncode == expected, done.stdout + done.stderr
        assert_no_leak(done.stdout + done.stderr, case)
        if expected:
            assert json.loads(done.stdout)["reasons"] == [
                "the coinbase secret is unusable: a private key needs Python's cryptography package on "
                "the host (Debian: apt-get install python3-cryptography)"]


def test_cdp_jwt_structure() -> None:
    token = keyaudit.build_cdp_jwt("org/k", COINBASE_KEY, "GET api.coinbase.com/x", 1000, nonce="ab")
    head_b64, claims_b64, sig_b64 = token.split(".")

    def decode(part: str) -> bytes:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))

    assert json.loads(decode(head_b64)) == {"alg": "ES256", "kid": "org/k", "nonce": "ab",
                                            "typ": "JWT"}
    assert json.loads(decode(claims_b64)) == {"sub": "org/k", "iss": "cdp", "nbf": 1000,
                                              "exp": 1120, "uri": "GET api.coinbase.com/x"}
    sig = decode(sig_b64)
    COINBASE_KEY.public_key().verify(
        encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")),
        f"{head_b64}.{claims_b64}".encode(), ec.ECDSA(hashes.SHA256()))


def test_signing_matches_documented_prehash_layouts() -> None:
    """Spot-check each HMAC prehash layout against an independent computation."""
    def mac(secret: bytes, message: bytes) -> bytes:
        return hmac.new(secret, message, hashlib.sha256).digest()

    creds = keyaudit.Credentials("mykey-000000", "mysecret")
    bybit = keyaudit.Bybit(creds).build_request("http://h", 1_700_000_000.0)
    assert bybit.headers["X-BAPI-SIGN"] == mac(b"mysecret",
                                               b"1700000000000mykey-0000005000").hex()
    okx = keyaudit.Okx(keyaudit.Credentials("k-000000", "s", "p")).build_request(
        "http://h", 1_700_000_000.123)
    assert okx.headers["OK-ACCESS-TIMESTAMP"] == "2023-11-14T22:13:20.123Z"
    assert okx.headers["OK-ACCESS-SIGN"] == base64.b64encode(
        mac(b"s", b"2023-11-14T22:13:20.123ZGET/api/v5/account/config")).decode()
    binance = keyaudit.Binance(creds).build_request("http://h", 1_700_000_000.0)
    query = "timestamp=1700000000000&recvWindow=5000"
    assert binance.url == ("http://h/sapi/v1/account/apiRestrictions?" + query +
                           "&signature=" + mac(b"mysecret", query.encode()).hex())


# ------------------------------------------------------------------ real processes


def test_cli_subprocess_fail_line_and_exit_code(fake: FakeExchange, tmp_path: Path) -> None:
    case = CASES["kraken"]
    add(fake, case, withdraw=True)
    proc = run_cli(write_inputs(tmp_path, make_config(case, fake.base_url), env_vars(case)))
    assert proc.returncode == 1
    assert proc.stdout == "keyaudit alpha kraken key ...1k1k: FAIL withdrawals enabled\n"
    assert proc.stderr == ""


def test_cli_subprocess_auth_error_json_hides_everything(fake: FakeExchange,
                                                         tmp_path: Path) -> None:
    case = CASES["bybit"]
    add(fake, case)
    args = write_inputs(tmp_path, make_config(case, fake.base_url),
                        env_vars(case, case.wrong_secret))
    proc = run_cli([*args, "--json"])
    assert proc.returncode == 2
    report = json.loads(proc.stdout)
    assert report["status"] == "error" and report["key"] == "...b7b7"
    assert report["reasons"][0].startswith(case.bad_secret_error)
    assert_no_leak(proc.stdout + proc.stderr, case)


def test_cli_subprocess_config_error(tmp_path: Path) -> None:
    case = CASES["binance"]
    args = write_inputs(tmp_path, make_config(case, None, timeout=-1), env_vars(case))
    proc = run_cli(args)
    assert proc.returncode == 2
    assert "config field 'timeout'" in proc.stderr
    assert proc.stdout.startswith("keyaudit ? ? key ?: ERROR config field 'timeout'")


def _imports(tree: ast.AST) -> set[str]:
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    return imported | {node.module.split(".")[0] for node in ast.walk(tree)
                       if isinstance(node, ast.ImportFrom) and node.module}


def test_keyaudit_imports_only_the_standard_library_but_cryptography_for_private_keys() -> None:
    tree = ast.parse(KEYAUDIT.read_text())
    crypto = next(node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name == "_crypto")
    outside = _imports(ast.Module(body=[n for n in tree.body if n is not crypto], type_ignores=[]))
    assert "urllib" in outside and "hmac" in outside
    assert outside <= set(sys.stdlib_module_names) | {"__future__"}
    assert _imports(crypto) == {"cryptography"}


def test_standalone_fake_rereads_state_file(tmp_path: Path) -> None:
    case = CASES["okx"]
    state_path = tmp_path / "state.json"
    settings = {"exchange": "okx", "secret": case.secret, "passphrase": case.passphrase,
                "ips": [STATIC_IP]}
    write_state_file(state_path, {"keys": {case.key: settings}})
    server = subprocess.Popen([sys.executable, str(FAKE), "--port", "0", "--state",
                               str(state_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        args = write_inputs(tmp_path, make_config(case, f"http://127.0.0.1:{port}"),
                            env_vars(case))
        first = run_cli(args)
        assert (first.returncode, first.stdout) == (
            0, "keyaudit alpha okx key ...c0c0: PASS\n")
        write_state_file(state_path, {"keys": {case.key: {**settings, "withdraw": True}}})
        second = run_cli(args)
        assert (second.returncode, second.stdout) == (
            1, "keyaudit alpha okx key ...c0c0: FAIL withdrawals enabled\n")
        write_state_file(state_path, {"clock_offset": 600, "keys": {case.key: settings}})
        third = run_cli(args)
        assert third.returncode == 2 and "50102" in third.stdout
    finally:
        server.terminate()
        assert server.wait(timeout=10) == 0


def test_fake_rejects_unknown_settings() -> None:
    fake = FakeExchange()
    with pytest.raises(ValueError):
        fake.add_key("k", exchange="binance", secret="s", withdraws=True)
    with pytest.raises(ValueError):
        fake.add_key("k", exchange="mtgox", secret="s")
    assert fakeexchange.KEY_DEFAULTS["fail_5xx"] == 0
