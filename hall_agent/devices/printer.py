"""The queue-ticket printer: ESC/POS real-time status (DLE EOT n) over serial.

Epson ESC/POS command reference, "DLE EOT": the host sends ``10 04 n`` and
the printer answers one byte of the form ``0xx1xx10`` (bits 0, 1, 4, 7 fixed:
``b & 0x93 == 0x12``):

- n=1 printer status: bit 3 offline;
- n=2 offline cause: bit 2 cover open, bit 3 paper being fed by the button,
  bit 5 printing stopped at paper end, bit 6 an error occurred;
- n=3 error cause: bit 2 recoverable (mechanical) error, bit 3 autocutter
  error, bit 5 unrecoverable error, bit 6 automatically recoverable error;
- n=4 roll paper sensor: bits 2-3 paper near end, bits 5-6 paper end.

A byte that is not of that form (Automatic Status Back data, XON/XOFF, noise)
is skipped. No reply within ``timeout_s`` means the printer is not answering:
``online: false`` with an error saying so — never "paper ok".
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

from ..sensors.base import SensorAbsent
from ..sensors.uart import SerialPort

log = logging.getLogger(__name__)

DLE_EOT = b"\x10\x04"


def is_status_byte(b: int) -> bool:
    return b & 0x93 == 0x12


@dataclass(frozen=True)
class PrinterState:
    online: bool
    paper: str = "ok"            # ok | near_end | end
    cover_open: bool = False
    error: str | None = None
    answering: bool = True       # not published: tells "not answering" from a reported error

    def as_dict(self) -> dict:
        return {"online": self.online, "paper": self.paper, "cover_open": self.cover_open, "error": self.error}


def decode(status: dict[int, int]) -> PrinterState:
    """The four status bytes (n -> byte) to the state SPEC section 3 publishes."""
    s1, s2, s3, s4 = (status[n] for n in (1, 2, 3, 4))
    errors = []
    if s3 & 0x08:
        errors.append("autocutter error")
    if s3 & 0x04:
        errors.append("mechanical error")
    if s3 & 0x20:
        errors.append("unrecoverable error")
    if s3 & 0x40:
        errors.append("auto-recoverable error (e.g. print head too hot)")
    if s2 & 0x40 and not errors:
        errors.append("error")
    paper = "end" if s4 & 0x60 else "near_end" if s4 & 0x0C else "ok"
    if s2 & 0x20:
        paper = "end"
    return PrinterState(online=not s1 & 0x08, paper=paper, cover_open=bool(s2 & 0x04),
                        error="; ".join(errors) or None)


def not_answering(port: str, why: str) -> PrinterState:
    return PrinterState(online=False, paper="ok", cover_open=False, error=f"not answering on {port}: {why}",
                        answering=False)


class EscPosStatusReader:
    """Asks the four real-time statuses over a serial port, one at a time."""

    def __init__(self, port: str, baudrate: int = 9600, timeout_s: float = 1.0):
        self.port = port
        self.timeout_s = timeout_s
        self.serial = SerialPort(port, baudrate, timeout_s=0.05, model="printer")
        self.skipped = 0
        self._lock = threading.Lock()  # the poller and a check may ask at the same time

    def close(self) -> None:
        self.serial.close()

    def _ask(self, n: int) -> int | None:
        self.serial.write(DLE_EOT + bytes([n]))  # drops what was waiting: only the answer counts
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            data = self.serial.read(1)
            if not data:
                continue
            if is_status_byte(data[0]):
                return data[0]
            self.skipped += 1  # ASB bytes, XON/XOFF, noise: not an answer
        return None

    def read(self) -> PrinterState:
        with self._lock:
            status = {}
            try:
                for n in (1, 2, 3, 4):
                    b = self._ask(n)
                    if b is None:
                        return not_answering(self.port, f"no status reply within {self.timeout_s:g} s")
                    status[n] = b
            except SensorAbsent as e:  # missing, or gone: reopened on the next poll
                reason = e.reason.split(": ", 1)[-1]
                return not_answering(self.port, reason.replace(f"{self.port} went away", "the port went away")
                                     .replace(f"cannot open {self.port}", "cannot open the port"))
            return decode(status)


class PrinterMonitor:
    """Polls one printer every ``poll_s`` in its own thread; reports changes."""

    def __init__(self, cfg, port: str, on_change: Callable[[str, PrinterState], None]):
        self.cfg = cfg
        self.reader = EscPosStatusReader(port, cfg.baudrate, cfg.timeout_s)
        self.on_change = on_change
        self.state: PrinterState | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"printer-{cfg.id}", daemon=True)
        self.heartbeat = time.monotonic()

    def start(self) -> None:
        self._thread.start()

    def poll(self) -> PrinterState:
        state = self.reader.read()
        with self.reader._lock:
            changed = state != self.state
            self.state = state
        if changed:
            self.on_change(self.cfg.id, state)
        return state

    def _run(self) -> None:
        while not self._stop.is_set():
            self.heartbeat = time.monotonic()
            try:
                self.poll()
            except Exception:
                log.exception("printer %s: poll failed", self.cfg.id)
            self._stop.wait(self.cfg.poll_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.cfg.timeout_s * 4 + 1)
        self.reader.close()
