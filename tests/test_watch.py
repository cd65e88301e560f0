"""hall-agent watch against a broker holding the retained state of several simulated halls."""

import subprocess
import sys
from datetime import datetime

from hall_agent.watch import Board, topic_filters
from mqtt_helpers import AgentProcess, Recorder, publish, write_config

CLOSED_ALL_WEEK = "[hours]\n" + "".join(f'{d} = "closed"\n' for d in (
    "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")) + """holidays = ""
[checks]
settle_s = 0.2
[[inputs]]
id = "door.side"
kind = "door"
pin = 17
contact = "nc"
bounce_ms = 0
[[inputs]]
id = "panic.1"
kind = "panic"
pin = 22
contact = "nc"
"""


def test_topic_filters_by_scope():
    assert topic_filters("halls", None)[0] == "halls/+/+/+/status"
    assert topic_filters("halls", "zigong/ziliujing") == [
        "halls/zigong/ziliujing/+/status", "halls/zigong/ziliujing/+/health", "halls/zigong/ziliujing/+/alert/#",
        "halls/zigong/ziliujing/+/check/+"]
    assert topic_filters("halls", "zigong/+/zg-001")[3] == "halls/zigong/+/zg-001/check/+"


def test_console_renders_halls_alerts_and_checks(broker, tmp_path):
    agents = []
    for hall in ("zg-001", "zg-002", "zg-003"):
        cfg = write_config(tmp_path / f"{hall}.toml", broker.port, tmp_path / f"state-{hall}", CLOSED_ALL_WEEK,
                           hall=hall)
        agents.append(AgentProcess(cfg, "--simulate").start())
    rec = Recorder(broker.port, ["halls/#"])
    try:
        assert rec.wait_for(lambda r: len({m.topic for m in r.on("/status")}) == 3, 20)
        b1, b2 = "halls/zigong/ziliujing/zg-001", "halls/zigong/ziliujing/zg-002"
        publish(broker.port, f"{b1}/sim/input/panic.1", "pressed")
        publish(broker.port, f"{b2}/sim/input/door.side", "open")
        # the panic is latched before the check is asked (a check with nothing to switch on does not wait
        # settle_s: it reads the inputs at once)
        assert rec.wait_for(lambda r: r.on(f"{b1}/alert/panic/panic.1"), 15)
        publish(broker.port, f"{b1}/cmd", '{"id":"c","command":"check","args":{"kind":"opening"}}')
        assert rec.wait_for(lambda r: r.on(f"{b1}/alert/panic/panic.1") and r.on(f"{b2}/alert/door-after-hours/door.side")
                            and r.on(f"{b1}/check/opening"), 15)
        assert agents[2].terminate() == 0  # zg-003 goes offline cleanly
        assert rec.wait_for(lambda r: any(p["state"] == "offline" for p in r.payloads("zg-003/status")), 10)
    finally:
        for a in agents:
            a.kill()
        rec.close()

    # everything the console needs is retained: a fresh subscriber rebuilds the board
    board = Board()
    late = Recorder(broker.port, topic_filters("halls", "zigong"))
    wanted = {f"{b1}/alert/panic/panic.1", f"{b2}/alert/door-after-hours/door.side", f"{b1}/check/opening",
              *(f"halls/zigong/ziliujing/{h}/status" for h in ("zg-001", "zg-002", "zg-003"))}
    assert late.wait_for(lambda r: wanted <= {m.topic for m in r.messages}, 10)
    for m in late.messages:
        board.apply(m.topic, m.payload)
    late.close()
    screen = board.render(now=datetime.now().astimezone())
    assert "营业厅 halls: 3" in screen and "在线 online: 0" in screen  # the simulations were stopped (killed)
    lines = screen.splitlines()
    alert_lines = [l for l in lines if "panic" in l or "door open after hours" in l]
    panic_line = next(l for l in alert_lines if "紧急报警 panic button [panic.1]" in l)
    assert panic_line.strip().startswith("I ") and "zigong/ziliujing/zg-001" in panic_line
    door_line = next(l for l in alert_lines if "door open after hours [door.side]" in l)
    assert door_line.strip().startswith("I ") and "zigong/ziliujing/zg-002" in door_line
    assert any("非营业时间门开 door open after hours [door.side]" in l for l in alert_lines)
    hall1 = next(l for l in lines if l.strip().startswith("zigong/ziliujing/zg-001"))
    assert "未通过 FAIL" in hall1  # its opening check failed (panic active, door ok)
    hall3 = next(l for l in lines if l.strip().startswith("zigong/ziliujing/zg-003"))
    assert "离线 OFFLINE" in hall3

    # a cleared alert disappears from the board
    board.apply(f"{b1}/alert/panic/panic.1", b"")
    assert "panic button" not in board.render()


