"""Run Ansible's and the toolkit's command-line tools with the project's configuration."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from botvps import paths
from botvps.paths import PROJECT_ROOT

_RECAP = re.compile(
    r"^(?P<host>\S+)\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)"
    r"\s+failed=(?P<failed>\d+)"
)


def environment(extra: dict[str, str | None] | None = None) -> dict[str, str]:
    """The environment Ansible runs in: the project's ansible.cfg and this venv's tools first on PATH.
    ``extra`` overrides it; a None there removes the variable."""
    env = dict(os.environ)
    for name, value in (extra or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    env["ANSIBLE_CONFIG"] = str(PROJECT_ROOT / "ansible.cfg")
    # ansible.cfg's control_path_dir: Ansible creates it, testinfra's ssh does not (and without it
    # every check is a new SSH connection, which ufw's rate limit soon rejects).
    paths.control_dir(env.get("HOME")).mkdir(parents=True, exist_ok=True, mode=0o700)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("ANSIBLE_FORCE_COLOR", "0")
    env.update({name: value for name, value in (extra or {}).items() if value is not None})
    if env.get("BOTVPS_MITOGEN") == "1":
        env.update(mitogen_environment(env.get("ANSIBLE_STRATEGY", "linear")))
    return env


def mitogen_environment(strategy: str = "linear") -> dict[str, str]:
    """Mitogen's strategy in place of Ansible's (opt-in: ``BOTVPS_MITOGEN=1``): one Python
    interpreter per host kept over one SSH connection, instead of a module upload per task.
    The strategies are shims in plugins/strategy (ansible.cfg) around the pinned mitogen package."""
    return {"ANSIBLE_STRATEGY": strategy if strategy.startswith("mitogen") else f"mitogen_{strategy}"}


@dataclass
class PlaybookResult:
    returncode: int
    seconds: float
    recap: dict[str, dict[str, int]] = field(default_factory=dict)
    output: str = ""

    @property
    def changed(self) -> int:
        return sum(row["changed"] for row in self.recap.values())


def parse_recap(output: str) -> dict[str, dict[str, int]]:
    recap: dict[str, dict[str, int]] = {}
    for line in output.splitlines():
        match = _RECAP.match(line.strip())
        if match:
            row = match.groupdict()
            host = row.pop("host")
            recap[host] = {k: int(v) for k, v in row.items()}
    return recap


def playbook(playbook_path: Path, inventory: Path, extra_args: list[str] | None = None,
             env: dict[str, str] | None = None, echo: bool = True) -> PlaybookResult:
    """Run ansible-playbook, streaming its output, and return the recap."""
    command = ["ansible-playbook", "-i", str(inventory), str(playbook_path), *(extra_args or [])]
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=environment(env), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, bufsize=1, stdin=subprocess.DEVNULL)
    lines: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)
        if echo:
            sys.stdout.write(line)
    process.wait()
    output = "".join(lines)
    return PlaybookResult(process.returncode, time.monotonic() - started, parse_recap(output), output)


def summary(result: PlaybookResult, title: str) -> str:
    rows = [f"{title}: {'OK' if result.returncode == 0 else 'FAILED'} in {result.seconds:.0f} s"]
    rows.append(f"  {'host':30} {'ok':>4} {'changed':>8} {'unreachable':>12} {'failed':>7}")
    for host, row in sorted(result.recap.items()):
        rows.append(f"  {host:30} {row['ok']:>4} {row['changed']:>8} {row['unreachable']:>12} {row['failed']:>7}")
    return "\n".join(rows)


# The JSON callback, one line at the end (indent 0); anything before it is a warning.
JSON_CALLBACK_ENV = {"ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json", "ANSIBLE_JSON_INDENT": "0",
                     "ANSIBLE_CALLBACK_RESULT_FORMAT": "json", "ANSIBLE_NOCOLOR": "1"}


def callback_document(stdout: str) -> dict | None:
    """The JSON callback's report: the last line of ``stdout`` that starts with ``{`` (None if there is none)."""
    documents = [line for line in stdout.splitlines() if line.startswith("{")]
    try:
        document = json.loads(documents[-1])
    except (ValueError, IndexError):
        return None
    return document if isinstance(document, dict) else None


def json_playbook(playbook_path: Path, inventory: Path, extra_args: list[str] | None = None,
                  env: dict[str, str] | None = None) -> tuple[dict | None, str]:
    """ansible-playbook with the JSON callback: (its report, None when it printed none; stderr or output tail)."""
    command = ["ansible-playbook", "-i", str(inventory), str(playbook_path), *(extra_args or [])]
    result = subprocess.run(command, cwd=PROJECT_ROOT, env=environment({**JSON_CALLBACK_ENV, **(env or {})}),
                            capture_output=True, text=True, stdin=subprocess.DEVNULL)
    document = callback_document(result.stdout)
    return (document, result.stderr) if document is not None else (None, (result.stderr + result.stdout)[-2000:])


def task_results(report: dict, task_prefix: str) -> dict[str, dict]:
    """Per host, the result of the last task whose name starts with ``task_prefix`` (JSON callback report)."""
    found: dict[str, dict] = {}
    for play in report.get("plays") or []:
        for task in play.get("tasks") or []:
            if str((task.get("task") or {}).get("name", "")).startswith(task_prefix):
                found.update(task.get("hosts") or {})
    return found


def host_failures(report: dict) -> dict[str, str]:
    """Per host, the first task that failed or found it unreachable: "task: message"."""
    failures: dict[str, str] = {}
    for play in report.get("plays") or []:
        for task in play.get("tasks") or []:
            name = (task.get("task") or {}).get("name", "?")
            for host, result in (task.get("hosts") or {}).items():
                if host not in failures and (result.get("failed") or result.get("unreachable")):
                    failures[host] = f"{name}: {result.get('msg') or result.get('stderr') or 'failed'}"
    return failures
