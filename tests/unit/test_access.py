"""botvps.access.probe against local stand-ins: a port that never answers (a server whose firewall limit drops
the controller) is tried once, not once per account, and the error says how to get back in."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from botvps import access


@pytest.fixture
def silent_port() -> Iterator[tuple[int, list[int]]]:
    """A TCP port that accepts connections and never sends an SSH banner (like a VM's port forward whose guest
    drops the SYNs); yields the port and the count of connections it got."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[int] = []
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            accepted.append(1)
            held.append(connection)

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1], accepted
    server.close()
    for connection in held:
        connection.close()


def _closed_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


def test_a_silent_port_is_tried_once_and_the_error_names_the_rate_limit(silent_port) -> None:
    port, accepted = silent_port
    refused = _closed_port()
    candidates = [("ops", port), ("ops", port), ("root", port), ("root", refused)]
    with pytest.raises(SystemExit) as failure:
        access.probe("127.0.0.1", candidates, None, "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
                     timeout=2)
    message = str(failure.value)
    assert len(accepted) == 1, "each further try at a silent port keeps a rate-limited address locked out"
    assert f"ops@127.0.0.1:{port}, root@127.0.0.1:{refused})" in message
    assert f"did not answer on port {port}" in message and "wait a minute" in message


def test_a_refused_port_gets_the_plain_hint() -> None:
    refused = _closed_port()
    with pytest.raises(SystemExit) as failure:
        access.probe("127.0.0.1", [("ops", refused)], None, "", timeout=2)
    assert "did not answer" not in str(failure.value)
    assert "authorized there" in str(failure.value)
