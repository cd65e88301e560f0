"""The agent on an injected clock: envelopes made before sync are marked, health and
status carry the clock and calendar facts, the clock and calendar alerts."""

import json
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from hall_agent.agent import Agent
from hall_agent.calendar import BusinessCalendar
from hall_agent.clock import FakeClock
from hall_agent.config import validate
from hall_agent.config.models import HoursSection
from hall_agent.rules.engine import CLOCK_UNSYNCED_S
from mqtt_helpers import Recorder, wait_until

SH = ZoneInfo("Asia/Shanghai")
BASE = "halls/zigong/ziliujing/zg-001"
pytestmark = pytest.mark.timeout(60)


def settings(tmp_path, port, **extra):
    data = {"hall": {"id": "zg-001", "city": "zigong", "branch": "ziliujing"},
            "mqtt": {"host": "127.0.0.1", "port": port, "drain_s": 1},
            "storage": {"dir": str(tmp_path / "s")}, "agent": {"health_interval_s": 1},
            "inputs": [{"id": "door.front", "kind": "door", "pin": 17}]}
    data.update(extra)
    return validate(data)


def official_until() -> date:
    """The last date the installed holidays package has the official CN schedule of."""
    until = BusinessCalendar(HoursSection(), "Asia/Shanghai").confirmed_until(date(2026, 6, 1))
    assert until is not None
    return until


def test_before_sync_envelopes_say_so_and_health_carries_clock_and_calendar(tmp_path, broker, monkeypatch):
    monkeypatch.setenv("HALL_AGENT_SCHEDULE", "0")
    until = official_until()
    clock = FakeClock(datetime.combine(until - timedelta(days=10), datetime.min.time(), SH).replace(hour=9),
                      synced=False)
    rec = Recorder(broker.port, [f"{BASE}/#"])
    agent = Agent(settings(tmp_path, broker.port), simulate=True, clock=clock)
    agent.start()
    try:
        assert rec.wait_for(lambda r: r.payloads("/health"))
        first = rec.payloads("/event")[0]
        assert first["data"]["event"] == "started" and first["clock_synced"] is False
        health = rec.payloads("/health")[-1]
        assert health["clock_synced"] is False and health["data"]["clock_synced"] is False
        assert agent.status()["clock_synced"] is False
        # no calendar verdict on an unsynchronised clock: it may be a year off
        assert not rec.payloads("/alert/calendar-unconfirmed/calendar")
        clock.set_synced(True)
        agent.calendar_tick()
        assert rec.wait_for(lambda r: any(p["data"]["calendar_confirmed_until"] == until.isoformat()
                                          and "clock_synced" not in p for p in r.payloads("/health")))
        assert rec.wait_for(lambda r: r.payloads("/alert/calendar-unconfirmed/calendar"))
        alert = rec.payloads("/alert/calendar-unconfirmed/calendar")[-1]
        assert (alert["severity"], alert["moment"]) == ("warning", {"category": "system", "priority": 2})
        first_unknown = (until + timedelta(days=1)).isoformat()
        assert alert["data"]["state"] == "active" and first_unknown in alert["data"]["message"]
        assert "holidays" in alert["data"]["message"] and "[hours] closed" in alert["data"]["message"]
    finally:
        agent.stop()
        rec.close()


def test_calendar_unconfirmed_is_cleared_when_the_config_covers_the_year(tmp_path, broker, monkeypatch):
    monkeypatch.setenv("HALL_AGENT_SCHEDULE", "0")
    until = official_until()
    next_year = until.year + 1
    clock = FakeClock(datetime(until.year, 12, 20, 9, 0, tzinfo=SH))
    cfg = tmp_path / "c.toml"
    head = (f'[hall]\nid="zg-001"\ncity="zigong"\nbranch="ziliujing"\n[mqtt]\nport={broker.port}\n'
            f'host="127.0.0.1"\ndrain_s=1\n[storage]\ndir="{tmp_path / "s"}"\n')
    cfg.write_text(head)
    from hall_agent.config import load
    rec = Recorder(broker.port, [f"{BASE}/alert/#"])
    agent = Agent(load(cfg), simulate=True, config_path=str(cfg), clock=clock)
    agent.start()
    try:
        agent.calendar_tick()
        assert rec.wait_for(lambda r: r.payloads("/alert/calendar-unconfirmed/calendar"))
        cfg.write_text(head + f'[hours]\nclosed=[{next_year}-02-11, {next_year}-02-12]\n')
        agent.reload()
        assert rec.wait_for(lambda r: any(p.get("data", {}).get("state") == "cleared"
                                          for p in r.payloads("/alert/calendar-unconfirmed/calendar")))
        assert agent.calendar_confirmed_until() == f"{next_year}-12-31"
    finally:
        agent.stop()
        rec.close()


