"""The systemd unit, sd_notify and the watchdog."""

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from hall_agent.agent import Agent
from hall_agent.config import validate
from hall_agent.systemd import Loop, ServiceStatus, Watchdog, notify
from mqtt_helpers import AgentProcess, Recorder, wait_until, write_config

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "hall-agent.service"


@pytest.fixture
def notify_socket(tmp_path):
    path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(0.1)
    def drain():
        """The messages received since the last call."""
        messages = []
        while True:
            try:
                messages.append(s.recv(4096).decode())
            except (socket.timeout, BlockingIOError):
                return messages
    yield path, drain
    s.close()


def test_unit_passes_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze missing: apt-get install systemd"
    exe = tmp_path / "hall-agent"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    unit = tmp_path / "hall-agent.service"
    text = UNIT.read_text()
    assert "/opt/hall-agent/bin/hall-agent" in text
    unit.write_text(text.replace("/opt/hall-agent/bin/hall-agent", str(exe)))
    r = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr.strip() == "" and r.stdout.strip() == "", r.stderr
    for line in ("Type=notify", "WatchdogSec=", "Restart=always", "User=hall-agent",
                 "SupplementaryGroups=gpio i2c dialout", "StateDirectory=hall-agent",
                 "ConfigurationDirectory=hall-agent", "ProtectSystem=strict", "NoNewPrivileges=yes",
                 "WorkingDirectory=/var/lib/hall-agent"):
        assert line in text


def test_notify_sends_datagrams(notify_socket):
    path, drain = notify_socket
    assert notify("READY=1", path) is True
    assert drain() == ["READY=1"]
    assert notify("READY=1", None) is (bool(os.environ.get("NOTIFY_SOCKET")))


def test_agent_reports_ready_and_stopping(broker, tmp_path, notify_socket):
    path, drain = notify_socket
    cfg = write_config(tmp_path / "c.toml", broker.port, tmp_path / "state")
    agent = AgentProcess(cfg, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}).start()
    try:
        seen = []
        assert wait_until(lambda: any(m.startswith("READY=1") for m in seen.extend(drain()) or seen), 15)
        time.sleep(0.7)
        assert drain().count("WATCHDOG=1") >= 2  # fed every WATCHDOG_USEC / 2 while healthy
        assert agent.terminate() == 0
        assert "STOPPING=1" in drain()
    finally:
        agent.kill()


def test_watchdog_is_not_fed_while_a_loop_stalls(broker, tmp_path, notify_socket):
    path, drain = notify_socket
    settings = validate({"hall": {"id": "zg-001", "city": "zigong", "branch": "ziliujing"},
                         "mqtt": {"host": "127.0.0.1", "port": broker.port, "drain_s": 1},
                         "storage": {"dir": str(tmp_path / "state")},
                         "sensors": [{"id": "env", "driver": "sht3x", "interval_s": 0.2}]})
    agent = Agent(settings, simulate=True)
    agent.start()
    loops = [Loop(l.name, l.heartbeat, 2.5) for l in agent.loops()]
    dog = Watchdog(loops, 0.2, send=lambda m: notify(m, path))
    dog.start()
    try:
        fed = []
        assert wait_until(lambda: (fed.extend(drain()) or fed).count("WATCHDOG=1") >= 3, 5)
        with agent.alerts.lock:  # the rules tick blocks on this lock: a stalled loop
            time.sleep(3.5)
            drain()
            time.sleep(1.0)
            during = drain()
        assert "WATCHDOG=1" not in during and any("rules-tick" in m for m in during + dog.stalled)
        assert wait_until(lambda: "WATCHDOG=1" in drain(), 5)  # fed again once it moves
    finally:
        dog.stop()
        agent.stop()


def _unit_directives() -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, value = line.split("=", 1)
            directives.setdefault(key, []).append(value)
    return directives


def test_unit_starts_at_boot_without_waiting_for_the_network_or_the_clock():
    """Issue 22.1: ordered after network-online.target, the agent (doors, panic buttons)
    started only when systemd-networkd-wait-online gave up, 2 minutes after a boot with
    the LAN down. deploy/test-systemd boots it that way for real."""
    d = _unit_directives()
    waits = {"network-online.target", "time-sync.target", "systemd-networkd-wait-online.service",
             "NetworkManager-wait-online.service", "systemd-time-wait-sync.service"}
    for key in ("After", "Requires", "Wants", "BindsTo", "Requisite"):
        named = {u for v in d.get(key, []) for u in v.split()}
        assert not named & waits, f"{key}= names {named & waits}"
    assert "network.target" in " ".join(d["After"])  # stop before the network goes down


def test_unit_never_gives_up_restarting():
    """Issue 22.2: after 10 failed starts systemd stopped restarting, and a hall whose
    configuration was fixed remotely stayed dead. deploy/test-systemd proves the recovery."""
    d = _unit_directives()
    assert d["StartLimitIntervalSec"] == ["0"] and d["Restart"] == ["always"]


def test_status_after_a_reload_still_says_the_agent_runs(broker, tmp_path, notify_socket):
    """Issue 22.7: after `systemctl reload` the status was only 'configuration reloaded'."""
    import signal as _signal
    path, drain = notify_socket
    cfg = write_config(tmp_path / "c.toml", broker.port, tmp_path / "state")
    agent = AgentProcess(cfg, env={"NOTIFY_SOCKET": path}).start()
    statuses = lambda ms: [line[7:] for m in ms for line in m.splitlines() if line.startswith("STATUS=")]
    try:
        seen = []
        assert wait_until(lambda: any(m.startswith("READY=1") for m in seen.extend(drain()) or seen), 15)
        assert statuses(seen) == ["running for hall zg-001"]
        agent.proc.send_signal(_signal.SIGHUP)
        got = []
        assert wait_until(lambda: statuses(got.extend(drain()) or got), 10)
        assert statuses(got) == ["running for hall zg-001; configuration reloaded"]
        cfg.write_text(cfg.read_text().replace("drain_s = 3", "drain_s = 'soon'"))
        agent.proc.send_signal(_signal.SIGHUP)
        got = []
        assert wait_until(lambda: statuses(got.extend(drain()) or got), 10)
        (refused,) = statuses(got)
        assert refused.startswith("running for hall zg-001; reload refused (1 problem(s)"), refused
    finally:
        agent.kill()


def test_watchdog_status_note_is_cleared_when_the_loops_move_again():
    sent = []
    status = ServiceStatus(send=lambda m: sent.append(m) or True)
    status.set_state("running for hall zg-001")
    beat = [0.0]
    now = [0.0]
    dog = Watchdog([Loop("rules-tick", lambda: beat[0], 5)], 1, send=sent.append, clock=lambda: now[0],
                   status=status)
    for t, b in ((1, 1), (10, 1), (11, 1), (12, 12)):  # stalls at 10 s, moves again at 12 s
        now[0], beat[0] = t, b
        dog._run_once(dog.check())
    assert sent == ["STATUS=running for hall zg-001", "WATCHDOG=1",
                    "STATUS=running for hall zg-001; stalled: rules-tick (9 s)",
                    "WATCHDOG=1", "STATUS=running for hall zg-001"]
