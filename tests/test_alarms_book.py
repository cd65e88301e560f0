"""The alarm book (hall_agent/alarms/book.py): unit cases and hypothesis
property tests over any sequence of raises, clears, acks, windows, drills,
time passing and restarts."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from hall_agent.alarms import AlarmBook, AlarmError, DrillReport, Event, Handled, MaintenanceList, Policy, Scheduled
from hall_agent.envelope import Events, Moment
from hall_agent.rules.engine import Alert, AlertChange

TZ = ZoneInfo("Asia/Shanghai")
CLASSES = {"panic": ("critical", "emergency", 1), "door-after-hours": ("critical", "emergency", 1),
           "printer-paper-low": ("warning", "business", 2), "sensor-fault": ("warning", "system", 2)}
KEYS = [("panic", "p1"), ("panic", "p2"), ("door-after-hours", "d1"), ("printer-paper-low", "pr1"),
        ("sensor-fault", "s1")]


def policy(**kw) -> Policy:
    base = dict(escalate_branch_s=120, escalate_city_s=900, flap_count=3, flap_window_s=600, drill_due_days=1,
                panic_inputs=("p1", "p2"),
                scheduled=(Scheduled("door-after-hours", "*", time(22, 0), time(2, 0), "cleaners"),))
    base.update(kw)
    return Policy(**base)


def alert(rule: str, source: str, wall: datetime) -> Alert:
    sev, cat, prio = CLASSES[rule]
    return Alert(rule, source, sev, cat, prio, f"{rule} on {source}", None, None,
                 raised_at=wall.isoformat(timespec="milliseconds"))


@dataclass
class Hall:
    """The book with a fake rules engine, a clock, and what a subscriber sees."""
    start: datetime
    book: AlarmBook = field(default_factory=lambda: AlarmBook(policy()))
    mono: float = 1000.0
    synced: bool = True
    held: set = field(default_factory=set)
    conditions: dict = field(default_factory=dict)     # key -> Alert (what the engine holds)
    retained: dict = field(default_factory=dict)       # topic -> envelope dict
    reader: dict = field(default_factory=dict)         # key -> data, from the event stream
    seen_raises: set = field(default_factory=set)      # (key, raised_at) ever raised
    acked_level: dict = field(default_factory=dict)    # (key, raised_at) -> escalation when acknowledged
    drill_inputs: tuple = ()
    events: list = field(default_factory=list)
    reports: list = field(default_factory=list)
    seq: int = 0
    raise_count: int = 0

    def __post_init__(self):
        self.wall = self.start
        self.ev = Events("zg-001", "Asia/Shanghai", "halls/zg/zlj/zg-001", clock=lambda: self.wall)
        self.book.tick(self.mono, self.wall, self.synced)

    # -- what the agent's publisher does with the outputs -------------------------------
    def deliver(self, topic: str, payload: dict | None, retain: bool) -> None:
        if retain:
            if payload is None:
                self.retained.pop(topic, None)
            else:
                self.retained[topic] = payload
        if topic.endswith("/event") and payload is not None:
            self.read_event(payload)

    def publish(self, outs) -> None:
        for o in outs:
            if isinstance(o, Handled):
                a = o.alert
                env = self.ev.alert(a.rule, a.source, a.data("active" if o.active else "cleared"),
                                    a.severity if o.active else "info", Moment(a.category, a.priority),
                                    retain=o.active)
                self._route(env)
                if not o.active:
                    self.deliver(self.ev.topic(f"alert/{a.rule}/{a.source}"), None, True)
            elif isinstance(o, Event):
                self._route(self.ev.agent(o.name, o.data, o.severity, Moment(o.category, o.priority), o.source))
            elif isinstance(o, MaintenanceList):
                self._route(self.ev.maintenance(o.windows))
            elif isinstance(o, DrillReport):
                self._route(self.ev.check("drill", o.data, "info", Moment("emergency", 2)))
        self.book.mark_published(outs)

    def _route(self, env) -> None:
        self.seq += 1
        doc = env.as_dict(self.seq)
        for r in env.routes:
            self.deliver(r.topic, doc, r.retain)

    def read_event(self, env: dict) -> None:
        """A central reader of ``event`` only, checking the alert life as it goes."""
        if env["type"] == "agent":
            self.events.append(env["data"])
            if env["data"]["event"] == "drill-started":
                self.drill_inputs = tuple(env["data"]["inputs"])
            return
        if env["type"] == "check" and env["data"]["check"] == "drill":
            self.reports.append(env["data"])
            self.drill_inputs = ()
            return
        if env["type"] != "alert":
            return
        d = env["data"]
        key = (d["rule"], env["source"])
        instance = (key, d["raised_at"])
        assert not (d["rule"] == "panic" and d["suppressed"]), "a panic was suppressed"
        if d["state"] == "active":
            if key not in self.reader:  # a raise (a new instance)
                self.seen_raises.add(instance)
                self.raise_count += 1
                if d["rule"] == "panic":
                    assert d["drill"] == (key[1] in self.drill_inputs)
            else:  # an update of the same alert, never a second raise
                old = self.reader[key]
                assert old["raised_at"] == d["raised_at"], f"{key} raised again while active"
                assert LEVELS.index(d["escalation"] or "hall") >= LEVELS.index(old["escalation"] or "hall")
                if old["acknowledged_by"] is not None:
                    assert d["acknowledged_by"] == old["acknowledged_by"]
                    assert d["escalation"] == old["escalation"], "escalated after its acknowledgement"
            self.reader[key] = d
        else:
            assert key in self.reader, f"{key} cleared but not active"
            assert self.reader[key]["raised_at"] == d["raised_at"]
            del self.reader[key]

    # -- operations ----------------------------------------------------------------------
    def tick(self) -> None:
        self.publish(self.book.tick(self.mono, self.wall, self.synced, self.held))

    def change(self, key, on: bool) -> None:
        if on and key not in self.conditions:
            a = alert(*key, self.wall)
            self.conditions[key] = a
            self.publish(self.book.on_changes([AlertChange(a, True)], self.mono, self.wall))
        elif not on and key in self.conditions:
            a = self.conditions.pop(key)
            a.cleared_at = self.wall.isoformat(timespec="milliseconds")
            self.publish(self.book.on_changes([AlertChange(a, False)], self.mono, self.wall))

    def call(self, method: str, *args, **kw):
        outs = getattr(self.book, method)(*args, self.mono, self.wall, **kw)
        self.publish(outs)
        return outs

    def crash_after(self, method: str, *args, **kw) -> None:
        """The agent saves the book, then publishes: a power cut between the two."""
        try:
            getattr(self.book, method)(*args, self.mono, self.wall, **kw)
        except AlarmError:
            return
        self.restart(30, doc=self.book.snapshot(self.mono, self.wall))

    def advance(self, seconds: float) -> None:
        step = min(seconds, 60.0)
        while seconds > 0:
            self.mono += min(step, seconds)
            self.wall += timedelta(seconds=min(step, seconds))
            seconds -= step
            self.tick()

    def restart(self, down_s: float, synced: bool = True, doc: dict | None = None) -> None:
        doc = json.loads(json.dumps(doc or self.book.snapshot(self.mono, self.wall)))
        self.book = AlarmBook(self.book.policy)
        self.mono = 7.0  # a new boot
        self.wall += timedelta(seconds=down_s)
        self.synced = synced
        self.book.restore(doc, self.mono, self.wall, synced)
        self.publish(self.book.reconcile(dict(self.conditions), None, self.mono, self.wall))
        self.tick()

    # -- the properties ------------------------------------------------------------------------
    def check(self) -> None:
        retained = {(d["data"]["rule"], d["source"]): d["data"] for t, d in self.retained.items() if "/alert/" in t}
        assert retained == self.reader, "retained alerts differ from the event stream's"
        truth = {(a["rule"], a["source"]): a for a in self.book.active()}
        assert set(truth) == set(self.reader)
        for key, a in truth.items():
            for f in ("acknowledged_by", "acknowledged_at", "note", "suppressed", "flapping", "escalation", "drill"):
                assert self.reader[key][f] == a[f], (key, f)
        for key in self.conditions:
            assert key in self.reader, f"{key} holds but is not active"
        windows = self.book.window_list()
        for key, d in self.reader.items():
            matched = [w for w in windows if key[0] != "panic" and w["rule"] in ("*", key[0])
                       and w["source"] in ("*", key[1])]
            assert bool(d["suppressed"]) == bool(matched), (key, d["suppressed"], windows)
            if d["suppressed"]:
                assert d["escalation"] in (None, "hall") or d["acknowledged_by"] or True
        retained_windows = self.retained.get(self.ev.topic("maintenance"))
        if retained_windows is not None:
            assert retained_windows["data"]["windows"] == windows


LEVELS = ("hall", "branch", "city")

ops = st.one_of(
    st.tuples(st.just("raise"), st.sampled_from(KEYS)),
    st.tuples(st.just("clear"), st.sampled_from(KEYS)),
    st.tuples(st.just("ack"), st.sampled_from(KEYS)),
    st.tuples(st.just("window"), st.sampled_from(["door-after-hours", "*", "panic", "printer-paper-low"]),
              st.sampled_from(["*", "d1", "pr1", "p1"]), st.integers(1, 1500)),
    st.tuples(st.just("wend"), st.sampled_from(["door-after-hours", "*", "printer-paper-low"]),
              st.sampled_from(["*", "d1", "pr1"])),
    st.tuples(st.just("drill"), st.sampled_from([["p1"], ["p2"], ["p1", "p2"], "*"]), st.integers(1, 60)),
    st.tuples(st.just("dend")),
    st.tuples(st.just("hold"), st.sampled_from(["p1", "p2"])),
    st.tuples(st.just("advance"), st.sampled_from([1, 30, 119, 121, 300, 601, 901, 3600, 20000])),
    st.tuples(st.just("crash-ack"), st.sampled_from(KEYS)),
    st.tuples(st.just("restart"), st.sampled_from([0, 5, 200, 1000, 90000]), st.booleans()),
)


def run(hall: Hall, steps) -> None:
    for op in steps:
        kind = op[0]
        if kind == "raise":
            hall.change(op[1], True)
        elif kind == "clear":
            if op[1][0] == "panic" and op[1][1] in hall.held:
                continue  # a held button cannot be reset
            hall.change(op[1], False)
        elif kind == "ack":
            key = op[1]
            try:
                hall.call("ack", {"alert": f"{key[0]}/{key[1]}", "by": "op7", "note": "seen"})
            except AlarmError as e:
                assert key not in hall.reader or hall.reader[key]["acknowledged_by"], e
                assert e.code in ("not-found", "conflict")
            else:
                assert key in hall.reader
        elif kind == "window":
            until = (hall.wall + timedelta(minutes=op[3])).isoformat()
            try:
                hall.call("start_window", {"rule": op[1], "source": op[2], "until": until, "reason": "test",
                                           "by": "op7"})
            except AlarmError as e:
                assert op[1] == "panic" or op[3] > 24 * 60 or not hall.synced, e
            else:
                assert op[1] != "panic"
        elif kind == "wend":
            try:
                hall.call("end_window", {"rule": op[1], "source": op[2], "by": "op7"})
            except AlarmError as e:
                assert e.code == "not-found"
        elif kind == "drill":
            try:
                hall.call("start_drill", {"inputs": op[1], "minutes": op[2], "by": "op7"})
            except AlarmError as e:
                assert e.code in ("busy", "refused")
        elif kind == "dend":
            try:
                hall.call("end_drill", held=hall.held, by="op7")
            except AlarmError as e:
                assert e.code == "not-found"
        elif kind == "hold":
            if op[1] in hall.held:
                hall.held.discard(op[1])
            else:
                hall.held.add(op[1])
                hall.change(("panic", op[1]), True)  # holding it is pressing it
        elif kind == "advance":
            hall.advance(op[1])
        elif kind == "crash-ack":
            hall.crash_after("ack", {"alert": f"{op[1][0]}/{op[1][1]}", "by": "op9"})
        elif kind == "restart":
            hall.restart(op[1], synced=op[2])
        hall.tick()
        hall.check()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(ops, max_size=40),
       start=st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2035, 12, 31)))
def test_any_sequence_keeps_retained_state_equal_to_the_event_stream(steps, start):
    hall = Hall(start.replace(tzinfo=TZ))
    run(hall, steps)
    # and the end of every story: conditions gone, quiet for long enough, everything clears once
    for key in list(hall.conditions):
        hall.held.discard(key[1])
        hall.change(key, False)
    try:
        hall.call("end_drill", held=(), by="op7")
    except AlarmError:
        pass
    hall.advance(700)
    hall.check()
    assert {k for k in hall.reader if k[0] != "drill-due"} == set()


# -- unit cases: each rule on its own ------------------------------------------------------------------

def day(h: int, m: int = 0) -> datetime:
    return datetime(2026, 11, 25, h, m, tzinfo=TZ)  # a Wednesday


def test_ack_republishes_and_a_later_raise_starts_unacknowledged():
    hall = Hall(day(10))
    hall.change(("door-after-hours", "d1"), True)
    hall.call("ack", {"alert": "door-after-hours/d1", "by": "op7", "note": "cleaner"})
    d = hall.reader[("door-after-hours", "d1")]
    assert (d["acknowledged_by"], d["note"], d["escalation"]) == ("op7", "cleaner", "hall")
    assert d["acknowledged_at"].startswith("2026-11-25T10:00")
    with pytest.raises(AlarmError) as e:
        hall.call("ack", {"alert": "door-after-hours/d1", "by": "op8"})
    assert e.value.code == "conflict"
    hall.advance(2000)  # acknowledged: it does not escalate
    assert hall.reader[("door-after-hours", "d1")]["escalation"] == "hall"
    hall.change(("door-after-hours", "d1"), False)
    with pytest.raises(AlarmError) as e:
        hall.call("ack", {"alert": "door-after-hours/d1", "by": "op7"})
    assert e.value.code == "not-found"
    hall.change(("door-after-hours", "d1"), True)
    assert hall.reader[("door-after-hours", "d1")]["acknowledged_by"] is None


def test_escalation_steps_at_their_times_and_across_a_restart():
    hall = Hall(day(10))
    hall.change(("door-after-hours", "d1"), True)
    hall.change(("printer-paper-low", "pr1"), True)
    assert hall.reader[("door-after-hours", "d1")]["escalation"] == "hall"
    assert hall.reader[("printer-paper-low", "pr1")]["escalation"] is None  # priority 2
    hall.advance(119)
    assert hall.reader[("door-after-hours", "d1")]["escalation"] == "hall"
    hall.advance(1)
    assert hall.reader[("door-after-hours", "d1")]["escalation"] == "branch"
    hall.advance(300)
    hall.restart(60)  # 420 s unacknowledged + 60 s down
    hall.advance(419)
    assert hall.reader[("door-after-hours", "d1")]["escalation"] == "branch"
    hall.advance(1)
    assert hall.reader[("door-after-hours", "d1")]["escalation"] == "city"
    steps = [e for e in hall.events]
    assert steps == []  # the steps are the republished alert envelopes themselves


def test_panic_is_never_suppressed_and_a_window_for_it_is_refused():
    hall = Hall(day(10))
    with pytest.raises(AlarmError) as e:
        hall.call("start_window", {"rule": "panic", "source": "*", "until": day(11).isoformat(), "reason": "x",
                                   "by": "op7"})
    assert e.value.code == "refused" and "never" in e.value.message
    hall.call("start_window", {"rule": "*", "source": "*", "until": day(11).isoformat(), "reason": "fire test",
                               "by": "op7"})
    hall.change(("panic", "p1"), True)
    hall.change(("door-after-hours", "d1"), True)
    assert hall.reader[("panic", "p1")]["suppressed"] is None
    assert hall.reader[("door-after-hours", "d1")]["suppressed"] == {"reason": "fire test", "by": "op7",
                                                                     "until": day(11).isoformat(timespec="milliseconds")}
    hall.advance(1000)  # suppressed: no escalation; the panic does escalate
    assert hall.reader[("door-after-hours", "d1")]["escalation"] == "hall"
    assert hall.reader[("panic", "p1")]["escalation"] == "city"
    hall.advance(3600)  # the window ends by itself: re-marked, and its escalation clock starts
    assert hall.reader[("door-after-hours", "d1")]["suppressed"] is None
    assert [e["event"] for e in hall.events] == ["maintenance-started", "maintenance-ended"]
    assert hall.events[1]["ended"] == "expired"
    assert hall.retained[hall.ev.topic("maintenance")]["data"]["windows"] == []


def test_until_is_checked():
    hall = Hall(day(10))
    for until, word in ((day(9).isoformat(), "future"), ((day(10) + timedelta(hours=25)).isoformat(), "24 h"),
                        ("tomorrow", "ISO")):
        with pytest.raises(AlarmError) as e:
            hall.call("start_window", {"rule": "*", "source": "d1", "until": until, "reason": "x", "by": "op7"})
        assert e.value.code == "bad-args" and word in e.value.message
    hall.call("start_window", {"rule": "*", "source": "d1", "until": "2026-11-25T12:00", "reason": "x", "by": "o"})
    assert hall.book.window_list()[0]["until"] == "2026-11-25T12:00:00.000+08:00"  # local time of the hall


def test_scheduled_window_at_its_hour_across_midnight():
    hall = Hall(day(21, 59))
    hall.change(("door-after-hours", "d1"), True)
    assert hall.reader[("door-after-hours", "d1")]["suppressed"] is None
    hall.advance(60)  # 22:00: the cleaners' hour starts
    assert hall.reader[("door-after-hours", "d1")]["suppressed"]["reason"] == "cleaners"
    assert hall.book.window_list() == [{"rule": "door-after-hours", "source": "*", "scheduled": True,
                                        "until": "2026-11-26T02:00:00.000+08:00", "reason": "cleaners",
                                        "by": "config"}]
    hall.change(("door-after-hours", "d1"), False)
    hall.change(("door-after-hours", "d1"), True)
    assert hall.reader[("door-after-hours", "d1")]["suppressed"]["until"] == "2026-11-26T02:00:00.000+08:00"
    hall.restart(3 * 3600)  # down from 22:01 to 01:01: still inside
    assert hall.reader[("door-after-hours", "d1")]["suppressed"] is not None
    hall.advance(3600)  # 02:01
    assert hall.reader[("door-after-hours", "d1")]["suppressed"] is None
    assert [(e["event"], e.get("ended")) for e in hall.events] == [("maintenance-started", None),
                                                                   ("maintenance-ended", "expired")]
    hall.restart(0, synced=False)  # no window applies with an unsynchronised clock
    hall.wall = day(23)
    hall.tick()
    assert hall.book.window_list() == []


def test_a_scheduled_window_can_be_ended_for_tonight():
    hall = Hall(day(22, 30))
    hall.call("end_window", {"rule": "door-after-hours", "source": "*", "by": "guard"})
    hall.change(("door-after-hours", "d1"), True)
    assert hall.reader[("door-after-hours", "d1")]["suppressed"] is None
    hall.advance(24 * 3600)  # the next night it is back
    assert hall.reader[("door-after-hours", "d1")]["suppressed"] is not None


def test_flapping_holds_then_clears_once_after_the_quiet_window():
    hall = Hall(day(10))
    key = ("printer-paper-low", "pr1")
    for _ in range(2):
        hall.change(key, True)
        hall.advance(10)
        hall.change(key, False)
        assert key not in hall.reader
    hall.change(key, True)
    hall.advance(10)
    hall.change(key, False)  # the third clear within 600 s: held, flapping
    assert hall.reader[key]["flapping"] is True
    for _ in range(5):
        hall.advance(100)
        hall.change(key, True)
        hall.change(key, False)
    hall.advance(599)
    assert key in hall.reader
    hall.restart(0)
    hall.advance(1)
    assert key not in hall.reader
    assert hall.raise_count == 3


def test_panic_does_not_flap():
    hall = Hall(day(10))
    for _ in range(5):
        hall.change(("panic", "p1"), True)
        hall.change(("panic", "p1"), False)
    assert ("panic", "p1") not in hall.reader


def test_drill_report_pressed_held_and_never_pressed():
    hall = Hall(day(10), book=AlarmBook(policy(panic_inputs=("p1", "p2", "p3"))))
    hall.call("start_drill", {"inputs": "*", "minutes": 10, "by": "op7"})
    with pytest.raises(AlarmError):
        hall.call("start_drill", {"inputs": "*", "minutes": 10, "by": "op7"})
    hall.change(("panic", "p1"), True)
    hall.held.add("p2")
    hall.change(("panic", "p2"), True)
    assert hall.reader[("panic", "p1")]["drill"] is True
    hall.advance(120)  # drills do not escalate
    assert hall.reader[("panic", "p1")]["escalation"] == "hall"
    hall.restart(30)
    hall.advance(420)
    assert hall.reports == []
    hall.advance(30)
    (report,) = hall.reports
    assert report["result"] == "fail" and report["ended"] == "time"
    assert [(i["id"], i["result"]) for i in report["items"]] == [("p1", "pass"), ("p2", "warn"), ("p3", "fail")]
    assert ("panic", "p1") in hall.reader  # still latched until reset
    hall.change(("panic", "p1"), False)
    hall.change(("panic", "p1"), True)  # after the drill: a real alarm
    assert hall.reader[("panic", "p1")]["drill"] is False


def test_drill_due_raises_and_a_passed_drill_clears_it():
    hall = Hall(day(10), book=AlarmBook(policy(drill_due_days=90)))
    hall.advance(89 * 86400)
    assert ("drill-due", "p1") not in hall.reader
    hall.advance(2 * 86400)
    d = hall.reader[("drill-due", "p1")]
    assert d["state"] == "active" and d["escalation"] is None
    hall.call("start_drill", {"inputs": ["p1"], "minutes": 5, "by": "op7"})
    hall.change(("panic", "p1"), True)
    hall.call("end_drill", held=(), by="op7")
    assert ("drill-due", "p1") not in hall.reader
    assert ("drill-due", "p2") in hall.reader
