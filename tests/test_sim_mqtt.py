"""A simulated hall (the example configuration) driven purely over MQTT:
sim/… in, topics out, every message checked against the JSON Schema."""

import json
import time
from pathlib import Path

import jsonschema

from mqtt_helpers import AgentProcess, Recorder, publish
from test_schema import ENVELOPE, SCHEMA

EXAMPLE = Path(__file__).resolve().parent.parent / "deploy" / "config.example.toml"
BASE = "halls/zigong/ziliujing/zg-001"


def validator(name):
    return jsonschema.Draft202012Validator({**SCHEMA["$defs"][name], "$defs": SCHEMA["$defs"]})


def test_example_hall_over_mqtt_only(broker, tmp_path):
    env = {"HALL_AGENT_MQTT__PORT": str(broker.port), "HALL_AGENT_STORAGE__DIR": str(tmp_path / "state"),
           "HALL_AGENT_SIM_FAST": "1", "HALL_AGENT_CHECKS__SETTLE_S": "0.5", "HALL_AGENT_SIM_DAY": "1"}
    rec = Recorder(broker.port, ["halls/#"])
    agent = AgentProcess(EXAMPLE, "--simulate", env=env).start()
    sim = lambda path, payload: publish(broker.port, f"{BASE}/sim/{path}", payload)
    cmd = lambda doc: publish(broker.port, f"{BASE}/cmd", json.dumps(doc))
    try:
        ok = rec.wait_for(lambda r: len({m.topic for m in r.messages if "/telemetry/" in m.topic}) == 6, 20)
        if not ok:
            agent.kill()
        assert ok, (sorted({m.topic for m in rec.messages}), agent.output()[-3000:])
        sim("sensor/co2.hall", '{"co2_ppm": 2400}')
        sim("sensor/voc.hall", '{"fault": "crc"}')  # read every second: a fault within 3 s
        sim("sensor/pm.hall", '{"fault": "absent"}')
        sim("input/door.back", "open")
        sim("input/panic.counter-2", "pressed")
        sim("printer/printer.queue", '{"paper": "end"}')
        sim("equipment/kiosk.1", '{"reachable": false}')
        sim("sensor/co2.hall", "not json")  # bad control messages are logged, not fatal
        cmd({"id": "c1", "command": "check", "args": {"kind": "opening"}})
        cmd({"id": "c2", "command": "reset", "args": {"source": "panic.counter-2"}})
        cmd({"id": "c3", "command": "power", "args": {"equipment": "kiosk.1", "on": False}})
        cmd({"id": "c4", "command": "status"})
        publish(broker.port, f"{BASE}/cmd", b"\xff garbage")
        assert rec.wait_for(lambda r: {x["id"] for x in r.payloads("/cmd/reply")} >= {"c1", "c2", "c3", "c4", None}, 30), \
            [x["id"] for x in rec.payloads("/cmd/reply")]
        assert rec.wait_for(lambda r: r.on("/alert/panic/panic.counter-2") and r.on("/alert/printer-paper-out/printer.queue")
                            and r.on("/alert/sensor-fault/voc.hall"), 20), sorted({m.topic for m in rec.messages})
        time.sleep(1.5)
        assert agent.terminate() == 0
    finally:
        agent.kill()
        rec.close()
    status, command, reply = validator("status"), validator("command"), validator("reply")
    kinds = set()
    for m in rec.messages:
        rest = m.topic[len(BASE) + 1:]
        if rest.startswith("sim/"):
            continue
        if rest == "cmd":
            if m.payload.startswith(b"{"):
                command.validate(json.loads(m.payload))
            continue
        if not m.payload:  # an alert removed
            assert rest.startswith("alert/")
            continue
        doc = json.loads(m.payload)
        if rest == "status":
            status.validate(doc)
        elif rest == "cmd/reply":
            reply.validate(doc)
        else:
            ENVELOPE.validate(doc)
            kinds.add(doc["type"])
    assert kinds >= {"reading", "state", "alert", "check", "command", "agent"}
    replies = {x["id"]: x for x in rec.payloads("/cmd/reply")}
    assert replies["c1"]["result"]["result"] == "fail" and replies["c3"]["error"]["code"] == "refused"
    assert replies[None]["error"]["code"] == "malformed"
