"""config check: every problem in one pass, in the project's words; the cross-part checks; what
would break the agent at run time (inf, nan, timers that overflow, pins/buses/baud rates no Pi has)."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from hall_agent.config import ConfigError, load
from hall_agent.config.checks import warnings

HALL = '[hall]\nid = "zg-001"\ncity = "zigong"\nbranch = "ziliujing"\n'


def problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load(path)
    return e.value.problems


def test_schema_and_cross_part_problems_in_one_pass(tmp_path):
    ps = problems(tmp_path, HALL + """
[mqtt]
hsot = "x"
[[sensors]]
id = "bad"
driver = "nope"
[[sensors]]
id = "pm.a"
driver = "pms5003"
port = "/dev/ttyUSB0"
[[printers]]
id = "printer.queue"
port = "/dev/ttyUSB0"
[[inputs]]
id = "door"
kind = "door"
pin = 17
[[inputs]]
id = "door2"
kind = "door"
pin = 17
""")
    assert "mqtt.hsot: unknown key (did you mean 'host'?)" in ps
    assert any(p.startswith("sensors[0].driver: must be one of") for p in ps)
    # the cross-part checks ran too, on the parts the schema accepted, with the file's indexes
    assert "printers[0].port: serial port /dev/ttyUSB0 is already used by sensors[1].port: one part per port" in ps
    assert "inputs[1].pin: pin 17 is already used by inputs[0].pin" in ps
    assert len(ps) == 4, ps


def test_a_missing_hall_id_does_not_hide_the_rest(tmp_path):
    ps = problems(tmp_path, '[hall]\ncity = "zigong"\nbranch = "b"\n[[inputs]]\nid = "a"\nkind = "door"\npin = 99\n')
    assert "hall.id: required key is missing" in ps
    assert any(p.startswith("inputs[0].pin:") for p in ps)


def test_choices_in_any_case_and_our_wording(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(HALL + '[[inputs]]\nid = "door"\nkind = "Door"\npin = 17\ncontact = "NC"\n'
                    '[[sensors]]\nid = "env"\ndriver = "SHT3x"\n')
    s = load(path)
    assert s.inputs[0].contact == "nc" and s.inputs[0].kind == "door" and s.sensors[0].driver == "sht3x"
    ps = problems(tmp_path, HALL + '[[inputs]]\nid = "door"\nkind = "door"\npin = 17\ncontact = "yes"\n')
    assert ps == ['inputs[0].contact: must be one of "no", "nc" (got \'yes\')']


@pytest.mark.parametrize("key,text", [
    ("sensors[0].value", '[[sensors]]\nid = "pm"\ndriver = "pms5003"\nport = "/dev/ttyUSB0"\n'
                         '[[rules]]\nid = "mine"\nsource = "pm"\nvalue = "co2_ppm"\nabove = 1\n'),
])
def test_rule_on_a_value_its_sensor_does_not_report(tmp_path, key, text):
    ps = problems(tmp_path, HALL + text)
    assert ps == ["rules[0].value: sensor 'pm' (pms5003) does not report co2_ppm; "
                  "it reports pm10_ugm3, pm1_ugm3, pm25_ugm3"]
    # a profile rule pointed at the wrong sensor, too
    ps = problems(tmp_path, HALL + '[[sensors]]\nid = "t"\ndriver = "ds18b20"\ndevice = "28-0316a2791eff"\n'
                  '[[rules]]\nid = "co2-high"\nsource = "t"\n')
    assert ps == ["rules[0].source: sensor 't' (ds18b20) does not report co2_ppm; it reports temperature_c"]


def test_gpio_input_on_the_one_wire_pin_beside_a_ds18b20(tmp_path):
    base = HALL + '[[sensors]]\nid = "t"\ndriver = "ds18b20"\ndevice = "28-0316a2791eff"\n'
    for pin in ("4", '"GPIO4"', '"BOARD7"'):
        ps = problems(tmp_path, base + f'[[inputs]]\nid = "door"\nkind = "door"\npin = {pin}\n')
        assert len(ps) == 1 and ps[0].startswith("inputs[0].pin:") and "1-Wire pin" in ps[0], ps
    path = tmp_path / "ok.toml"  # without a ds18b20, GPIO4 is a pin like any other
    path.write_text(HALL + '[[inputs]]\nid = "door"\nkind = "door"\npin = 4\n')
    load(path)


def test_panic_on_a_normally_open_contact_warns_unless_checked(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(HALL + '[[inputs]]\nid = "panic.1"\nkind = "panic"\npin = 22\ncontact = "no"\n')
    (w,) = warnings(load(path))
    assert w[0] == "inputs[0].contact" and "cut wire" in w[1]
    r = subprocess.run([sys.executable, "-m", "hall_agent", "config", "check", "-c", str(path)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "config warning: inputs[0].contact: a panic button on a normally-open" in r.stderr
    path.write_text(HALL + '[[inputs]]\nid = "panic.1"\nkind = "panic"\npin = 22\ncontact = "no"\n'
                    'contact_checked = true\n')
    assert warnings(load(path)) == []
    path.write_text(HALL + '[[inputs]]\nid = "panic.1"\nkind = "panic"\npin = 22\ncontact = "nc"\n')
    assert warnings(load(path)) == []


@pytest.mark.parametrize("text,key", [
    ("[agent]\nhealth_interval_s = inf\n", "agent.health_interval_s"),
    ("[storage]\nmax_outbox_mb = inf\n", "storage.max_outbox_mb"),
    ("[checks]\nmisfire_grace_min = 1000000000000\n", "checks.misfire_grace_min"),
    ("[checks]\nsettle_s = nan\n", "checks.settle_s"),
    ('[[sensors]]\nid = "env"\ndriver = "sht3x"\ninterval_s = inf\n', "sensors[0].interval_s"),
    ('[[sensors]]\nid = "env"\ndriver = "sht3x"\ninterval_s = 1e9\n', "sensors[0].interval_s"),
    ('[[sensors]]\nid = "c"\ndriver = "scd4x"\n[[rules]]\nid = "x"\nsource = "c"\nvalue = "co2_ppm"\n'
     'above = inf\n', "rules[0].above"),
    ('[[sensors]]\nid = "c"\ndriver = "scd4x"\n[[rules]]\nid = "x"\nsource = "c"\nvalue = "co2_ppm"\n'
     'above = 1000\nfor_s = 1e300\n', "rules[0].for_s"),
    ('[[inputs]]\nid = "d"\nkind = "door"\npin = 17\nheld_open_s = inf\n', "inputs[0].held_open_s"),
    ('[[inputs]]\nid = "d"\nkind = "door"\npin = 40\n', "inputs[0].pin"),
    ('[[inputs]]\nid = "d"\nkind = "door"\npin = "BOARD1"\n', "inputs[0].pin"),
    ('[[equipment]]\nid = "k"\nrelay_pin = 31\n', "equipment[0].relay_pin"),
    ('[[sensors]]\nid = "env"\ndriver = "sht3x"\nbus = 99\n', "sensors[0].bus"),
    ('[[sensors]]\nid = "co2"\ndriver = "mhz19"\nport = "/dev/ttyAMA0"\nbaudrate = 12345\n', "sensors[0].baudrate"),
    ('[[printers]]\nid = "p"\nport = "/dev/ttyUSB1"\nbaudrate = 9601\n', "printers[0].baudrate"),
])
def test_what_would_break_the_agent_at_run_time_is_refused(tmp_path, text, key):
    ps = problems(tmp_path, HALL + text)
    assert any(p.startswith(f"{key}: ") for p in ps), ps


def test_inf_from_the_environment_is_refused_too(tmp_path, monkeypatch):
    monkeypatch.setenv("HALL_AGENT_AGENT__HEALTH_INTERVAL_S", "inf")
    ps = problems(tmp_path, HALL)
    assert ps == ["agent.health_interval_s: must be a finite number, not inf"]


@settings(max_examples=200, deadline=None)
@given(value=st.floats(allow_nan=True, allow_infinity=True) | st.integers(-10**30, 10**30))
def test_any_interval_is_accepted_or_refused_with_its_key(tmp_path_factory, value):
    tmp = tmp_path_factory.mktemp("c")
    literal = "nan" if isinstance(value, float) and math.isnan(value) else \
        ("inf" if value == math.inf else ("-inf" if value == -math.inf else repr(value)))
    path = tmp / "c.toml"
    path.write_text(HALL + f'[[sensors]]\nid = "env"\ndriver = "sht3x"\ninterval_s = {literal}\n')
    try:
        s = load(path)
    except ConfigError as e:
        assert e.problems and all(p.startswith("sensors[0].interval_s: ") for p in e.problems), e.problems
        return
    assert math.isfinite(s.sensors[0].interval_s) and 0 < s.sensors[0].interval_s <= 7 * 86400


def test_a_part_refused_by_the_schema_is_not_blamed_again_where_it_is_referred_to(tmp_path):
    """A panic input, a sensor set aside for its own problem: the reset input, the rule and the
    maintenance window naming them got a second, false problem ("is not a panic input",
    "is not a sensor id"), sending the engineer to fix what is right."""
    ps = problems(tmp_path, HALL + """
