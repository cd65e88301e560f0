"""An ESC/POS thermal ticket printer behind a pseudo-terminal.

Answers ``DLE EOT n`` (n = 1..4) with the status byte the Epson ESC/POS
reference defines (``0xx1xx10``); print data is swallowed.
``set(paper="near_end", cover_open=True, online=False, responding=False,
error="autocutter", presenter_empty=True)``; ``fault = "garbage"`` sends
Automatic Status Back bytes and XON/XOFF before each answer.

Models (constructor): ``unsupported={4}`` never answers those ``n`` (Citizen
CBM-820: no n=4); ``presenter=True`` is a kiosk printer whose n=4 bit 6 is
the presenter sensor (Citizen PPU-231II), paper end being bit 5 alone (an
Epson sets bits 5 and 6); ``lag_s`` delays every answer (a printer busy
printing a ticket answers behind its receive buffer).
"""

from __future__ import annotations

from .serialdev import PtyDevice

ERROR_BITS = {"mechanical": 0x04, "autocutter": 0x08, "unrecoverable": 0x20, "auto_recoverable": 0x40}


class EscPosPrinter(PtyDevice):
    def __init__(self, unsupported=(), presenter: bool = False, lag_s: float = 0.0, **kw):
        self.unsupported = set(unsupported)
        self.presenter = presenter
        self.presenter_empty = presenter   # no ticket waiting in the presenter
        self.lag_s = lag_s
        self.paper = "ok"
        self.cover_open = False
        self.online = True
        self.responding = True
        self.error: str | None = None
        self.tickets = 0
        super().__init__(kw.pop("name", "ttyPRINTER"), **kw)

    def set(self, **state) -> None:
        for key, value in state.items():
            if key not in ("paper", "cover_open", "online", "responding", "error", "presenter_empty", "lag_s"):
                raise KeyError(key)
            if key == "paper" and value not in ("ok", "near_end", "end"):
                raise ValueError(f"paper {value!r}")
            if key == "error" and value is not None and value not in ERROR_BITS:
                raise ValueError(f"error {value!r}")
            setattr(self, key, value)

    @property
    def offline(self) -> bool:
        return not self.online or self.cover_open or self.paper == "end" or self.error is not None

    def status(self, n: int) -> int:
        b = 0x12
        if n == 1 and self.offline:
            b |= 0x08
        elif n == 2:
            b |= (0x04 if self.cover_open else 0) | (0x20 if self.paper == "end" else 0)
            b |= 0x40 if self.error else 0
        elif n == 3 and self.error:
            b |= ERROR_BITS[self.error]
        elif n == 4:
            if self.presenter:  # PPU-231II: bit 5 paper end, bit 6 presenter sensor
                b |= {"ok": 0x00, "near_end": 0x0C, "end": 0x2C}[self.paper]
                b |= 0x40 if self.presenter_empty else 0
            else:               # Epson: paper end sets bits 5 and 6
                b |= {"ok": 0x00, "near_end": 0x0C, "end": 0x6C}[self.paper]
        return b

    def parse_request(self, buf: bytes):
        start = buf.find(b"\x10\x04")
        if start < 0:
            if buf and buf[-1] == 0x10:
                return None, len(buf) - 1
            return None, len(buf)   # print data: swallowed
        if start > 0:
            if b"\x1b\x69" in buf[:start] or b"\x1d\x56" in buf[:start]:
                self.tickets += 1  # a cut: one more ticket
            return None, start
        if len(buf) < 3:
            return None, 0
        return buf[:3], 3

    def handle(self, request: bytes) -> bytes | None:
        n = request[2]
        if not self.responding or n not in (1, 2, 3, 4) or n in self.unsupported:
            return None
        if self.lag_s:
            import time
            time.sleep(self.lag_s)
        reply = bytes([self.status(n)])
        if self.fault == "garbage":
            # ASB bytes (0xx1xx00), XON, XOFF: none of them is a status byte
            return bytes([0x14, 0x00, 0x00, 0x0F, 0x11, 0x13]) + reply
        return reply

    def _answer(self, frame: bytes) -> None:
        if self.fault == "garbage":
            self.send(frame)
        else:
            super()._answer(frame)
