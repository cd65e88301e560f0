"""Alarm handling through MQTT against the suite's mosquitto (SPEC section 4):
acknowledge, maintenance windows (by command and scheduled), flapping,
escalation on an injected clock, drills; each across an agent restart."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from mqtt_helpers import CLOSED_HOURS, AgentProcess, Recorder, publish, wait_until, write_config

BASE = "halls/zigong/ziliujing/zg-001"
TZ = ZoneInfo("Asia/Shanghai")
HALL = CLOSED_HOURS + """holidays = ""
[commands]
allow_reset = true
[alerts]
flap_count = 3
flap_window_s = 4

[[inputs]]
id = "door.back"
kind = "door"
pin = 17
contact = "nc"
bounce_ms = 10
[[inputs]]
id = "panic.1"
kind = "panic"
pin = 22
contact = "nc"
[[inputs]]
id = "panic.2"
kind = "panic"
pin = 23
contact = "nc"
[[inputs]]
id = "panic.3"
kind = "panic"
pin = 24
contact = "nc"
"""


class Hall:
    def __init__(self, broker, rec: Recorder):
        self.port = broker.port
        self.rec = rec
        self.n = 0

    def sim(self, part: str, word: str) -> None:
        publish(self.port, f"{BASE}/sim/input/{part}", word)

    def press_and_release(self, part: str) -> None:
        self.sim(part, "pressed")
        time.sleep(0.3)  # a real press, longer than the panic's min_pulse_ms glitch filter
        self.sim(part, "released")

    def cmd(self, command: str, **args) -> dict:
        self.n += 1
        cid = f"c{self.n}-{command}"
        publish(self.port, f"{BASE}/cmd", json.dumps({"id": cid, "command": command, "args": args}))
        assert self.rec.wait_for(lambda r: self.reply(cid), 15), f"no reply to {command}"
        return self.reply(cid)

    def reply(self, cid: str) -> dict | None:
        return next((r for r in self.rec.payloads("/cmd/reply") if r["id"] == cid), None)

    def alert(self, rule: str, source: str) -> list[dict]:
        """Every alert envelope on the retained topic, in order (None for the empty message)."""
        return [json.loads(m.payload) if m.payload else None for m in self.rec.messages
                if m.topic == f"{BASE}/alert/{rule}/{source}"]

    def last(self, rule: str, source: str) -> dict | None:
        a = self.alert(rule, source)
        return a[-1] if a else None

    def wait_last(self, rule: str, source: str, pred, timeout: float = 15) -> dict:
        ok = self.rec.wait_for(lambda r: (x := self.last(rule, source)) is not None and pred(x["data"]), timeout)
        assert ok, (rule, source, self.alert(rule, source))
        return self.last(rule, source)["data"]


def retained(port: int, topics: list[str], count: int) -> dict[str, dict]:
    """What a console connecting now is given."""
    r = Recorder(port, topics)
    try:
        r.wait_for(lambda x: len(x.messages) >= count, 5)
        time.sleep(0.3)
        return {m.topic: json.loads(m.payload) for m in r.messages if m.retain and m.payload}
    finally:
        r.close()


def online(rec: Recorder, n: int) -> bool:
    return rec.wait_for(lambda r: sum(1 for p in r.payloads("/status") if p["state"] == "online") >= n, 20)


def test_ack_window_flapping_and_drill_across_a_restart(broker, tmp_path):
    cfg = write_config(tmp_path / "c.toml", broker.port, tmp_path / "state", HALL)
    rec = Recorder(broker.port, [f"{BASE}/alert/#", f"{BASE}/cmd/reply", f"{BASE}/status", f"{BASE}/maintenance",
                                 f"{BASE}/check/drill", f"{BASE}/event"])
    hall = Hall(broker, rec)
    agent = AgentProcess(cfg, "--simulate").start()
    try:
        assert online(rec, 1), agent.output()
        # -- acknowledge: republished retained, stamped; a cleared alert cannot be acknowledged
        hall.press_and_release("panic.1")
        d = hall.wait_last("panic", "panic.1", lambda d: d["state"] == "active")
        assert (d["acknowledged_by"], d["suppressed"], d["flapping"], d["escalation"], d["drill"]) == \
            (None, None, False, "hall", False)
        r = hall.cmd("ack", alert="panic/panic.1", by="op7", note="robbery drill? no: checked, false press")
        assert r["ok"] and r["result"]["acknowledged_by"] == "op7", r
        d = hall.wait_last("panic", "panic.1", lambda d: d["acknowledged_by"] == "op7")
        assert d["state"] == "active" and d["note"].startswith("robbery") and d["acknowledged_at"]
        assert hall.last("panic", "panic.1")["type"] == "alert" and d["raised_at"] == hall.alert("panic", "panic.1")[0]["data"]["raised_at"]
        hall.sim("door.back", "open")
        hall.wait_last("door-after-hours", "door.back", lambda d: d["state"] == "active")
        hall.sim("door.back", "closed")
        assert rec.wait_for(lambda r: hall.last("door-after-hours", "door.back") is None, 10)
        first_life = time.monotonic()
        r = hall.cmd("ack", alert="door-after-hours/door.back", by="op7")
        assert not r["ok"] and r["error"]["code"] == "not-found", r
        r = hall.cmd("ack", alert="door-after-hours", by="op7")
        assert not r["ok"] and r["error"]["code"] == "bad-args"

        # -- maintenance: a panic cannot be suppressed; a window for everything else
        until = (datetime.now(TZ) + timedelta(hours=1)).replace(microsecond=0)
        r = hall.cmd("maintenance", rule="panic", source="*", until=until.isoformat(), reason="x", by="op7")
        assert not r["ok"] and r["error"]["code"] == "refused" and "never" in r["error"]["message"]
        r = hall.cmd("maintenance", rule="*", source="*", until=until.isoformat(), reason="fire-system test",
                     by="op7")
        assert r["ok"] and r["result"]["note"] == "panic alarms are never suppressed", r
        assert rec.wait_for(lambda r: any(p["data"]["windows"] for p in r.payloads("/maintenance")), 10)
        starts = [p["data"] for p in rec.payloads("/event") if p["type"] == "agent"
                  and p["data"]["event"] == "maintenance-started"]
        assert starts and starts[0]["reason"] == "fire-system test"

        # -- drill, with a restart in the middle
        assert hall.cmd("reset", source="panic.1")["ok"]
        r = hall.cmd("drill", inputs="*", minutes=10, by="op7")
        assert r["ok"] and r["result"]["inputs"] == ["panic.1", "panic.2", "panic.3"], r
        hall.press_and_release("panic.1")
        d = hall.wait_last("panic", "panic.1", lambda d: d["state"] == "active")
        assert d["drill"] is True and d["escalation"] == "hall" and d["acknowledged_by"] is None
    finally:
        assert agent.terminate() == 0, agent.output()

    agent = AgentProcess(cfg, "--simulate").start()
    try:
        assert online(rec, 2), agent.output()
        # what a console connecting now is told: the window, the drill's panic; state from before the stop
        given = retained(broker.port, [f"{BASE}/alert/#", f"{BASE}/maintenance"], 2)
        (window,) = given[f"{BASE}/maintenance"]["data"]["windows"]
        assert (window["rule"], window["source"], window["by"], window["scheduled"]) == ("*", "*", "op7", False)
        assert given[f"{BASE}/alert/panic/panic.1"]["data"]["drill"] is True
        st = hall.cmd("status")["result"]
        assert st["alarms"]["drill"]["pressed"] == ["panic.1"]

        # -- a window suppresses the door, never a panic
        time.sleep(max(0.0, first_life + 4.5 - time.monotonic()))  # its first life out of the flapping window
        hall.sim("door.back", "open")
        d = hall.wait_last("door-after-hours", "door.back", lambda d: d["state"] == "active")
        assert d["suppressed"] == {"reason": "fire-system test", "by": "op7",
                                   "until": until.isoformat(timespec="milliseconds")}
        assert d["escalation"] == "hall"
        hall.sim("panic.2", "pressed")  # and held: a drill press that never comes back
        d = hall.wait_last("panic", "panic.2", lambda d: d["state"] == "active")
        assert d["suppressed"] is None and d["drill"] is True

        # -- flapping: the third clear within flap_window_s is held, then one clear after 4 s of quiet
        for word in ("closed", "open", "closed", "open", "closed"):
            hall.sim("door.back", word)
            time.sleep(0.1)
        d = hall.wait_last("door-after-hours", "door.back", lambda d: d["flapping"] is True)
        assert d["state"] == "active"
        assert rec.wait_for(lambda r: hall.last("door-after-hours", "door.back") is None, 15)
        story = [(x["data"]["state"], x["data"]["flapping"]) if x else None
                 for x in hall.alert("door-after-hours", "door.back")[3:]]  # after the first life
        assert story == [("active", False), ("cleared", False), None, ("active", False), ("cleared", False), None,
                         ("active", False), ("active", True), ("cleared", True), None], story

        # -- the drill ends: panic.1 pressed and released, panic.2 held, panic.3 never pressed
        r = hall.cmd("drill-end", by="op7")
        assert r["ok"], r
        assert rec.wait_for(lambda r: r.payloads("/check/drill"), 10)
        report = rec.payloads("/check/drill")[-1]
        assert report["type"] == "check" and report["data"]["check"] == "drill" and report["data"]["result"] == "fail"
        assert [(i["id"], i["result"]) for i in report["data"]["items"]] == \
            [("panic.1", "pass"), ("panic.2", "warn"), ("panic.3", "fail")]
        assert rec.payloads("/check/drill")[-1]["data"] == r["result"]
        # after the drill a press is real again
        hall.sim("panic.2", "released")
        assert hall.cmd("reset", source="panic.2")["ok"]
        assert rec.wait_for(lambda r: hall.last("panic", "panic.2") is None, 10)
        hall.sim("panic.2", "pressed")
        assert rec.wait_for(lambda r: (x := hall.last("panic", "panic.2")) is not None and not x["data"]["drill"], 10)
        r = hall.cmd("maintenance-end", rule="*", source="*", by="op7")
        assert r["ok"] and r["result"]["windows"] == []
        assert rec.wait_for(lambda r: r.payloads("/maintenance")[-1]["data"]["windows"] == [], 10)
        ends = [p["data"] for p in rec.payloads("/event") if p["type"] == "agent"
                and p["data"]["event"] == "maintenance-ended"]
        assert ends and ends[-1]["ended"] == "command"
        from test_schema import ENVELOPE
        for m in rec.messages:  # every envelope of this story is what docs/envelope.schema.json says
            if m.payload and not m.topic.endswith(("/status", "/cmd/reply")):
                ENVELOPE.validate(json.loads(m.payload))
    finally:
        agent.kill()
        rec.close()


def test_ack_can_be_disabled(broker, tmp_path):
    cfg = write_config(tmp_path / "c.toml", broker.port, tmp_path / "state",
                       HALL.replace("allow_reset = true", "allow_reset = true\nallow_ack = false"))
    rec = Recorder(broker.port, [f"{BASE}/alert/#", f"{BASE}/cmd/reply", f"{BASE}/status"])
    hall = Hall(broker, rec)
    agent = AgentProcess(cfg, "--simulate").start()
    try:
        assert online(rec, 1), agent.output()
        hall.sim("panic.1", "pressed")
        hall.wait_last("panic", "panic.1", lambda d: d["state"] == "active")
        r = hall.cmd("ack", alert="panic/panic.1", by="op7")
        assert not r["ok"] and r["error"]["code"] == "refused" and "allow_ack" in r["error"]["message"]
    finally:
        agent.kill()
        rec.close()


def test_escalation_and_a_scheduled_window_on_an_injected_clock_across_a_restart(broker, tmp_path):
    from hall_agent.agent import Agent
    from hall_agent.clock import FakeClock
    from hall_agent.config import validate
    clock = FakeClock(datetime(2026, 11, 25, 21, 59, 0, tzinfo=TZ))  # a Wednesday, a minute before the cleaners
    data = {"hall": {"id": "zg-001", "city": "zigong", "branch": "ziliujing"},
            "mqtt": {"host": "127.0.0.1", "port": broker.port, "drain_s": 2},
            "storage": {"dir": str(tmp_path / "state")},
            "hours": {d: "closed" for d in ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday",
                                            "sunday")} | {"holidays": ""},
            "inputs": [{"id": "door.back", "kind": "door", "pin": 17, "contact": "nc", "bounce_ms": 10},
                       {"id": "panic.1", "kind": "panic", "pin": 22, "contact": "nc"}],
            "maintenance": [{"rule": "door-after-hours", "source": "*", "from": "22:00", "to": "02:00",
                             "reason": "cleaners"}]}
    settings = validate(data)
    rec = Recorder(broker.port, [f"{BASE}/alert/#", f"{BASE}/maintenance", f"{BASE}/event"])
    hall = Hall(broker, rec)

    def start():
        agent = Agent(settings, simulate=True, clock=clock)  # every timer of the agent on the test's clock
        agent.start()
        assert wait_until(lambda: agent.link.connected, 10)
        return agent

    agent = start()
    try:
        hall.sim("panic.1", "pressed")
        hall.sim("door.back", "open")
        assert hall.wait_last("panic", "panic.1", lambda d: d["escalation"] == "hall")
        d = hall.wait_last("door-after-hours", "door.back", lambda d: d["state"] == "active")
        assert d["suppressed"] is None and d["escalation"] == "hall"
        clock.advance(60)  # 22:00: the cleaners' window starts; the door alert is re-marked
        d = hall.wait_last("door-after-hours", "door.back", lambda d: d["suppressed"] is not None)
        assert d["suppressed"] == {"reason": "cleaners", "by": "config", "until": "2026-11-26T02:00:00.000+08:00"}
        assert rec.wait_for(lambda r: any(p["data"]["windows"] for p in r.payloads("/maintenance")), 10)
        assert hall.last("panic", "panic.1")["data"]["escalation"] == "hall"  # 60 s: not yet
        clock.advance(60)  # 120 s unacknowledged: the branch sees it
        hall.wait_last("panic", "panic.1", lambda d: d["escalation"] == "branch")
        assert hall.last("door-after-hours", "door.back")["data"]["escalation"] == "hall"  # suppressed: stays
    finally:
        agent.stop()
    clock.advance(600)  # down 10 minutes (by the wall clock): 720 s unacknowledged
    agent = start()
    try:
        time.sleep(2.5)
        assert hall.last("panic", "panic.1")["data"]["escalation"] == "branch"
        clock.advance(179)
        time.sleep(2.5)
        assert hall.last("panic", "panic.1")["data"]["escalation"] == "branch"
        clock.advance(1)  # 900 s: the city
        hall.wait_last("panic", "panic.1", lambda d: d["escalation"] == "city")
        # each step once (the reconnect republishes the retained alert as it stood: the same
        # envelope, same id, which a consumer de-duplicates), on event too
        ids: set = set()
        steps = [x["data"]["escalation"] for x in hall.alert("panic", "panic.1")
                 if x["id"] not in ids and not ids.add(x["id"])]
        assert steps == ["hall", "branch", "city"], steps
        on_event = lambda: [p["data"]["escalation"] for p in rec.payloads("/event")
                            if p["type"] == "alert" and p["data"]["rule"] == "panic"]
        assert rec.wait_for(lambda r: on_event() == steps, 10), on_event()
        # the simulation restarts with the door at rest (closed): opened again, inside the window still
        assert rec.wait_for(lambda r: hall.last("door-after-hours", "door.back") is None, 10)
        hall.sim("door.back", "open")
        d = hall.wait_last("door-after-hours", "door.back", lambda d: d["state"] == "active")
        assert d["suppressed"]["reason"] == "cleaners"
        clock.advance(4 * 3600)
        hall.wait_last("door-after-hours", "door.back", lambda d: d["suppressed"] is None)
        ends = [p["data"] for p in rec.payloads("/event") if p["type"] == "agent"
                and p["data"]["event"] == "maintenance-ended"]
        assert ends and ends[-1]["ended"] == "expired" and ends[-1]["scheduled"] is True
    finally:
        agent.stop()
        rec.close()
