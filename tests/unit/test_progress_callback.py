"""The fleet progress callback (botvps.infra.progress): one line per host and role, failures with
their message, and a recap runner.parse_recap reads. A real ansible-playbook run on localhost."""

from __future__ import annotations

import subprocess
from pathlib import Path

from botvps import provision, runner
from botvps.paths import PROJECT_ROOT

PLAYBOOK = """
- name: Two roles on two local hosts
  hosts: all
  gather_facts: false
  roles: [first, second]
"""
FIRST = """
- name: Say something
  ansible.builtin.debug:
    msg: "hello from {{ inventory_hostname }}"
- name: Change something
  ansible.builtin.command: "true"
  changed_when: true
"""
SECOND = """
- name: Fail on one host only
  ansible.builtin.fail:
    msg: "broken on purpose"
  when: inventory_hostname == 'two'
"""


def test_progress_lines_and_recap(tmp_path: Path) -> None:
    for role, tasks in (("first", FIRST), ("second", SECOND)):
        (tmp_path / "roles" / role / "tasks").mkdir(parents=True)
        (tmp_path / "roles" / role / "tasks" / "main.yml").write_text(tasks)
    (tmp_path / "site.yml").write_text(PLAYBOOK)
    (tmp_path / "hosts.yml").write_text(
        "all:\n  hosts:\n    one: {ansible_connection: local}\n    two: {ansible_connection: local}\n"
        "  vars: {ansible_python_interpreter: \"{{ ansible_playbook_python }}\"}\n")
    env = runner.environment({**provision.fleet_environment(2, progress=True), "ANSIBLE_ROLES_PATH": str(tmp_path / "roles")})
    result = subprocess.run(["ansible-playbook", "-i", str(tmp_path / "hosts.yml"), str(tmp_path / "site.yml")],
                            cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)
    out = result.stdout
    assert result.returncode == 2, out + result.stderr
    assert "TASK [" not in out  # not the default callback
    lines = out.splitlines()
    assert any("one" in line and "hello from one" in line for line in lines), out
    assert any("one" in line and "first" in line and "done: 2 tasks, 1 changed" in line for line in lines), out
    assert any("two" in line and "FAILED in second" in line and "broken on purpose" in line for line in lines), out
    recap = runner.parse_recap(out)
    assert recap["one"]["failed"] == 0 and recap["one"]["changed"] == 1
    assert recap["two"]["failed"] == 1


def test_fleet_environment() -> None:
    assert provision.fleet_environment(1, progress=False) == {"ANSIBLE_FORKS": "1"}
    many = provision.fleet_environment(80, progress=True)
    assert many == {"ANSIBLE_FORKS": "50", "ANSIBLE_STRATEGY": "free", "ANSIBLE_STDOUT_CALLBACK": "botvps.infra.progress"}
