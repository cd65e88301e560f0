"""The opening and closing checks (SPEC section 5): one item per thing, each
``pass``/``warn``/``fail`` with a detail a person can act on.

Opening: switch on ``power = "auto"`` equipment, wait ``settle_s`` (only if
something was actually switched), then check every sensor (a fresh good
read, values plausible), every input (doors closed, panic loops normal),
every printer (answering, paper not out; near end warns), every equipment
probe. Closing: doors closed, panic normal, ``auto`` equipment switched off
and verified off where a probe says so. The overall result is the worst
item's.

With ``switch = False`` (a remote check where ``[commands] allow_power`` is
false) no relay is switched: equipment found off is reported (``warn``)
instead of switched on, and the report says so (``switched``, ``note``).
The settle time is measured by the injected sleep (the agent's: cut short
when it stops); durations never on the wall clock.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable

log = logging.getLogger(__name__)

ORDER = {"pass": 0, "warn": 1, "fail": 2}

#: physically plausible ranges per value key (outside: the sensor is wrong, not the room)
PLAUSIBLE = {
    "temperature_c": (-20, 60), "humidity_pct": (0, 100), "pressure_hpa": (700, 1100), "co2_ppm": (300, 10000),
    "tvoc_ppb": (0, 60000), "eco2_ppm": (400, 60000), "pm1_ugm3": (0, 1000), "pm25_ugm3": (0, 1000),
    "pm10_ugm3": (0, 1000), "hcho_mgm3": (0, 5),
}


@dataclass
class Item:
    id: str
    result: str
    detail: str

    def as_dict(self) -> dict:
        return {"id": self.id, "result": self.result, "detail": self.detail}


@dataclass
class Report:
    check: str
    scheduled_for: str | None
    started_at: str
    finished_at: str = ""
    items: list[Item] = field(default_factory=list)
    switched: bool = True        # False: relays were left as they were (allow_power = false)
    note: str | None = None

    @property
    def result(self) -> str:
        worst = max((ORDER[i.result] for i in self.items), default=0)
        return next(k for k, v in ORDER.items() if v == worst)

    @property
    def failed(self) -> list[str]:
        return [i.id for i in self.items if i.result == "fail"]

    def as_dict(self) -> dict:
        doc = {"check": self.check, "result": self.result, "scheduled_for": self.scheduled_for,
               "started_at": self.started_at, "finished_at": self.finished_at,
               "items": [i.as_dict() for i in self.items], "switched": self.switched}
        if self.note:
            doc["note"] = self.note
        return doc


def sensor_item(sensor_id: str, state: dict[str, Any], fresh_s: float, now_mono: float) -> Item:
    last_ok = state.get("last_ok_at")
    if last_ok is None or now_mono - last_ok > fresh_s:
        error = state.get("error") or "no reading yet"
        return Item(sensor_id, "fail", f"no good reading in the last {fresh_s:g} s: {error}")
    values = state.get("values") or {}
    odd = [f"{k} {v:g}" for k, v in values.items() if k in PLAUSIBLE and not PLAUSIBLE[k][0] <= v <= PLAUSIBLE[k][1]]
    if odd:
        return Item(sensor_id, "fail", f"implausible: {', '.join(odd)}")
    return Item(sensor_id, "pass", ", ".join(f"{k} {v:g}" for k, v in values.items()))


def input_item(input_id: str, kind: str, state: str) -> Item | None:
    if kind == "door":
        return Item(input_id, "pass" if state == "closed" else "fail", f"door {state}")
    if kind == "panic":
        return Item(input_id, "pass" if state == "normal" else "fail",
                    "panic loop normal" if state == "normal" else "panic alarm active (reset it)")
    return None


def printer_item(printer_id: str, state: dict | None) -> Item:
    if state is None:
        return Item(printer_id, "fail", "no status yet")
    if state.get("error") and not state.get("online"):
        return Item(printer_id, "fail", state["error"])
    if state.get("paper") == "end":
        return Item(printer_id, "fail", "out of paper")
    if state.get("cover_open"):
        return Item(printer_id, "fail", "cover open")
    if state.get("error"):
        return Item(printer_id, "fail", state["error"])
    if not state.get("online"):
        return Item(printer_id, "fail", "offline")
    if state.get("paper") == "near_end":
        return Item(printer_id, "warn", "paper near its end: change the roll")
    if state.get("paper") != "ok":  # never "paper ok" for what the printer did not report
        return Item(printer_id, "warn", "online; this printer does not report its paper roll (check it by eye)")
    return Item(printer_id, "pass", "online, paper ok")


def equipment_item(equipment_id: str, reachable: bool | None, latency_ms: float | None, detail: str | None,
                   required: bool, expect_on: bool) -> Item:
    if reachable is None:
        return Item(equipment_id, "pass" if not expect_on else "warn", "no probe configured")
    if expect_on:
        if reachable:
            return Item(equipment_id, "pass", f"answers ({latency_ms:g} ms)" if latency_ms is not None else "answers")
        return Item(equipment_id, "fail" if required else "warn", f"does not answer: {detail}")
    if reachable:
        return Item(equipment_id, "warn", "still answers after being switched off")
    return Item(equipment_id, "pass", "off")


class CheckAborted(Exception):
    """The check was cut short because the agent is stopping: it has no report."""


class CheckBusy(Exception):
    """Another check is running: one check at a time."""


class CheckRunner:
    """Runs a check against the live agent parts; the agent publishes the report."""

    def __init__(self, settings, devices, sensors, now: Callable[[], datetime], sleep=time.sleep, clock=None):
        self.settings = settings
        self.devices = devices
        self.sensors = sensors
        self.now = now
        self.sleep = sleep
        self.clock = clock

    def _settle(self, kind: str, seconds: float) -> None:
        """Wait ``settle_s`` for the switched equipment, saying so and counting down in the log
        (a person who asked for the check sees it is under way)."""
        if seconds <= 0:
            return
        log.info("%s check: giving the equipment %g s to start (checks.settle_s)", kind, seconds)
        left = seconds
        while left > 0:
            chunk = min(5.0, left)
            self.sleep(chunk)
            left -= chunk
            if left > 0:
                log.info("%s check: %g s to go", kind, left)

    def run(self, kind: str, scheduled_for: datetime | None = None, settle_s: float | None = None,
            switch: bool = True) -> Report:
        s = self.settings
        report = Report(kind, scheduled_for.isoformat(timespec="seconds") if scheduled_for else None,
                        self.now().isoformat(timespec="milliseconds"))
        auto = [e for e in s.equipment if e.power == "auto" and e.id in self.devices.relays]
        want = "on" if kind == "opening" else "off"
        settle = s.checks.settle_s if settle_s is None else settle_s
        switched = []
        if switch:
            for e in auto:
                if self.devices.power(e.id) != want:
                    switched.append(e.id)
                self.devices.set_power(e.id, kind == "opening", settle_s=settle)
        elif auto:
            report.switched = False
            report.note = (f"equipment not switched {want}: a remote check switches relays only where [commands] "
                           f"allow_power = true ({', '.join(e.id for e in auto)})")
        if switched:  # nothing switched: nothing to wait for (a duty manager gets the check in seconds)
            self._settle(kind, settle)
        if kind == "opening":
            for cfg in s.sensors:
                runner = self.sensors.runners.get(cfg.id)
                now_mono = runner.clock() if runner else time.monotonic()  # the sensor loop's own clock
                state = {"last_ok_at": runner.last_ok_at, "values": runner.last_values,
                         "error": runner.last_error.reason if runner.last_error else None} if runner else {}
                report.items.append(sensor_item(cfg.id, state, 2 * cfg.interval_s + 10, now_mono))
        for cfg in s.inputs:
            if cfg.id not in self.devices.inputs:
                report.items.append(Item(cfg.id, "fail", f"not watched: {self.devices.unavailable.get(cfg.id)}"))
                continue
            item = input_item(cfg.id, cfg.kind, self.devices.inputs[cfg.id].state)
            if item:
                report.items.append(item)
        if kind == "opening":
            for cfg in s.printers:
                monitor = self.devices.printers[cfg.id]
                state = monitor.check_now() if monitor else None
                report.items.append(printer_item(cfg.id, state.as_dict() if state else None))
        for e in s.equipment:
            expect_on = kind == "opening" or (e.power != "auto")
            if kind == "closing" and e.power != "auto":
                continue  # manual equipment (cameras) is not the closing check's business
            if not switch and e in auto and self.devices.power(e.id) != want:
                report.items.append(Item(e.id, "warn", f"switched {self.devices.power(e.id)}, not switched {want} "
                                                       "(remote check, [commands] allow_power = false)"))
                continue
            result = self.devices.equipment.probe_now(e.id) if e.probe else None
            report.items.append(equipment_item(e.id, result.reachable if result else None,
                                               result.latency_ms if result else None,
                                               result.detail if result else None, e.required, expect_on))
        report.finished_at = self.now().isoformat(timespec="milliseconds")
        log.info("%s check: %s (%d items, failed: %s)", kind, report.result, len(report.items),
                 ", ".join(report.failed) or "none")
        return report
