"""The hall's devices together: inputs, relays, printers, equipment.

Turns what the devices report into ``state`` envelopes (retained on
``state/{id}``) and serves the ``reset`` and ``power`` commands. The agent
gives it ``emit`` (commit an envelope and hand it to MQTT) and the events
factory; it knows nothing of MQTT or disk.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from ..commands import CommandError
from ..config import Settings
from ..envelope import Envelope, Events, Moment
from .equipment import EquipmentMonitor, ProbeResult, probe
from .inputs import InputChange, InputWatcher
from .printer import PrinterMonitor, PrinterState
from .relays import Relay, RelayStore

log = logging.getLogger(__name__)

EMERGENCY = Moment("emergency", 1)
INTERNAL = Moment("internal", 2)
BUSINESS = Moment("business", 2)
SYSTEM = Moment("system", 2)


class HallDevices:
    def __init__(self, settings: Settings, events: Events, emit: Callable[[Envelope], Any], pin_factory=None,
                 printer_port: Callable[[str, str], str] = lambda pid, port: port,
                 probe_fn: Callable[[str, float], ProbeResult] = probe, state_dir=None):
        self.settings = settings
        self.events = events
        self.emit = emit
        self.pin_factory = pin_factory
        self.listeners: list[Callable[[str, str, dict], None]] = []  # (kind, id, data), e.g. the rules engine
        self._lock = threading.Lock()
        self.inputs: dict[str, InputWatcher] = {}
        self.relays: dict[str, Relay] = {}
        self.unavailable: dict[str, str] = {}  # part id -> why it could not be set up (no GPIO, pin busy)
        self.equipment_state: dict[str, dict] = {}
        self.relay_store = RelayStore(None if state_dir is None else state_dir / "relays.json")
        self._makers: dict[str, Callable[[], None]] = {}  # part id -> how to set it up (retried)
        for cfg in settings.inputs:
            self._setup(cfg.id, lambda cfg=cfg: self.inputs.__setitem__(
                cfg.id, InputWatcher(cfg, pin_factory, self._on_input)))
        for cfg in settings.equipment:
            if cfg.relay_pin is not None:
                self._setup(cfg.id, lambda cfg=cfg: self.relays.__setitem__(
                    cfg.id, Relay(cfg.id, cfg.relay_pin, pin_factory, cfg.relay_active_high, self.relay_store)))
        self.printers = {cfg.id: PrinterMonitor(cfg, printer_port(cfg.id, cfg.port), self._on_printer)
                         for cfg in settings.printers}
        self.equipment = EquipmentMonitor(settings.equipment, self._on_probe, probe_fn=probe_fn,
                                          interval_s=min((e.probe_interval_s for e in settings.equipment), default=60),
                                          timeout_s=max((e.probe_timeout_s for e in settings.equipment), default=3))

    def _setup(self, part_id: str, make: Callable[[], None]) -> None:
        """Set up one GPIO part; a missing GPIO chip or a busy pin disables that part, not the
        agent (``retry_unavailable`` tries it again)."""
        self._makers[part_id] = make
        try:
            make()
        except Exception as e:  # gpiozero: BadPinFactory, PinInvalidPin, GPIOPinInUse, …
            self.unavailable[part_id] = f"{type(e).__name__}: {e}"
            log.error("%s cannot be watched or switched: %s", part_id, self.unavailable[part_id])

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        """Publish every input's and relay's state as found, then start watching."""
        for part_id, why in self.unavailable.items():
            self.emit(self.events.agent("gpio-unavailable", {"part": part_id, "reason": why}, severity="critical",
                                        moment=Moment("system", 1), source=part_id))
            for listener in self.listeners:  # the rules hold the gpio-unavailable alert until it works
                listener("gpio", part_id, {"reason": why})
        for watcher in self.inputs.values():
            self._on_input(watcher.boot_state())
        for cfg in self.settings.equipment:
            self._publish_equipment(cfg.id, None)
        for monitor in self.printers.values():
            monitor.start()
        self.equipment.start()

    def retry_unavailable(self) -> list[str]:
        """Try again to claim the parts that could not be (a pin busy at start, no GPIO chip
        yet); returns the ids that work now. Their state is published as found."""
        fixed = []
        for part_id in list(self.unavailable):
            try:
                self._makers[part_id]()
            except Exception as e:
                self.unavailable[part_id] = f"{type(e).__name__}: {e}"
                continue
            del self.unavailable[part_id]
            fixed.append(part_id)
            log.warning("%s can be claimed now: watched/switched from now on", part_id)
            self.emit(self.events.agent("gpio-available", {"part": part_id}, moment=Moment("system", 1),
                                        source=part_id))
            for listener in self.listeners:
                listener("gpio", part_id, {"reason": None})
            if part_id in self.inputs:
                self._on_input(self.inputs[part_id].boot_state())
        return fixed

    def stop(self) -> None:
        for monitor in self.printers.values():
            monitor.stop()
        self.equipment.stop()
        for watcher in self.inputs.values():
            watcher.close()
        for relay in self.relays.values():
            relay.close()

    # -- inputs ----------------------------------------------------------------------------
    def _on_input(self, change: InputChange) -> None:
        data = {"state": change.state}
        if change.at_boot:
            data["at_boot"] = True
        # the alert the rules raise goes first, committed and written to the socket on its
        # own: its hand-over does not wait for the state's (nor for building it)
        for listener in self.listeners:
            listener(change.kind, change.id, data)
        if change.kind == "panic" and change.state == "alarm":
            env = self.events.state(change.id, data, severity="critical", moment=EMERGENCY)
        elif change.kind == "door" and change.state == "open":
            env = self.events.state(change.id, data, moment=INTERNAL)
        else:
            env = self.events.state(change.id, data)
        self.emit(env)
        if change.kind == "reset" and change.active and not change.at_boot:
            cfg = next(c for c in self.settings.inputs if c.id == change.id)
            for panic_id in cfg.resets:
                reason = self.inputs[panic_id].reset()
                if reason and reason != "not in alarm":
                    log.warning("reset key %s: %s not reset: %s", change.id, panic_id, reason)

    def reset_command(self, args: dict) -> dict:
        source = args.get("source")
        watcher = self.inputs.get(source) if isinstance(source, str) else None
        if watcher is None or watcher.kind != "panic":
            raise CommandError("bad-args", f"'source' must be a panic input id; panic inputs: "
                                           f"{', '.join(i for i, w in self.inputs.items() if w.kind == 'panic')}")
        reason = watcher.reset()
        if reason:
            raise CommandError("failed", f"{source}: {reason}")
        return {"source": source, "state": watcher.state}

    def input_states(self) -> dict[str, str]:
        states = {i: w.state for i, w in self.inputs.items()}
        states.update({i: "unavailable" for i in self.unavailable if any(c.id == i for c in self.settings.inputs)})
        return states

    # -- relays and equipment --------------------------------------------------------------
    def power_command(self, args: dict) -> dict:
        eid, on = args.get("equipment"), args.get("on")
        if not isinstance(on, bool):
            raise CommandError("bad-args", "'on' must be true or false")
        if eid not in self.relays:
            raise CommandError("bad-args", f"'equipment' must be equipment with a relay_pin; those are: "
                                           f"{', '.join(self.relays) or 'none'}")
        self.set_power(eid, on)
        return {"equipment": eid, "power": self.relays[eid].power}

    def set_power(self, equipment_id: str, on: bool, settle_s: float | None = None) -> None:
        """Switch a relay. Switched on, the equipment is ``reachable: null`` until its first
        probe after ``settle_s`` (its probe from before, e.g. last night's, says nothing now,
        and a device still booting must not raise ``equipment-unreachable``)."""
        was_on = self.power(equipment_id) == "on"
        self.relays[equipment_id].set(on)
        if on and not was_on:
            settle = self.settings.checks.settle_s if settle_s is None else settle_s
            self.equipment.hold(equipment_id, settle)
        self._publish_equipment(equipment_id, self.equipment.results.get(equipment_id))

    def power(self, equipment_id: str) -> str:
        relay = self.relays.get(equipment_id)
        return relay.power if relay else "unknown"

    def _on_probe(self, equipment_id: str, result: ProbeResult, changed: bool) -> None:
        if changed:
            self._publish_equipment(equipment_id, result)
        else:
            with self._lock:
                if equipment_id in self.equipment_state:
                    self.equipment_state[equipment_id]["latency_ms"] = result.latency_ms

    def _publish_equipment(self, equipment_id: str, result: ProbeResult | None) -> None:
        data = {"reachable": None if result is None else result.reachable, "power": self.power(equipment_id),
                "latency_ms": None if result is None else result.latency_ms,
                "detail": None if result is None else result.detail}
        with self._lock:
            self.equipment_state[equipment_id] = data
        severity = "warning" if result is not None and not result.reachable else "info"
        self.emit(self.events.state(equipment_id, data, severity=severity, moment=SYSTEM))
        for listener in self.listeners:
            listener("equipment", equipment_id, data)

    # -- printers ------------------------------------------------------------------------
    def _on_printer(self, printer_id: str, state: PrinterState) -> None:
        data = state.as_dict()
        bad = not state.online or state.paper == "end" or state.cover_open or state.error
        severity = "critical" if bad else "warning" if state.paper == "near_end" else "info"
        self.emit(self.events.state(printer_id, data, severity=severity, moment=BUSINESS))
        for listener in self.listeners:
            listener("printer", printer_id, {**data, "answering": state.answering})

    def printer_states(self) -> dict[str, dict | None]:
        return {pid: (m.state.as_dict() if m.state else None) for pid, m in self.printers.items()}
