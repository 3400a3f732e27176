"""The report's HTML and Markdown, and the promise that no secret value reaches either (or the probe's output)."""

from __future__ import annotations

import builtins
import json
import re
from pathlib import Path

import pytest
from report_samples import at, document, ok

from botvps.hostcode import reportprobe as probe
from botvps.report import render_html, render_md
from botvps.report.build import build
from botvps.report.model import PASS, REVIEW, SCORECARD
from botvps.report.sshaudit import AuditResult

PASSED = AuditResult(PASS, "Hardened Debian 12 (version 3)", "127.0.0.1:22")
SENTINEL = "SENTINEL-7f3a9c"


def test_html_is_self_contained_and_has_every_section():
    page = render_html.render(build("vps1", document(), PASSED))
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert not re.search(r"<script|<link|<img|<iframe|\bsrc=|url\(|@import|https?://", page, re.I)
    for key in SCORECARD + REVIEW:
        assert f'id="{key}"' in page and f'href="#{key}"' in page
    assert "&lt;script&gt;x&lt;/script&gt;" in page and "<script>x</script>" not in page  # a name tried over SSH


def test_markdown_has_every_section_and_escapes_pipes():
    doc = document()
    doc["journal"]["entries"].append([at(1), "sshd", "77", "Invalid user a|b from 192.0.2.99 port 1"])
    report = build("vps1", doc, PASSED)
    text = render_md.render(report)
    for section in report.scorecard + report.review:
        assert f"### {section.title}: " in text
    assert "a\\|b" in text and "## Scorecard" in text and "## Monthly log review: the last 30 days" in text


# ---------------------------------------------------------------- no secret values


def planted() -> dict:
    """A document in which secret values turn up wherever free text can carry them."""
    doc = document()
    entries = doc["journal"]["entries"]
    entries.append([at(1), "sudo", "5001", f"     ops : TTY=pts/0 ; PWD=/home/ops ; USER=root ; "
                                           f"COMMAND=/usr/bin/env BINANCE_SECRET={SENTINEL}-a /opt/run"])
    entries.append([at(1), "sudo", "5002", f"     ops : TTY=pts/0 ; PWD=/home/ops ; USER=root ; "
                                           f"COMMAND=/usr/local/bin/tool --api-key {SENTINEL}-b --password={SENTINEL}-c"])
    entries.append([at(1), "sudo", "5003", f"     ops : TTY=pts/0 ; PWD=/home/ops ; USER=root ; "
                                           f"COMMAND=/usr/bin/echo {SENTINEL}-vault"])
    entries.append([at(1), "sshd", "5004", f"Invalid user {SENTINEL}-vault from 192.0.2.5 port 22"])
    # A bot's own output (never collected by the probe; if it were, no section reads it).
    entries.append([at(1), "botvps-bot-alpha", "5005", f"ALPHA_API_KEY={SENTINEL}-bot"])
    doc["apt_history"]["lines"] += ["", "Start-Date: 2025-03-30  10:00:00",
                                    f"Commandline: apt-get install -o Acquire::http::Proxy=http://u:{SENTINEL}-vault@p x",
                                    "Install: x:amd64 (1.0)", "End-Date: 2025-03-30  10:00:01"]
    doc["ufw_status"] = ok(doc["ufw_status"]["out"] + f"9000/tcp                   ALLOW IN    Anywhere   # {SENTINEL}-vault\n")
    return doc


def test_no_secret_value_in_the_html_or_markdown():
    report = build("vps1", planted(), PASSED, secrets=[f"{SENTINEL}-vault"])
    for text in (render_html.render(report), render_md.render(report)):
        assert SENTINEL not in text
        assert "BINANCE_SECRET=***" in text and "--api-key ***" in text


def test_the_probe_never_opens_a_secrets_file_nor_keeps_bot_output(tmp_path, monkeypatch):
    """Run the probe's gather() against a planted /etc/botvps: secrets.env beside keyaudit.json, a bot
    journal with a secret in it, a keyaudit verdict with an unexpected field."""
    etc = tmp_path / "etc" / "botvps" / "beta"
    etc.mkdir(parents=True)
    (etc / "keyaudit.json").write_text(json.dumps({"bot": "beta", "exchange": "binance", "key_var": "BINANCE_KEY"}))
    (etc / "secrets.env").write_text(f"BINANCE_KEY={SENTINEL}\n")
    opened: list[str] = []
    real_open = builtins.open

    def tracking_open(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    def fake_glob(pattern):
        if pattern == "/etc/botvps/*/keyaudit.json":
            return [str(etc / "keyaudit.json")]
        if pattern == "/etc/systemd/system/botvps-bot-*.service":
            return ["/etc/systemd/system/botvps-bot-beta.service"]
        return []

    def journal_line(ident: str, message: str) -> str:
        return json.dumps({"__REALTIME_TIMESTAMP": "1743300000000000", "SYSLOG_IDENTIFIER": ident, "_PID": "1",
                           "MESSAGE": message})

    commands: list[list[str]] = []

    def fake_run(argv, timeout=60):
        commands.append(list(argv))
        if argv[0] == "journalctl" and "botvps-bot-beta" in argv:
            out = "\n".join([journal_line("botvps-bot-beta", f"BINANCE_KEY={SENTINEL} leaked by the bot"),
                             journal_line("botvps-bot-beta", "keyaudit beta binance key ...9c1e: PASS")])
        elif argv[0] == "journalctl" and "botvps-keyaudit" in argv:
            out = journal_line("botvps-keyaudit", json.dumps({"bot": "beta", "status": "pass", "debug": SENTINEL}))
        else:
            out = ""
        return {"rc": 0, "out": out, "err": ""}

    monkeypatch.setattr(builtins, "open", tracking_open)
    monkeypatch.setattr(probe.glob, "glob", fake_glob)
    monkeypatch.setattr(probe, "run", fake_run)
    monkeypatch.setattr(probe, "journal_start", lambda: None)
    out = json.dumps(probe.gather({"days": 30}))
    assert SENTINEL not in out
    assert not [p for p in opened if "secrets.env" in p]
    assert not [c for c in commands if any("secrets.env" in a for a in c)]
    assert "keyaudit beta binance key ...9c1e: PASS" in out  # the verdict line is kept


@pytest.mark.parametrize("name", ["render_html.py", "render_md.py"])
def test_renderers_read_nothing_but_the_report(name):
    source = (Path(render_html.__file__).parent / name).read_text()
    assert "open(" not in source and "subprocess" not in source
