"""The retained truth on the broker (SPEC section 3, issues 17.1 and 13.5): after a
broker restart that lost its retained store the agent republishes what it holds
(the same envelopes), and on every connect (and on ``rebirth``) it clears the
alerts the broker shows that it does not hold."""

import json
import time

import pytest
from hypothesis import given, strategies as st

from hall_agent.broker.reconcile import NOT_HELD, plan
from hall_agent.broker.retained import RetainedStore
from mqtt_helpers import AgentProcess, Broker, Recorder, publish, wait_until, write_config

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

[[inputs]]
id = "panic.1"
kind = "panic"
pin = 22
contact = "nc"
"""


def ghost_envelope(rule, source, seq=9999):
    return json.dumps({"schema": 1, "id": f"ghost-{rule}-{source}", "seq": seq, "ts": "2026-01-01T00:00:00.000+08:00",
                       "hall": "zg-001", "type": "alert", "source": source, "severity": "critical",
                       "moment": {"category": "emergency", "priority": 1},
                       "data": {"state": "active", "rule": rule, "message": "old", "value": None, "threshold": None,
                                "raised_at": "2026-01-01T00:00:00.000+08:00", "cleared_at": None}})


def retained_snapshot(port, topics=(f"{BASE}/#",), settle=1.0):
    """What a consumer connecting now sees retained: topic -> payload."""
    rec = Recorder(port, list(topics))
    time.sleep(settle)
    rec.close()
    out = {}
    for m in rec.messages:
        if m.retain:
            out[m.topic] = m.payload
    return out


@pytest.fixture
def volatile_broker(tmp_path):
    b = Broker(tmp_path / "volatile", persistence=False).start()
    yield b
    b.stop()


def test_broker_restart_without_persistence_keeps_a_latched_panic(volatile_broker, tmp_path):
    broker = volatile_broker
    cfg = write_config(tmp_path / "c.toml", broker.port, tmp_path / "state", HALL)
    rec = Recorder(broker.port, [f"{BASE}/#"])
    agent = AgentProcess(cfg, "--simulate").start()
    try:
        assert rec.wait_for(lambda r: r.payloads("/status") and r.payloads("/status")[-1]["state"] == "online",
                            15), agent.output()
        publish(broker.port, f"{BASE}/sim/input/panic.1", "pressed")
        assert rec.wait_for(lambda r: r.payloads("/alert/panic/panic.1"), 10)
        alert = rec.payloads("/alert/panic/panic.1")[0]
        assert rec.wait_for(lambda r: any(s["data"]["state"] == "alarm" for s in r.payloads("/state/panic.1")), 10)
        state = [s for s in rec.payloads("/state/panic.1") if s["data"]["state"] == "alarm"][-1]
        publish(broker.port, f"{BASE}/sim/input/panic.1", "released")  # latched: stays in alarm
        time.sleep(1.0)  # the PUBACKs come back and the retained store records them
        rec.close()

        broker.restart()  # no persistence: every retained message is gone
        assert wait_until(lambda: json.loads(retained_snapshot(broker.port, [f"{BASE}/status"], 0.3)
                                             .get(f"{BASE}/status", b'{"state":"?"}'))["state"] == "online", 20)
        shown = {}
        assert wait_until(lambda: (shown.update(retained_snapshot(broker.port)) or
                                   f"{BASE}/alert/panic/panic.1" in shown), 15), shown.keys()
        again = json.loads(shown[f"{BASE}/alert/panic/panic.1"])
        assert (again["id"], again["seq"]) == (alert["id"], alert["seq"])  # the same envelope, not a new alert
        st_again = json.loads(shown[f"{BASE}/state/panic.1"])
        assert st_again["data"]["state"] == "alarm" and st_again["id"] == state["id"]
        assert json.loads(shown[f"{BASE}/status"])["state"] == "online"
    finally:
        agent.kill()


def test_ghost_alerts_are_cleared_on_connect_and_on_rebirth(broker, tmp_path):
    cfg = write_config(tmp_path / "c.toml", broker.port, tmp_path / "state", HALL)
    # an alert left on the broker by an agent that no longer holds it (its state lost)
    ghost = f"{BASE}/alert/door-after-hours/door.x"
    publish(broker.port, ghost, ghost_envelope("door-after-hours", "door.x"), retain=True)
    rec = Recorder(broker.port, [f"{BASE}/alert/#", f"{BASE}/event", f"{BASE}/status", f"{BASE}/cmd/reply"])
    agent = AgentProcess(cfg, "--simulate").start()
    try:
        def cleared(r, topic):
            return [e for e in r.payloads("/event") if e["type"] == "alert" and e["data"]["state"] == "cleared"
                    and f"/alert/{e['data']['rule']}/{e['source']}" == topic[len(BASE):]]
        assert rec.wait_for(lambda r: cleared(r, ghost), 20), agent.output()
        env = cleared(rec, ghost)[0]
        assert env["data"]["message"] == NOT_HELD and env["data"]["reason"] == NOT_HELD
        assert env["data"]["cleared_id"] == "ghost-door-after-hours-door.x"
        assert rec.wait_for(lambda r: any(m.topic == ghost and m.payload == b"" for m in r.messages), 10)
        on_topic = [m.payload for m in rec.messages if m.topic == ghost and not m.retain]
        assert json.loads(on_topic[0])["data"]["state"] == "cleared" and on_topic[-1] == b""  # cleared, then removed
        assert ghost not in retained_snapshot(broker.port, [f"{BASE}/alert/#"], 0.5)

        # while running: a ghost appears (another process wrote it); rebirth clears it too,
        # and a held alert stays
        publish(broker.port, f"{BASE}/sim/input/panic.1", "pressed")
        assert rec.wait_for(lambda r: r.payloads("/alert/panic/panic.1"), 10)
        ghost2 = f"{BASE}/alert/printer-paper-out/printer.z"
        publish(broker.port, ghost2, ghost_envelope("printer-paper-out", "printer.z"), retain=True)
        publish(broker.port, f"{BASE}/cmd", '{"id":"rb","command":"rebirth"}')
        assert rec.wait_for(lambda r: any(x["id"] == "rb" for x in r.payloads("/cmd/reply")), 10)
        reply = [x for x in rec.payloads("/cmd/reply") if x["id"] == "rb"][0]
        assert reply["ok"] and reply["result"]["republished"] >= 1, reply
        assert rec.wait_for(lambda r: cleared(r, ghost2), 10)
        time.sleep(0.5)
        shown = retained_snapshot(broker.port, [f"{BASE}/alert/#"], 0.5)
        assert set(shown) == {f"{BASE}/alert/panic/panic.1"}
        assert not cleared(rec, f"{BASE}/alert/panic/panic.1")
    finally:
        agent.kill()
        rec.close()


# -- the pure parts ---------------------------------------------------------------------
def test_plan_clears_ghosts_republishes_what_the_broker_lacks_and_leaves_pending_topics():
    t = lambda r, s: f"{BASE}/alert/{r}/{s}"
    seen = {t("panic", "p1"): b"old-p1", t("door-after-hours", "d1"): b"ghost", t("sensor-fault", "s1"): b"pend"}
    held = {("panic", "p1"), ("printer-offline", "pr1"), ("check-failed", "opening")}
    stored = {t("panic", "p1"): b"new-p1", t("printer-offline", "pr1"): b"pr1"}
    p = plan(BASE, seen, held, stored, pending={t("sensor-fault", "s1")})
    assert [g.topic for g in p.clear] == [t("door-after-hours", "d1")]
    assert sorted(p.republish) == [t("panic", "p1"), t("printer-offline", "pr1")]
    assert p.publish == [("check-failed", "opening")]


keys = st.tuples(st.sampled_from(["panic", "door-after-hours", "sensor-fault"]), st.sampled_from(["a", "b", "c"]))


@given(seen=st.dictionaries(keys, st.binary(min_size=1, max_size=3)), held=st.sets(keys),
       stored=st.dictionaries(keys, st.binary(min_size=1, max_size=3)), pending=st.sets(keys))
def test_plan_never_clears_a_held_alert_and_leaves_no_ghost(seen, held, stored, pending):
    topic = lambda k: f"{BASE}/alert/{k[0]}/{k[1]}"
    p = plan(BASE, {topic(k): v for k, v in seen.items()}, held, {topic(k): v for k, v in stored.items()},
             {topic(k) for k in pending})
    cleared = {(g.rule, g.source) for g in p.clear}
    assert not cleared & held
    assert cleared == {k for k in seen if k not in held and k not in pending}  # every ghost, unless settling
    fixed = set(p.republish) | {topic(k) for k in p.publish}
    for k in held - pending:  # afterwards the broker shows every held alert, as the agent knows it
        assert topic(k) in fixed or (k in seen and stored.get(k, seen[k]) == seen[k])


def test_retained_store_survives_a_restart_and_a_damaged_file(tmp_path):
    path = tmp_path / "retained.sqlite3"
    store = RetainedStore(path)
    store.update([("a/state/x", b"1", 1), ("a/alert/r/s", b"on", 1), ("a/telemetry/t", b"t", 0)])
    store.update([("a/alert/r/s", b"", 1), ("a/state/x", b"2", 1)])  # cleared; newer state
    store.close()
    again = RetainedStore(path)
    assert {k: (v.payload, v.qos) for k, v in again.items().items()} == {"a/state/x": (b"2", 1),
                                                                      "a/telemetry/t": (b"t", 0)}
    again.close()
    path.write_bytes(b"this is not a database" * 100)
    for side in ("-wal", "-shm"):
        (tmp_path / f"retained.sqlite3{side}").unlink(missing_ok=True)
    fresh = RetainedStore(path)
    assert fresh.items() == {} and (tmp_path / "retained.sqlite3.damaged").exists()
    fresh.update([("a/state/x", b"3", 1)])
    assert fresh.get("a/state/x").payload == b"3"
    fresh.close()
