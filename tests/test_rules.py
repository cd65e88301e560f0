"""The rules engine over synthetic time: hysteresis, for_s, means, seasons,
overrides, the fixed rules, and a restart with active alerts."""

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from hall_agent.clock import FakeClock
from hall_agent.config import validate
from hall_agent.rules import RollingMean, RulesEngine, build, tvoc_ppb_to_mgm3

TZ = ZoneInfo("Asia/Shanghai")
T0 = datetime(2026, 7, 1, 10, 0, tzinfo=TZ)  # a summer Wednesday morning, open


def settings(**extra):
    data = {"hall": {"id": "zg-001", "city": "zigong", "branch": "ziliujing"},
            "sensors": [{"id": "env", "driver": "sht3x"}, {"id": "co2", "driver": "scd4x"},
                        {"id": "voc", "driver": "sgp30"}]}
    data.update(extra)
    return validate(data)


class Timed:
    """The engine on a FakeClock that each call moves to the ``now`` the test passes
    (wall and monotonic together, as time passes; ``clock.step`` is an NTP step)."""
    CALLS = {"reading", "input", "printer", "equipment", "sensor_fault", "sensor_ok", "check", "tick",
             "forget_sources", "clock_state", "calendar_state"}

    def __init__(self, eng: RulesEngine):
        self.eng = eng
        self.clock = eng.clock

    def __getattr__(self, name):
        attr = getattr(self.eng, name)
        if name not in self.CALLS:
            return attr

        def call(*args, **kw):
            now = next((x for x in (*args, *kw.values()) if isinstance(x, datetime)), None)
            if now is not None and now.timestamp() > self.clock.time():
                self.clock.advance(now.timestamp() - self.clock.time())
            return attr(*args, **kw)
        return call


def engine(open_hours=lambda t: 8 <= t.astimezone(TZ).hour < 18, synced=True, start=T0, **extra):
    return Timed(RulesEngine(build(settings(**extra)), open_hours, clock=FakeClock(start, synced=synced)))


def run(eng, source, key, series, start=T0, step_s=60):
    """Feed (value) series one per step; returns [(index, rule, raised?)]."""
    out = []
    for i, v in enumerate(series):
        for c in eng.reading(source, {key: v}, start + timedelta(seconds=i * step_s)):
            out.append((i, c.alert.rule, c.active))
    return out


@pytest.mark.parametrize("series,expected", [
    # summer limit 28 °C held 5 min, clears below 27.5
    ([27.0, 28.5, 28.5, 28.5, 28.5, 28.5, 28.5, 28.0, 27.8, 27.4], [(6, "temperature-high", True),
                                                                    (9, "temperature-high", False)]),
    # hovering at the limit: one alert, no flapping
    ([28.5] * 6 + [27.9, 28.1, 27.9, 28.1, 27.6, 28.2], [(5, "temperature-high", True)]),
    # a spike shorter than for_s raises nothing
    ([27.0, 29.0, 29.0, 27.0, 29.0, 29.0, 27.0], []),
])
def test_temperature_hysteresis_and_for_s(series, expected):
    assert run(engine(), "env", "temperature_c", series) == expected


def test_for_s_completes_only_on_a_fresh_reading():
    """A sensor that died holding a high value does not complete for_s by the timer."""
    eng = engine()
    assert eng.reading("env", {"temperature_c": 30.0}, T0) == []
    assert eng.tick(T0 + timedelta(seconds=299)) == []
    assert eng.tick(T0 + timedelta(seconds=600)) == []  # no reading came in: no verdict
    (change,) = eng.reading("env", {"temperature_c": 30.0}, T0 + timedelta(seconds=601))
    assert change.active and change.alert.rule == "temperature-high" and change.alert.value == 30.0


def test_a_sensor_fault_resets_for_s():
    eng = engine()
    assert eng.reading("env", {"temperature_c": 30.0}, T0) == []
    eng.sensor_fault("env", "absent", T0 + timedelta(seconds=200))
    eng.sensor_ok("env", T0 + timedelta(seconds=280))
    assert eng.reading("env", {"temperature_c": 30.0}, T0 + timedelta(seconds=300)) == []  # counts from here
    assert eng.reading("env", {"temperature_c": 30.0}, T0 + timedelta(seconds=599)) == []
    (change,) = eng.reading("env", {"temperature_c": 30.0}, T0 + timedelta(seconds=600))
    assert change.active


