"""Bosch BME280: temperature, pressure and humidity over I2C.

Datasheet BST-BME280-DS002 (Bosch Sensortec, rev 1.6):
- chip id register 0xD0 reads 0x60 (section 5.4.1); a BMP280 reads 0x56-0x58;
- calibration "trimming" words at 0x88..0xA1 and 0xE1..0xE7 (table 16);
  dig_H4 and dig_H5 are 12-bit signed values sharing 0xE5; their high parts
  0xE4 and 0xE6 are signed bytes;
- forced mode: write ctrl_hum (0xF2) first, then ctrl_meas (0xF4) with mode
  01 (5.4.3-5.4.5); status 0xF3 bit 3 is set while measuring; with every
  oversampling x1 a measurement takes at most 9.3 ms (appendix 9.1);
- raw values: burst read 0xF7..0xFE (5.4.7-5.4.9); 0x80000 in adc_T means
  "temperature measurement skipped" (the reset value).
- compensation: the datasheet's integer code of section 4.2.3 (32-bit
  temperature, 64-bit pressure in Q24.8 Pa, 32-bit humidity in Q22.10 %RH),
  with C's truncating division where the datasheet divides.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from .base import Sensor, SensorAbsent, SensorError, SensorTimeout

DEFAULT_ADDRESS = 0x76
REG_CHIP_ID = 0xD0
CHIP_ID = 0x60
REG_CALIB_A = 0x88     # 26 bytes: 0x88..0xA1
REG_CALIB_B = 0xE1     # 7 bytes: 0xE1..0xE7
REG_CTRL_HUM = 0xF2
REG_STATUS = 0xF3
REG_CTRL_MEAS = 0xF4
REG_DATA = 0xF7        # 8 bytes: 0xF7..0xFE
OSRS_X1 = 0b001
MODE_FORCED = 0b01
STATUS_MEASURING = 0x08
MEASURE_WAIT_S = 0.010
SKIPPED_ADC = 0x80000


def _u16(lo: int, hi: int) -> int:
    return lo | hi << 8


def _s16(lo: int, hi: int) -> int:
    v = _u16(lo, hi)
    return v - 0x10000 if v & 0x8000 else v


def _s8(b: int) -> int:
    return b - 0x100 if b & 0x80 else b


def _cdiv(a: int, b: int) -> int:
    """C integer division: truncate toward zero."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


@dataclass(frozen=True)
class Calibration:
    T1: int; T2: int; T3: int
    P1: int; P2: int; P3: int; P4: int; P5: int; P6: int; P7: int; P8: int; P9: int
    H1: int; H2: int; H3: int; H4: int; H5: int; H6: int

    @classmethod
    def parse(cls, a: bytes, b: bytes) -> "Calibration":
        """``a`` = 26 bytes from 0x88, ``b`` = 7 bytes from 0xE1 (datasheet table 16)."""
        w = [a[i] | a[i + 1] << 8 for i in range(0, 24, 2)]
        s = [x - 0x10000 if x & 0x8000 else x for x in w]
        return cls(T1=w[0], T2=s[1], T3=s[2], P1=w[3], P2=s[4], P3=s[5], P4=s[6], P5=s[7], P6=s[8],
                   P7=s[9], P8=s[10], P9=s[11], H1=a[25], H2=_s16(b[0], b[1]), H3=b[2],
                   H4=_s8(b[3]) * 16 | (b[4] & 0x0F), H5=_s8(b[5]) * 16 | (b[4] >> 4), H6=_s8(b[6]))

    def check(self) -> None:
        if self.T1 == 0 or self.P1 == 0 or (self.T1, self.T2, self.T3) in ((0xFFFF, -1, -1),):
            raise SensorError("bme280: calibration data unreadable (blank trimming registers)")


def compensate_t(adc_t: int, c: Calibration) -> tuple[int, int]:
    """-> (temperature in 0.01 °C, t_fine)."""
    var1 = (((adc_t >> 3) - (c.T1 << 1)) * c.T2) >> 11
    var2 = (((((adc_t >> 4) - c.T1) * ((adc_t >> 4) - c.T1)) >> 12) * c.T3) >> 14
    t_fine = var1 + var2
    return (t_fine * 5 + 128) >> 8, t_fine


