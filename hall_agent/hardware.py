"""From settings to drivers: which bus, port or folder each configured part uses.

The real machine opens ``/dev/i2c-N`` with smbus2 on first use; simulation
(``simulation.py``) hands in emulated buses, ptys and w1 folders instead.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable

from .config import Settings
from .config.models import I2C_DRIVERS, SERIAL_DRIVERS, SensorConfig
from .sensors import DRIVERS
from .sensors.loop import SensorSpec


class LazySMBus:
    """``smbus2.SMBus(n)`` opened on first use and reopened after an error, so a
    missing ``/dev/i2c-N`` is a sensor fault, not a crash at start."""

    def __init__(self, bus: int):
        self.bus = bus
        self._smbus = None
        self._lock = threading.Lock()

    def _get(self):
        with self._lock:
            if self._smbus is None:
                from smbus2 import SMBus
                try:
                    self._smbus = SMBus(self.bus)  # OSError if the bus is missing: the driver reports it
                except PermissionError as e:  # not a part that does not answer: say what it is
                    from .sensors.base import SensorPermission
                    raise SensorPermission.opening(f"/dev/i2c-{self.bus}", e) from None
            return self._smbus

    def __getattr__(self, name: str) -> Any:
        return getattr(self._get(), name)

    def close(self) -> None:
        with self._lock:
            if self._smbus is not None:
                self._smbus.close()
                self._smbus = None


class Hardware:
    """Where the parts are. Subclassed by the simulation."""

    def __init__(self, settings: Settings, state_dir: Path):
        self.settings = settings
        self.state_dir = state_dir
        self._buses: dict[int, Any] = {}

    def i2c_bus(self, number: int) -> Any:
        if number not in self._buses:
            self._buses[number] = LazySMBus(number)
        return self._buses[number]

    def serial_port(self, sensor_or_printer_id: str, port: str) -> str:
        return port

    def w1_root(self, cfg: SensorConfig) -> Path:
        return cfg.w1_root

    def pin_factory(self):
        """gpiozero's default factory (lgpio on Raspberry Pi OS Bookworm)."""
        return None

    def attach(self, devices) -> None:
        """Called once the hall's devices exist (the simulation needs them)."""

    def start_day(self, calendar, now) -> None:
        """The simulation's plausible day; nothing on real hardware."""

    def probe(self, url: str, timeout_s: float):
        from .devices.equipment import probe
        return probe(url, timeout_s)

    def sensor_options(self, cfg: SensorConfig) -> dict[str, Any]:
        if cfg.driver in I2C_DRIVERS:
            options: dict[str, Any] = {"bus": self.i2c_bus(cfg.bus), "address": cfg.address}
            if cfg.driver == "scd4x":
                options.update(altitude_m=cfg.altitude_m, pressure_hpa=cfg.pressure_hpa)
            if cfg.driver == "sgp30":
                options["baseline_file"] = self.state_dir / f"sgp30-baseline-{cfg.id}.json"
            return options
        if cfg.driver in SERIAL_DRIVERS:
            return {"port": self.serial_port(cfg.id, cfg.port), "baudrate": cfg.baudrate}
        return {"device": cfg.device, "w1_root": self.w1_root(cfg)}

    def sensor_specs(self) -> list[SensorSpec]:
        specs = []
        for cfg in self.settings.sensors:
            cls = DRIVERS[cfg.driver]
            options = self.sensor_options(cfg)
            specs.append(SensorSpec(id=cfg.id, model=cfg.driver, interval_s=cfg.interval_s,
                                    fault_after=cfg.fault_after, sample_s=cls.sample_s,
                                    factory=_factory(cls, options)))
        return specs

    def close(self) -> None:
        for bus in self._buses.values():
            try:
                bus.close()
            except Exception:
                pass


def _factory(cls, options: dict[str, Any]) -> Callable[[], Any]:
    return lambda: cls(**options)
