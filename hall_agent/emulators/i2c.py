"""An emulated I2C bus with smbus2's interface, and the chip base class."""

from __future__ import annotations

import ctypes
import errno
import threading
import time
from typing import Iterable

from smbus2.smbus2 import I2C_M_RD


def nack(what: str = "NACK") -> OSError:
    """What Linux i2c-dev raises when a transfer is not acknowledged."""
    return OSError(errno.EREMOTEIO, f"Remote I/O error ({what})")


class EmulatedChip:
    """One part on the bus. Subclasses implement ``on_write`` and ``on_read``.

    ``fault``: None, ``"absent"`` (nothing acknowledges), ``"crc"`` (CRC or
    data corrupted in what the chip sends).
    """

    def __init__(self, clock=time.monotonic):
        self.fault: str | None = None
        self.clock = clock

    def on_write(self, data: bytes) -> None:
        raise NotImplementedError

    def on_read(self, length: int) -> bytes:
        raise NotImplementedError

    def set(self, **values: float) -> None:
        unknown = set(values) - set(self.values)
        if unknown:
            raise KeyError(f"{type(self).__name__} has no value {', '.join(sorted(unknown))}")
        self.values.update({k: float(v) for k, v in values.items()})

    values: dict[str, float]


class EmulatedI2CBus:
    """Stands in for ``smbus2.SMBus(n)``; chips are attached at addresses."""

    def __init__(self, bus: int = 1):
        self.bus = bus
        self.chips: dict[int, EmulatedChip] = {}
        self._lock = threading.Lock()
        self.transfers = 0

    def attach(self, address: int, chip: EmulatedChip) -> EmulatedChip:
        self.chips[address] = chip
        return chip

    def _chip(self, address: int) -> EmulatedChip:
        chip = self.chips.get(address)
        if chip is None or chip.fault == "absent":
            raise nack(f"no device at {address:#04x}")
        return chip

    # -- smbus2 API -------------------------------------------------------------
    def i2c_rdwr(self, *msgs) -> None:
        with self._lock:
            self.transfers += 1
            for msg in msgs:
                chip = self._chip(msg.addr)
                if msg.flags & I2C_M_RD:
                    data = chip.on_read(msg.len)
                    if len(data) < msg.len:  # the master clocks out 0xFF after the chip stops driving SDA
                        data = data + b"\xff" * (msg.len - len(data))
                    ctypes.memmove(msg.buf, bytes(data[:msg.len]), msg.len)
                else:
                    chip.on_write(bytes(msg))

    def write_byte_data(self, address: int, register: int, value: int, force=None) -> None:
        with self._lock:
            self._chip(address).on_write(bytes([register, value]))

    def write_i2c_block_data(self, address: int, register: int, data: Iterable[int], force=None) -> None:
        with self._lock:
            self._chip(address).on_write(bytes([register, *data]))

    def read_byte_data(self, address: int, register: int, force=None) -> int:
        with self._lock:
            chip = self._chip(address)
            chip.on_write(bytes([register]))
            return chip.on_read(1)[0]

    def read_i2c_block_data(self, address: int, register: int, length: int, force=None) -> list[int]:
        with self._lock:
            chip = self._chip(address)
            chip.on_write(bytes([register]))
            return list(chip.on_read(length))

    def write_quick(self, address: int, force=None) -> None:
        with self._lock:
            self._chip(address)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
