"""The rules engine: pure logic, time passed in, no threads and no I/O.

Fed with readings, input states, printer and equipment states, sensor faults
and check reports; answers with ``AlertChange``s — an alert raised once when
its condition starts and cleared once when it ends. ``tick(now)`` runs the
timers (``held_open_s``, the end of business hours, the clock's sync).

Time (SPEC section 4): ``now`` (wall clock) is used for timestamps, the
season and business hours only; every duration (``for_s``, ``held_open_s``,
means) is measured on the injected clock's ``monotonic()``, so an NTP step
raises nothing. Until the clock is synchronised (``clock.synced()``) no
verdict needs the time of day: a door's after-hours and held-open verdicts
wait, and ``clock-unsynced`` is raised once the clock has gone
``CLOCK_UNSYNCED_S`` without sync.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta
from typing import Any, Callable

from ..clock import SYSTEM, Clock
from .means import RollingMean
from .profile import RuleSet, ThresholdRule

#: a mean is judged (raised or cleared) only while its data covers this much of the window
MIN_COVERAGE = 0.25
#: ``clock-unsynced`` after this long without a synchronised clock
CLOCK_UNSYNCED_S = 600.0
CLOCK_SOURCE = "clock"
CALENDAR_SOURCE = "calendar"


@dataclass
class Alert:
    rule: str
    source: str
    severity: str
    category: str
    priority: int
    message: str
    value: Any
    threshold: Any
    raised_at: str
    cleared_at: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return self.rule, self.source

    def data(self, state: str) -> dict:
        return {"state": state, "rule": self.rule, "message": self.message, "value": self.value,
                "threshold": self.threshold, "raised_at": self.raised_at, "cleared_at": self.cleared_at}


@dataclass
class AlertChange:
    alert: Alert
    active: bool


@dataclass
class _Threshold:
    """The state of one threshold rule on one sensor value."""
    mean: RollingMean | None = None
    pending_since: float | None = None
    last_value: float | None = None


@dataclass
class _Door:
    open: bool = False
    opened_at: float | None = None
    held_open_s: float = 120.0


class RulesEngine:
    def __init__(self, rules: RuleSet, is_open: Callable[[datetime], bool], timezone: str = "Asia/Shanghai",
                 clock: Clock = SYSTEM):
        from zoneinfo import ZoneInfo
        self.rules = rules
        self.is_open = is_open
        self.tz = ZoneInfo(timezone)
        self.clock = clock
        self.started = clock.monotonic()
        self.active: dict[tuple[str, str], Alert] = {}
        self._thresholds: dict[tuple[str, str, str], _Threshold] = {}
        self._doors: dict[str, _Door] = {}
        self.equipment_required: dict[str, bool] = {}

    # -- raising and clearing ------------------------------------------------------------
    def _raise(self, rule: str, source: str, now: datetime, message: str, value=None, threshold=None,
               cls: ThresholdRule | None = None) -> list[AlertChange]:
        if (rule, source) in self.active:
            return []  # raised once: no repeats while it stays active
        fixed = self.rules.fixed.get(rule)
        severity, category, priority = (cls.severity, cls.category, cls.priority) if cls else \
            (fixed.severity, fixed.category, fixed.priority)
        alert = Alert(rule, source, severity, category, priority, message, value, threshold,
                      raised_at=now.isoformat(timespec="milliseconds"))
        self.active[alert.key] = alert
        return [AlertChange(alert, True)]

    def _clear(self, rule: str, source: str, now: datetime, message: str | None = None) -> list[AlertChange]:
        alert = self.active.pop((rule, source), None)
        if alert is None:
            return []
        alert.cleared_at = now.isoformat(timespec="milliseconds")
        if message:
            alert.message = message
        return [AlertChange(alert, False)]

    def undo(self, change: AlertChange) -> None:
        """Take back a change whose envelope could not be emitted: the engine holds only
        what was really announced, so the condition raises (or clears) it again."""
        a = change.alert
        if change.active:
            if self.active.get(a.key) is a:
                del self.active[a.key]
        elif a.key not in self.active:
            a.cleared_at = None
            self.active[a.key] = a

    def _set(self, rule: str, source: str, on: bool, now: datetime, message: str, **kw) -> list[AlertChange]:
        return self._raise(rule, source, now, message, **kw) if on else self._clear(rule, source, now)

    # -- readings ------------------------------------------------------------------------
    def reading(self, source: str, values: dict[str, float], now: datetime) -> list[AlertChange]:
        out: list[AlertChange] = []
        t = self.clock.monotonic()
        for key, raw in values.items():
            for rule in self.rules.for_reading(source, key):
                out += self._threshold(rule, source, key, raw, now, t)
        return out

    def _threshold(self, rule: ThresholdRule, source: str, key: str, raw: float, now: datetime,
                   t: float) -> list[AlertChange]:
        state = self._thresholds.setdefault((rule.id, source, key), _Threshold())
        value = rule.convert(raw) if rule.convert else raw
        if rule.mean_s > 0:
            if state.mean is None:
                state.mean = RollingMean(rule.mean_s)
            state.mean.add(value, t)
            if state.mean.coverage(t) < MIN_COVERAGE:
                # too little data in the window (just started, a gap, a restart): no verdict either way;
                # a restored mean alert stays as it was until the mean can be judged again
                state.pending_since = None
                return []
            value = state.mean.mean(t)
        state.last_value = value
        return self._evaluate(rule, source, state, now, t)

    def _evaluate(self, rule: ThresholdRule, source: str, state: _Threshold, now: datetime, t: float):
        value = state.last_value
        if value is None:
            return []
        local_month = now.astimezone(self.tz).month  # seasons follow the hall's calendar
        limit, clear = rule.threshold_for(local_month), rule.clear_for(local_month)
        above = rule.direction == "above"
        beyond = value > limit if above else value < limit
        back = value < clear if above else value > clear
        active = (rule.id, source) in self.active
        shown = round(value, 3)
        if not active:
            if not beyond:
                state.pending_since = None
                return []
            if state.pending_since is None:
                state.pending_since = t
            if t - state.pending_since < rule.for_s:
                return []
            word = "above" if above else "below"
            held = f" for {rule.for_s:g} s" if rule.for_s else ""
            return self._raise(rule.id, source, now, f"{rule.label or rule.value} {shown} {rule.unit} is {word} "
                               f"{limit:g} {rule.unit}{held}".replace("  ", " "), value=shown, threshold=limit,
                               cls=rule)
        if back:
            state.pending_since = None
            word = "below" if above else "above"
            return self._clear(rule.id, source, now, f"{rule.label or rule.value} {shown} {rule.unit} is back "
                               f"{word} {clear:g} {rule.unit}".replace("  ", " "))
        return []

    # -- inputs ------------------------------------------------------------------------------
    def input(self, kind: str, source: str, state: str, now: datetime, held_open_s: float | None = None
              ) -> list[AlertChange]:
        if kind == "panic":
            return self._set("panic", source, state == "alarm", now, f"panic button {source} pressed")
        if kind != "door":
            return []
        door = self._doors.setdefault(source, _Door())
        if held_open_s:
            door.held_open_s = held_open_s
        t = self.clock.monotonic()
        if state == "open":
            if not door.open:
                door.open, door.opened_at = True, t
            return self._door_checks(source, door, now)
        door.open, door.opened_at = False, None
        return self._clear("door-after-hours", source, now, f"door {source} closed") + \
            self._clear("door-held-open", source, now, f"door {source} closed")

    def _door_checks(self, source: str, door: _Door, now: datetime) -> list[AlertChange]:
        if not door.open:
            return []
        if not self.clock.synced():
            return []  # the time of day is unknown: in hours or not, no verdict yet (tick judges it later)
        if not self.is_open(now):
            return self._raise("door-after-hours", source, now, f"door {source} open outside business hours")
        open_for = self.clock.monotonic() - door.opened_at if door.opened_at is not None else 0.0
        if open_for >= door.held_open_s:
            return self._raise("door-held-open", source, now,
                               f"door {source} open for more than {door.held_open_s:g} s",
                               value=round(open_for), threshold=door.held_open_s)
        return []

    # -- printers, equipment, sensors, checks ----------------------------------------------
    def printer(self, source: str, data: dict, answering: bool, now: datetime) -> list[AlertChange]:
        paper, cover, error, online = data.get("paper"), data.get("cover_open"), data.get("error"), data.get("online")
        if not answering:  # the paper, cover and error are unknown now: only "offline" changes
            return self._raise("printer-offline", source, now, f"printer {source}: {error}")
        offline = not online and paper != "end" and not cover and not error
        out = self._set("printer-paper-low", source, paper == "near_end", now,
                        f"printer {source}: paper near its end")
        out += self._set("printer-paper-out", source, paper == "end", now, f"printer {source}: out of paper")
        out += self._set("printer-cover-open", source, bool(cover), now, f"printer {source}: cover open")
        out += self._set("printer-error", source, bool(error), now, f"printer {source}: {error}")
        out += self._set("printer-offline", source, offline, now, f"printer {source}: offline")
        return out

    def equipment(self, source: str, data: dict, now: datetime, required: bool = True) -> list[AlertChange]:
        reachable, power = data.get("reachable"), data.get("power")
        should_answer = required and power != "off"
        down = should_answer and reachable is False
        detail = data.get("detail") or "no answer"
        return self._set("equipment-unreachable", source, down, now, f"equipment {source} unreachable: {detail}")

    def sensor_fault(self, source: str, reason: str, now: datetime) -> list[AlertChange]:
        for (_, src, _), state in self._thresholds.items():
            if src == source:  # a value held before the fault does not complete a for_s
                state.pending_since = None
        return self._raise("sensor-fault", source, now, f"sensor {source}: {reason}")

    def sensor_ok(self, source: str, now: datetime) -> list[AlertChange]:
        return self._clear("sensor-fault", source, now, f"sensor {source} reads again")

    def check(self, kind: str, result: str, failed: list[str], now: datetime) -> list[AlertChange]:
        return self._set("check-failed", kind, result == "fail", now,
                         f"{kind} check failed: {', '.join(failed)}", value=len(failed), threshold=0)

    def storage(self, failure: str | None, now: datetime) -> list[AlertChange]:
        """The outbox cannot be written (``failure`` says why) or works again (None)."""
        if failure is None:
            return self._clear("storage-failed", "outbox", now, "the outbox takes writes again")
        return self._raise("storage-failed", "outbox", now,
                           f"the outbox cannot be written ({failure}): alarms are sent from memory")

    def gpio(self, part: str, failure: str | None, now: datetime) -> list[AlertChange]:
        """A configured input or relay cannot be claimed (``failure``), or works now (None)."""
        if failure is None:
            return self._clear("gpio-unavailable", part, now, f"{part} works again")
        return self._raise("gpio-unavailable", part, now, f"{part} cannot be claimed: {failure}")

    # -- time ---------------------------------------------------------------------------------
    def tick(self, now: datetime) -> list[AlertChange]:
        """Doors (held open, business hours ending) and the clock's sync. A threshold's
        ``for_s`` is not completed here: only a fresh reading completes it (a sensor
        that died holding a high value raises ``sensor-fault``, not the threshold)."""
        out = self.clock_state(now)
        for source, door in self._doors.items():
            out += self._door_checks(source, door, now)
        return out

    def clock_state(self, now: datetime) -> list[AlertChange]:
        """``clock-unsynced`` once the clock has gone ``CLOCK_UNSYNCED_S`` (monotonic)
        without sync; cleared when it is synchronised."""
        if self.clock.synced():
            return self._clear("clock-unsynced", CLOCK_SOURCE, now, "system clock synchronised")
        waited = self.clock.monotonic() - self.started
        if waited < CLOCK_UNSYNCED_S:
            return []
        return self._raise("clock-unsynced", CLOCK_SOURCE, now,
                           f"system clock not synchronised for {waited / 60:.0f} min: no after-hours verdict and no "
                           "scheduled check until it is (check NTP: timedatectl timesync-status; is UDP port 123 "
                           "open to the time servers?)", value=round(waited), threshold=CLOCK_UNSYNCED_S)

    def calendar_state(self, unconfirmed: date | None, today: date, now: datetime, warn_days: int = 30
                       ) -> list[AlertChange]:
        """``calendar-unconfirmed`` from ``warn_days`` before ``unconfirmed`` (the first date whose
        official holiday schedule the calendar does not know; None: no such date)."""
        due = unconfirmed is not None and today >= unconfirmed - timedelta(days=warn_days)
        if not due:
            return self._clear("calendar-unconfirmed", CALENDAR_SOURCE, now, "the calendar is confirmed")
        return self._raise("calendar-unconfirmed", CALENDAR_SOURCE, now,
                           f"the official holiday schedule from {unconfirmed.isoformat()} on is not known: days off "
                           "and make-up working days are guessed. Upgrade the holidays package (pip install -U "
                           "holidays) once it has the new year, or list that year's days off under [hours] closed "
                           "and its make-up working days under [hours.open]", value=unconfirmed.isoformat(),
                           threshold=warn_days)

    def condition(self, rule: str, source: str, active: bool, message: str, now: datetime, value=None,
                  threshold=None) -> list[AlertChange]:
        """A fixed system rule held while a condition lasts (``publish-refused``,
        ``subscribe-refused``, ``certificate-expiring``): raised once when it starts,
        cleared once when it ends."""
        return self._set(rule, source, active, now, message, value=value, threshold=threshold)

    # -- persistence (the agent stores this in its state folder) -----------------------------
    def snapshot(self) -> list[dict]:
        return [asdict(a) for a in self.active.values()]

    def restore(self, items: list[dict]) -> None:
        for item in items:
            try:
                alert = Alert(**item)
            except TypeError:
                continue
            self.active[alert.key] = alert

    def forget_sources(self, known: set[str], now: datetime) -> list[AlertChange]:
        """Clear restored alerts whose source is no longer configured."""
        gone = [k for k in self.active if k[1] not in known]
        return [c for rule, source in gone for c in self._clear(rule, source, now, f"{source} is no longer configured")]
