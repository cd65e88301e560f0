"""The outbox when its disk fails (issue 13, items 1-5): a failing SQLite statement
injected at each write site through the outbox's fault seam, SQLite's own
"database or disk is full", corruption met after open, the seq reservation
across clean and unclean stops, and the alert state committed with its envelope."""

import json
import sqlite3
import threading
import time

import pytest
from hypothesis import given, settings, strategies as st

import hall_agent.outbox as ob
from hall_agent.envelope import Events
from hall_agent.outbox import Dropped, Outbox, OutboxUnavailable

from mqtt_helpers import wait_until

EVENTS = Events("zg-001", "Asia/Shanghai", "halls/zigong/ziliujing/zg-001")

ERRORS = {
    "full": lambda: sqlite3.OperationalError("database or disk is full"),
    "read-only": lambda: sqlite3.OperationalError("attempt to write a readonly database"),
    "io": lambda: sqlite3.OperationalError("disk I/O error"),
    "locked": lambda: sqlite3.OperationalError("database is locked"),
    "os": lambda: OSError(28, "No space left on device"),
}
SITES = ["commit", "delete", "drop", "sync", "reserve"]


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setattr(ob, "RETRY_S", 0.05)


class Fault:
    """The seam: raises the chosen error at the chosen write site while armed."""

    def __init__(self, site: str, error):
        self.site, self.error = site, error
        self.armed = threading.Event()
        self.hits = 0

    def __call__(self, site: str) -> None:
        if self.armed.is_set() and site in (self.site, "flush"):
            self.hits += 1
            raise self.error()


def disk_rows(path):
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT seq, type FROM outbox ORDER BY pos").fetchall()
    finally:
        db.close()


