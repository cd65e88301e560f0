"""A DS18B20 as the Linux w1_therm driver shows it: ``{root}/28-…/w1_slave``."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..sensors.ds18b20 import maxim_crc8


def scratchpad(temperature_c: float) -> bytes:
    raw = round(temperature_c * 16) & 0xFFFF  # 12-bit resolution, 1/16 °C per LSB (datasheet fig. 2)
    body = bytes([raw & 0xFF, raw >> 8, 0x4B, 0x46, 0x7F, 0xFF, 0x0C, 0x10])
    return body + bytes([maxim_crc8(body)])


def w1_slave_text(temperature_c: float, crc_ok: bool = True) -> str:
    pad = bytearray(scratchpad(temperature_c))
    if not crc_ok:
        pad[8] ^= 0x21
    raw = pad[0] | pad[1] << 8
    raw = raw - 0x10000 if raw & 0x8000 else raw
    milli = int(raw * 1000 / 16)  # the kernel divides toward zero
    hexes = " ".join(f"{b:02x}" for b in pad)
    return f"{hexes} : crc={pad[8]:02x} {'YES' if crc_ok else 'NO'}\n{hexes} t={milli}\n"


class DS18B20Files:
    def __init__(self, root: str | Path, device: str = "28-0316a2791eff", temperature_c: float = 21.0):
        self.root = Path(root)
        self.device = device
        self.values = {"temperature_c": temperature_c}
        self.fault: str | None = None
        self.write()

    def set(self, **values: float) -> None:
        self.values.update({k: float(v) for k, v in values.items() if k in self.values})
        self.write()

    def write(self) -> None:
        folder = self.root / self.device
        if self.fault == "absent":
            shutil.rmtree(folder, ignore_errors=True)
            return
        folder.mkdir(parents=True, exist_ok=True)
        if self.fault == "empty":
            text = ""
        elif self.fault == "power_on":
            text = w1_slave_text(85.0)
        else:
            text = w1_slave_text(self.values["temperature_c"], crc_ok=self.fault != "crc")
        (folder / "w1_slave").write_text(text)
