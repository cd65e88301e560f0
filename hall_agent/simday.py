"""A plausible day for the simulated hall, when nobody drives it over ``sim/…``.

Occupancy follows the business hours with two peaks (mid-morning and
mid-afternoon, the hall's busy periods): temperature, humidity and CO2 rise
with it, formaldehyde and VOCs drift, particulates wander; side and back
doors open now and then during the day (and stay shut at night); the ticket
printer uses paper with every customer, so its roll runs near its end in the
afternoon and out if nobody changes it — a staff member does, a few minutes
after it runs out. A part that receives a ``sim/…`` message is left alone
from then on (what the message set stays set).
"""

from __future__ import annotations

import logging
import math
import random
import threading
from datetime import datetime
from typing import Callable

log = logging.getLogger(__name__)

ROLL_TICKETS = 600      # tickets on a roll
NEAR_END_AT = 0.85      # the near-end sensor trips at 85 % used


class SimulatedDay:
    def __init__(self, sim, calendar, now: Callable[[], datetime], step_s: float = 10.0, seed: int | None = None):
        self.sim = sim
        self.calendar = calendar
        self.now = now
        self.step_s = step_s
        self.rng = random.Random(seed)
        self.manual: set[str] = set()           # parts driven over sim/… : left alone
        self.tickets_used = 0.0
        self.paper_out_since: float | None = None
        self.door_open_until: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sim-day", daemon=True)

    def occupancy(self, at: datetime) -> float:
        """0 when closed; during hours two peaks, at 10:00 and 15:30, up to 1."""
        if not self.calendar.is_open(at):
            return 0.0
        h = at.hour + at.minute / 60.0
        peak = lambda centre, width: math.exp(-((h - centre) / width) ** 2)
        return min(1.0, 0.25 + 0.75 * max(peak(10.0, 1.2), peak(15.5, 1.3)))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def _run(self) -> None:
        while not self._stop.wait(self.step_s):
            try:
                self.step(self.now())
            except Exception:
                log.exception("simulated day step failed")

    def step(self, at: datetime) -> None:
        occ = self.occupancy(at)
        jitter = lambda scale: self.rng.gauss(0, scale)
        values = {
            "temperature_c": 22.0 + 2.5 * occ + jitter(0.1),
            "humidity_pct": 45.0 + 8.0 * occ + jitter(0.5),
            "pressure_hpa": 955.0 + jitter(0.2),   # Zigong is about 350 m above sea level
            "co2_ppm": 450.0 + 950.0 * occ + jitter(15),
            "tvoc_ppb": 60.0 + 120.0 * occ + jitter(5),
            "eco2_ppm": 420.0 + 700.0 * occ + jitter(10),
            "pm1_ugm3": 8.0 + 4.0 * occ + jitter(1),
            "pm25_ugm3": 18.0 + 10.0 * occ + jitter(1.5),
            "pm10_ugm3": 30.0 + 15.0 * occ + jitter(2),
            "hcho_mgm3": 0.03 + 0.015 * occ + jitter(0.002),
        }
        for part_id, device in self.sim.devices.items():
            if part_id in self.manual or not hasattr(device, "values"):
                continue
            mine = {k: max(0.0, v) for k, v in values.items() if k in device.values}
            if mine:
                device.set(**mine)
        self._printers(occ)
        self._doors(at, occ)

    def _printers(self, occ: float) -> None:
        from .emulators.escpos import EscPosPrinter
        for part_id, printer in self.sim.devices.items():
            if part_id in self.manual or not isinstance(printer, EscPosPrinter):
                continue
            self.tickets_used += occ * 2.0 * self.step_s / 60.0  # up to 2 customers a minute
            used = self.tickets_used / ROLL_TICKETS
            if used >= 1.0:
                printer.set(paper="end")
                self.paper_out_since = self.paper_out_since or 0.0
                self.paper_out_since += self.step_s
                if self.paper_out_since >= 300:  # someone changes the roll after five minutes
                    self.tickets_used, self.paper_out_since = 0.0, None
                    printer.set(paper="ok")
            else:
                printer.set(paper="near_end" if used >= NEAR_END_AT else "ok")

    def _doors(self, at: datetime, occ: float) -> None:
        devices = getattr(self.sim, "_devices", None)
        if devices is None:
            return
        t = at.timestamp()
        for input_id, watcher in devices.inputs.items():
            if watcher.kind != "door" or input_id in self.manual:
                continue
            until = self.door_open_until.get(input_id)
            if until is not None and t >= until:
                self.sim.control_input(input_id, "closed", devices)
                del self.door_open_until[input_id]
            elif until is None and occ > 0 and self.rng.random() < 0.004 * self.step_s / 10.0 * (1 + occ):
                self.door_open_until[input_id] = t + self.rng.uniform(10, 60)  # a delivery, a colleague
                self.sim.control_input(input_id, "open", devices)