@pytest.mark.parametrize("error", sorted(ERRORS))
@pytest.mark.parametrize("site", SITES)
def test_a_failing_write_at_each_site_holds_everything_and_resumes(tmp_path, monkeypatch, site, error):
    """While the write fails, every envelope is still handed out (from memory) in order,
    the failure is reported once, and nothing is lost or numbered twice once the disk
    takes writes again, reopen included."""
    monkeypatch.setattr(ob, "SEQ_BLOCK", 4)  # the reservation is renewed often: the "reserve" site is hit
    notes: list = []
    fault = Fault(site, ERRORS[error])
    path = tmp_path / "o.db"
    reports: list[Dropped] = []
    box = Outbox(path, max_bytes=5000, on_storage=notes.append, fault=fault,
                 on_overflow=lambda d: reports.append(d) or EVENTS.agent("outbox-overflow", {"ranges": d.ranges}))
    created, delivered = [], set()  # seqs; positions delivered
    created_pos = set()
    try:
        for i in range(3):
            created.append(box.enqueue(EVENTS.agent("before", {"i": i})))
        first = box.take(100)
        fault.armed.set()
        box.done([r.pos for r in first])  # "delete" fails here
        delivered |= {r.pos for r in first}
        for i in range(40):  # readings overflow the cap ("drop"); alerts renew the reservation ("reserve")
            env = EVENTS.reading("co2.a", "mhz19", {"co2_ppm": 400 + i}) if i % 2 else \
                EVENTS.alert("panic", f"panic.{i}", {"state": "active"}, "critical", ob_moment())
            seq = box.enqueue(env)
            if seq is not None:
                created.append(seq)
        assert wait_until(lambda: fault.hits > 0 and notes, 5), (fault.hits, notes)
        assert box.failed is not None and site in box.failed and notes == [box.failed]
        handed = box.take(1000)
        alerts = [r for r in handed if b'"panic"' in r.payload or b'"alert"' in r.payload]
        assert alerts, "no alarm handed out while the disk failed"
        assert [r.pos for r in handed] == sorted(r.pos for r in handed)
        half = handed[: len(handed) // 2]
        box.done([r.pos for r in half])
        delivered |= {r.pos for r in half}
        by_pos = {r.pos: r.seq for r in first + handed}
        fault.armed.clear()
        assert wait_until(lambda: box.failed is None and notes[-1] is None, 5), (box.failed, notes)
        assert notes == [notes[0], None]
        assert box.held_in_memory == 0
    finally:
        box.close()
    box = Outbox(path)
    try:
        left = box.take(10_000)
        assert not {r.pos for r in left} & delivered  # a delivered row is not sent again
        remaining = {r.seq for r in left}
        dropped = {s for d in reports for a, b in d.ranges for s in range(a, b + 1)}
        dropped |= {s for a, b in box.unreported_drops for s in range(a, b + 1)}
        assert set(created) <= remaining | {by_pos[p] for p in delivered} | dropped
        assert box.skipped is None  # a clean stop: nothing to skip
        assert box.enqueue(EVENTS.agent("after")) > max(created)
    finally:
        box.close()


def ob_moment():
    from hall_agent.envelope import Moment
    return Moment("emergency", 1)


def test_sqlite_itself_says_the_disk_is_full(tmp_path):
    """Not the seam: SQLite's own SQLITE_FULL (max_page_count reached) at commit."""
    notes: list = []
    path = tmp_path / "o.db"
    box = Outbox(path, on_storage=notes.append)
    try:
        pages = box._db.execute("PRAGMA page_count").fetchone()[0]
        box._db.execute(f"PRAGMA max_page_count = {pages + 1}")
        big = "x" * 3000
        seqs = [box.enqueue(EVENTS.agent("big", {"pad": big, "i": i})) for i in range(20)]
        assert box.failed is not None and "full" in box.failed
        assert wait_until(lambda: notes == [box.failed], 5)
        assert [r.seq for r in box.take(100)] == seqs  # every one handed out, in order
        box._db.execute("PRAGMA max_page_count = 1073741823")
        assert wait_until(lambda: box.failed is None, 5)
        assert [s for s, _ in disk_rows(path)] == seqs
    finally:
        box.close()


def test_failure_reason_names_the_site_and_the_error(tmp_path):
    fault = Fault("commit", ERRORS["read-only"])
    box = Outbox(tmp_path / "o.db", fault=fault)
    try:
        fault.armed.set()
        box.enqueue(EVENTS.agent("x"))
        assert box.failed == "commit: attempt to write a readonly database"
        assert box.status()["ok"] is False and box.status()["held_in_memory"] == 1
    finally:
        fault.armed.clear()
        box.close()


def test_stop_while_the_disk_fails_is_not_a_clean_stop(tmp_path):
    """Rows only memory held cannot be kept: the next start does not reuse their seqs."""
    fault = Fault("commit", ERRORS["io"])
    path = tmp_path / "o.db"
    box = Outbox(path, fault=fault)
    box.enqueue(EVENTS.agent("ok"))
    fault.armed.set()
    used = [box.enqueue(EVENTS.agent("held")) for _ in range(3)]
    box.close()
    box = Outbox(path)
    try:
        assert box.skipped is not None and box.skipped[0] <= used[0] and box.skipped[1] >= used[-1]
        assert box.enqueue(EVENTS.agent("next")) > used[-1]
    finally:
        box.close()


# -- seq reservation (item 4) ----------------------------------------------------------------

def test_seq_is_reserved_durably_before_use_and_skipped_after_an_unclean_stop(tmp_path, monkeypatch):
    monkeypatch.setattr(ob, "SEQ_BLOCK", 10)
    path = tmp_path / "o.db"
    box = Outbox(path)
    seqs = [box.enqueue(EVENTS.agent("e")) for _ in range(25)]
    reserved = json.loads((tmp_path / "o.db.seq").read_text())
    assert reserved["next"] is None and reserved["reserved"] > seqs[-1]  # written before use
    # an unclean stop (the process dies; its rows may never have reached the disk)
    box._sync_stop.set()
    box._db.close()
    box._closed = True
    db = sqlite3.connect(path)
    db.execute("DELETE FROM outbox WHERE seq > 20")  # the power cut lost the last rows
    db.commit()
    db.close()
    box = Outbox(path)
    try:
        assert box.skipped == (21, reserved["reserved"] - 1)
        nxt = box.enqueue(EVENTS.agent("after"))
        assert nxt == reserved["reserved"] and nxt > seqs[-1]
    finally:
        box.close()
    box = Outbox(path)  # a clean stop: no skip, no gap
    try:
        assert box.skipped is None and box.enqueue(EVENTS.agent("again")) == nxt + 1
    finally:
        box.close()


def test_a_damaged_seq_file_is_set_aside_not_trusted_blindly(tmp_path):
    path = tmp_path / "o.db"
    box = Outbox(path)
    box.enqueue(EVENTS.agent("e"))
    box.close()
    (tmp_path / "o.db.seq").write_text("{garbage")
    box = Outbox(path)
    try:
        assert box.enqueue(EVENTS.agent("e")) == 2  # the database's own counter
        assert list(tmp_path.glob("o.db.seq.damaged-*"))
    finally:
        box.close()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(
    st.tuples(st.just("enqueue"), st.sampled_from(["reading", "agent", "alert"])),
    st.tuples(st.just("take"), st.integers(1, 6)),
    st.tuples(st.just("done"), st.integers(0, 6)),
    st.tuples(st.just("break"), st.sampled_from(SITES + ["flush"])),
    st.tuples(st.just("repair"), st.none()),
    st.tuples(st.just("reopen"), st.sampled_from(["clean", "crash"])),
), max_size=60))
def test_property_no_seq_twice_nothing_lost_while_the_process_lives(tmp_path_factory, ops):
    """Any interleaving of writes, confirmations, write failures at any site, repairs,
    clean stops and crashes: no seq is ever handed out for two envelopes, and every
    envelope is delivered, still queued, dropped and reported, or (only when the
    process ended while the disk failed) was held in memory alone."""
    old = ob.SEQ_BLOCK, ob.RETRY_S
    ob.SEQ_BLOCK, ob.RETRY_S = 5, 3600.0  # the test retries by hand
    path = tmp_path_factory.mktemp("f") / "o.db"
    fault = Fault("commit", ERRORS["io"])
    reports: list[Dropped] = []
    make = lambda: Outbox(path, max_bytes=4000, fault=fault,
                          on_overflow=lambda d: reports.append(d) or EVENTS.agent("outbox-overflow"))
    box = make()
    given_out: dict[int, str] = {}  # seq -> envelope id
    taken, delivered, lost = [], set(), set()
    try:
        for op, arg in ops:
            if op == "enqueue":
                env = {"reading": lambda: EVENTS.reading("s", "m", {"co2_ppm": 1}),
                       "agent": lambda: EVENTS.agent("x"),
                       "alert": lambda: EVENTS.alert("panic", "p", {"state": "active"}, "critical", ob_moment())}[arg]()
                seq = box.enqueue(env)
                if seq is not None:
                    assert seq not in given_out, f"seq {seq} given twice"
                    given_out[seq] = env.id
            elif op == "take":
                taken += box.take(arg)
            elif op == "done":
                batch, taken = taken[:arg], taken[arg:]
                box.done([r.pos for r in batch])
                delivered |= {r.seq for r in batch if r.seq is not None}
            elif op == "break":
                fault.site = arg
                fault.armed.set()
            elif op == "repair":
                fault.armed.clear()
                box._retry()
            else:
                if box.failed is not None:
                    lost |= {r.seq for r in box._mem.values() if r.seq is not None}
                if arg == "clean":
                    box.close()
                else:  # the process dies: nothing more is written
                    box._sync_stop.set()
                    box._syncer.join()
                    box._db.close()
                    box._closed = True
                fault.armed.clear()
                box = make()
                taken = []
        for seq in {s for s in range(1, box.next_seq)} - set(given_out):
            given_out[seq] = "overflow-or-skipped"
        fault.armed.clear()
        box._retry()
        box.rewind()
        remaining = {r.seq for r in box.take(10_000) if r.seq is not None}
        dropped = {s for d in reports for a, b in d.ranges for s in range(a, b + 1)}
        dropped |= {s for a, b in box.unreported_drops for s in range(a, b + 1)}
        real = {s for s, i in given_out.items() if i != "overflow-or-skipped"}
        assert real <= delivered | remaining | dropped | lost
        assert not dropped & delivered
        box.close()
        assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        ob.SEQ_BLOCK, ob.RETRY_S = old
        if not box._closed:
            box.close()


