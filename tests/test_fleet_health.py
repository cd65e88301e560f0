"""Health fields for the field: throttling flags, certificate expiry (and the
certificate-expiring alert, through a TLS mosquitto), config sha256, version."""

import hashlib
import json
import shutil
import subprocess
import time

import pytest

from hall_agent import __version__
from hall_agent.agent import Agent
from hall_agent.config import validate
from hall_agent.fleet import health as fh
from mqtt_helpers import Broker, free_port, wait_until


def test_throttled_bits_decode_as_vcgencmd_documents_them():
    flags = fh.decode_throttled(0x50005)  # "under-voltage now and throttled; both have occurred"
    assert flags["raw"] == "0x50005"
    assert {k for k, v in flags.items() if v is True} == {
        "under_voltage", "throttled", "under_voltage_occurred", "throttled_occurred"}
    assert not any(v for k, v in fh.decode_throttled(0).items() if k != "raw")
    assert fh.decode_throttled(0x80008)["soft_temp_limit"] and fh.decode_throttled(0x80008)["soft_temp_limit_occurred"]
    assert fh.decode_throttled(0x20002)["freq_capped"] and fh.decode_throttled(0x20002)["freq_capped_occurred"]


def test_throttled_read_from_sysfs_else_vcgencmd_else_absent(tmp_path):
    sysfs = tmp_path / "get_throttled"
    sysfs.write_text("50000\n")  # the kernel attribute: hex without 0x
    assert fh.throttled(sysfs, vcgencmd="no-such-vcgencmd")["under_voltage_occurred"] is True
    fake = tmp_path / "vcgencmd"
    fake.write_text("#!/bin/sh\n[ \"$1\" = get_throttled ] && echo throttled=0x4\n")
    fake.chmod(0o755)
    got = fh.throttled(tmp_path / "missing", vcgencmd=str(fake))
    assert got["throttled"] is True and got["under_voltage"] is False
    assert fh.throttled(tmp_path / "missing", vcgencmd="no-such-vcgencmd") is None


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def pki(tmp_path):
    if not shutil.which("openssl"):
        pytest.fail("openssl missing (package openssl)")
    d = tmp_path / "pki"
    d.mkdir()
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "400", "-subj", "/CN=test-ca",
            "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
    (d / "ext.cnf").write_text("subjectAltName=DNS:localhost\n")
    for name, days in (("server", "400"), ("zg-001", "10")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={'localhost' if name == 'server' else name}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", days, "-extfile", "ext.cnf", "-out", f"{name}.crt", cwd=d)
    return d


def test_days_left_of_a_certificate(pki, tmp_path):
    now = time.time()
    assert fh.days_left(pki / "zg-001.crt", now) in (9, 10)
    assert fh.days_left(pki / "zg-001.crt", now + 11 * 86400) < 0  # expired: negative
    assert fh.days_left(pki / "ca.crt", now) in (399, 400)
    (tmp_path / "junk.crt").write_text("not a certificate")
    assert fh.days_left(tmp_path / "junk.crt", now) is None and fh.days_left(None, now) is None


def test_health_carries_the_new_fields_and_a_certificate_close_to_expiry_raises_an_alert(pki, tmp_path):
    port = free_port()
    broker = Broker(tmp_path / "broker", extra_conf=(
        f"listener {port} 127.0.0.1\nallow_anonymous true\n"
        f"cafile {pki}/ca.crt\ncertfile {pki}/server.crt\nkeyfile {pki}/server.key\n"))
    broker.port = port
    broker.start()
    cfg = tmp_path / "config.toml"
    cfg.write_text(f"""
[hall]
id = "zg-001"
city = "zigong"
branch = "ziliujing"

[mqtt]
host = "localhost"
port = {port}
tls = true
ca_file = "{pki}/ca.crt"
cert_file = "{pki}/zg-001.crt"
key_file = "{pki}/zg-001.key"
drain_s = 1

[agent]
health_interval_s = 1

[storage]
dir = "{tmp_path / 'state'}"
""")
    import tomllib
    settings = validate(tomllib.loads(cfg.read_text()))
    agent = Agent(settings, config_path=str(cfg))
    got = []
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sub.tls_set(ca_certs=str(pki / "ca.crt"))
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe("halls/#", qos=1)
    sub.on_message = lambda c, u, m: got.append((m.topic, bytes(m.payload)))
    sub.connect("localhost", port)
    sub.loop_start()
    agent.start()
    try:
        base = "halls/zigong/ziliujing/zg-001"
        assert wait_until(lambda: any(t == f"{base}/health" for t, _ in got), 20)
        health = json.loads(next(p for t, p in got if t == f"{base}/health"))["data"]
        assert health["version"] == __version__
        assert health["config_sha256"] == hashlib.sha256(cfg.read_bytes()).hexdigest()
        assert health["cert_days_left"] in (9, 10) and health["ca_days_left"] in (399, 400)
        assert isinstance(health["written_bytes_24h"], int) and health["written_bytes_24h"] >= 0
        assert ("throttled" in health) == (fh.throttled() is not None)  # absent where the firmware has none
        assert wait_until(lambda: any(t == f"{base}/alert/certificate-expiring/mqtt.cert" for t, _ in got), 10)
        alert = json.loads(next(p for t, p in got if t == f"{base}/alert/certificate-expiring/mqtt.cert"))
        assert alert["severity"] == "warning" and alert["moment"] == {"category": "system", "priority": 2}
        assert alert["data"]["state"] == "active" and alert["data"]["value"] in (9, 10)
        assert alert["data"]["threshold"] == 30
        time.sleep(1.5)  # another health report: raised once, no repeat; the CA is far from expiry
        assert sum(t == f"{base}/alert/certificate-expiring/mqtt.cert" for t, _ in got) == 1
        assert not any(t.endswith("/alert/certificate-expiring/mqtt.ca") for t, _ in got)
    finally:
        agent.stop()
        sub.disconnect()
        sub.loop_stop()
        broker.stop()


def test_doctor_lines_for_power_certificates_and_version(pki, tmp_path):
    from hall_agent.config import validate
    cfg = tmp_path / "config.toml"
    cfg.write_text("# a file\n")
    settings = validate({"hall": {"id": "zg-001", "city": "zigong", "branch": "ziliujing"},
                         "mqtt": {"host": "localhost", "tls": True, "ca_file": str(pki / "ca.crt"),
                                  "cert_file": str(pki / "zg-001.crt"), "key_file": str(pki / "zg-001.key")}})
    sysfs = tmp_path / "get_throttled"
    sysfs.write_text("50000\n")
    lines = {f.what: f for f in fh.doctor_findings(settings, cfg, sysfs=sysfs)}
    assert lines["version"].ok and hashlib.sha256(b"# a file\n").hexdigest() in lines["version"].detail
    assert not lines["power"].ok and "since boot" in lines["power"].detail and "power supply" in lines["power"].fix
    assert not lines["client certificate"].ok and "expires in" in lines["client certificate"].detail
    assert "credentials command" in lines["client certificate"].fix
    assert lines["CA certificate"].ok
    sysfs.write_text("0\n")
    assert {f.what: f for f in fh.doctor_findings(settings, cfg, sysfs=sysfs)}["power"].ok
    sysfs.write_text("40000\n")
    assert not {f.what: f for f in fh.doctor_findings(settings, cfg, sysfs=sysfs)}["throttling"].ok


def test_written_bytes_over_the_last_24_hours_on_the_monotonic_clock():
    from hall_agent.clock import FakeClock
    clock = FakeClock()
    counter = {"v": 1000}
    meter = fh.WriteMeter(clock.monotonic, lambda: counter["v"])
    counter["v"] += 500
    clock.advance(3600)
    assert meter.sample() == 500                  # since start, less than a day ago
    for _ in range(30):                           # a day and more of hourly reports, 100 bytes each
        clock.advance(3600)
        counter["v"] += 100
        meter.sample()
    assert meter.sample() == 2400                 # only the last 24 h: 24 x 100
    assert len(meter.samples) <= 27
    assert fh.WriteMeter(clock.monotonic, lambda: None).sample() is None
    assert isinstance(fh.process_write_bytes(), int)  # Linux: /proc/self/io
