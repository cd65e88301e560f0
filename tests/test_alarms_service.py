"""The alarm book bound to Alerts and the outbox (hall_agent/alarms/service.py): what could not
be emitted is taken back by the book and the engine alike; a flapping alert held across a restart
clears once; the outbox's alert state keeps what the engine can restore."""

from __future__ import annotations

import json
import threading
from datetime import datetime
from zoneinfo import ZoneInfo

from hall_agent.alarms.service import AlarmService
from hall_agent.alerts import Alerts
from hall_agent.clock import FakeClock
from hall_agent.config import validate
from hall_agent.envelope import Events
from hall_agent.outbox import Outbox, OutboxClosed, Raw
from hall_agent.rules import RulesEngine
from hall_agent.rules.profile import RuleSet

TZ = ZoneInfo("Asia/Shanghai")
SETTINGS = validate({"hall": {"id": "zg-001", "city": "zigong", "branch": "ziliujing"},
                     "alerts": {"flap_count": 2, "flap_window_s": 60},
                     "inputs": [{"id": "door.back", "kind": "door", "pin": 17},
                                {"id": "panic.1", "kind": "panic", "pin": 22, "contact": "nc"}]})


class Hall:
    def __init__(self, tmp_path, clock: FakeClock, box: Outbox):
        self.clock = clock
        self.box = box
        self.events = Events("zg-001", "Asia/Shanghai", "halls/zigong/ziliujing/zg-001", clock=clock)
        self.engine = RulesEngine(RuleSet(), lambda now: False, "Asia/Shanghai", clock=clock)
        self.failing = threading.Event()
        self.sent: list = []
        self.alerts = Alerts(self.engine, self.events, self.emit, box, tmp_path / "alerts.json",
                             lambda: clock.now(TZ))
        self.alarms = AlarmService(SETTINGS, self.alerts, self.events, self.emit, tmp_path / "alarms.json", clock)

    def emit(self, env, state=None):
        if self.failing.is_set():
            raise OutboxClosed("the outbox cannot take it")
        self.box.enqueue(env, state=state) if state is not None else self.box.enqueue(env)
        if not isinstance(env, Raw):
            self.sent.append(env)

    def start(self) -> None:
        self.alarms.load()
        self.alerts.load()
        self.alarms.reconcile(self.engine.active, {"door.back", "panic.1"})

    def door(self, state: str) -> None:
        self.alerts.feed(lambda now: self.engine.input("door", "door.back", state, now, 120))

    def alert_envelopes(self) -> list[dict]:
        return [e.data for e in self.sent if e.type == "alert"]


def test_what_could_not_be_emitted_is_taken_back_by_the_book_and_the_engine(tmp_path):
    box = Outbox(tmp_path / "o.db")
    try:
        hall = Hall(tmp_path, FakeClock(datetime(2026, 11, 25, 23, 0, tzinfo=TZ)), box)
        hall.start()
        hall.failing.set()
        hall.door("open")
        assert hall.engine.active == {} and hall.alarms.active() == []
        hall.failing.clear()
        hall.door("open")  # raised again: the condition still holds
        assert [a["rule"] for a in hall.alarms.active()] == ["door-after-hours"]
        stored = json.loads(box.state_items("alert/")["alert/door-after-hours/door.back"])
        assert "handling" not in stored and stored["rule"] == "door-after-hours"  # what the engine restores
        assert hall.alert_envelopes()[-1]["escalation"] == "hall"  # published with its handling
        hall.failing.set()
        hall.door("closed")
        assert list(hall.engine.active) == [("door-after-hours", "door.back")]
        assert [a["rule"] for a in hall.alarms.active()] == ["door-after-hours"]  # the clear did not go out
        hall.failing.clear()
        hall.door("closed")
        assert hall.engine.active == {} and hall.alarms.active() == []
        assert [d["state"] for d in hall.alert_envelopes()] == ["active", "cleared"]
    finally:
        box.close()


