"""I2C drivers against datasheet examples and the byte-level emulators.

Raw frames here are written out by hand from the datasheets' formulas; the
CRC bytes come from an independent bit-by-bit CRC-8 written in this file.
"""

import errno

import time

import pytest
from hypothesis import given, settings, strategies as st

from hall_agent import sensors
from hall_agent.emulators.bme280 import TYPICAL, BME280Chip, float_h, float_p, float_t
from hall_agent.emulators.i2c import EmulatedChip, EmulatedI2CBus
from hall_agent.emulators.sensirion import SCD4xChip, SGP30Chip, SHT3xChip, SHT4xChip
from hall_agent.sensors import SensorAbsent, SensorChecksumError, SensorError, SensorTimeout
from hall_agent.sensors.bme280 import Calibration, compensate_h, compensate_p, compensate_t


def crc8_bitwise(data: bytes) -> int:
    """CRC-8 as the Sensirion datasheets define it (poly 0x31, init 0xFF), bit by bit."""
    crc = 0xFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc << 1) ^ 0x31 if crc & 0x80 else crc << 1
            crc &= 0xFF
    return crc


def word(w: int) -> bytes:
    b = w.to_bytes(2, "big")
    return b + bytes([crc8_bitwise(b)])


class Canned(EmulatedChip):
    """A chip that answers every read with fixed bytes (datasheet frames)."""

    def __init__(self, reply: bytes):
        super().__init__()
        self.reply = reply
        self.written: list[bytes] = []

    def on_write(self, data):
        self.written.append(data)

    def on_read(self, length):
        return self.reply[:length]


def test_sensirion_crc_datasheet_example():
    # SHT3x-DIS datasheet table 19 / SCD4x 3.11: CRC(0xBEEF) = 0x92
    assert sensors.sensirion_crc(b"\xbe\xef") == 0x92 == crc8_bitwise(b"\xbe\xef")


@given(st.binary(min_size=0, max_size=8))
def test_sensirion_crc_matches_bitwise_definition(data):
    assert sensors.sensirion_crc(data) == crc8_bitwise(data)


def test_sht3x_conversion_from_datasheet_formula():
    # SHT3x-DIS 4.13: T = -45 + 175 * S/65535; RH = 100 * S/65535
    bus = EmulatedI2CBus()
    chip = bus.attach(0x44, Canned(word(0x6666) + word(0x8000)))
    values = sensors.create("sht3x", bus=bus, address=0x44).read()
    assert values == {"temperature_c": pytest.approx(-45 + 175 * 0x6666 / 65535, abs=0.005),
                      "humidity_pct": pytest.approx(100 * 0x8000 / 65535, abs=0.005)}
    assert values["temperature_c"] == 25.0 and values["humidity_pct"] == 50.0
    assert chip.written == [b"\x24\x00"]  # single shot, high repeatability, no clock stretching


def test_sht3x_end_points():
    bus = EmulatedI2CBus()
    bus.attach(0x44, Canned(word(0) + word(0xFFFF)))
    assert sensors.create("sht3x", bus=bus).read() == {"temperature_c": -45.0, "humidity_pct": 100.0}


def test_sht4x_humidity_is_cropped_as_the_datasheet_says():
    # SHT4x 4.6: RH = -6 + 125 * S/65535, crop to 0..100
    bus = EmulatedI2CBus()
    chip = bus.attach(0x44, Canned(word(0x0000) + word(0x0000)))
    assert sensors.create("sht4x", bus=bus).read()["humidity_pct"] == 0.0
    chip.reply = word(0xFFFF) + word(0xFFFF)
    assert sensors.create("sht4x", bus=bus).read() == {"temperature_c": 130.0, "humidity_pct": 100.0}
    chip.reply = word(0x6666) + word(0x6000)
    assert sensors.create("sht4x", bus=bus).read()["humidity_pct"] == round(-6 + 125 * 0x6000 / 65535, 2)
    assert chip.written[-1] == b"\xfd"


def test_scd4x_datasheet_example_measurement():
    # SCD4x datasheet 3.5.2 example: 0x01f4 -> 500 ppm, 0x6667 -> 25 °C, 0x5eb9 -> 37 %RH
    bus = EmulatedI2CBus()
    chip = bus.attach(0x62, Canned(b""))
    sensor = sensors.create("scd4x", bus=bus, stop_wait_s=0, poll_s=0.001)
    chip.reply = word(0x8006)  # data ready: low 11 bits not 0
    ready = sensor.data_ready()
    assert ready
    assert word(0x6667)[2] == 0xA2 and word(0x5EB9)[2] == 0x3C  # the CRC bytes printed in the datasheet
    chip.reply = word(0x01F4) + word(0x6667) + word(0x5EB9)
    values = sensor.dev.read_words(3, "measurement")
    assert values == [500, 0x6667, 0x5EB9]
    assert round(-45 + 175 * 0x6667 / 65535, 1) == 25.0 and round(100 * 0x5EB9 / 65535, 1) == 37.0
    assert [w[:2] for w in chip.written[:2]] == [b"\x3f\x86", b"\x21\xb1"]  # stop, then start periodic


