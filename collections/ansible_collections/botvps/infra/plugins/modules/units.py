#!/usr/bin/python
# -*- coding: utf-8 -*-
"""botvps.infra.units: enable, start and restart several systemd units in one call."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: units
short_description: Enable, start and restart several systemd units in one call
description:
  - Asks systemd once for the state of every unit, then enables and starts only those that need it.
  - With O(retire), first retires the instances of a unit family the operator retired: each unit file
    matching O(retire.unit_glob) whose name is in O(retire.names) has its units stopped (each by its own
    KillSignal and TimeoutStopSec) and disabled, then its paths removed.
  - An instance found on the host that is neither kept nor retired is left as it is (running, if it runs), named
    in a warning and in RV(undeclared): a name missing from the inventory is as likely a typo as an intent.
options:
  retire:
    description: Retire what a unit family no longer needs; the C(*) in the glob is the instance's name.
    type: dict
    suboptions:
      unit_glob:
        description: Absolute glob with one C(*), e.g. C(/etc/systemd/system/botvps-bot-*.service).
        type: str
        required: true
      keep:
        description: Names to keep.
        type: list
        elements: str
        default: []
      names:
        description: Names to retire (the operator said so, e.g. C(state=absent)); a name also in O(retire.keep) is kept.
        type: list
        elements: str
        default: []
      name_pattern:
        description: Only names matching this regular expression are retired (others are not ours).
        type: str
        required: true
      units:
        description: Units to stop and disable, in order; C({name}) is replaced by the name.
        type: list
        elements: str
        default: []
      paths:
        description: Absolute paths (files or trees) to remove afterwards; C({name}) is replaced.
        type: list
        elements: str
        default: []
  enabled:
    description: Units that must be enabled.
    type: list
    elements: str
    default: []
  started:
    description: Units that must be running.
    type: list
    elements: str
    default: []
  restarted:
    description: Units to restart now (for example because their configuration changed).
    type: list
    elements: str
    default: []
  daemon_reload:
    description: Run systemctl daemon-reload first.
    type: bool
    default: false
  verify:
    description:
      - Units to check with C(systemd-analyze verify) (its executables exist, its settings parse) before this call
        starts or restarts them. One that fails is neither started nor restarted (a running one keeps running)
        and the call fails naming it; the other units are handled first.
    type: list
    elements: str
    default: []
  settle:
    description:
      - Seconds to wait after starting or restarting units of O(verify); then each must be active, or the call
        fails naming it and the command that shows its journal. V(0) does not wait.
    type: int
    default: 0
author: [botvps]
"""

RETURN = r"""
retired_now: {description: Names this call retired (in check mode, would retire), type: list, returned: always}
undeclared: {description: Instances on the host neither kept nor retired, left as they are, type: list, returned: always}
enabled_now: {description: Units this call enabled, type: list, returned: always}
started_now: {description: Units this call started, type: list, returned: always}
restarted_now: {description: Units this call restarted, type: list, returned: always}
"""

import glob
import os
import re
import shutil
import time

from ansible.module_utils.basic import AnsibleModule


def states(module: AnsibleModule, systemctl: str, verb: str, units: list[str]) -> list[str]:
    if not units:
        return []
    _rc, out, _err = module.run_command([systemctl, verb, *units])
    return out.split()


def instances(module: AnsibleModule, spec: dict) -> list[str]:
    """The names of spec's family found on the host (only names matching its pattern are ours)."""
    if spec["unit_glob"].count("*") != 1 or not os.path.isabs(spec["unit_glob"]):
        module.fail_json(msg=f"retire.unit_glob must be an absolute path with one *: {spec['unit_glob']}")
    head, _, tail = spec["unit_glob"].partition("*")
    pattern = re.compile(spec["name_pattern"])
    found = sorted(path[len(head):len(path) - len(tail)] for path in glob.glob(spec["unit_glob"]))
    return [n for n in found if pattern.fullmatch(n) and "/" not in n and n not in (".", "..")]


def retire(module: AnsibleModule, systemctl: str, spec: dict) -> tuple[list[str], list[str]]:
    """Stop, disable and remove the instances of spec's family named to retire; return those and the undeclared."""
    found = [n for n in instances(module, spec) if n not in spec["keep"]]
    names = [n for n in found if n in spec["names"]]
    undeclared = [n for n in found if n not in spec["names"]]
    if undeclared:
        module.warn(f"found on the host but not in the inventory, left as they are: {', '.join(undeclared)}. "
                    "Add them back to the inventory to keep them, or give each entry state: absent to retire it.")
    if not names or module.check_mode:
        return names, undeclared
    for name in names:
        units = [u.replace("{name}", name) for u in spec["units"]]
        if units:
            rc, out, err = module.run_command([systemctl, "disable", "--now", *units])
            if rc != 0:
                module.fail_json(msg=f"could not stop and disable {', '.join(units)} to retire {name}: {err or out}")
            module.run_command([systemctl, "reset-failed", *units])
        for template in spec["paths"]:
            path = os.path.normpath(template.replace("{name}", name))
            if not os.path.isabs(path) or path.count("/") < 2:
                module.fail_json(msg=f"refusing to remove {path} to retire {name}")
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            elif os.path.lexists(path):
                os.unlink(path)
    return names, undeclared