def test_a_flapping_alert_held_across_a_restart_clears_once(tmp_path):
    clock = FakeClock(datetime(2026, 11, 25, 23, 0, tzinfo=TZ))
    box = Outbox(tmp_path / "o.db")
    hall = Hall(tmp_path, clock, box)
    hall.start()
    for state in ("open", "closed", "open", "closed"):  # the second clear within 60 s is held
        hall.door(state)
        clock.advance(5)
    assert [(d["state"], d["flapping"]) for d in hall.alert_envelopes()] == \
        [("active", False), ("cleared", False), ("active", False), ("active", True)]
    hall.alarms.tick()
    hall.alarms.save()
    box.close()

    clock.advance(20)  # down 20 s
    box = Outbox(tmp_path / "o.db")
    try:
        again = Hall(tmp_path, clock, box)
        again.start()
        assert again.engine.active == {}  # held by the book, not by a condition
        again.door("closed")  # the boot state of the door
        assert [a["flapping"] for a in again.alarms.active()] == [True]
        clock.advance(30)
        again.alarms.tick()
        assert again.alarms.active() != []  # 55 s quiet of 60
        clock.advance(6)
        again.alarms.tick()
        assert again.alarms.active() == []
        assert [(d["state"], d["flapping"]) for d in again.alert_envelopes()] == [("cleared", True)]
        assert box.state_items("alert/") == {}
    finally:
        box.close()


def test_a_held_alert_whose_condition_is_back_at_boot_stays_until_it_has_been_quiet(tmp_path):
    clock = FakeClock(datetime(2026, 11, 25, 23, 0, tzinfo=TZ))
    box = Outbox(tmp_path / "o.db")
    hall = Hall(tmp_path, clock, box)
    hall.start()
    for state in ("open", "closed", "open", "closed"):
        hall.door(state)
        clock.advance(5)
    hall.alarms.save()
    box.close()
    clock.advance(20)
    box = Outbox(tmp_path / "o.db")
    try:
        again = Hall(tmp_path, clock, box)
        again.start()
        again.door("open")  # open at boot: the condition is back, swallowed by the held alert
        clock.advance(120)
        again.alarms.tick()
        assert [a["flapping"] for a in again.alarms.active()] == [True]  # not quiet: the door is open
        again.door("closed")
        clock.advance(61)
        again.alarms.tick()
        assert again.alarms.active() == [] and again.engine.active == {}
        # meanwhile it escalated (120 s unacknowledged), then cleared once
        assert [(d["state"], d["flapping"], d["escalation"]) for d in again.alert_envelopes()] == \
            [("active", True, "branch"), ("cleared", True, "branch")]
    finally:
        box.close()


def test_a_damaged_alarms_file_is_set_aside_and_reported(tmp_path):
    (tmp_path / "alarms.json").write_text('{"entries": [')
    box = Outbox(tmp_path / "o.db")
    try:
        clock = FakeClock(datetime(2026, 11, 25, 23, 0, tzinfo=TZ))
        hall = Hall(tmp_path, clock, box)
        hall.start()
        aside = list(tmp_path.glob("alarms.json.damaged-*"))
        assert len(aside) == 1 and aside[0].read_text() == '{"entries": ['
        (problem,) = hall.alerts.problems
        assert "alarms.json damaged" in problem and "moved to" in problem
        hall.door("open")  # and it runs on: the new state is written afresh
        hall.alarms.save()
        assert json.loads((tmp_path / "alarms.json").read_text())["entries"][0]["alert"]["rule"] == "door-after-hours"
    finally:
        box.close()


def test_a_flapping_alert_is_held_by_the_agent_when_the_broker_is_reconciled(tmp_path):
    """The link clears alerts the broker shows and the agent does not hold: one that flapping
    holds active (the rules have cleared it) is held, not a ghost."""
    from hall_agent.agent import Agent
    agent = Agent(validate({"hall": {"id": "zg-001", "city": "zigong", "branch": "ziliujing"},
                            "storage": {"dir": str(tmp_path / "s")}, "alerts": {"flap_count": 2},
                            "inputs": [{"id": "door.back", "kind": "door", "pin": 17}]}), simulate=True)
    try:
        night = datetime(2026, 7, 1, 22, 0, tzinfo=TZ)
        for state in ("open", "closed", "open", "closed"):
            agent.alerts.feed(lambda now, s=state: agent.engine.input("door", "door.back", s, night, 120))
        assert agent.engine.active == {} and [a["flapping"] for a in agent.alarms.active()] == [True]
        topic = f"{agent.settings.base_topic}/alert/door-after-hours/door.back"
        shown = next(r.payload for r in reversed(agent.outbox.take(100)) if r.topic == topic and r.payload)
        agent._reconcile_alerts({topic: shown})
        rows = [r for r in agent.outbox.take(200) if b"not held after restart" in r.payload]
        assert rows == []
        assert agent._keep_retained(topic)  # its stored payload may be republished too
    finally:
        agent.outbox.close()
        agent.hardware.close()
