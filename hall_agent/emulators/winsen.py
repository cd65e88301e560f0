"""Winsen MH-Z19B/C (CO2, answers requests) and ZE08-CH2O (active upload)."""

from __future__ import annotations

from ..sensors.uart import winsen_checksum
from ..sensors.ze08 import MOLAR_MASS, MOLAR_VOLUME_25C
from .serialdev import PtyDevice


def frame(body: bytes) -> bytes:
    """8 bytes + checksum."""
    return body + bytes([winsen_checksum(body + b"\x00")])


class MHZ19Device(PtyDevice):
    def __init__(self, co2_ppm: float = 600, **kw):
        self.values = {"co2_ppm": co2_ppm}
        self.abc = True
        super().__init__(kw.pop("name", "ttyMHZ19"), **kw)

    def set(self, **values: float) -> None:
        self.values.update({k: float(v) for k, v in values.items() if k in self.values})

    def parse_request(self, buf: bytes):
        start = buf.find(b"\xff\x01")
        if start < 0:
            return None, max(0, len(buf) - 1)
        if start > 0:
            return None, start
        if len(buf) < 9:
            return None, 0
        req = buf[:9]
        return (req if req[8] == winsen_checksum(req) else None), 9

    def handle(self, request: bytes) -> bytes | None:
        cmd = request[2]
        if cmd == 0x86:
            ppm = max(0, min(0xFFFF, round(self.values["co2_ppm"])))
            return frame(bytes([0xFF, 0x86, ppm >> 8, ppm & 0xFF, 0x47, 0x00, 0x00, 0x00]))
        if cmd == 0x79:
            self.abc = request[3] == 0xA0
            return frame(bytes([0xFF, 0x79, 0x01, 0, 0, 0, 0, 0]))
        return None


class ZE08Device(PtyDevice):
    stream_period_s = 1.0

    def __init__(self, hcho_mgm3: float = 0.02, period_s: float = 1.0, **kw):
        self.values = {"hcho_mgm3": hcho_mgm3}
        self.stream_period_s = period_s
        self.full_range_ppb = 5000
        super().__init__(kw.pop("name", "ttyZE08"), **kw)

    def set(self, **values: float) -> None:
        self.values.update({k: float(v) for k, v in values.items() if k in self.values})

    def stream_frame(self) -> bytes:
        ppb = max(0, min(0xFFFF, round(self.values["hcho_mgm3"] * 1000.0 * MOLAR_VOLUME_25C / MOLAR_MASS)))
        fr = self.full_range_ppb
        return frame(bytes([0xFF, 0x17, 0x04, 0x00, ppb >> 8, ppb & 0xFF, fr >> 8, fr & 0xFF]))
