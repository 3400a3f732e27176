"""`invoke report`: gather each host once (``playbooks/report.yml``), run ssh-audit, write HTML and Markdown.

Exit code: 0 when every report was written and nothing in a scorecard fails, 1 when a score fails,
2 when a host could not be read (unreachable, the probe failed) or the inventory is wrong.
"""

from __future__ import annotations

import concurrent.futures
import json
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botvps import provision, runner, validate
from botvps.paths import PROJECT_ROOT
from botvps.report import render_html, render_md
from botvps.report.build import GatherError, build
from botvps.report.model import FAIL, Report
from botvps.report.sshaudit import AuditResult, audit

PLAYBOOK = PROJECT_ROOT / "playbooks" / "report.yml"
PROBE_TASK = "Report, read everything in one call"
TARGET_TASK = "Report, where the controller reaches this host's SSH"
CALLBACK_ENV = runner.JSON_CALLBACK_ENV


@dataclass
class Gathered:
    host: str
    document: dict[str, Any] | None = None
    target: tuple[str, int] | None = None
    error: str = ""  # why there is no document


def parse_callback(output: str) -> dict[str, Gathered]:
    """The JSON callback's document (its last line starting with ``{``) as one Gathered per host."""
    try:
        document = runner.callback_document(output)
        tasks = [task for play in document["plays"] for task in play["tasks"]]  # type: ignore[index]
    except (KeyError, TypeError):
        tail = " | ".join(line for line in output.strip().splitlines()[-4:])
        raise GatherError(f"ansible-playbook gave no result: {tail[-600:] or 'no output'}") from None
    gathered: dict[str, Gathered] = {}
    for task in tasks:
        name = task.get("task", {}).get("name", "")
        for host, result in (task.get("hosts") or {}).items():
            entry = gathered.setdefault(host, Gathered(host))
            if result.get("unreachable") or result.get("failed"):
                why = result.get("msg") or result.get("stderr") or "failed"
                entry.error = entry.error or f"{'unreachable' if result.get('unreachable') else 'failed'} at " \
                                             f"'{name}': {' '.join(str(why).split())[:400]}"
            elif name.startswith(PROBE_TASK):
                try:
                    entry.document = json.loads(result.get("stdout") or "")
                except ValueError:
                    entry.error = f"the probe printed no JSON: {(result.get('stderr') or '')[-400:]}"
            elif name.startswith(TARGET_TASK):
                msg = result.get("msg") or {}
                entry.target = (str(msg.get("host")), int(msg.get("port") or 22))
    for entry in gathered.values():
        if entry.document is None and not entry.error:
            entry.error = "the probe did not run"
    return gathered


def gather(inventory: Path, host: str | None, vault_password_file: str | None) -> dict[str, Gathered]:
    result = runner.playbook(PLAYBOOK, inventory, provision.ansible_args(host, vault_password_file), echo=False,
                             env=CALLBACK_ENV)
    return parse_callback(result.output)


def ssh_audit_for(entry: Gathered, connected_at: float) -> AuditResult:
    """ssh-audit of the host; ``connected_at``: when the playbook opened its SSH connections (monotonic)."""
    osr = (entry.document or {}).get("os_release") or {}
    if entry.target is None:
        return AuditResult("unknown", reason="the playbook did not say where the host's SSH is")
    # The playbook's two connections (the connect role's login check, Ansible's own) count against ufw's limit.
    return audit(entry.target[0], entry.target[1], osr.get("ID", "").strip('"'), osr.get("VERSION_ID", "").strip('"'),
                 earlier=[connected_at, connected_at])


def write(report: Report, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    html, markdown = out / f"{report.host}.html", out / f"{report.host}.md"
    html.write_text(render_html.render(report), encoding="utf-8")
    markdown.write_text(render_md.render(report), encoding="utf-8")
    return html, markdown


def load_hosts(inventory: Path, host: str | None, vault_password_file: str | None) -> tuple[dict[str, dict], str]:
    """The inventory's hosts (only ``host`` when given) and an error message ("" when fine)."""
    try:
        hosts = validate.load_inventory(inventory, vault_password_file)
    except validate.InventoryError as err:
        return {}, validate.format_problems(err.problems)
    if host and host not in hosts:
        return {}, (f"all: --host: {host} is not in the inventory {inventory} -> use one of: "
                    f"{', '.join(sorted(hosts))}")
    return ({host: hosts[host]} if host else hosts), ""


def collect(inventory: Path, host: str | None, vault_password_file: str | None, secrets: Iterable[str] = (),
            log: Callable[[str], None] = lambda m: None) -> dict[str, Report | str]:
    """Each host's report, or why there is none. Raises GatherError when the playbook gave no result."""
    started = time.monotonic()
    log(f"report: reading the hosts ({PLAYBOOK.relative_to(PROJECT_ROOT)}) ...")
    gathered = gather(Path(inventory), host, vault_password_file)
    log(f"report: read in {time.monotonic() - started:.0f} s; ssh-audit (paced to ufw's SSH limit: up to a minute) ...")
    readable = [g for g in gathered.values() if g.document is not None]
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(8, len(readable)))) as pool:
        # The playbook's connections were opened before the probe ran on the host: no later than this.
        audits = dict(zip([g.host for g in readable], pool.map(
            lambda g: ssh_audit_for(g, time.monotonic() - float((g.document or {}).get("seconds") or 0)), readable)))
    reports: dict[str, Report | str] = {}
    for name, entry in sorted(gathered.items()):
        try:
            reports[name] = build(name, entry.document, audits[name], secrets) if entry.document else entry.error
        except GatherError as err:
            reports[name] = str(err)
    log(f"report: done in {time.monotonic() - started:.0f} s")
    return reports


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def run(inventory: Path = Path("inventory"), host: str | None = None, out: Path = Path("reports"),
        vault_password_file: str | None = None, log: Callable[[str], None] = _stderr) -> int:
    hosts, error = load_hosts(Path(inventory), host, vault_password_file)
    if error:
        print(error, file=sys.stderr)
        return 2
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        print(f"all: --out: cannot create {out} ({err.strerror}) -> give a directory you can write to", file=sys.stderr)
        return 2
    secrets = validate._collect_secrets(hosts)  # noqa: SLF001 - the inventory's secret values, to mask
    try:
        reports = collect(Path(inventory), host, vault_password_file, secrets, log)
    except GatherError as err:
        print(f"report: {err}", file=sys.stderr)
        return 2
    codes = []
    for name, report in reports.items():
        if isinstance(report, str):
            print(f"{name}: no report: {report}")
            codes.append(2)
            continue
        html, markdown = write(report, Path(out))
        failing = [s.title for s in report.scorecard if s.status == FAIL]
        print(f"{name}: {report.status.upper()}" + (f" ({', '.join(failing)})" if failing else "")
              + f" -> {html} and {markdown}")
        codes.append(1 if failing else 0)
    return max(codes, default=2)
