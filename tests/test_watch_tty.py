"""``hall-agent watch`` in a real terminal: tmux runs it against a real mosquitto and
the test reads the screen with ``capture-pane``."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from mqtt_helpers import Broker, free_port, publish, wait_until

TMUX = shutil.which("tmux")
CST = timezone(timedelta(hours=8))
BASE = "halls/zigong/ziliujing"


@pytest.fixture(autouse=True)
def need_tmux():
    if TMUX is None:
        pytest.fail("tmux not found: scripts/setup-env test installs it (apt-get install tmux)")


class Terminal:
    """One tmux server of our own (its own socket), one pane of a fixed size."""

    def __init__(self, tmp: Path, command: list[str], width: int = 150, height: int = 40):
        tmp.mkdir(parents=True, exist_ok=True)
        self.sock = str(tmp / "tmux.sock")
        self.exit_file = tmp / "exit-code"
        env_prefix = "env -u NO_COLOR TERM=xterm-256color "
        inner = f"{env_prefix}{shlex.join(command)}; echo $? > {shlex.quote(str(self.exit_file))}; sleep 600"
        self.tmux("-f", "/dev/null", "new-session", "-d", "-s", "w", "-x", str(width), "-y", str(height),
                  "sh", "-c", inner)
        self.tmux("set-option", "-g", "bell-action", "any")
        self.tmux("set-window-option", "-g", "monitor-bell", "on")
        self.bell_file = tmp / "bells"
        self.tmux("set-hook", "-g", "alert-bell", f"run-shell 'echo bell >> {shlex.quote(str(self.bell_file))}'")

    def tmux(self, *args: str) -> str:
        env = {**os.environ, "TERM": "xterm-256color"}
        env.pop("TMUX", None)
        return subprocess.run([TMUX, "-S", self.sock, *args], check=True, capture_output=True, text=True,
                              env=env, timeout=10).stdout

    def screen(self, escapes: bool = False) -> str:
        return self.tmux("capture-pane", "-p", *(["-e"] if escapes else []), "-t", "w")

    def wait_for(self, text: str, timeout: float = 15) -> str:
        got = {"s": ""}

        def seen():
            got["s"] = self.screen()
            return text in got["s"]
        assert wait_until(seen, timeout, 0.1), f"{text!r} never on screen:\n{got['s']}"
        return got["s"]

    def bells(self) -> int:
        """How many times the program rang the terminal bell."""
        try:
            return len(self.bell_file.read_text().split())
        except OSError:
            return 0

    def exit_code(self) -> int | None:
        try:
            return int(self.exit_file.read_text())
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        subprocess.run([TMUX, "-S", self.sock, "kill-server"], capture_output=True, timeout=10)


def watch_cmd(cfg: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "hall_agent", "watch", "-c", str(cfg), *args]


def console_config(path: Path, port: int, extra: str = "") -> Path:
    path.write_text(f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nkeepalive_s = 5\n{extra}')
    return path


def ts(dt: datetime) -> str:
    return dt.isoformat(timespec="milliseconds")


def alert(rule: str, source: str, severity: str, priority: int, raised: datetime, category: str = "internal",
          message: str = "") -> str:
    return json.dumps({"schema": 1, "id": f"{rule}-{source}", "seq": 1, "ts": ts(raised), "hall": "x",
                       "type": "alert", "source": source, "severity": severity,
                       "moment": {"category": category, "priority": priority},
                       "data": {"state": "active", "rule": rule, "message": message or f"{rule} {source}",
                                "raised_at": ts(raised)}})


def status(state: str, when: datetime, reason: str | None = None) -> str:
    return json.dumps({"state": state, "ts": ts(when), "version": "0.1.0", "reason": reason})


@pytest.fixture
def term(tmp_path):
    made: list[Terminal] = []

    def make(command, **kw):
        t = Terminal(tmp_path, command, **kw)
        made.append(t)
        return t
    yield make
    for t in made:
        t.close()


def alert_lines(screen: str) -> list[str]:
    lines = screen.splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith("告警 ACTIVE ALERTS"))
    out = []
    for l in lines[start + 1:]:
        if not l.strip():
            break
        out.append(l)
    return out


def test_dead_broker_is_not_all_clear(tmp_path, term):
    port = free_port()  # nothing listens there
    cfg = console_config(tmp_path / "c.toml", port)
    t = term(watch_cmd(cfg))
    screen = t.wait_for("NOT CONNECTED")
    assert f"127.0.0.1:{port}" in screen and "refused the connection" in screen
    assert "无 none" not in screen and "告警 alerts: ?" in screen
    assert "未知 unknown: not connected" in screen
    assert t.exit_code() is None  # interactive: shown and retried, not given up
    # --once in the same terminal: the same reason, exit 1
    t2 = Terminal(tmp_path / "once", watch_cmd(cfg, "--once"))
    try:
        assert wait_until(lambda: t2.exit_code() is not None, 20)
        assert t2.exit_code() == 1
        assert "refused the connection" in t2.screen()
    finally:
        t2.close()


def test_refused_login_is_an_error_with_its_reason(tmp_path, term):
    pw = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pw), "central", "right-pw"], check=True, capture_output=True)
    broker = Broker(tmp_path / "broker", f"allow_anonymous false\npassword_file {pw}\n").start()
    try:
        secret = tmp_path / "pw"
        secret.write_text("wrong-pw\n")
        cfg = console_config(tmp_path / "c.toml", broker.port, f'username = "central"\npassword_file = "{secret}"\n')
        t = term(watch_cmd(cfg))
        screen = t.wait_for("login refused")
        assert "NOT CONNECTED" in screen and "as central" in screen and "'central'" in screen
        assert "无 none" not in screen
        r = subprocess.run(watch_cmd(cfg, "--once"), capture_output=True, text=True, timeout=30)
        assert r.returncode == 1 and "login refused" in r.stderr
        secret.write_text("right-pw\n")  # the right password: the same console connects on its next try
        r = subprocess.run(watch_cmd(cfg, "--once"), capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and "connected to" in r.stdout and "无 none" in r.stdout
    finally:
        broker.stop()


def test_invalid_scope_exits_2_before_connecting(tmp_path, term, broker):
    cfg = console_config(tmp_path / "c.toml", broker.port)
    for n, scope in enumerate(("zigong/#", "zigong//zg-001", "a/b/c/d", "zig+ong")):
        t = Terminal(tmp_path / f"t{n}", watch_cmd(cfg, "--scope", scope))
        try:
            assert wait_until(lambda: t.exit_code() is not None, 15), t.screen()
            assert t.exit_code() == 2, t.screen()
            assert "--scope" in t.screen() and "Traceback" not in t.screen()
        finally:
            t.close()
    assert "New client connected" not in broker.log()  # refused before connecting
    # '+' as a whole level is a valid scope
    r = subprocess.run(watch_cmd(cfg, "--scope", "zigong/+/zg-001", "--once"), capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr


def test_stale_after_broker_death(tmp_path, term):
    broker = Broker(tmp_path / "broker").start()
    try:
        now = datetime.now(CST)
        publish(broker.port, f"{BASE}/zg-001/status", status("online", now - timedelta(minutes=5)), retain=True)
        publish(broker.port, f"{BASE}/zg-001/alert/co2-high/co2.hall",
                alert("co2-high", "co2.hall", "warning", 3, now - timedelta(minutes=2)), retain=True)
        cfg = console_config(tmp_path / "c.toml", broker.port)
        t = term(watch_cmd(cfg))
        screen = t.wait_for("在线 online: 1")
        assert "已连接 connected to 127.0.0.1" in screen and "在线 online: 1" in screen
        hall = next(l for l in screen.splitlines() if l.strip().startswith("zigong/ziliujing/zg-001"))
        assert "在线 online" in hall and "STALE" not in hall
        broker.stop()
        screen = t.wait_for("NOT CONNECTED")
        screen = t.wait_for("陈旧 STALE")
        assert "connection lost" in screen or "refused the connection" in screen
        hall = next(l for l in screen.splitlines() if l.strip().startswith("zigong/ziliujing/zg-001"))
        assert "last known" in hall and "STALE" in hall
        (co2,) = [l for l in alert_lines(screen) if "co2.hall" in l]
        assert "STALE" in co2
        assert "在线 online: ?" in screen and "告警 alerts: ?" in screen
        assert t.exit_code() is None
        # the broker comes back: the console reconnects by itself and the marks go
        broker.start()
        screen = t.wait_for("已连接 connected to", 40)
        assert wait_until(lambda: "STALE" not in t.screen(), 10), t.screen()
    finally:
        broker.stop()


def test_panic_among_thirty_older_alerts_goes_on_top_in_colour_with_the_bell(tmp_path, term, broker):
    now = datetime.now(CST)
    for h in range(1, 11):
        publish(broker.port, f"{BASE}/zg-{h:03d}/status", status("online", now - timedelta(hours=3)), retain=True)
    for i in range(30):  # a morning's worth of priority-I check-failed warnings and some others
        hall = f"zg-{i % 10 + 1:03d}"
        rule, sev, prio = [("check-failed", "warning", 1), ("co2-high", "warning", 3),
                           ("printer-paper-low", "info", 2)][i % 3]
        publish(broker.port, f"{BASE}/{hall}/alert/{rule}/src.{i}",
                alert(rule, f"src.{i}", sev, prio, now - timedelta(hours=3, minutes=-i)), retain=True)
    # an older critical that is not a panic: below the panic, above the warnings
    publish(broker.port, f"{BASE}/zg-004/alert/equipment-unreachable/kiosk.1",
            alert("equipment-unreachable", "kiosk.1", "critical", 2, now - timedelta(hours=2)), retain=True)
    cfg = console_config(tmp_path / "c.toml", broker.port)
    t = term(watch_cmd(cfg), height=30)
    t.wait_for("more 条告警 alerts")
    assert len(t.screen().rstrip("\n").splitlines()) <= 30
    assert wait_until(lambda: t.bells() == 1, 5)  # kiosk.1, the critical already active, rang once
    panic_at = datetime.now(CST)
    publish(broker.port, f"{BASE}/zg-007/alert/panic/panic.2",
            alert("panic", "panic.2", "critical", 1, panic_at, "emergency", "panic button panic.2 pressed"),
            retain=True)
    t.wait_for("panic.2")
    screen = t.screen()
    lines = alert_lines(screen)
    assert "紧急报警 panic button [panic.2]" in lines[0] and "zigong/ziliujing/zg-007" in lines[0]
    assert "equipment-unreachable" not in lines[0] and "[kiosk.1]" in lines[1]  # critical before warnings
    assert "开关店检查未通过 check failed" in lines[2] and "[src.27]" in lines[2]  # then priority I, newest first
    assert panic_at.strftime("%H:%M:%S") + "+08:00" in lines[0]  # the hall's time with its offset
    more = [l for l in lines if "more" in l]
    assert len(more) == 1 and more[0].strip().startswith("+")
    shown = len(lines) - 1
    assert int(more[0].split("+")[1].split()[0]) + shown == 32  # 30 + kiosk + panic
    coloured = t.screen(escapes=True)
    panic_row = next(l for l in coloured.splitlines() if "panic.2" in l)
    assert "\x1b[" in panic_row.split("panic.2")[0]  # drawn with a colour
    plain_row = next(l for l in coloured.splitlines() if "src.0]" in l or "src.1]" in l)
    assert "41m" not in plain_row and "41m" in panic_row
    assert wait_until(lambda: t.bells() == 2, 5)  # the panic rang
    # a warning arriving does not ring; redraws do not ring again
    publish(broker.port, f"{BASE}/zg-002/alert/co2-high/co2.x", alert("co2-high", "co2.x", "warning", 3, now),
            retain=True)
    t.wait_for("[co2.x]")
    assert not wait_until(lambda: t.bells() > 2, 2.5)


def test_no_bell_switch(tmp_path, term, broker):
    cfg = console_config(tmp_path / "c.toml", broker.port)
    t = term(watch_cmd(cfg, "--no-bell"))
    t.wait_for("已连接 connected")
    publish(broker.port, f"{BASE}/zg-001/alert/panic/panic.1",
            alert("panic", "panic.1", "critical", 1, datetime.now(CST), "emergency"), retain=True)
    t.wait_for("panic.1")
    assert not wait_until(lambda: t.bells() > 0, 2)


def test_silent_offline_and_unsynced_halls_are_marked(tmp_path, term, broker):
    now = datetime.now(CST)
    health = lambda when, **data: json.dumps({"schema": 1, "id": "h", "seq": 1, "ts": ts(when), "hall": "x",
                                              "type": "health", "source": "agent", "severity": "info",
                                              "moment": None, "data": {"interval_s": 60, **data}})
    publish(broker.port, f"{BASE}/zg-001/status", status("online", now - timedelta(hours=1)), retain=True)
    publish(broker.port, f"{BASE}/zg-001/health", health(now - timedelta(minutes=4), name="自流井营业厅"), retain=True)
    publish(broker.port, f"{BASE}/zg-002/status", status("offline", now - timedelta(minutes=7), "connection-lost"),
            retain=True)
    publish(broker.port, f"{BASE}/zg-003/status", status("online", now), retain=True)
    publish(broker.port, f"{BASE}/zg-003/health", health(now, clock_synced=False), retain=True)
    publish(broker.port, f"{BASE}/zg-004/status", status("online", now), retain=True)
    publish(broker.port, f"{BASE}/zg-004/health", health(now - timedelta(seconds=30)), retain=True)
    cfg = console_config(tmp_path / "c.toml", broker.port)
    t = term(watch_cmd(cfg))
    screen = t.wait_for("zg-004")
    row = {h: next(l for l in screen.splitlines() if l.strip().startswith(f"zigong/ziliujing/{h}"))
           for h in ("zg-001", "zg-002", "zg-003", "zg-004")}
    assert "自流井营业厅" in row["zg-001"] and "SILENT" in row["zg-001"] and "4 min" in row["zg-001"]
    assert "OFFLINE" in row["zg-002"] and "connection-lost" in row["zg-002"] and "+08:00" in row["zg-002"]
    assert "CLOCK NOT SYNCED" in row["zg-003"] and "SILENT" not in row["zg-003"]
    assert "在线 online" in row["zg-004"] and "SILENT" not in row["zg-004"] and "CLOCK" not in row["zg-004"]


def test_broker_that_never_answers_connect(tmp_path, term):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])  # accept, say nothing (a TLS port read as plain MQTT)
            except OSError:
                pass
    th = threading.Thread(target=accept, daemon=True)
    th.start()
    try:
        cfg = console_config(tmp_path / "c.toml", srv.getsockname()[1])
        t = term(watch_cmd(cfg))
        screen = t.wait_for("no CONNACK", 30)
        assert "is it a TLS port? tls = false" in screen and "无 none" not in screen
    finally:
        stop.set()
        th.join()
        for s in held:
            s.close()
        srv.close()


def test_tls_failure_is_an_error(tmp_path, broker):
    cfg = console_config(tmp_path / "c.toml", broker.port, "tls = true\n")  # a plain port spoken to in TLS
    r = subprocess.run(watch_cmd(cfg, "--once"), capture_output=True, text=True, timeout=40)
    assert r.returncode == 1 and "TLS failure" in r.stderr and "Traceback" not in r.stderr
    assert "无 none" not in r.stdout and "TLS failure" in r.stdout
