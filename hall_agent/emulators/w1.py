"""A DS18B20 as the Linux w1_therm driver shows it: ``{root}/28-…/w1_slave``
(and, with ``attribute="temperature"``, the newer ``temperature`` file).

Independent of the driver: its own CRC (computed MSB-first on bit-reversed
bytes, a different formulation of the datasheet's x^8 + x^5 + x^4 + 1), and
the scratchpad as a genuine part writes it (datasheet figure 7: bytes 2-4
TH, TL, config 0x7F; byte 5 0xFF; byte 6 = 0x10 - (raw & 0x0F); byte 7 0x10).

Faults: ``absent`` (folder gone), ``empty`` (what current kernels return
after 5 failed CRC retries), ``crc`` (older kernels: the ``NO`` line),
``zeros`` (an all-zero scratchpad, CRC 00, ``t=0``), ``power_on`` (the
power-on scratchpad ``50 05 4b 46 7f ff 0c 10 1c``: 85 °C with byte 6 = 0x0C),
``failed`` (raw 0x07FF with byte 6 = 0x0C: 127.94 °C).
"""

from __future__ import annotations

import shutil
from pathlib import Path


def _reverse(byte: int) -> int:
    return int(f"{byte:08b}"[::-1], 2)


def dallas_crc(data: bytes) -> int:
    """Dallas/Maxim CRC-8: the reflected CRC with polynomial 0x31, done as a
    normal (MSB-first) CRC over bit-reversed bytes and reversed at the end."""
    crc = 0
    for byte in data:
        crc ^= _reverse(byte)
        for _ in range(8):
            crc = ((crc << 1) ^ 0x31) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return _reverse(crc)


def raw_from_celsius(temperature_c: float) -> int:
    return round(temperature_c * 16) & 0xFFFF  # 12-bit resolution, 1/16 °C per LSB (datasheet table 1)


def scratchpad(temperature_c: float | None = None, raw: int | None = None, byte6: int | None = None) -> bytes:
    if raw is None:
        raw = raw_from_celsius(temperature_c)
    if byte6 is None:
        byte6 = 0x10 - (raw & 0x0F)   # what a genuine part leaves in byte 6 after a conversion
    body = bytes([raw & 0xFF, raw >> 8 & 0xFF, 0x4B, 0x46, 0x7F, 0xFF, byte6, 0x10])
    return body + bytes([dallas_crc(body)])


def millidegrees(raw: int) -> int:
    signed = raw - 0x10000 if raw & 0x8000 else raw
    return int(signed * 1000 / 16)  # the kernel divides toward zero


def w1_slave_text(pad: bytes, crc_ok: bool = True) -> str:
    pad = bytearray(pad)
    if not crc_ok:
        pad[8] ^= 0x21
    hexes = " ".join(f"{b:02x}" for b in pad)
    milli = millidegrees(pad[0] | pad[1] << 8)
    return f"{hexes} : crc={pad[8]:02x} {'YES' if crc_ok else 'NO'}\n{hexes} t={milli}\n"


class DS18B20Files:
    def __init__(self, root: str | Path, device: str = "28-0316a2791eff", temperature_c: float = 21.0,
                 attribute: str = "w1_slave"):
        self.root = Path(root)
        self.device = device
        self.attribute = attribute
        self.values = {"temperature_c": temperature_c}
        self.fault: str | None = None
        self.write()

    def set(self, **values: float) -> None:
        self.values.update({k: float(v) for k, v in values.items() if k in self.values})
        self.write()

    def _pad(self) -> bytes:
        if self.fault == "zeros":
            return bytes(9)
        if self.fault == "power_on":
            return scratchpad(raw=0x0550, byte6=0x0C)
        if self.fault == "failed":
            return scratchpad(raw=0x07FF, byte6=0x0C)
        return scratchpad(self.values["temperature_c"])

    def write(self) -> None:
        folder = self.root / self.device
        if self.fault == "absent":
            shutil.rmtree(folder, ignore_errors=True)
            return
        folder.mkdir(parents=True, exist_ok=True)
        pad = self._pad()
        if self.attribute == "temperature":
            text = "" if self.fault in ("empty", "crc") else f"{millidegrees(pad[0] | pad[1] << 8)}\n"
            (folder / "temperature").write_text(text)
            return
        text = "" if self.fault == "empty" else w1_slave_text(pad, crc_ok=self.fault != "crc")
        (folder / "w1_slave").write_text(text)