def test_scd4x_start_stops_first_then_sets_altitude_and_reads_when_ready():
    bus = EmulatedI2CBus()
    chip = bus.attach(0x62, SCD4xChip(co2_ppm=1234, temperature_c=21.5, humidity_pct=40.0, period_s=0.05, stop_s=0.005))
    chip.periodic = True  # still measuring from before an agent restart
    sensor = sensors.create("scd4x", bus=bus, altitude_m=350, stop_wait_s=0.01, poll_s=0.01)
    assert chip.altitude_m == 350 and chip.periodic
    assert chip.log[:3] == [0x3F86, 0x2427, 0x21B1]
    assert sensor.read() == {"co2_ppm": 1234.0, "temperature_c": 21.5, "humidity_pct": 40.0}
    assert 0xE4B8 in chip.log  # data-ready checked before read_measurement


def test_scd4x_times_out_when_no_measurement_comes():
    bus = EmulatedI2CBus()
    bus.attach(0x62, SCD4xChip(period_s=100, stop_s=0.005))
    sensor = sensors.create("scd4x", bus=bus, stop_wait_s=0.01, ready_timeout_s=0.1, poll_s=0.02)
    with pytest.raises(SensorTimeout, match="no new measurement"):
        sensor.read()


def test_sgp30_measures_after_init_and_restores_a_saved_baseline(tmp_path):
    from hall_agent.clock import FakeClock
    from hall_agent.sensors import SensorWarmup
    bus = EmulatedI2CBus()
    chip = bus.attach(0x58, SGP30Chip(tvoc_ppb=220, eco2_ppm=780, warmup_s=0.0))
    base = tmp_path / "baseline.json"
    clock = FakeClock()
    s = sensors.create("sgp30", bus=bus, baseline_file=base, clock=clock)
    assert chip.log[0] == 0x2003  # iaq_init first
    with pytest.raises(SensorWarmup):  # the datasheet's first 15 s (400 ppm / 0 ppb) are not readings
        s.read()
    clock.advance(15)
    assert s.read() == {"tvoc_ppb": 220.0, "eco2_ppm": 780.0}
    assert not base.exists()  # no baseline worth saving before 12 h of running
    chip.baseline = (0x8A11, 0x9B22)
    clock.advance(12 * 3600 + 1)
    s.read()
    assert base.exists()
    # a restart: the baseline goes back in right after iaq_init, TVOC word first
    chip2 = EmulatedI2CBus()
    c2 = chip2.attach(0x58, SGP30Chip(warmup_s=0))
    clock.advance(3600)
    sensors.create("sgp30", bus=chip2, baseline_file=base, clock=clock)
    assert c2.log[:2] == [0x2003, 0x201E] and c2.restored_baseline == (0x8A11, 0x9B22)
    # older than 7 days: not restored
    c3bus = EmulatedI2CBus()
    c3 = c3bus.attach(0x58, SGP30Chip(warmup_s=0))
    clock.advance(8 * 86400)
    sensors.create("sgp30", bus=c3bus, baseline_file=base, clock=clock)
    assert c3.restored_baseline is None


def test_bmp280_datasheet_worked_example():
    # BMP280 datasheet (BST-BMP280-DS001) 3.12 worked example; the BME280 uses the
    # same temperature and pressure compensation. T = 25.08 °C, t_fine = 128422,
    # p = 100653.27 Pa.
    c = Calibration(T1=27504, T2=26435, T3=-1000, P1=36477, P2=-10685, P3=3024, P4=2855, P5=140, P6=-7,
                    P7=15500, P8=-14600, P9=6000, H1=0, H2=0, H3=0, H4=0, H5=0, H6=0)
    t, t_fine = compensate_t(519888, c)
    assert (t, t_fine) == (2508, 128422)
    assert compensate_p(415148, t_fine, c) / 256 == pytest.approx(100653.27, abs=0.05)
    assert float_t(519888, c)[0] == pytest.approx(25.08, abs=0.005)  # the datasheet's floating-point version
    assert float_p(415148, float_t(519888, c)[1], c) == pytest.approx(100653.27, abs=0.05)


def test_bme280_humidity_integer_and_float_formulas_agree():
    c = TYPICAL
    for adc_t in (480000, 519888, 560000):
        _, t_fine = compensate_t(adc_t, c)
        for adc_h in (20000, 27000, 33000, 40000):
            assert compensate_h(adc_h, t_fine, c) / 1024 == pytest.approx(float_h(adc_h, float(t_fine), c), abs=0.02)


def test_bme280_calibration_signs_of_h4_h5():
    # 0xE4 = 0xF0 is a negative high byte: H4 = (s8)0xF0 * 16 | (0xE5 & 0x0F) = -256 + 5 = -251
    a = bytes(26)
    b = bytes([0x6A, 0x01, 0x00, 0xF0, 0x35, 0xFE, 0x1E])
    cal = Calibration.parse(a, b)
    assert (cal.H2, cal.H4, cal.H5, cal.H6) == (362, -16 * 16 + 5, -2 * 16 + 3, 30)


