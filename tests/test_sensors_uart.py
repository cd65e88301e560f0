"""Serial drivers over a real pseudo-terminal, and their frame parsers."""

import time

import pytest
from hypothesis import given, settings, strategies as st

from hall_agent import sensors
from hall_agent.emulators.pms import PMS5003Device, data_frame
from hall_agent.emulators.winsen import MHZ19Device, ZE08Device
from hall_agent.sensors import SensorAbsent, SensorChecksumError, SensorTimeout, mhz19, pms5003, ze08
from hall_agent.sensors.uart import winsen_checksum


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


def test_winsen_checksum_datasheet_examples():
    # MH-Z19B datasheet: read command FF 01 86 00 00 00 00 00 79, reply example FF 86 02 60 47 00 00 00 D1
    assert winsen_checksum(bytes.fromhex("ff0186000000000079")) == 0x79
    assert mhz19.request(0x86) == bytes.fromhex("ff0186000000000079")
    assert winsen_checksum(bytes.fromhex("ff860260470000 00d1".replace(" ", ""))) == 0xD1
    # ZE08-CH2O datasheet: FF 17 04 00 00 25 13 88 25 (37 ppb, full range 5000 ppb)
    assert winsen_checksum(bytes.fromhex("ff1704000025138825")) == 0x25


def test_mhz19_reads_the_datasheet_reply(devices):
    class Fixed(MHZ19Device):
        def handle(self, request):
            return bytes.fromhex("ff8602604700000 0d1".replace(" ", ""))
    dev = devices(Fixed)
    assert sensors.create("mhz19", port=dev.port).read() == {"co2_ppm": 608.0}
    assert dev.requests[-1] == bytes.fromhex("ff0186000000000079")


def test_ze08_datasheet_frame_in_mg_per_m3(devices):
    class Fixed(ZE08Device):
        def stream_frame(self):
            return bytes.fromhex("ff1704000025138825")
    dev = devices(Fixed, period_s=0.05)
    # 37 ppb * 30.03 g/mol / 24.45 L/mol / 1000 = 0.04544 mg/m³ (25 °C, 101.325 kPa)
    assert sensors.create("ze08", port=dev.port).read() == {"hcho_mgm3": 0.0454}
    assert ze08.ppb_to_mgm3(1000) == pytest.approx(1.228, abs=0.001)


def test_pms5003_reports_atmospheric_values(devices):
    class Fixed(PMS5003Device):
        def frame(self):
            return data_frame(3, 14, 20, cf1=(5, 17, 24))  # CF=1 words differ from atmospheric ones
    dev = devices(Fixed, period_s=0.05)
    assert sensors.create("pms5003", port=dev.port).read() == {"pm1_ugm3": 3.0, "pm25_ugm3": 14.0, "pm10_ugm3": 20.0}


def test_pms5003_frame_layout_by_hand():
    frame = data_frame(1, 2, 3)
    assert frame[:4] == b"\x42\x4d\x00\x1c" and len(frame) == 32
    assert int.from_bytes(frame[30:], "big") == sum(frame[:30])  # check code = sum of bytes 0..29
    assert [int.from_bytes(frame[i:i + 2], "big") for i in (10, 12, 14)] == [1, 2, 3]


SERIAL = [
    ("mhz19", MHZ19Device, {"co2_ppm": (400, 5000, 0.5)}, {}),   # 0 ppm is not a reading
    ("pms5003", PMS5003Device, {"pm1_ugm3": (0, 999, 0.5), "pm25_ugm3": (0, 999, 0.5), "pm10_ugm3": (0, 999, 0.5)},
     {"period_s": 0.05}),
    ("ze08", ZE08Device, {"hcho_mgm3": (0, 6, 0.0007)}, {"period_s": 0.05}),
]


@pytest.mark.parametrize("driver,cls,ranges,kw", SERIAL, ids=[s[0] for s in SERIAL])
def test_serial_round_trip(devices, driver, cls, ranges, kw):
    dev = devices(cls, **kw)
    sensor = sensors.create(driver, port=dev.port)
    for fraction in (0.0, 0.37, 1.0):
        values = {k: lo + (hi - lo) * fraction for k, (lo, hi, _) in ranges.items()}
        dev.set(**values)
        got = sensor.read()
        for key, (_, _, resolution) in ranges.items():
            assert got[key] == pytest.approx(values[key], abs=resolution)
    sensor.close()


