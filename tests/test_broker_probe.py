"""doctor's broker conformance probe (issue 17.5) against a real mosquitto (meets
every requirement) and against a server that keeps no retained messages and
publishes no will (fails those two, in plain words)."""

import subprocess
import sys

from fake_mqtt import FakeServer
from hall_agent.broker.probe import check
from hall_agent.config import validate
from mqtt_helpers import Recorder


def settings(port, **mqtt):
    return validate({"hall": {"id": "zg-001", "city": "zigong", "branch": "ziliujing"},
                     "mqtt": {"host": "127.0.0.1", "port": port, **mqtt}})


def test_mosquitto_meets_every_requirement_and_nothing_is_left_behind(broker):
    results = check(settings(broker.port), timeout_s=3)
    assert [(r.what, r.ok) for r in results] == [("broker MQTT 5", True), ("broker QoS 1", True),
                                                 ("broker retained + wildcard", True), ("broker last will", True)]
    later = Recorder(broker.port, ["halls/#"])  # the probe's retained message was removed
    import time
    time.sleep(0.5)
    later.close()
    assert not [m.topic for m in later.messages if m.retain]


def test_mosquitto_under_311_says_refusals_cannot_be_seen(broker):
    results = check(settings(broker.port, protocol=311), timeout_s=3)
    assert results[0].what == "broker MQTT 3.1.1" and "cannot be seen" in results[0].detail
    assert all(r.ok for r in results)


def test_a_broker_without_retained_messages_or_will_is_named(tmp_path):
    server = FakeServer(receive_maximum=10).start()  # acknowledges, keeps nothing, sends nothing back
    try:
        results = {r.what: r for r in check(settings(server.port), timeout_s=1)}
        assert results["broker MQTT 5"].ok and "receive maximum 10" in results["broker MQTT 5"].detail
        assert results["broker QoS 1"].ok
        wild = results["broker retained + wildcard"]
        assert not wild.ok and "did not come back" in wild.detail and "RabbitMQ" in wild.fix
        will = results["broker last will"]
        assert not will.ok and "never see a hall go offline" in will.fix
    finally:
        server.stop()


def test_doctor_prints_the_probe(broker, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[hall]\nid="zg-001"\ncity="zigong"\nbranch="ziliujing"\n[mqtt]\nhost="127.0.0.1"\n'
                   f'port={broker.port}\n[storage]\ndir="{tmp_path / "s"}"\n')
    r = subprocess.run([sys.executable, "-m", "hall_agent", "doctor", "-c", str(cfg)], capture_output=True,
                       text=True, timeout=60)
    for what in ("broker MQTT 5", "broker QoS 1", "broker retained + wildcard", "broker last will"):
        assert f"ok       {what}" in r.stdout, r.stdout
