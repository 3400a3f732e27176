"""`invoke provision`: validate the inventory, then run the site playbook and summarise."""

from __future__ import annotations

from pathlib import Path

from botvps import runner, validate
from botvps.paths import PROJECT_ROOT

SITE = PROJECT_ROOT / "playbooks" / "site.yml"


def ansible_args(limit: str | None = None, vault_password_file: str | None = None, extra: list[str] | None = None) -> list[str]:
    args: list[str] = []
    if limit:
        args += ["--limit", limit]
    if vault_password_file:
        args += ["--vault-password-file", vault_password_file]
    return args + list(extra or [])


def provision(inventory: Path, limit: str | None = None, vault_password_file: str | None = None,
              extra: list[str] | None = None, echo: bool = True) -> runner.PlaybookResult:
    """Check the inventory (nothing is contacted when it is wrong), then run the site playbook."""
    code, report = validate.check(inventory, vault_password_file)
    if code != validate.EXIT_OK:
        print(report)
        return runner.PlaybookResult(code, 0.0, {}, report)
    result = runner.playbook(SITE, inventory, ansible_args(limit, vault_password_file, extra), echo=echo)
    print(runner.summary(result, "provision"))
    return result