def test_bme280_refuses_wrong_chip_and_blank_calibration():
    bus = EmulatedI2CBus()
    bus.attach(0x76, BME280Chip(chip_id=0x58))
    with pytest.raises(SensorAbsent, match="BMP280"):
        sensors.create("bme280", bus=bus)
    blank = Calibration(**{k: 0 for k in Calibration.__dataclass_fields__})
    bus.attach(0x77, BME280Chip(calibration=blank))
    with pytest.raises(SensorError, match="calibration"):
        sensors.create("bme280", bus=bus, address=0x77)


I2C_CASES = [
    ("sht3x", 0x44, SHT3xChip, {"temperature_c": (-40, 120, 0.01), "humidity_pct": (0, 100, 0.01)}),
    ("sht4x", 0x44, SHT4xChip, {"temperature_c": (-40, 120, 0.01), "humidity_pct": (0, 100, 0.01)}),
    ("bme280", 0x76, BME280Chip, {"temperature_c": (-40, 85, 0.01), "pressure_hpa": (300, 1100, 0.02),
                                  "humidity_pct": (1, 99, 0.05)}),
    ("sgp30", 0x58, lambda: SGP30Chip(warmup_s=0), {"tvoc_ppb": (0, 60000, 0.5), "eco2_ppm": (400, 60000, 0.5)}),
]


NO_WARMUP = {"sgp30": {"warmup_s": 0}}  # its 15 s after iaq_init: tested in test_sensor_parts.py


@pytest.mark.parametrize("driver,address,chip_cls,ranges", I2C_CASES, ids=[c[0] for c in I2C_CASES])
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_round_trip_value_raw_driver(driver, address, chip_cls, ranges, data):
    """value -> emulator's raw encoding -> real driver -> the same value within the part's resolution."""
    values = {k: data.draw(st.floats(lo, hi)) for k, (lo, hi, _) in ranges.items()}
    bus = EmulatedI2CBus()
    chip = bus.attach(address, chip_cls())
    chip.set(**values)
    got = sensors.create(driver, bus=bus, address=address, **NO_WARMUP.get(driver, {})).read()
    for key, (_, _, resolution) in ranges.items():
        assert got[key] == pytest.approx(values[key], abs=resolution), key


def test_scd4x_round_trip():
    bus = EmulatedI2CBus()
    chip = bus.attach(0x62, SCD4xChip(period_s=0.02, stop_s=0.005))
    sensor = sensors.create("scd4x", bus=bus, stop_wait_s=0.01, poll_s=0.005)
    for co2, t, rh in ((400, -10.0, 5.0), (2500, 35.5, 95.0), (40000, 0.0, 50.0)):
        chip.set(co2_ppm=co2, temperature_c=t, humidity_pct=rh)
        time.sleep(0.05)  # the next sample (every 20 ms here): the driver reads the newest one
        assert sensor.read() == pytest.approx({"co2_ppm": co2, "temperature_c": t, "humidity_pct": rh}, abs=0.01)


@pytest.mark.parametrize("driver,address,chip", [
    ("sht3x", 0x44, SHT3xChip()), ("sht4x", 0x44, SHT4xChip()), ("sgp30", 0x58, SGP30Chip(warmup_s=0)),
    ("bme280", 0x76, BME280Chip()),
])
def test_faults_raise_and_never_return_a_number(driver, address, chip):
    bus = EmulatedI2CBus()
    bus.attach(address, chip)
    sensor = sensors.create(driver, bus=bus, address=address, **NO_WARMUP.get(driver, {}))
    sensor.read()
    chip.fault = "crc"
    if driver == "bme280":  # no CRC on the BME280: a failed conversion leaves the reset value 0x80000
        with pytest.raises(SensorError, match="0x80000"):
            sensor.read()
    else:
        with pytest.raises(SensorChecksumError, match="CRC mismatch"):
            sensor.read()
    chip.fault = "absent"
    with pytest.raises(SensorAbsent):
        sensor.read()
    chip.fault = None
    assert sensor.read()


def test_missing_chip_and_early_read():
    bus = EmulatedI2CBus()
    with pytest.raises(SensorAbsent, match="did not acknowledge"):
        sensors.create("sht3x", bus=bus).read()
    chip = bus.attach(0x44, SHT3xChip())
    sensor = sensors.SHT3x(bus)
    sensor.dev.command(0x2400)  # read at once, without the 15 ms wait: the chip NACKs
    with pytest.raises(SensorTimeout, match="not ready"):
        sensor.dev.read_words(2, "measurement")
    assert chip.log == [0x2400]


def test_real_smbus2_missing_bus_is_absent():
    from hall_agent.hardware import LazySMBus
    sensor = sensors.SHT3x(LazySMBus(250))  # /dev/i2c-250 does not exist here
    with pytest.raises(SensorAbsent):
        sensor.read()
