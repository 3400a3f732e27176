"""`invoke provision`: validate the inventory, then run the site playbook and summarise."""

from __future__ import annotations

from pathlib import Path

from botvps import drift, runner, validate
from botvps.paths import PROJECT_ROOT

SITE = PROJECT_ROOT / "playbooks" / "site.yml"


def ansible_args(limit: str | None = None, vault_password_file: str | None = None, extra: list[str] | None = None) -> list[str]:
    args: list[str] = []
    if limit:
        args += ["--limit", limit]
    if vault_password_file:
        args += ["--vault-password-file", vault_password_file]
    return args + list(extra or [])


def fleet_environment(hosts: int, progress: bool) -> dict[str, str]:
    """Many hosts at once: one fork per host (up to 50), each host through the play at its own pace
    (strategy free: the roles share nothing between hosts), and with ``progress`` one line per host
    and role instead of every task."""
    env = {"ANSIBLE_FORKS": str(max(1, min(hosts, 50)))}
    if hosts > 1:
        env["ANSIBLE_STRATEGY"] = "free"
    if progress:
        env["ANSIBLE_STDOUT_CALLBACK"] = "botvps.infra.progress"
    return env


def provision(inventory: Path, limit: str | None = None, vault_password_file: str | None = None,
              extra: list[str] | None = None, echo: bool = True, progress: bool = False) -> runner.PlaybookResult:
    """Check the inventory (nothing is contacted when it is wrong), then run the site playbook."""
    code, report = validate.check(inventory, vault_password_file)
    if code != validate.EXIT_OK:
        print(report)
        return runner.PlaybookResult(code, 0.0, {}, report)
    hosts = len(validate.load_inventory(inventory, vault_password_file))
    result = runner.playbook(SITE, inventory, ansible_args(limit, vault_password_file, extra),
                             env=fleet_environment(hosts, progress), echo=echo)
    print(runner.summary(result, "provision"))
    return result


def check(inventory: Path, limit: str | None = None, vault_password_file: str | None = None) -> int:
    """`invoke provision --check`: what a provision would change on each host (retirements included), changing
    nothing: the inventory's checks, then the drift playbook without the verification suite."""
    code, report = validate.check(inventory, vault_password_file)
    if code != validate.EXIT_OK:
        print(report)
        return code
    reports = drift.check(inventory, limit, vault_password_file, suite=False)
    print("provision --check: what a provision would change (nothing was changed)")
    print(drift.table(reports))
    return drift.exit_code(reports)
