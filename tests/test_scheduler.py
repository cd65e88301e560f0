"""Scheduling the checks with a controlled clock."""

import threading
import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from hall_agent.calendar import BusinessCalendar
from hall_agent.clock import FakeClock
from hall_agent.config.models import HoursSection
from hall_agent.scheduler import TIME_ERROR, CheckScheduler, TimeSync, plan
from mqtt_helpers import wait_until

SH = ZoneInfo("Asia/Shanghai")
CAL = BusinessCalendar(HoursSection(holidays=""), "Asia/Shanghai", 30, 15)  # 08:30-17:30 every day
GRACE = timedelta(minutes=20)


def test_plan_puts_runs_at_the_right_local_time():
    planned, missed = plan(CAL, datetime(2026, 11, 27, 6, 0, tzinfo=SH), GRACE, set())
    assert [(p.run.kind, p.fire_at.isoformat()) for p in planned[:2]] == [
        ("opening", "2026-11-27T08:00:00+08:00"), ("closing", "2026-11-27T17:45:00+08:00")]
    assert missed == []


def test_misfire_within_grace_runs_late_beyond_grace_is_skipped():
    # the Pi was down at 08:00 and comes back at 08:15: within 20 minutes, the opening check runs now
    now = datetime(2026, 11, 27, 8, 15, tzinfo=SH)
    planned, missed = plan(CAL, now, GRACE, set())
    assert (planned[0].run.kind, planned[0].run.at.hour, planned[0].fire_at) == ("opening", 8, now)
    # back at 08:25: 25 minutes late, beyond grace: skipped (and said so)
    planned, missed = plan(CAL, datetime(2026, 11, 27, 8, 25, tzinfo=SH), GRACE, set())
    assert planned[0].run.kind == "closing" and [m.kind for m in missed] == ["opening"]


def test_a_run_already_done_is_not_repeated_after_a_restart():
    now = datetime(2026, 11, 27, 8, 5, tzinfo=SH)
    planned, _ = plan(CAL, now, GRACE, {"opening@2026-11-27T08:00:00+08:00"})
    assert planned[0].run.kind == "closing"


def test_time_sync_detection():
    assert TimeSync(flag_file="/nonexistent", adjtimex=lambda: TIME_ERROR).synchronised() is False
    assert TimeSync(flag_file="/nonexistent", adjtimex=lambda: 0).synchronised() is True


def sync_wait(sched, fired, n, clock=None):
    """Drive the scheduler by hand: run what is due by its clock, then let the executor's
    thread finish (the test's thread waits; the clock does not move by itself)."""
    sched.scheduler.run_pending()
    wait_until(lambda: len(fired) >= n, timeout=5)


def test_no_job_until_the_clock_is_synchronised_then_late_runs_fire(tmp_path):
    """On the injected clock only: passes on any real date (it once fixed "now" while
    APScheduler judged misfires by the real clock, and failed after 2026-11-27)."""
    fired = []
    clock = FakeClock(datetime(2026, 11, 27, 8, 10, tzinfo=SH), synced=False)  # the 08:00 opening: 10 min late
    sched = CheckScheduler(CAL, fired.append, tmp_path / "done.json", grace_min=20, require_sync=True,
                           clock=clock, thread=False)
    sched.start()
    try:
        assert sched.waiting_for_clock and sched.jobs() == []
        assert sched.poll_clock() is False
        sched.scheduler.run_pending()
        assert fired == []  # held while the clock is not synchronised
        clock.set_synced(True)
        assert sched.poll_clock() is True
        sync_wait(sched, fired, 1)  # the late opening check fires at once
        assert [(r.kind, r.at.isoformat()) for r in fired] == [("opening", "2026-11-27T08:00:00+08:00")]
        closing = [j for j in sched.scheduler.get_jobs() if j.id.startswith("closing@2026-11-27")][0]
        assert closing.next_run_time.isoformat() == "2026-11-27T17:45:00+08:00"
        # the clock reaches the closing time: it fires then, not before
        clock.advance(9 * 3600 + 34 * 60)
        sched.scheduler.run_pending()
        assert len(fired) == 1
        clock.advance(60)
        sync_wait(sched, fired, 2)
        assert fired[1].kind == "closing"
    finally:
        sched.stop()
    # restarted (at 08:11 again: a clock set back): both checks of the day are done, not repeated
    again = CheckScheduler(CAL, fired.append, tmp_path / "done.json", grace_min=20, require_sync=False,
                           clock=FakeClock(datetime(2026, 11, 27, 8, 11, tzinfo=SH)), thread=False)
    planned = again.rebuild()
    assert planned[0].key == "opening@2026-11-28T08:00:00+08:00"


