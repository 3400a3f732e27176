"""Tests for botvps.infra.units' retire option, run in-process with a stand-in systemctl that logs its calls."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("ansible")
from ansible.module_utils.testing import patch_module_args  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
MODULE_PATH = REPO / "collections/ansible_collections/botvps/infra/plugins/modules/units.py"


@pytest.fixture(scope="module")
def units_mod() -> ModuleType:
    spec = importlib.util.spec_from_file_location("botvps_units_module", MODULE_PATH)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A unit directory with bots alpha, beta, gamma and a unit not ours; each bot has config and code."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    systemctl = bin_dir / "systemctl"
    systemctl.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path}/calls\n'
                         f'case "$*" in *fail-me*) exit 1;; esac\n'
                         # is-active: none runs yet; show: the units named in the file "down" have failed
                         f'if [ "$1" = is-active ]; then shift; for u in "$@"; do echo inactive; done; fi\n'
                         f'if [ "$1" = show ]; then for u in "$@"; do case "$u" in *.service)\n'
                         # ("restarting": it crashed and systemd is starting it again, NRestarts=1)
                         f'  n=0; if grep -qx "$u" {tmp_path}/down 2>/dev/null; then s=failed; else s=active; fi\n'
                         f'  if grep -qx "$u" {tmp_path}/restarting 2>/dev/null; then s=activating; n=1; fi\n'
                         f'  printf "Id=%s\\nActiveState=%s\\nSubState=x\\nNRestarts=%s\\n\\n" "$u" "$s" "$n";; esac;'
                         f' done; fi\n'
                         f'exit 0\n')
    systemctl.chmod(0o755)
    analyze = bin_dir / "systemd-analyze"
    analyze.write_text(f'#!/bin/sh\necho "analyze $*" >> {tmp_path}/calls\n'
                       'case "$*" in *broken*) echo "botvps-bot-broken.service: Command /opt/x is not executable" >&2;'
                       ' exit 1;;\n *unrelated*) echo "/lib/systemd/system/foo.service:3: Unknown key" >&2; exit 1;;'
                       ' esac\nexit 0\n')
    analyze.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    units = tmp_path / "units"
    units.mkdir()
    for name in ("alpha", "beta", "gamma", "Not-Ours"):
        (units / f"botvps-bot-{name}.service").write_text("[Service]\n")
        (tmp_path / "etc" / name).mkdir(parents=True)
        (tmp_path / "etc" / name / "secrets.env").write_text("KEY=x\n")
        (tmp_path / "opt" / name / "app").mkdir(parents=True)
        (tmp_path / "state" / name).mkdir(parents=True)
    return tmp_path


def spec(host: Path, keep: list[str], units: list[str] | None = None, names: tuple[str, ...] = ("gamma",)) -> dict:
    return {
        "unit_glob": f"{host}/units/botvps-bot-*.service",
        "keep": keep,
        "names": list(names),
        "name_pattern": "^[a-z][a-z0-9-]{0,30}$",
        "units": units if units is not None else ["botvps-keyaudit@{name}.timer", "botvps-bot-{name}.service"],
        "paths": [f"{host}/units/botvps-bot-{{name}}.service", f"{host}/etc/{{name}}", f"{host}/opt/{{name}}"],
    }


@pytest.fixture
def run(units_mod: ModuleType, capsys: pytest.CaptureFixture[str]):
    def _run(check: bool = False, **options) -> dict:
        with patch_module_args({"_ansible_check_mode": check, **options}), pytest.raises(SystemExit):
            units_mod.main()
        captured = capsys.readouterr()
        # Warnings are in the result, or, once controller code is loaded in this process, shown on stderr.
        return {**json.loads(captured.out.strip().splitlines()[-1]), "_stderr": captured.err}

    return _run


def calls(host: Path) -> list[str]:
    path = host / "calls"
    return path.read_text().splitlines() if path.exists() else []


def test_a_retired_bot_is_stopped_disabled_and_removed_but_its_state_stays(host: Path, run) -> None:
    result = run(retire=spec(host, ["alpha", "beta"]))
    assert result["changed"] and result["retired_now"] == ["gamma"]
    assert calls(host) == ["disable --now botvps-keyaudit@gamma.timer botvps-bot-gamma.service",
                           "reset-failed botvps-keyaudit@gamma.timer botvps-bot-gamma.service", "daemon-reload"]
    assert not (host / "units/botvps-bot-gamma.service").exists()
    assert not (host / "etc/gamma").exists() and not (host / "opt/gamma").exists()
    assert (host / "state/gamma").is_dir(), "a retired bot's state is the operator's to delete"
    for kept in ("alpha", "beta", "Not-Ours"):  # Not-Ours does not match the name pattern
        assert (host / f"units/botvps-bot-{kept}.service").exists() and (host / "etc" / kept / "secrets.env").exists()


def test_check_mode_names_the_bot_and_changes_nothing(host: Path, run) -> None:
    result = run(check=True, retire=spec(host, ["alpha", "beta"]))
    assert result["changed"] and result["retired_now"] == ["gamma"]
    assert calls(host) == []
    assert (host / "etc/gamma/secrets.env").exists()


def test_nothing_to_retire_changes_nothing(host: Path, run) -> None:
    result = run(retire=spec(host, ["alpha", "beta", "gamma"]))
    assert not result["changed"] and result["retired_now"] == [] and result["undeclared"] == []
    assert calls(host) == []


def test_a_bot_missing_from_the_inventory_is_left_running_and_named(host: Path, run) -> None:
    """Not kept and not retired (a typo, a lost host_vars file): nothing stops, the warning names it."""
    result = run(retire=spec(host, ["alpha"], names=()))
    assert not result["changed"] and result["retired_now"] == [] and result["undeclared"] == ["beta", "gamma"]
    assert calls(host) == []
    assert (host / "etc/beta/secrets.env").exists() and (host / "units/botvps-bot-gamma.service").exists()
    warned = " ".join((json.dumps(result.get("warnings", [])) + result["_stderr"]).split())
    assert "left as they are: beta, gamma" in warned and "state: absent" in warned


def test_only_the_named_bot_is_retired(host: Path, run) -> None:
    result = run(retire=spec(host, ["alpha"], names=("gamma",)))
    assert result["retired_now"] == ["gamma"] and result["undeclared"] == ["beta"]
    assert (host / "etc/beta/secrets.env").exists() and not (host / "etc/gamma").exists()


def test_a_name_both_kept_and_retired_is_kept(host: Path, run) -> None:
    result = run(retire=spec(host, ["alpha", "beta", "gamma"], names=("gamma",)))
    assert result["retired_now"] == [] and calls(host) == []


def test_a_bot_that_cannot_be_stopped_keeps_its_files(host: Path, run) -> None:
    result = run(retire=spec(host, ["alpha", "beta"], units=["fail-me-{name}.service"]))
    assert result.get("failed") and "could not stop and disable fail-me-gamma.service" in result["msg"]
    assert (host / "etc/gamma/secrets.env").exists() and (host / "units/botvps-bot-gamma.service").exists()


def test_a_glob_without_one_star_is_refused(host: Path, run) -> None:
    bad = {**spec(host, []), "unit_glob": f"{host}/units/botvps-bot-gamma.service"}
    result = run(retire=bad)
    assert result.get("failed") and "one *" in result["msg"]
    assert (host / "etc/gamma/secrets.env").exists()


def test_a_bot_whose_new_unit_would_fail_is_not_restarted_and_named(host: Path, run) -> None:
    """systemd-analyze verify rejects broken's unit: alpha restarts, broken keeps its old process, the call fails."""
    result = run(restarted=["botvps-bot-alpha.service", "botvps-bot-broken.service"],
                 verify=["botvps-bot-alpha.service", "botvps-bot-broken.service"])
    assert result.get("failed") and "botvps-bot-broken.service: Command /opt/x is not executable" in result["msg"]
    assert result["restarted_now"] == ["botvps-bot-alpha.service"]
    assert "restart botvps-bot-alpha.service" in calls(host)
    assert not any(c.startswith("restart") and "broken" in c for c in calls(host))