@pytest.mark.parametrize("driver,cls,ranges,kw", SERIAL, ids=[s[0] for s in SERIAL])
def test_serial_faults(devices, driver, cls, ranges, kw):
    dev = devices(cls, **kw)
    # a replugged adapter powers the part up again: its warm-up is tested in test_sensor_parts.py
    warm = {"mhz19": {"preheat_s": 0}, "pms5003": {"warmup_s": 0}}.get(driver, {})
    sensor = sensors.create(driver, port=dev.port, timeout_s=0.4, **warm)
    good = sensor.read()
    dev.fault = "garbage"
    assert sensor.read() == good  # resynchronised through noise and a torn frame
    dev.fault = "checksum"
    with pytest.raises(SensorChecksumError):
        sensor.read()
    dev.fault = "short"
    with pytest.raises((SensorTimeout, SensorChecksumError)):
        sensor.read()
    dev.fault = "silent"
    with pytest.raises(SensorTimeout, match="no answer"):
        sensor.read()
    dev.fault = None
    dev.unplug()  # the USB adapter is pulled
    with pytest.raises(SensorAbsent):
        sensor.read()
    with pytest.raises(SensorAbsent, match="cannot open"):
        sensor.read()
    dev.replug()  # and comes back, at the same path
    assert sensor.read() == good
    sensor.close()


def test_missing_port_is_absent():
    with pytest.raises(SensorAbsent, match="cannot open"):
        sensors.create("mhz19", port="/dev/ttyNOPE").read()


# -- parsers: random garbage around valid frames yields exactly the valid frames ------

def valid_frames(kind):
    if kind == "pms":
        return st.tuples(st.integers(0, 999), st.integers(0, 999), st.integers(0, 999)).map(lambda v: data_frame(*v))
    if kind == "mhz":
        return st.integers(0, 10000).map(lambda ppm: mhz_frame(ppm))  # MH-Z19C range
    return st.integers(0, 5000).map(lambda ppb: ze_frame(ppb))  # ZE08 full range


def mhz_frame(ppm):
    body = bytes([0xFF, 0x86, ppm >> 8, ppm & 0xFF, 0x47, 0, 0, 0])
    return body + bytes([winsen_checksum(body + b"\x00")])


def ze_frame(ppb):
    body = bytes([0xFF, 0x17, 0x04, 0x00, ppb >> 8, ppb & 0xFF, 0x13, 0x88])
    return body + bytes([winsen_checksum(body + b"\x00")])


SCANNERS = {"pms": (pms5003.scanner, 0x42), "mhz": (mhz19.scanner, 0xFF), "ze": (ze08.scanner, 0xFF)}


@pytest.mark.parametrize("kind", SCANNERS)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_property_garbage_around_frames_yields_exactly_the_frames(kind, data):
    make_scanner, header_byte = SCANNERS[kind]
    # noise that cannot itself start a frame; a torn frame is a prefix of a real one
    noise = st.binary(max_size=40).map(lambda b: bytes(x for x in b if x != header_byte))
    frames = data.draw(st.lists(valid_frames(kind), max_size=6))
    stream = b""
    for f in frames:
        stream += data.draw(noise)
        if data.draw(st.booleans()):
            stream += f[: data.draw(st.integers(1, len(f) - 1))]  # a short frame before the good one
        stream += f
    stream += data.draw(noise)
    scanner = make_scanner()
    out = []
    chunk_sizes = data.draw(st.lists(st.integers(1, 50), min_size=1))
    i = 0
    while i < len(stream):  # arbitrary read boundaries, as a tty delivers them
        n = chunk_sizes[i % len(chunk_sizes)]
        out += scanner.feed(stream[i:i + n])
        i += n
    assert out == frames


@pytest.mark.parametrize("kind", SCANNERS)
@settings(max_examples=150, deadline=None)
@given(stream=st.binary(max_size=300))
def test_property_scanner_never_returns_an_invalid_frame(kind, stream):
    scanner = SCANNERS[kind][0]()
    for frame in scanner.feed(stream):
        assert frame.startswith(scanner.header) and scanner.valid(frame)
