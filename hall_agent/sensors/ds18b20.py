"""Maxim DS18B20 through the Linux 1-Wire sysfs (w1_therm).

``{w1_root}/{device}/w1_slave`` holds two lines (kernel w1_therm driver):
``72 01 4b 46 7f ff 0e 10 57 : crc=57 YES`` and ``72 01 … t=23125``.
We check the kernel's verdict (YES) and recompute the Dallas/Maxim CRC-8
(x^8 + x^5 + x^4 + 1, datasheet "CRC generation") over the first eight
scratchpad bytes ourselves. An empty file is a bus error. 85 °C is the
power-on reset value of the temperature register (datasheet, table 2
"power-on reset value"): a lone 85000 is not a reading; the same value
twice in a row is accepted as real. A read blocks for the conversion
(750 ms at 12 bits): the sensor loop runs it in its own thread.
"""

from __future__ import annotations

import re
from pathlib import Path

from .base import Sensor, SensorAbsent, SensorChecksumError, SensorError

POWER_ON_MILLI_C = 85000


def maxim_crc8(data: bytes) -> int:
    crc = 0
    for byte in data:
        for _ in range(8):
            mix = (crc ^ byte) & 1
            crc >>= 1
            if mix:
                crc ^= 0x8C
            byte >>= 1
    return crc


class DS18B20(Sensor):
    model = "ds18b20"

    def __init__(self, device: str, w1_root: str | Path = "/sys/bus/w1/devices"):
        self.device = device
        self.path = Path(w1_root) / device / "w1_slave"
        self._last_power_on = False

    def read(self) -> dict[str, float]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            raise SensorAbsent(f"ds18b20 {self.device}: {self.path} missing (not on the 1-Wire bus)") from None
        except OSError as e:
            raise SensorAbsent(f"ds18b20 {self.device}: {e}") from None
        lines = text.strip().splitlines()
        if len(lines) < 2:
            raise SensorError(f"ds18b20 {self.device}: empty or short read (1-Wire bus error)")
        m1 = re.fullmatch(r"((?:[0-9a-f]{2} ){9}): crc=([0-9a-f]{2}) (YES|NO)", lines[0].strip())
        m2 = re.fullmatch(r"(?:[0-9a-f]{2} ){9}t=(-?\d+)", lines[1].strip())
        if not m1 or not m2:
            raise SensorChecksumError(f"ds18b20 {self.device}: unreadable w1_slave text")
        scratch = bytes.fromhex(m1[1].replace(" ", ""))
        if m1[3] != "YES" or maxim_crc8(scratch[:8]) != scratch[8]:
            raise SensorChecksumError(f"ds18b20 {self.device}: CRC error on the 1-Wire bus")
        milli = int(m2[1])
        if milli == POWER_ON_MILLI_C and not self._last_power_on:
            self._last_power_on = True
            raise SensorError(f"ds18b20 {self.device}: 85 °C power-on value, not a measurement")
        self._last_power_on = milli == POWER_ON_MILLI_C
        return {"temperature_c": milli / 1000.0}
