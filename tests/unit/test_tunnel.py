"""invoke tunnel: which host and port it picks, the ssh it runs, and the parameters Ansible resolves."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from botvps import tunnel

PARAMS = {
    "vps1": {"host": "203.0.113.10", "port": 2222, "user": "ops", "key_file": "~/.ssh/id_ed25519",
             "ssh_args": "-o UserKnownHostsFile=/tmp/kh", "bots": [{"name": "ft", "ui_port": 8080}, {"name": "grid"}]},
    "vps2": {"host": "203.0.113.11", "port": 22, "user": "ops", "key_file": "", "ssh_args": "",
             "bots": [{"name": "ft", "ui_port": 8081}, {"name": "old", "ui_port": 9000, "state": "absent"}]},
}


def test_the_host_is_asked_for_when_the_bot_runs_on_two():
    with pytest.raises(ValueError, match="runs on vps1, vps2: choose one with --host"):
        tunnel.choose(PARAMS, "ft", None)
    assert tunnel.choose(PARAMS, "ft", "vps2").ui_port == 8081


@pytest.mark.parametrize(("bot", "host", "message"), [
    ("nope", None, "no bot named 'nope' in the inventory"),
    ("grid", None, "declares no ui_port: add ui_port"),
    ("old", None, "no bot named 'old'"),
    ("ft", "vps3", "no bot named 'ft' on host vps3"),
])
def test_a_wrong_bot_or_host_is_named_with_the_fix(bot, host, message):
    with pytest.raises(ValueError, match=message):
        tunnel.choose(PARAMS, bot, host)


def test_ssh_forwards_one_local_port_to_the_servers_loopback_only():
    command = tunnel.ssh_command(tunnel.choose(PARAMS, "ft", "vps1"), 18080)
    assert command[:2] == ["ssh", "-N"] and "ExitOnForwardFailure=yes" in command
    assert command[command.index("-L") + 1] == "127.0.0.1:18080:127.0.0.1:8080"
    assert command[command.index("-p") + 1] == "2222"
    assert "UserKnownHostsFile=/tmp/kh" in command and "ControlPath=none" in command
    assert command[-1] == "ops@203.0.113.10"
    assert command[command.index("-i") + 1] == str(Path("~/.ssh/id_ed25519").expanduser())


def test_parameters_are_resolved_by_ansible_without_contacting_the_host(tmp_path: Path):
    inv = tmp_path / "inventory"
    (inv / "host_vars").mkdir(parents=True)
    (inv / "hosts.yml").write_text(yaml.safe_dump({"all": {"hosts": {"vps1": {"ansible_host": "192.0.2.1"}}}}))
    (inv / "host_vars" / "vps1.yml").write_text(yaml.safe_dump({
        "admin_user": "ops", "ssh_port": 2222, "key_dir": "/keys",
        "ansible_ssh_private_key_file": "{{ key_dir }}/id_ed25519",
        "bots": [{"name": "ft", "ui_port": 8080, "secrets": ["FT_KEY"]}]}))
    params = tunnel.parameters(inv, None)
    assert params["vps1"]["host"] == "192.0.2.1" and int(params["vps1"]["port"]) == 2222
    assert params["vps1"]["key_file"] == "/keys/id_ed25519" and params["vps1"]["user"] == "ops"
    assert tunnel.choose(params, "ft", None).ui_port == 8080
