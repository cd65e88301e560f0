"""The composition root: builds every part from the settings and runs them."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from . import __version__, health
from .commands import Dispatcher
from .config import Settings
from .envelope import Envelope, Events, Moment
from .alerts import Alerts
from .calendar import BusinessCalendar
from .devices.hall import HallDevices
from .hardware import Hardware
from .link import Incoming, Link
from .outbox import Dropped, Outbox
from .rules import RulesEngine, build as build_rules
from .sensors import SensorError
from .sensors.loop import SensorLoop

log = logging.getLogger(__name__)


def storage_dir(settings: Settings, simulate: bool) -> Path:
    """``storage.dir``; else systemd's ``$STATE_DIRECTORY``; else a per-user
    folder in simulation; else ``/var/lib/hall-agent``."""
    if settings.storage.dir is not None:
        return settings.storage.dir
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    if simulate:
        base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
        return base / "hall-agent" / settings.hall.id
    return Path("/var/lib/hall-agent")


class Agent:
    def __init__(self, settings: Settings, simulate: bool = False):
        self.settings = settings
        self.simulate = simulate
        self.started = time.monotonic()
        self.state_dir = storage_dir(settings, simulate)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.events = Events(settings.hall.id, settings.hall.timezone, settings.base_topic,
                             settings.mqtt.telemetry_qos)
        self.outbox = Outbox(self.state_dir / "outbox.sqlite3",
                             max_bytes=int(settings.storage.max_outbox_mb * 1024 * 1024),
                             on_overflow=self._overflow_event)
        self.link = Link(settings, self.outbox, self.events.now)
        self.dispatcher = Dispatcher()
        self.dispatcher.register("ping", lambda args: {"pong": True, "version": __version__})
        self.dispatcher.register("status", lambda args: self.status())
        self.link.subscribe("cmd", self._on_command)
        self.status_providers: dict[str, Callable[[], Any]] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        if simulate:
            from .simulation import Simulation
            self.hardware: Hardware = Simulation(settings, self.state_dir)
            for kind in ("sensor", "input", "printer", "equipment"):
                self.link.subscribe(f"sim/{kind}/+", self._on_sim)
        else:
            self.hardware = Hardware(settings, self.state_dir)
        self.sensors = SensorLoop(self.hardware.sensor_specs(), self._on_reading, self._on_sensor_fault,
                                  self._on_sensor_recover)
        self.devices = HallDevices(settings, self.events, self.emit, pin_factory=self.hardware.pin_factory(),
                                   printer_port=self.hardware.serial_port, probe_fn=self.hardware.probe)
        self.hardware.attach(self.devices)
        self.calendar = BusinessCalendar(settings.hours, settings.hall.timezone, settings.checks.opening_lead_min,
                                         settings.checks.closing_delay_min)
        self.engine = RulesEngine(build_rules(settings), self.calendar.is_open, settings.hall.timezone)
        self.alerts = Alerts(self.engine, self.events, self.emit, self.outbox, self.state_dir / "alerts.json",
                             self._now)
        self.devices.listeners.append(self._on_device)
        self.status_providers["alerts"] = self.alerts.active
        self.dispatcher.register("reset", self.devices.reset_command, allowed=lambda: settings.commands.allow_reset,
                                 refusal="reset is disabled on this hall ([commands] allow_reset = false)")
        self.dispatcher.register("power", self.devices.power_command, allowed=lambda: settings.commands.allow_power,
                                 refusal="power is disabled on this hall ([commands] allow_power = false)")
        self.status_providers["sensors"] = self._sensor_status
        self.status_providers["inputs"] = self.devices.input_states
        self.status_providers["printers"] = self.devices.printer_states
        self.status_providers["equipment"] = lambda: dict(self.devices.equipment_state)

    # -- sensors ------------------------------------------------------------------
    @property
    def sensor_health(self) -> dict[str, str]:
        return self.sensors.states()

    def _now(self) -> datetime:
        return datetime.now(self.events.tz)

    def _on_reading(self, sensor_id: str, model: str, values: dict[str, float]) -> None:
        self.emit(self.events.reading(sensor_id, model, values))
        self.alerts.feed(lambda now: self.engine.reading(sensor_id, values, now))

    def _on_sensor_fault(self, sensor_id: str, error: SensorError, failures: int) -> None:
        self.emit(self.events.agent("sensor-fault", {
            "sensor": sensor_id, "kind": error.kind, "reason": error.reason, "failures": failures,
        }, severity="warning", moment=Moment("system", 2), source=sensor_id))
        self.alerts.feed(lambda now: self.engine.sensor_fault(sensor_id, f"{error.kind}: {error.reason}", now))

    def _on_sensor_recover(self, sensor_id: str) -> None:
        self.emit(self.events.agent("sensor-recovered", {"sensor": sensor_id}, moment=Moment("system", 2),
                                    source=sensor_id))
        self.alerts.feed(lambda now: self.engine.sensor_ok(sensor_id, now))

    def _on_device(self, kind: str, source: str, data: dict) -> None:
        """Input, printer and equipment states, for the rules."""
        if kind in ("door", "panic", "motion", "reset"):
            held = next((c.held_open_s for c in self.settings.inputs if c.id == source), None)
            self.alerts.feed(lambda now: self.engine.input(kind, source, data["state"], now, held))
        elif kind == "printer":
            answering = data.get("answering", True)
            self.alerts.feed(lambda now: self.engine.printer(source, data, answering, now))
        elif kind == "equipment":
            required = next((c.required for c in self.settings.equipment if c.id == source), True)
            self.alerts.feed(lambda now: self.engine.equipment(source, data, now, required))

    def _restore_alerts(self) -> None:
        """Alerts active before a restart stay active (not raised again); a latched
        panic stays latched; alerts of parts no longer configured are cleared."""
        self.alerts.load()
        for rule, source in list(self.engine.active):
            if rule == "panic" and source in self.devices.inputs:
                watcher = self.devices.inputs[source]
                if watcher.latch is not None:
                    watcher.latch.alarm = True
        s = self.settings
        known = {x.id for x in (*s.sensors, *s.inputs, *s.printers, *s.equipment)} | {"opening", "closing"}
        self.alerts.feed(lambda now: self.engine.forget_sources(known, now))
        if self.engine.active:
            log.info("restored %d active alert(s): %s", len(self.engine.active),
                     ", ".join(f"{r}/{src}" for r, src in self.engine.active))

    def _sensor_status(self) -> dict[str, Any]:
        return {sid: {"state": r.state, "failures": r.failures,
                      "error": r.last_error.reason if r.last_error else None, "values": r.last_values}
                for sid, r in self.sensors.runners.items()}

    def _on_sim(self, msg: Incoming) -> None:
        kind, part_id = msg.topic.split("/")[-2:]
        problem = self.hardware.control(kind, part_id, msg.payload, self.devices)
        if problem:
            log.warning("sim/%s/%s: %s", kind, part_id, problem)

    # -- events -------------------------------------------------------------------
    def emit(self, env: Envelope) -> int:
        """Commit an envelope to the outbox and wake the link; returns its seq."""
        seq = self.outbox.enqueue(env)
        self.link.kick()
        return seq

    def _overflow_event(self, dropped: Dropped) -> Envelope:
        return self.events.agent("outbox-overflow", {
            "dropped": dropped.count, "first_seq": dropped.first_seq, "last_seq": dropped.last_seq,
            "ranges": [list(r) for r in dropped.ranges[:200]], "dropped_total": self.outbox.dropped_total,
        }, severity="warning", moment=Moment("system", 2), source="outbox")

    # -- commands -----------------------------------------------------------------
    def _on_command(self, msg: Incoming) -> None:
        outcome = self.dispatcher.handle(msg.payload)
        reply = json.dumps(outcome.reply, ensure_ascii=False, default=str).encode()
        self.link.publish_now(f"{self.settings.base_topic}/cmd/reply", reply)
        if msg.response_topic:
            self.link.publish_now(msg.response_topic, reply, correlation_data=msg.correlation_data)
        self.emit(self.events.command(outcome.audit, severity="info" if outcome.ok else "warning"))

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "version": __version__, "uptime_s": round(time.monotonic() - self.started, 1),
            "simulate": self.simulate, "connected": self.link.connected,
            "outbox": {"depth": self.outbox.depth, "bytes": self.outbox.bytes,
                       "dropped": self.outbox.dropped_total},
            "inputs": {}, "alerts": [],
        }
        for key, provider in self.status_providers.items():
            result[key] = provider()
        return result

    # -- running ------------------------------------------------------------------
    def start(self) -> None:
        self.link.start()
        self.emit(self.events.agent("started", {"version": __version__, "simulate": self.simulate,
                                                "outbox_depth": self.outbox.depth}))
        self._restore_alerts()
        self.devices.start()
        self.sensors.start()
        for name, target in (("health", self._health_loop), ("tick", self._tick_loop)):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def _tick_loop(self) -> None:
        """Timers of the rules (door held open, for_s, closing time) and saving active alerts."""
        while not self._stop.wait(1.0):
            try:
                self.alerts.feed(self.engine.tick)
                self.alerts.save()
            except Exception:
                log.exception("rules tick failed")

    def _health_loop(self) -> None:
        interval = self.settings.agent.health_interval_s
        while not self._stop.wait(interval):
            try:
                self.emit(self.events.health(health.collect(self.started, self.outbox, self.state_dir,
                                                            self.sensor_health)))
            except Exception:
                log.exception("health report failed")

    def request_stop(self, *_: Any) -> None:
        self._stop.set()

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; then stop cleanly. Returns the exit code."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        self.start()
        log.info("hall-agent %s running for hall %s (%s)%s", __version__, self.settings.hall.id,
                 self.settings.base_topic, " in simulation" if self.simulate else "")
        while not self._stop.wait(1.0):
            pass
        self.stop()
        return 0

    def stop(self) -> None:
        self._stop.set()
        try:
            self.emit(self.events.agent("stopping", {"reason": "shutdown"}))
        except Exception:
            log.exception("could not record the stop")
        self.sensors.stop()
        self.devices.stop()
        self.alerts.save(force=True)
        drained = self.link.stop(self.settings.mqtt.drain_s)
        if not drained:
            log.warning("stopped with %d messages still in the outbox; they are sent on the next start",
                        self.outbox.depth)
        self.outbox.close()
        self.hardware.close()
        log.info("hall-agent stopped")
