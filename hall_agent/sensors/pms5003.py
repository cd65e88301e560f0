"""Plantower PMS5003 / PMS7003: particulate matter over UART (9600 8N1).

Datasheet "PMS5003 series data manual" (Plantower, v2.3, 2016), appendix I:
32-byte frame ``42 4D``, frame length (2 bytes, = 2 * 13 + 2 = 28), 13 data
words big-endian: PM1.0, PM2.5, PM10 (CF=1, standard particle), PM1.0, PM2.5,
PM10 (under atmospheric environment), six particle counts, reserved; then a
check code = sum of every byte before it (low 16 bits). We report the
atmospheric-environment values, as the Linux pms7003 driver does.

Commands ``42 4D cmd 00 arg sumH sumL`` (appendix II): passive mode E1/00,
active E1/01, read in passive mode E2, sleep E4/00, wake E4/01. As Linux's
pms7003 driver does, ``start()`` wakes the sensor and puts it in passive
mode; each read asks for one frame (E2). After a wake the data is valid only
after about 30 s (the fan must settle: "stable data should be got at least 30
seconds after the sensor wakeup"); until then reads are ``SensorWarmup``.

``awake`` (optional): a callable; when it returns False the sensor is put to
sleep (fan and laser off: their rated life is about 3 years running) and
reads are ``SensorWarmup`` (asleep) until it returns True again.

Range: the effective range is 0-500 µg/m³ and the maximum at least 1000
µg/m³ (technical index); a value above 1000 µg/m³ with a valid checksum
(65535 from a confused module) is not a reading.

Whether a start needs the 30 s: ``start()`` first asks for a frame in
passive mode; a sensor that answers is awake (its fan has run since the Pi
booted, so only the first 30 s after boot are warm-up). One that does not is
woken, and its 30 s run from then.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from .base import Sensor, SensorError, SensorWarmup
from .uart import FrameScanner, SerialPort

log = logging.getLogger(__name__)

HEADER = b"\x42\x4d"
DATA_LENGTH = 28
WAKE_S = 30.0
MAX_UGM3 = 1000
CMD_MODE, CMD_READ, CMD_SLEEP = 0xE1, 0xE2, 0xE4


def _boottime() -> float:
    try:
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    except (AttributeError, OSError):
        return time.monotonic()


def _size(buf: bytes) -> int | None:
    if len(buf) < 4:
        return None
    length = buf[2] << 8 | buf[3]
    return 4 + length if length in (DATA_LENGTH, 4) else 0


def checksum(frame: bytes) -> int:
    return sum(frame[:-2]) & 0xFFFF


def scanner() -> FrameScanner:
    return FrameScanner(HEADER, _size, lambda f: (f[-2] << 8 | f[-1]) == checksum(f))


def command(cmd: int, arg: int) -> bytes:
    frame = HEADER + bytes([cmd, 0, arg])
    s = sum(frame)
    return frame + bytes([s >> 8 & 0xFF, s & 0xFF])


class PMS5003(Sensor):
    model = "pms5003"
    period_s = 2.3
    read_timeout_s = 4.0

    def __init__(self, port: str, baudrate: int = 9600, timeout_s: float = 3.0,
                 awake: Callable[[], bool] | None = None, warmup_s: float = WAKE_S, clock=time.monotonic,
                 uptime=None):
        self.serial = SerialPort(port, baudrate, model=self.model)
        self.timeout_s = timeout_s
        self.scanner = scanner()
        self.awake = awake
        self.warmup_s = warmup_s
        self.clock = clock
        self.uptime = uptime or _boottime
        self.woken_at: float | None = None
        self.asleep = False
        self._opens = -1

    def _send(self, cmd: int, arg: int) -> None:
        self.serial.write(command(cmd, arg))
        time.sleep(0.05)  # some units answer with an 8-byte frame: dropped with the rest

    def start(self) -> None:
        self._send(CMD_MODE, 0x00)    # passive (harmless when already)
        self.serial.discard_input()
        self.scanner.reset()
        self.serial.write(command(CMD_READ, 0x00))
        try:
            self.serial.read_frame(self.scanner, 1.5, accept=lambda f: len(f) == 32)
        except SensorError:
            self._wake()              # asleep (or silent): wake it, 30 s from now
            return
        self.woken_at = self.clock() - self.uptime()   # awake since the Pi (and it) powered up
        self.asleep = False
        self._opens = self.serial.opens

    def _wake(self) -> None:
        self._send(CMD_SLEEP, 0x01)   # wake (harmless when awake)
        self._send(CMD_MODE, 0x00)    # passive: a frame only when asked
        self.serial.discard_input()
        self.woken_at = self.clock()
        self.asleep = False
        self._opens = self.serial.opens

    def sleep(self) -> None:
        self._send(CMD_SLEEP, 0x00)
        self.asleep = True
        log.info("pms5003 on %s: asleep outside business hours", self.serial.port)

    def read(self) -> dict[str, float]:
        if self.awake is not None and not self.awake():
            if not self.asleep:
                self.sleep()
            raise SensorWarmup("pms5003: asleep outside business hours")
        if self.woken_at is None:
            self.start()
        elif self.asleep or self._opens != self.serial.opens:
            self._wake()              # back from sleep, or the port came back (powered up again)
        self.serial.discard_input()
        self.scanner.reset()
        self.serial.write(command(CMD_READ, 0x00))
        frame = self.serial.read_frame(self.scanner, self.timeout_s, accept=lambda f: len(f) == 32)
        if self._opens != self.serial.opens:   # reopened during this read: start over
            self._wake()
        since = self.clock() - self.woken_at
        if since < self.warmup_s:
            raise SensorWarmup(f"pms5003: fan settling ({since:.0f} of {self.warmup_s:.0f} s after wake)")
        words = [frame[i] << 8 | frame[i + 1] for i in range(4, 30, 2)]
        pm1, pm25, pm10 = words[3], words[4], words[5]
        if max(pm1, pm25, pm10) > MAX_UGM3:
            raise SensorError(f"pms5003: {max(pm1, pm25, pm10)} µg/m³ is above the part's maximum range "
                              f"({MAX_UGM3} µg/m³)")
        return {"pm1_ugm3": float(pm1), "pm25_ugm3": float(pm25), "pm10_ugm3": float(pm10)}

    def close(self) -> None:
        self.serial.close()
