"""TLS to a real mosquitto: CA verification and the hostname check."""

import subprocess

import pytest

from hall_agent.agent import Agent
from hall_agent.config import validate
from mqtt_helpers import Broker, free_port, wait_until


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def pki(tmp_path):
    d = tmp_path / "pki2"
    d.mkdir()
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
            "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
    (d / "ext.cnf").write_text("subjectAltName=DNS:localhost\n")
    for name in ("server", "zg-001"):
        cn = "localhost" if name == "server" else name
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", f"{name}.key",
                "-out", f"{name}.csr", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-extfile", "ext.cnf", "-out", f"{name}.crt", cwd=d)
    return d


def broker_with(tmp_path, name, conf):
    port = free_port()
    broker = Broker(tmp_path / name, extra_conf=f"listener {port} 127.0.0.1\n{conf}")
    broker.port = port
    return broker.start()


@pytest.fixture
def tls_broker(pki, tmp_path):
    broker = broker_with(tmp_path, "broker", "allow_anonymous true\n"
                         f"cafile {pki}/ca.crt\ncertfile {pki}/server.crt\nkeyfile {pki}/server.key\n")
    broker.ca = pki / "ca.crt"
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


def connects(tmp_path, state, mqtt, expect):
    """Whether an agent with these [mqtt] settings gets connected (waits less for a refusal)."""
    agent = Agent(validate({"hall": {"id": "zg-001", "city": "zigong", "branch": "ziliujing"},
                            "mqtt": {"drain_s": 1, **mqtt}, "storage": {"dir": str(tmp_path / state)}}))
    agent.start()
    try:
        return wait_until(lambda: agent.link.connected, 10 if expect else 2.5)
    finally:
        agent.stop()


def test_client_certificate_required_by_broker(pki, tmp_path):
    broker = broker_with(tmp_path, "broker-mtls", (
        "allow_anonymous false\nrequire_certificate true\nuse_identity_as_username true\n"
        f"cafile {pki}/ca.crt\ncertfile {pki}/server.crt\nkeyfile {pki}/server.key\n"))
    try:
        mqtt = {"host": "localhost", "port": broker.port, "tls": True, "ca_file": str(pki / "ca.crt")}
        assert connects(tmp_path, "s1", mqtt, expect=False) is False
        mqtt.update(cert_file=str(pki / "zg-001.crt"), key_file=str(pki / "zg-001.key"))
        assert connects(tmp_path, "s2", mqtt, expect=True) is True
    finally:
        broker.stop()


def test_password_file_authenticates(tmp_path):
    pw = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pw), "zg-001", "right-pw"], check=True, capture_output=True)
    broker = broker_with(tmp_path, "broker-auth", f"allow_anonymous false\npassword_file {pw}\n")
    try:
        for secret, expect in (("wrong-pw", False), ("right-pw", True)):
            f = tmp_path / f"secret-{secret}"
            f.write_text(secret + "\n")
            f.chmod(0o600)
            mqtt = {"host": "127.0.0.1", "port": broker.port, "username": "zg-001", "password_file": str(f)}
            assert connects(tmp_path, f"s-{secret}", mqtt, expect) is expect
    finally:
        broker.stop()


def test_concurrent_writers_over_tls_every_row_acknowledged(tls_broker, tmp_path):
    """TLS records written from several threads (the I/O lock): the broker acknowledges
    every row over one connection."""
    from test_link import emit_from_threads
    agent = run_agent(tmp_path, tls_broker.port, "localhost", tls_broker.ca)
    try:
        assert wait_until(lambda: agent.link.connected, 10)
        emit_from_threads(agent)
        assert wait_until(lambda: agent.outbox.depth == 0, 30), agent.outbox.depth
        assert agent.link.connects == 1
    finally:
        agent.stop()
