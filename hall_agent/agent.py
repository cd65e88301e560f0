"""The composition root: builds every part from the settings and runs them."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable

from . import __version__, health
from .commands import Dispatcher
from .config import Settings
from .envelope import Envelope, Events, Moment, encode_json
from .fleet.logs import split_reply
from .alerts import Alerts
from .calendar import BusinessCalendar
from .checks import CheckAborted, CheckBusy, CheckRunner, Report
from .clock import Clock, SystemClock
from .commands import CommandError, parse as parse_command
from .devices.hall import HallDevices
from .hardware import Hardware
from .broker.reconcile import NOT_HELD, plan as reconcile_plan
from .broker.retained import RetainedStore
from .link import Incoming, Link
from .outbox import OutboxClosed, Dropped, Outbox, Raw
from .rules import AlertChange, RulesEngine, build as build_rules
from .rules.engine import CALENDAR_SOURCE, CLOCK_SOURCE
from .sensors import SensorError
from .sensors.loop import SensorLoop
from .systemd import Loop, ServiceStatus, Watchdog, notify as sd_notify

log = logging.getLogger(__name__)

GPIO_RETRY_S = 5  # inputs and relays that could not be claimed are tried again this often

#: the exit status of a restart the agent asks for (a configuration that needs one, a
#: self-revert): systemd starts it again (Restart=always)
EXIT_RESTART = 75


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
    def __init__(self, settings: Settings, simulate: bool = False, config_path: str | None = None,
                 clock: Clock | None = None):
        self.settings = settings
        self.config_path = config_path
        self.simulate = simulate
        self.clock = clock or self._system_clock(settings, simulate)
        self.started = self.clock.monotonic()
        self.state_dir = storage_dir(settings, simulate)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.events = Events(settings.hall.id, settings.hall.timezone, settings.base_topic,
                             settings.mqtt.telemetry_qos, clock=self.clock)
        self._ready = threading.Event()  # storage callbacks wait for the parts they use
        self.lock_file = None  # the state folder's lock (taken by the CLI before the outbox is opened)
        self.outbox = Outbox(self.state_dir / "outbox.sqlite3",
                             max_bytes=int(settings.storage.max_outbox_mb * 1024 * 1024),
                             on_overflow=self._overflow_event, on_storage=self._on_storage,
                             on_corrupt=self._on_corrupt)
        self.retained = RetainedStore(self.state_dir / "retained.sqlite3")
        self.link = Link(settings, self.outbox, self.events.now, self.retained)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.tick_heartbeat = time.monotonic()
        self.watchdog = None
        self.service_status = ServiceStatus(sd_notify)
        if simulate:
            from .simulation import Simulation
            self.hardware: Hardware = Simulation(settings, self.state_dir, clock=self.clock)
            for kind in ("sensor", "input", "printer", "equipment"):
                self.link.subscribe(f"sim/{kind}/+", self._on_sim)
        else:
            self.hardware = Hardware(settings, self.state_dir, clock=self.clock)
        self.sensors = SensorLoop(self.hardware.sensor_specs(), self._on_reading, self._on_sensor_fault,
                                  self._on_sensor_recover)
        self.devices = HallDevices(settings, self.events, self.emit, pin_factory=self.hardware.pin_factory(),
                                   printer_port=self.hardware.serial_port, probe_fn=self.hardware.probe,
                                   state_dir=self.state_dir)
        self.hardware.attach(self.devices)
        self.calendar = BusinessCalendar(settings.hours, settings.hall.timezone, settings.checks.opening_lead_min,
                                         settings.checks.closing_delay_min, cache_dir=self.state_dir)
        self.engine = RulesEngine(build_rules(settings), self.calendar.is_open, settings.hall.timezone,
                                  clock=self.clock)
        self.hardware.is_open = lambda: self.calendar.is_open(self._now())  # PMS5003 sleep_when_closed
        self.alerts = Alerts(self.engine, self.events, self.emit, self.outbox, self.state_dir / "alerts.json",
                             self._now)
        from .alarms.service import AlarmService
        self.alarms = AlarmService(settings, self.alerts, self.events, self.emit, self.state_dir / "alarms.json",
                                   self.clock, held=self._panics_held)
        self.devices.listeners.append(self._on_device)
        self.checks = CheckRunner(settings, self.devices, self.sensors, self._now, sleep=self._check_sleep,
                                  clock=self.clock)
        self._check_lock = threading.Lock()
        self._check_running: str | None = None
        self.slow_commands = {"check"}  # run in their own thread: a check takes settle_s
        from .scheduler import CheckScheduler
        self.scheduler = CheckScheduler(self.calendar, lambda run: self.run_check(run.kind, run.at),
                                        self.state_dir / "checks-done.json", settings.checks.misfire_grace_min,
                                        settings.checks.require_time_sync and not simulate, clock=self.clock)
        self.last_checks: dict[str, dict] = {}
        if settings.homeassistant.enabled:
            from .homeassistant import Discovery
            self.discovery = Discovery(settings, self.link)
        self.dispatcher = self._commands()
        self.link.subscribe("cmd", self._on_command)
        self.restart_reason: str | None = None
        self.link.keep_retained = self._keep_retained
        self.link.on_retained_alerts = self._reconcile_alerts
        self.link.on_condition = self._on_link_condition
        self.health_extras: list[Callable[[], dict]] = []  # more fields for each health report
        self.status_providers: dict[str, Callable[[], Any]] = {
            "sensors": self._sensor_status, "inputs": self.devices.input_states, "alerts": self.alarms.active,
            "alarms": self.alarms.status,
            "printers": self.devices.printer_states, "equipment": lambda: dict(self.devices.equipment_state),
            "checks": lambda: {k: v["result"] for k, v in self.last_checks.items()},
        }
        from .fleet.hook import attach as attach_fleet
        self.fleet = attach_fleet(self)  # config/desired -> config/reported (docs/fleet.md)

    def _commands(self) -> Dispatcher:
        s = self.settings
        d = Dispatcher()
        d.register("ping", lambda args: {"pong": True, "version": __version__})
        d.register("status", lambda args: self.status())
        d.register("check", self._check_command)
        d.register("reset", self.devices.reset_command, allowed=lambda: s.commands.allow_reset,
                   refusal="reset is disabled on this hall ([commands] allow_reset = false)")
        d.register("power", self.devices.power_command, allowed=lambda: s.commands.allow_power,
                   refusal="power is disabled on this hall ([commands] allow_power = false)")
        self.alarms.register(d)
        d.register("rebirth", self._rebirth_command)
        return d

    # -- the broker's retained truth (SPEC section 3) ------------------------------
    def _keep_retained(self, topic: str) -> bool:
        """A stored retained payload may be republished unless it is an alert the agent
        no longer holds (a ghost would come back)."""
        prefix = f"{self.settings.base_topic}/alert/"
        if not topic.startswith(prefix):
            return True
        rule, _, source = topic[len(prefix):].partition("/")
        with self.alerts.lock:
            return (rule, source) in self._held_alerts()

    def _held_alerts(self) -> set[tuple[str, str]]:
        """The alerts the agent holds: the rules' and those alarm handling keeps active (held by
        flapping, drill-due)."""
        return set(self.engine.active) | self.alarms.held_alerts()

    def _reconcile_alerts(self, seen: dict[str, bytes]) -> None:
        """What the broker showed on our ``alert/#`` right after connecting, against what
        the agent holds: clear the ghosts, republish what the broker lacks."""
        base = self.settings.base_topic
        with self.alerts.lock:
            held = self._held_alerts()
            stored = {t: r.payload for t, r in self.retained.items().items()}
            todo = reconcile_plan(base, seen, held, stored, self.link.pending_topics())
            for ghost in todo.clear:
                env = ghost.envelope or {}
                old = env.get("data") if isinstance(env.get("data"), dict) else {}
                moment = env.get("moment") if isinstance(env.get("moment"), dict) else {}
                fixed = self.engine.rules.fixed.get(ghost.rule)
                category = moment.get("category") or (fixed.category if fixed else "system")
                priority = moment.get("priority") or (fixed.priority if fixed else 2)
                data = {"state": "cleared", "rule": ghost.rule, "message": NOT_HELD, "reason": NOT_HELD,
                        "value": old.get("value"), "threshold": old.get("threshold"),
                        "raised_at": old.get("raised_at") or env.get("ts") or self.events.now(),
                        "cleared_at": self.events.now(),
                        "cleared_id": env.get("id"), "cleared_seq": env.get("seq")}
                self.emit(self.events.alert(ghost.rule, ghost.source, data, "info",
                                            Moment(category, int(priority)), retain=False))
                self.emit(Raw(ghost.topic, b"", qos=1, retain=True))
                log.warning("alert %s/%s shown by the broker but not held by the agent: cleared (%s)",
                            ghost.rule, ghost.source, NOT_HELD)
            for topic in todo.republish:
                item = self.retained.get(topic)
                if item is not None:
                    self.link.publish_now(topic, item.payload, item.qos, retain=True)
            for key in todo.publish:
                handled = self.alarms.retained_alert(key)  # with its handling
                alert = self.engine.active.get(key)
                if handled is not None:
                    self.alerts.publish(handled)
                elif alert is not None:
                    self.alerts.publish(AlertChange(alert, True))
        if todo.republish or todo.publish:
            log.info("the broker lacked %d active alert(s): published again", len(todo.republish) + len(todo.publish))

    def _on_link_condition(self, rule: str, active: bool, message: str) -> None:
        """``publish-refused`` / ``subscribe-refused`` held while the broker refuses."""
        self.alerts.feed(lambda now: self.engine.condition(rule, "mqtt", active, message, now))

    def _rebirth_command(self, args: dict) -> dict:
        if not self.link.connected:
            raise CommandError("failed", "not connected to the broker")
        n = self.link.rebirth()
        if getattr(self, "discovery", None) is not None:
            self.discovery.send()
        return {"republished": n, "reconciling": "alert/#"}

    # -- sensors ------------------------------------------------------------------
    @property
    def sensor_health(self) -> dict[str, str]:
        return self.sensors.states()

    @staticmethod
    def _system_clock(settings: Settings, simulate: bool) -> Clock:
        """The machine's clock. Its sync is asked of the system (``scheduler.TimeSync``)
        unless ``[checks] require_time_sync = false`` or in simulation: then the clock
        is trusted as it is (a hall with a real-time clock and no NTP)."""
        if simulate or not settings.checks.require_time_sync:
            return SystemClock()
        from .scheduler import TimeSync
        return SystemClock(TimeSync().synchronised)

    def _now(self) -> datetime:
        return self.clock.now(self.events.tz)

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
        if kind == "gpio":
            watcher = self.devices.inputs.get(source)
            if data["reason"] is None and ("panic", source) in self.engine.active and watcher is not None \
                    and watcher.latch is not None:
                watcher.latch.alarm = True  # claimed only now: the panic restored from before stays latched
            self.alerts.feed(lambda now: self.engine.gpio(source, data["reason"], now))
        elif kind in ("door", "panic", "motion", "reset"):
            held = next((c.held_open_s for c in self.settings.inputs if c.id == source), None)
            self.alerts.feed(lambda now: self.engine.input(kind, source, data["state"], now, held))
        elif kind == "printer":
            answering = data.get("answering", True)
            self.alerts.feed(lambda now: self.engine.printer(source, data, answering, now))
        elif kind == "equipment":
            required = next((c.required for c in self.settings.equipment if c.id == source), True)
            self.alerts.feed(lambda now: self.engine.equipment(source, data, now, required))

    def _panics_held(self) -> set[str]:
        """Panic buttons pressed (or loops open) right now: a drill's report tells them apart."""
        return {i for i, w in self.devices.inputs.items() if w.latch is not None and w.latch.pressed}

    def _restore_alerts(self) -> None:
        """Alerts active before a restart stay active (not raised again); a latched
        panic stays latched; alerts of parts no longer configured are cleared."""
        self.alarms.load()
        self.alerts.load()
        for rule, source in list(self.engine.active):
            if rule == "panic" and source in self.devices.inputs:
                watcher = self.devices.inputs[source]
                if watcher.latch is not None:
                    watcher.latch.alarm = True
        s = self.settings
        known = {x.id for x in (*s.sensors, *s.inputs, *s.printers, *s.equipment)} | {"opening", "closing", "outbox", "mqtt"}
        known |= {CLOCK_SOURCE, CALENDAR_SOURCE}  # the agent's own alerts (clock-unsynced, calendar-unconfirmed)
        known |= {"mqtt.cert", "mqtt.ca"}  # certificate-expiring (fleet/health.py)
        self.alarms.reconcile(self.engine.active, known)
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
    def emit(self, env: Envelope | Raw, state: dict[str, str | None] | None = None) -> int | None:
        """Commit an envelope (or a raw message) to the outbox, with ``state`` in the
        same transaction, and hand it to MQTT at once, from the calling thread (an
        alarm does not wait for another thread); returns its seq (None for a raw
        message). A disk that fails does not stop it: the outbox holds the rows in
        memory and they go out all the same (``storage-failed``)."""
        (seq,) = self.outbox.enqueue_many([env], defer_sync=True, state=state)
        self.link.kick()
        self.outbox.nudge()  # the fsync after the hand-over, not between commit and hand-over
        return seq

    def _overflow_event(self, dropped: Dropped) -> Envelope:
        return self.events.agent("outbox-overflow", {
            "dropped": dropped.count, "first_seq": dropped.first_seq, "last_seq": dropped.last_seq,
            "ranges": [list(r) for r in dropped.ranges], "part": dropped.part, "of": dropped.parts,
            "dropped_total": self.outbox.dropped_total,
        }, severity="warning", moment=Moment("system", 2), source="outbox")

    def _on_storage(self, failure: str | None) -> None:
        """From the outbox's syncer: the disk stopped (or started again) taking writes."""
        if self._ready.wait(10):  # else start() reads the outbox's state itself
            self.alerts.feed(lambda now: self.engine.storage(failure, now))

    def _on_corrupt(self, moved_to: Path) -> None:
        """From the outbox's syncer: a corrupt database was set aside after open."""
        self._ready.wait(10)
        self.emit(self.events.agent("outbox-corrupt", {
            "moved_to": str(moved_to), "detail": "the outbox was found corrupt while running; a new one holds "
            "every envelope that could still be read or was in memory; seq continues"},
            severity="critical", moment=Moment("system", 1), source="outbox"))
        self.alerts.republish()  # their retained topics and their state, into the new outbox

    # -- checks -------------------------------------------------------------------
    def _check_sleep(self, seconds: float) -> None:
        """A check's settle time, cut short when the agent stops."""
        if self._stop.wait(seconds):
            raise CheckAborted("the agent is stopping")

    def run_check(self, kind: str, scheduled_for: datetime | None = None, publish: bool = True,
                  settle_s: float | None = None, switch: bool = True, wait: bool = True) -> Report:
        """One check at a time: a scheduled check (``wait``) waits for a running one; a
        requested one (``wait=False``) gets :class:`CheckBusy` at once."""
        if not self._check_lock.acquire(blocking=wait):
            raise CheckBusy(f"the {self._check_running} check is running: one check at a time")
        try:
            self._check_running = kind
            return self._run_check(kind, scheduled_for, publish, settle_s, switch)
        finally:
            self._check_running = None
            self._check_lock.release()

    def _run_check(self, kind: str, scheduled_for: datetime | None, publish: bool, settle_s: float | None,
                   switch: bool) -> Report:
        report = self.checks.run(kind, scheduled_for, settle_s, switch=switch)
        if self._stop.is_set():  # its parts were being stopped under it: no report to trust
            raise CheckAborted("the agent is stopping")
        data = report.as_dict()
        self.last_checks[kind] = data
        if publish:
            result = report.result
            severity = {"pass": "info", "warn": "warning", "fail": "warning"}[result]
            self.emit(self.events.check(kind, data, severity, Moment("internal", 1 if result == "fail" else 2)))
            self.alerts.feed(lambda now: self.engine.check(kind, result, report.failed, now))
        return report

    def _check_command(self, args: dict) -> dict:
        kind = args.get("kind")
        if kind not in ("opening", "closing"):
            raise CommandError("bad-args", "'kind' must be \"opening\" or \"closing\"")
        try:  # a remote check switches relays only where [commands] allow_power = true
            return self.run_check(kind, switch=self.settings.commands.allow_power, wait=False).as_dict()
        except CheckBusy as e:
            raise CommandError("busy", str(e)) from None
        except CheckAborted:
            raise CommandError("failed", "the agent is stopping: the check was cut short") from None

    # -- commands -----------------------------------------------------------------
    def _on_command(self, msg: Incoming) -> None:
        try:
            slow = parse_command(msg.payload).command in self.slow_commands
        except CommandError:
            slow = False
        if slow:
            threading.Thread(target=self._answer_command, args=(msg,), name="command", daemon=True).start()
        else:
            self._answer_command(msg)

    def _answer_command(self, msg: Incoming) -> None:
        outcome = self.dispatcher.handle(msg.payload)
        # strict JSON (no NaN, no lone surrogate); a long answer (logs) in chunks of at most 64 KiB
        for reply in split_reply(outcome.reply, encode=encode_json):
            self.link.publish_now(f"{self.settings.base_topic}/cmd/reply", reply)
            if msg.response_topic:
                self.link.publish_now(msg.response_topic, reply, correlation_data=msg.correlation_data)
        try:
            self.emit(self.events.command(outcome.audit, severity="info" if outcome.ok else "warning"))
        except OutboxClosed:  # a slow command (check) that ended while the agent stopped
            log.warning("command %s answered while stopping: its audit event was not recorded",
                        outcome.audit.get("command"))

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "version": __version__, "uptime_s": round(self.clock.monotonic() - self.started, 1),
            "clock_synced": self.clock.synced(), "calendar_confirmed_until": self.calendar_confirmed_until(),
            "simulate": self.simulate, "connected": self.link.connected,
            "outbox": {"depth": self.outbox.depth, "bytes": self.outbox.bytes,
                       "dropped": self.outbox.dropped_total},
            "storage": self.outbox.status(),
            "inputs": {}, "alerts": [],
        }
        for key, provider in self.status_providers.items():
            result[key] = provider()
        return result

    # -- running ------------------------------------------------------------------
    def start(self) -> None:
        if self.outbox.skipped is not None:  # first: its seq follows the gap it explains
            first, last = self.outbox.skipped
            self.emit(self.events.agent("seq-skipped", {
                "first_seq": first, "last_seq": last, "count": last - first + 1,
                "reason": "the last stop was not clean: these seqs were reserved and may have been given to "
                          "envelopes that never reached the disk; none of them will be used again"},
                severity="warning", moment=Moment("system", 2), source="outbox"))
        self.fleet.boot()
        self.emit(self.events.agent("started", {"version": __version__, "simulate": self.simulate,
                                                "outbox_depth": self.outbox.depth}))
        if self.outbox.set_aside is not None:
            self.emit(self.events.agent("outbox-corrupt", {"moved_to": str(self.outbox.set_aside),
                      "detail": "the outbox file was unreadable; envelopes in it were not sent; seq continues"},
                      severity="critical", moment=Moment("system", 1), source="outbox"))
        self._restore_alerts()
        for problem in self.alerts.problems:
            self.emit(self.events.agent("state-damaged", {"detail": problem}, severity="warning",
                                        moment=Moment("system", 2)))
        self.alerts.feed(lambda now: self.engine.storage(self.outbox.failed, now))
        self._ready.set()
        # the link starts once the alerts are known: its first connect republishes and
        # reconciles them (an alert not yet restored would look like a ghost)
        self.link.start()
        self.fleet.start()
        self.hardware.start_day(self.calendar, self._now)
        self.devices.start()
        for rule, source in list(self.engine.active):  # held from before the restart, claimed now
            if rule == "gpio-unavailable" and source not in self.devices.unavailable:
                self.alerts.feed(lambda now, source=source: self.engine.gpio(source, None, now))
        self.sensors.start()
        if os.environ.get("HALL_AGENT_SCHEDULE", "1") == "0":  # tests: not the time of day they run at
            log.info("HALL_AGENT_SCHEDULE=0: no check is scheduled by the calendar")
        else:
            self.scheduler.start()
        for name, target in (("health", self._health_loop), ("tick", self._tick_loop)):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def _tick_loop(self) -> None:
        """Timers of the rules (door held open, closing time, clock sync), the calendar's
        confirmation (once a minute), and claiming GPIO parts that were unavailable."""
        calendar_at = None
        turns = 0
        while not self._stop.wait(1.0):
            self.tick_heartbeat = time.monotonic()
            turns += 1
            try:
                self.alerts.feed(self.engine.tick)
                if calendar_at is None or self.clock.monotonic() - calendar_at >= 60:
                    calendar_at = self.clock.monotonic()
                    self.calendar_tick()
                self.alarms.tick()
                if self.devices.unavailable and turns % GPIO_RETRY_S == 0:
                    self.devices.retry_unavailable()
            except Exception:
                log.exception("rules tick failed")

    def calendar_tick(self) -> None:
        """``calendar-unconfirmed`` from 30 days before the first date whose official holiday
        schedule neither the package nor the config knows. Judged on a synchronised clock
        only (an unsynchronised one may be a year off)."""
        if not self.clock.synced():
            return
        today = self._now().date()
        first = self.calendar.unconfirmed_from(today)
        self.alerts.feed(lambda now: self.engine.calendar_state(first, today, now))

    def calendar_confirmed_until(self) -> str | None:
        until = self.calendar.confirmed_until(self._now().date())
        return until.isoformat() if until else None

    def _health_loop(self) -> None:
        interval = self.settings.agent.health_interval_s
        while not self._stop.wait(interval):
            try:
                data = health.collect(self.started, self.outbox, self.state_dir, self.sensor_health,
                                      now_mono=self.clock.monotonic())
                # the staff console shows the name and calls a hall silent after 3 missed intervals
                data.update(name=self.settings.hall.name, interval_s=interval)
                data["clock_synced"] = self.clock.synced()
                data["calendar_confirmed_until"] = self.calendar_confirmed_until()
                data["mqtt"] = self.link.health()
                for extra in self.health_extras:
                    data.update(extra())
                self.emit(self.events.health(data))
            except Exception:
                log.exception("health report failed")

    def _hold_lock(self) -> None:
        """The state folder's lock: tells ``hall-agent check`` an agent runs here."""
        import fcntl
        self.lock_file = open(self.state_dir / "agent.lock", "a")
        try:
            fcntl.flock(self.lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.error("another hall-agent already runs with the state folder %s", self.state_dir)
            raise SystemExit(2)

    def reload(self) -> None:
        """SIGHUP: re-read the file; apply calendar changes (hours, checks) at once.
        Anything else needs a restart, which the log says."""
        from .config import ConfigError, load
        try:
            new = load(self.config_path)
        except ConfigError as e:
            log.error("reload refused, keeping the running configuration: %s", "; ".join(e.problems))
            self.service_status.note("reload", f"reload refused ({len(e.problems)} problem(s), see the journal),"
                                               " running with the previous configuration")
            return
        old = self.settings
        if new.hall.timezone != old.hall.timezone:
            log.warning("reload: hall.timezone changed (%s -> %s): takes effect after a restart "
                        "(envelopes, rules and the schedule keep %s until then)", old.hall.timezone,
                        new.hall.timezone, old.hall.timezone)
        if new.hours != old.hours or new.checks != old.checks:
            self.apply_calendar(new)
        if new.checks.require_time_sync != old.checks.require_time_sync:
            log.warning("reload: checks.require_time_sync takes effect after a restart")
        self.service_status.note("reload", "configuration reloaded")
        others = [k for k in type(new).model_fields if k not in ("hours", "checks")
                  and getattr(new, k) != getattr(old, k)]
        if others:
            log.warning("reload: changes to %s take effect after a restart", ", ".join(others))

    def apply_calendar(self, new: Settings) -> None:
        """New business hours or checks: the calendar, the rules' idea of "open"
        and the scheduled checks change at once."""
        tz = self.settings.hall.timezone  # a time zone change needs a restart (everything is in it)
        self.settings = self.settings.model_copy(update={"hours": new.hours, "checks": new.checks})
        self.checks.settings = self.settings  # settle_s and the rest of [checks] at the next check
        self.devices.settings = self.settings  # settle_s of equipment switched on by the power command
        self.calendar = BusinessCalendar(new.hours, tz, new.checks.opening_lead_min,
                                         new.checks.closing_delay_min, cache_dir=self.state_dir)
        self.engine.is_open = self.calendar.is_open
        self.scheduler.grace = timedelta(minutes=new.checks.misfire_grace_min)
        self.scheduler.rebuild(self.calendar)
        self.calendar_tick()  # dates added to [hours] may confirm the coming year
        log.info("business hours and checks rescheduled")

    def request_stop(self, *_: Any) -> None:
        self._stop.set()

    def request_restart(self, reason: str) -> None:
        """A clean stop whose exit status (EXIT_RESTART) asks systemd to start the agent again."""
        log.warning("restart requested: %s", reason)
        self.restart_reason = reason
        self._stop.set()

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; then stop cleanly. Returns the exit code."""
        if self.lock_file is None:
            self._hold_lock()
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=self.reload, daemon=True).start())
        self.start()
        log.info("hall-agent %s running for hall %s (%s)%s", __version__, self.settings.hall.id,
                 self.settings.base_topic, " in simulation" if self.simulate else "")
        self.service_status.set_state(f"running for hall {self.settings.hall.id}", announce=False)
        self.watchdog = Watchdog.from_environment(self.loops(), self.service_status)
        if self.watchdog is not None:
            self.watchdog.start()
        sd_notify(f"READY=1\n{self.service_status.message()}")
        while not self._stop.wait(1.0):
            pass
        self.stop()
        return EXIT_RESTART if self.restart_reason else 0

    def loops(self) -> list[Loop]:
        """The loops whose progress feeds the systemd watchdog."""
        loops = [Loop("mqtt-net", lambda: self.link.heartbeat, 50),
                 Loop("mqtt-pump", lambda: self.link.pump_heartbeat, 30),
                 Loop("rules-tick", lambda: self.tick_heartbeat, 30),
                 Loop("outbox-sync", lambda: self.outbox.heartbeat, 30)]
        for sid, runner in self.sensors.runners.items():
            loops.append(Loop(f"sensor {sid}", lambda r=runner: r.heartbeat,
                              runner.spec.period + runner.spec.read_timeout + 20))
        return loops

    def stop(self) -> None:
        sd_notify("STOPPING=1")
        if self.watchdog is not None:
            self.watchdog.stop()
        self._stop.set()
        self._ready.set()
        # every step runs whatever the one before did (a failing disk, a stuck part): the stop
        # goes on to "offline", the drain and exit 0
        self._step("record the stop", lambda: self.emit(self.events.agent("stopping", {"reason": "shutdown"})))
        self._step("stop the fleet", self.fleet.stop)
        self._step("stop the scheduler", self.scheduler.stop)
        self._step("stop the sensors", self.sensors.stop)
        self._step("stop the devices", self.devices.stop)
        self._step("save the alarm handling", self.alarms.save)
        drained = self._step("stop the MQTT link", lambda: self.link.stop(self.settings.mqtt.drain_s))
        if drained is False:
            log.warning("stopped with %d messages still in the outbox; they are sent on the next start",
                        self.outbox.depth)
        self._step("close the outbox", self.outbox.close)
        self._step("close the retained store", self.retained.close)
        self._step("release the hardware", self.hardware.close)
        log.info("hall-agent stopped")

    @staticmethod
    def _step(what: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except Exception:
            log.exception("stopping: could not %s", what)
            return None