[[sensors]]
id = "co2.hall"
driver = "scd4x"
interval_s = 10
bogus = 1
[[inputs]]
id = "panic.a"
kind = "panic"
pin = 22
bounce_ms = 1e12
[[inputs]]
id = "panic.reset"
kind = "reset"
pin = 24
resets = ["panic.a", "panic.nowhere"]
[[rules]]
id = "co2-demo"
source = "co2.hall"
value = "co2_ppm"
above = 1500
[[maintenance]]
rule = "co2-demo"
source = "panic.a"
from = "22:00"
to = "23:00"
reason = "test"
""")
    assert any(p.startswith("sensors[0].bogus: unknown key") for p in ps)
    assert any(p.startswith("inputs[0].bounce_ms:") for p in ps)
    assert "inputs[1].resets[1]: 'panic.nowhere' is not a panic input" in ps  # a real one still is
    assert not [p for p in ps if "panic.a" in p or "co2.hall" in p], ps


def test_a_bad_maintenance_window_or_closed_date_does_not_hide_the_other_problems(tmp_path):
    """A problem inside [[maintenance]] or hours.closed could not be set aside: the schema pass
    gave up and no cross-check or limit ran (rules[0].above = inf and a timer of 1e35 s went
    unreported until the next run of config check)."""
    ps = problems(tmp_path, HALL + """
[hours]
closed = ["2026-13-01"]
[[maintenance]]
rule = "*"
from = "25:00"
to = "08:00"
reason = "x"
[[sensors]]
id = "s"
driver = "scd4x"
interval_s = 99999999999999999999999999999999999
[[rules]]
id = "x"
source = "s"
value = "co2_ppm"
above = 1e309
""")
    assert [p.split(":")[0] for p in ps] == ["hours.closed[0]", "maintenance[0].from", "sensors[0].interval_s",
                                             "rules[0].above"], ps
