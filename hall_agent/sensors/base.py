"""What every sensor driver shares: the error tree, the base class, and the
I2C and CRC helpers of the Sensirion parts.

Errors (all raised by ``read()``, never a wrong number)::

    SensorError              a reading could not be made; .reason says why
    ├── SensorAbsent         nothing answers: no ACK on I2C, port missing, file missing
    ├── SensorChecksumError  a CRC or checksum did not match, or a frame was malformed
    ├── SensorTimeout        the part did not answer (or had no data) in time
    └── SensorWarmup         the part is warming up (or asleep): no reading, and no fault
"""

from __future__ import annotations

import errno
import time
from typing import Any, ClassVar

from smbus2 import i2c_msg


class SensorError(Exception):
    """A reading could not be made. ``kind`` is a short word for telemetry."""
    kind = "error"

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class SensorAbsent(SensorError):
    kind = "absent"


class SensorPermission(SensorError):
    """The bus or port exists but the agent may not open it (EACCES: its mode and group;
    EPERM: the unit's device rules): not a wiring fault."""
    kind = "permission"

    @classmethod
    def opening(cls, node: str, e: OSError) -> "SensorPermission":
        name = "EPERM" if e.errno == 1 else "EACCES"
        return cls(f"permission denied opening {node} ({name}): the agent's user may not use it, the "
                   "part and its wiring are not at fault; run hall-agent doctor")


class SensorChecksumError(SensorError):
    kind = "checksum"


class SensorTimeout(SensorError):
    kind = "timeout"


class SensorWarmup(SensorError):
    """Not a reading and not a failure: the part's documented warm-up (SGP30's
    first 15 s, MH-Z19 preheat, PMS5003 after wake) or a part put to sleep."""
    kind = "warmup"


class Sensor:
    """A driver: ``start()`` once (``create`` does it), then ``read()`` as often as needed."""

    model: ClassVar[str] = ""
    #: if set, the loop samples this often and publishes the latest sample every
    #: interval_s (a part such as the SGP30 must be measured once a second)
    sample_s: ClassVar[float | None] = None
    #: the part's own measurement period: ``interval_s`` may not be shorter (config check)
    period_s: ClassVar[float | None] = None
    #: the longest a read may take by the datasheet (first read after start included);
    #: the loop's read timeout covers it
    read_timeout_s: ClassVar[float] = 2.0

    def start(self) -> None:
        """Bring the part into measuring state (idempotent)."""

    def read(self) -> dict[str, float]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the bus or port (safe to call twice)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.model}>"


# -- Sensirion CRC-8 (datasheets: polynomial 0x31, init 0xFF, no reflection, no final XOR)
def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x31) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
        table.append(crc)
    return table


_CRC_TABLE = _crc_table()


def sensirion_crc(data: bytes | bytearray | list[int]) -> int:
    crc = 0xFF
    for b in data:
        crc = _CRC_TABLE[crc ^ b]
    return crc


def words_with_crc(words: list[int]) -> bytes:
    """Encode 16-bit words MSB first, each followed by its CRC (what the chip sends)."""
    out = bytearray()
    for w in words:
        pair = bytes(((w >> 8) & 0xFF, w & 0xFF))
        out += pair + bytes((sensirion_crc(pair),))
    return bytes(out)


def check_words(data: bytes, what: str) -> list[int]:
    """Decode ``MSB LSB CRC`` triples, checking every CRC."""
    if len(data) % 3:
        raise SensorChecksumError(f"{what}: {len(data)} bytes is not a whole number of words")
    words = []
    for i in range(0, len(data), 3):
        pair, crc = data[i:i + 2], data[i + 2]
        if sensirion_crc(pair) != crc:
            raise SensorChecksumError(f"{what}: CRC mismatch in word {i // 3} "
                                      f"({pair.hex()} has CRC {sensirion_crc(pair):#04x}, got {crc:#04x})")
        words.append(pair[0] << 8 | pair[1])
    return words


_ABSENT_ERRNOS = {errno.ENXIO, errno.EREMOTEIO, errno.ENODEV, errno.EIO}


class I2CDevice:
    """A part at one address on an smbus2-compatible bus (``i2c_rdwr`` with ``i2c_msg``)."""

    def __init__(self, bus: Any, address: int, model: str):
        self.bus = bus
        self.address = address
        self.model = model

    def _where(self) -> str:
        return f"{self.model} at {self.address:#04x}"

    def command(self, cmd: int, args: list[int] = (), width: int = 2) -> None:
        """Send a command (8 or 16 bits), optionally with 16-bit argument words + CRC."""
        data = cmd.to_bytes(width, "big") + words_with_crc(list(args))
        try:
            self.bus.i2c_rdwr(i2c_msg.write(self.address, data))
        except OSError as e:
            raise SensorAbsent(f"{self._where()} did not acknowledge command {cmd:#06x} "
                               f"({errno.errorcode.get(e.errno, e.errno)})") from None

    def read_words(self, count: int, what: str) -> list[int]:
        msg = i2c_msg.read(self.address, count * 3)
        try:
            self.bus.i2c_rdwr(msg)
        except OSError as e:
            if e.errno in (errno.EREMOTEIO, errno.ENXIO):
                raise SensorTimeout(f"{self._where()}: {what} not ready (read not acknowledged)") from None
            raise SensorAbsent(f"{self._where()}: read failed ({e})") from None
        return check_words(bytes(msg), f"{self._where()} {what}")

    def query(self, cmd: int, count: int, wait_s: float, what: str, width: int = 2) -> list[int]:
        self.command(cmd, width=width)
        time.sleep(wait_s)
        return self.read_words(count, what)


def ticks_to_celsius(raw: int) -> float:
    """Sensirion SHT3x/SHT4x/SCD4x: T = -45 + 175 * S / (2^16 - 1)."""
    return -45.0 + 175.0 * raw / 65535.0


def celsius_to_ticks(t: float) -> int:
    return max(0, min(65535, round((t + 45.0) * 65535.0 / 175.0)))
