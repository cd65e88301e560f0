"""Configuration: defaults, environment overrides, and one clear line per problem."""

import subprocess
import sys
from pathlib import Path

import pytest

from hall_agent.config import ConfigError, load, masked

HALL = """
[hall]
id = "zg-001"
city = "zigong"
branch = "ziliujing"
"""


def problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load(path)
    return e.value.problems


def test_minimal_file_takes_spec_defaults(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(HALL)
    s = load(path)
    assert s.hall.timezone == "Asia/Shanghai"
    assert s.mqtt.effective_port == 1883 and s.mqtt.protocol == 5 and s.mqtt.telemetry_qos == 0
    assert s.mqtt.keepalive_s == 30 and s.mqtt.drain_s == 5 and s.mqtt.topic_root == "halls"
    assert s.client_id == "hall-agent-zg-001"
    assert s.base_topic == "halls/zigong/ziliujing/zg-001"
    assert s.agent.health_interval_s == 60 and s.storage.max_outbox_mb == 256
    assert s.checks.opening_lead_min == 30 and s.checks.closing_delay_min == 15 and s.checks.require_time_sync
    assert s.hours.holidays == "CN" and not s.commands.allow_reset and not s.commands.allow_power
    assert s.profile.summer_months == [5, 6, 7, 8, 9] and s.profile.winter_months == [11, 12, 1, 2, 3]


def test_tls_default_port_and_part_defaults(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(HALL + """
[mqtt]
tls = true
[[sensors]]
id = "env.hall"
driver = "sht3x"
[[sensors]]
id = "co2.hall"
driver = "scd4x"
address = "0x62"
[[sensors]]
id = "pm.hall"
driver = "pms5003"
port = "/dev/ttyUSB0"
[[inputs]]
id = "door.side"
kind = "door"
pin = 17
""")
    s = load(path)
    assert s.mqtt.effective_port == 8883
    assert [x.address for x in s.sensors[:2]] == [0x44, 0x62]
    assert s.sensors[2].baudrate == 9600 and s.sensors[0].interval_s == 30 and s.sensors[0].fault_after == 3
    door = s.inputs[0]
    assert (door.contact, door.pull_up, door.bounce_ms, door.held_open_s) == ("no", True, 50, 120)


def test_environment_overrides_file(tmp_path, monkeypatch):
    path = tmp_path / "c.toml"
    path.write_text(HALL + "[mqtt]\nhost = 'file-host'\nport = 1883\n")
    monkeypatch.setenv("HALL_AGENT_MQTT__PORT", "1999")
    monkeypatch.setenv("HALL_AGENT_HALL__NAME", "Ziliujing hall 1")
    monkeypatch.setenv("HALL_AGENT_CONFIG", str(path))
    s = load(None)  # path from HALL_AGENT_CONFIG
    assert s.mqtt.port == 1999 and s.mqtt.host == "file-host" and s.hall.name == "Ziliujing hall 1"


def test_bad_environment_value_names_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("HALL_AGENT_MQTT__PORT", "not-a-port")
    assert any(p.startswith("mqtt.port:") for p in problems(tmp_path, HALL))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as e:
        load(tmp_path / "nope.toml")
    assert e.value.problems == [f"{tmp_path / 'nope.toml'}: no such file (give -c FILE or set HALL_AGENT_CONFIG)"]


def test_toml_syntax_error_names_line(tmp_path):
    (p,) = problems(tmp_path, HALL + "[mqtt]\nhost = \n")
    assert "TOML syntax error" in p and "line 7" in p


def test_unknown_keys_with_did_you_mean(tmp_path):
    ps = problems(tmp_path, HALL + "[mqtt]\nhsot = 'x'\n[[sensors]]\nid='a'\ndriver='sht3x'\nintervall_s=5\n[colour]\nx=1\n")
    assert "mqtt.hsot: unknown key (did you mean 'host'?)" in ps
    assert "sensors[0].intervall_s: unknown key (did you mean 'interval_s'?)" in ps
    assert "colour: unknown key" in ps


def test_bad_i2c_address_message_from_spec(tmp_path):
    ps = problems(tmp_path, HALL + "[[sensors]]\nid='a'\ndriver='sht3x'\n[[sensors]]\nid='b'\ndriver='sht3x'\naddress=0x99\n")
    assert ps == ["sensors[1].address: 0x99 is not a 7-bit I2C address (0x08-0x77)"]


def test_one_line_per_problem(tmp_path):
    ps = problems(tmp_path, """
[hall]
id = "ZG 001"
city = "zigong"
[agent]
log_level = "loud"
[[inputs]]
id = "door.side"
kind = "dor"
pin = 17
""")
    assert ps[0].startswith("hall.id: 'ZG 001' is not a valid id")
    assert "hall.branch: required key is missing" in ps
    assert any(p.startswith('agent.log_level: must be one of "debug"') and "(got 'loud')" in p for p in ps)
    assert 'inputs[0].kind: must be one of "door", "panic", "motion", "reset" (got \'dor\')' in ps
    assert not any("Input should" in p for p in ps)  # our wording, not pydantic's
    assert len(ps) == 4


def test_duplicate_ids_across_tables(tmp_path):
    ps = problems(tmp_path, HALL + """
[[sensors]]
id = "door.side"
driver = "sht3x"
[[inputs]]
id = "door.side"
kind = "door"
pin = 17
""")
    assert ps == ["inputs[0].id: duplicate id 'door.side', already used by sensors[0]"]


def test_gpio_pin_used_twice_in_any_spelling(tmp_path):
    ps = problems(tmp_path, HALL + """
[[inputs]]
id = "door.side"
kind = "door"
pin = 17
[[inputs]]
id = "panic.1"
kind = "panic"
pin = "GPIO17"
[[equipment]]
id = "kiosk.1"
relay_pin = "BCM17"
""")
    assert ps == ["inputs[1].pin: pin GPIO17 is already used by inputs[0].pin",
                  "equipment[0].relay_pin: pin BCM17 is already used by inputs[0].pin"]


def test_two_parts_at_one_i2c_address(tmp_path):
    ps = problems(tmp_path, HALL + """
[[sensors]]
id = "a"
driver = "sht3x"
[[sensors]]
id = "b"
driver = "sht4x"
[[sensors]]
id = "c"
driver = "sht4x"
bus = 3
""")
    assert ps == ["sensors[1].address: bus 1 address 0x44 is already used by sensors[0]"]


def test_example_config_is_valid():
    from pathlib import Path
    s = load(Path(__file__).parent.parent / "deploy" / "config.example.toml")
    assert len(s.sensors) == 6 and len(s.inputs) == 5 and len(s.equipment) == 3


def test_driver_requirements_and_references(tmp_path):
    ps = problems(tmp_path, HALL + """
[[sensors]]
id = "co2.uart"
driver = "mhz19"
[[sensors]]
id = "t.probe"
driver = "ds18b20"
device = "29-xyz"
[[inputs]]
id = "key"
kind = "reset"
pin = 5
resets = ["panic.9"]
[[rules]]
id = "co2-high"
source = "co2.missing"
value = "co2_ppm"
above = 1000
""")
    assert ps == [
        "sensors[0].port: required by driver 'mhz19' (a serial port such as /dev/ttyAMA0)",
        "sensors[1].device: '29-xyz' is not a DS18B20 id such as 28-0316a2791eff",
        "inputs[0].resets[0]: 'panic.9' is not a panic input",
        "rules[0].source: 'co2.missing' is not a sensor id",
    ]


def test_rule_threshold_shape(tmp_path):
    (p,) = problems(tmp_path, HALL + "[[rules]]\nid='co2-high'\nvalue='co2_ppm'\nabove=1000\nclear_below=1200\n")
    assert p == "rules[0]: clear_below (1200.0) must not exceed above (1000.0)"


def test_password_never_in_clear_to_a_remote_broker(tmp_path):
    ps = problems(tmp_path, HALL + "[mqtt]\nhost='broker.example.com'\nusername='zg-001'\npassword='s3cret'\n")
    assert ps == ["mqtt.tls: refusing to send the password in clear text to broker.example.com: "
                  "set tls = true (or use a loopback broker)"]


def test_hours_and_profile_months(tmp_path):
    ps = problems(tmp_path, HALL + """
[hours]
monday = "17:30-08:30"
open = { 2026-10-10 = "closed" }
""")
    assert ps == ["hours.monday: '17:30-08:30' closes before it opens",
                  "hours.open: 2026-10-10: an open date needs hours such as \"09:00-16:00\""]
    ps = problems(tmp_path, HALL + """
[profile]
summer_months = "5-9"
winter_months = "9-3"
""")
    assert ps == ["profile.winter_months: months [9] are in both summer_months and winter_months"]


def test_show_masks_secrets(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(HALL + "[mqtt]\nusername='zg-001'\npassword='s3cret-pw'\n")
    out = subprocess.run([sys.executable, "-m", "hall_agent", "config", "show", "-c", str(path)],
                         capture_output=True, text=True, check=True).stdout
    assert "s3cret-pw" not in out and '"password": "********"' in out
    assert masked(load(path))["mqtt"]["client_id"] == "hall-agent-zg-001"


def test_cli_refuses_bad_config_with_exit_2_and_no_traceback(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(HALL + "[[sensors]]\nid='a'\ndriver='sht3x'\naddress=0x99\n")
    for sub in (["config", "check"], ["run"]):
        r = subprocess.run([sys.executable, "-m", "hall_agent", *sub, "-c", str(path)], capture_output=True, text=True)
        assert r.returncode == 2
        assert r.stderr == "config error: sensors[0].address: 0x99 is not a 7-bit I2C address (0x08-0x77)\n"
    r = subprocess.run([sys.executable, "-m", "hall_agent", "config", "check", "-c", str(tmp_path / "none.toml")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "no such file" in r.stderr and "Traceback" not in r.stderr


def test_run_refuses_an_unwritable_state_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    path = tmp_path / "c.toml"
    path.write_text(HALL + f'[storage]\ndir = "{blocker}/state"\n')
    r = subprocess.run([sys.executable, "-m", "hall_agent", "run", "-c", str(path)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 2 and r.stderr.startswith("config error: storage.dir: ") and "Traceback" not in r.stderr


@pytest.mark.parametrize("name, value, field", [("HALL_AGENT_RULES", '[{"id": 1}', "rules"),
                                                ("HALL_AGENT_HOURS__CLOSED", "[2026", "hours")])
def test_an_environment_variable_that_is_not_json_is_a_config_error_not_a_traceback(monkeypatch, name, value, field):
    """pydantic-settings raises SettingsError (not ValidationError) for a list/table variable
    that is not JSON: it went out of `config check` and `run` as a traceback."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as e:
        load(Path(__file__).parent.parent / "deploy" / "config.example.toml")
    assert e.value.problems[0].startswith(f"{field}: the environment variable {name} is not valid JSON")
