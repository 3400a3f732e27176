"""The VM harness' pure parts: image cache keys, names, the guest-agent protocol, inventories, recaps."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import threading
import time
from pathlib import Path

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


# ---------------------------------------------------------------- `invoke test`: images built during the unit tier


def _fake_tiers(monkeypatch, tmp_path, events, build_command, unit=None):
    from botvps import testing

    monkeypatch.setenv("BOTVPS_TEST_HOME", str(tmp_path / "home"))

    def prebuild(scenarios, env):
        events.append(("prebuild", tuple(scenarios), env["HOME"]))
        with open(tmp_path / "build.log", "w") as log:
            return subprocess.Popen(build_command, stdout=log, stderr=log, start_new_session=True), Path(log.name)

    def vm_tier(scenarios, env):
        events.append(("vm", (tmp_path / "built").exists(), env["HOME"]))
        return [("molecule", 0, 0.0)]

    monkeypatch.setattr(testing, "prebuild_images", prebuild)
    monkeypatch.setattr(testing, "unit", unit or (lambda: events.append(("unit", (tmp_path / "built").exists()))
                                                  or ("unit", 0, 0.0)))
    monkeypatch.setattr(testing, "lint", lambda: [("lint", 0, 0.0)])
    monkeypatch.setattr(testing, "vm_tier", vm_tier)
    return testing


def test_images_build_while_the_unit_tier_runs_and_the_vm_tier_waits_for_them(monkeypatch, tmp_path):
    events: list[tuple] = []
    built = tmp_path / "built"
    testing = _fake_tiers(monkeypatch, tmp_path, events, ["sh", "-c", f"sleep 1; touch {built}"])
    assert testing.run() == 0
    home = str(tmp_path / "home")
    assert events == [("prebuild", testing.SCENARIOS, home), ("unit", False), ("vm", True, home)]


def test_a_failed_background_build_is_said_and_left_to_molecule(monkeypatch, tmp_path, capsys):
    events: list[tuple] = []
    testing = _fake_tiers(monkeypatch, tmp_path, events, ["sh", "-c", "echo 'mmdebstrap: no mirror' >&2; exit 3"])
    assert testing.run() == 0
    out = capsys.readouterr().out
    assert "background build failed (exit 3)" in out and "mmdebstrap: no mirror" in out
    assert [e[0] for e in events] == ["prebuild", "unit", "vm"]
    assert not (tmp_path / "build.log").exists()


def test_an_interrupted_run_leaves_no_build_behind(monkeypatch, tmp_path):
    events: list[tuple] = []
    pidfile = tmp_path / "pid"

    def interrupted():
        deadline = time.monotonic() + 10
        while not pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        raise KeyboardInterrupt

    testing = _fake_tiers(monkeypatch, tmp_path, events, ["sh", "-c", f"sleep 300 & echo $! > {pidfile}; wait"],
                          unit=interrupted)
    with pytest.raises(KeyboardInterrupt):
        testing.run()
    child = int(pidfile.read_text())
    time.sleep(0.2)
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]
    assert [e[0] for e in events] == ["prebuild"]


def test_vm_build_builds_each_suite_named(monkeypatch):
    from botvps.vm import cli

    built = []
    monkeypatch.setattr(image, "ensure", lambda suite, log=print: built.append(suite))
    assert cli.main(["build", "debian12", "trixie"]) == 0
    assert built == ["debian12", "trixie"]
