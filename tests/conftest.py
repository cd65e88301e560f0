import os
import shutil

import pytest

from mqtt_helpers import MOSQUITTO, Broker


def pytest_configure(config):
    """``HALL_AGENT_TEST_NOW`` (ISO 8601): the run's wall clock starts at that moment and
    ticks on (time-machine; the monotonic clock and sleeps are left alone). The second
    pass of .ci/run sets it to a date in the next year without an official calendar."""
    when = os.environ.get("HALL_AGENT_TEST_NOW")
    if when:
        from datetime import datetime

        import time_machine
        traveller = time_machine.travel(datetime.fromisoformat(when), tick=True)
        traveller.start()
        config.add_cleanup(traveller.stop)


def pytest_report_header(config):
    when = os.environ.get("HALL_AGENT_TEST_NOW")
    return f"wall clock faked from {when} (HALL_AGENT_TEST_NOW)" if when else None


@pytest.fixture(autouse=True)
def no_simulated_day(monkeypatch):
    """Simulated halls keep the values tests give them (test_simday turns the day on)."""
    monkeypatch.setenv("HALL_AGENT_SIM_DAY", "0")
    # no opening/closing check fires by the calendar: tests must not depend on the time of day
    monkeypatch.setenv("HALL_AGENT_SCHEDULE", "0")


@pytest.fixture
def broker(tmp_path):
    if not shutil.which(MOSQUITTO):
        pytest.fail(f"mosquitto not found at {MOSQUITTO}: install it (apt-get install mosquitto)")
    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()
