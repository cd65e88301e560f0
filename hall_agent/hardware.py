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


class LockedBus:
    """One lock per I2C bus around every transfer. Every sensor thread shares the
    bus's one handle, and smbus2's register calls are two ioctls on it (set the
    address, then transfer): two threads interleaving them read each other's
    chips (two BME280s at 0x76/0x77 publish each other's values). ``i2c_rdwr``
    is locked too, so each call is one transaction on the bus."""

    def __init__(self, bus: Any):
        self._bus = bus
        self.lock = threading.RLock()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._bus, name)
        if not callable(attr):
            return attr

        def locked(*args, **kwargs):
            with self.lock:
                return attr(*args, **kwargs)
        return locked


class LazySMBus(LockedBus):
    """``smbus2.SMBus(n)`` opened on first use and reopened after an error, so a
    missing ``/dev/i2c-N`` is a sensor fault, not a crash at start; every call
    under the bus's lock (``LockedBus``)."""

    def __init__(self, bus: int):
        self.bus = bus
        self._smbus = None
        self.lock = threading.RLock()

    def _get(self):
        if self._smbus is None:  # under self.lock (every caller holds it)
            from smbus2 import SMBus
            try:
                self._smbus = SMBus(self.bus)  # OSError if the bus is missing: the driver reports it
            except PermissionError as e:  # not a part that does not answer: say what it is
                from .sensors.base import SensorPermission
                raise SensorPermission.opening(f"/dev/i2c-{self.bus}", e) from None
        return self._smbus

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)

        def locked(*args, **kwargs):
            with self.lock:
                return getattr(self._get(), name)(*args, **kwargs)
        return locked

    def close(self) -> None:
        with self.lock:
            if self._smbus is not None:
                self._smbus.close()
                self._smbus = None


class Hardware:
    """Where the parts are. Subclassed by the simulation."""

    def __init__(self, settings: Settings, state_dir: Path, clock=None):
        from .clock import SystemClock
        self.settings = settings
        self.state_dir = state_dir
        self.clock = clock or SystemClock()
        #: is the hall open now? set by the agent once its calendar exists (PMS5003 sleep_when_closed)
        self.is_open: Callable[[], bool] | None = None
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
                options.update(altitude_m=cfg.altitude_m, pressure_hpa=cfg.pressure_hpa, asc=cfg.asc)
            if cfg.driver == "sgp30":
                options["baseline_file"] = self.state_dir / f"sgp30-baseline-{cfg.id}.json"
                options["clock"] = self.clock
            return options
        if cfg.driver in SERIAL_DRIVERS:
            options = {"port": self.serial_port(cfg.id, cfg.port), "baudrate": cfg.baudrate}
            if cfg.driver == "mhz19":
                options["abc"] = cfg.abc
            if cfg.driver == "pms5003" and cfg.sleep_when_closed:
                options["awake"] = self._hall_open
            return options
        return {"device": cfg.device, "w1_root": self.w1_root(cfg)}

    def _hall_open(self) -> bool:
        """Open now (or not known yet: then awake, the safe side for a reading)."""
        try:
            return True if self.is_open is None else bool(self.is_open())
        except Exception:
            return True

    def sensor_specs(self) -> list[SensorSpec]:
        specs = []
        for cfg in self.settings.sensors:
            cls = DRIVERS[cfg.driver]
            options = self.sensor_options(cfg)
            specs.append(SensorSpec(id=cfg.id, model=cfg.driver, interval_s=cfg.interval_s,
                                    fault_after=cfg.fault_after, sample_s=cls.sample_s,
                                    timeout_s=max(2.0, cls.read_timeout_s, min(cls.sample_s or cfg.interval_s, 15.0)),
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
