"""Sensor drivers: ``create(driver, **options)`` returns a started sensor whose
``read()`` returns values in the envelope's units or raises ``SensorError``.

I2C drivers take ``bus=`` (anything with smbus2's ``SMBus`` methods) and
``address=``; serial drivers take ``port=`` (a device path or a pyserial URL)
and ``baudrate=``; ``ds18b20`` takes ``device=`` and ``w1_root=``.
"""

from __future__ import annotations

from typing import Any

from .base import (Sensor, SensorAbsent, SensorChecksumError, SensorError, SensorTimeout, SensorWarmup,
                   sensirion_crc)
from .bme280 import BME280
from .ds18b20 import DS18B20
from .mhz19 import MHZ19
from .pms5003 import PMS5003
from .scd4x import SCD4x
from .sgp30 import SGP30
from .sht3x import SHT3x
from .sht4x import SHT4x
from .ze08 import ZE08

DRIVERS: dict[str, type[Sensor]] = {
    "sht3x": SHT3x, "sht4x": SHT4x, "bme280": BME280, "scd4x": SCD4x, "sgp30": SGP30,
    "mhz19": MHZ19, "pms5003": PMS5003, "ze08": ZE08, "ds18b20": DS18B20,
}

__all__ = ["DRIVERS", "Sensor", "SensorAbsent", "SensorChecksumError", "SensorError", "SensorTimeout", "SensorWarmup",
           "create", "sensirion_crc"]


def create(driver: str, **options: Any) -> Sensor:
    """Build the driver and start it. Unknown options are refused (TypeError)."""
    try:
        cls = DRIVERS[driver]
    except KeyError:
        raise ValueError(f"unknown sensor driver {driver!r}; known: {', '.join(sorted(DRIVERS))}") from None
    sensor = cls(**options)
    sensor.start()
    return sensor
