"""invoke rebuild: the restore plan, the whitelist steps, the drift verdict, and its order of steps (faked)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from botvps import drift, rebuild, runner
from botvps.hostcode import statehost

StateError = statehost.StateError

BOTS = [
    {"name": "alpha", "exchange": "none"},
    {"name": "beta", "exchange": "binance", "api_key_var": "BINANCE_KEY"},
    {"name": "gamma", "exchange": "okx", "api_key_var": "OKX_KEY"},
]


def test_plan_restores_the_backed_up_bots_and_starts_the_others_empty():
    result = rebuild.plan({"bots": {"alpha": {}, "beta": {}}}, "vps2", BOTS)
    assert result.restore == ["alpha", "beta"] and result.fresh == ["gamma"] and result.problems == []


def test_plan_refuses_a_backup_bot_the_new_host_does_not_declare():
    result = rebuild.plan({"bots": {"alpha": {}, "delta": {}}}, "vps2", BOTS)
    assert result.restore == ["alpha"]
    [problem] = result.problems
    assert "the backup has bot delta, which vps2 does not declare" in problem and "add it to vps2's bots" in problem


def test_whitelist_steps_name_the_exchange_both_addresses_and_the_check():
    lines = "\n".join(rebuild.whitelist_steps("vps2", "198.51.100.7", "203.0.113.10", BOTS))
    assert "alpha: no exchange key (exchange: none): nothing to update" in lines
    assert "beta (binance, the key in BINANCE_KEY): Binance: Account > API Management" in lines
    assert "remove 203.0.113.10, add 198.51.100.7" in lines
    assert "gamma (okx, the key in OKX_KEY): OKX:" in lines
    assert "invoke audit-keys --host vps2 --bot beta" in lines and "invoke audit-keys --host vps2 --bot gamma" in lines


def test_every_exchange_keyaudit_knows_has_whitelist_steps():
    from botvps import validate

    assert set(rebuild.WHITELIST_STEPS) == set(validate.EXCHANGES) - {"none"}


def test_the_whitelist_fence_is_for_the_exchanges_whose_whitelist_keyaudit_reads():
    assert rebuild.SHOWS_WHITELIST == ("bybit", "okx", "kraken")


def test_whitelist_steps_say_when_the_address_did_not_change():
    lines = rebuild.whitelist_steps("vps1", "203.0.113.10", "203.0.113.10", BOTS[1:2])
    assert "the backup's server had the same address" in lines[0]


def report(*items: tuple[str, str]) -> list[drift.HostReport]:
    host = drift.HostReport("vps2")
    for check, detail in items:
        host.add(check, detail)
    return [host]


def test_drift_verdict_clean_pending_updates_and_drift():
    assert rebuild.drift_verdict(report()) == (0, "clean")
    code, text = rebuild.drift_verdict(report(("security-updates", "2 pending: openssl")))
    assert code == 0 and "pending Debian updates" in text and "openssl" in text
    assert rebuild.drift_verdict(report(("security-updates", "x"), ("bot-services", "alpha not running")))[0] == 1
    unreachable = drift.HostReport("vps2", unreachable="no route")
    assert rebuild.drift_verdict([unreachable])[0] == 2


# ---------------------------------------------------------------- the order of steps, with every step faked


@pytest.fixture
def faked(monkeypatch, tmp_path):
    calls: list[str] = []
    hosts = {"vps2": {"static_ipv4": "198.51.100.7", "ansible_host": "198.51.100.7", "bots": BOTS[:2]}}
    monkeypatch.setattr(rebuild.validate, "load_inventory", lambda inv, pw=None: hosts)
    monkeypatch.setattr(rebuild.validate, "check", lambda inv, pw=None, reach=True: (0, "ok"))

    class FakeBackup:
        directory = tmp_path / "backups" / "vps1" / "s1"
        manifest = {"bots": {"alpha": {}, "beta": {}}, "created": "2025-01-02T03:04:05Z"}
        manifest_sha256 = "ab" * 32
        host, static_ipv4 = "vps1", "203.0.113.10"

    def load(path):
        calls.append("load")
        if "broken" in str(path):
            raise StateError(f"{path}/beta.tar.gz: sha256 ... does not match the manifest")
        return FakeBackup()

    monkeypatch.setattr(rebuild.backups, "load", load)
    monkeypatch.setattr(rebuild.backups, "verify", lambda b, bots: calls.append(f"verify {bots}") or {n: 2 for n in bots})

    def provision(inventory, limit=None, vault_password_file=None, extra=None, echo=True):
        calls.append(f"provision {limit} {extra}")
        return runner.PlaybookResult(0, 1.0, {}, "")

    monkeypatch.setattr(rebuild.provision, "provision", provision)
    monkeypatch.setattr(rebuild, "_restore", lambda inv, host, b, bots, pw, force: calls.append(f"restore {bots}") or (
        {"restored": {"alpha": 2, "beta": 2}, "kept": [], "units": {"botvps-bot-alpha.service": "active"}}, ""))
    monkeypatch.setattr(rebuild.drift, "check", lambda inv, limit, pw: calls.append(f"drift {limit}") or report())
    return calls


def test_rebuild_verifies_then_provisions_held_then_restores_then_checks_drift(faked, tmp_path, capsys):
    out = tmp_path / "report.json"
    code = rebuild.run(Path("inv"), "vps2", tmp_path / "backups" / "vps1", report_file=out, new_keys=["beta"])
    assert code == 0
    assert faked == ["load", "verify ['alpha', 'beta']", 'provision vps2 [\'-e\', \'{"bots_start": false}\']',
                     "restore ['alpha', 'beta']", "drift vps2"]
    text = capsys.readouterr().out
    assert "new static IPv4: 198.51.100.7 (the backup's server had 203.0.113.10)" in text
    assert "remove 203.0.113.10, add 198.51.100.7" in text
    written = json.loads(out.read_text())
    assert written["exit"] == 0 and set(written["seconds"]) >= {"provision", "restore", "drift", "total"}


def test_a_corrupted_backup_stops_the_rebuild_before_anything_is_contacted(faked, tmp_path, capsys):
    assert rebuild.run(Path("inv"), "vps2", tmp_path / "broken") == 2
    assert faked == ["load"]
    assert "beta.tar.gz: sha256" in capsys.readouterr().err


def test_an_unknown_host_stops_the_rebuild(faked, capsys):
    assert rebuild.run(Path("inv"), "vps9", None) == 2
    assert faked == []
    assert "vps9 is not in the inventory" in capsys.readouterr().err


def test_a_bot_not_running_after_the_restore_fails_the_rebuild(faked, monkeypatch, tmp_path):
    monkeypatch.setattr(rebuild, "_restore", lambda *a: (
        {"restored": {"alpha": 2}, "kept": [], "units": {"botvps-bot-beta.service": "failed"}}, ""))
    assert rebuild.run(Path("inv"), "vps2", tmp_path / "backups", new_keys=["beta"]) == 1


def test_task_results_and_failures_from_the_json_callback():
    report_json = {"plays": [{"tasks": [
        {"task": {"name": "Back up, archive every bot"}, "hosts": {"vps1": {"stdout": "{}"}, "vps2": {"failed": True,
                                                                                                       "msg": "boom"}}},
        {"task": {"name": "Back up, fetch"}, "hosts": {"vps1": {"unreachable": True, "msg": "gone"}}},
    ]}]}
    assert runner.task_results(report_json, "Back up, archive") == {"vps1": {"stdout": "{}"},
                                                                    "vps2": {"failed": True, "msg": "boom"}}
    assert runner.host_failures(report_json) == {"vps2": "Back up, archive every bot: boom", "vps1": "Back up, fetch: gone"}


def test_without_a_backup_the_bots_start_with_provisioning(faked):
    assert rebuild.run(Path("inv"), "vps2", None, new_keys=["beta"]) == 0
    assert faked == ["provision vps2 []", "drift vps2"]


# ---------------------------------------------------------------- fencing: never two servers trading one account


def test_a_key_whose_whitelist_botvps_cannot_read_needs_a_new_key_or_the_risk_flag(faked, tmp_path, capsys):
    """Binance (and Coinbase) do not show the list: without --new-key or the risk flag nothing is contacted."""
    assert rebuild.run(Path("inv"), "vps2", tmp_path / "backups" / "vps1") == 2
    assert faked == ["load", "verify ['alpha', 'beta']"]  # the backup is checked; no host is contacted
    err = capsys.readouterr().err
    assert "beta (binance): binance does not show botvps a key's IP whitelist" in err
    assert "restricted to 198.51.100.7" in err and "invoke secrets.set beta BINANCE_KEY" in err
    assert "--new-key beta" in err and rebuild.RISK_FLAG in err and "Nothing was changed" in err


def test_the_risk_flag_is_a_fence_that_says_what_it_risks(faked, tmp_path, capsys):
    assert rebuild.run(Path("inv"), "vps2", tmp_path / "backups" / "vps1", accept_risk=True) == 0
    assert "beta: NOT fenced (--accept-two-servers-risk): if the old server comes back, two servers trade one " \
           "account" in capsys.readouterr().out


def test_new_key_must_name_a_bot_with_a_key():
    result = rebuild.fences(BOTS, "198.51.100.7", new_keys=["beta", "alpha", "zeta"])
    assert result.new_key == ["beta"] and result.whitelist == ["gamma"]
    assert [p.split(":")[0] for p in result.problems] == ["--new-key alpha", "--new-key zeta"]


def test_fences_per_exchange():
    result = rebuild.fences(BOTS + [{"name": "delta", "exchange": "coinbase"}], "198.51.100.7", new_keys=["beta"])
    assert (result.whitelist, result.new_key, result.accepted) == (["gamma"], ["beta"], [])
    [problem] = result.problems
    assert problem.startswith("delta (coinbase):") and "invoke secrets.set delta THE_KEY_VARIABLE" in problem
    assert rebuild.fences(BOTS, "198.51.100.7", accept_risk=True).accepted == ["beta", "gamma"]


@pytest.fixture
def okx_host(faked, monkeypatch):
    hosts = {"vps2": {"static_ipv4": "198.51.100.7", "ansible_host": "198.51.100.7", "bots": [BOTS[0], BOTS[2]]}}
    monkeypatch.setattr(rebuild.validate, "load_inventory", lambda inv, pw=None: hosts)
    monkeypatch.setattr(rebuild.backups, "verify", lambda b, bots: faked.append(f"verify {bots}") or {})
    monkeypatch.setattr(rebuild, "plan", lambda manifest, host, bots: rebuild.RestorePlan(host, ["alpha", "gamma"]))
    answer: dict = {"results": [{"bot": "gamma", "status": "warn", "reasons": [], "exit": 0}], "unreachable": {}}

    def collect(inventory, host, bot=None, vault_password_file=None, fence=False):
        faked.append(f"audit {host} fence={fence}")
        return answer["results"], answer["unreachable"], ""

    monkeypatch.setattr(rebuild.audit, "collect", collect)
    return answer


def test_an_old_address_still_in_the_whitelist_keeps_every_bot_stopped(faked, okx_host, tmp_path, capsys):
    okx_host["results"] = [{"bot": "gamma", "status": "fail", "exit": 1,
                            "reasons": ["IP whitelist also allows 203.0.113.10 (rebuild fence: ...)"]}]
    assert rebuild.run(Path("inv"), "vps2", tmp_path / "backups" / "vps1") == 1
    assert faked == ["load", "verify ['alpha', 'gamma']", 'provision vps2 [\'-e\', \'{"bots_start": false}\']',
                     "audit vps2 fence=True"]  # provisioned held, fenced, and no restore: no bot started
    err = capsys.readouterr().err
    assert "no bot was started on vps2" in err and "gamma: FAIL IP whitelist also allows 203.0.113.10" in err
    assert "OKX: Profile > API keys" in err and "run the rebuild again" in err


def test_an_unchecked_whitelist_is_no_fence(faked, okx_host, tmp_path, capsys):
    okx_host["results"], okx_host["unreachable"] = [], {"vps2": "timed out"}
    assert rebuild.run(Path("inv"), "vps2", tmp_path / "backups" / "vps1") == 1
    assert "gamma: could not be checked (timed out): an unchecked key is no fence" in capsys.readouterr().err
    assert not any(call.startswith("restore") for call in faked)


def test_a_whitelist_of_the_new_address_only_lets_the_bots_start(faked, okx_host, tmp_path, capsys):
    assert rebuild.run(Path("inv"), "vps2", tmp_path / "backups" / "vps1") == 0
    assert faked[-3:] == ["audit vps2 fence=True", "restore ['alpha', 'gamma']", "drift vps2"]
    assert "gamma: fenced (the key's IP whitelist holds only 198.51.100.7)" in capsys.readouterr().out


def test_without_a_backup_a_whitelist_fence_holds_the_bots_then_starts_them(faked, okx_host):
    assert rebuild.run(Path("inv"), "vps2", None) == 0
    assert faked == ['provision vps2 [\'-e\', \'{"bots_start": false}\']', "audit vps2 fence=True",
                     "provision vps2 None", "drift vps2"]


def test_an_invalid_inventory_stops_the_rebuild(faked, monkeypatch, capsys):
    monkeypatch.setattr(rebuild.validate, "check", lambda inv, pw=None, reach=True: (
        1, "vps2: bots.beta.state_sqlite[0]: '/x.db' is absolute -> give the database's path relative to ..."))
    assert rebuild.run(Path("inv"), "vps2", Path("backups")) == 2
    assert faked == []
    err = capsys.readouterr().err
    assert "bots.beta.state_sqlite[0]" in err and "nothing was changed" in err
