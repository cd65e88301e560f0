"""A broker port that accepts TCP but never answers CONNECT (a TLS port read as plain MQTT):
the agent says so within keepalive_s, and keeps retrying."""

import logging
import socket
import threading

from hall_agent.agent import Agent
from hall_agent.config import validate
from mqtt_helpers import wait_until


def test_no_connack_is_logged_within_keepalive_and_retried(tmp_path, caplog):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.2)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                accepted.append(srv.accept()[0])  # say nothing
            except OSError:
                pass
    th = threading.Thread(target=accept, daemon=True)
    th.start()
    port = srv.getsockname()[1]
    agent = Agent(validate({"hall": {"id": "zg-001", "city": "zigong", "branch": "ziliujing"},
                            "mqtt": {"host": "127.0.0.1", "port": port, "keepalive_s": 5},
                            "storage": {"dir": str(tmp_path / "state")}}))
    try:
        with caplog.at_level(logging.WARNING, logger="hall_agent.link"):
            agent.start()
            assert wait_until(lambda: "no CONNACK" in caplog.text, 15), caplog.text
            assert f"no CONNACK from 127.0.0.1:{port} within 5 s: is it a TLS port? tls = false" in caplog.text
            assert wait_until(lambda: len(accepted) >= 2, 20)  # it tried again
            assert not agent.link.connected
    finally:
        agent.stop()
        stop.set()
        th.join()
        for s in accepted:
            s.close()
        srv.close()
