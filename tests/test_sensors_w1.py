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


def w1(tmp_path, text):
    (tmp_path / DEV).mkdir(exist_ok=True)
    (tmp_path / DEV / "w1_slave").write_text(text)
    return sensors.create("ds18b20", device=DEV, w1_root=tmp_path)


@pytest.mark.parametrize("raw,celsius", [
    # DS18B20 datasheet, table 1 "temperature/data relationship"
    (0x07D0, 125.0), (0x0550, 85.0), (0x0191, 25.0625), (0x00A2, 10.125), (0x0008, 0.5), (0x0000, 0.0),
    (0xFFF8, -0.5), (0xFF5E, -10.125), (0xFE6F, -25.0625), (0xFC90, -55.0),
])
def test_datasheet_table_1_vectors_through_the_emulator(tmp_path, raw, celsius):
    from hall_agent.emulators.w1 import raw_from_celsius
    assert raw_from_celsius(celsius) == raw
    DS18B20Files(tmp_path, DEV, temperature_c=celsius)
    milli = int(celsius * 1000)  # t= is in whole millidegrees, truncated toward zero (25.0625 -> 25.062)
    assert sensors.create("ds18b20", device=DEV, w1_root=tmp_path).read() == {"temperature_c": milli / 1000}


def test_emulator_crc_is_independent_and_agrees_on_the_datasheet_vectors():
    from hall_agent.emulators.w1 import dallas_crc
    for body, crc in ((bytes.fromhex("72014b467fff0e10"), 0x57),    # the w1_therm documentation's example
                      (bytes.fromhex("50054b467fff0c10"), 0x1C)):   # datasheet power-on scratchpad
        assert dallas_crc(body) == crc == maxim_crc8(body)


def test_negative_values_truncate_toward_zero():
    from hall_agent.emulators.w1 import scratchpad
    assert "t=-10062" in w1_slave_text(scratchpad(-10.0625))


def test_faults(tmp_path):
    dev = DS18B20Files(tmp_path, DEV, temperature_c=20.0)
    s = sensors.create("ds18b20", device=DEV, w1_root=tmp_path)
    dev.fault = "crc"
    dev.write()
    with pytest.raises(SensorChecksumError):
        s.read()
    dev.fault = "empty"   # current kernels: 5 CRC retries, then an empty read
    dev.write()
    with pytest.raises(SensorChecksumError, match="bus error"):
        s.read()
    dev.fault = "absent"
    dev.write()
    with pytest.raises(SensorAbsent):
        s.read()


def test_all_zero_scratchpad_with_its_valid_crc_is_not_zero_degrees(tmp_path):
    s = w1(tmp_path, "00 00 00 00 00 00 00 00 00 : crc=00 YES\n00 00 00 00 00 00 00 00 00 t=0\n")
    with pytest.raises(SensorChecksumError, match="all-zero"):
        s.read()


@pytest.mark.parametrize("pad,milli", [("50 05 4b 46 7f ff 0c 10 1c", 85000),    # power-on value
                                       ("ff 07 4b 46 7f ff 0c 10 a6", 127937)])  # failed conversion
def test_failed_conversion_by_the_kernels_rule_whether_or_not_it_repeats(tmp_path, pad, milli):
    from hall_agent.emulators.w1 import dallas_crc
    assert dallas_crc(bytes.fromhex(pad.replace(" ", ""))[:8]) == int(pad[-2:], 16)
    s = w1(tmp_path, f"{pad} : crc={pad[-2:]} YES\n{pad} t={milli}\n")
    for _ in range(3):
        with pytest.raises(SensorError, match="conversion failed"):
            s.read()


def test_a_real_85_degrees_has_byte_6_0x10_and_is_a_reading(tmp_path):
    from hall_agent.emulators.w1 import scratchpad
    pad = scratchpad(85.0)
    assert pad[6] == 0x10 and pad[:2] == b"\x50\x05"
    s = w1(tmp_path, w1_slave_text(pad))
    assert s.read() == {"temperature_c": 85.0}


def test_emulator_faults_power_on_failed_and_zeros(tmp_path):
    dev = DS18B20Files(tmp_path, DEV, temperature_c=20.0)
    s = sensors.create("ds18b20", device=DEV, w1_root=tmp_path)
    for fault, match in (("power_on", "conversion failed"), ("failed", "conversion failed"), ("zeros", "all-zero")):
        dev.fault = fault
        dev.write()
        with pytest.raises(SensorError, match=match):
            s.read()
    dev.fault = None
    dev.write()
    assert s.read() == {"temperature_c": 20.0}


def test_outside_the_parts_range_is_not_a_reading(tmp_path):
    from hall_agent.emulators.w1 import scratchpad
    pad = scratchpad(raw=0x0800)      # 128 °C: CRC fine, byte 6 genuine, beyond 125 °C
    with pytest.raises(SensorError, match="outside"):
        w1(tmp_path, w1_slave_text(pad)).read()


def test_newer_temperature_attribute_with_the_same_checks(tmp_path):
    dev = DS18B20Files(tmp_path, DEV, temperature_c=-10.125, attribute="temperature")
    assert not (tmp_path / DEV / "w1_slave").exists()
    s = sensors.create("ds18b20", device=DEV, w1_root=tmp_path)
    assert s.read() == {"temperature_c": -10.125}
    dev.fault = "empty"
    dev.write()
    with pytest.raises(SensorChecksumError, match="empty"):
        s.read()
    dev.fault = "failed"          # 127.937 °C: outside the range
    dev.write()
    with pytest.raises(SensorError, match="outside"):
        s.read()


def test_w1_slave_is_preferred_when_both_files_exist(tmp_path):
    from hall_agent.emulators.w1 import scratchpad
    pad = scratchpad(raw=0x0550, byte6=0x0C)                 # a failed conversion in the scratchpad
    s = w1(tmp_path, w1_slave_text(pad))
    (tmp_path / DEV / "temperature").write_text("85000\n")  # the bare attribute cannot tell
    with pytest.raises(SensorError, match="conversion failed"):
        s.read()


@pytest.mark.parametrize("text", [
    "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\nnonsense\n",                      # second line broken
    "72 01 4b 46 7f ff 0e 10 57 : crc=57 NO\n72 01 4b 46 7f ff 0e 10 57 t=23125\n",  # kernel says NO
    "72 01 4b 46 7f ff 0e 10 58 : crc=58 YES\n72 01 4b 46 7f ff 0e 10 58 t=23125\n",  # our CRC disagrees
])
def test_any_one_failed_check_is_enough(tmp_path, text):
    with pytest.raises(SensorChecksumError):
        w1(tmp_path, text).read()
