"""Parsing `ufw show added` lines, which decides what the firewall module adds and deletes."""

from __future__ import annotations

import pytest

from ansible_collections.botvps.infra.plugins.modules import ufw_rules


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("ufw limit 22/tcp comment 'botvps'", ("limit", "22", "tcp", "any", "botvps", "limit 22/tcp")),
        ("ufw allow 8080/tcp", ("allow", "8080", "tcp", "any", "", "allow 8080/tcp")),
        (
            "ufw limit from 198.51.100.0/24 to any port 22 proto tcp comment 'botvps'",
            ("limit", "22", "tcp", "198.51.100.0/24", "botvps", "limit from 198.51.100.0/24 to any port 22 proto tcp"),
        ),
        ("ufw allow from 2001:db8::/32 to any port 443 proto tcp",
         ("allow", "443", "tcp", "2001:db8::/32", "", "allow from 2001:db8::/32 to any port 443 proto tcp")),
    ],
)
def test_parse(line, expected):
    rule = ufw_rules.parse(line)
    assert (rule["action"], rule["port"], rule["proto"], rule["src"], rule["comment"], rule["spec"]) == expected


def test_same_rule_under_another_comment_has_the_same_key():
    ours = {"action": "limit", "port": "22", "proto": "tcp", "src": "any"}
    rescued = ufw_rules.parse("ufw limit 22/tcp comment 'botvps-rescue'")
    assert ufw_rules.key(rescued) == ufw_rules.key(ours)


def test_command_carries_the_mark():
    command = ufw_rules.command_for({"action": "limit", "port": "22", "proto": "tcp", "src": "any"}, "botvps")
    assert command[-2:] == ["comment", "botvps"]


def test_policies_read_from_defaults_file(tmp_path):
    config = tmp_path / "ufw"
    config.write_text('DEFAULT_INPUT_POLICY="DROP"\nDEFAULT_OUTPUT_POLICY="ACCEPT"\nDEFAULT_FORWARD_POLICY="REJECT"\n')
    assert ufw_rules.current_policies(str(config)) == {"incoming": "deny", "outgoing": "allow", "routed": "reject"}
