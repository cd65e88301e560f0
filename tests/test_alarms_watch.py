"""hall-agent watch shows an alert's handling and acknowledges with the a key (--operator)."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone

from hall_agent.watch import Board, Console, Keys
from mqtt_helpers import CLOSED_HOURS, AgentProcess, Recorder, wait_until, write_config

CST = timezone(timedelta(hours=8))
NOW = datetime(2026, 12, 1, 22, 30, tzinfo=CST)
BASE = "halls/zigong/ziliujing/zg-001"


def alert(board: Board, rule: str, source: str, priority: int = 1, severity: str = "critical", **handling):
    raised = (NOW - timedelta(minutes=5)).isoformat(timespec="milliseconds")
    data = {"state": "active", "rule": rule, "message": "m", "raised_at": raised, "acknowledged_by": None,
            "acknowledged_at": None, "note": None, "suppressed": None, "flapping": False,
            "escalation": "hall" if priority == 1 else None, "drill": False, **handling}
    board.apply(f"{BASE}/alert/{rule}/{source}", json.dumps({
        "ts": raised, "severity": severity, "source": source, "moment": {"category": "emergency", "priority": priority},
        "data": data}).encode())


def line(screen: str, source: str) -> str:
    return next(x for x in screen.splitlines() if f"[{source}]" in x)


def test_the_board_shows_each_handling_field_and_ranks_suppressed_alerts_down():
    b = Board()
    alert(b, "door-after-hours", "door.back", suppressed={"reason": "cleaners", "by": "config",
                                                          "until": "2026-12-02T02:00:00.000+08:00"})
    alert(b, "door-after-hours", "door.side", escalation="city")
    alert(b, "panic", "panic.1", drill=True)
    alert(b, "printer-paper-out", "printer.q", acknowledged_by="op7", acknowledged_at=NOW.isoformat(),
          note="roll on its way", escalation="branch")
    alert(b, "sensor-fault", "co2.a", priority=2, severity="warning", flapping=True)
    screen = b.render(now=NOW, width=400)
    assert "已上报市公司 ESCALATED city" in line(screen, "door.side") and "未确认 unacknowledged" in line(screen, "door.side")
    assert "维护中 suppressed (cleaners, until 2026-12-02 02:00:00+08:00)" in line(screen, "door.back")
    assert "演练 DRILL" in line(screen, "panic.1")
    ack = line(screen, "printer.q")
    assert "已确认 ack op7 22:30:00+08:00 \"roll on its way\"" in ack and "ESCALATED branch" in ack
    assert "抖动 flapping" in line(screen, "co2.a")
    order = [src for (_, _, src), _ in b.ordered_alerts()]
    assert order[-1] == "door.back"  # a window covers it: below everything else
    assert b.ack_target() == (BASE, "door-after-hours", order[0])  # the first on screen
    b.apply(f"{BASE}/alert/door-after-hours/door.side", b"")
    assert b.ack_target() == (BASE, "panic", "panic.1")  # the next nobody acknowledged (printer.q is)


def test_keys_reads_one_key_at_a_time_from_a_terminal_and_restores_it():
    import termios
    master, slave = os.openpty()
    stream = os.fdopen(slave, "rb", buffering=0)
    before = termios.tcgetattr(slave)
    keys = Keys(stream)
    try:
        assert keys.saved is not None
        assert not termios.tcgetattr(slave)[3] & termios.ICANON  # cbreak: no Enter needed
        assert keys.read(0.05) is None
        os.write(master, b"a")
        assert keys.read(2) == "a"
    finally:
        keys.close()
        assert termios.tcgetattr(slave) == before
        stream.close()
        os.close(master)
    assert Keys(open(os.devnull, "rb")).saved is None  # no terminal: no keys


HALL = CLOSED_HOURS + """holidays = ""
[[inputs]]
id = "panic.1"
kind = "panic"
pin = 22
contact = "nc"
"""


def test_a_acknowledges_the_first_unacknowledged_alert_as_the_operator(broker, tmp_path):
    from hall_agent.config import validate
    cfg = write_config(tmp_path / "c.toml", broker.port, tmp_path / "state", HALL)
    rec = Recorder(broker.port, [f"{BASE}/alert/#", f"{BASE}/status", f"{BASE}/event"])
    agent = AgentProcess(cfg, "--simulate").start()
    console = nobody = None
    try:
        assert rec.wait_for(lambda r: r.payloads("/status"), 20), agent.output()
        from mqtt_helpers import publish
        publish(broker.port, f"{BASE}/sim/input/panic.1", "pressed")
        assert rec.wait_for(lambda r: r.on("/alert/panic/panic.1"), 15)
        settings = validate({"hall": {"id": "console", "city": "central", "branch": "central"},
                             "mqtt": {"host": "127.0.0.1", "port": broker.port}})
        nobody = Console(settings, "zigong").start()
        assert wait_until(lambda: nobody.loaded() and nobody.board.alerts, 10)
        nobody.key("a")
        assert "--operator" in nobody.status  # no operator id: nothing sent
        console = Console(settings, "zigong", operator="op-0427").start()
        assert wait_until(lambda: console.loaded() and console.board.alerts, 10)
        assert "a = 确认 acknowledge" in console.screen(200, None, False)
        console.key("a")
        assert "ack sent" in console.status and "panic/panic.1" in console.status
        assert wait_until(lambda: (console.board.alerts.get((BASE, "panic", "panic.1")) or {})
                          .get("data", {}).get("acknowledged_by") == "op-0427", 10)
        assert "已确认 ack op-0427" in console.screen(300, None, False)
        console.key("a")
        assert "no unacknowledged alert" in console.status
        commands = [p["data"] for p in rec.payloads("/event") if p["type"] == "command"]
        assert [(c["command"], c["ok"], c["args"]["by"]) for c in commands] == [("ack", True, "op-0427")]
    finally:
        for c in (console, nobody):
            if c is not None:
                c.stop()
        agent.kill()
        rec.close()