def test_an_ntp_step_raises_nothing():
    """Durations are monotonic: the wall clock stepped an hour forward (or back) neither
    completes for_s nor holds a door open."""
    eng = engine()
    assert eng.reading("env", {"temperature_c": 30.0}, T0) == []
    assert eng.input("door", "door.back", "open", T0, 120) == []
    for step in (3600, -7200):
        eng.clock.step(step)
        now = eng.clock.now(TZ)
        assert eng.tick(now) == []
        assert eng.reading("env", {"temperature_c": 30.0}, now) == []
    eng.clock.advance(120)  # two real minutes: now the door has been held open
    assert [(c.alert.rule, c.alert.value) for c in eng.tick(eng.clock.now(TZ))] == [("door-held-open", 120)]


def test_an_unsynchronised_clock_gives_no_after_hours_verdict():
    """A Pi booting at 08:40 with fake-hwclock's 21:05: the first door opened raises
    nothing until the clock is synchronised; then the real time of day decides."""
    wrong = datetime(2026, 7, 1, 21, 5, tzinfo=TZ)
    eng = engine(synced=False, start=wrong)
    assert eng.input("door", "door.front", "open", wrong, 120) == []
    eng.clock.advance(300)  # held open past held_open_s: a business-hours timer, no verdict either
    assert eng.tick(eng.clock.now(TZ)) == []
    eng.clock.step(datetime(2026, 7, 1, 8, 45, tzinfo=TZ).timestamp() - eng.clock.time())  # NTP: 08:45
    eng.clock.set_synced(True)
    assert [c.alert.rule for c in eng.tick(eng.clock.now(TZ))] == ["door-held-open"]  # in hours: no alarm
    # the same boot at night: once synchronised, the verdict is after hours
    night = engine(synced=False, start=wrong)
    assert night.input("door", "door.front", "open", wrong, 120) == []
    night.clock.set_synced(True)
    assert [c.alert.rule for c in night.tick(night.clock.now(TZ))] == ["door-after-hours"]


def test_clock_unsynced_after_ten_minutes_cleared_on_sync():
    eng = engine(synced=False)
    assert eng.tick(T0 + timedelta(seconds=599)) == []
    (c,) = eng.tick(T0 + timedelta(seconds=600))
    assert (c.active, c.alert.rule, c.alert.source, c.alert.severity, c.alert.category, c.alert.priority) == \
        (True, "clock-unsynced", "clock", "warning", "system", 1)
    assert eng.tick(T0 + timedelta(seconds=700)) == []  # raised once
    eng.clock.set_synced(True)
    (c,) = eng.tick(T0 + timedelta(seconds=701))
    assert (c.active, c.alert.rule) == (False, "clock-unsynced")
    assert engine().tick(T0 + timedelta(hours=1)) == []  # a synchronised clock: never


def test_seasons_follow_the_halls_local_date():
    eng = engine()
    late_oct = datetime(2026, 10, 31, 23, 30, tzinfo=TZ)          # between seasons: 16-28 °C
    early_nov = datetime(2026, 11, 1, 0, 30, tzinfo=TZ)           # winter: 16-24 °C
    same_instant_utc = early_nov.astimezone(ZoneInfo("UTC"))      # 2026-10-31 16:30 UTC: still October in UTC
    assert same_instant_utc.month == 10
    hot = {"temperature_c": 25.0}
    assert eng.reading("env", hot, late_oct) == [] and eng.reading("env", hot, late_oct + timedelta(minutes=10)) == []
    eng2 = engine()
    eng2.reading("env", hot, same_instant_utc)
    (change,) = eng2.reading("env", hot, same_instant_utc + timedelta(minutes=5))
    assert change.alert.threshold == 24  # winter, by the hall's date


@pytest.mark.parametrize("month,low,high", [(7, 22, 28), (1, 16, 24), (4, 16, 28), (5, 22, 28), (11, 16, 24)])
def test_comfort_bands_by_month(month, low, high):
    rules = build(settings()).for_reading("env", "temperature_c")
    by_id = {r.id: r for r in rules}
    assert by_id["temperature-high"].threshold_for(month) == high
    assert by_id["temperature-low"].threshold_for(month) == low


def test_co2_one_hour_mean():
    eng = engine()
    # 10 s readings: 45 min at 900 ppm, then 1500 ppm: the 1 h mean passes 1000 after a while, not at once
    series = [900.0] * 270 + [1500.0] * 360
    out = run(eng, "co2", "co2_ppm", series, step_s=10)
    assert len(out) == 1 and out[0][1:] == ("co2-high", True)
    raised_at = out[0][0]
    assert 270 < raised_at < 400  # after the mean (not the first high value) crossed
    # the mean keeps bounded memory: 48 buckets for any number of readings
    state = next(iter(eng._thresholds.values()))
    assert len(state.mean) <= 49


