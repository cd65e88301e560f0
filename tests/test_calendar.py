"""The business calendar over known dates."""

import json
import subprocess
import sys
from datetime import date, datetime, time
from zoneinfo import ZoneInfo

import pytest

from hall_agent.calendar import BusinessCalendar
from hall_agent.config.models import HoursSection

SH = ZoneInfo("Asia/Shanghai")


def cal(tz="Asia/Shanghai", lead=30, delay=15, **hours):
    return BusinessCalendar(HoursSection(**hours), tz, lead, delay)


def test_cn_new_year_and_spring_festival_are_closed():
    c = cal()
    assert c.hours_on(date(2026, 1, 1)) is None and "New Year" in c.why(date(2026, 1, 1))
    for d in (16, 17, 18, 19, 20, 23):  # Spring Festival 2026 and its days off
        assert c.hours_on(date(2026, 2, d)) is None, d
    assert c.hours_on(date(2026, 2, 24)) == (time(8, 30), time(17, 30))


def test_make_up_working_days_open_even_when_weekends_are_closed():
    c = cal(saturday="closed", sunday="closed")
    assert c.hours_on(date(2026, 2, 21)) is None          # an ordinary Saturday in the break
    assert c.hours_on(date(2026, 2, 14)) == (time(8, 30), time(17, 30))  # Saturday make-up day (holidays package)
    assert "make-up" in c.why(date(2026, 2, 14))


def test_configured_open_and_closed_dates_win():
    c = cal(closed=[date(2026, 12, 31)], open={date(2026, 10, 1): "10:00-15:00", date(2026, 11, 29): "09:00-12:00"},
            sunday="closed")
    assert c.hours_on(date(2026, 12, 31)) is None and c.why(date(2026, 12, 31)) == "closed date"
    assert c.hours_on(date(2026, 10, 1)) == (time(10), time(15))  # National Day, opened by config
    assert c.hours_on(date(2026, 11, 29)) == (time(9), time(12))  # a Sunday, configured make-up day
    assert cal(holidays="").hours_on(date(2026, 1, 1)) == (time(8, 30), time(17, 30))  # no holiday calendar


def test_lead_and_delay_minutes():
    c = cal(lead=45, delay=20, monday="09:00-18:00")
    runs = c.runs(datetime(2026, 11, 30, 0, 0, tzinfo=SH), 1)  # a Monday
    assert [(r.kind, r.at.isoformat()) for r in runs] == [("opening", "2026-11-30T08:15:00+08:00"),
                                                          ("closing", "2026-11-30T18:20:00+08:00")]


def test_is_open():
    c = cal()
    assert c.is_open(datetime(2026, 11, 27, 8, 30, tzinfo=SH))
    assert not c.is_open(datetime(2026, 11, 27, 17, 30, tzinfo=SH))
    assert not c.is_open(datetime(2026, 11, 27, 0, 29, tzinfo=ZoneInfo("UTC")))  # 08:29 in Zigong: not yet
    assert c.is_open(datetime(2026, 11, 27, 1, 0, tzinfo=ZoneInfo("UTC")))      # 09:00 in Zigong


def test_a_daylight_saving_timezone():
    # Europe/Berlin springs forward on 2026-03-29 at 02:00 -> 03:00 and falls back on 2026-10-25
    c = cal(tz="Europe/Berlin", sunday="02:30-12:00", lead=30, delay=15, holidays="")
    spring = c.runs(datetime(2026, 3, 29, 0, 0, tzinfo=ZoneInfo("Europe/Berlin")), 1)
    opening = spring[0].at
    assert opening.utcoffset().total_seconds() == 7200  # 02:30 does not exist: opens at 03:30 CEST
    assert opening.isoformat() == "2026-03-29T03:00:00+02:00"  # and the run is 30 min before, in real time
    autumn = cal(tz="Europe/Berlin", sunday="09:00-17:00", holidays="").runs(
        datetime(2026, 10, 25, 0, 0, tzinfo=ZoneInfo("Europe/Berlin")), 1)
    assert [r.at.isoformat() for r in autumn] == ["2026-10-25T08:30:00+01:00", "2026-10-25T17:15:00+01:00"]
    assert c.is_open(datetime(2026, 3, 29, 3, 45, tzinfo=ZoneInfo("Europe/Berlin")))


def test_schedule_cli_json(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[hall]\nid="zg-001"\ncity="zigong"\nbranch="ziliujing"\n[hours]\nsaturday="closed"\nsunday="closed"\n')
    out = subprocess.run([sys.executable, "-m", "hall_agent", "schedule", "-c", str(cfg), "--from", "2026-02-13",
                          "--days", "3", "--json"], capture_output=True, text=True, check=True).stdout
    runs = json.loads(out)
    assert runs == [{"kind": "opening", "at": "2026-02-13T08:00:00+08:00"},
                    {"kind": "closing", "at": "2026-02-13T17:45:00+08:00"},
                    {"kind": "opening", "at": "2026-02-14T08:00:00+08:00"},   # Saturday make-up day
                    {"kind": "closing", "at": "2026-02-14T17:45:00+08:00"}]
    bad = subprocess.run([sys.executable, "-m", "hall_agent", "schedule", "-c", str(cfg), "--from", "tomorrow"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "not a date" in bad.stderr


def test_holiday_tables_are_cached_in_the_state_folder(tmp_path):
    c = BusinessCalendar(HoursSection(), "Asia/Shanghai", cache_dir=tmp_path)
    assert c.hours_on(date(2026, 10, 1)) is None
    cached = json.loads((tmp_path / "holidays-CN-2026.json").read_text())
    assert cached["2026-10-01"] == "National Day"
    # a second calendar reads the cache (here: a doctored one) instead of the package
    cached["2026-11-27"] = "test day"
    (tmp_path / "holidays-CN-2026.json").write_text(json.dumps(cached))
    c2 = BusinessCalendar(HoursSection(), "Asia/Shanghai", cache_dir=tmp_path)
    assert c2.hours_on(date(2026, 11, 27)) is None and c2.why(date(2026, 11, 27)) == "holiday: test day"
