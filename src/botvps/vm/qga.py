"""Out-of-band console through the QEMU guest agent (virtio-serial), not SSH.

Like a provider's web console, it still works when SSH is locked out or the
firewall bans the controller, which is what lockout and ban drills need.
"""

from __future__ import annotations

import base64
import json
import random
import socket
import time
from dataclasses import dataclass
from pathlib import Path


class AgentError(RuntimeError):
    pass


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: str
    stderr: str


class _Connection:
    """One JSON object per line in each direction; the agent may prefix 0xff sync bytes."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = sock.makefile("rb")

    def send(self, message: dict) -> None:
        self.sock.sendall(json.dumps(message).encode() + b"\n")

    def receive(self) -> dict:
        while True:
            line = self.reader.readline()
            if not line:
                raise AgentError("guest agent closed the connection")
            line = line.replace(b"\xff", b"").strip()
            if line:
                return json.loads(line)

    def __enter__(self) -> "_Connection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.reader.close()
        self.sock.close()


class GuestAgent:
    def __init__(self, socket_path: Path, timeout: float = 30.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def _call(self, conn: _Connection, command: str, arguments: dict | None = None) -> object:
        message: dict = {"execute": command}
        if arguments is not None:
            message["arguments"] = arguments
        conn.send(message)
        reply = conn.receive()
        if "error" in reply:
            raise AgentError(reply["error"].get("desc", str(reply["error"])))
        return reply["return"]

    def _connect(self) -> _Connection:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(str(self.socket_path))
        conn = _Connection(sock)
        # Discard anything a previous client left unread: sync on a fresh token.
        token = random.randint(1, 2**31)
        conn.send({"execute": "guest-sync-delimited", "arguments": {"id": token}})
        while conn.receive().get("return") != token:
            pass
        return conn

    def ping(self) -> bool:
        try:
            with self._connect() as conn:
                self._call(conn, "guest-ping")
            return True
        except (OSError, AgentError):
            return False

    def wait(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ping():
                return
            time.sleep(1)
        raise AgentError(f"guest agent on {self.socket_path} did not answer within {timeout:.0f} s")

    def run(self, command: str, timeout: float = 120.0, stdin: str | None = None) -> ExecResult:
        """Run ``command`` with /bin/sh as root in the guest and wait for it."""
        arguments: dict = {"path": "/bin/sh", "arg": ["-c", command], "capture-output": True}
        if stdin is not None:
            arguments["input-data"] = base64.b64encode(stdin.encode()).decode()
        with self._connect() as conn:
            pid = self._call(conn, "guest-exec", arguments)["pid"]  # type: ignore[index]
            deadline = time.monotonic() + timeout
            while True:
                status = self._call(conn, "guest-exec-status", {"pid": pid})
                if status.get("exited"):  # type: ignore[union-attr]
                    break
                if time.monotonic() > deadline:
                    raise AgentError(f"console command did not finish within {timeout:.0f} s: {command}")
                time.sleep(0.2)
        decode = lambda key: base64.b64decode(status.get(key, "")).decode(errors="replace")  # noqa: E731
        return ExecResult(int(status.get("exitcode", -1)), decode("out-data"), decode("err-data"))  # type: ignore[union-attr]
