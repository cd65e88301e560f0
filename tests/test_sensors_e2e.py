"""Sensors end to end: simulated parts -> real drivers -> telemetry on a real broker."""

import json

from mqtt_helpers import AgentProcess, Recorder, publish, write_config

BASE = "halls/zigong/ziliujing/zg-001"
SENSORS = """
[agent]
health_interval_s = 1

[[sensors]]
id = "env.a"
driver = "sht3x"
interval_s = 0.3
[[sensors]]
id = "co2.a"
driver = "scd4x"
interval_s = 5
[[sensors]]
id = "pm.a"
driver = "pms5003"
port = "/dev/ttyUSB7"
interval_s = 2.3
fault_after = 2
[[sensors]]
id = "co2.b"
driver = "mhz19"
port = "/dev/ttyUSB8"
interval_s = 1
[[sensors]]
id = "t.pipe"
driver = "ds18b20"
device = "28-0316a2791eff"
interval_s = 1
"""


def telemetry(rec, sensor):
    return [m["data"]["values"] for m in rec.payloads(f"/telemetry/{sensor}")]


def events(rec, name):
    return [e["data"] for e in rec.payloads("/event") if e["data"].get("event") == name]


def test_simulated_sensors_publish_fault_and_recover(broker, tmp_path):
    cfg = write_config(tmp_path / "c.toml", broker.port, tmp_path / "state", SENSORS)
    rec = Recorder(broker.port, [f"{BASE}/#"])
    agent = AgentProcess(cfg, "--simulate", env={"HALL_AGENT_SIM_FAST": "1"}).start()
    sim = lambda sid, doc: publish(broker.port, f"{BASE}/sim/sensor/{sid}", json.dumps(doc))
    try:
        for sid in ("env.a", "co2.a", "pm.a", "co2.b", "t.pipe"):
            assert rec.wait_for(lambda r: telemetry(r, sid), 15), f"no telemetry from {sid}: {agent.output()}"
        assert telemetry(rec, "env.a")[0] == {"temperature_c": 23.0, "humidity_pct": 45.0}

        sim("co2.a", {"co2_ppm": 1800})
        assert rec.wait_for(lambda r: any(v["co2_ppm"] == 1800.0 for v in telemetry(r, "co2.a")), 10)

        # a CRC fault: the sensor-fault event, health says fault, and no wrong number is published
        sim("env.a", {"fault": "crc", "temperature_c": 30.0})
        assert rec.wait_for(lambda r: events(r, "sensor-fault"), 10)
        fault = events(rec, "sensor-fault")[0]
        assert fault["sensor"] == "env.a" and fault["kind"] == "checksum" and fault["failures"] == 3
        assert rec.wait_for(lambda r: r.payloads("/health")[-1]["data"]["sensors"].get("env.a") == "fault", 5)
        assert all(v in ({"temperature_c": 23.0, "humidity_pct": 45.0}, {"temperature_c": 30.0, "humidity_pct": 45.0})
                   for v in telemetry(rec, "env.a"))
        n_before = len(telemetry(rec, "env.a"))
        sim("env.a", {"fault": None})
        assert rec.wait_for(lambda r: events(r, "sensor-recovered"), 10)
        assert rec.wait_for(lambda r: len(telemetry(r, "env.a")) > n_before, 5)
        assert telemetry(rec, "env.a")[-1] == {"temperature_c": 30.0, "humidity_pct": 45.0}

        # the serial adapter is pulled and plugged back in
        sim("pm.a", {"fault": "absent"})
        assert rec.wait_for(lambda r: any(f["sensor"] == "pm.a" and f["kind"] == "absent"
                                          for f in events(r, "sensor-fault")), 10)
        sim("pm.a", {"fault": None, "pm25_ugm3": 77})
        assert rec.wait_for(lambda r: any(e["sensor"] == "pm.a" for e in events(r, "sensor-recovered")), 10)
        assert rec.wait_for(lambda r: telemetry(r, "pm.a")[-1]["pm25_ugm3"] == 77.0, 5)

        # still alive and answering
        publish(broker.port, f"{BASE}/cmd", '{"id":"s","command":"status"}')
        assert rec.wait_for(lambda r: r.payloads("/cmd/reply"), 5)
        status = rec.payloads("/cmd/reply")[0]["result"]
        assert status["sensors"]["co2.b"]["state"] == "ok"
        assert agent.terminate() == 0
    finally:
        agent.kill()
        rec.close()
    later = Recorder(broker.port, [f"{BASE}/telemetry/+"])  # telemetry is retained
    assert later.wait_for(lambda r: len({m.topic for m in r.messages}) == 5, 5)
    later.close()
