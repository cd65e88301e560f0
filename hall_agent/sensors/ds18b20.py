"""Maxim DS18B20 through the Linux 1-Wire sysfs (w1_therm).

``{w1_root}/{device}/w1_slave`` holds two lines (kernel w1_therm driver):
``72 01 4b 46 7f ff 0e 10 57 : crc=57 YES`` and ``72 01 … t=23125``.
We check the kernel's verdict (YES) and recompute the Dallas/Maxim CRC-8
(x^8 + x^5 + x^4 + 1, datasheet "CRC generation") over the first eight
scratchpad bytes ourselves. Then what the CRC cannot tell:

- an empty read is a bus error: current kernels retry a CRC failure 5 times
  (``W1_THERM_MAX_TRY``) and then return nothing;
- an all-zero scratchpad has a valid CRC (0x00) but is no reading: a real
  part reads byte 5 = 0xFF and byte 7 = 0x10 (datasheet, figure 7);
- a failed conversion, by the kernel's own rule (``w1_therm.c``,
  ``W1_THERM_CHECK_RESULT``): byte 6 = 0x0C together with raw 0x0550 (85 °C,
  the power-on value) or 0x07FF (127.94 °C). A genuine part writes byte 6 =
  0x10 - (raw & 0x0F) after a conversion, so a real 85 °C has byte 6 = 0x10;
  whether the value repeats proves nothing;
- the part's range is -55..125 °C (datasheet).

Where the kernel offers only the newer ``temperature`` attribute
(millidegrees, one line), the same checks apply that can: empty, range;
w1_slave is preferred when both exist (it carries the scratchpad).
A read blocks for the conversion (750 ms at 12 bits): the sensor loop runs
it in its own thread.
"""

from __future__ import annotations

import re
from pathlib import Path

from .base import Sensor, SensorAbsent, SensorChecksumError, SensorError

MIN_MILLI_C = -55_000
MAX_MILLI_C = 125_000
FAILED_CONVERSION_RAW = (0x0550, 0x07FF)


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


def check_scratchpad(scratch: bytes, device: str) -> None:
    """Raise if the 9 scratchpad bytes are not a reading (CRC checked by the caller)."""
    if not any(scratch):
        raise SensorChecksumError(f"ds18b20 {device}: all-zero scratchpad (no part answered: 1-Wire bus error)")
    raw = scratch[0] | scratch[1] << 8
    if scratch[6] == 0x0C and raw in FAILED_CONVERSION_RAW:
        raise SensorError(f"ds18b20 {device}: conversion failed (raw {raw:#06x} with byte 6 = 0x0c: "
                          "power-on value or too little power / time)")


def check_range(milli: int, device: str) -> None:
    if not MIN_MILLI_C <= milli <= MAX_MILLI_C:
        raise SensorError(f"ds18b20 {device}: {milli / 1000:.3f} °C is outside the part's range -55..125 °C")


class DS18B20(Sensor):
    model = "ds18b20"
    period_s = 1.0

    def __init__(self, device: str, w1_root: str | Path = "/sys/bus/w1/devices"):
        self.device = device
        self.folder = Path(w1_root) / device
        self.path = self.folder / "w1_slave"

    def read(self) -> dict[str, float]:
        if not self.path.exists() and (self.folder / "temperature").exists():
            return self._read_temperature()
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            raise SensorAbsent(f"ds18b20 {self.device}: {self.path} missing (not on the 1-Wire bus)") from None
        except OSError as e:
            raise SensorAbsent(f"ds18b20 {self.device}: {e}") from None
        lines = text.strip().splitlines()
        if not lines:
            raise SensorChecksumError(f"ds18b20 {self.device}: empty read (the kernel gave up after its "
                                      "CRC retries: 1-Wire bus error)")
        if len(lines) < 2:
            raise SensorChecksumError(f"ds18b20 {self.device}: short read (1-Wire bus error)")
        m1 = re.fullmatch(r"((?:[0-9a-f]{2} ){9}): crc=([0-9a-f]{2}) (YES|NO)", lines[0].strip())
        m2 = re.fullmatch(r"((?:[0-9a-f]{2} ){9})t=(-?\d+)", lines[1].strip())
        if not m1 or not m2:
            raise SensorChecksumError(f"ds18b20 {self.device}: unreadable w1_slave text")
        scratch = bytes.fromhex(m1[1].replace(" ", ""))
        if m1[3] != "YES" or maxim_crc8(scratch[:8]) != scratch[8]:
            raise SensorChecksumError(f"ds18b20 {self.device}: CRC error on the 1-Wire bus")
        check_scratchpad(scratch, self.device)
        milli = int(m2[2])
        check_range(milli, self.device)
        return {"temperature_c": milli / 1000.0}

    def _read_temperature(self) -> dict[str, float]:
        try:
            text = (self.folder / "temperature").read_text().strip()
        except OSError as e:
            raise SensorAbsent(f"ds18b20 {self.device}: {e}") from None
        if not text:
            raise SensorChecksumError(f"ds18b20 {self.device}: empty read (1-Wire bus error)")
        if not re.fullmatch(r"-?\d+", text):
            raise SensorChecksumError(f"ds18b20 {self.device}: unreadable temperature {text[:20]!r}")
        milli = int(text)
        check_range(milli, self.device)
        return {"temperature_c": milli / 1000.0}
