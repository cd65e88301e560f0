"""Home Assistant MQTT discovery: off by default; one device, an entity per thing, re-sent on HA's birth."""

import json

from hall_agent.homeassistant import discovery
from hall_agent.config import validate
from mqtt_helpers import AgentProcess, Recorder, publish, write_config

HALL = """
[homeassistant]
enabled = true
[[sensors]]
id = "co2.a"
driver = "scd4x"
interval_s = 5
[[inputs]]
id = "door.side"
kind = "door"
pin = 17
contact = "nc"
[[printers]]
id = "printer.q"
port = "/dev/ttyUSB1"
[[equipment]]
id = "kiosk.1"
probe = "tcp://192.168.10.21:80"
"""


def test_off_by_default():
    s = validate({"hall": {"id": "zg-001", "city": "zigong", "branch": "ziliujing"}})
    assert s.homeassistant.enabled is False


def test_discovery_configs_point_at_the_agents_topics(broker, tmp_path):
    cfg = write_config(tmp_path / "c.toml", broker.port, tmp_path / "state", HALL)
    rec = Recorder(broker.port, ["homeassistant/#", "halls/#"])
    agent = AgentProcess(cfg, "--simulate", env={"HALL_AGENT_SIM_FAST": "1"}).start()
    try:
        assert rec.wait_for(lambda r: len(r.on("/config")) == 7 and r.on("/telemetry/co2.a"), 15), agent.output()
        configs = {m.topic: json.loads(m.payload) for m in rec.on("/config")}
        assert all(t.startswith("homeassistant/") and "/zg-001/" in t for t in configs)
        ids = {c["unique_id"] for c in configs.values()}
        assert len(ids) == 7 and {c["device"]["identifiers"][0] for c in configs.values()} == {"hall-agent-zg-001"}
        co2 = configs["homeassistant/sensor/zg-001/zg-001_co2_a_co2_ppm/config"]
        assert co2["state_topic"] == "halls/zigong/ziliujing/zg-001/telemetry/co2.a"
        assert co2["device_class"] == "carbon_dioxide" and co2["unit_of_measurement"] == "ppm"
        reading = rec.payloads("/telemetry/co2.a")[0]
        assert "co2_ppm" in reading["data"]["values"] and "['values']['co2_ppm']" in co2["value_template"]
        door = configs["homeassistant/binary_sensor/zg-001/zg-001_door_side/config"]
        assert (door["payload_on"], door["payload_off"], door["device_class"]) == ("open", "closed", "door")
        assert all(c["availability_topic"] == "halls/zigong/ziliujing/zg-001/status" for c in configs.values())
        publish(broker.port, "homeassistant/status", "online")  # Home Assistant restarted
        assert rec.wait_for(lambda r: len(r.on("/config")) == 14, 10)
    finally:
        agent.kill()
        rec.close()


def test_every_part_kind_has_entities():
    s = validate({"hall": {"id": "zg-001", "city": "zigong", "branch": "ziliujing", "name": "自流井营业厅"},
                  "sensors": [{"id": "pm", "driver": "pms5003", "port": "/dev/ttyUSB0"}],
                  "inputs": [{"id": "panic.1", "kind": "panic", "pin": 22}]})
    topics = [t for t, _ in discovery(s)]
    assert topics == ["homeassistant/sensor/zg-001/zg-001_pm_pm1_ugm3/config",
                      "homeassistant/sensor/zg-001/zg-001_pm_pm25_ugm3/config",
                      "homeassistant/sensor/zg-001/zg-001_pm_pm10_ugm3/config",
                      "homeassistant/binary_sensor/zg-001/zg-001_panic_1/config"]
    panic = json.loads(discovery(s)[-1][1])
    assert panic["device_class"] == "safety" and panic["payload_on"] == "alarm"
    assert panic["device"]["name"] == "自流井营业厅"
