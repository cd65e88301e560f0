"""Winsen MH-Z19B/C: CO2 over UART (9600 8N1).

Datasheet "MH-Z19B" (Winsen, v1.0 and v1.6), "Communication protocol": read
CO2 concentration = ``FF 01 86 00 00 00 00 00 79``; the reply is
``FF 86 HIGH LOW - - - - CS``, CO2 = HIGH * 256 + LOW; every frame ends with a
checksum = (NOT (byte1 + … + byte7)) + 1. Self-calibration (ABC) on/off:
``FF 01 79 A0 …`` / ``FF 01 79 00 …`` (on from the factory: the lowest value
of each 24 h is taken as 400 ppm).

- Preheat: the module needs about 3 minutes after power-up (datasheet
  "preheat time"); what it answers before is not a reading. The module is
  powered with the Pi (or with its USB adapter), so the preheat runs from the
  Pi's boot (``CLOCK_BOOTTIME``) and again after the port came back from
  being unplugged. Preheat answers are ``SensorWarmup``: not published, not a
  fault.
- Range: the MH-Z19B measures up to 2000, 5000 or 10000 ppm (by model and
  setting); 0 ppm (after preheat) or more than 10000 ppm with a valid
  checksum is not a reading.
"""

from __future__ import annotations

import logging
import time

from .base import Sensor, SensorError, SensorWarmup
from .uart import FrameScanner, SerialPort, winsen_checksum

log = logging.getLogger(__name__)

READ_CO2 = bytes.fromhex("ff0186000000000079")
FRAME_LEN = 9
PREHEAT_S = 180.0
MAX_PPM = 10000


def request(command: int, args: bytes = b"") -> bytes:
    frame = bytes([0xFF, 0x01, command]) + args.ljust(5, b"\x00")
    return frame + bytes([winsen_checksum(frame + b"\x00")])


def scanner() -> FrameScanner:
    return FrameScanner(b"\xff\x86", lambda b: FRAME_LEN if len(b) >= 2 else None,
                        lambda f: f[8] == winsen_checksum(f), torn_check=True)


def _boottime() -> float:
    try:
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    except (AttributeError, OSError):  # not Linux
        return time.monotonic()


class MHZ19(Sensor):
    model = "mhz19"
    period_s = 1.0

    def __init__(self, port: str, baudrate: int = 9600, timeout_s: float = 1.0, abc: bool | None = None,
                 preheat_s: float = PREHEAT_S, uptime=_boottime):
        self.serial = SerialPort(port, baudrate, model=self.model)
        self.timeout_s = timeout_s
        self.scanner = scanner()
        self.abc = abc
        self.preheat_s = preheat_s
        self.uptime = uptime
        self._abc_sent_for_open = -1
        self._powered_at = 0.0   # on the uptime clock: the Pi's boot, or the port's return

    def _settings(self) -> None:
        if self.abc is None or self._abc_sent_for_open == self.serial.opens:
            return
        self.serial.write(request(0x79, bytes([0xA0 if self.abc else 0x00])))
        self._abc_sent_for_open = self.serial.opens
        time.sleep(0.05)          # some modules answer FF 79 …, others nothing
        self.serial.discard_input()
        log.info("mhz19 on %s: self-calibration (ABC) %s", self.serial.port, "on" if self.abc else "off")

    def read(self) -> dict[str, float]:
        opens = self.serial.opens
        self.scanner.reset()
        self.serial.write(READ_CO2)
        if self.serial.opens > 1 and self.serial.opens != opens:
            self._powered_at = self.uptime()   # reopened after it went away: powered up again
        frame = self.serial.read_frame(self.scanner, self.timeout_s)
        self._settings()
        ppm = frame[2] * 256 + frame[3]
        warm = self.uptime() - self._powered_at
        if warm < self.preheat_s:
            raise SensorWarmup(f"mhz19: preheating ({warm:.0f} of {self.preheat_s:.0f} s since power-up)")
        if ppm == 0 or ppm > MAX_PPM:
            raise SensorError(f"mhz19: {ppm} ppm is outside the part's range (1-{MAX_PPM} ppm)")
        return {"co2_ppm": float(ppm)}

    def close(self) -> None:
        self.serial.close()
