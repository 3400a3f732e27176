"""The report page as a browser sees it: rendered by headless Chromium (Debian's ``chromium`` package),
its DOM must hold every section, each a top-level block with its title, status and card.

``BOTVPS_REPORT_SCREENSHOT=docs/report.png`` also writes the README's screenshot (from the
document recorded on a real VM, ``tests/unit/fixtures/report-debian12.json``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest
from report_samples import recorded

from botvps.report import render_html
from botvps.report.build import build
from botvps.report.model import PASS, REVIEW, SCORECARD, STATUSES
from botvps.report.sshaudit import AuditResult

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="Chromium is not installed (apt-get install chromium; scripts/bootstrap does)")
PASSED = AuditResult(PASS, "Hardened Debian 12 (version 3)", "127.0.0.1:49891")


def chromium(*args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="botvps-chromium-") as profile:
        return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                               "--disable-background-networking", "--disable-component-update", "--disable-sync",
                               "--hide-scrollbars", f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=120)


class Sections(HTMLParser):
    """Every element with an id: its tag, attributes, ancestors' tags, and the text of its <h3>."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, dict[str, str]]] = []
        self.found: dict[str, dict] = {}
        self.cards: set[str] = set()
        self._title_of: str | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attributes = {k: v or "" for k, v in attrs}
        if tag == "a" and "card" in attributes.get("class", "").split():
            self.cards.add(attributes.get("href", "").lstrip("#"))
        if "id" in attributes:
            self.found[attributes["id"]] = {"tag": tag, "attrs": attributes, "parents": [t for t, _ in self.stack],
                                            "title": ""}
        if tag == "h3" and self.stack and "id" in self.stack[-1][1]:
            self._title_of = self.stack[-1][1]["id"]
        elif tag == "h3" and len(self.stack) > 1 and "id" in self.stack[-2][1]:
            self._title_of = self.stack[-2][1]["id"]
        if tag not in ("meta", "br", "img", "link", "input", "hr"):
            self.stack.append((tag, attributes))

    def handle_endtag(self, tag: str) -> None:
        if tag == "h3":
            self._title_of = None
        while self.stack:
            if self.stack.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        if self._title_of:
            self.found[self._title_of]["title"] += data


def missing_sections(dom: str) -> list[str]:
    """What is wrong with the page's sections ([] when every one is there, whole and in place)."""
    parser = Sections()
    parser.feed(dom)
    problems = []
    for key in SCORECARD + REVIEW:
        element = parser.found.get(key)
        if element is None:
            problems.append(f"{key}: no element")
            continue
        if element["tag"] != "section" or element["parents"][-1:] != ["main"]:
            problems.append(f"{key}: a <{element['tag']}> inside {'/'.join(element['parents'])}, not a section of main")
        if element["attrs"].get("data-status") not in STATUSES:
            problems.append(f"{key}: no status")
        if not element["title"].strip():
            problems.append(f"{key}: no title")
        if key not in parser.cards:
            problems.append(f"{key}: no card")
    for key in ("scorecard", "review"):
        if key not in parser.found:
            problems.append(f"{key}: no heading")
    return problems


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("report") / "report-dev.html"
    path.write_text(render_html.render(build("report-dev", recorded(), PASSED)), encoding="utf-8")
    return path


def test_chromium_renders_every_section(page):
    done = chromium("--dump-dom", page.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    assert "<main>" in done.stdout
    assert missing_sections(done.stdout) == []


def test_the_check_fails_when_a_section_is_missing_or_broken(page, tmp_path):
    html = page.read_text()
    start = html.index('<section class="detail', html.index('id="firewall"') - 200)
    end = html.index("</section>", start) + len("</section>")
    without = tmp_path / "without-firewall.html"
    without.write_text(html[:start] + html[end:])
    done = chromium("--dump-dom", without.as_uri())
    assert missing_sections(done.stdout) == ["firewall: no element"]
    unclosed = tmp_path / "unclosed.html"
    unclosed.write_text(html[:end - len("</section>")] + html[end:])  # the firewall section swallows the next
    problems = missing_sections(chromium("--dump-dom", unclosed.as_uri()).stdout)
    assert problems and all("not a section of main" in p for p in problems)


def test_screenshot(page, tmp_path):
    target = Path(os.environ.get("BOTVPS_REPORT_SCREENSHOT") or tmp_path / "report.png")
    if not target.is_absolute():
        target = ROOT / target
    done = chromium("--window-size=1280,1700", f"--screenshot={target}", page.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    data = target.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000  # a page, not a blank
