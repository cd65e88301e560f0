"""Issue 13 item 8: an input or relay that cannot be claimed at start (a busy pin, no
GPIO chip yet) is tried again every few seconds; the critical gpio-unavailable alert
is held until it works, then cleared, and the part's state is published as found."""

import json

from gpiozero import Button
from gpiozero.pins.mock import MockFactory

from hall_agent.config import validate
from hall_agent.devices.hall import HallDevices
from hall_agent.envelope import Events
from mqtt_helpers import AgentProcess, Recorder, publish, write_config

BASE = "halls/zigong/ziliujing/zg-001"
EVENTS = Events("zg-001", "Asia/Shanghai", BASE)


def test_a_busy_pin_is_claimed_once_it_is_free():
    settings = validate({"hall": {"id": "zg-001", "city": "zigong", "branch": "ziliujing"},
                         "inputs": [{"id": "panic.1", "kind": "panic", "pin": 22, "contact": "nc"},
                                    {"id": "door.side", "kind": "door", "pin": 17}]})
    factory = MockFactory()
    blocker = Button(22, pin_factory=factory)  # another program holds the pin
    emitted, heard = [], []
    devices = HallDevices(settings, EVENTS, emitted.append, pin_factory=factory)
    devices.listeners.append(lambda kind, source, data: heard.append((kind, source, data)))
    try:
        assert list(devices.unavailable) == ["panic.1"] and "door.side" in devices.inputs
        devices.start()
        assert ("gpio", "panic.1", {"reason": devices.unavailable["panic.1"]}) in heard
        assert devices.retry_unavailable() == []  # still busy: still unavailable
        assert devices.input_states()["panic.1"] == "unavailable"
        blocker.close()
        heard.clear()
        assert devices.retry_unavailable() == ["panic.1"]
        assert devices.unavailable == {}
        assert heard[0] == ("gpio", "panic.1", {"reason": None})
        assert [(k, s) for k, s, _ in heard[1:]] == [("panic", "panic.1")]  # its state as found
        assert any(e.data.get("event") == "gpio-available" for e in emitted)
        assert devices.input_states()["panic.1"] in ("normal", "alarm")
    finally:
        devices.stop()


def test_the_gpio_unavailable_alert_is_raised_and_held(broker, tmp_path):
    cfg = write_config(tmp_path / "c.toml", broker.port, tmp_path / "state",
                       "[[inputs]]\nid = 'panic.1'\nkind = 'panic'\npin = 22\n")
    rec = Recorder(broker.port, [f"{BASE}/alert/#"])
    agent = AgentProcess(cfg, env={"GPIOZERO_PIN_FACTORY": "nonexistent"}).start()
    try:
        topic = f"{BASE}/alert/gpio-unavailable/panic.1"
        assert rec.wait_for(lambda r: [m for m in r.messages if m.topic == topic], 15), agent.output()
        doc = json.loads([m for m in rec.messages if m.topic == topic][0].payload)
        assert doc["severity"] == "critical" and doc["moment"] == {"category": "system", "priority": 1}
        assert not rec.wait_for(lambda r: len([m for m in r.messages if m.topic == topic]) > 1, 7)  # held
    finally:
        agent.kill()
        rec.close()


def test_a_panic_held_from_before_stays_latched_when_its_pin_is_claimed_late(tmp_path, monkeypatch):
    from hall_agent.agent import Agent
    from hall_agent.simulation import Simulation
    from mqtt_helpers import free_port
    settings = validate({"hall": {"id": "zg-001", "city": "zigong", "branch": "ziliujing"},
                         "mqtt": {"host": "127.0.0.1", "port": free_port()}, "storage": {"dir": str(tmp_path / "s")},
                         "inputs": [{"id": "panic.1", "kind": "panic", "pin": 22, "contact": "nc"}]})
    first = Agent(settings, simulate=True)
    first.alerts.feed(lambda now: first.engine.input("panic", "panic.1", "alarm", now))
    first.outbox.close()
    first.hardware.close()

    made = Simulation.pin_factory
    blockers = []

    def busy_22(self):
        factory = made(self)
        if not blockers:
            blockers.append(Button(22, pin_factory=factory))  # another program holds the pin
        return factory

    monkeypatch.setattr(Simulation, "pin_factory", busy_22)
    agent = Agent(settings, simulate=True)
    try:
        agent._restore_alerts()
        agent.devices.start()
        assert "panic.1" in agent.devices.unavailable
        assert {("panic", "panic.1"), ("gpio-unavailable", "panic.1")} <= set(agent.engine.active)
        blockers[0].close()
        assert agent.devices.retry_unavailable() == ["panic.1"]
        assert agent.devices.input_states()["panic.1"] == "alarm"  # still latched: not lost, not raised again
        assert ("gpio-unavailable", "panic.1") not in agent.engine.active
        assert ("panic", "panic.1") in agent.engine.active
    finally:
        agent.devices.stop()
        agent.outbox.close()
        agent.hardware.close()
