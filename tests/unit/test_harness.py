"""The VM harness' pure parts: image cache keys, names, the guest-agent protocol, inventories, recaps."""

from __future__ import annotations

import base64
import json
import socket
import threading

import pytest

from botvps import runner
from botvps.vm import image, machine, qga


def test_cache_key_changes_with_packages_and_suite():
    base = image.cache_key("bookworm")
    assert base == image.cache_key("bookworm")
    assert base != image.cache_key("trixie")
    assert base != image.cache_key("bookworm", image.PACKAGES + ("vim",))


def test_suite_aliases_and_errors():
    assert image.resolve_suite("debian12") == "bookworm"
    assert image.resolve_suite("13") == "trixie"
    with pytest.raises(ValueError, match="unknown Debian suite 'sid'"):
        image.resolve_suite("sid")


@pytest.mark.parametrize("name", ["Bad", "-x", "a b", "x" * 50, ""])
def test_bad_vm_names_refused_before_anything_starts(name, tmp_path, monkeypatch):
    monkeypatch.setenv("BOTVPS_HOME", str(tmp_path))
    with pytest.raises(machine.VMError, match="VM name"):
        machine.up(name)
    assert not (tmp_path / "vms").exists()


def test_down_all_with_nothing_running(tmp_path, monkeypatch):
    monkeypatch.setenv("BOTVPS_HOME", str(tmp_path))
    (tmp_path / "vms" / "ghost").mkdir(parents=True)
    (tmp_path / "vms" / "ghost" / "qemu.pid").write_text("1")  # pid 1 is no qemu of ours
    assert machine.down_all() == ["ghost"]
    assert not (tmp_path / "vms" / "ghost").exists()


class FakeAgent(threading.Thread):
    """Speaks the guest agent's line protocol on a unix socket, including a stray reply before sync."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(str(path))
        self.server.listen(4)

    def run(self):
        while True:
            conn, _ = self.server.accept()
            with conn, conn.makefile("rwb") as stream:
                stream.write(b'{"return": "stale reply from an earlier client"}\n')
                stream.flush()
                for line in stream:
                    request = json.loads(line)
                    command = request["execute"]
                    if command == "guest-sync-delimited":
                        reply = {"return": request["arguments"]["id"]}
                        stream.write(b"\xff")
                    elif command == "guest-exec":
                        reply = {"return": {"pid": 42}}
                    elif command == "guest-exec-status":
                        reply = {"return": {"exited": True, "exitcode": 3,
                                            "out-data": base64.b64encode(b"hello\n").decode()}}
                    else:
                        reply = {"return": {}}
                    stream.write(json.dumps(reply).encode() + b"\n")
                    stream.flush()


def test_guest_agent_exec_round_trip(tmp_path):
    FakeAgent(tmp_path / "qga.sock").start()
    agent = qga.GuestAgent(tmp_path / "qga.sock", timeout=5)
    assert agent.ping()
    result = agent.run("echo hello; exit 3")
    assert result == qga.ExecResult(3, "hello\n", "")


def test_guest_agent_absent(tmp_path):
    assert not qga.GuestAgent(tmp_path / "nothing.sock", timeout=1).ping()


def test_recap_parsing():
    output = """PLAY RECAP *********
vps1                       : ok=33   changed=2    unreachable=0    failed=0    skipped=3
vps2                       : ok=3    changed=0    unreachable=1    failed=0    skipped=0
"""
    recap = runner.parse_recap(output)
    assert recap["vps1"]["changed"] == 2 and recap["vps2"]["unreachable"] == 1
    result = runner.PlaybookResult(0, 1.0, recap)
    assert result.changed == 2
    assert "vps2" in runner.summary(result, "provision")
