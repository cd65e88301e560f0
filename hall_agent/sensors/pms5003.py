"""Plantower PMS5003 / PMS7003: particulate matter over UART (9600 8N1).

Datasheet "PMS5003 series data manual" (Plantower, 2016), appendix I:
32-byte frame ``42 4D``, frame length (2 bytes, = 2 * 13 + 2 = 28), 13 data
words big-endian: PM1.0, PM2.5, PM10 (CF=1, standard particle), PM1.0, PM2.5,
PM10 (under atmospheric environment), six particle counts, reserved; then a
check code = sum of every byte before it (low 16 bits). We report the
atmospheric-environment values, as the Linux pms7003 driver does.
Active mode (the default) sends a frame every 200-800 ms; command replies
are 8-byte frames (length 4), skipped here.
"""

from __future__ import annotations

from .base import Sensor
from .uart import FrameScanner, SerialPort

HEADER = b"\x42\x4d"
DATA_LENGTH = 28


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

    def __init__(self, port: str, baudrate: int = 9600, timeout_s: float = 3.0):
        self.serial = SerialPort(port, baudrate, model=self.model)
        self.timeout_s = timeout_s
        self.scanner = scanner()

    def read(self) -> dict[str, float]:
        self.serial.discard_input()  # the stream may hold minutes-old frames
        self.scanner.reset()
        frame = self.serial.read_frame(self.scanner, self.timeout_s, accept=lambda f: len(f) == 32)
        words = [frame[i] << 8 | frame[i + 1] for i in range(4, 30, 2)]
        return {"pm1_ugm3": float(words[3]), "pm25_ugm3": float(words[4]), "pm10_ugm3": float(words[5])}

    def close(self) -> None:
        self.serial.close()
