"""Winsen MH-Z19B/C: CO2 over UART (9600 8N1).

Datasheet "MH-Z19B" (Winsen, v1.0), "Communication protocol": read CO2
concentration = ``FF 01 86 00 00 00 00 00 79``; the reply is
``FF 86 HIGH LOW - - - - CS``, CO2 = HIGH * 256 + LOW; every frame ends with a
checksum = (NOT (byte1 + … + byte7)) + 1.
"""

from __future__ import annotations

from .base import Sensor
from .uart import FrameScanner, SerialPort, winsen_checksum

READ_CO2 = bytes.fromhex("ff0186000000000079")
FRAME_LEN = 9


def request(command: int, args: bytes = b"") -> bytes:
    frame = bytes([0xFF, 0x01, command]) + args.ljust(5, b"\x00")
    return frame + bytes([winsen_checksum(frame + b"\x00")])


def scanner() -> FrameScanner:
    return FrameScanner(b"\xff\x86", lambda b: FRAME_LEN if len(b) >= 2 else None,
                        lambda f: f[8] == winsen_checksum(f), torn_check=True)


class MHZ19(Sensor):
    model = "mhz19"

    def __init__(self, port: str, baudrate: int = 9600, timeout_s: float = 1.0):
        self.serial = SerialPort(port, baudrate, model=self.model)
        self.timeout_s = timeout_s
        self.scanner = scanner()

    def read(self) -> dict[str, float]:
        self.scanner.reset()
        self.serial.write(READ_CO2)
        frame = self.serial.read_frame(self.scanner, self.timeout_s)
        return {"co2_ppm": float(frame[2] * 256 + frame[3])}

    def close(self) -> None:
        self.serial.close()