def verify(module: AnsibleModule, units: list[str]) -> dict[str, str]:
    """The units among ``units`` that systemd-analyze verify rejects, with its first complaint about them
    (complaints about other units on the host, which it may print too, do not count)."""
    analyze = module.get_bin_path("systemd-analyze") if units and not module.check_mode else None
    if analyze is None:
        return {}
    rc, out, err = module.run_command([analyze, "verify", *units])  # one run for all: it loads every unit
    if rc == 0:
        return {}
    lines = [line.strip() for line in f"{err}\n{out}".splitlines()]
    return {unit: about[0] for unit in units if (about := [line for line in lines if unit in line])}


def settled(module: AnsibleModule, systemctl: str, units: list[str], seconds: int) -> list[str]:
    """After ``seconds``, the units among ``units`` that are not active (a start that did not hold)."""
    if not units or seconds <= 0 or module.check_mode:
        return []
    time.sleep(seconds)
    _rc, out, _err = module.run_command([systemctl, "show", "-p", "Id", "-p", "ActiveState", "-p", "SubState",
                                         "-p", "NRestarts", *units])
    down = []
    for block in out.strip().split("\n\n"):
        state = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        # Still in ExecStartPre (a key audit) is fine. Failed, stopped, waiting to restart after a crash, or
        # restarted already since this start (NRestarts counts automatic restarts since the last start we asked
        # for; a short RestartSec= can put a crashing bot back in "activating" within the settle time) is not.
        restarts = state.get("NRestarts", "0")
        if state.get("ActiveState") in ("failed", "inactive", "deactivating") or state.get("SubState") == "auto-restart" \
                or (restarts.isdigit() and int(restarts) > 0):
            down.append(state.get("Id", "?"))
    return down


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "enabled": {"type": "list", "elements": "str", "default": []},
            "started": {"type": "list", "elements": "str", "default": []},
            "restarted": {"type": "list", "elements": "str", "default": []},
            "daemon_reload": {"type": "bool", "default": False},
            "verify": {"type": "list", "elements": "str", "default": []},
            "settle": {"type": "int", "default": 0},
            "retire": {"type": "dict", "options": {
                "unit_glob": {"type": "str", "required": True},
                "keep": {"type": "list", "elements": "str", "default": []},
                "names": {"type": "list", "elements": "str", "default": []},
                "name_pattern": {"type": "str", "required": True},
                "units": {"type": "list", "elements": "str", "default": []},
                "paths": {"type": "list", "elements": "str", "default": []},
            }},
        },
        supports_check_mode=True,
    )
    systemctl = module.get_bin_path("systemctl", required=True)
    p = module.params
    retired, undeclared = retire(module, systemctl, p["retire"]) if p["retire"] else ([], [])
    if (p["daemon_reload"] or retired) and not module.check_mode:  # after retiring: their unit files are gone
        module.run_command([systemctl, "daemon-reload"], check_rc=True)
    enabled_states = states(module, systemctl, "is-enabled", p["enabled"])
    to_enable = [u for u, s in zip(p["enabled"], enabled_states) if s not in ("enabled", "static", "alias", "indirect")]
    active_states = states(module, systemctl, "is-active", p["started"])
    to_start = [u for u, s in zip(p["started"], active_states) if s != "active" and u not in p["restarted"]]
    to_restart = list(p["restarted"])
    # Every run checks them all, so a refused change is named again until it is fixed.
    refused = verify(module, p["verify"])
    to_start = [u for u in to_start if u not in refused]
    to_restart = [u for u in to_restart if u not in refused]
    changed = bool(retired or to_enable or to_start or to_restart)
    if changed and not module.check_mode:
        if to_enable:
            module.run_command([systemctl, "enable", *to_enable], check_rc=True)
        if to_start or to_restart:
            # A unit its start limit stopped (a crash loop) refuses every start until this; the
            # run that fixes its cause starts it again.
            module.run_command([systemctl, "reset-failed", *to_start, *to_restart])
        if to_start:
            rc, out, err = module.run_command([systemctl, "start", *to_start])
            if rc != 0:
                module.fail_json(msg=f"could not start {', '.join(to_start)}: {err or out}", started=to_start)
        if to_restart:
            rc, out, err = module.run_command([systemctl, "restart", *to_restart])
            if rc != 0:
                module.fail_json(msg=f"could not restart {', '.join(to_restart)}: {err or out}")
    result = {"changed": changed, "retired_now": retired, "undeclared": undeclared, "enabled_now": to_enable,
              "started_now": to_start, "restarted_now": to_restart}
    if refused:
        module.fail_json(msg="not started or restarted, since they would fail: " + "; ".join(
            f"{unit}: {why}" for unit, why in refused.items()) + ". A running one keeps its old process; "
            "fix the entry (command, source) and run again.", **result)
    down = settled(module, systemctl, [u for u in [*to_start, *to_restart] if u in p["verify"]], p["settle"])
    # (a unit of O(verify) that this call did not touch is not waited for: it was running, or not to be started)
    if down:
        module.fail_json(msg="started but not running after {0} s: {1}. See why: {2}".format(
            p["settle"], ", ".join(down), "; ".join(f"journalctl -u {u} -n 50" for u in down)), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