def test_a_job_reached_beyond_grace_is_skipped_by_the_injected_clock(tmp_path, caplog):
    """The Pi slept (or the clock stepped) past a planned run: more than misfire_grace_min
    late by the agent's clock, the check is skipped and said so."""
    fired = []
    clock = FakeClock(datetime(2026, 11, 27, 6, 0, tzinfo=SH))
    sched = CheckScheduler(CAL, fired.append, tmp_path / "d.json", 20, require_sync=False, clock=clock,
                           thread=False)
    sched.start()
    try:
        clock.step(2 * 3600 + 30 * 60)  # 08:30: the 08:00 opening is 30 minutes late
        with caplog.at_level("WARNING"):
            sched.scheduler.run_pending()
            time.sleep(0.3)
        assert fired == [] and "late" in caplog.text
    finally:
        sched.stop()


def test_the_threaded_scheduler_fires_on_the_injected_clock(tmp_path):
    """The scheduler's own thread asks the injected clock (not datetime.now()): a job
    due by that clock fires although the real date is another."""
    fired = threading.Event()
    clock = FakeClock(datetime(2031, 3, 3, 7, 59, 59, tzinfo=SH))
    sched = CheckScheduler(CAL, lambda run: fired.set(), tmp_path / "d.json", 20, require_sync=False,
                           clock=clock)
    sched.scheduler.max_wait_s = 0.05
    sched.start()
    try:
        assert "opening@2031-03-03T08:00:00+08:00" in sched.jobs()
        assert not fired.wait(0.3)
        clock.advance(2)
        assert fired.wait(5)
    finally:
        sched.stop()


def test_require_time_sync_false_schedules_at_once(tmp_path):
    sched = CheckScheduler(CAL, lambda run: None, tmp_path / "d.json", 20, require_sync=False,
                           clock=FakeClock(datetime(2026, 11, 27, 6, 0, tzinfo=SH), synced=False), thread=False)
    sched.start()
    try:
        assert "opening@2026-11-27T08:00:00+08:00" in sched.jobs()
    finally:
        sched.stop()


def test_done_marks_are_kept_by_run_time_not_by_name(tmp_path):
    """After weeks of running the closing checks are still marked done: the marks kept are
    the latest by run time (every closing@ key sorts before every opening@ one)."""
    clock = FakeClock(datetime(2026, 1, 1, 6, 0, tzinfo=SH))
    sched = CheckScheduler(CAL, lambda run: None, tmp_path / "d.json", 20, require_sync=False, clock=clock,
                           thread=False)
    for p in plan(CAL, clock.now(SH), GRACE, set(), days=60)[0]:
        sched._mark_done(p)
    late = plan(CAL, datetime(2026, 2, 28, 6, 0, tzinfo=SH), GRACE, set())[0][:2]
    assert [p.run.kind for p in late] == ["opening", "closing"]
    assert all(p.key in sched._done() for p in late)


