import shutil

import pytest

from mqtt_helpers import MOSQUITTO, Broker


@pytest.fixture
def broker(tmp_path):
    if not shutil.which(MOSQUITTO):
        pytest.fail(f"mosquitto not found at {MOSQUITTO}: install it (apt-get install mosquitto)")
    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()
