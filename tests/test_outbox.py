"""The durable outbox: seq assignment, order, restart, and the bounded drop order."""

import json
import time
import sqlite3
from datetime import datetime, timezone

from hypothesis import given, settings, strategies as st

from hall_agent.envelope import Events
from hall_agent.outbox import Dropped, Outbox, seq_ranges

EVENTS = Events("zg-001", "Asia/Shanghai", "halls/zigong/ziliujing/zg-001")


def decoded(rows):
    return [json.loads(r.payload) for r in rows]


def test_seq_is_assigned_in_commit_order_and_survives_reopen(tmp_path):
    box = Outbox(tmp_path / "o.db")
    seqs = [box.enqueue(EVENTS.agent("e", {"n": i})) for i in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    box.close()
    box = Outbox(tmp_path / "o.db")
    assert box.enqueue(EVENTS.agent("e")) == 6
    rows = box.take(100)
    assert [d["seq"] for d in decoded(rows)] == [1, 2, 3, 4, 5, 6]
    box.done([r.pos for r in rows])
    assert box.depth == 0 and box.bytes == 0
    box.close()
    box = Outbox(tmp_path / "o.db")  # empty outbox: the counter still lives on
    assert box.enqueue(EVENTS.agent("e")) == 7


def test_one_envelope_many_routes_share_seq_and_id(tmp_path):
    box = Outbox(tmp_path / "o.db")
    box.enqueue(EVENTS.state("door.side", {"state": "open"}))
    rows = box.take()
    assert [r.topic for r in rows] == ["halls/zigong/ziliujing/zg-001/state/door.side",
                                       "halls/zigong/ziliujing/zg-001/event"]
    assert [r.retain for r in rows] == [True, False]
    a, b = decoded(rows)
    assert a == b and a["seq"] == 1 and a["type"] == "state"


def test_undone_rows_are_replayed_after_reopen_with_same_id(tmp_path):
    box = Outbox(tmp_path / "o.db")
    for i in range(3):
        box.enqueue(EVENTS.agent("e", {"n": i}))
    first = box.take(2)
    box.done([first[0].pos])
    ids = [d["id"] for d in decoded(first)]
    box.close()  # second row was handed out but never confirmed
    box = Outbox(tmp_path / "o.db")
    again = decoded(box.take())
    assert [d["seq"] for d in again] == [2, 3] and again[0]["id"] == ids[1]


def test_take_continues_after_what_was_handed_out(tmp_path):
    box = Outbox(tmp_path / "o.db")
    for i in range(4):
        box.enqueue(EVENTS.agent("e"))
    assert [r.seq for r in box.take(2)] == [1, 2]
    assert [r.seq for r in box.take(5)] == [3, 4]
    assert box.take() == []
    box.rewind()
    assert [r.seq for r in box.take(5)] == [1, 2, 3, 4]


def test_envelope_fields(tmp_path):
    clock = lambda: datetime(2026, 11, 26, 0, 30, 0, 123000, tzinfo=timezone.utc)
    ev = Events("zg-001", "Asia/Shanghai", "halls/z/b/zg-001", clock=clock)
    env = ev.reading("env.hall", "sht3x", {"temperature_c": 23.41})
    doc = json.loads(env.encode(42))
    assert doc == {"schema": 1, "id": env.id, "seq": 42, "ts": "2026-11-26T08:30:00.123+08:00",
                   "hall": "zg-001", "type": "reading", "source": "env.hall", "severity": "info",
                   "moment": {"category": "internal", "priority": 4}, "data": {"model": "sht3x", "values": {"temperature_c": 23.41}}}
    assert env.routes[0].topic == "halls/z/b/zg-001/telemetry/env.hall" and env.routes[0].retain
    assert env.id != ev.reading("env.hall", "sht3x", {}).id


def overflow_box(tmp_path, cap, kinds=None):
    reports: list[Dropped] = []

    def on_overflow(d: Dropped):
        reports.append(d)
        if kinds is not None:  # health goes only once no reading is left to drop
            dropped_kinds = {kinds[s] for a, b in d.ranges for s in range(a, b + 1)}
            left = {t for (t,) in sqlite3.connect(tmp_path / "o.db").execute("SELECT type FROM outbox")}
            assert "health" not in dropped_kinds or "reading" not in left
        return EVENTS.agent("outbox-overflow", {"dropped": d.count, "ranges": d.ranges}, severity="warning")

    return Outbox(tmp_path / "o.db", max_bytes=cap, on_overflow=on_overflow), reports


def test_overflow_drops_oldest_readings_then_health_never_events(tmp_path):
    kinds = {}
    box, reports = overflow_box(tmp_path, cap=12000, kinds=kinds)
    for i in range(60):
        if i % 3 == 0:
            env = EVENTS.agent("door", {"n": i})
        elif i % 3 == 1:
            env = EVENTS.reading("env.hall", "sht3x", {"temperature_c": i})
        else:
            env = EVENTS.health({"n": i})
        kinds[box.next_seq] = env.type
        kinds[box.enqueue(env)] = env.type
    assert box.bytes <= 12000 and reports
    left = decoded(box.take(1000))
    left_seqs = {d["seq"] for d in left}
    # every non-droppable envelope is still there
    assert all(seq in left_seqs for seq, k in kinds.items() if k == "agent")
    reported = {s for d in reports for a, b in d.ranges for s in range(a, b + 1)}
    assert sum(d.count for d in reports) == len(reported)
    # at most one report a minute: the drops since the first report wait for the next one
    assert len(reports) == 1
    dropped = reported | {s for a, b in box.unreported_drops for s in range(a, b + 1)}
    assert len(dropped) == box.dropped_total
    assert {kinds[s] for s in dropped} == {"reading", "health"}
    # the overflow events and the survivors account for every seq
    all_seqs = left_seqs | dropped
    assert all_seqs == set(range(1, box.next_seq))
    overflow_events = [d for d in left if d["data"].get("event") == "outbox-overflow"]
    assert len(overflow_events) == len(reports)


def test_overflow_never_drops_rows_in_flight(tmp_path):
    box, reports = overflow_box(tmp_path, cap=4000)
    for i in range(5):
        box.enqueue(EVENTS.reading("env.hall", "sht3x", {"temperature_c": i}))
    taken = box.take(5)
    for i in range(30):
        box.enqueue(EVENTS.reading("env.hall", "sht3x", {"temperature_c": i}))
    dropped = {s for d in reports for a, b in d.ranges for s in range(a, b + 1)}
    dropped |= {s for a, b in box.unreported_drops for s in range(a, b + 1)}
    assert dropped and not dropped & {r.seq for r in taken}


def test_seq_ranges():
    assert seq_ranges([5, 1, 2, 3, 7, 8]) == [(1, 3), (5, 5), (7, 8)]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(
    st.tuples(st.just("enqueue"), st.sampled_from(["reading", "health", "agent", "state"])),
    st.tuples(st.just("take"), st.integers(1, 5)),
    st.tuples(st.just("done"), st.integers(0, 5)),
    st.tuples(st.just("reopen"), st.none()),
), max_size=60))
def test_property_nothing_lost_nothing_reused(tmp_path_factory, ops):
    """Whatever the interleaving of writes, confirmations, overflow and restarts:
    every seq is used once, and each is either delivered, still queued or
    accounted for by an overflow report."""
    path = tmp_path_factory.mktemp("p") / "o.db"
    reports: list[Dropped] = []
    make = lambda: Outbox(path, max_bytes=3000, on_overflow=lambda d: reports.append(d) or EVENTS.agent("outbox-overflow"))
    box = make()
    taken, delivered, created = [], set(), set()
    for op, arg in ops:
        if op == "enqueue":
            env = {"reading": lambda: EVENTS.reading("s", "m", {"co2_ppm": 1}), "health": lambda: EVENTS.health({}),
                   "agent": lambda: EVENTS.agent("x"), "state": lambda: EVENTS.state("d", {"state": "open"})}[arg]()
            seq = box.enqueue(env)
            if seq is None:  # a reading refused by a full outbox holding nothing droppable: no seq used
                assert env.type in ("reading", "health") and box.bytes > 3000
                continue
            assert seq not in created
            created.add(seq)
        elif op == "take":
            taken += box.take(arg)
        elif op == "done":
            batch, taken = taken[:arg], taken[arg:]
            box.done([r.pos for r in batch])
            delivered |= {r.seq for r in batch}
        else:
            box.close()
            box = make()
            taken = []
    created |= set(range(1, box.next_seq))  # overflow events created inside enqueue
    box.rewind()
    remaining = {r.seq for r in box.take(10_000)}
    dropped = {s for d in reports for a, b in d.ranges for s in range(a, b + 1)}
    dropped |= {s for a, b in box.unreported_drops for s in range(a, b + 1)}  # reported within a minute
    assert created == delivered | remaining | dropped
    assert not dropped & delivered
    box.close()
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_a_corrupt_outbox_file_is_set_aside_not_fatal(tmp_path):
    path = tmp_path / "o.db"
    path.write_bytes(b"this is not an sqlite database, just a failing SD card" * 100)
    box = Outbox(path)
    assert box.set_aside is not None and box.set_aside.exists()
    assert box.enqueue(EVENTS.agent("e")) == 1
    box.close()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(
    st.tuples(st.just("enqueue"), st.lists(st.sampled_from(["reading", "state", "raw"]), min_size=1, max_size=4)),
    st.tuples(st.just("take"), st.integers(1, 6)),
    st.tuples(st.just("done"), st.integers(0, 6)),
    st.tuples(st.just("rewind"), st.none()),
), max_size=50))
def test_property_take_serves_what_the_table_holds(tmp_path_factory, ops):
    """take() is served from memory while it keeps up (no SELECT on the alarm path),
    from the table otherwise: either way it hands out exactly the rows an independent
    reader sees, in order. Small limits force every fallback: a backlog beyond the
    in-memory window, multi-statement commits, overflow, rewind."""
    import hall_agent.outbox as ob
    from hall_agent.outbox import Raw
    old = ob.FRESH_MAX, ob.INSERT_CHUNK
    ob.FRESH_MAX, ob.INSERT_CHUNK = 12, 3
    try:
        path = tmp_path_factory.mktemp("t") / "o.db"
        box = Outbox(path, max_bytes=3000, on_overflow=lambda d: None)
        reader = sqlite3.connect(path)
        cursor, taken = 0, []
        for op, arg in ops:
            if op == "enqueue":
                box.enqueue_many([Raw(EVENTS.topic("alert/x/y"), b"") if k == "raw" else
                                  EVENTS.reading("s", "m", {"co2_ppm": 1}) if k == "reading" else
                                  EVENTS.state("d", {"state": "open"}) for k in arg])
            elif op == "take":
                got = box.take(arg)
                expected = reader.execute("SELECT pos, seq, topic, payload, qos, retain FROM outbox WHERE pos > ? "
                                          "ORDER BY pos LIMIT ?", (cursor, arg)).fetchall()
                assert [(r.pos, r.seq, r.topic, r.payload, r.qos, int(r.retain)) for r in got] == expected
                if got:
                    cursor = got[-1].pos
                taken += got
            elif op == "done":
                batch, taken = taken[:arg], taken[arg:]
                box.done([r.pos for r in batch])
            else:
                box.rewind()
                cursor, taken = 0, []
        box.close()
        reader.close()
    finally:
        ob.FRESH_MAX, ob.INSERT_CHUNK = old


