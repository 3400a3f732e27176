"""A fleet's run, one line per host per finished role, then the usual recap."""

from __future__ import annotations

import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: progress
type: stdout
short_description: one line of progress per host and role, failures in full, the recap at the end
description:
  - For runs on many hosts (botvps' fleet provisioning). Instead of every task for every host,
    prints a line when a host finishes a role (tasks, changes, seconds), every failure or
    unreachable host with its message, every debug message, and the usual PLAY RECAP lines.
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "botvps.infra.progress"

    def __init__(self) -> None:
        super().__init__()
        self._current: dict[str, dict] = {}  # host -> {role, tasks, changed, started}
        self._started = time.monotonic()

    # ------------------------------------------------------------ helpers

    def _line(self, text: str) -> None:
        self._display.display(f"{time.monotonic() - self._started:6.0f}s  {text}")

    @staticmethod
    def _role(result) -> str:
        role = getattr(result._task, "_role", None)
        return role.get_name(include_role_fqcn=False) if role else "play"

    def _finish(self, host: str) -> None:
        state = self._current.pop(host, None)
        if state:
            self._line(f"{host:28} {state['role']:10} done: {state['tasks']} tasks, {state['changed']} changed, "
                       f"{time.monotonic() - state['started']:.0f} s")

    def _count(self, result, changed: bool) -> None:
        host, role = result._host.get_name(), self._role(result)
        state = self._current.get(host)
        if state is None or state["role"] != role:
            self._finish(host)
            state = self._current[host] = {"role": role, "tasks": 0, "changed": 0, "started": time.monotonic()}
        state["tasks"] += 1
        state["changed"] += int(bool(changed))

    # ------------------------------------------------------------ events

    def v2_runner_on_ok(self, result) -> None:
        self._count(result, result._result.get("changed", False))
        if result._task.action in ("debug", "ansible.builtin.debug") and "msg" in result._result:
            self._line(f"{result._host.get_name():28} {result._result['msg']}")

    def v2_runner_on_skipped(self, result) -> None:
        self._count(result, False)

    def v2_runner_on_failed(self, result, ignore_errors: bool = False) -> None:
        self._count(result, False)
        if ignore_errors:
            return
        message = result._result.get("msg") or result._result.get("stderr") or result._result.get("stdout") or ""
        self._line(f"{result._host.get_name():28} FAILED in {self._role(result)}: {result._task.name}: {message}")

    def v2_runner_on_unreachable(self, result) -> None:
        self._line(f"{result._host.get_name():28} UNREACHABLE in {self._role(result)}: {result._result.get('msg', '')}")

    def v2_playbook_on_stats(self, stats) -> None:
        for host in list(self._current):
            self._finish(host)
        self._display.display("\nPLAY RECAP")
        for host in sorted(stats.processed):
            s = stats.summarize(host)
            self._display.display(f"{host} : ok={s['ok']} changed={s['changed']} unreachable={s['unreachable']} "
                                  f"failed={s['failures']} skipped={s['skipped']} rescued={s['rescued']} "
                                  f"ignored={s['ignored']}")
