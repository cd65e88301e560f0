"""The panic edge reaches the MQTT link without waiting behind a slow sensor
read, a slow probe or a disk flush (each injected here, all at once)."""

import os
import statistics
import threading
import time

from hall_agent.agent import Agent
from hall_agent.config import validate
from hall_agent.devices import ProbeResult
from hall_agent.sensors import Sensor
from hall_agent.sensors.loop import SensorRunner, SensorSpec
from mqtt_helpers import Recorder, wait_until

BASE = "halls/zigong/ziliujing/zg-001"


class StuckSensor(Sensor):
    model = "stuck"

    def read(self):
        time.sleep(3)  # a bus that hangs
        return {"temperature_c": 1.0}


def test_panic_edge_to_mqtt_handoff_is_not_held_up(broker, tmp_path):
    settings = validate({
        "hall": {"id": "zg-001", "city": "zigong", "branch": "ziliujing"},
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "drain_s": 1},
        "storage": {"dir": str(tmp_path / "state")},
        # min_pulse_ms 0: this measures the hand-off path, not the deliberate 10 ms glitch filter
        # (test_inputs.py covers that)
        "inputs": [{"id": "panic.1", "kind": "panic", "pin": 22, "contact": "nc", "bounce_ms": 0, "min_pulse_ms": 0}],
        "equipment": [{"id": "kiosk.1", "probe": "tcp://10.0.0.1:80", "probe_interval_s": 1}],
    })
    agent = Agent(settings, simulate=True)

    def slow_probe(url, timeout):
        time.sleep(2)  # a probe stuck on a dead host
        return ProbeResult(False, None, "slow")
    agent.devices.equipment.probe_fn = slow_probe
    stuck = SensorRunner(SensorSpec("stuck", "stuck", 0.1, 3, StuckSensor, timeout_s=0.2), *(lambda *a: None,) * 3)

    handed = {}
    publish = agent.link.client.publish

    def timed_publish(topic, payload=None, qos=0, retain=False, properties=None):
        if topic.endswith("state/panic.1") and b'"alarm"' in payload:
            handed[len(handed)] = time.perf_counter()
        return publish(topic, payload, qos, retain, properties)
    agent.link.client.publish = timed_publish

    stop_flush = threading.Event()

    def disk_flusher():  # big writes and fsyncs on the state folder's disk, all the time
        path = tmp_path / "state" / "ballast"
        block = os.urandom(4 * 1024 * 1024)
        while not stop_flush.is_set():
            with open(path, "wb") as f:
                f.write(block)
                f.flush()
                os.fsync(f.fileno())
            agent.outbox.sync()

    rec = Recorder(broker.port, [f"{BASE}/state/panic.1"])
    agent.start()
    stuck.start()
    flusher = threading.Thread(target=disk_flusher, daemon=True)
    flusher.start()
    pin = agent.devices.inputs["panic.1"].device.pin
    latencies = []
    try:
        assert wait_until(lambda: agent.link.connected, 10)
        time.sleep(0.5)  # let the stuck sensor and the slow probe get stuck
        for i in range(40):
            t0 = time.perf_counter()
            pin.set_contact(False)  # NC loop opens: pressed
            latencies.append((handed[i] - t0) * 1000)
            pin.set_contact(True)
            assert agent.devices.inputs["panic.1"].reset() is None
            time.sleep(0.01)
        assert rec.wait_for(lambda r: sum(p["data"]["state"] == "alarm" for p in r.payloads("state/panic.1")) == 40, 10)
    finally:
        stop_flush.set()
        stuck.stop()
        agent.stop()
        rec.close()
    p50 = statistics.median(latencies)
    p90 = sorted(latencies)[int(len(latencies) * 0.9)]
    print(f"edge -> hand-off to paho: p50 {p50:.2f} ms, p90 {p90:.2f} ms, max {max(latencies):.2f} ms")
    assert p50 < 5 and p90 < 25, latencies
