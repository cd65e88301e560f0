"""Sensirion SHT3x (SHT30/31/35): temperature and humidity over I2C.

Datasheet "SHT3x-DIS" (Sensirion, v7): single-shot measurement, high
repeatability, clock stretching disabled = 0x2400 (table 9); max measurement
duration 15.5 ms at high repeatability (table 4); a read before the end is
NACKed. Output ``T MSB, T LSB, CRC, RH MSB, RH LSB, CRC``; conversions
(section 4.13): T = -45 + 175 * S_T / (2^16 - 1), RH = 100 * S_RH / (2^16 - 1).
"""

from __future__ import annotations

from typing import Any

from .base import I2CDevice, Sensor, ticks_to_celsius

DEFAULT_ADDRESS = 0x44
CMD_MEASURE_HIGH_NO_STRETCH = 0x2400
CMD_SOFT_RESET = 0x30A2
MEASURE_WAIT_S = 0.016


class SHT3x(Sensor):
    model = "sht3x"

    def __init__(self, bus: Any, address: int = DEFAULT_ADDRESS):
        self.dev = I2CDevice(bus, address, self.model)

    def read(self) -> dict[str, float]:
        t, rh = self.dev.query(CMD_MEASURE_HIGH_NO_STRETCH, 2, MEASURE_WAIT_S, "measurement")
        return {"temperature_c": round(ticks_to_celsius(t), 2),
                "humidity_pct": round(100.0 * rh / 65535.0, 2)}
