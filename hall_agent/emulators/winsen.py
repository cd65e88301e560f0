"""Winsen MH-Z19B/C (CO2, answers requests) and ZE08-CH2O (active upload, or
question and answer).

Independent of the drivers: its own checksum (the manuals' "0xFF - (sum of
bytes 1..7) + 1") and its own ppb conversion constants.

- ``MHZ19Device(preheat_s=…)``: for that long after power-up (creation or
  ``replug``) it answers ``preheat_ppm`` (real modules answer fixed values while
  preheating); ``abc`` follows the 0x79 command.
- ``ZE08Device(mode="qa")``: a module left in question-and-answer mode sends
  nothing by itself; ``FF 01 78 40 …`` switches it to active upload, ``78 41``
  back; in Q&A mode it answers ``FF 01 86 …`` with
  ``FF 86 ug_hi ug_lo 00 00 ppb_hi ppb_lo CS``.
"""

from __future__ import annotations

import time

from .serialdev import PtyDevice

CH2O_MG_PER_PPB = 30.03 / 24.45 / 1000.0   # 25 °C, 101.325 kPa


def checksum(body: bytes) -> int:
    """Winsen manuals: 0xFF - (byte1 + … + byte7) + 1, low 8 bits."""
    return (0xFF - (sum(body[1:8]) & 0xFF) + 1) & 0xFF


def frame(body: bytes) -> bytes:
    """8 bytes + checksum."""
    return body[:8] + bytes([checksum(body)])


def _request(buf: bytes):
    start = buf.find(b"\xff\x01")
    if start < 0:
        return None, max(0, len(buf) - 1)
    if start > 0:
        return None, start
    if len(buf) < 9:
        return None, 0
    req = buf[:9]
    return (req if req[8] == checksum(req) else None), 9


class MHZ19Device(PtyDevice):
    def __init__(self, co2_ppm: float = 600, preheat_s: float = 0.0, preheat_ppm: int = 500, **kw):
        self.values = {"co2_ppm": co2_ppm}
        self.abc = True
        self.preheat_s = preheat_s
        self.preheat_ppm = preheat_ppm
        self.powered_at = time.monotonic()
        super().__init__(kw.pop("name", "ttyMHZ19"), **kw)

    def set(self, **values: float) -> None:
        self.values.update({k: float(v) for k, v in values.items() if k in self.values})

    def replug(self) -> None:
        if self._master is None:
            self.powered_at = time.monotonic()   # its USB adapter powers it: a new preheat
        super().replug()

    def parse_request(self, buf: bytes):
        return _request(buf)

    def handle(self, request: bytes) -> bytes | None:
        cmd = request[2]
        if cmd == 0x86:
            preheating = time.monotonic() - self.powered_at < self.preheat_s
            ppm = self.preheat_ppm if preheating else max(0, min(0xFFFF, round(self.values["co2_ppm"])))
            return frame(bytes([0xFF, 0x86, ppm >> 8, ppm & 0xFF, 0x47, 0x00, 0x00, 0x00]))
        if cmd == 0x79:
            self.abc = request[3] == 0xA0
            return frame(bytes([0xFF, 0x79, 0x01, 0, 0, 0, 0, 0]))
        return None


class ZE08Device(PtyDevice):
    stream_period_s = 1.0

    def __init__(self, hcho_mgm3: float = 0.02, period_s: float = 1.0, mode: str = "active", **kw):
        self.values = {"hcho_mgm3": hcho_mgm3}
        self.stream_period_s = period_s
        self.mode = mode
        self.full_range_ppb = 5000
        self.raw_ppb: int | None = None   # a test may send this instead of the value (an impossible one)
        super().__init__(kw.pop("name", "ttyZE08"), **kw)

    def set(self, **values: float) -> None:
        self.values.update({k: float(v) for k, v in values.items() if k in self.values})

    def ppb(self) -> int:
        if self.raw_ppb is not None:
            return self.raw_ppb
        return max(0, min(0xFFFF, round(self.values["hcho_mgm3"] / CH2O_MG_PER_PPB)))

    def stream_frame(self) -> bytes | None:
        if self.mode != "active":
            return None
        ppb, fr = self.ppb(), self.full_range_ppb
        return frame(bytes([0xFF, 0x17, 0x04, 0x00, ppb >> 8, ppb & 0xFF, fr >> 8, fr & 0xFF]))

    def parse_request(self, buf: bytes):
        return _request(buf)

    def handle(self, request: bytes) -> bytes | None:
        cmd = request[2]
        if cmd == 0x78:
            self.mode = "active" if request[3] == 0x40 else "qa" if request[3] == 0x41 else self.mode
            return None
        if cmd == 0x86 and self.mode == "qa":
            ppb = self.ppb()
            ug = round(ppb * CH2O_MG_PER_PPB * 1000)
            return frame(bytes([0xFF, 0x86, ug >> 8 & 0xFF, ug & 0xFF, 0, 0, ppb >> 8, ppb & 0xFF]))
        return None
