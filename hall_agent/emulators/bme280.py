"""Bosch BME280 at the register level.

The raw ADC values are found from the wanted physical values with the
datasheet's *floating-point* compensation (BST-BME280-DS002 section 8.1),
independently of the driver's integer code, so a round trip checks one
against the other. Nothing is shared with the driver: the trimming values
have their own type here, and their bytes are packed by this module.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass

from .i2c import EmulatedChip


@dataclass(frozen=True)
class Trimming:
    """The trimming parameters as named in the datasheet (table 16): dig_T1 -> T1, …"""
    T1: int; T2: int; T3: int
    P1: int; P2: int; P3: int; P4: int; P5: int; P6: int; P7: int; P8: int; P9: int
    H1: int; H2: int; H3: int; H4: int; H5: int; H6: int


# Trimming values of the kind real parts carry (humidity ones included).
TYPICAL = Trimming(T1=28485, T2=26735, T3=50, P1=37730, P2=-10806, P3=3024, P4=7053, P5=-68, P6=-7,
                      P7=9900, P8=-10230, P9=4285, H1=75, H2=362, H3=0, H4=313, H5=50, H6=30)
MEASURE_S = 0.0093  # all oversampling x1: 1.25 + 2.3 + 2.875 + 2.875 ms (appendix 9.1)


def float_t(adc_t: int, c: Trimming) -> tuple[float, float]:
    var1 = (adc_t / 16384.0 - c.T1 / 1024.0) * c.T2
    var2 = (adc_t / 131072.0 - c.T1 / 8192.0) ** 2 * c.T3
    t_fine = var1 + var2
    return t_fine / 5120.0, t_fine


def float_p(adc_p: int, t_fine: float, c: Trimming) -> float:
    var1 = t_fine / 2.0 - 64000.0
    var2 = var1 * var1 * c.P6 / 32768.0
    var2 = var2 + var1 * c.P5 * 2.0
    var2 = var2 / 4.0 + c.P4 * 65536.0
    var1 = (c.P3 * var1 * var1 / 524288.0 + c.P2 * var1) / 524288.0
    var1 = (1.0 + var1 / 32768.0) * c.P1
    if var1 == 0:
        return 0.0
    p = 1048576.0 - adc_p
    p = (p - var2 / 4096.0) * 6250.0 / var1
    var1 = c.P9 * p * p / 2147483648.0
    var2 = p * c.P8 / 32768.0
    return p + (var1 + var2 + c.P7) / 16.0


def float_h(adc_h: int, t_fine: float, c: Trimming) -> float:
    h = t_fine - 76800.0
    h = (adc_h - (c.H4 * 64.0 + c.H5 / 16384.0 * h)) * (
        c.H2 / 65536.0 * (1.0 + c.H6 / 67108864.0 * h * (1.0 + c.H3 / 67108864.0 * h)))
    h = h * (1.0 - c.H1 * h / 524288.0)
    return min(100.0, max(0.0, h))


def _search(f, target: float, lo: int, hi: int, increasing: bool) -> int:
    while lo < hi:
        mid = (lo + hi) // 2
        below = f(mid) < target if increasing else f(mid) > target
        if below:
            lo = mid + 1
        else:
            hi = mid
    return lo


def calibration_bytes(c: Trimming) -> tuple[bytes, bytes]:
    a = struct.pack("<HhhHhhhhhhhh", c.T1, c.T2, c.T3, c.P1, c.P2, c.P3, c.P4, c.P5, c.P6, c.P7, c.P8, c.P9)
    a += bytes([0x00, c.H1])  # 0xA0 is not used; 0xA1 = dig_H1
    e4, e5_lo = (c.H4 >> 4) & 0xFF, c.H4 & 0x0F
    e6, e5_hi = (c.H5 >> 4) & 0xFF, c.H5 & 0x0F
    b = struct.pack("<hB", c.H2, c.H3) + bytes([e4, e5_hi << 4 | e5_lo, e6, c.H6 & 0xFF])
    return a, b


class BME280Chip(EmulatedChip):
    def __init__(self, temperature_c: float = 23.0, pressure_hpa: float = 1013.25, humidity_pct: float = 45.0,
                 calibration: Trimming = TYPICAL, chip_id: int = 0x60, clock=time.monotonic):
        super().__init__(clock)
        self.values = {"temperature_c": temperature_c, "pressure_hpa": pressure_hpa, "humidity_pct": humidity_pct}
        self.cal = calibration
        self.regs = bytearray(256)
        self.regs[0xD0] = chip_id
        a, b = calibration_bytes(calibration)
        self.regs[0x88:0x88 + 26] = a
        self.regs[0xE1:0xE1 + 7] = b
        self.regs[0xF7:0xFF] = bytes([0x80, 0, 0, 0x80, 0, 0, 0x80, 0])  # reset values
        self.pointer = 0
        self.measuring_until = 0.0
        self.measurements = 0

    def raw(self) -> tuple[int, int, int]:
        v, c = self.values, self.cal
        adc_t = _search(lambda a: float_t(a, c)[0], v["temperature_c"], 0, (1 << 20) - 1, True)
        t_fine = float_t(adc_t, c)[1]
        adc_p = _search(lambda a: float_p(a, t_fine, c), v["pressure_hpa"] * 100.0, 0, (1 << 20) - 1, False)
        adc_h = _search(lambda a: float_h(a, t_fine, c), v["humidity_pct"], 0, 0xFFFF, True)
        return adc_t, adc_p, adc_h

    def on_write(self, data: bytes) -> None:
        self.pointer = data[0]
        for offset, value in enumerate(data[1:]):
            reg = self.pointer + offset
            if reg == 0xE0 and value == 0xB6:
                self.regs[0xF2:0xF6] = bytes(4)
            elif reg in (0xF2, 0xF4, 0xF5):
                self.regs[reg] = value
                if reg == 0xF4 and value & 0x03 in (0x01, 0x02):
                    self._convert()

    def _convert(self) -> None:
        adc_t, adc_p, adc_h = self.raw()
        if self.fault == "crc":  # no CRC on this part: a failed conversion leaves the reset values
            adc_t, adc_p, adc_h = 0x80000, 0x80000, 0x8000
        self.regs[0xF7:0xFF] = bytes([adc_p >> 12 & 0xFF, adc_p >> 4 & 0xFF, (adc_p & 0x0F) << 4,
                                      adc_t >> 12 & 0xFF, adc_t >> 4 & 0xFF, (adc_t & 0x0F) << 4,
                                      adc_h >> 8, adc_h & 0xFF])
        self.measuring_until = self.clock() + MEASURE_S
        self.measurements += 1

    def on_read(self, length: int) -> bytes:
        measuring = self.clock() < self.measuring_until
        out = bytearray()
        for i in range(length):
            reg = (self.pointer + i) & 0xFF
            if reg == 0xF3:
                out.append(0x08 if measuring else 0x00)
            elif 0xF7 <= reg <= 0xFE and measuring:
                out.append(0x80 if reg in (0xF7, 0xFA, 0xFD) else 0x00)  # old/reset data while converting
            else:
                out.append(self.regs[reg])
            if reg == 0xF4 and not measuring:
                out[-1] = self.regs[0xF4] & 0xFC  # back to sleep mode after a forced measurement
        return bytes(out)
