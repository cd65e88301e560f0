"""The alarm book bound to the agent: its commands (``ack``, ``maintenance``,
``maintenance-end``, ``drill``, ``drill-end``), its state file, the retained
``maintenance`` and ``check/drill`` topics, and the tick.

It hooks into :class:`hall_agent.alerts.Alerts`: every change the rules make
passes through the book (``Alerts.hook``) before it is published, and the
book's own republications (an acknowledgement, an escalation step, a window
that starts or ends) go out through the same ``Alerts`` path, under its lock.

Durability: the book's state is written to ``alarms.json`` in the state
folder (a temporary file, fsync, rename, fsync of the folder). A change made by
a command or a timer is written *before* it is published, and the file
records which version of each alert was handed over; on start the agent
republishes what was written but not handed over. A change made by the rules
(a raise, a clear) is published first (an alarm waits for no disk) and written
by the next tick, like the rules' own ``alerts.json``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

from ..clock import SYSTEM, Clock
from ..commands import CommandError, Dispatcher
from ..envelope import Envelope, Events, Moment
from .book import AlarmBook, AlarmError, DrillReport, Event, Handled, MaintenanceList, Output, Policy, Scheduled

log = logging.getLogger(__name__)

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def policy_from(settings) -> Policy:
    a = settings.alerts
    scheduled = tuple(Scheduled(w.rule, w.source, w.from_, w.to, w.reason,
                                frozenset(WEEKDAYS.index(d) for d in w.weekdays)) for w in settings.maintenance)
    return Policy(escalate_branch_s=a.escalate_branch_s, escalate_city_s=a.escalate_city_s,
                  flap_count=a.flap_count, flap_window_s=a.flap_window_s, drill_due_days=a.drill_due_days,
                  timezone=settings.hall.timezone,
                  panic_inputs=tuple(i.id for i in settings.inputs if i.kind == "panic"), scheduled=scheduled)


def write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AlarmService:
    def __init__(self, settings, alerts, events: Events, emit: Callable[[Envelope], Any], path: Path,
                 clock: Clock | None = None, held: Callable[[], set[str]] = set):
        self.settings = settings
        self.alerts = alerts
        self.events = events
        self.emit = emit
        self.path = path
        self.clock = clock or SYSTEM
        self.held = held
        self.book = AlarmBook(policy_from(settings))
        self.dirty = False
        alerts.hook = self._hook
        alerts.unhook = self._unhook
        alerts.retained_alerts = self._retained_alerts

    # -- time and the lock --------------------------------------------------------------------
    def _times(self):
        return self.clock.monotonic(), self.clock.now(self.book.tz)

    def _hook(self, changes: list) -> list:
        """Alerts.feed's hook (under its lock): the rules' changes, handled."""
        mono, wall = self._times()
        outs = self.book.on_changes(changes, mono, wall)
        self.book.mark_published(outs)
        if outs:
            self.dirty = True
        return outs

    def _unhook(self, failed: list) -> None:
        """Alerts.feed could not emit these: the book takes them back (the rules try again)."""
        self.book.undo(failed)

    def _retained_alerts(self) -> list:
        return self.book.retained_alerts()

    def _run(self, fn: Callable[[float, Any], list[Output]]) -> list[Output]:
        with self.alerts.lock:
            mono, wall = self._times()
            outs = fn(mono, wall)
            if outs:
                self._save(mono, wall)  # first on disk, then out: a stop between the two republishes
                self._publish(outs)
                self.book.mark_published(outs)
                self.dirty = True
            return outs

    def _publish(self, outs: list[Output]) -> None:
        for o in outs:
            if isinstance(o, Handled):
                self.alerts.feed(lambda now, o=o: [o])
            elif isinstance(o, Event):
                self.emit(self.events.agent(o.name, o.data, o.severity, Moment(o.category, o.priority), o.source))
            elif isinstance(o, MaintenanceList):
                self.emit(self.events.maintenance(o.windows))
            elif isinstance(o, DrillReport):
                self.emit(self._report_envelope(o.data))

    def _report_envelope(self, data: dict) -> Envelope:
        severity = {"pass": "info", "warn": "warning", "fail": "warning"}[data["result"]]
        return self.events.check("drill", data, severity, Moment("emergency", 2 if data["result"] == "pass" else 1))

    # -- start, tick, stop --------------------------------------------------------------------
    def load(self) -> None:
        """The book from before a restart (call before the rules' alerts are restored)."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            self._problem(f"{self.path} unreadable ({getattr(e, 'strerror', None) or e}): alarm handling starts "
                          "afresh (acknowledgements, windows, drills of before the restart are not restored)")
            return
        try:
            doc = json.loads(text)
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:  # set aside for inspection, never overwritten
            aside = self.path.with_name(f"{self.path.name}.damaged-{int(self.clock.time())}")
            try:
                self.path.rename(aside)
            except OSError:
                aside = None
            self._problem(f"{self.path} damaged ({e}): " + (f"moved to {aside}; " if aside else "") +
                          "alarm handling starts afresh (acknowledgements, windows, drills of before the restart "
                          "are not restored)")
            return
        mono, wall = self._times()
        with self.alerts.lock:
            self.book.restore(doc, mono, wall, self.clock.synced())

    def _problem(self, text: str) -> None:
        log.error("%s", text)
        problems = getattr(self.alerts, "problems", None)
        if isinstance(problems, list):
            problems.append(text)  # the agent reports them as state-damaged events

    def reconcile(self, engine_active: dict, known_sources: set[str]) -> None:
        """After the rules' alerts are restored: line the book up with them, republish what was
        not handed over before the stop, and state the running windows."""
        def run(mono, wall):
            self.book.synced = self.clock.synced()
            outs = self.book.reconcile(dict(engine_active), known_sources, mono, wall)
            for key in self.book.held_quiet():
                # restored from its held publication, not from a condition: the rules hold it again
                # only when its part reports the condition again (the book swallows that raise)
                engine_active.pop(key, None)
            if not any(isinstance(o, MaintenanceList) for o in outs) and \
                    self.book.window_list() != self.book.published_windows:
                outs.append(MaintenanceList(self.book.window_list()))  # changed while the agent was down
            return outs
        self._run(run)

    def tick(self) -> None:
        self._run(lambda mono, wall: self.book.tick(mono, wall, self.clock.synced(), self.held()))
        if self.dirty:
            with self.alerts.lock:
                self._save(*self._times())

    def save(self) -> None:
        with self.alerts.lock:
            self._save(*self._times())

    def _save(self, mono: float, wall) -> None:
        data = json.dumps(self.book.snapshot(mono, wall), ensure_ascii=False, default=str).encode()
        try:
            write_atomically(self.path, data)
            self.dirty = False
        except OSError as e:
            log.error("could not write %s (%s): alarm handling is not durable until it can", self.path, e)

    # -- what the agent shows and republishes ------------------------------------------------
    def active(self) -> list[dict]:
        with self.alerts.lock:
            return self.book.active()

    def held_alerts(self) -> set[tuple[str, str]]:
        """Every alert alarm handling holds active (the rules' and its own)."""
        with self.alerts.lock:
            return set(self.book.entries)

    def retained_alert(self, key: tuple[str, str]) -> Handled | None:
        with self.alerts.lock:
            return next((h for h in self.book.retained_alerts() if h.alert.key == key), None)

    def status(self) -> dict[str, Any]:
        with self.alerts.lock:
            d = self.book.drill
            drill = None if d is None else {"inputs": list(d.inputs), "by": d.by, "started_at": d.started_at,
                                            "pressed": sorted(d.pressed)}
            return {"windows": self.book.window_list(), "drill": drill, "last_tested": dict(self.book.last_tested)}

    def retained(self) -> list[Envelope]:
        """What stands on the book's retained topics (for a rebirth): ``maintenance`` and the last
        ``check/drill``; the active alerts are :meth:`AlarmBook.retained_alerts`."""
        with self.alerts.lock:
            out = [self.events.maintenance(self.book.window_list())]
            if self.book.last_report is not None:
                out.append(self._report_envelope(self.book.last_report))
            return out

    # -- commands -------------------------------------------------------------------------------
    def register(self, d: Dispatcher) -> None:
        s = self.settings
        d.register("ack", self._command(self._ack), allowed=lambda: s.commands.allow_ack,
                   refusal="ack is disabled on this hall ([commands] allow_ack = false)")
        d.register("maintenance", self._command(self._maintenance))
        d.register("maintenance-end", self._command(self._maintenance_end))
        d.register("drill", self._command(self._drill))
        d.register("drill-end", self._command(self._drill_end))

    @staticmethod
    def _command(fn: Callable[[dict], Any]) -> Callable[[dict], Any]:
        def handler(args: dict) -> Any:
            try:
                return fn(args)
            except AlarmError as e:
                raise CommandError(e.code, e.message) from None
        return handler

    def _ack(self, args: dict) -> dict:
        outs = self._run(lambda mono, wall: self.book.ack(args, mono, wall))
        a = next(o.alert for o in outs if isinstance(o, Handled))
        return {"alert": f"{a.rule}/{a.source}", **{k: a.handling[k] for k in
                                                     ("acknowledged_by", "acknowledged_at", "note", "escalation")}}

    def _maintenance(self, args: dict) -> dict:
        outs = self._run(lambda mono, wall: self.book.start_window(args, mono, wall))
        window = next(o.data for o in outs if isinstance(o, Event))
        note = "panic alarms are never suppressed" if window["rule"] == "*" else None
        return {"window": window, "windows": self.book.window_list(), "note": note,
                "suppressed": [f"{o.alert.rule}/{o.alert.source}" for o in outs
                               if isinstance(o, Handled) and o.alert.handling["suppressed"]]}

    def _maintenance_end(self, args: dict) -> dict:
        self._run(lambda mono, wall: self.book.end_window(args, mono, wall))
        return {"windows": self.book.window_list()}

    def _drill(self, args: dict) -> dict:
        outs = self._run(lambda mono, wall: self.book.start_drill(args, mono, wall))
        return next(o.data for o in outs if isinstance(o, Event))

    def _drill_end(self, args: dict) -> dict:
        by = args.get("by") if isinstance(args.get("by"), str) and args.get("by") else "command"
        outs = self._run(lambda mono, wall: self.book.end_drill(mono, wall, self.held(), by=by))
        return next(o.data for o in outs if isinstance(o, DrillReport))