def test_rolling_mean_is_bounded_and_right():
    m = RollingMean(86400)
    for i in range(8640 * 2):  # two days at 10 s
        m.add(float(i % 100), i * 10.0)
    assert len(m) <= 49
    assert m.mean(8640 * 2 * 10.0) == pytest.approx(49.5, abs=1.0)


def test_mean_waits_for_a_quarter_of_its_window():
    # a 1 h mean is trusted once its data spans 15 minutes (a restart does not mute CO2 for an hour)
    assert run(engine(), "co2", "co2_ppm", [5000.0] * 120, step_s=10) == [(90, "co2-high", True)]


def test_mean_coverage_is_the_data_in_the_window_not_the_first_sample_ever():
    """After a data gap a single reading is not a "1 h mean": coverage counts the data in
    the window."""
    eng = engine()
    assert run(eng, "co2", "co2_ppm", [600.0] * 90, step_s=10) == []     # 15 min of good air
    later = T0 + timedelta(hours=3)                                       # the sensor was gone 3 h
    assert eng.reading("co2", {"co2_ppm": 5000.0}, later) == []          # one sample: no verdict
    out = run(eng, "co2", "co2_ppm", [5000.0] * 120, start=later + timedelta(seconds=10), step_s=10)
    assert out and out[0][1:] == ("co2-high", True) and out[0][0] >= 85  # once 15 min of data are in
    m = RollingMean(3600)
    m.add(1.0, 0.0)
    assert m.coverage(0.0) == 0.0 and m.coverage(10 * 3600.0) == 0.0
    m.add(1.0, 10 * 3600.0)
    assert m.coverage(10 * 3600.0) < 0.05


def test_a_restored_mean_alert_is_not_cleared_by_the_first_sample_after_a_restart():
    eng = engine()
    run(eng, "co2", "co2_ppm", [5000.0] * 120, step_s=10)
    assert ("co2-high", "co2") in eng.active
    after = engine(start=T0 + timedelta(hours=1))
    after.restore(eng.snapshot())
    assert after.reading("co2", {"co2_ppm": 450.0}, T0 + timedelta(hours=1)) == []
    assert ("co2-high", "co2") in after.active
    out = run(after, "co2", "co2_ppm", [450.0] * 120, start=T0 + timedelta(hours=1, seconds=10), step_s=10)
    assert out and out[0][1:] == ("co2-high", False)  # judged once the mean covers a quarter of its window


def test_tvoc_converted_as_isobutylene():
    assert tvoc_ppb_to_mgm3(261) == pytest.approx(0.599, abs=0.001)
    eng = engine()
    series = [300.0] * (8 * 360)  # 8 h of 10 s readings at 300 ppb = 0.69 mg/m³
    out = run(eng, "voc", "tvoc_ppb", series, step_s=10)
    assert out[0][1:] == ("tvoc-high", True)
    assert eng.active[("tvoc-high", "voc")].threshold == 0.6


def test_override_by_id_for_one_source_and_profile_off():
    eng = engine(rules=[{"id": "co2-high", "source": "co2", "above": 1500, "clear_below": 1200}])
    rules = {r.id: r for r in eng.rules.for_reading("co2", "co2_ppm")}
    assert rules["co2-high"].threshold == 1500 and rules["co2-high"].mean_s == 3600  # mean inherited
    other = {r.id: r for r in eng.rules.for_reading("co2.b", "co2_ppm")}
    assert other["co2-high"].threshold == 1000  # other sensors keep the profile
    assert build(settings(profile={"name": "none"})).for_reading("co2", "co2_ppm") == []


def test_custom_rule_and_fixed_rule_override():
    eng = engine(rules=[{"id": "co2-peak", "value": "co2_ppm", "above": 2000, "clear_below": 1800,
                         "severity": "critical", "priority": 1},
                        {"id": "door-held-open", "severity": "critical", "priority": 1}])
    out = run(eng, "co2", "co2_ppm", [2100.0, 1900.0, 1700.0])
    assert out == [(0, "co2-peak", True), (2, "co2-peak", False)]
    assert eng.rules.fixed["door-held-open"].severity == "critical"
    assert eng.rules.fixed["door-held-open"].category == "internal"  # what was not given stays


