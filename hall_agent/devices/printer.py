"""The queue-ticket printer: ESC/POS real-time status (DLE EOT n) over serial.

Epson ESC/POS command reference, "DLE EOT": the host sends ``10 04 n`` and
the printer answers one byte of the form ``0xx1xx10`` (bits 0, 1, 4, 7 fixed:
``b & 0x93 == 0x12``):

- n=1 printer status: bit 3 offline;
- n=2 offline cause: bit 2 cover open, bit 3 paper being fed by the button,
  bit 5 printing stopped at paper end, bit 6 an error occurred;
- n=3 error cause: bit 2 recoverable (mechanical) error, bit 3 autocutter
  error, bit 5 unrecoverable error, bit 6 automatically recoverable error;
- n=4 roll paper sensor: bits 2-3 paper near end, bit 5 paper end. Epson sets
  bits 5 and 6 together; on kiosk printers with a presenter bit 6 is the
  presenter sensor (Citizen PPU-231II manual, DLE EOT n=4: bit 6 "paper not
  found by presenter sensor"), so only bit 5 means paper end.

Models differ: a printer may not answer every ``n`` (the Citizen CBM-820
manual lists n=1..3 only). An ``n`` that gets no answer in
``UNSUPPORTED_AFTER`` polls in a row while the printer answers n=1 is learnt
as unsupported: it is no longer asked, and what it would tell is published
as unknown (``paper: "unknown"``, ``cover_open: null``) -- never "ok".

A byte that is not of that form (Automatic Status Back data, XON/XOFF, noise)
is skipped. No reply to n=1 within ``timeout_s`` is a silent poll; the
printer is reported not answering (``online: false``, paper unknown) only
after ``fault_after`` silent polls in a row (a busy printer answers late
while it prints a ticket).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from ..sensors.base import SensorAbsent
from ..sensors.uart import SerialPort

log = logging.getLogger(__name__)

DLE_EOT = b"\x10\x04"
#: polls in a row in which an n (2..4) went unanswered while n=1 answered
UNSUPPORTED_AFTER = 3


def is_status_byte(b: int) -> bool:
    return b & 0x93 == 0x12


@dataclass(frozen=True)
class PrinterState:
    online: bool
    paper: str = "unknown"           # ok | near_end | end | unknown
    cover_open: bool | None = None   # None: the printer does not say
    error: str | None = None
    answering: bool = True       # not published: tells "not answering" from a reported error

    def as_dict(self) -> dict:
        return {"online": self.online, "paper": self.paper, "cover_open": self.cover_open, "error": self.error}


def decode(status: dict[int, int]) -> PrinterState:
    """The status bytes that were read (n -> byte; n=1 required, 2..4 where the
    printer answers them) to the state SPEC section 3 publishes."""
    s1, s2, s3, s4 = (status.get(n) for n in (1, 2, 3, 4))
    errors = []
    if s3 is not None:
        if s3 & 0x08:
            errors.append("autocutter error")
        if s3 & 0x04:
            errors.append("mechanical error")
        if s3 & 0x20:
            errors.append("unrecoverable error")
        if s3 & 0x40:
            errors.append("auto-recoverable error (e.g. print head too hot)")
    if s2 is not None and s2 & 0x40 and not errors:
        errors.append("error")
    if s4 is not None:
        paper = "end" if s4 & 0x20 else "near_end" if s4 & 0x0C else "ok"
    else:
        paper = "unknown"
    if s2 is not None and s2 & 0x20:
        paper = "end"
    return PrinterState(online=not s1 & 0x08, paper=paper,
                        cover_open=None if s2 is None else bool(s2 & 0x04),
                        error="; ".join(errors) or None)


def not_answering(port: str, why: str) -> PrinterState:
    return PrinterState(online=False, paper="unknown", cover_open=None, error=f"not answering on {port}: {why}",
                        answering=False)


class EscPosStatusReader:
    """Asks the real-time statuses over a serial port, one at a time."""

    def __init__(self, port: str, baudrate: int = 9600, timeout_s: float = 1.0):
        self.port = port
        self.timeout_s = timeout_s
        self.serial = SerialPort(port, baudrate, timeout_s=0.05, model="printer")
        self.skipped = 0
        self.unsupported: set[int] = set()
        self._misses: dict[int, int] = {}
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
            try:
                s1 = self._ask(1)
                if s1 is None:
                    return not_answering(self.port, f"no status reply within {self.timeout_s:g} s")
                status = {1: s1}
                for n in (2, 3, 4):
                    if n in self.unsupported:
                        continue
                    b = self._ask(n)
                    if b is None:
                        self._misses[n] = self._misses.get(n, 0) + 1
                        if self._misses[n] >= UNSUPPORTED_AFTER:
                            self.unsupported.add(n)
                            log.warning("printer on %s does not answer DLE EOT %d (%d polls): taken as not "
                                        "supported by this model; what it tells is reported unknown",
                                        self.port, n, self._misses[n])
                        continue
                    self._misses[n] = 0
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
        self.fault_after = getattr(cfg, "fault_after", 3)
        self.silent = 0   # silent polls in a row
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"printer-{cfg.id}", daemon=True)
        self.heartbeat = time.monotonic()

    def start(self) -> None:
        self._thread.start()

    def poll(self) -> PrinterState:
        """One poll; a silent one changes nothing until ``fault_after`` in a row."""
        state = self.reader.read()
        with self.reader._lock:
            if state.answering:
                self.silent = 0
            else:
                self.silent += 1
                if self.silent < self.fault_after:
                    log.info("printer %s: silent poll %d of %d before offline (%s)", self.cfg.id, self.silent,
                             self.fault_after, state.error)
                    return self.state if self.state is not None else state
            changed = state != self.state
            self.state = state
        if changed:
            self.on_change(self.cfg.id, state)
        return state

    def check_now(self) -> PrinterState:
        """For a check: ask until the printer answers, at most until ``fault_after``
        silent polls in a row (then it is reported not answering, as the poller would)."""
        while True:
            state = self.poll()
            if self.silent == 0 or self.silent >= self.fault_after:
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
