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
    """Stands in for ``smbus2.SMBus(n)``; chips are attached at addresses.

    As the kernel's i2c-dev does it: ``i2c_rdwr`` is one ``I2C_RDWR`` ioctl,
    atomic under the adapter's lock, each message carrying its own address.
    smbus2's register calls (``read_byte_data``, ``read_i2c_block_data``, …)
    are two ioctls on the shared handle: ``I2C_SLAVE`` sets the handle's
    address, then ``I2C_SMBUS`` transfers to whatever address the handle has
    then. Nothing here serialises the two, as nothing does in smbus2: two
    threads on one handle can talk to each other's chip. Callers lock per bus
    (``hardware.LockedBus``). ``gap`` (a test hook) runs between the two.
    """

    def __init__(self, bus: int = 1):
        self.bus = bus
        self.chips: dict[int, EmulatedChip] = {}
        self._adapter = threading.Lock()   # the kernel adapter's lock: one transfer at a time
        self._address: int | None = None   # the handle's address (ioctl I2C_SLAVE)
        self.gap = None
        self.transfers = 0

    def attach(self, address: int, chip: EmulatedChip) -> EmulatedChip:
        self.chips[address] = chip
        return chip

    def _chip(self, address: int) -> EmulatedChip:
        chip = self.chips.get(address)
        if chip is None or chip.fault == "absent":
            raise nack(f"no device at {address:#04x}")
        return chip

    def _set_address(self, address: int) -> None:
        self._address = address            # ioctl(fd, I2C_SLAVE, address)
        if self.gap is not None:
            self.gap(address)
        else:
            time.sleep(0)                  # between two system calls another thread may run

    # -- smbus2 API -------------------------------------------------------------
    def i2c_rdwr(self, *msgs) -> None:
        with self._adapter:
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
        self._set_address(address)
        with self._adapter:
            self.transfers += 1
            self._chip(self._address).on_write(bytes([register, value]))

    def write_i2c_block_data(self, address: int, register: int, data: Iterable[int], force=None) -> None:
        self._set_address(address)
        with self._adapter:
            self.transfers += 1
            self._chip(self._address).on_write(bytes([register, *data]))

    def read_byte_data(self, address: int, register: int, force=None) -> int:
        self._set_address(address)
        with self._adapter:
            self.transfers += 1
            chip = self._chip(self._address)
            chip.on_write(bytes([register]))
            return chip.on_read(1)[0]

    def read_i2c_block_data(self, address: int, register: int, length: int, force=None) -> list[int]:
        self._set_address(address)
        with self._adapter:
            self.transfers += 1
            chip = self._chip(self._address)
            chip.on_write(bytes([register]))
            return list(chip.on_read(length))

    def write_quick(self, address: int, force=None) -> None:
        self._set_address(address)
        with self._adapter:
            self._chip(self._address)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
