"""Configuration of alarm handling: [alerts], [[maintenance]], [commands] allow_ack."""

from datetime import time
from pathlib import Path

import pytest

from hall_agent.config import ConfigError, load

HALL = """
[hall]
id = "zg-001"
city = "zigong"
branch = "ziliujing"
[[inputs]]
id = "door.back"
kind = "door"
pin = 17
[[inputs]]
id = "panic.counter1"
kind = "panic"
pin = 27
contact = "nc"
"""


def problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load(path)
    return e.value.problems


def test_defaults(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(HALL)
    s = load(path)
    a = s.alerts
    assert (a.escalate_branch_s, a.escalate_city_s, a.flap_count, a.flap_window_s, a.drill_due_days) == \
        (120, 900, 4, 600, 90)
    assert s.commands.allow_ack is True and s.maintenance == []


def test_a_scheduled_window(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(HALL + """
[[maintenance]]
rule = "door-after-hours"
source = "door.back"
weekdays = ["monday", "friday"]
from = "22:00"
to = "02:00"
reason = "cleaners"
""")
    (w,) = load(path).maintenance
    assert (w.rule, w.source, w.weekdays, w.from_, w.to, w.reason) == \
        ("door-after-hours", "door.back", ["monday", "friday"], time(22), time(2), "cleaners")


def test_a_window_naming_panic_and_other_mistakes_are_refused_in_one_pass(tmp_path):
    ps = problems(tmp_path, HALL + """
[alerts]
flap_count = 1
[[maintenance]]
rule = "panic"
from = "22:00"
to = "23:00"
reason = "x"
[[maintenance]]
rule = "door-after-hour"
source = "door.bak"
from = "25:00"
to = "23:00"
reason = "x"
[[maintenance]]
rule = "*"
from = "22:00"
to = "22:00"
reason = "x"
""")
    assert "maintenance[0].rule: panic alarms can never be suppressed: no maintenance window may name " \
           "'panic'" in ps
    assert "maintenance[1].from: '25:00' is not a time of day such as \"18:00\"" in ps
    assert "alerts.flap_count: must be at least 2 (got 1)" in ps
    assert any(p.startswith("maintenance[2]: from and to are the same time") for p in ps)


def test_a_window_naming_an_unknown_rule_or_part(tmp_path):
    ps = problems(tmp_path, HALL + """
[[maintenance]]
rule = "door-after-hour"
source = "door.bak"
from = "22:00"
to = "23:00"
reason = "x"
""")
    assert ps == ["maintenance[0].rule: 'door-after-hour' is not an alert rule of this hall (or \"*\" for every "
                  "rule but panic)",
                  "maintenance[0].source: 'door.bak' is not a sensor, input, printer or equipment id (or \"*\")"]


def test_escalation_steps_in_order(tmp_path):
    ps = problems(tmp_path, HALL + "[alerts]\nescalate_branch_s = 900\nescalate_city_s = 120\n")
    assert ps == ["alerts: escalate_city_s (120) must be later than escalate_branch_s (900)"]
