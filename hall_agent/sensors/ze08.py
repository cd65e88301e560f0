"""Winsen ZE08-CH2O: formaldehyde over UART (9600 8N1).

Datasheet "ZE08-CH2O" (Winsen, v1.3): in the default active upload mode the
module sends once a second ``FF 17 04 00 HH LL FH FL CS``: gas name 0x17
(CH2O), unit 0x04 (ppb), no decimals (0x00), concentration HH * 256 + LL,
full range FH * 256 + FL; CS as the MH-Z19 (two's complement of the sum of
bytes 1..7). A module left in question-and-answer mode sends nothing by
itself, so the first read (and the first after the port comes back) switches
it to active upload: ``FF 01 78 40 00 00 00 00 47`` (Q&A would be
``FF 01 78 41 00 00 00 00 46``).

A concentration above the full range the frame itself states (or a full
range of 0) is not a reading, checksum or not.

ppb to mg/m³: mg/m³ = ppb × M / Vm / 1000 with M = 30.03 g/mol and
Vm = 24.45 L/mol (25 °C, 101.325 kPa), i.e. 1 ppb = 0.001228 mg/m³.
At 0 °C (Vm 22.41 L/mol) the figure would be 9 % higher; we use 25 °C,
the conversion most indoor-air instruments display.
"""

from __future__ import annotations

import time

from .base import Sensor, SensorError
from .uart import FrameScanner, SerialPort, winsen_checksum

GAS_CH2O = 0x17
UNIT_PPB = 0x04
MOLAR_MASS = 30.03
MOLAR_VOLUME_25C = 24.45
ACTIVE_UPLOAD = bytes.fromhex("ff0178400000000047")


def ppb_to_mgm3(ppb: float) -> float:
    return ppb * MOLAR_MASS / MOLAR_VOLUME_25C / 1000.0


def scanner() -> FrameScanner:
    return FrameScanner(bytes([0xFF, GAS_CH2O]), lambda b: 9 if len(b) >= 2 else None,
                        lambda f: f[8] == winsen_checksum(f), torn_check=True)


class ZE08(Sensor):
    model = "ze08"
    period_s = 1.0
    read_timeout_s = 3.5

    def __init__(self, port: str, baudrate: int = 9600, timeout_s: float = 2.5):
        self.serial = SerialPort(port, baudrate, model=self.model)
        self.timeout_s = timeout_s
        self.scanner = scanner()
        self._opens = -1

    def read(self) -> dict[str, float]:
        self.serial.discard_input()
        if self._opens != self.serial.opens:   # first read, or the port came back
            self.serial.write(ACTIVE_UPLOAD)
            self._opens = self.serial.opens
            time.sleep(0.05)
            self.serial.discard_input()
        self.scanner.reset()
        frame = self.serial.read_frame(self.scanner, self.timeout_s)
        if frame[2] != UNIT_PPB or frame[3] != 0:
            raise SensorError(f"ze08: unexpected unit {frame[2]:#04x} / decimals {frame[3]} (want ppb, 0)")
        ppb = frame[4] * 256 + frame[5]
        full = frame[6] * 256 + frame[7]
        if full == 0 or ppb > full:
            raise SensorError(f"ze08: {ppb} ppb is outside the full range its frame states ({full} ppb)")
        return {"hcho_mgm3": round(ppb_to_mgm3(ppb), 4)}

    def close(self) -> None:
        self.serial.close()
