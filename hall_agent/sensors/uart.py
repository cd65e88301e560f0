"""Serial parts: the port (opened on demand, reopened after it disappears) and
a frame scanner that resynchronises after garbage, short frames and bad checksums."""

from __future__ import annotations

import errno
import time
from dataclasses import dataclass, field
from typing import Callable

import serial

from .base import SensorAbsent, SensorChecksumError, SensorPermission, SensorTimeout

try:
    from termios import error as TermiosError
except ImportError:  # not POSIX
    class TermiosError(Exception):
        pass

#: what a port that went away raises, depending on where pyserial notices
PORT_ERRORS = (serial.SerialException, OSError, TermiosError)


@dataclass
class FrameScanner:
    """Finds valid frames in a byte stream.

    ``header``: the bytes every frame starts with; ``size(buf)``: the frame's
    total length once enough bytes are in (None = not yet known, 0 = impossible
    header: resync); ``valid(frame)``: the checksum test.
    """
    header: bytes
    size: Callable[[bytes], int | None]
    valid: Callable[[bytes], bool]
    #: a frame that holds its header again is a torn frame followed by a real one:
    #: resync at the inner header (for parts whose frames never contain it, whose
    #: one-byte checksum would otherwise let 1 in 256 torn frames through)
    torn_check: bool = False
    max_buffer: int = 4096
    buf: bytearray = field(default_factory=bytearray)
    bad_frames: int = 0

    def feed(self, data: bytes) -> list[bytes]:
        self.buf += data
        frames = []
        while True:
            start = self.buf.find(self.header)
            if start < 0:
                keep = len(self.header) - 1  # a header may be split across reads
                del self.buf[:max(0, len(self.buf) - keep)]
                break
            del self.buf[:start]
            total = self.size(bytes(self.buf))
            if total is None:
                break
            if total == 0:
                self.bad_frames += 1
                del self.buf[:1]
                continue
            if len(self.buf) < total:
                break
            frame = bytes(self.buf[:total])
            inner = frame.find(self.header, 1) if self.torn_check else -1
            if 0 < inner < total - len(self.header) + 1:
                self.bad_frames += 1
                del self.buf[:inner]
                continue
            if self.valid(frame):
                frames.append(frame)
                del self.buf[:total]
            else:
                self.bad_frames += 1
                del self.buf[:1]  # resync: the next header may start inside this one
        if len(self.buf) > self.max_buffer:
            del self.buf[:-self.max_buffer]
        return frames

    def reset(self) -> None:
        self.buf.clear()


def winsen_checksum(frame: bytes) -> int:
    """Winsen MH-Z19 / ZE08: two's complement of the sum of bytes 1..7, low 8 bits."""
    return (0x100 - (sum(frame[1:8]) & 0xFF)) & 0xFF


class SerialPort:
    """A serial port that opens when first used and reopens after it went away."""

    def __init__(self, port: str, baudrate: int = 9600, timeout_s: float = 0.1, model: str = ""):
        self.port = port
        self.baudrate = baudrate
        self.timeout_s = timeout_s
        self.model = model
        self._serial: serial.SerialBase | None = None
        self.opens = 0   # successful opens: a part whose adapter powers it was powered up again at each

    def _open(self) -> serial.SerialBase:
        if self._serial is None:
            try:
                self._serial = serial.serial_for_url(self.port, baudrate=self.baudrate, bytesize=8,
                                                     parity="N", stopbits=1, timeout=self.timeout_s,
                                                     xonxoff=False, rtscts=False)
            except (serial.SerialException, OSError, ValueError) as e:
                if getattr(e, "errno", None) in (errno.EACCES, errno.EPERM):
                    raise SensorPermission.opening(self.port, e) from None
                raise SensorAbsent(f"{self.model}: cannot open {self.port} ({e})") from None
            self.opens += 1
        return self._serial

    def _lost(self, e: Exception) -> SensorAbsent:
        self.close()
        return SensorAbsent(f"{self.model}: {self.port} went away ({e})")

    def write(self, data: bytes) -> None:
        s = self._open()
        try:
            s.reset_input_buffer()
            s.write(data)
            s.flush()
        except PORT_ERRORS as e:
            raise self._lost(e) from None

    def read(self, n: int = 1) -> bytes:
        """Up to ``n`` bytes, waiting at most the port's timeout."""
        s = self._open()
        try:
            return s.read(n)
        except (*PORT_ERRORS, TypeError) as e:
            raise self._lost(e) from None

    def discard_input(self) -> None:
        s = self._open()
        try:
            s.reset_input_buffer()
        except PORT_ERRORS as e:
            raise self._lost(e) from None

    def read_frame(self, scanner: FrameScanner, timeout_s: float, accept: Callable[[bytes], bool] = lambda f: True
                   ) -> bytes:
        """The first valid frame (that ``accept`` takes) to arrive within ``timeout_s``."""
        s = self._open()
        deadline = time.monotonic() + timeout_s
        got_bytes = False
        bad_before = scanner.bad_frames
        while time.monotonic() < deadline:
            try:
                data = s.read(max(1, s.in_waiting))
            except (*PORT_ERRORS, TypeError) as e:
                raise self._lost(e) from None
            got_bytes = got_bytes or bool(data)
            for frame in scanner.feed(data):
                if accept(frame):
                    return frame
        if scanner.bad_frames > bad_before:
            raise SensorChecksumError(f"{self.model}: {scanner.bad_frames - bad_before} bad frame(s) "
                                      f"and no valid one within {timeout_s:g} s")
        if got_bytes:
            raise SensorTimeout(f"{self.model}: only garbage on {self.port} for {timeout_s:g} s")
        raise SensorTimeout(f"{self.model}: no answer on {self.port} within {timeout_s:g} s")

    def close(self) -> None:
        if self._serial is not None:
            try:
                self._serial.close()
            except Exception:
                pass
            self._serial = None
