"""The business calendar over known dates."""

import dataclasses
import json
import subprocess
import sys
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from hall_agent.calendar import BusinessCalendar, YearFacts, year_facts
from hall_agent.config.models import HoursSection

SH = ZoneInfo("Asia/Shanghai")


def cal(tz="Asia/Shanghai", lead=30, delay=15, **hours):
    return BusinessCalendar(HoursSection(**hours), tz, lead, delay)


def test_cn_new_year_and_spring_festival_are_closed():
    c = cal()
    assert c.hours_on(date(2026, 1, 1)) is None and c.why(date(2026, 1, 1)) == "public holiday"
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


def test_holiday_facts_are_cached_by_package_version(tmp_path):
    """Derived facts only (closed dates, make-up days, official-until), no labels, keyed by
    the package's version: an upgraded package is used at once; a doctored file of the
    same version is what the next process reads."""
    calls = []

    def facts(code, year):
        calls.append((code, year))
        return year_facts(code, year)
    c = BusinessCalendar(HoursSection(), "Asia/Shanghai", cache_dir=tmp_path, facts=facts, version="0.109")
    assert c.hours_on(date(2026, 10, 1)) is None
    cached = json.loads((tmp_path / "calendar-CN-2026.json").read_text())
    assert set(cached) == {"format", "holidays_version", "country", "year", "closed", "makeup", "confirmed_until"}
    assert "2026-10-01" in cached["closed"] and "2026-02-14" in cached["makeup"]
    assert cached["holidays_version"] == "0.109" and cached["confirmed_until"] == "2026-12-31"
    # a second process with the same package reads the file (here: doctored) instead of the package
    cached["closed"].append("2026-11-27")
    (tmp_path / "calendar-CN-2026.json").write_text(json.dumps(cached))
    calls.clear()
    c2 = BusinessCalendar(HoursSection(), "Asia/Shanghai", cache_dir=tmp_path, facts=facts, version="0.109")
    assert c2.hours_on(date(2026, 11, 27)) is None and calls == []
    # the package was upgraded: the file of the old version is not used, and is replaced
    def upgraded(code, year):
        calls.append((code, year))
        return dataclasses.replace(year_facts(code, year), source_version="0.110")
    c3 = BusinessCalendar(HoursSection(), "Asia/Shanghai", cache_dir=tmp_path, facts=upgraded, version="0.110")
    assert c3.hours_on(date(2026, 11, 27)) == (time(8, 30), time(17, 30)) and calls == [("CN", 2026)]
    assert json.loads((tmp_path / "calendar-CN-2026.json").read_text())["holidays_version"] == "0.110"


def test_an_upgrade_without_a_restart_does_not_file_the_old_package_under_the_new_version(tmp_path, caplog):
    """``pip install -U holidays`` then a reload (SIGHUP): the installed version is new, the module
    in memory is still the old one. Its facts must not be cached as the new version's, or the
    restart that follows would read the old package's calendar under the new key for good."""
    import holidays
    loaded = holidays.__version__
    c = BusinessCalendar(HoursSection(), "Asia/Shanghai", cache_dir=tmp_path, version="99.0")  # installed: 99.0
    assert c.hours_on(date(2026, 10, 1)) is None
    cached = json.loads((tmp_path / "calendar-CN-2026.json").read_text())
    assert cached["holidays_version"] == loaded
    assert "restart hall-agent" in caplog.text
    # the restart: the new package is imported, and the file is not taken for its facts
    calls = []

    def new_package(code, year):
        calls.append(year)
        return YearFacts(frozenset({date(2026, 11, 27)}), frozenset(), date(2027, 12, 31), "99.0")
    after = BusinessCalendar(HoursSection(), "Asia/Shanghai", cache_dir=tmp_path, facts=new_package, version="99.0")
    assert after.hours_on(date(2026, 11, 27)) is None and calls == [2026]
    assert after.confirmed_until(date(2026, 12, 1)) == date(2027, 12, 31)


def test_an_old_label_cache_is_ignored_and_removed(tmp_path):
    (tmp_path / "holidays-CN-2026.json").write_text(json.dumps({"2026-02-14": "休息日"}))  # a poisoned old file
    c = BusinessCalendar(HoursSection(saturday="closed"), "Asia/Shanghai", cache_dir=tmp_path)
    assert c.hours_on(date(2026, 2, 14)) == (time(8, 30), time(17, 30))
    assert not (tmp_path / "holidays-CN-2026.json").exists()


MAKEUP_2026 = ["2026-01-04", "2026-02-14", "2026-02-28", "2026-05-09", "2026-09-20", "2026-10-10"]
PROBE = """
import json
from datetime import date
from hall_agent.calendar import BusinessCalendar, YearFacts, year_facts
from hall_agent.config.models import HoursSection
c = BusinessCalendar(HoursSection(saturday="closed", sunday="closed"), "Asia/Shanghai")
days = [date.fromisoformat(d) for d in json.loads(%r)] + [date(2026, 2, 21), date(2026, 10, 1)]
print(json.dumps([[d.isoformat(), c.hours_on(d) is not None, c.why(d)] for d in days]))
"""


