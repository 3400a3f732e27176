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
options:
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
author: [botvps]
"""

RETURN = r"""
enabled_now: {description: Units this call enabled, type: list, returned: always}
started_now: {description: Units this call started, type: list, returned: always}
restarted_now: {description: Units this call restarted, type: list, returned: always}
"""

from ansible.module_utils.basic import AnsibleModule


def states(module: AnsibleModule, systemctl: str, verb: str, units: list[str]) -> list[str]:
    if not units:
        return []
    _rc, out, _err = module.run_command([systemctl, verb, *units])
    return out.split()


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "enabled": {"type": "list", "elements": "str", "default": []},
            "started": {"type": "list", "elements": "str", "default": []},
            "restarted": {"type": "list", "elements": "str", "default": []},
            "daemon_reload": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    systemctl = module.get_bin_path("systemctl", required=True)
    p = module.params
    if p["daemon_reload"] and not module.check_mode:
        module.run_command([systemctl, "daemon-reload"], check_rc=True)
    enabled_states = states(module, systemctl, "is-enabled", p["enabled"])
    to_enable = [u for u, s in zip(p["enabled"], enabled_states) if s not in ("enabled", "static", "alias", "indirect")]
    active_states = states(module, systemctl, "is-active", p["started"])
    to_start = [u for u, s in zip(p["started"], active_states) if s != "active" and u not in p["restarted"]]
    to_restart = list(p["restarted"])
    changed = bool(to_enable or to_start or to_restart)
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
    module.exit_json(changed=changed, enabled_now=to_enable, started_now=to_start, restarted_now=to_restart)


if __name__ == "__main__":
    main()