def test_complaints_about_other_units_do_not_refuse_ours(host: Path, run) -> None:
    result = run(restarted=["botvps-bot-unrelated.service"], verify=["botvps-bot-unrelated.service"])
    assert not result.get("failed") and result["restarted_now"] == ["botvps-bot-unrelated.service"]


def test_a_start_that_does_not_hold_fails_naming_the_journal(host: Path, run) -> None:
    (host / "down").write_text("botvps-bot-beta.service\n")
    result = run(started=["botvps-bot-alpha.service", "botvps-bot-beta.service"],
                 verify=["botvps-bot-alpha.service", "botvps-bot-beta.service"], settle=1)
    assert result.get("failed") and "botvps-bot-beta.service" in result["msg"]
    assert "journalctl -u botvps-bot-beta.service" in result["msg"] and "alpha" not in result["msg"]


def test_a_bot_caught_restarting_after_a_crash_has_not_held(host: Path, run) -> None:
    """A bot that dies at once and restarts faster than the settle time is caught between two starts."""
    (host / "restarting").write_text("botvps-bot-beta.service\n")
    result = run(started=["botvps-bot-beta.service"], verify=["botvps-bot-beta.service"], settle=1)
    assert result.get("failed") and "journalctl -u botvps-bot-beta.service" in result["msg"]


def test_without_verify_nothing_is_checked_or_waited_for(host: Path, run) -> None:
    (host / "down").write_text("botvps-bot-beta.service\n")
    result = run(started=["botvps-bot-beta.service"], settle=1)
    assert not result.get("failed") and not any(c.startswith("analyze") for c in calls(host))
