"""Equipment probes against loopback listeners."""

import http.server
import socket
import threading

import pytest

from hall_agent.devices import probe
from mqtt_helpers import free_port


@pytest.fixture
def http_server():
    codes = {"/ok": 200, "/moved": 302, "/missing": 404, "/down": 503}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            code = codes.get(self.path, 200)
            self.send_response(code)
            if code == 302:
                self.send_header("Location", "/ok")
            self.end_headers()

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_tcp_up_and_refused():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    up = probe(f"tcp://127.0.0.1:{port}", 1.0)
    assert up.reachable and up.latency_ms is not None and up.latency_ms < 1000
    listener.close()
    down = probe(f"tcp://127.0.0.1:{free_port()}", 1.0)
    assert not down.reachable and "refused" in down.detail.lower()


def test_tcp_timeout_against_a_listener_that_accepts_nothing():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)  # a backlog of one, never accepted: later SYNs are dropped
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        fillers.append(s)
    result = probe(f"tcp://127.0.0.1:{port}", 0.5)
    assert not result.reachable and "no answer within 0.5 s" in result.detail
    for s in fillers:
        s.close()
    listener.close()


def test_http_status_codes(http_server):
    assert probe(f"{http_server}/ok").reachable
    assert probe(f"{http_server}/moved").reachable  # followed to /ok
    missing, down = probe(f"{http_server}/missing"), probe(f"{http_server}/down")
    assert (missing.reachable, missing.detail) == (False, "HTTP 404")
    assert (down.reachable, down.detail) == (False, "HTTP 503")


def test_http_that_never_answers_times_out():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    accepted = []
    t = threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True)
    t.start()
    result = probe(f"http://127.0.0.1:{port}/health", 0.5)
    assert not result.reachable and "no answer" in result.detail
    listener.close()
