"""Each part as its datasheet says (issue 15): datasheet byte vectors for every
conversion and frame, warm-ups, ranges, calibration switches, one lock per
I2C bus, and emulators that share nothing with the drivers."""

import ast
import threading
import time
from pathlib import Path

import pytest

from hall_agent import sensors
from hall_agent.emulators.i2c import EmulatedI2CBus
from hall_agent.emulators.sensirion import SCD4xChip, SGP30Chip, crc8, encode_words
from hall_agent.sensors import SensorError, SensorWarmup
from hall_agent.sensors.base import sensirion_crc, words_with_crc

ROOT = Path(__file__).resolve().parent.parent


# -- twins: no emulator imports a driver helper ------------------------------------------

def test_no_emulator_imports_the_drivers():
    for path in sorted((ROOT / "hall_agent" / "emulators").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                module = ("." * node.level) + (node.module or "")
                assert "sensors" not in module and "devices" not in module, f"{path.name} imports {module}"
            if isinstance(node, ast.Import):
                assert not any("hall_agent.sensors" in a.name or "hall_agent.devices" in a.name
                               for a in node.names), path.name


# -- Sensirion framing: datasheet vectors ---------------------------------------------------

@pytest.mark.parametrize("pair,crc", [
    (b"\xbe\xef", 0x92),   # SHT3x/SHT4x/SCD4x/SGP30 datasheets: the CRC example
    (b"\x07\x9e", 0x09),   # SCD4x set_sensor_altitude example: 1950 m
    (b"\x07\xe6", 0x48),   # SCD4x set_temperature_offset example: 5.4 °C
    (b"\x01\xf4", 0x33), (b"\x66\x67", 0xA2), (b"\x5e\xb9", 0x3C),  # SCD4x read_measurement example
])
def test_sensirion_crc_datasheet_vectors_driver_and_emulator(pair, crc):
    assert sensirion_crc(pair) == crc and crc8(pair) == crc


def test_scd4x_read_measurement_example_decodes_to_500_ppm_25_c_37_pct():
    class Example(SCD4xChip):
        def _measure(self):
            return [0x01F4, 0x6667, 0x5EB9]                  # the datasheet's example words
    bus = EmulatedI2CBus()
    bus.attach(0x62, Example(period_s=0.05, stop_s=0.0))
    assert encode_words([0x01F4, 0x6667, 0x5EB9]) == bytes.fromhex("01f433" "6667a2" "5eb93c")  # on the wire
    s = sensors.create("scd4x", bus=bus, stop_wait_s=0.0, poll_s=0.01)
    assert s.read() == {"co2_ppm": 500.0, "temperature_c": 25.0, "humidity_pct": 37.0}
    chip = SCD4xChip()
    chip.set(temperature_c=25.0, humidity_pct=37.0)           # and the emulator's own encoding, within 1 tick
    assert [abs(a - b) <= 1 for a, b in zip(chip._measure()[1:], [0x6667, 0x5EB9])] == [True, True]


class Recording:
    """Records every I2C write frame (what goes on the wire)."""

    def __init__(self, bus):
        self.bus, self.frames = bus, []

    def i2c_rdwr(self, *msgs):
        from smbus2.smbus2 import I2C_M_RD
        for m in msgs:
            if not m.flags & I2C_M_RD:
                self.frames.append(bytes(m))
        return self.bus.i2c_rdwr(*msgs)

    def __getattr__(self, name):
        return getattr(self.bus, name)


def test_scd4x_frames_ambient_pressure_and_asc():
    bus = EmulatedI2CBus()
    chip = bus.attach(0x62, SCD4xChip(period_s=0.05, stop_s=0.0))
    rec = Recording(bus)
    sensors.create("scd4x", bus=rec, pressure_hpa=1013, asc=False, stop_wait_s=0.0)
    # set_ambient_pressure 0xE000 for 101 300 Pa: word = Pa / 100 = 1013 = 0x03F5, CRC 0xDB
    assert bytes.fromhex("e00003f5db") in rec.frames
    # set_automatic_self_calibration_enabled 0x2416, 0 = off (CRC of 0x0000 = 0x81), sent while stopped
    assert bytes.fromhex("241600008" "1") in rec.frames
    assert rec.frames.index(bytes.fromhex("2416000081")) < rec.frames.index(bytes.fromhex("21b1"))
    assert chip.asc is False and chip.pressure_hpa == 1013


def test_sgp30_frames_measure_and_set_baseline_word_order(tmp_path):
    import json
    bus = EmulatedI2CBus()
    chip = bus.attach(0x58, SGP30Chip(warmup_s=0))
    (tmp_path / "b.json").write_text(json.dumps({"eco2": 0x8E68, "tvoc": 0x8F41, "saved_at": time.time(),
                                                 "synced": True}))
    rec = Recording(bus)
    s = sensors.create("sgp30", bus=rec, baseline_file=tmp_path / "b.json", warmup_s=0)
    # set_iaq_baseline 0x201E takes TVOC first, then eCO2 (datasheet 6.3), each word with its CRC
    assert bytes.fromhex("201e" "8f4137" "8e68cd") in rec.frames
    assert words_with_crc([0x8F41, 0x8E68]) == bytes.fromhex("8f41378e68cd")
    assert chip.restored_baseline == (0x8E68, 0x8F41)
    chip.set(eco2_ppm=0x01A0, tvoc_ppb=0x0020)
    assert s.read() == {"eco2_ppm": 416.0, "tvoc_ppb": 32.0}     # measure_iaq answers eCO2 first, then TVOC
    assert bytes.fromhex("2008") in rec.frames


# -- SCD4x at its real 5 s period (issue 15.3) ------------------------------------------------

def test_scd4x_at_its_real_period_reads_on_the_first_start_and_every_5_s_without_timeouts():
    """No fast-simulation switch: the chip samples every 5 s and stops in 500 ms. The
    loop's read timeout covers the driver's first read (stop + first sample)."""
    from hall_agent.sensors.loop import SensorRunner, SensorSpec
    from hall_agent.sensors.scd4x import SCD4x
    bus = EmulatedI2CBus()
    bus.attach(0x62, SCD4xChip(co2_ppm=700))              # period_s=5.0, stop_s=0.5: the real part
    readings, faults = [], []
    spec = SensorSpec("co2", "scd4x", 5.0, 1, lambda: SCD4x(bus), timeout_s=SCD4x.read_timeout_s)
    assert spec.read_timeout > 5.5
    runner = SensorRunner(spec, lambda sid, m, v: readings.append((time.monotonic(), v)),
                          lambda sid, e, n: faults.append(e.reason), lambda sid: None)
    t0 = time.monotonic()
    runner.start()
    try:
        deadline = time.monotonic() + 20
        while len(readings) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        runner.stop()
    assert faults == [] and runner.failures == 0, faults
    assert len(readings) >= 2 and readings[0][1]["co2_ppm"] == 700.0
    assert readings[0][0] - t0 < 7.0                      # the first read of a start gives a value


def test_scd4x_asked_more_often_than_5_s_returns_the_fresh_sample_instead_of_waiting():
    bus = EmulatedI2CBus()
    chip = bus.attach(0x62, SCD4xChip(co2_ppm=650, period_s=0.3, stop_s=0.0))
    s = sensors.create("scd4x", bus=bus, stop_wait_s=0.0, poll_s=0.01)
    first = s.read()                                      # waits for the first sample
    chip.period_s = 60.0                                  # no new sample for a while
    t0 = time.monotonic()
    assert s.read() == first and time.monotonic() - t0 < 0.2   # the buffered one, at once


# -- warm-ups are not readings and not faults (issue 15.7) -----------------------------------

def test_a_warming_part_is_neither_published_nor_a_fault():
    from hall_agent.sensors import Sensor
    from hall_agent.sensors.loop import SensorRunner, SensorSpec

    class Warming(Sensor):
        model = "w"

        def read(self):
            raise SensorWarmup("w: preheating")
    readings, faults = [], []
    runner = SensorRunner(SensorSpec("w", "w", 0.05, 2, Warming), lambda *a: readings.append(a),
                          lambda *a: faults.append(a), lambda *a: None)
    for _ in range(5):
        assert runner.read_once() is None
    assert readings == [] and faults == [] and runner.failures == 0 and runner.warming == "w: preheating"


def test_sgp30_first_15_s_after_iaq_init_are_warmup_on_the_monotonic_clock():
    from hall_agent.clock import FakeClock
    clock = FakeClock()
    bus = EmulatedI2CBus()
    bus.attach(0x58, SGP30Chip(warmup_s=0, tvoc_ppb=80, eco2_ppm=500))
    s = sensors.create("sgp30", bus=bus, clock=clock)
    with pytest.raises(SensorWarmup):
        s.read()
    clock.step(3600)                                       # an NTP step is not running time
    with pytest.raises(SensorWarmup):
        s.read()
    clock.advance(15)
    assert s.read() == {"tvoc_ppb": 80.0, "eco2_ppm": 500.0}


def test_sgp30_is_measured_at_1_hz_whatever_interval_s_says():
    from hall_agent.sensors.loop import SensorRunner, SensorSpec
    from hall_agent.sensors.sgp30 import SGP30
    bus = EmulatedI2CBus()
    chip = bus.attach(0x58, SGP30Chip(warmup_s=0))
    spec = SensorSpec("voc", "sgp30", 0.2, 3, lambda: SGP30(bus, warmup_s=0), sample_s=SGP30.sample_s)
    assert spec.period == 1.0
    runner = SensorRunner(spec, lambda *a: None, lambda *a: None, lambda *a: None)
    runner.start()
    time.sleep(2.5)
    runner.stop()
    assert 2 <= len(chip.measure_times) <= 3, chip.measure_times   # at 0.2 s it would be ~12


# -- SGP30 baseline: ages only with a synchronised clock; save failures kept (issue 15.6) ------

def _sgp30(tmp_path, clock, saved=None):
    import json
    bus = EmulatedI2CBus()
    chip = bus.attach(0x58, SGP30Chip(warmup_s=0))
    path = tmp_path / "sgp30-baseline.json"
    if saved is not None:
        path.write_text(json.dumps(saved))
    s = sensors.create("sgp30", bus=bus, baseline_file=path, clock=clock, warmup_s=0)
    return s, chip, path


def test_sgp30_restores_only_once_the_clock_is_synchronised(tmp_path):
    from hall_agent.clock import FakeClock
    clock = FakeClock(synced=False)
    saved = {"eco2": 0x8E00, "tvoc": 0x8F00, "saved_at": clock.time() - 3600, "synced": True}
    s, chip, _ = _sgp30(tmp_path, clock, saved)
    s.read()
    assert chip.restored_baseline is None                  # age unknown yet
    clock.set_synced(True)
    s.read()
    assert chip.restored_baseline == (0x8E00, 0x8F00)


@pytest.mark.parametrize("saved_delta,synced_at_save", [(-10 * 86400, True), (-60, False), (+3600, True)])
def test_sgp30_does_not_restore_an_old_unknown_age_or_future_baseline(tmp_path, saved_delta, synced_at_save):
    from hall_agent.clock import FakeClock
    clock = FakeClock()
    saved = {"eco2": 0x8E00, "tvoc": 0x8F00, "saved_at": clock.time() + saved_delta, "synced": synced_at_save}
    s, chip, _ = _sgp30(tmp_path, clock, saved)
    s.read()
    assert chip.restored_baseline is None


def test_sgp30_first_save_after_12_h_of_running_time_not_of_wall_time(tmp_path):
    import json
    from hall_agent.clock import FakeClock
    clock = FakeClock()
    s, chip, path = _sgp30(tmp_path, clock)
    s.read()
    clock.step(13 * 3600)                                  # NTP corrects a Pi that booted in 1970
    s.read()
    assert not path.exists()
    clock.advance(12 * 3600)
    s.read()
    doc = json.loads(path.read_text())
    assert (doc["eco2"], doc["tvoc"], doc["synced"]) == (0x8E68, 0x8F41, True)


def test_sgp30_baseline_that_cannot_be_saved_keeps_the_readings(tmp_path, caplog):
    from hall_agent.clock import FakeClock
    clock = FakeClock()
    s, chip, path = _sgp30(tmp_path, clock)
    path.with_suffix(".tmp").mkdir()                       # the save cannot write (as a full disk)
    s.read()
    for _ in range(3):
        clock.advance(12 * 3600)
        assert "tvoc_ppb" in s.read()                      # no SensorError, no re-init
    assert chip.log.count(0x2003) == 1                     # iaq_init once: the learnt baseline is kept
    assert sum("cannot be saved" in r.getMessage() for r in caplog.records) == 1


# -- serial parts: preheat, ranges, calibration, modes (issues 15.7, 15.8, 15.9) --------------

@pytest.fixture
def devices():
    made = []

    def make(cls, **kw):
        d = cls(**kw)
        made.append(d)
        return d
    yield make
    for d in made:
        d.close()


def test_mhz19_preheat_is_warmup_and_0_or_impossible_ppm_is_not_a_reading(devices):
    from hall_agent.emulators.winsen import MHZ19Device
    dev = devices(MHZ19Device, co2_ppm=650)
    uptime = [30.0]                                         # the Pi booted 30 s ago
    s = sensors.create("mhz19", port=dev.port, uptime=lambda: uptime[0])
    with pytest.raises(SensorWarmup, match="preheat"):
        s.read()
    uptime[0] = 181.0
    assert s.read() == {"co2_ppm": 650.0}
    for ppm in (0, 65535, 10001):                           # valid checksums, impossible values
        dev.set(co2_ppm=ppm)
        with pytest.raises(SensorError, match="outside the part's range"):
            s.read()


def test_mhz19_preheats_again_after_its_adapter_is_replugged(devices):
    import time as _t
    from hall_agent.emulators.winsen import MHZ19Device
    dev = devices(MHZ19Device, co2_ppm=650)
    s = sensors.create("mhz19", port=dev.port, uptime=_t.monotonic, preheat_s=0.5)
    _t.sleep(0.5)
    assert s.read() == {"co2_ppm": 650.0}
    dev.unplug()
    with pytest.raises(SensorError):
        s.read()
    dev.replug()
    with pytest.raises(SensorWarmup):
        s.read()


@pytest.mark.parametrize("abc,frame", [(False, "ff0179000000000086"), (True, "ff0179a000000000e6")])
def test_mhz19_abc_switch_is_sent(devices, abc, frame):
    """MH-Z19B manual: 0x79 with A0 (on) / 00 (off), checksum 0xFF - sum(bytes 1..7) + 1."""
    from hall_agent.emulators.winsen import MHZ19Device
    dev = devices(MHZ19Device)
    s = sensors.create("mhz19", port=dev.port, abc=abc, uptime=lambda: 1e6)
    s.read()
    time.sleep(0.1)
    assert bytes.fromhex(frame) in dev.requests and dev.abc is abc


def test_ze08_left_in_question_and_answer_mode_is_switched_to_active_upload(devices):
    from hall_agent.emulators.winsen import ZE08Device
    dev = devices(ZE08Device, hcho_mgm3=0.05, period_s=0.1, mode="qa")
    s = sensors.create("ze08", port=dev.port)
    assert s.read()["hcho_mgm3"] == pytest.approx(0.05, abs=0.0007)
    assert bytes.fromhex("ff0178400000000047") in dev.requests and dev.mode == "active"


def test_ze08_value_above_the_full_range_its_frame_states_is_not_a_reading(devices):
    from hall_agent.emulators.winsen import ZE08Device
    dev = devices(ZE08Device, period_s=0.1)
    s = sensors.create("ze08", port=dev.port)
    dev.raw_ppb = 5001                                      # full range 5000 ppb in the same frame
    with pytest.raises(SensorError, match="full range"):
        s.read()


def test_pms5003_datasheet_command_frames():
    from hall_agent.sensors import pms5003
    # appendix II: 42 4D cmd 00 arg, then the 16-bit sum of the first five bytes
    assert pms5003.command(0xE2, 0x00) == bytes.fromhex("424de200000171")   # read in passive mode
    assert pms5003.command(0xE1, 0x00) == bytes.fromhex("424de100000170")   # passive mode
    assert pms5003.command(0xE4, 0x00) == bytes.fromhex("424de400000173")   # sleep
    assert pms5003.command(0xE4, 0x01) == bytes.fromhex("424de400010174")   # wake


def test_pms5003_is_read_in_passive_mode_and_a_sleeping_one_is_woken_with_its_warmup(devices):
    from hall_agent.clock import FakeClock
    from hall_agent.emulators.pms import PMS5003Device
    clock = FakeClock()
    dev = devices(PMS5003Device, pm25_ugm3=21)
    dev.sleeping = True                                     # left asleep by someone
    s = sensors.create("pms5003", port=dev.port, clock=clock.monotonic)
    assert not dev.sleeping and not dev.active              # woken, and in passive mode
    with pytest.raises(SensorWarmup, match="settling"):
        s.read()
    clock.advance(30)
    assert s.read()["pm25_ugm3"] == 21.0
    assert dev.requests[-1] == bytes.fromhex("424de200000171")


def test_pms5003_sleeps_outside_business_hours_and_wakes_with_its_warmup(devices):
    from hall_agent.clock import FakeClock
    from hall_agent.emulators.pms import PMS5003Device
    clock = FakeClock()
    is_open = [True]
    dev = devices(PMS5003Device)
    s = sensors.create("pms5003", port=dev.port, clock=clock.monotonic, awake=lambda: is_open[0])
    assert "pm25_ugm3" in s.read()                          # awake already: no warm-up
    is_open[0] = False
    with pytest.raises(SensorWarmup, match="asleep"):
        s.read()
    assert dev.sleeping
    is_open[0] = True
    with pytest.raises(SensorWarmup, match="settling"):
        s.read()
    clock.advance(30)
    assert "pm25_ugm3" in s.read() and not dev.sleeping


def test_pms5003_impossible_value_with_a_valid_checksum(devices):
    from hall_agent.emulators.pms import PMS5003Device
    dev = devices(PMS5003Device)
    s = sensors.create("pms5003", port=dev.port)
    dev.set(pm10_ugm3=65535)
    with pytest.raises(SensorError, match="maximum range"):
        s.read()


# -- one lock per I2C bus (issue 15.5) ----------------------------------------------------

def test_emulated_bus_shows_the_two_ioctl_race_of_register_calls():
    from hall_agent.emulators.bme280 import BME280Chip
    bus = EmulatedI2CBus()
    bus.attach(0x76, BME280Chip(chip_id=0x60))
    bus.attach(0x77, BME280Chip(chip_id=0x58))

    def other_thread(address):                              # runs between I2C_SLAVE and I2C_SMBUS
        bus.gap = None
        bus._set_address(0x77)                              # another thread's address on the shared handle
    bus.gap = other_thread
    assert bus.read_byte_data(0x76, 0xD0) == 0x58           # the wrong chip answered: the race is visible


def test_two_bme280_on_one_bus_never_read_each_others_values():
    from hall_agent.emulators.bme280 import BME280Chip
    from hall_agent.hardware import LockedBus
    raw = EmulatedI2CBus()
    raw.attach(0x76, BME280Chip(temperature_c=10.0))
    raw.attach(0x77, BME280Chip(temperature_c=30.0))
    bus = LockedBus(raw)
    wrong, errors = [], []

    def reader(address, expected):
        try:
            s = sensors.create("bme280", bus=bus, address=address)
            for _ in range(40):
                t = s.read()["temperature_c"]
                if abs(t - expected) > 0.05:
                    wrong.append((address, t))
        except Exception as e:
            errors.append(e)
    threads = [threading.Thread(target=reader, args=a) for a in ((0x76, 10.0), (0x77, 30.0))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == [] and wrong == []


def test_each_drivers_period_is_the_configs_minimum_interval():
    from hall_agent.config.models import MIN_INTERVAL_S
    from hall_agent.sensors import DRIVERS
    for driver, cls in DRIVERS.items():
        if cls.period_s is not None:
            assert MIN_INTERVAL_S[driver][0] == cls.period_s, driver
    assert {d for d, c in DRIVERS.items() if c.period_s} == set(MIN_INTERVAL_S)


def test_config_check_refuses_an_interval_below_the_parts_period_with_key_path_and_reason():
    from hall_agent.config import validate
    from hall_agent.config.loader import ConfigError
    doc = {"hall": {"id": "h", "city": "c", "branch": "b"},
           "sensors": [{"id": "co2", "driver": "scd4x", "interval_s": 2},
                       {"id": "pm", "driver": "pms5003", "port": "/dev/ttyUSB0", "interval_s": 1},
                       {"id": "t", "driver": "sht3x", "interval_s": 1, "asc": False}]}
    with pytest.raises(ConfigError) as e:
        validate(doc)
    text = str(e.value)
    assert "sensors[0].interval_s: 2 s is below 5 s: an SCD4x gives a new sample only every 5 s" in text
    assert "sensors[1].interval_s: 1 s is below 2.3 s" in text
    assert "sensors[2].asc: only the scd4x driver takes this setting" in text


def test_hardware_wires_the_part_switches_and_the_business_hours(tmp_path):
    from hall_agent.config import validate
    from hall_agent.hardware import Hardware
    s = validate({"hall": {"id": "h", "city": "c", "branch": "b"},
                  "sensors": [{"id": "co2", "driver": "scd4x", "interval_s": 5, "asc": False},
                              {"id": "co2b", "driver": "mhz19", "port": "/dev/ttyUSB0", "abc": False},
                              {"id": "pm", "driver": "pms5003", "port": "/dev/ttyUSB1", "sleep_when_closed": True},
                              {"id": "pm2", "driver": "pms5003", "port": "/dev/ttyUSB2"}]})
    hw = Hardware(s, tmp_path)
    opts = {c.id: hw.sensor_options(c) for c in s.sensors}
    assert opts["co2"]["asc"] is False and opts["co2b"]["abc"] is False and "awake" not in opts["pm2"]
    assert opts["pm"]["awake"]() is True                     # hours not known yet: awake
    hw.is_open = lambda: False
    assert opts["pm"]["awake"]() is False
    specs = {sp.id: sp for sp in hw.sensor_specs()}
    assert specs["co2"].read_timeout >= 7.5                  # the SCD4x's first read after a start


def test_the_loops_rhythm_starts_at_the_first_reading_and_no_publish_is_skipped():
    """An SCD4x's first reading comes 5.5 s after its start; with interval_s 10 the
    readings must then come every 10 s (not 5.5, 20, 30: a threshold's for_s of 10 s
    would need a third reading). On a fake clock, the loop's waits advance it."""
    from hall_agent.clock import FakeClock
    from hall_agent.sensors import Sensor
    from hall_agent.sensors.loop import SensorRunner, SensorSpec
    clock = FakeClock(mono=0.0)

    class SlowStart(Sensor):
        model = "slow"
        reads = 0

        def read(self):
            clock.advance(5.5 if SlowStart.reads == 0 else 0.01)
            SlowStart.reads += 1
            return {"co2_ppm": 600.0}
    published = []
    runner = SensorRunner(SensorSpec("co2", "slow", 10.0, 3, SlowStart, timeout_s=30),
                          lambda *a: published.append(round(clock.monotonic(), 2)), lambda *a: None,
                          lambda *a: None, clock=clock.monotonic)

    def wait(delay):
        clock.advance(max(0.0, delay))
        return clock.monotonic() > 36
    runner._stop.wait = wait
    runner._run()
    runner._executor.shutdown(wait=True)
    assert published == [5.5, 15.51, 25.51, 35.51]


def test_range_edges_are_readings(devices):
    """The edges of each range are readings: MH-Z19 10 000 ppm, ZE08 at its full range;
    preheat ends at exactly 180 s; a full range of 0 or a decimals byte is refused."""
    from hall_agent.emulators.winsen import MHZ19Device, ZE08Device, frame
    dev = devices(MHZ19Device, co2_ppm=10000)
    uptime = [180.0]
    s = sensors.create("mhz19", port=dev.port, uptime=lambda: uptime[0])
    assert s.read() == {"co2_ppm": 10000.0}
    ze = devices(ZE08Device, period_s=0.1)
    z = sensors.create("ze08", port=ze.port)
    ze.raw_ppb = 5000
    assert z.read()["hcho_mgm3"] == pytest.approx(6.141, abs=0.001)
    ze.full_range_ppb = 0
    ze.raw_ppb = 0
    with pytest.raises(SensorError, match="full range"):
        z.read()

    class Decimals(ZE08Device):
        def stream_frame(self):
            return frame(bytes([0xFF, 0x17, 0x04, 0x01, 0x00, 0x25, 0x13, 0x88]))
    zd = devices(Decimals, period_s=0.1)
    with pytest.raises(SensorError, match="decimals"):
        sensors.create("ze08", port=zd.port).read()


def test_mhz19_abc_is_sent_once_per_port_open(devices):
    from hall_agent.emulators.winsen import MHZ19Device
    dev = devices(MHZ19Device)
    s = sensors.create("mhz19", port=dev.port, abc=False, uptime=lambda: 1e6)
    for _ in range(3):
        s.read()
    assert sum(r[2] == 0x79 for r in dev.requests) == 1
