"""Devices end to end in simulation: inputs, the printer and equipment on state/{id}."""

import json

from mqtt_helpers import AgentProcess, Recorder, publish, write_config

BASE = "halls/zigong/ziliujing/zg-001"
HALL = """
[[inputs]]
id = "door.side"
kind = "door"
pin = 17
contact = "nc"
bounce_ms = 20
[[inputs]]
id = "panic.1"
kind = "panic"
pin = 22
contact = "nc"
[[inputs]]
id = "key"
kind = "reset"
pin = 24
resets = ["panic.1"]
[[printers]]
id = "printer.queue"
port = "/dev/ttyUSB1"
poll_s = 0.3
timeout_s = 0.3
[[equipment]]
id = "kiosk.1"
probe = "http://192.168.10.21/health"
relay_pin = 5
probe_interval_s = 1
"""


def states(rec, source):
    return [p["data"] for p in rec.payloads(f"/state/{source}")]


def reply(rec, cid):
    return next((r for r in rec.payloads("/cmd/reply") if r["id"] == cid), None)


def test_inputs_printer_equipment_and_refused_commands(broker, tmp_path):
    cfg = write_config(tmp_path / "c.toml", broker.port, tmp_path / "state", HALL)
    rec = Recorder(broker.port, [f"{BASE}/#"])
    agent = AgentProcess(cfg, "--simulate").start()
    sim = lambda kind, pid, payload: publish(broker.port, f"{BASE}/sim/{kind}/{pid}", payload)
    cmd = lambda doc: publish(broker.port, f"{BASE}/cmd", json.dumps(doc))
    try:
        # every input's state as found at start, retained
        for source, state in (("door.side", "closed"), ("panic.1", "normal"), ("key", "released")):
            assert rec.wait_for(lambda r: states(r, source), 15), agent.output()
            assert states(rec, source)[0] == {"state": state, "at_boot": True}
        sim("input", "door.side", "open")
        assert rec.wait_for(lambda r: states(r, "door.side")[-1] == {"state": "open"})

        sim("input", "panic.1", "pressed")
        assert rec.wait_for(lambda r: states(r, "panic.1")[-1] == {"state": "alarm"})
        alarm = rec.payloads("/state/panic.1")[-1]
        assert alarm["severity"] == "critical" and alarm["moment"] == {"category": "emergency", "priority": 1}
        sim("input", "panic.1", "released")
        cmd({"id": "r1", "command": "reset", "args": {"source": "panic.1"}})
        assert rec.wait_for(lambda r: reply(r, "r1"))
        assert reply(rec, "r1")["error"]["code"] == "refused"  # allow_reset is false by default
        assert states(rec, "panic.1")[-1] == {"state": "alarm"}  # still latched
        sim("input", "key", "pressed")  # the manager's key resets it
        assert rec.wait_for(lambda r: states(r, "panic.1")[-1] == {"state": "normal"})

        cmd({"id": "p1", "command": "power", "args": {"equipment": "kiosk.1", "on": False}})
        assert rec.wait_for(lambda r: reply(r, "p1"))
        assert reply(rec, "p1")["error"]["code"] == "refused"

        assert rec.wait_for(lambda r: any(s["reachable"] for s in states(r, "kiosk.1")), 10)
        sim("equipment", "kiosk.1", '{"reachable": false}')
        assert rec.wait_for(lambda r: states(r, "kiosk.1")[-1]["reachable"] is False, 10)
        assert states(rec, "kiosk.1")[-1]["power"] == "on"

        assert rec.wait_for(lambda r: states(r, "printer.queue"), 10)
        assert states(rec, "printer.queue")[0] == {"online": True, "paper": "ok", "cover_open": False, "error": None}
        sim("printer", "printer.queue", '{"paper": "near_end"}')
        assert rec.wait_for(lambda r: states(r, "printer.queue")[-1]["paper"] == "near_end", 10)
        sim("printer", "printer.queue", '{"responding": false}')
        assert rec.wait_for(lambda r: states(r, "printer.queue")[-1]["online"] is False, 10)
        assert "not answering" in states(rec, "printer.queue")[-1]["error"]

        cmd({"id": "s", "command": "status"})
        assert rec.wait_for(lambda r: reply(r, "s"))
        status = reply(rec, "s")["result"]
        assert status["inputs"] == {"door.side": "open", "panic.1": "normal", "key": "pressed"}
        assert agent.terminate() == 0
        from test_schema import ENVELOPE
        for p in rec.payloads("/event") + [p for m in rec.messages if "/state/" in m.topic
                                           for p in [json.loads(m.payload)]]:
            ENVELOPE.validate(p)
    finally:
        agent.kill()
        rec.close()


