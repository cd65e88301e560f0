"""Plantower PMS5003: active mode (a 32-byte frame every ``period_s``: 2.3 s in
the stable mode of the data manual) or passive mode (a frame when asked with
``42 4D E2``), and asleep (``E4 00``: nothing until ``E4 01``). Independent of
the driver: its own frame and checksum code."""

from __future__ import annotations

from .serialdev import PtyDevice


def data_frame(pm1: int, pm25: int, pm10: int, cf1: tuple[int, int, int] | None = None) -> bytes:
    cf = cf1 or (pm1, pm25, pm10)
    counts = (pm1 * 60, pm1 * 20, pm25 * 4, pm25, pm10 // 4, pm10 // 10)
    words = [*cf, pm1, pm25, pm10, *counts, 0x9700]
    body = b"\x42\x4d\x00\x1c" + b"".join(max(0, min(0xFFFF, w)).to_bytes(2, "big") for w in words)
    return body + (sum(body) & 0xFFFF).to_bytes(2, "big")


class PMS5003Device(PtyDevice):
    def __init__(self, pm1_ugm3: float = 8, pm25_ugm3: float = 12, pm10_ugm3: float = 18, period_s: float = 2.3,
                 **kw):
        self.values = {"pm1_ugm3": pm1_ugm3, "pm25_ugm3": pm25_ugm3, "pm10_ugm3": pm10_ugm3}
        self.stream_period_s = period_s
        self.active = True
        self.sleeping = False
        super().__init__(kw.pop("name", "ttyPMS"), **kw)

    def set(self, **values: float) -> None:
        self.values.update({k: float(v) for k, v in values.items() if k in self.values})

    def frame(self) -> bytes:
        v = self.values
        return data_frame(round(v["pm1_ugm3"]), round(v["pm25_ugm3"]), round(v["pm10_ugm3"]))

    def stream_frame(self) -> bytes | None:
        return self.frame() if self.active and not self.sleeping else None

    def parse_request(self, buf: bytes):
        start = buf.find(b"\x42\x4d")
        if start < 0:
            return None, max(0, len(buf) - 1)
        if start > 0:
            return None, start
        if len(buf) < 7:
            return None, 0
        req = buf[:7]
        ok = (req[5] << 8 | req[6]) == sum(req[:5]) & 0xFFFF
        return (req if ok else None), 7

    def handle(self, request: bytes) -> bytes | None:
        cmd, arg = request[2], request[4]
        if cmd == 0xE1:
            self.active = arg == 1
        elif cmd == 0xE4:
            self.sleeping = arg == 0
        elif cmd == 0xE2 and not self.active and not self.sleeping:
            return self.frame()
        return None
