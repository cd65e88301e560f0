"""Sensirion SHT3x, SHT4x, SCD4x and SGP30 at the byte level.

Independent of the drivers (an emulator that shared the driver's helpers
would agree with a wrong driver): its own CRC-8 (computed bit by bit from
the datasheets' definition: polynomial 0x31, init 0xFF, no reflection, no
final XOR; check value CRC(0xBE 0xEF) = 0x92) and its own conversions.
"""

from __future__ import annotations

import time

from .i2c import EmulatedChip, nack


def crc8(pair: bytes) -> int:
    crc = 0xFF
    for byte in pair:
        for bit in range(7, -1, -1):
            feedback = ((crc >> 7) ^ (byte >> bit)) & 1
            crc = (crc << 1) & 0xFF
            if feedback:
                crc ^= 0x31
    return crc


def encode_words(words: list[int]) -> bytes:
    out = bytearray()
    for w in words:
        pair = bytes((w >> 8 & 0xFF, w & 0xFF))
        out += pair + bytes((crc8(pair),))
    return bytes(out)


def decode_args(data: bytes) -> list[int] | None:
    """Argument words sent to the chip; None if a CRC does not match (the chip NACKs)."""
    if len(data) % 3:
        return None
    words = []
    for i in range(0, len(data), 3):
        if crc8(data[i:i + 2]) != data[i + 2]:
            return None
        words.append(data[i] << 8 | data[i + 1])
    return words


def celsius_to_ticks(t: float) -> int:
    """The inverse of T = -45 + 175 * S / (2^16 - 1) (SHT3x, SHT4x, SCD4x datasheets)."""
    return max(0, min(65535, round((t + 45.0) / 175.0 * 65535.0)))


class SensirionChip(EmulatedChip):
    """Commands in, CRC-protected words out after the command's duration."""

    command_width = 2
    #: command -> (number of argument words, duration in seconds)
    commands: dict[int, tuple[int, float]] = {}

    def __init__(self, clock=time.monotonic):
        super().__init__(clock)
        self._pending: bytes | None = None
        self._ready_at = 0.0
        self.log: list[int] = []

    def on_write(self, data: bytes) -> None:
        w = self.command_width
        if len(data) < w:
            raise nack("short command")
        cmd = int.from_bytes(data[:w], "big")
        if cmd not in self.commands:
            raise nack(f"unknown command {cmd:#06x}")
        nargs, duration = self.commands[cmd]
        args = decode_args(data[w:]) if nargs else []
        if args is None:
            raise nack("argument CRC")
        if len(args) != nargs:
            raise nack("wrong argument count")
        self.log.append(cmd)
        words = self.execute(cmd, args)
        self._pending = None if words is None else encode_words(words)
        self._ready_at = self.clock() + duration

    def on_read(self, length: int) -> bytes:
        if self._pending is None or self.clock() < self._ready_at:
            raise nack("no data ready")
        data = bytearray(self._pending)
        self._pending = None
        if self.fault == "crc":
            data[2] ^= 0x5A  # a flipped CRC byte, as a disturbed bus would show
        return bytes(data[:length])

    def execute(self, cmd: int, args: list[int]) -> list[int] | None:
        raise NotImplementedError


class SHT3xChip(SensirionChip):
    """SHT3x-DIS: single shot high repeatability 0x2400, max 15.5 ms."""
    commands = {0x2400: (0, 0.0155), 0x30A2: (0, 0.0015), 0xF32D: (0, 0.0)}

    def __init__(self, temperature_c: float = 23.0, humidity_pct: float = 45.0, clock=time.monotonic):
        super().__init__(clock)
        self.values = {"temperature_c": temperature_c, "humidity_pct": humidity_pct}

    def execute(self, cmd, args):
        if cmd == 0x2400:
            rh = max(0, min(65535, round(self.values["humidity_pct"] * 65535 / 100.0)))
            return [celsius_to_ticks(self.values["temperature_c"]), rh]
        if cmd == 0xF32D:
            return [0x0000]
        return None


class SHT4xChip(SensirionChip):
    """SHT4x: 8-bit commands; measure high precision 0xFD, max 8.3 ms."""
    command_width = 1
    commands = {0xFD: (0, 0.0083), 0x94: (0, 0.001), 0x89: (0, 0.0)}

    def __init__(self, temperature_c: float = 23.0, humidity_pct: float = 45.0, clock=time.monotonic):
        super().__init__(clock)
        self.values = {"temperature_c": temperature_c, "humidity_pct": humidity_pct}

    def execute(self, cmd, args):
        if cmd == 0xFD:
            rh = max(0, min(65535, round((self.values["humidity_pct"] + 6.0) * 65535 / 125.0)))
            return [celsius_to_ticks(self.values["temperature_c"]), rh]
        if cmd == 0x89:
            return [0x1234, 0x5678]
        return None


