"""TLS to a real mosquitto: CA verification and the hostname check."""

import subprocess

import pytest

from hall_agent.agent import Agent
from hall_agent.config import validate
from mqtt_helpers import Broker, free_port, wait_until


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def tls_broker(tmp_path):
    d = tmp_path / "pki"
    d.mkdir()
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
            "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "server.key",
            "-out", "server.csr", cwd=d)
    (d / "ext.cnf").write_text("subjectAltName=DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "ext.cnf", "-out", "server.crt", cwd=d)
    port = free_port()
    broker = Broker(tmp_path / "broker", extra_conf=(
        f"listener {port} 127.0.0.1\nallow_anonymous true\n"
        f"cafile {d}/ca.crt\ncertfile {d}/server.crt\nkeyfile {d}/server.key\n"))
    broker.port = port
    broker.start()
    broker.ca = d / "ca.crt"
    yield broker
    broker.stop()


def run_agent(tmp_path, port, host, ca, insecure=False):
    settings = validate({
        "hall": {"id": "zg-001", "city": "zigong", "branch": "ziliujing"},
        "mqtt": {"host": host, "port": port, "tls": True, "ca_file": str(ca), "tls_insecure": insecure,
                 "username": "zg-001", "password": "pw", "drain_s": 1},
        "storage": {"dir": str(tmp_path / f"state-{host}-{insecure}")}})
    agent = Agent(settings)
    agent.start()
    return agent


def test_tls_with_ca_and_matching_hostname_connects(tls_broker, tmp_path):
    agent = run_agent(tmp_path, tls_broker.port, "localhost", tls_broker.ca)
    try:
        assert wait_until(lambda: agent.link.connected, 10)
    finally:
        agent.stop()


def test_tls_hostname_mismatch_is_refused_unless_insecure(tls_broker, tmp_path):
    agent = run_agent(tmp_path, tls_broker.port, "127.0.0.1", tls_broker.ca)  # cert names localhost only
    try:
        assert not wait_until(lambda: agent.link.connected, 2.5)
    finally:
        agent.stop()
    agent = run_agent(tmp_path, tls_broker.port, "127.0.0.1", tls_broker.ca, insecure=True)
    try:
        assert wait_until(lambda: agent.link.connected, 10)
    finally:
        agent.stop()
