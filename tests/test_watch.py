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
    assert topic_filters("halls", "zigong/ziliujing")[1] == "halls/zigong/ziliujing/+/alert/#"
    assert topic_filters("halls", "zigong/ziliujing/zg-001")[2] == "halls/zigong/ziliujing/zg-001/check/+"


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
    assert late.wait_for(lambda r: len({m.topic for m in r.messages}) >= 7, 10)  # 3 status, 3 alerts, 1 check
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
