"""The sensor loop: rhythm, bounded reads, faults and recovery, isolation."""

import threading
import time

from hall_agent.emulators.i2c import EmulatedI2CBus
from hall_agent.emulators.sensirion import SHT3xChip
from hall_agent.sensors import SHT3x, Sensor
from hall_agent.sensors.loop import SensorLoop, SensorRunner, SensorSpec
from mqtt_helpers import wait_until


class Recorder:
    def __init__(self):
        self.readings, self.faults, self.recoveries = [], [], []

    def reading(self, sid, model, values):
        self.readings.append((sid, values, time.monotonic()))

    def fault(self, sid, error, failures):
        self.faults.append((sid, error.kind, failures))

    def recover(self, sid):
        self.recoveries.append(sid)


def sht_spec(bus, sid="env", interval=0.05, fault_after=3):
    return SensorSpec(sid, "sht3x", interval, fault_after, lambda: SHT3x(bus))


def test_fault_after_n_failures_then_recovery_and_no_wrong_value():
    bus = EmulatedI2CBus()
    chip = bus.attach(0x44, SHT3xChip(21.0, 40.0))
    rec = Recorder()
    runner = SensorRunner(sht_spec(bus), rec.reading, rec.fault, rec.recover)
    assert runner.read_once() == {"temperature_c": 21.0, "humidity_pct": 40.0}
    chip.fault = "crc"
    assert [runner.read_once() for _ in range(2)] == [None, None] and rec.faults == []
    assert runner.read_once() is None
    assert rec.faults == [("env", "checksum", 3)] and runner.state == "fault"
    runner.read_once()
    assert len(rec.faults) == 1  # raised once, not on every further failure
    chip.fault = None
    chip.set(temperature_c=22.5)
    assert runner.read_once() == {"temperature_c": 22.5, "humidity_pct": 40.0}
    assert rec.recoveries == ["env"] and runner.state == "ok"


class Hanging(Sensor):
    model = "hanging"

    def __init__(self, release: threading.Event):
        self.release = release

    def read(self):
        self.release.wait(10)
        return {"temperature_c": 1.0}


def test_a_hung_read_is_bounded_and_does_not_stall_other_sensors():
    release = threading.Event()
    bus = EmulatedI2CBus()
    bus.attach(0x44, SHT3xChip(20.0, 50.0))
    rec = Recorder()
    loop = SensorLoop([
        SensorSpec("stuck", "hanging", 0.1, 2, lambda: Hanging(release), timeout_s=0.2),
        sht_spec(bus, "env", interval=0.05),
    ], rec.reading, rec.fault, rec.recover)
    t0 = time.monotonic()
    loop.start()
    try:
        assert wait_until(lambda: ("stuck", "timeout", 2) in rec.faults, 5)
        time.sleep(0.5)
        env = [t for sid, _, t in rec.readings if sid == "env"]
        expected = (time.monotonic() - t0) / 0.05
        assert len(env) >= 0.6 * expected  # the healthy sensor kept its rhythm meanwhile
        assert not any(sid == "stuck" for sid, _, _ in rec.readings)
        release.set()  # the bus comes back
        assert wait_until(lambda: "stuck" in rec.recoveries, 5)
    finally:
        release.set()
        loop.stop()


class Buggy(Sensor):
    model = "buggy"

    def read(self):
        return {"x": 1 / 0}


def test_a_driver_bug_is_a_sensor_fault_not_a_crash():
    rec = Recorder()
    runner = SensorRunner(SensorSpec("b", "buggy", 1, 1, Buggy), rec.reading, rec.fault, rec.recover)
    assert runner.read_once() is None
    assert rec.faults == [("b", "error", 1)] and "ZeroDivisionError" in runner.last_error.reason


def test_absent_at_start_is_retried_and_the_driver_restarted_after_a_fault():
    bus = EmulatedI2CBus()
    rec = Recorder()
    made = []

    def factory():
        made.append(1)
        return SHT3x(bus)
    runner = SensorRunner(SensorSpec("env", "sht3x", 1, 2, factory), rec.reading, rec.fault, rec.recover)
    assert runner.read_once() is None and runner.read_once() is None
    assert rec.faults == [("env", "absent", 2)]
    bus.attach(0x44, SHT3xChip())  # plugged in later
    assert runner.read_once() is not None
    assert len(made) == 2  # a fresh driver after the fault


def test_sample_rate_and_publish_rate_differ_for_sgp30_like_parts():
    bus = EmulatedI2CBus()
    chip = bus.attach(0x44, SHT3xChip())
    rec = Recorder()
    spec = SensorSpec("env", "sht3x", 0.3, 3, lambda: SHT3x(bus), sample_s=0.05)
    loop = SensorLoop([spec], rec.reading, rec.fault, rec.recover)
    loop.start()
    time.sleep(1.0)
    loop.stop()
    measured = chip.log.count(0x2400)
    assert measured >= 12  # sampled about every 50 ms
    assert 2 <= len(rec.readings) <= 5  # published about every 300 ms
