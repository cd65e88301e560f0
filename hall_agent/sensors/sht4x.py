"""Sensirion SHT4x (SHT40/41/45): temperature and humidity over I2C.

Datasheet "SHT4x" (Sensirion, v6): 8-bit commands; measure T & RH with high
precision = 0xFD, max duration 8.3 ms (table 4), read 6 bytes as SHT3x.
Conversions (section 4.6): T = -45 + 175 * S_T / (2^16 - 1);
RH = -6 + 125 * S_RH / (2^16 - 1), which the datasheet says to crop to 0-100 %.
"""

from __future__ import annotations

from typing import Any

from .base import I2CDevice, Sensor, ticks_to_celsius

DEFAULT_ADDRESS = 0x44
CMD_MEASURE_HIGH = 0xFD
CMD_SOFT_RESET = 0x94
MEASURE_WAIT_S = 0.010


class SHT4x(Sensor):
    model = "sht4x"

    def __init__(self, bus: Any, address: int = DEFAULT_ADDRESS):
        self.dev = I2CDevice(bus, address, self.model)

    def read(self) -> dict[str, float]:
        t, rh = self.dev.query(CMD_MEASURE_HIGH, 2, MEASURE_WAIT_S, "measurement", width=1)
        humidity = min(100.0, max(0.0, -6.0 + 125.0 * rh / 65535.0))
        return {"temperature_c": round(ticks_to_celsius(t), 2), "humidity_pct": round(humidity, 2)}