class SCD4xChip(SensirionChip):
    """SCD4x in periodic mode: a measurement every ``period_s`` (5 s on the real part)."""
    commands = {0x21B1: (0, 0.0), 0x3F86: (0, 0.5), 0xE4B8: (0, 0.001), 0xEC05: (0, 0.001),
                0x2427: (1, 0.001), 0xE000: (1, 0.001), 0x241D: (1, 0.001), 0x3646: (0, 0.02),
                0x2416: (1, 0.001), 0x2313: (0, 0.001)}
    IDLE_ONLY = {0x2427, 0x241D, 0x3646, 0x2416, 0x2313}

    def __init__(self, co2_ppm: float = 600, temperature_c: float = 23.0, humidity_pct: float = 45.0,
                 period_s: float = 5.0, stop_s: float = 0.5, clock=time.monotonic):
        super().__init__(clock)
        self.values = {"co2_ppm": co2_ppm, "temperature_c": temperature_c, "humidity_pct": humidity_pct}
        self.period_s = period_s
        self.stop_s = stop_s
        self.periodic = False
        self.busy_until = 0.0
        self.next_at = 0.0
        self.buffer: list[int] | None = None
        self.altitude_m = 0
        self.pressure_hpa: int | None = None
        self.asc = True   # automatic self-calibration: on from the factory

    def _measure(self) -> list[int]:
        v = self.values
        return [max(0, min(65535, round(v["co2_ppm"]))), celsius_to_ticks(v["temperature_c"]),
                max(0, min(65535, round(v["humidity_pct"] * 65535 / 100.0)))]

    def _tick(self) -> None:
        now = self.clock()
        if self.periodic and now >= self.next_at:
            self.buffer = self._measure()
            self.next_at = now + self.period_s

    def on_write(self, data: bytes) -> None:
        if self.clock() < self.busy_until:
            raise nack("busy after stop_periodic_measurement")
        super().on_write(data)

    def execute(self, cmd, args):
        self._tick()
        if self.periodic and cmd in self.IDLE_ONLY:
            self._pending = None
            raise nack("command not allowed during periodic measurement")
        if cmd == 0x21B1:
            self.periodic = True
            self.next_at = self.clock() + self.period_s
        elif cmd == 0x3F86:
            self.periodic = False
            self.busy_until = self.clock() + self.stop_s
        elif cmd == 0xE4B8:
            return [0x8006 if self.buffer is not None else 0x8000]
        elif cmd == 0xEC05:
            if self.buffer is None:
                raise nack("no measurement buffered")
            words, self.buffer = self.buffer, None
            return words
        elif cmd == 0x2427:
            self.altitude_m = args[0]
        elif cmd == 0xE000:
            self.pressure_hpa = args[0]
        elif cmd == 0x2416:
            self.asc = bool(args[0])
        elif cmd == 0x2313:
            return [1 if self.asc else 0]
        return None


class SGP30Chip(SensirionChip):
    """SGP30: iaq_init, then measure_iaq; 400 ppm / 0 ppb for ``warmup_s`` after init."""
    commands = {0x2003: (0, 0.010), 0x2008: (0, 0.012), 0x2015: (0, 0.010), 0x201E: (2, 0.010),
                0x2061: (1, 0.010), 0x2032: (0, 0.220), 0x3682: (0, 0.0005)}

    def __init__(self, tvoc_ppb: float = 50, eco2_ppm: float = 450, warmup_s: float = 15.0, clock=time.monotonic):
        super().__init__(clock)
        self.values = {"tvoc_ppb": tvoc_ppb, "eco2_ppm": eco2_ppm}
        self.warmup_s = warmup_s
        self.init_at: float | None = None
        self.baseline = (0x8E68, 0x8F41)  # (eCO2, TVOC), as get_iaq_baseline returns them
        self.restored_baseline: tuple[int, int] | None = None
        self.absolute_humidity: int | None = None
        self.measure_times: list[float] = []   # when measure_iaq came (the datasheet wants 1 Hz)

    def execute(self, cmd, args):
        if cmd == 0x2003:
            self.init_at = self.clock()
            return None
        if cmd in (0x2008, 0x2015, 0x201E) and self.init_at is None:
            raise nack("iaq_init first")
        if cmd == 0x2008:
            self.measure_times.append(self.clock())
            if self.clock() - self.init_at < self.warmup_s:
                return [400, 0]
            return [max(0, min(65535, round(self.values["eco2_ppm"]))),
                    max(0, min(65535, round(self.values["tvoc_ppb"])))]
        if cmd == 0x2015:
            return list(self.baseline)
        if cmd == 0x201E:
            tvoc, eco2 = args  # set_iaq_baseline takes TVOC first
            self.baseline = (eco2, tvoc)
            self.restored_baseline = (eco2, tvoc)
            return None
        if cmd == 0x2061:
            self.absolute_humidity = args[0]
            return None
        if cmd == 0x2032:
            return [0xD400]
        if cmd == 0x3682:
            return [0x0000, 0x0048, 0xB4E1]
        return None