def test_door_after_hours_and_held_open():
    eng = engine()
    night = datetime(2026, 7, 1, 22, 0, tzinfo=TZ)
    (c,) = eng.input("door", "door.side", "open", night, 120)
    assert (c.alert.rule, c.active, c.alert.severity, c.alert.category, c.alert.priority) == \
        ("door-after-hours", True, "critical", "emergency", 1)
    assert eng.input("door", "door.side", "open", night + timedelta(seconds=5), 120) == []  # no repeat
    (c,) = eng.input("door", "door.side", "closed", night + timedelta(seconds=30), 120)
    assert (c.alert.rule, c.active) == ("door-after-hours", False)
    # during hours: held open beyond held_open_s
    eng = engine()
    assert eng.input("door", "door.back", "open", T0, 60) == []
    assert eng.tick(T0 + timedelta(seconds=59)) == []
    (c,) = eng.tick(T0 + timedelta(seconds=60))
    assert (c.alert.rule, c.alert.priority) == ("door-held-open", 2)
    # still open when the hall closes: now it is after hours too
    closing = datetime(2026, 7, 1, 18, 0, 1, tzinfo=TZ)
    assert [(c.alert.rule, c.active) for c in eng.tick(closing)] == [("door-after-hours", True)]


def test_panic_printer_equipment_sensor_and_check_rules():
    eng = engine()
    (c,) = eng.input("panic", "panic.1", "alarm", T0)
    assert (c.alert.rule, c.alert.severity, c.alert.category, c.alert.priority) == ("panic", "critical", "emergency", 1)
    (c,) = eng.input("panic", "panic.1", "normal", T0)
    assert not c.active
    ok = {"online": True, "paper": "ok", "cover_open": False, "error": None}
    assert eng.printer("p", ok, True, T0) == []
    assert [(c.alert.rule, c.active) for c in eng.printer("p", {**ok, "paper": "near_end"}, True, T0)] == \
        [("printer-paper-low", True)]
    changes = eng.printer("p", {**ok, "online": False, "paper": "end"}, True, T0)
    assert [(c.alert.rule, c.active) for c in changes] == [("printer-paper-low", False), ("printer-paper-out", True)]
    changes = eng.printer("p", {**ok, "online": False, "error": "not answering"}, False, T0)
    assert ("printer-offline", True) in [(c.alert.rule, c.active) for c in changes]
    assert eng.active[("printer-offline", "p")].severity == "critical"
    changes = eng.printer("p", {**ok, "online": False, "cover_open": True}, True, T0)
    assert {("printer-offline", False), ("printer-cover-open", True), ("printer-paper-out", False)} <= \
        {(c.alert.rule, c.active) for c in changes}
    # equipment: only when it should be on
    assert eng.equipment("kiosk", {"reachable": False, "power": "off"}, T0) == []
    (c,) = eng.equipment("kiosk", {"reachable": False, "power": "on", "detail": "refused"}, T0)
    assert c.alert.rule == "equipment-unreachable" and "refused" in c.alert.message
    (c,) = eng.sensor_fault("env", "checksum: CRC", T0)
    assert (c.alert.rule, c.alert.category) == ("sensor-fault", "system")
    (c,) = eng.sensor_ok("env", T0)
    assert not c.active
    (c,) = eng.check("opening", "fail", ["kiosk.1"], T0)
    assert (c.alert.rule, c.alert.source, c.alert.priority) == ("check-failed", "opening", 1)


def test_restart_keeps_active_alerts_and_clears_ended_ones():
    eng = engine()
    eng.input("panic", "panic.1", "alarm", T0)
    eng.input("door", "door.side", "open", datetime(2026, 7, 1, 22, 0, tzinfo=TZ), 120)
    eng.sensor_fault("env", "absent", T0)
    saved = eng.snapshot()
    after = engine()
    after.restore(saved)
    assert set(after.active) == {("panic", "panic.1"), ("door-after-hours", "door.side"), ("sensor-fault", "env")}
    later = datetime(2026, 7, 1, 22, 5, tzinfo=TZ)
    assert after.input("panic", "panic.1", "alarm", later) == []  # not raised twice
    (c,) = after.input("door", "door.side", "closed", later, 120)  # the condition ended while we were down
    assert not c.active and c.alert.raised_at == saved[1]["raised_at"]
    (c,) = after.sensor_ok("env", later)
    assert not c.active
    assert [(c.alert.rule, c.active) for c in after.forget_sources({"env"}, later)] == [("panic", False)]
