"""ssh-audit's built-in hardening policy, run from the controller against the host's SSH port.

ssh-audit (pinned in the dev extras) only talks SSH's key exchange: it never logs in. The policy is
the newest built-in one for the host's distribution and version ("Hardened Debian 12 (version 3)",
"Hardened Debian 13 (version 1)", "Hardened Ubuntu Server 24.04 LTS (version 2)", ...).

A policy scan opens up to a dozen connections (Debian 12: host keys, Diffie-Hellman group sizes), but ufw's
SSH rule (``limit``) drops the sixth new connection from one address within 30 s, and every
dropped SYN that TCP retries counts again. Unpaced, ssh-audit then times out on the group-size
tests and passes the policy without having checked them. So ssh-audit connects through
:class:`PacedForwarder`, a local TCP forwarder that opens the real connections no faster than the
limit allows (the run takes about a minute), and never runs its DHEat connection-flood test.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from botvps.report.model import FAIL, PASS, UNKNOWN, short

TIMEOUT = 60  # seconds per connection: a connection may wait up to a rate-limit window for its turn
LIMIT_WINDOW = 31.0  # ufw limit: at most 5 new connections from one address per 30 s (the 6th is dropped)
# botvps opens at most 4 per 30 s, ssh-audit included: the operator always has room to log in at once.
LIMIT_CONNECTIONS = 4


@dataclass
class AuditResult:
    status: str  # PASS, FAIL or UNKNOWN (not run, or no answer)
    policy: str = ""
    target: str = ""
    failures: list[str] = field(default_factory=list)
    reason: str = ""  # why UNKNOWN, or ssh-audit's warnings
    connections: int = 0  # how many connections ssh-audit opened


def executable() -> str | None:
    """ssh-audit next to this Python (the venv), else on PATH."""
    beside = Path(sys.executable).parent / "ssh-audit"
    return str(beside) if beside.exists() else shutil.which("ssh-audit")


def choose_policy(listing: str, os_id: str, version: str) -> str | None:
    """The newest built-in server policy for the distribution (``ssh-audit -L``'s output), None when none fits."""
    names = {"debian": f"Hardened Debian {version}", "ubuntu": f"Hardened Ubuntu Server {version} LTS"}
    prefix = names.get(os_id.lower())
    if not prefix or not version:
        return None
    candidates = re.findall(r'"(' + re.escape(prefix) + r' \(version (\d+)\))"', listing.split("Client policies")[0])
    return max(candidates, key=lambda c: int(c[1]))[0] if candidates else None


class PacedForwarder:
    """127.0.0.1:``port`` forwarded to ``target``, opening at most ``per_window`` connections per ``window`` s.

    ``earlier``: monotonic times of connections made just before (the playbook's), counted too.
    """

    def __init__(self, target: tuple[str, int], earlier: Iterable[float] = (), per_window: int = LIMIT_CONNECTIONS,
                 window: float = LIMIT_WINDOW) -> None:
        self.target, self.per_window, self.window = target, per_window, window
        self.opened = list(earlier)
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.listener.close()

    def wait_turn(self) -> None:
        """Block until one more connection stays under the limit, and count it."""
        while True:
            with self.lock:
                now = time.monotonic()
                self.opened = [t for t in self.opened if now - t < self.window]
                if len(self.opened) < self.per_window:
                    self.opened.append(now)
                    self.connections += 1
                    return
                delay = self.window - (now - min(self.opened)) + 0.05
            time.sleep(delay)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        self.wait_turn()
        try:
            upstream = socket.create_connection(self.target, timeout=TIMEOUT)
            upstream.settimeout(None)
        except OSError:
            client.close()
            return
        pipes = [threading.Thread(target=_pipe, args=pair, daemon=True)
                 for pair in ((client, upstream), (upstream, client))]
        for pipe in pipes:
            pipe.start()
        for pipe in pipes:
            pipe.join()
        client.close()
        upstream.close()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, sink):  # wake the other direction up
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def parse(stdout: str, policy: str, target: str) -> AuditResult:
    """ssh-audit -j -P's JSON: passed, and each mismatched field with what it expected."""
    try:
        result = json.loads(stdout.strip().splitlines()[-1])
        passed = bool(result["passed"])
    except (ValueError, KeyError, IndexError, TypeError):
        why = short(stdout, 300) or "no output"
        return AuditResult(UNKNOWN, policy, target, reason=f"ssh-audit gave no verdict: {why}")
    failures = []
    for error in result.get("errors") or []:
        expected = ", ".join(error.get("expected_required") or [])
        actual = ", ".join(str(a) for a in error.get("actual") or [])
        field_name = error.get("mismatched_field", "?")
        failures.append(f"{field_name}: expected {expected or '-'}, the server has {actual or '-'}")
    warnings = "; ".join(result.get("warnings") or [])
    return AuditResult(PASS if passed else FAIL, result.get("policy") or policy, target, failures, warnings)


def audit(host: str, port: int, os_id: str, version: str, earlier: Iterable[float] = (),
          timeout: int = TIMEOUT) -> AuditResult:
    """Run ssh-audit's policy scan of host:port, paced (see :class:`PacedForwarder`); never raises.

    ``earlier``: when (time.monotonic()) this controller last opened SSH connections to the host.
    """
    target = f"{host}:{port}"
    program = executable()
    if program is None:
        return AuditResult(UNKNOWN, target=target, reason="ssh-audit is not installed on this controller "
                           "(it comes with the dev extras: .venv/bin/pip install ssh-audit==3.9.0)")
    try:
        listing = subprocess.run([program, "-L"], capture_output=True, text=True, timeout=60,
                                 stdin=subprocess.DEVNULL).stdout
        policy = choose_policy(listing, os_id, version)
        if policy is None:
            return AuditResult(UNKNOWN, target=target, reason=f"ssh-audit has no built-in policy for {os_id} {version}")
        forwarder = PacedForwarder((host, port), earlier)
    except (OSError, subprocess.SubprocessError) as exc:
        return AuditResult(UNKNOWN, target=target, reason=f"ssh-audit could not run: {exc}")
    try:
        done = subprocess.run([program, "-n", "-j", "--skip-rate-test", "-t", str(timeout), "-p", str(forwarder.port),
                               "-P", policy, "127.0.0.1"], capture_output=True, text=True, timeout=timeout * 15,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        return AuditResult(UNKNOWN, policy, target, reason=f"ssh-audit did not finish: {exc}")
    finally:
        forwarder.close()
    result = parse(done.stdout + ("\n" + done.stderr if not done.stdout.strip() else ""), policy, target)
    result.connections = forwarder.connections
    return result