def test_reset_and_power_when_allowed(broker, tmp_path):
    cfg = write_config(tmp_path / "c.toml", broker.port, tmp_path / "state",
                       "[commands]\nallow_reset = true\nallow_power = true\n" + HALL)
    rec = Recorder(broker.port, [f"{BASE}/#"])
    agent = AgentProcess(cfg, "--simulate").start()
    try:
        assert rec.wait_for(lambda r: states(r, "panic.1"), 15)
        publish(broker.port, f"{BASE}/sim/input/panic.1", "pressed")
        assert rec.wait_for(lambda r: states(r, "panic.1")[-1]["state"] == "alarm")
        publish(broker.port, f"{BASE}/cmd", json.dumps({"id": "r0", "command": "reset", "args": {"source": "panic.1"}}))
        assert rec.wait_for(lambda r: reply(r, "r0"))
        assert reply(rec, "r0")["error"] == {"code": "failed", "message":
                                             "panic.1: the panic button is still pressed (or its loop is open)"}
        publish(broker.port, f"{BASE}/sim/input/panic.1", "released")
        # the release and the command come over two connections: retry until the release has landed
        for attempt in range(20):
            cid = f"r1-{attempt}"
            publish(broker.port, f"{BASE}/cmd", json.dumps({"id": cid, "command": "reset",
                                                            "args": {"source": "panic.1"}}))
            assert rec.wait_for(lambda r: reply(r, cid))
            if reply(rec, cid)["ok"]:
                break
        assert reply(rec, cid) == {"id": cid, "ok": True, "result": {"source": "panic.1", "state": "normal"}}
        publish(broker.port, f"{BASE}/cmd", json.dumps({"id": "p1", "command": "power",
                                                        "args": {"equipment": "kiosk.1", "on": False}}))
        assert rec.wait_for(lambda r: reply(r, "p1"))
        assert reply(rec, "p1")["result"] == {"equipment": "kiosk.1", "power": "off"}
        assert rec.wait_for(lambda r: states(r, "kiosk.1")[-1]["power"] == "off")
        assert rec.wait_for(lambda r: states(r, "kiosk.1")[-1]["reachable"] is False, 10)  # powered off: no answer
    finally:
        agent.kill()
        rec.close()


def test_no_gpio_disables_the_part_not_the_agent(broker, tmp_path):
    """Without --simulate on a machine with no GPIO chip, the agent still runs and says
    loudly which inputs are not watched."""
    cfg = write_config(tmp_path / "c.toml", broker.port, tmp_path / "state",
                       "[[inputs]]\nid = 'panic.1'\nkind = 'panic'\npin = 22\n")
    rec = Recorder(broker.port, [f"{BASE}/#"])
    agent = AgentProcess(cfg, env={"GPIOZERO_PIN_FACTORY": "nonexistent"}).start()
    try:
        event = lambda r: [e for e in r.payloads("/event") if e["data"].get("event") == "gpio-unavailable"]
        assert rec.wait_for(event, 15), agent.output()
        e = event(rec)[0]
        assert e["severity"] == "critical" and e["data"]["part"] == "panic.1"
        publish(broker.port, f"{BASE}/cmd", '{"id":"s","command":"status"}')
        assert rec.wait_for(lambda r: reply(r, "s"), 10)
        assert reply(rec, "s")["result"]["inputs"] == {"panic.1": "unavailable"}
    finally:
        agent.kill()
        rec.close()