@pytest.mark.parametrize("env", [{"LANG": "en_GB.UTF-8"}, {"LANG": "zh_CN.UTF-8"}, {"LANG": "C"}, {},
                                 {"LANG": "en_US.UTF-8"}, {"LANGUAGE": "th", "LANG": "zh_TW.UTF-8"},
                                 {"LC_ALL": "en_US.UTF-8"}])
def test_make_up_days_are_the_same_under_any_locale(env):
    """The make-up Saturdays and Sundays of 2026 open under every locale (the labels the
    package gives are Chinese, English, Thai…: none is read)."""
    import os
    clean = {k: v for k, v in os.environ.items() if k not in ("LANG", "LANGUAGE", "LC_ALL", "LC_MESSAGES")}
    out = subprocess.run([sys.executable, "-c", PROBE % json.dumps(MAKEUP_2026)], env={**clean, **env},
                         capture_output=True, text=True, check=True).stdout
    got = json.loads(out)
    assert got == [[d, True, "make-up working day"] for d in MAKEUP_2026] + \
        [["2026-02-21", False, "saturday"], ["2026-10-01", False, "public holiday"]]


def test_make_up_days_open_with_the_first_weekday_that_has_hours():
    c = cal(monday="closed", tuesday="10:00-16:00", saturday="closed", sunday="closed")
    assert c.hours_on(date(2026, 2, 14)) == (time(10), time(16))


def test_the_calendar_knows_up_to_when_it_is_official():
    """holidays 0.109 has the State Council's schedule up to 2026: 2027 is a guess
    (estimated dates, no make-up days) until the package or the hall's config covers it."""
    fake = {2026: YearFacts(frozenset(), frozenset(), date(2026, 12, 31)),
            2027: YearFacts(frozenset(), frozenset(), date(2026, 12, 31))}
    c = BusinessCalendar(HoursSection(), "Asia/Shanghai", facts=lambda code, y: fake[y])
    assert c.unconfirmed_from(date(2026, 12, 1)) == date(2027, 1, 1)
    assert c.confirmed_until(date(2027, 3, 1)) == date(2026, 12, 31)
    assert c.confirmed(date(2026, 12, 31), date(2026, 12, 1)) and not c.confirmed(date(2027, 1, 4), date(2026, 12, 1))
    covered = BusinessCalendar(HoursSection(closed=[date(2027, 2, 10)]), "Asia/Shanghai",
                               facts=lambda code, y: fake[y])
    assert covered.unconfirmed_from(date(2026, 12, 1)) == date(2028, 1, 1)
    assert BusinessCalendar(HoursSection(holidays=""), "Asia/Shanghai").unconfirmed_from(date(2026, 12, 1)) is None
    assert BusinessCalendar(HoursSection(holidays="DE"), "Europe/Berlin").unconfirmed_from(date(2026, 12, 1)) is None
    # the real package: its official schedule ends with a year it has the make-up days of
    until = year_facts("CN", 2026).confirmed_until
    assert until is not None and until >= date(2026, 12, 31) and until.month == 12 and until.day == 31


def test_opening_lead_across_a_daylight_saving_change_is_real_time():
    # Berlin springs forward at 02:00 on 2026-03-29: 03:30 CEST less 90 minutes is 01:00 CET (00:00 UTC),
    # not the wall-clock 02:00 (which does not exist)
    c = cal(tz="Europe/Berlin", sunday="03:30-12:00", lead=90, holidays="")
    (opening, closing) = c.runs(datetime(2026, 3, 29, 0, 0, tzinfo=ZoneInfo("Europe/Berlin")), 1)
    assert opening.at.isoformat() == "2026-03-29T01:00:00+01:00"
    autumn = cal(tz="Europe/Berlin", sunday="03:30-12:00", lead=90, holidays="").runs(
        datetime(2026, 10, 25, 0, 0, tzinfo=ZoneInfo("Europe/Berlin")), 1)
    assert autumn[0].at.astimezone(ZoneInfo("UTC")).isoformat() == "2026-10-25T01:00:00+00:00"  # 03:30 CET - 90 min


def test_schedule_marks_the_days_the_official_schedule_does_not_cover(tmp_path):
    until = BusinessCalendar(HoursSection(), "Asia/Shanghai").confirmed_until(date(2026, 6, 1))
    cfg = tmp_path / "c.toml"
    cfg.write_text('[hall]\nid="zg-001"\ncity="zigong"\nbranch="ziliujing"\n[hours]\nsaturday="closed"\nsunday="closed"\n')
    start = until - timedelta(days=9)
    args = [sys.executable, "-m", "hall_agent", "schedule", "-c", str(cfg), "--from", start.isoformat(), "--days", "20"]
    runs = json.loads(subprocess.run(args + ["--json"], capture_output=True, text=True, check=True).stdout)
    assert runs and all(r.get("unconfirmed", False) == (r["at"][:10] > until.isoformat()) for r in runs)
    assert any(r.get("unconfirmed") for r in runs) and not all(r.get("unconfirmed") for r in runs)
    text = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    assert "UNCONFIRMED" in text and (until + timedelta(days=1)).isoformat() in text
