"""botvps.infra.public_ipv4: the address a "what is my address" service sees, asked over IPv4."""

from __future__ import annotations

import http.server
import threading

import pytest

from ansible_collections.botvps.infra.plugins.modules import public_ipv4


@pytest.mark.parametrize(("body", "address"), [
    (b"95.216.10.20\n", "95.216.10.20"),
    (b'{"ip":"95.216.10.20"}', "95.216.10.20"),
])
def test_answers_read(body, address):
    assert public_ipv4.parse_answer(body) == address


@pytest.mark.parametrize(("body", "words"), [
    (b"<html>blocked</html>", "no IP address in the answer"),
    (b'{"ip": "2a01:4f9::1"}', "an IPv6 address"),
    (b"{not json", "an unreadable JSON answer"),
])
def test_other_answers_refused(body, words):
    with pytest.raises(ValueError, match=words):
        public_ipv4.parse_answer(body)


@pytest.fixture
def echo():
    """A loopback stand-in for api.ipify.org: answers what the test sets, records the client's address."""
    state = {"status": 200, "body": b"198.51.100.7", "clients": []}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            state["clients"].append(self.client_address[0])
            self.send_response(state["status"])
            self.end_headers()
            self.wfile.write(state["body"])

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state["url"] = f"http://127.0.0.1:{server.server_address[1]}/"
    yield state
    server.shutdown()
    server.server_close()


def test_ask_sends_from_the_source_address(echo):
    assert public_ipv4.ask(echo["url"], "127.0.0.1", 5) == "198.51.100.7"
    assert echo["clients"] == ["127.0.0.1"]


def test_ask_names_the_failure(echo):
    echo["status"] = 503
    with pytest.raises(ValueError, match="answered HTTP 503"):
        public_ipv4.ask(echo["url"], "", 5)
    echo["status"], echo["body"] = 200, b"nope"
    with pytest.raises(ValueError, match=r"gave no IP address in the answer \('nope'\)"):
        public_ipv4.ask(echo["url"], "", 5)
    with pytest.raises(ValueError, match="is not an http or https URL"):
        public_ipv4.ask("api.ipify.org", "", 5)
    with pytest.raises(ValueError, match="could not be reached over IPv4"):
        public_ipv4.ask("http://127.0.0.1:9/", "", 5)
