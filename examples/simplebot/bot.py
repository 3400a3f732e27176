#!/usr/bin/env python3
"""simplebot: the smallest bot botvps can host, standard library only.

It shows what a bot under botvps can rely on:

- its API key arrives in the environment (from /etc/botvps/<name>/secrets.env);
  the bot logs only the key's last four characters;
- it logs to stdout/stderr, which systemd sends to the journal
  (``journalctl -u botvps-bot-<name>``);
- its only writable place is $STATE_DIRECTORY (/var/lib/botvps/<name>, mode 0700);
- on SIGTERM or SIGINT (``systemctl stop``, a reboot, an update) it gets
  TimeoutStopSec to cancel its open orders and exit cleanly before SIGKILL.

Settings (environment): SIMPLEBOT_KEY_VAR names the variable holding the API key
(default: the first variable, by name, that ends in "_KEY", e.g. BINANCE_KEY),
SIMPLEBOT_INTERVAL the seconds between heartbeats (default 5),
SIMPLEBOT_CANCEL_DELAY the seconds "cancelling" takes (default 2).
With BOTVPS_UI_PORT (set by botvps for a bot entry with ui_port) it serves a status page on
BOTVPS_UI_ADDRESS (127.0.0.1) at that port, as a bot's web UI would: reach it with ``invoke tunnel NAME``.
It never contacts an exchange.
"""

from __future__ import annotations

import http.server
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time

log = logging.getLogger("simplebot")


def masked(key: str) -> str:
    return "..." + key[-4:] if len(key) >= 8 else "(too short to show)"


def write_state(directory: str, state: dict) -> None:
    """Replace state.json atomically, so a kill never leaves half a file."""
    fd, tmp = tempfile.mkstemp(prefix=".state-", dir=directory)
    with os.fdopen(fd, "w") as handle:
        json.dump(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, os.path.join(directory, "state.json"))


def serve_ui(address: str, port: int, state: dict) -> http.server.ThreadingHTTPServer:
    """A status page (the bot's web UI) in a thread: its uid and heartbeats, never its key."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            body = json.dumps({"bot": "simplebot", "uid": os.getuid(), "heartbeats": state["heartbeats"]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's name
            log.info("ui: %s", format % args)

    server = http.server.ThreadingHTTPServer((address, port), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    log.info("web UI on %s:%d", address, port)
    return server


def main() -> int:
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(name)s: %(message)s")
    key_var = os.environ.get("SIMPLEBOT_KEY_VAR") or next(
        (name for name in sorted(os.environ) if name.endswith("_KEY")), "BINANCE_KEY")
    interval = float(os.environ.get("SIMPLEBOT_INTERVAL", "5"))
    cancel_delay = float(os.environ.get("SIMPLEBOT_CANCEL_DELAY", "2"))
    state_dir = os.environ.get("STATE_DIRECTORY", "").split(":")[0] or tempfile.mkdtemp(prefix="simplebot-")

    key = os.environ.get(key_var, "")
    if not key:
        log.error("%s is not set: no API key, not starting (set SIMPLEBOT_KEY_VAR to its name)", key_var)
        return 1
    log.info("starting as uid %d, key %s, state in %s", os.getuid(), masked(key), state_dir)

    stop = threading.Event()
    received: list[str] = []

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    state = {"started_at": time.time(), "heartbeats": 0}
    try:
        with open(os.path.join(state_dir, "state.json")) as handle:
            state["heartbeats"] = int(json.load(handle).get("heartbeats", 0))
    except (OSError, ValueError):
        pass

    if os.environ.get("BOTVPS_UI_PORT"):
        serve_ui(os.environ.get("BOTVPS_UI_ADDRESS", "127.0.0.1"), int(os.environ["BOTVPS_UI_PORT"]), state)

    while not stop.is_set():
        state["heartbeats"] += 1
        state["last_heartbeat"] = time.time()
        write_state(state_dir, state)
        log.info("heartbeat %d", state["heartbeats"])
        stop.wait(interval)

    log.info("%s received: cancelling open orders", received[0] if received else "stop")
    time.sleep(cancel_delay)
    state["stopped_cleanly_at"] = time.time()
    write_state(state_dir, state)
    log.info("clean exit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