def test_watch_cli_bounded_run(broker, tmp_path):
    cfg = tmp_path / "console.toml"  # a console needs no [hall]
    cfg.write_text(f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n')
    publish(broker.port, "halls/zigong/ziliujing/zg-009/status",
            '{"state":"online","ts":"2026-11-26T08:00:00.000+08:00","version":"0.1.0","reason":null}', retain=True)
    r = subprocess.run([sys.executable, "-m", "hall_agent", "watch", "-c", str(cfg), "--scope", "zigong",
                        "--seconds", "2"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "zigong/ziliujing/zg-009" in r.stdout and "在线 online" in r.stdout


# -- the pure model: order, truth when not connected, fitting the terminal -----------------------

from datetime import timedelta, timezone  # noqa: E402

from hypothesis import given, settings, strategies as st  # noqa: E402

from hall_agent.watch import Connection, check_scope, display_width, ScopeError  # noqa: E402
import json  # noqa: E402
import pytest  # noqa: E402

CST = timezone(timedelta(hours=8))
NOW = datetime(2026, 12, 1, 10, 0, tzinfo=CST)


def _alert(board, hall, rule, source, severity, priority, minutes_ago):
    raised = (NOW - timedelta(minutes=minutes_ago)).isoformat()
    board.apply(f"halls/zigong/zlj/{hall}/alert/{rule}/{source}", json.dumps({
        "ts": raised, "severity": severity, "moment": {"category": "internal", "priority": priority},
        "data": {"state": "active", "raised_at": raised, "message": "m"}}).encode())


def test_order_is_the_order_a_person_must_act_in():
    b = Board()
    _alert(b, "h1", "check-failed", "opening", "warning", 1, 300)
    _alert(b, "h1", "check-failed", "closing", "warning", 1, 200)  # newer: before the older one
    _alert(b, "h2", "co2-high", "co2", "warning", 3, 1)
    _alert(b, "h3", "equipment-unreachable", "kiosk", "critical", 2, 100)
    _alert(b, "h4", "printer-paper-low", "p", "info", 1, 0)
    _alert(b, "h5", "door-after-hours", "door.back", "critical", 1, 50)
    _alert(b, "h6", "panic", "panic.1", "critical", 1, 5)
    order = [src for (_, _, src), _ in b.ordered_alerts()]
    assert order == ["panic.1", "door.back", "kiosk", "closing", "opening", "co2", "p"]


def test_times_are_shown_in_the_halls_zone_with_the_offset():
    b = Board()
    _alert(b, "h1", "co2-high", "co2", "warning", 3, 90)
    screen = b.render(now=NOW.astimezone(timezone.utc))  # the console's own zone does not matter
    assert "08:30:00+08:00 (1.5 h)" in screen


def test_name_from_health_beside_the_id():
    b = Board()
    b.apply("halls/zigong/zlj/zg-001/health", json.dumps(
        {"ts": NOW.isoformat(), "data": {"name": "自流井营业厅", "interval_s": 60}}).encode())
    b.apply("halls/zigong/zlj/zg-001/status", json.dumps({"state": "online", "ts": NOW.isoformat()}).encode())
    assert "zigong/zlj/zg-001 自流井营业厅  在线 online" in b.render(now=NOW)


@pytest.mark.parametrize("scope", ["", "/", "a//b", "a/#", "#", "a/b+", "a/b/c/d", "a\x00b"])
def test_bad_scopes_refused(scope):
    with pytest.raises(ScopeError):
        check_scope(scope)


ALERT = st.tuples(st.sampled_from(["h1", "h2", "h3"]), st.sampled_from(["panic", "co2-high", "check-failed", "x"]),
                  st.text("abc.", min_size=1, max_size=5), st.sampled_from(["critical", "warning", "info", "?"]),
                  st.integers(0, 5), st.integers(0, 10_000))


@settings(max_examples=150, deadline=None)
@given(alerts=st.lists(ALERT, max_size=40), connected=st.booleans(), ever=st.booleans(),
       width=st.integers(30, 200), height=st.integers(3, 60))
def test_screen_fits_and_never_says_none_when_it_cannot_know(alerts, connected, ever, width, height):
    b = Board()
    for a in alerts:
        _alert(b, *a)
    conn = Connection("127.0.0.1", 1883, connected=connected, ever_connected=ever or connected,
                      since=NOW - timedelta(minutes=3))
    if not connected:
        conn.reason, conn.kind = "broker unreachable", "unreachable"
    lines = b.render_lines(conn, NOW, width, height)
    text = [t for t, _ in lines]
    assert len(text) <= height
    assert all(display_width(t) <= width for t in text)
    if not connected:
        assert not any("无 none" in t for t in text)
        assert any("NOT CONNECTED" in t for t in text)
    shown = sum(1 for t in text if "[" in t and "]" in t and not t.startswith("告警"))
    more = [t for t in text if "more 条告警" in t]
    if connected and alerts and width >= 150 and height >= 12:
        assert shown + (int(more[0].split("+")[1].split()[0]) if more else 0) == len(b.alerts)


@settings(max_examples=300, deadline=None)
@given(topic=st.text(max_size=60), payload=st.binary(max_size=80) | st.text(max_size=80).map(str.encode))
def test_garbage_never_breaks_the_board(topic, payload):
    b = Board()
    b.apply("halls/a/b/c/" + topic, payload)
    b.apply(topic, payload)
    b.render(now=NOW)


FIELDS = ["data", "moment", "priority", "severity", "category", "state", "raised_at", "ts", "message", "escalation",
          "acknowledged_by", "suppressed", "until", "reason", "name", "interval_s", "clock_synced", "result",
          "finished_at"]
JSON_LEAF = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=4) | \
    st.sampled_from(["critical", "warning", "cleared", "pass", "branch", "0001-01-01T00:00:00+14:00"])
JSON_VALUE = st.recursive(JSON_LEAF, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(FIELDS), c,
                                                                                           max_size=6), max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(msgs=st.lists(st.tuples(st.sampled_from(["status", "health", "alert/panic/p", "alert/co2-high/c",
                                                "check/opening", "check/closing"]), JSON_VALUE), max_size=6))
def test_well_formed_json_with_fields_of_the_wrong_type_never_breaks_the_board(msgs):
    """A severity, priority, category, escalation or check result that is a list or an object
    (garbage from a broken or foreign publisher) is shown as unknown; it once crashed the
    console in sorting (unhashable type: 'list')."""
    b = Board()
    for rest, doc in msgs:
        b.apply("halls/a/b/h/" + rest, json.dumps(doc).encode())
    for conn in (Connection("127.0.0.1", 1883, connected=True, since=NOW, ever_connected=True, subscribed=True),
                 Connection("127.0.0.1", 1883)):
        b.render_lines(conn, NOW, 80, 12)
    b.ack_target()


def test_an_unhashable_severity_is_shown_not_a_crash():
    b = Board()
    b.apply("halls/a/b/h/alert/panic/p", json.dumps({"severity": [], "moment": {"priority": {}, "category": []},
                                                     "data": {"escalation": [1]}}).encode())
    b.apply("halls/a/b/h/check/opening", json.dumps({"data": {"result": ["pass"]}}).encode())
    assert "b/h" in b.render(now=NOW)