def test_events_are_fsynced_in_the_wal_and_checkpointed_only_in_bulk(tmp_path, monkeypatch):
    """The syncer fsyncs the WAL after an event (no checkpoint: the next commit on an
    alarm's path would pay for it) and checkpoints after CHECKPOINT_COMMITS commits."""
    import hall_agent.outbox as ob
    monkeypatch.setattr(ob, "CHECKPOINT_COMMITS", 20)
    path = tmp_path / "o.db"
    box = Outbox(path)
    try:
        db_size = path.stat().st_size
        for i in range(3):
            before = box.syncs
            box.enqueue(EVENTS.agent("x"))
            deadline = time.monotonic() + 2
            while box.syncs == before and time.monotonic() < deadline:
                time.sleep(0.005)
            assert box.syncs > before, "an event was not synced at once"
        assert path.stat().st_size == db_size  # the rows are in the (fsynced) WAL only
        for i in range(25):
            box.enqueue(EVENTS.agent("x"))
        deadline = time.monotonic() + 3
        while path.stat().st_size == db_size and time.monotonic() < deadline:
            time.sleep(0.01)
        assert path.stat().st_size > db_size, "no checkpoint after CHECKPOINT_COMMITS commits"
    finally:
        box.close()


def test_an_outbox_of_the_earlier_schema_is_used_as_it_is(tmp_path):
    """Outboxes made before pos was assigned by the outbox (AUTOINCREMENT, one index on
    type): their rows go out first, in order, and new rows follow them."""
    path = tmp_path / "o.db"
    db = sqlite3.connect(path)
    db.executescript("""
        PRAGMA journal_mode=WAL;
        CREATE TABLE outbox (pos INTEGER PRIMARY KEY AUTOINCREMENT, seq INTEGER, type TEXT NOT NULL,
            topic TEXT NOT NULL, payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL);
        CREATE INDEX outbox_type ON outbox(type, pos);
        CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
    """)
    for seq in (1, 2, 3):
        env = EVENTS.agent("old")
        db.execute("INSERT INTO outbox(seq, type, topic, payload, qos, retain) VALUES (?,?,?,?,1,0)",
                   (seq, "agent", env.routes[0].topic, env.encode(seq)))
    db.execute("DELETE FROM outbox WHERE seq = 1")  # delivered before the upgrade
    db.commit()
    db.close()
    box = Outbox(path)
    try:
        assert box.enqueue(EVENTS.agent("new")) == 4
        rows = box.take(10)
        assert [r.seq for r in rows] == [2, 3, 4]
        assert rows[-1].pos > rows[-2].pos
        indexes = {r[0] for r in sqlite3.connect(path).execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert "outbox_type" not in indexes and {"outbox_reading", "outbox_health"} <= indexes
    finally:
        box.close()
