"""From the probe's document and ssh-audit's result to a :class:`~botvps.report.model.Report`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from botvps.report import review, scorecard
from botvps.report.model import Report, duration, when
from botvps.report.redact import Redactor
from botvps.report.sshaudit import AuditResult

PROBE_VERSION = 1
# The fields every section reads; a document without them is not the probe's.
REQUIRED = ("probe", "time", "since", "days", "journal", "apt_history")


class GatherError(ValueError):
    """The gathered document is not what the probe writes; the message names the field and the fix."""


def check_document(document: Any) -> dict[str, Any]:
    fix = "gather it again with `invoke report` (the probe is the botvps.infra collection's module_utils/reportprobe.py)"
    if not isinstance(document, dict):
        raise GatherError(f"the gathered document is a {type(document).__name__}, not a JSON object: {fix}")
    missing = [name for name in REQUIRED if name not in document]
    if missing:
        raise GatherError(f"the gathered document has no {', '.join(missing)} field: {fix}")
    if document["probe"] != PROBE_VERSION:
        raise GatherError(f"the gathered document's probe field is {document['probe']!r}, this botvps reads version "
                          f"{PROBE_VERSION}: {fix}")
    for name in ("time", "since"):
        if not isinstance(document[name], (int, float)):
            raise GatherError(f"the gathered document's {name} field is {document[name]!r}, not epoch seconds: {fix}")
    return document


def facts(gather: dict[str, Any]) -> list[tuple[str, str]]:
    osr = gather.get("os_release") or {}
    uptime = float(gather.get("uptime") or 0)
    start = gather.get("journal_start")
    journal = ("persistent" if gather.get("journal_persistent") else "volatile (lost at every reboot)") + \
        f", oldest entry {when(start) if start else 'unknown'}"
    if start is not None and start > gather["since"] + 86400:
        journal += (f": the log review covers only the last {duration(gather['time'] - start)}, "
                    f"not {gather['days']} days")
    return [
        ("host name", str(gather.get("hostname", "?"))),
        ("system", f"{osr.get('PRETTY_NAME', '?').strip(chr(34))}, kernel {gather.get('kernel', '?')}, "
                   f"up {uptime / 86400:.1f} days"),
        ("period", f"{when(gather['since'])} to {when(gather['time'])}"),
        ("journal", journal),
        ("gathered", f"{when(gather['time'])}, in {gather.get('seconds', '?')} s on the host"),
    ]


def problems(gather: dict[str, Any]) -> list[str]:
    """What could not be read, or only in part."""
    found = []
    sources = {"journal": gather.get("journal"), "fail2ban log": gather.get("fail2ban_log"),
               "apt history": gather.get("apt_history"),
               "keyaudit verdicts": (gather.get("keyaudit") or {}).get("verdicts")}
    for name, source in sources.items():
        if not isinstance(source, dict):
            continue
        if source.get("rc") not in (0, None):
            found.append(f"{name}: journalctl failed: {source.get('err', '').strip()[:200]}")
        if source.get("truncated"):
            found.append(f"{name}: more lines than the probe sends; only the newest were read")
    return found


def build(host: str, document: Any, audit: AuditResult, secrets: Iterable[str] = ()) -> Report:
    """The report of one host; raises GatherError when ``document`` is not the probe's."""
    redactor = Redactor(secrets)
    gather = redactor.walk(check_document(document))
    audit = AuditResult(audit.status, audit.policy, audit.target, [redactor.known(f) for f in audit.failures],
                        redactor.known(audit.reason))
    cards = [scorecard.ssh_audit(audit), scorecard.lynis(gather), scorecard.bot_units(gather),
             scorecard.firewall(gather), scorecard.updates(gather), scorecard.clock(gather), scorecard.keyaudit(gather)]
    return Report(host=redactor.known(host), generated=float(gather["time"]), since=float(gather["since"]),
                  days=int(gather["days"]), facts=facts(gather), scorecard=cards,
                  review=review.sections(gather, redactor), problems=problems(gather))