def test_sighup_reload_reschedules_with_new_hours(tmp_path):
    from hall_agent.agent import Agent
    from hall_agent.config import load
    cfg = tmp_path / "c.toml"
    base = ('[hall]\nid="zg-001"\ncity="zigong"\nbranch="ziliujing"\n[mqtt]\nport=1\n'
            f'[storage]\ndir="{tmp_path / "s"}"\n[checks]\nrequire_time_sync=false\n')
    cfg.write_text(base + '[hours]\nholidays=""\n')
    agent = Agent(load(cfg), config_path=str(cfg), clock=FakeClock(datetime(2026, 11, 27, 6, 0, tzinfo=SH)))
    agent.scheduler.start()
    try:
        assert "opening@2026-11-27T08:00:00+08:00" in agent.scheduler.jobs()
        cfg.write_text(base + '[hours]\nholidays=""\nfriday="10:00-16:00"\n')
        agent.reload()
        jobs = agent.scheduler.jobs()
        assert "opening@2026-11-27T09:30:00+08:00" in jobs and "opening@2026-11-27T08:00:00+08:00" not in jobs
        cfg.write_text(base + '[hours]\nfriday="nonsense"\n')
        agent.reload()  # refused: the running schedule stays
        assert agent.scheduler.jobs() == jobs
        # [checks] is applied too (it was announced as "rescheduled" and kept the old values)
        cfg.write_text(base.replace("require_time_sync=false", "require_time_sync=false\nsettle_s=3\n"
                                    "misfire_grace_min=5\nopening_lead_min=45")
                       + '[hours]\nholidays=""\nfriday="10:00-16:00"\n')
        agent.reload()
        assert agent.checks.settings.checks.settle_s == 3 and agent.settings.checks.misfire_grace_min == 5
        # the settle time of equipment switched on by the `power` command too (it read the old [checks])
        assert agent.devices.settings.checks.settle_s == 3
        assert agent.scheduler.grace == timedelta(minutes=5)
        assert "opening@2026-11-27T09:15:00+08:00" in agent.scheduler.jobs()
    finally:
        agent.scheduler.stop()
        agent.outbox.close()


def test_time_sync_falls_back_to_timedated_when_adjtimex_is_filtered(tmp_path):
    def filtered():
        raise PermissionError(1, "Operation not permitted")  # seccomp under ProtectClock=yes
    fake = tmp_path / "timedatectl"
    fake.write_text('#!/bin/sh\n[ "$*" = "show -p NTPSynchronized --value" ] && echo yes\n')
    fake.chmod(0o755)
    assert TimeSync(flag_file="/nonexistent", adjtimex=filtered, timedatectl=str(fake)).synchronised() is True
    fake.write_text("#!/bin/sh\necho no\n")
    assert TimeSync(flag_file="/nonexistent", adjtimex=filtered, timedatectl=str(fake)).synchronised() is False
    assert TimeSync(flag_file="/nonexistent", adjtimex=filtered,
                    timedatectl=str(tmp_path / "missing")).synchronised() is False


def test_the_agent_runs_its_check_schedule_unless_told_not_to(tmp_path, monkeypatch, broker):
    """The agent starts its scheduler with the calendar's jobs; HALL_AGENT_SCHEDULE=0 (the
    tests' setting, so that no test depends on the time of day) leaves it stopped."""
    from hall_agent.agent import Agent
    from hall_agent.config import validate
    settings = validate({"hall": {"id": "zg-001", "city": "zigong", "branch": "ziliujing"},
                         "mqtt": {"host": "127.0.0.1", "port": broker.port, "drain_s": 1},
                         "storage": {"dir": str(tmp_path / "s")}, "hours": {"holidays": ""},
                         "checks": {"require_time_sync": False}})
    for env, running in (("1", True), ("0", False)):
        monkeypatch.setenv("HALL_AGENT_SCHEDULE", env)
        agent = Agent(settings, simulate=True)
        agent.start()
        try:
            assert agent.scheduler.scheduler.running is running
            if running:
                jobs = agent.scheduler.jobs()
                assert jobs and all(j.split("@")[0] in ("opening", "closing") for j in jobs)
        finally:
            agent.stop()


def test_a_check_cut_short_by_shutdown_is_a_warning_not_a_traceback(tmp_path, caplog):
    from hall_agent.outbox import Outbox
    box = Outbox(tmp_path / "o.db")
    box.close()

    def run_check(run):
        from hall_agent.envelope import Events
        box.enqueue(Events("zg-001", "Asia/Shanghai", "halls/x").agent("check"))  # the agent has stopped
    sched = CheckScheduler(CAL, run_check, tmp_path / "d.json", 20, require_sync=False,
                           clock=FakeClock(datetime(2026, 11, 27, 6, 0, tzinfo=SH)), thread=False)
    planned, _ = plan(CAL, datetime(2026, 11, 27, 6, 0, tzinfo=SH), GRACE, set())
    with caplog.at_level("WARNING"):
        sched._fire(planned[0])
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "cut short by the agent stopping" in caplog.text and not caplog.records[0].exc_info
    assert planned[0].key not in sched._done()  # it runs again at the next start, within grace


