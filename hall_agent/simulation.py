"""``--simulate``: the same agent against emulated parts (SPEC section 9).

Every configured sensor gets its byte-level emulator: I2C chips on an
emulated bus per bus number, serial parts behind ptys, DS18B20s as w1
folders. The real drivers read them. Control topics under the hall's base:

- ``sim/sensor/{sensor_id}``: ``{"co2_ppm": 1800}`` (values in the envelope's
  units) or ``{"fault": "absent"|"crc"|null}``;
- ``sim/input/{input_id}``: ``open``, ``closed``, ``pressed``, ``released``,
  ``motion``, ``still`` (drives the gpiozero mock pin to the level the
  configured contact would give);
- ``sim/printer/{printer_id}``: any of ``{"paper": "ok"|"near_end"|"end",
  "cover_open": bool, "online": bool, "responding": bool}``;
- ``sim/equipment/{equipment_id}``: ``{"reachable": bool}`` (equipment whose
  relay is off never answers). No probe leaves the machine.

Without control messages the hall lives a plausible day (``simday.py``); a
part that gets a ``sim/…`` message is left as the message set it.
``HALL_AGENT_SIM_DAY=0`` turns the day off (tests want fixed values);
``HALL_AGENT_SIM_FAST=1`` shortens the parts' own rhythms (SCD4x period,
SGP30 warm-up) for tests.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from .config import Settings
from .config.models import SensorConfig
from .devices.equipment import ProbeResult
from .emulators.bme280 import BME280Chip
from .emulators.escpos import EscPosPrinter
from .emulators.i2c import EmulatedI2CBus
from .emulators.pms import PMS5003Device
from .emulators.sensirion import SCD4xChip, SGP30Chip, SHT3xChip, SHT4xChip
from .emulators.w1 import DS18B20Files
from .emulators.winsen import MHZ19Device, ZE08Device
from .hardware import Hardware

log = logging.getLogger(__name__)


class Simulation(Hardware):
    def __init__(self, settings: Settings, state_dir: Path, clock=None):
        super().__init__(settings, state_dir, clock)
        self.fast = os.environ.get("HALL_AGENT_SIM_FAST") == "1"
        self.tmp = Path(tempfile.mkdtemp(prefix="hall-agent-sim-"))
        self.emulated_buses: dict[int, EmulatedI2CBus] = {}
        self.devices: dict[str, Any] = {}  # sensor id -> emulator
        for cfg in settings.sensors:
            self.devices[cfg.id] = self._emulator(cfg)
        for cfg in settings.printers:
            self.devices[cfg.id] = EscPosPrinter(name=cfg.id, link_dir=self.tmp / "tty")
        self.equipment_up = {cfg.id: True for cfg in settings.equipment}
        self.probe_urls = {cfg.probe: cfg.id for cfg in settings.equipment if cfg.probe}
        self._factory = None

    def _emulator(self, cfg: SensorConfig) -> Any:
        fast = self.fast
        if cfg.driver in ("sht3x", "sht4x", "scd4x", "sgp30", "bme280"):
            chip = {"sht3x": lambda: SHT3xChip(), "sht4x": lambda: SHT4xChip(),
                    "scd4x": lambda: SCD4xChip(period_s=0.5 if fast else 5.0, stop_s=0.02 if fast else 0.5),
                    "sgp30": lambda: SGP30Chip(warmup_s=0 if fast else 15.0),
                    "bme280": lambda: BME280Chip()}[cfg.driver]()
            bus = self.emulated_buses.setdefault(cfg.bus, EmulatedI2CBus(cfg.bus))
            return bus.attach(cfg.address, chip)
        link_dir = self.tmp / "tty"
        if cfg.driver == "mhz19":
            device = MHZ19Device(name=cfg.id, link_dir=link_dir)
            device.powered_at -= 3600  # the hall's module has been powered for long (re-plugging it preheats)
            return device
        if cfg.driver == "pms5003":
            return PMS5003Device(name=cfg.id, link_dir=link_dir, period_s=0.3 if fast else 0.8)
        if cfg.driver == "ze08":
            return ZE08Device(name=cfg.id, link_dir=link_dir, period_s=0.3 if fast else 1.0)
        return DS18B20Files(self.tmp / "w1", device=cfg.device)

    # -- where the drivers look ------------------------------------------------------
    def i2c_bus(self, number: int) -> Any:
        """The emulated bus behind the same per-bus lock as a real one (``LockedBus``)."""
        if number not in self._buses:
            from .hardware import LockedBus
            self._buses[number] = LockedBus(self.emulated_buses[number])
        return self._buses[number]

    def serial_port(self, part_id: str, port: str) -> str:
        return self.devices[part_id].port

    def w1_root(self, cfg: SensorConfig) -> Path:
        return self.tmp / "w1"

    def sensor_options(self, cfg: SensorConfig) -> dict[str, Any]:
        options = super().sensor_options(cfg)
        device = self.devices.get(cfg.id)
        if cfg.driver == "mhz19":  # the module's own power-up (its emulator's), not this machine's boot
            options["uptime"] = lambda d=device: time.monotonic() - d.powered_at
        if self.fast:  # the fast simulation compresses the parts' timings, warm-ups included
            if cfg.driver == "scd4x":
                options.update(stop_wait_s=0.05, poll_s=0.05)
            if cfg.driver == "sgp30":
                options["warmup_s"] = 1.0
            if cfg.driver == "mhz19":
                options["preheat_s"] = 1.0
            if cfg.driver == "pms5003":
                options["warmup_s"] = 1.0
        return options

    def pin_factory(self):
        """gpiozero's mock pins; every input's contact starts at rest (NO open, NC closed)."""
        if self._factory is None:
            from .emulators.gpio import contact_factory
            self._factory = contact_factory()
            for cfg in self.settings.inputs:
                self._factory.pin(cfg.pin).contact_closed = cfg.contact == "nc"
            for cfg in self.settings.equipment:  # the hall's equipment is powered when the agent starts
                if cfg.relay_pin is not None:
                    pin = self._factory.pin(cfg.relay_pin)
                    pin.drive_high() if cfg.relay_active_high else pin.drive_low()
        return self._factory

    def attach(self, devices) -> None:
        self._devices = devices

    def start_day(self, calendar, now) -> None:
        from .simday import SimulatedDay
        self.day = None
        if os.environ.get("HALL_AGENT_SIM_DAY", "1") != "0":
            self.day = SimulatedDay(self, calendar, now)
            self.day.step(now())
            self.day.start()

    def probe(self, url: str, timeout_s: float) -> ProbeResult:
        eid = self.probe_urls.get(url)
        devices = getattr(self, "_devices", None)
        powered = devices is None or devices.power(eid) != "off"
        if eid is not None and self.equipment_up.get(eid) and powered:
            return ProbeResult(True, 2.0, "connected (simulated)")
        return ProbeResult(False, None, "no answer (simulated)" if powered else "powered off (simulated)")

    # -- control --------------------------------------------------------------------
    def control(self, kind: str, part_id: str, payload: bytes, devices) -> str | None:
        """Apply a ``sim/{kind}/{id}`` message; returns an error text or None."""
        if getattr(self, "day", None) is not None:
            self.day.manual.add(part_id)
        if kind == "sensor":
            return self.control_sensor(part_id, payload)
        if kind == "input":
            return self.control_input(part_id, payload.decode(errors="replace").strip().strip('"'), devices)
        doc, problem = _json_object(payload)
        if problem:
            return problem
        if kind == "printer":
            printer = self.devices.get(part_id)
            if not isinstance(printer, EscPosPrinter):
                return f"no simulated printer {part_id!r}"
            try:
                printer.set(**doc)
            except (KeyError, ValueError) as e:
                return f"bad printer state: {e}"
            return None
        if kind == "equipment":
            if part_id not in self.equipment_up:
                return f"no simulated equipment {part_id!r}"
            if not isinstance(doc.get("reachable"), bool):
                return "want {\"reachable\": true|false}"
            self.equipment_up[part_id] = doc["reachable"]
            devices.equipment.probe_now(part_id)
            return None
        return f"unknown simulation kind {kind!r}"

    def control_input(self, input_id: str, word: str, devices) -> str | None:
        watcher = devices.inputs.get(input_id)
        if watcher is None:
            return f"no input {input_id!r}"
        active_words = {"open", "pressed", "motion"}
        if word not in active_words | {"closed", "released", "still"}:
            return f"{word!r}: use open, closed, pressed, released, motion or still"
        active = word in active_words
        watcher.device.pin.set_contact(active if watcher.cfg.contact == "no" else not active)
        return None

    def control_sensor(self, sensor_id: str, payload: bytes) -> str | None:
        """Apply a ``sim/sensor/{id}`` message; returns an error text or None."""
        device = self.devices.get(sensor_id)
        if device is None:
            return f"no simulated sensor {sensor_id!r}"
        doc, problem = _json_object(payload)
        if problem:
            return problem
        if "fault" in doc:
            self._set_fault(device, doc.pop("fault"))
        values = {k: v for k, v in doc.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        unknown = set(doc) - set(values) | (set(values) - set(device.values))
        for key in set(values) - set(device.values):
            values.pop(key)
        device.set(**values)
        return f"ignored {', '.join(sorted(unknown))}" if unknown else None

    @staticmethod
    def _set_fault(device: Any, fault: Any) -> None:
        if fault not in (None, "absent", "crc"):
            raise_fault = str(fault)
            log.warning("sim: unknown fault %r (use absent, crc or null)", raise_fault)
            return
        if hasattr(device, "unplug"):  # serial part
            if fault == "absent":
                device.unplug()
            else:
                device.replug()
                device.fault = "checksum" if fault == "crc" else None
        elif isinstance(device, DS18B20Files):
            device.fault = fault
            device.write()
        else:
            device.fault = fault

    def close(self) -> None:
        if getattr(self, "day", None) is not None:
            self.day.stop()
        for device in self.devices.values():
            if hasattr(device, "close"):
                device.close()
        super().close()


def _json_object(payload: bytes) -> tuple[dict, str | None]:
    """A control message's JSON object, or the reason it is not one."""
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return {}, "payload is not JSON"
    if not isinstance(doc, dict):
        return {}, "payload must be a JSON object"
    return doc, None
