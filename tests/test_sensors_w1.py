"""DS18B20 through the Linux 1-Wire sysfs files."""

import pytest

from hall_agent import sensors
from hall_agent.emulators.w1 import DS18B20Files, w1_slave_text
from hall_agent.sensors import SensorAbsent, SensorChecksumError, SensorError
from hall_agent.sensors.ds18b20 import maxim_crc8

DEV = "28-0316a2791eff"


def test_kernel_example_text(tmp_path):
    # the w1_therm format: scratchpad bytes, kernel CRC verdict, then t= in millidegrees
    (tmp_path / DEV).mkdir()
    (tmp_path / DEV / "w1_slave").write_text(
        "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t=23125\n")
    assert maxim_crc8(bytes.fromhex("72014b467fff0e10")) == 0x57  # Maxim CRC of the scratchpad
    assert sensors.create("ds18b20", device=DEV, w1_root=tmp_path).read() == {"temperature_c": 23.125}


@pytest.mark.parametrize("t", [-55.0, -10.0625, -0.5, 0.0, 21.5, 85.5, 125.0])
def test_round_trip_at_12_bit_resolution(tmp_path, t):
    DS18B20Files(tmp_path, DEV, temperature_c=t)
    got = sensors.create("ds18b20", device=DEV, w1_root=tmp_path).read()["temperature_c"]
    assert got == pytest.approx(t, abs=0.001)  # 1/16 °C steps; the kernel truncates toward zero


def test_negative_values_truncate_toward_zero():
    assert "t=-10062" in w1_slave_text(-10.0625)


def test_faults(tmp_path):
    dev = DS18B20Files(tmp_path, DEV, temperature_c=20.0)
    s = sensors.create("ds18b20", device=DEV, w1_root=tmp_path)
    dev.fault = "crc"
    dev.write()
    with pytest.raises(SensorChecksumError):
        s.read()
    dev.fault = "empty"
    dev.write()
    with pytest.raises(SensorError, match="bus error"):
        s.read()
    dev.fault = "absent"
    dev.write()
    with pytest.raises(SensorAbsent):
        s.read()


def test_85_power_on_value_only_counts_when_it_repeats(tmp_path):
    dev = DS18B20Files(tmp_path, DEV, temperature_c=20.0)
    s = sensors.create("ds18b20", device=DEV, w1_root=tmp_path)
    dev.fault = "power_on"
    dev.write()
    with pytest.raises(SensorError, match="power-on"):
        s.read()
    assert s.read() == {"temperature_c": 85.0}  # twice in a row: the room really is that hot
    dev.fault = None
    dev.write()
    assert s.read() == {"temperature_c": 20.0}
    dev.fault = "power_on"
    dev.write()
    with pytest.raises(SensorError, match="power-on"):
        s.read()
