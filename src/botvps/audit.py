"""`invoke audit-keys`: run keyaudit on each host (where the key's IP restriction holds) and collect results."""

from __future__ import annotations

import json
from pathlib import Path

from botvps import provision, runner
from botvps.paths import PROJECT_ROOT

PLAYBOOK = PROJECT_ROOT / "playbooks" / "audit-keys.yml"
EXIT_NAMES = {0: "pass", 1: "fail", 2: "could not check"}


def parse(stdout_by_host: dict[str, str]) -> list[dict]:
    """keyaudit's JSON results, each followed by a {"bot", "exit"} line, per host."""
    results: list[dict] = []
    for host, stdout in stdout_by_host.items():
        last: dict | None = None
        for line in stdout.splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if set(item) == {"bot", "exit"}:
                results.append({**(last or {"bot": item["bot"], "status": "error", "reasons": ["no result"]}),
                                "host": host, "exit": item["exit"]})
                last = None
            else:
                last = item
    return results


def collect(inventory: Path, host: str | None = None, bot: str | None = None, vault_password_file: str | None = None,
            fence: bool = False) -> tuple[list[dict], dict[str, str], str]:
    """(keyaudit's results, {unreachable or failed host: why}, the raw output when it could not be read at all)."""
    extra = ["-e", json.dumps({**({"audit_bot": bot} if bot else {}), **({"audit_fence": True} if fence else {})})]
    result = runner.playbook(PLAYBOOK, inventory, provision.ansible_args(host, vault_password_file, extra), echo=False,
                             env={"ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json"})
    try:
        report = json.loads(result.output[result.output.index("{"):])
        hosts = report["plays"][0]["tasks"][0]["hosts"]
    except (ValueError, KeyError, IndexError):
        return [], {}, result.output[-2000:]
    unreachable = {h: str(r.get("msg", "")) for h, r in hosts.items() if r.get("unreachable") or r.get("failed")}
    return parse({h: r.get("stdout", "") for h, r in hosts.items() if h not in unreachable}), unreachable, ""


def run(inventory: Path, host: str | None = None, bot: str | None = None,
        vault_password_file: str | None = None, as_json: bool = False) -> int:
    results, unreachable, raw = collect(inventory, host, bot, vault_password_file)
    if raw:
        print(raw)
        return 2
    if as_json:
        print(json.dumps({"results": results, "unreachable": sorted(unreachable)}, indent=2))
    else:
        for item in results:
            print(line(item))
        for host_name, why in unreachable.items():
            print(f"{host_name:20} unreachable or failed: {why}")
    codes = [item["exit"] for item in results] + [2] * len(unreachable)
    return max(codes, default=0)


def line(item: dict) -> str:
    """One result as a table row."""
    return (f"{item['host']:20} {item.get('bot', '?'):16} {item.get('exchange', '?'):9} {item.get('key', '?'):9} "
            f"{item.get('status', 'error').upper():6} {'; '.join(item.get('reasons', []))}")
