#!/usr/bin/python
# -*- coding: utf-8 -*-
"""botvps.infra.ufw_rules: reconcile ufw's inbound rules in one call, by comment mark."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ufw_rules
short_description: Make ufw's rules exactly the declared set, marked by a comment, in one call
description:
  - Adds the declared rules (each carrying the comment O(mark)) before anything else, then sets
    the default policies, enables ufw, and only then deletes rules that carry the mark but are no
    longer declared and, with O(remove_undeclared), rules without the mark.
  - Never resets ufw, so the live SSH session is never dropped.
options:
  rules:
    description: The rules, each C(action) (allow or limit), C(port), C(proto) and C(src) (a CIDR or V(any)).
    type: list
    elements: dict
    required: true
  mark:
    description: Comment that marks the rules this module owns.
    type: str
    default: botvps
  remove_undeclared:
    description: Also delete rules that do not carry the mark.
    type: bool
    default: true
  default_incoming:
    type: str
    default: deny
    description: Default policy for incoming traffic.
  default_routed:
    type: str
    default: deny
    description: Default policy for routed traffic.
  default_outgoing:
    type: str
    default: allow
    description: Default policy for outgoing traffic.
author: [botvps]
"""

RETURN = r"""
added: {description: Rules added, type: list, returned: always}
deleted: {description: Rules deleted, type: list, returned: always}
undeclared: {description: Rules found without the mark, type: list, returned: always}
"""

import re

from ansible.module_utils.basic import AnsibleModule

_SIMPLE = re.compile(r"^ufw (allow|limit|deny|reject)(?: (in|out))? (\S+?)(?:/(tcp|udp))?(?: comment '(.*)')?$")
_FULL = re.compile(
    r"^ufw (allow|limit|deny|reject)(?: (in|out))?(?: on \S+)? from (\S+)(?: port \S+)? to (\S+)"
    r"(?: port (\S+))?(?: proto (\S+))?(?: comment '(.*)')?$"
)


def parse(line: str) -> dict | None:
    """One line of `ufw show added` as {action, port, proto, src, comment, spec}."""
    match = _SIMPLE.match(line)
    if match:
        action, _direction, port, proto, comment = match.groups()
        src = "any"
    else:
        match = _FULL.match(line)
        if not match:
            return None
        action, _direction, src, _dst, port, proto, comment = match.groups()
    spec = line[len("ufw "):]
    if comment is not None:
        spec = spec[: spec.rindex(" comment '")]
    return {"action": action, "port": str(port or "any"), "proto": proto or "any", "src": src,
            "comment": comment or "", "spec": spec}


def key(rule: dict) -> tuple:
    return (rule["action"], str(rule["port"]), rule["proto"], rule["src"])


def command_for(rule: dict, mark: str) -> list[str]:
    return ["ufw", rule["action"], "proto", rule["proto"], "from", rule["src"], "to", "any",
            "port", str(rule["port"]), "comment", mark]


_POLICY_KEYS = {"incoming": "DEFAULT_INPUT_POLICY", "outgoing": "DEFAULT_OUTPUT_POLICY", "routed": "DEFAULT_FORWARD_POLICY"}
_POLICY_NAMES = {"DROP": "deny", "ACCEPT": "allow", "REJECT": "reject"}


def current_policies(path: str = "/etc/default/ufw") -> dict[str, str]:
    """Default policies as configured (`ufw status` says "disabled (routed)" when forwarding is off)."""
    values: dict[str, str] = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            name, _, value = line.strip().partition("=")
            values[name] = value.strip('"')
    return {direction: _POLICY_NAMES.get(values.get(key, ""), "") for direction, key in _POLICY_KEYS.items()}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "rules": {"type": "list", "elements": "dict", "required": True},
            "mark": {"type": "str", "default": "botvps"},
            "remove_undeclared": {"type": "bool", "default": True},
            "default_incoming": {"type": "str", "default": "deny"},
            "default_routed": {"type": "str", "default": "deny"},
            "default_outgoing": {"type": "str", "default": "allow"},
        },
        supports_check_mode=True,
    )
    ufw = module.get_bin_path("ufw", required=True)
    mark = module.params["mark"]

    def run(*args: str) -> str:
        rc, out, err = module.run_command([ufw, *args[1:]] if args[0] == "ufw" else list(args),
                                          environ_update={"LC_ALL": "C"})
        if rc != 0:
            module.fail_json(msg=f"{' '.join(args)} failed: {err or out}")
        return out

    wanted = [{"action": r.get("action", "allow"), "port": str(r["port"]), "proto": r.get("proto", "tcp"),
               "src": r.get("src", "any")} for r in module.params["rules"]]
    existing = [rule for rule in (parse(line.strip()) for line in run("ufw", "show", "added").splitlines()) if rule]
    have = {key(r) for r in existing if r["comment"] == mark}
    want = {key(r) for r in wanted}
    to_add = [r for r in wanted if key(r) not in have]
    # A declared rule that exists under another comment is relabelled in place by re-adding it
    # (ufw answers "Rule updated"); it is neither undeclared nor to be deleted.
    undeclared = [r for r in existing if r["comment"] != mark and key(r) not in want]
    to_delete = [r for r in existing if r["comment"] == mark and key(r) not in want]
    if module.params["remove_undeclared"]:
        to_delete += undeclared
    status = run("ufw", "status")
    defaults = {
        "incoming": module.params["default_incoming"],
        "outgoing": module.params["default_outgoing"],
        "routed": module.params["default_routed"],
    }
    wrong_defaults = {d: p for d, p in defaults.items() if current_policies().get(d) != p}
    enable = "Status: active" not in status
    changed = bool(to_add or to_delete or wrong_defaults or enable)
    if changed and not module.check_mode:
        for rule in to_add:
            run(*command_for(rule, mark))
        for direction, policy in wrong_defaults.items():
            run("ufw", "default", policy, direction)
        if enable:
            run("ufw", "--force", "enable")
        for rule in to_delete:
            run("ufw", "delete", *rule["spec"].split())
    module.exit_json(
        changed=changed,
        added=[" ".join(command_for(r, mark)) for r in to_add],
        deleted=["ufw " + r["spec"] for r in to_delete],
        undeclared=["ufw " + r["spec"] for r in undeclared],
        defaults_set=wrong_defaults,
        enabled=enable,
    )


if __name__ == "__main__":
    main()
