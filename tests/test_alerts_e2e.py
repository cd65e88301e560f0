"""Alerts end to end in simulation: raised once and retained, cleared once and
removed, classified; active alerts and a latched panic survive a restart."""

import json
import time

from mqtt_helpers import AgentProcess, Recorder, publish, write_config

BASE = "halls/zigong/ziliujing/zg-001"
HALL = """
[hours]
monday = "closed"
tuesday = "closed"
wednesday = "closed"
thursday = "closed"
friday = "closed"
saturday = "closed"
sunday = "closed"
holidays = ""

[[sensors]]
id = "co2.a"
driver = "mhz19"
port = "/dev/ttyUSB0"
interval_s = 1

[[inputs]]
id = "door.side"
kind = "door"
pin = 17
contact = "nc"
bounce_ms = 10
[[inputs]]
id = "panic.1"
kind = "panic"
pin = 22
contact = "nc"

[[rules]]
id = "co2-peak"
source = "co2.a"
value = "co2_ppm"
above = 1500
clear_below = 1200
severity = "critical"
priority = 1
"""


def alerts(rec, rule, source):
    return [m for m in rec.messages if m.topic == f"{BASE}/alert/{rule}/{source}"]


def test_threshold_door_and_panic_alerts_through_a_restart(broker, tmp_path):
    cfg = write_config(tmp_path / "c.toml", broker.port, tmp_path / "state", HALL)
    rec = Recorder(broker.port, [f"{BASE}/alert/#", f"{BASE}/status", f"{BASE}/telemetry/#"])
    agent = AgentProcess(cfg, "--simulate").start()
    sim = lambda kind, pid, payload: publish(broker.port, f"{BASE}/sim/{kind}/{pid}", payload)
    try:
        assert rec.wait_for(lambda r: r.on("/telemetry/co2.a"), 15), agent.output()
        sim("sensor", "co2.a", '{"co2_ppm": 1800}')
        assert rec.wait_for(lambda r: alerts(r, "co2-peak", "co2.a"), 10)
        time.sleep(1.0)  # several more readings above the threshold
        raised = alerts(rec, "co2-peak", "co2.a")
        assert len(raised) == 1  # exactly one, not one per reading
        doc = json.loads(raised[0].payload)
        assert doc["type"] == "alert" and doc["severity"] == "critical"
        assert doc["data"]["state"] == "active" and doc["data"]["value"] == 1800.0 and doc["data"]["threshold"] == 1500
        sim("sensor", "co2.a", '{"co2_ppm": 1300}')  # below the threshold, above clear_below: stays
        time.sleep(1.0)
        assert len(alerts(rec, "co2-peak", "co2.a")) == 1
        sim("sensor", "co2.a", '{"co2_ppm": 1000}')
        assert rec.wait_for(lambda r: len(alerts(r, "co2-peak", "co2.a")) == 3, 10)
        cleared, empty = alerts(rec, "co2-peak", "co2.a")[1:]
        assert json.loads(cleared.payload)["data"]["state"] == "cleared" and empty.payload == b""
        from test_schema import ENVELOPE
        for m in alerts(rec, "co2-peak", "co2.a")[:2]:
            ENVELOPE.validate(json.loads(m.payload))

        sim("input", "door.side", "open")  # the hall is closed all week: after hours
        assert rec.wait_for(lambda r: alerts(r, "door-after-hours", "door.side"), 10)
        door = json.loads(alerts(rec, "door-after-hours", "door.side")[0].payload)
        assert door["severity"] == "critical" and door["moment"] == {"category": "emergency", "priority": 1}

        sim("input", "panic.1", "pressed")
        assert rec.wait_for(lambda r: alerts(r, "panic", "panic.1"), 10)
        panic_id = json.loads(alerts(rec, "panic", "panic.1")[0].payload)["id"]
        sim("input", "panic.1", "released")
        time.sleep(1.5)  # the tick saves the active alerts
        assert agent.terminate() == 0
    finally:
        agent.kill()
        rec.close()

    # a later subscriber sees the active alerts retained, and not the cleared one
    later = Recorder(broker.port, [f"{BASE}/alert/#"])
    assert later.wait_for(lambda r: len(r.messages) >= 2, 5)
    time.sleep(0.3)
    assert sorted(m.topic.split("/alert/")[1] for m in later.messages) == ["door-after-hours/door.side", "panic/panic.1"]
    later.close()

    # restart: the door was closed meanwhile (the simulation starts at rest), the panic stays latched
    rec = Recorder(broker.port, [f"{BASE}/alert/#", f"{BASE}/state/#", f"{BASE}/cmd/reply"])
    agent = AgentProcess(cfg, "--simulate").start()
    try:
        assert rec.wait_for(lambda r: any(m.payload == b"" for m in alerts(r, "door-after-hours", "door.side")), 15)
        boot = lambda r: [p["data"] for p in r.payloads("/state/panic.1") if p["data"].get("at_boot")]
        assert rec.wait_for(boot, 10)
        assert boot(rec) == [{"state": "alarm", "at_boot": True}]  # still latched after the restart
        live_panics = [json.loads(m.payload)["id"] for m in alerts(rec, "panic", "panic.1") if not m.retain]
        assert set(live_panics) <= {panic_id}  # not raised a second time (republished: the same envelope)
        publish(broker.port, f"{BASE}/cmd", '{"id":"st","command":"status"}')
        assert rec.wait_for(lambda r: r.payloads("/cmd/reply"), 10)
        active = rec.payloads("/cmd/reply")[0]["result"]["alerts"]
        assert [(a["rule"], a["source"]) for a in active] == [("panic", "panic.1")]
    finally:
        agent.kill()
        rec.close()


def test_cleared_then_removed_in_that_order(tmp_path):
    """A door closing clears its alert: the cleared envelope comes before the empty
    retained message that removes the topic, and both before the door's state."""
    from datetime import datetime
    from zoneinfo import ZoneInfo
    from hall_agent.agent import Agent
    from hall_agent.config import validate
    agent = Agent(validate({"hall": {"id": "zg-001", "city": "zigong", "branch": "ziliujing"},
                            "storage": {"dir": str(tmp_path / "s")}}), simulate=True)
    try:
        night = datetime(2026, 7, 1, 22, 0, tzinfo=ZoneInfo("Asia/Shanghai"))
        agent.alerts.feed(lambda now: agent.engine.input("door", "door.side", "open", night, 120))
        agent.alerts.feed(lambda now: agent.engine.input("door", "door.side", "closed", night, 120))
        agent.emit(agent.events.state("door.side", {"state": "closed"}))
        rows = [r for r in agent.outbox.take(100) if "/alert/" in r.topic or "/state/" in r.topic]
        assert [(b'"cleared"' in r.payload, r.payload == b"", r.retain, "/state/" in r.topic) for r in rows] == [
            (False, False, True, False), (True, False, False, False), (False, True, True, False),
            (False, False, True, True)]
    finally:
        agent.outbox.close()
        agent.hardware.close()