def test_an_agent_whose_clock_never_syncs_holds_clock_unsynced(tmp_path, broker, monkeypatch):
    """A hall whose firewall blocks NTP: after 10 minutes the centre sees it."""
    monkeypatch.setenv("HALL_AGENT_SCHEDULE", "0")
    clock = FakeClock(datetime(2026, 7, 1, 21, 5, tzinfo=SH), synced=False)
    rec = Recorder(broker.port, [f"{BASE}/alert/#"])
    agent = Agent(settings(tmp_path, broker.port), simulate=True, clock=clock)
    agent.start()
    try:
        agent.alerts.feed(agent.engine.tick)
        assert ("clock-unsynced", "clock") not in agent.engine.active
        clock.advance(CLOCK_UNSYNCED_S)
        agent.alerts.feed(agent.engine.tick)
        assert rec.wait_for(lambda r: r.payloads("/alert/clock-unsynced/clock"))
        alert = rec.payloads("/alert/clock-unsynced/clock")[-1]
        assert (alert["severity"], alert["moment"], alert["clock_synced"]) == \
            ("warning", {"category": "system", "priority": 1}, False)
        clock.set_synced(True)
        agent.alerts.feed(agent.engine.tick)
        assert rec.wait_for(lambda r: any(p.get("data", {}).get("state") == "cleared"
                                          for p in r.payloads("/alert/clock-unsynced/clock")))
    finally:
        agent.stop()
        rec.close()


def test_require_time_sync_false_trusts_the_clock(tmp_path):
    s = settings(tmp_path, 1, checks={"require_time_sync": False})
    assert Agent._system_clock(s, simulate=False).synced() is True


def test_doctor_reports_an_unconfirmed_calendar(tmp_path):
    from hall_agent.doctor import check_calendar
    until = official_until()
    s = settings(tmp_path, 1)
    (soon,) = check_calendar(s, today=until - timedelta(days=10))
    assert not soon.ok and (until + timedelta(days=1)).isoformat() in soon.detail and "holidays" in soon.fix
    (early,) = check_calendar(s, today=until - timedelta(days=60))
    assert early.ok and until.isoformat() in early.detail


def test_the_second_pass_runs_at_the_faked_date_and_locale():
    """.ci/run's second pass: the wall clock really is the faked date (time-machine) while the
    monotonic clock and sleeps are real, and the locale is Chinese."""
    import locale
    import os
    import time
    when = os.environ.get("HALL_AGENT_TEST_NOW")
    if not when:
        pytest.skip("HALL_AGENT_TEST_NOW is not set: only .ci/run's second pass fakes the date")
    target = datetime.fromisoformat(when)
    assert abs(datetime.now(SH) - target) < timedelta(hours=1)
    assert abs(time.time() - target.timestamp()) < 3600
    m0 = time.monotonic()
    time.sleep(0.05)
    assert 0.04 < time.monotonic() - m0 < 5
    if os.environ.get("LC_ALL", "").startswith("zh_CN"):
        saved = locale.setlocale(locale.LC_ALL)
        try:
            assert locale.setlocale(locale.LC_ALL, "").lower().startswith("zh_cn")
        finally:
            locale.setlocale(locale.LC_ALL, saved)


def test_an_ntp_step_in_a_running_agent_raises_nothing(tmp_path, broker, monkeypatch):
    """A door opened in hours, then NTP steps the Pi's clock 2 h forward: held_open_s is
    measured on the monotonic clock, so no door-held-open (nor any other alert) follows."""
    monkeypatch.setenv("HALL_AGENT_SCHEDULE", "0")
    clock = FakeClock(datetime(2026, 7, 1, 10, 0, tzinfo=SH))  # a Wednesday morning, open
    agent = Agent(settings(tmp_path, broker.port, hours={"holidays": ""}), simulate=True, clock=clock)
    agent.start()
    try:
        agent.hardware.control_input("door.front", "open", agent.devices)
        assert wait_until(lambda: agent.devices.inputs["door.front"].state == "open", 5)
        clock.step(2 * 3600)
        agent.alerts.feed(agent.engine.tick)
        clock.step(-3 * 3600)  # and back (to 09:00: still in hours)
        agent.alerts.feed(agent.engine.tick)
        assert [k for k in agent.engine.active if k[0].startswith("door")] == []
        clock.advance(120)  # two real minutes: now it has been held open
        agent.alerts.feed(agent.engine.tick)
        assert ("door-held-open", "door.front") in agent.engine.active
    finally:
        agent.stop()