# -- corruption (items 2 and 3) ----------------------------------------------------------------

def test_a_full_disk_at_open_is_not_corruption(tmp_path):
    """An error that is not corruption at open: a clear error, the file untouched."""
    path = tmp_path / "o.db"
    box = Outbox(path)
    box.enqueue(EVENTS.agent("kept"))
    box._sync_stop.set()
    box._syncer.join()
    box._db.close()
    box._closed = True  # the WAL is left behind, as after a crash
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    real_connect = sqlite3.connect

    class Full:
        def __init__(self, *a, **k):
            self.db = real_connect(*a, **k)

        def execute(self, sql, *a):
            if sql.startswith("PRAGMA journal_mode"):
                raise sqlite3.OperationalError("disk I/O error")
            return self.db.execute(sql, *a)

        def close(self):
            self.db.close()

    ob.sqlite3.connect = Full
    try:
        with pytest.raises(OutboxUnavailable, match="cannot be opened: disk I/O error"):
            Outbox(path)
    finally:
        ob.sqlite3.connect = real_connect
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before  # nothing renamed, the WAL not deleted
    box = Outbox(path)
    try:
        assert [json.loads(r.payload)["data"]["event"] for r in box.take()] == ["kept"]
        assert box.set_aside is None
    finally:
        box.close()