def test_stopping_the_agent_cuts_a_running_check_short(tmp_path, broker, caplog):
    """SIGTERM during a check's settle time: the check stops at once, publishes no report
    gathered from parts being stopped, and stays due for the next start."""
    import json
    from hall_agent.agent import Agent
    from hall_agent.config import validate
    settings = validate({"hall": {"id": "zg-001", "city": "zigong", "branch": "ziliujing"},
                         "mqtt": {"host": "127.0.0.1", "port": broker.port, "drain_s": 1},
                         "storage": {"dir": str(tmp_path / "s")}, "hours": {"holidays": ""},
                         "checks": {"require_time_sync": False, "settle_s": 30},
                         "equipment": [{"id": "kiosk.1", "probe": "tcp://192.168.10.21:80", "relay_pin": 5,
                                        "power": "auto"}]})
    agent = Agent(settings, simulate=True, clock=FakeClock(datetime(2026, 11, 27, 6, 0, tzinfo=SH)))
    agent.start()
    agent.devices.set_power("kiosk.1", False)  # switched off last night: the opening switches it on and settles
    planned, _ = plan(CAL, datetime(2026, 11, 27, 6, 0, tzinfo=SH), GRACE, set())
    runner = threading.Thread(target=agent.scheduler._fire, args=(planned[0],))
    runner.start()
    time.sleep(0.5)  # in its settle time
    started = time.monotonic()
    with caplog.at_level("WARNING"):
        agent.stop()
        runner.join(5)
    assert not runner.is_alive() and time.monotonic() - started < 5
    assert "cut short by the agent stopping" in caplog.text
    assert planned[0].key not in json.loads((tmp_path / "s" / "checks-done.json").read_text())
    assert "opening" not in agent.last_checks  # no report


def test_misfire_grace_zero_still_runs_checks_on_time(tmp_path):
    """``misfire_grace_min = 0`` means "no late runs", not "no runs": the scheduler wakes a
    little after the run's time (its wait, a loaded machine), which is on time."""
    fired = []
    clock = FakeClock(datetime(2026, 11, 27, 7, 59, 50, tzinfo=SH))
    sched = CheckScheduler(CAL, fired.append, tmp_path / "d.json", 0, require_sync=False, clock=clock,
                           thread=False)
    sched.start()
    try:
        clock.advance(13)  # 08:00:03: the scheduler's turn came 3 s after the opening's time
        sched.scheduler.run_pending()
        assert wait_until(lambda: fired, 5)
        assert fired[0].kind == "opening"
    finally:
        sched.stop()


def test_a_run_missed_before_the_first_start_ever_is_info_and_a_running_halls_is_a_warning(tmp_path, caplog):
    """A fresh state folder at 08:30 (the 08:00 opening is 30 minutes gone): not news, info;
    the same miss on a hall that has done checks before is a warning. Each is said once,
    not again at the next rebuild."""
    def start(state):
        clock = FakeClock(datetime(2026, 11, 27, 8, 30, tzinfo=SH))
        sched = CheckScheduler(CAL, lambda run: None, state, 20, require_sync=False, clock=clock, thread=False)
        caplog.clear()
        with caplog.at_level("INFO", logger="hall_agent.scheduler"):
            sched.rebuild()
            sched.rebuild()
        return [(r.levelname, r.getMessage()) for r in caplog.records if "was missed" in r.getMessage()]

    fresh = start(tmp_path / "fresh" / "done.json")
    assert [lvl for lvl, _ in fresh] == ["INFO"] and "opening" in fresh[0][1]
    state = tmp_path / "done.json"
    state.write_text('{"closing@2026-11-26T17:45:00+08:00": "2026-11-26T17:45:00+08:00"}')
    running = start(state)
    assert [lvl for lvl, _ in running] == ["WARNING"] and "opening" in running[0][1]
