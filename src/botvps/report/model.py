"""The report as data: sections of tables, each with a status. The renderers only walk this."""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass, field

PASS, WARN, FAIL, INFO, UNKNOWN = "pass", "warn", "fail", "info", "unknown"
STATUSES = (PASS, WARN, FAIL, INFO, UNKNOWN)
# Worst first: the status of a group of results is the worst among them.
SEVERITY = {FAIL: 4, WARN: 3, UNKNOWN: 2, PASS: 1, INFO: 0}

# Section keys in page order (the HTML ids; tests/unit/test_report_chromium.py looks for each).
SCORECARD = ("ssh-audit", "lynis", "bot-units", "firewall", "updates", "clock", "keyaudit")
REVIEW = ("ssh-logins", "failed-logins", "fail2ban", "sudo", "packages")


def worst(statuses: list[str], default: str = PASS) -> str:
    return max(statuses, key=lambda s: SEVERITY[s]) if statuses else default


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]
    caption: str = ""
    statuses: list[str] = field(default_factory=list)  # one per row when rows carry a status (colour)


@dataclass
class Section:
    key: str
    title: str
    status: str
    headline: str  # the score or count, shown large: "pass", "1.9 OK", "12 logins"
    summary: str  # one sentence: what it means
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"section {self.key}: status {self.status!r} is not one of {', '.join(STATUSES)}")


@dataclass
class Report:
    host: str
    generated: float  # epoch seconds, on the host
    since: float
    days: int
    facts: list[tuple[str, str]]  # (label, value): OS, kernel, uptime, journal coverage
    scorecard: list[Section]
    review: list[Section]
    problems: list[str] = field(default_factory=list)  # what could not be read

    @property
    def status(self) -> str:
        return worst([s.status for s in self.scorecard])


def when(epoch: float | None) -> str:
    """``2025-01-31 14:05 UTC`` ("never" for None)."""
    if epoch is None:
        return "never"
    return _dt.datetime.fromtimestamp(epoch, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


LOG_TIME = re.compile(r"^(\d{4}-\d{2}-\d{2}) +(\d{2}:\d{2}:\d{2})")


def local_epoch(text: str, utc_offset: int) -> float | None:
    """``2025-01-31 14:05:00`` (host local time, ``utc_offset`` seconds east of UTC) as epoch seconds."""
    match = LOG_TIME.match(text)
    if not match:
        return None
    moment = _dt.datetime.strptime(f"{match.group(1)} {match.group(2)}", "%Y-%m-%d %H:%M:%S")
    return moment.replace(tzinfo=_dt.timezone.utc).timestamp() - utc_offset


def duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``5 h``, ``3 days``."""
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


def ago(epoch: float | None, now: float) -> str:
    """``3 h ago`` relative to ``now`` ("-" for None)."""
    return "-" if epoch is None else f"{duration(now - epoch)} ago"


def plural(count: int, word: str, many: str | None = None) -> str:
    return f"{count} {word if count == 1 else many or word + 's'}"


def short(text: str, limit: int = 200) -> str:
    """``text`` on one line, cut to ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