def corrupt_page(path, name):
    """Overwrite the root page of table or index ``name`` with garbage."""
    db = sqlite3.connect(path)
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (name,)).fetchone()[0]
    db.close()
    with open(path, "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\xde\xad\xbe\xef" * (page_size // 4))


def test_corruption_met_after_open_is_set_aside_and_nothing_readable_is_lost(tmp_path):
    """A bad index page, found by the first write that touches it: the file is set aside
    (with its WAL), a fresh outbox takes every row, seq continues, the agent is told."""
    path = tmp_path / "o.db"
    box = Outbox(path)
    for i in range(30):
        box.enqueue(EVENTS.reading("co2.a", "mhz19", {"co2_ppm": i}))
    alarm = box.enqueue(EVENTS.alert("panic", "panic.1", {"state": "active"}, "critical", ob_moment()),
                        state={"alert/panic/panic.1": '{"rule": "panic"}'})
    box.close()
    corrupt_page(path, "outbox_reading")
    told: list = []
    box = Outbox(path, on_corrupt=told.append)
    try:
        assert box.set_aside is None  # the open itself does not touch the index
        after = box.enqueue(EVENTS.reading("co2.a", "mhz19", {"co2_ppm": 99}))  # the index page is hit
        assert wait_until(lambda: told, 5)
        assert told[0].exists() and told[0].name.startswith("o.db.corrupt-")
        assert wait_until(lambda: box.failed is None, 5)
        rows = box.take(1000)
        assert [r.seq for r in rows] == list(range(1, alarm)) + [alarm, alarm, after]  # the alarm: two routes
        assert [r.pos for r in rows] == sorted(r.pos for r in rows)
        assert box.state_items("alert/") == {"alert/panic/panic.1": '{"rule": "panic"}'}
        assert box.enqueue(EVENTS.agent("next")) == after + 1
    finally:
        box.close()
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_a_corrupt_file_at_open_keeps_its_wal_and_the_seq(tmp_path):
    path = tmp_path / "o.db"
    box = Outbox(path)
    used = [box.enqueue(EVENTS.agent("e")) for _ in range(5)]
    box.close()
    path.write_bytes(b"this is not an sqlite database, just a failing SD card" * 100)
    box = Outbox(path)
    try:
        assert box.set_aside is not None and box.set_aside.exists()
        assert box.enqueue(EVENTS.agent("e")) > used[-1]  # seq does not restart
    finally:
        box.close()


# -- alert state with its envelope (item 5) ------------------------------------------------------

def test_alert_state_is_committed_in_the_envelopes_transaction(tmp_path):
    path = tmp_path / "o.db"
    box = Outbox(path)
    fault = Fault("commit", ERRORS["io"])
    box.fault = fault
    try:
        box.enqueue(EVENTS.alert("panic", "p", {"state": "active"}, "critical", ob_moment()),
                    state={"alert/panic/p": "{}"})
        db = sqlite3.connect(path)
        assert db.execute("SELECT value FROM state WHERE key = 'alert/panic/p'").fetchone() == ("{}",)
        fault.armed.set()
        box.enqueue(EVENTS.alert("panic", "p", {"state": "cleared"}, "info", ob_moment()), state={"alert/panic/p": None})
        # neither the cleared envelope nor the state change reached the disk; both are held
        assert db.execute("SELECT value FROM state WHERE key = 'alert/panic/p'").fetchone() == ("{}",)
        assert box.state_items("alert/") == {}
        fault.armed.clear()
        assert wait_until(lambda: box.failed is None, 5)
        assert db.execute("SELECT value FROM state WHERE key = 'alert/panic/p'").fetchone() is None
        db.close()
    finally:
        box.close()


def test_the_engine_keeps_only_what_was_emitted(tmp_path):
    """A change whose envelope could not be emitted is undone: raised again next time."""
    from datetime import datetime
    from zoneinfo import ZoneInfo
    from hall_agent.alerts import Alerts
    from hall_agent.outbox import OutboxClosed
    from hall_agent.rules import RulesEngine
    from hall_agent.rules.profile import RuleSet
    engine = RulesEngine(RuleSet(), lambda now: False)
    box = Outbox(tmp_path / "o.db")
    emitted = []
    failing = threading.Event()

    def emit(env, state=None):
        if failing.is_set():
            raise OutboxClosed("stopping")
        emitted.append((env, state))

    alerts = Alerts(engine, EVENTS, emit, box, tmp_path / "alerts.json", lambda: datetime.now(ZoneInfo("UTC")))
    try:
        failing.set()
        alerts.feed(lambda now: engine.input("panic", "panic.1", "alarm", now))
        assert engine.active == {}
        failing.clear()
        alerts.feed(lambda now: engine.input("panic", "panic.1", "alarm", now))
        assert list(engine.active) == [("panic", "panic.1")] and len(emitted) == 1
        assert json.loads(emitted[0][1]["alert/panic/panic.1"])["rule"] == "panic"
        failing.set()
        alerts.feed(lambda now: engine.input("panic", "panic.1", "normal", now))
        assert list(engine.active) == [("panic", "panic.1")]  # the clear did not go out: still active
        assert engine.active[("panic", "panic.1")].cleared_at is None
    finally:
        box.close()


def test_legacy_alerts_json_is_imported_and_a_damaged_one_set_aside(tmp_path):
    from datetime import datetime
    from zoneinfo import ZoneInfo
    from hall_agent.alerts import Alerts
    from hall_agent.rules import RulesEngine
    from hall_agent.rules.profile import RuleSet
    now = lambda: datetime.now(ZoneInfo("UTC"))
    legacy = tmp_path / "alerts.json"
    legacy.write_text(json.dumps([{"rule": "panic", "source": "panic.1", "severity": "critical",
                                   "category": "emergency", "priority": 1, "message": "m", "value": None,
                                   "threshold": None, "raised_at": "2026-11-26T08:30:00.000+08:00"}]))
    box = Outbox(tmp_path / "o.db")
    try:
        engine = RulesEngine(RuleSet(), lambda n: False)
        Alerts(engine, EVENTS, lambda *a, **k: None, box, legacy, now).load()
        assert list(engine.active) == [("panic", "panic.1")]
        assert not legacy.exists() and (tmp_path / "alerts.json.imported").exists()
        assert list(box.state_items("alert/")) == ["alert/panic/panic.1"]
    finally:
        box.close()
    legacy.write_text("[{not json")
    box = Outbox(tmp_path / "o2.db")
    try:
        a = Alerts(RulesEngine(RuleSet(), lambda n: False), EVENTS, lambda *a, **k: None, box, legacy, now)
        assert a.load() == [] and a.problems and "damaged" in a.problems[0]
        assert list(tmp_path.glob("alerts.json.damaged-*"))  # set aside, not destroyed
    finally:
        box.close()


# -- overflow accounting (item 10) ---------------------------------------------------------------

def test_every_dropped_seq_is_reported_in_parts_at_most_once_a_minute_and_costs_less_than_it_freed(
        tmp_path, monkeypatch):
    """Interleaved readings and events make thousands of one-seq gaps: every one is named
    (in parts of at most OVERFLOW_RANGES ranges), the reports come at most once a minute,
    and they take fewer outbox bytes than the drops freed."""
    now = [1000.0]
    monkeypatch.setattr(ob.time, "monotonic", lambda: now[0])
    reports: list[Dropped] = []

    def on_overflow(d: Dropped):
        reports.append(d)
        return EVENTS.agent("outbox-overflow", {"dropped": d.count, "ranges": [list(r) for r in d.ranges],
                                                "part": d.part, "of": d.parts}, severity="warning")

    box = Outbox(tmp_path / "o.db", max_bytes=200_000, on_overflow=on_overflow)
    try:
        kinds = {}
        for i in range(6000):
            env = EVENTS.reading("co2.a", "mhz19", {"co2_ppm": i}) if i % 2 else EVENTS.agent("door", {"n": i})
            seq = box.enqueue(env)
            if seq is not None:
                kinds[seq] = env.type
            now[0] += 0.01  # 60 s of traffic
        first = len(reports)
        assert first == 1  # the first drop is reported at once, the rest wait for the minute
        assert box.unreported_drops
        now[0] += 61
        box.enqueue(EVENTS.agent("tick"))
        parts = reports[first:]
        assert parts and all(len(p.ranges) <= ob.OVERFLOW_RANGES for p in parts)
        assert [p.part for p in parts] == list(range(1, len(parts) + 1)) and {p.parts for p in parts} == {len(parts)}
        named = {s for d in reports for a, b in d.ranges for s in range(a, b + 1)}
        assert len(named) == sum(d.count for d in reports) == box.dropped_total - len(
            {s for a, b in box.unreported_drops for s in range(a, b + 1)})
        assert {kinds[s] for s in named} == {"reading"}
        rows = box.take(100_000)
        report_bytes = sum(r.size for r in rows if b"outbox-overflow" in r.payload)
        reading = EVENTS.reading("co2.a", "mhz19", {"co2_ppm": 1})
        smallest = len(reading.encode(1)) + len(reading.routes[0].topic) + ob.ROW_OVERHEAD
        freed = sum(d.count for d in reports) * smallest
        assert len(parts) > 1  # more ranges than one report holds
        assert report_bytes < freed
    finally:
        box.close()


def test_a_reading_with_nothing_left_to_drop_is_refused_without_a_seq(tmp_path):
    box = Outbox(tmp_path / "o.db", max_bytes=3000, on_overflow=lambda d: None)
    try:
        seqs = [box.enqueue(EVENTS.agent("door", {"pad": "x" * 200})) for _ in range(20)]
        assert box.bytes > 3000  # events are never dropped
        before = box.bytes
        assert box.enqueue(EVENTS.reading("co2.a", "mhz19", {"co2_ppm": 1})) is None
        assert box.bytes == before and box.refused_total == 1
        assert box.enqueue(EVENTS.agent("next")) == seqs[-1] + 1  # no gap for the refused reading
    finally:
        box.close()