def compensate_p(adc_p: int, t_fine: int, c: Calibration) -> int:
    """-> pressure in Pa as Q24.8 (divide by 256); 0 if the calibration would divide by zero."""
    var1 = t_fine - 128000
    var2 = var1 * var1 * c.P6
    var2 = var2 + ((var1 * c.P5) << 17)
    var2 = var2 + (c.P4 << 35)
    var1 = ((var1 * var1 * c.P3) >> 8) + ((var1 * c.P2) << 12)
    var1 = (((1 << 47) + var1) * c.P1) >> 33
    if var1 == 0:
        return 0
    p = 1048576 - adc_p
    p = _cdiv(((p << 31) - var2) * 3125, var1)
    var1 = (c.P9 * (p >> 13) * (p >> 13)) >> 25
    var2 = (c.P8 * p) >> 19
    return ((p + var1 + var2) >> 8) + (c.P7 << 4)


def compensate_h(adc_h: int, t_fine: int, c: Calibration) -> int:
    """-> relative humidity as Q22.10 %RH (divide by 1024)."""
    x = t_fine - 76800
    x = ((((adc_h << 14) - (c.H4 << 20) - (c.H5 * x)) + 16384) >> 15) * \
        (((((((x * c.H6) >> 10) * (((x * c.H3) >> 11) + 32768)) >> 10) + 2097152) * c.H2 + 8192) >> 14)
    x = x - (((((x >> 15) * (x >> 15)) >> 7) * c.H1) >> 4)
    x = min(max(x, 0), 419430400)
    return x >> 12


class BME280(Sensor):
    model = "bme280"

    def __init__(self, bus: Any, address: int = DEFAULT_ADDRESS):
        self.bus = bus
        self.address = address
        self.calibration: Calibration | None = None

    def _io(self, what: str, fn, *args):
        try:
            return fn(self.address, *args)
        except OSError as e:
            raise SensorAbsent(f"bme280 at {self.address:#04x}: {what} failed ({e})") from None

    def start(self) -> None:
        chip = self._io("reading the chip id", self.bus.read_byte_data, REG_CHIP_ID)
        if chip != CHIP_ID:
            raise SensorAbsent(f"bme280 at {self.address:#04x}: chip id {chip:#04x}, expected {CHIP_ID:#04x}"
                               + (" (a BMP280 has no humidity sensor)" if chip in (0x56, 0x57, 0x58) else ""))
        a = bytes(self._io("reading calibration", self.bus.read_i2c_block_data, REG_CALIB_A, 26))
        b = bytes(self._io("reading calibration", self.bus.read_i2c_block_data, REG_CALIB_B, 7))
        cal = Calibration.parse(a, b)
        cal.check()
        self.calibration = cal

    def read(self) -> dict[str, float]:
        if self.calibration is None:
            self.start()
        cal = self.calibration
        self._io("writing ctrl_hum", self.bus.write_byte_data, REG_CTRL_HUM, OSRS_X1)
        self._io("writing ctrl_meas", self.bus.write_byte_data, REG_CTRL_MEAS,
                 OSRS_X1 << 5 | OSRS_X1 << 2 | MODE_FORCED)
        time.sleep(MEASURE_WAIT_S)
        deadline = time.monotonic() + 0.1
        while self._io("reading status", self.bus.read_byte_data, REG_STATUS) & STATUS_MEASURING:
            if time.monotonic() > deadline:
                raise SensorTimeout("bme280: still measuring after 110 ms")
            time.sleep(0.002)
        d = bytes(self._io("reading data", self.bus.read_i2c_block_data, REG_DATA, 8))
        adc_p = d[0] << 12 | d[1] << 4 | d[2] >> 4
        adc_t = d[3] << 12 | d[4] << 4 | d[5] >> 4
        adc_h = d[6] << 8 | d[7]
        if adc_t == SKIPPED_ADC or adc_p == SKIPPED_ADC:
            raise SensorError("bme280: no measurement in the data registers (reset value 0x80000)")
        t, t_fine = compensate_t(adc_t, cal)
        p = compensate_p(adc_p, t_fine, cal)
        if p == 0:
            raise SensorError("bme280: pressure compensation divided by zero (bad calibration)")
        h = compensate_h(adc_h, t_fine, cal)
        # operating range (datasheet section 1): -40..85 °C, 300..1100 hPa, with a margin
        if not (-4500 <= t <= 9000 and 25000 * 256 <= p <= 115000 * 256):
            raise SensorError(f"bme280: implausible reading {t / 100:.2f} °C {p / 25600:.1f} hPa "
                              "(outside the part's operating range)")
        return {"temperature_c": t / 100.0, "pressure_hpa": round(p / 256.0 / 100.0, 2),
                "humidity_pct": round(h / 1024.0, 2)}
