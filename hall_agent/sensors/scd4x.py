"""Sensirion SCD4x (SCD40/41): CO2, temperature and humidity over I2C.

Datasheet "SCD4x" (Sensirion, v1.4), section 3:
start_periodic_measurement 0x21B1 (a new reading every 5 s);
get_data_ready_status 0xE4B8 -> one word, data ready unless the 11 least
significant bits are 0 (3.8.2); read_measurement 0xEC05 -> CO2, T, RH words
(3.5.2): CO2 [ppm] = word, T = -45 + 175 * w / (2^16 - 1), RH = 100 * w / (2^16 - 1);
stop_periodic_measurement 0x3F86 then wait 500 ms before other commands;
set_sensor_altitude 0x2427 (m) and set_ambient_pressure 0xE000 (word = Pa / 100);
set_automatic_self_calibration_enabled 0x2416 (1 = on, the factory default).
Settings are accepted only while periodic measurement is stopped, so
``start()`` stops it first (the chip may still be measuring from before a restart).

A new sample comes only every 5 s. ``read()`` returns the newest sample when
one is buffered, else the last one while it is fresh enough (not older than
one period and a margin), and only then waits for the next (the first read
after ``start`` waits up to 5 s): a reader asked more often than every 5 s
never blocks past the loop's timeout, which covers this worst case
(``read_timeout_s``).
"""

from __future__ import annotations

import time
from typing import Any

from .base import I2CDevice, Sensor, SensorError, SensorTimeout, ticks_to_celsius

DEFAULT_ADDRESS = 0x62
CMD_START_PERIODIC = 0x21B1
CMD_STOP_PERIODIC = 0x3F86
CMD_DATA_READY = 0xE4B8
CMD_READ_MEASUREMENT = 0xEC05
CMD_SET_ALTITUDE = 0x2427
CMD_SET_AMBIENT_PRESSURE = 0xE000
CMD_SET_ASC = 0x2416
STOP_WAIT_S = 0.5
COMMAND_WAIT_S = 0.001
PERIOD_S = 5.0
FRESH_FOR_S = PERIOD_S + 1.0


class SCD4x(Sensor):
    model = "scd4x"
    period_s = PERIOD_S
    read_timeout_s = STOP_WAIT_S + PERIOD_S + 2.0   # start, then the first sample

    def __init__(self, bus: Any, address: int = DEFAULT_ADDRESS, altitude_m: int | None = None,
                 pressure_hpa: float | None = None, asc: bool | None = None, ready_timeout_s: float = 6.0,
                 poll_s: float = 0.1, stop_wait_s: float = STOP_WAIT_S, clock=time.monotonic):
        self.dev = I2CDevice(bus, address, self.model)
        self.altitude_m = altitude_m
        self.pressure_hpa = pressure_hpa
        self.asc = asc
        self.ready_timeout_s = ready_timeout_s
        self.poll_s = poll_s
        self.stop_wait_s = stop_wait_s
        self.clock = clock
        self.started = False
        self.last: tuple[dict[str, float], float] | None = None   # (values, monotonic time read)

    def start(self) -> None:
        self.dev.command(CMD_STOP_PERIODIC)
        time.sleep(self.stop_wait_s)
        if self.altitude_m is not None:
            self.dev.command(CMD_SET_ALTITUDE, [int(self.altitude_m)])
            time.sleep(COMMAND_WAIT_S)
        if self.asc is not None:   # volatile: set at every start, never persisted (EEPROM wear)
            self.dev.command(CMD_SET_ASC, [1 if self.asc else 0])
            time.sleep(COMMAND_WAIT_S)
        self.dev.command(CMD_START_PERIODIC)
        if self.pressure_hpa is not None:  # the one setting accepted while measuring
            self.dev.command(CMD_SET_AMBIENT_PRESSURE, [round(self.pressure_hpa)])
            time.sleep(COMMAND_WAIT_S)
        self.started = True
        self.last = None

    def data_ready(self) -> bool:
        (status,) = self.dev.query(CMD_DATA_READY, 1, COMMAND_WAIT_S, "data-ready status")
        return (status & 0x07FF) != 0

    def read(self) -> dict[str, float]:
        if not self.started:
            self.start()
        if not self.data_ready():
            if self.last is not None and self.clock() - self.last[1] <= FRESH_FOR_S:
                return dict(self.last[0])   # the newest sample there is: fresh enough
            deadline = self.clock() + self.ready_timeout_s
            while not self.data_ready():
                if self.clock() >= deadline:
                    raise SensorTimeout(f"scd4x: no new measurement within {self.ready_timeout_s:g} s")
                time.sleep(self.poll_s)
        co2, t, rh = self.dev.query(CMD_READ_MEASUREMENT, 3, COMMAND_WAIT_S, "measurement")
        if co2 == 0:
            raise SensorError("scd4x: invalid sample (CO2 0 ppm)")
        if co2 > 40000:
            raise SensorError(f"scd4x: {co2} ppm is outside the part's output range (0-40000 ppm)")
        values = {"co2_ppm": float(co2), "temperature_c": round(ticks_to_celsius(t), 2),
                  "humidity_pct": round(100.0 * rh / 65535.0, 2)}
        self.last = (values, self.clock())
        return dict(values)

    def close(self) -> None:
        if self.started:
            self.started = False
            try:
                self.dev.command(CMD_STOP_PERIODIC)
            except SensorError:
                pass
