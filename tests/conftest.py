import shutil

import pytest

from mqtt_helpers import MOSQUITTO, Broker


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
