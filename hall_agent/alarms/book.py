"""The alarm book: what happens to an alert between "the rules raised it" and
"the rules cleared it" (SPEC section 4). Pure: no threads, no I/O; every call
takes the monotonic time ``mono`` (escalation, flapping, drill length) and the
wall time ``wall`` (an aware datetime: maintenance windows, ``until``,
timestamps, drill-due days). A call answers with a list of outputs:

- :class:`Handled` — an alert envelope to publish (``active``: retained on
  ``alert/{rule}/{source}``; cleared: the cleared envelope then the empty
  retained message), carrying the handling fields of SPEC section 3;
- :class:`Event` — an ``agent`` event for the audit stream;
- :class:`MaintenanceList` — the new content of the retained ``maintenance``;
- :class:`DrillReport` — the drill's report, retained on ``check/drill``.

Rules (docs/alerts.md has the reasons):

- an acknowledged alert stays active until the rules clear it; a later raise
  starts unacknowledged;
- inside a maintenance window an alert is still raised and cleared, marked
  ``suppressed``; ``panic`` is never suppressed; a window that starts or ends
  while an alert is active re-marks it; a scheduled window (a time of day)
  applies only while the wall clock is synchronised, and a new window is
  refused while it is not;
- the ``flap_count``-th clear of an alert within ``flap_window_s`` is held:
  the alert stays active marked ``flapping`` until its condition has been
  quiet (cleared, not raised again) for ``flap_window_s``; then it clears
  once. ``panic`` does not flap: it clears by a deliberate reset;
- an unacknowledged priority-1 alert carries ``escalation`` ``hall``, then
  ``branch`` after ``escalate_branch_s`` and ``city`` after
  ``escalate_city_s`` of being unacknowledged, not suppressed and not a
  drill; an acknowledgement stops it at the level it reached;
- a panic raised during a drill that names its button is marked ``drill``;
  the drill's report says of each named button: ``pass`` pressed and
  released, ``warn`` pressed and still held at the end, ``fail`` never
  pressed. A button without a passed drill for ``drill_due_days`` raises
  ``drill-due``.
"""

from __future__ import annotations

import bisect
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, time, timedelta
from typing import Any, Iterable
from zoneinfo import ZoneInfo

from ..rules.engine import Alert, AlertChange

LEVELS = ("hall", "branch", "city")
MAX_WINDOW = timedelta(hours=24)
MAX_DRILL_MIN = 60
#: alerts this book raises itself (not the rules engine)
OWN_RULES = ("drill-due",)
#: a downtime longer than this (by the wall clock) is not trusted to age the timers
MAX_DOWNTIME_S = 30 * 86400


class AlarmError(Exception):
    """A refused alarm-handling command: ``code`` is the reply's error code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class HandledAlert(Alert):
    """An alert with its handling fields, as published."""
    handling: dict[str, Any] = field(default_factory=dict)

    def data(self, state: str) -> dict:
        return {**super().data(state), **self.handling}


@dataclass
class Handled(AlertChange):
    """An alert envelope to publish; passes the alert hook untouched."""
    alert: HandledAlert
    active: bool
    version: int = 0


@dataclass
class Event:
    name: str
    data: dict[str, Any]
    severity: str = "info"
    category: str = "internal"
    priority: int = 2
    source: str = "alarms"


@dataclass
class MaintenanceList:
    windows: list[dict[str, Any]]


@dataclass
class DrillReport:
    data: dict[str, Any]

    @property
    def result(self) -> str:
        return self.data["result"]


Output = Handled | Event | MaintenanceList | DrillReport


@dataclass(frozen=True)
class Scheduled:
    """A ``[[maintenance]]`` window of the configuration, in the hall's time zone."""
    rule: str
    source: str
    start: time
    end: time
    reason: str
    weekdays: frozenset[int] = frozenset(range(7))  # Monday = 0

    def until(self, local: datetime) -> datetime | None:
        """The end of the occurrence ``local`` falls in, or None outside one."""
        t = local.time().replace(tzinfo=None)
        today = local.date()
        tz = local.tzinfo
        if self.start < self.end:
            if today.weekday() in self.weekdays and self.start <= t < self.end:
                return datetime.combine(today, self.end, tz)
            return None
        # across midnight: 22:00-02:00 belongs to the day it starts on
        if today.weekday() in self.weekdays and t >= self.start:
            return datetime.combine(today + timedelta(days=1), self.end, tz)
        yesterday = today - timedelta(days=1)
        if yesterday.weekday() in self.weekdays and t < self.end:
            return datetime.combine(today, self.end, tz)
        return None


@dataclass(frozen=True)
class Policy:
    escalate_branch_s: float = 120.0
    escalate_city_s: float = 900.0
    flap_count: int = 4
    flap_window_s: float = 600.0
    drill_due_days: float = 90.0
    timezone: str = "Asia/Shanghai"
    panic_inputs: tuple[str, ...] = ()
    scheduled: tuple[Scheduled, ...] = ()


@dataclass
class Window:
    rule: str
    source: str
    until: datetime
    reason: str
    by: str
    scheduled: bool = False

    def matches(self, rule: str, source: str) -> bool:
        return rule != "panic" and self.rule in ("*", rule) and self.source in ("*", source)

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "source": self.source, "until": _iso(self.until), "reason": self.reason,
                "by": self.by, "scheduled": self.scheduled}


@dataclass
class Entry:
    """One alert as published (active), with its handling."""
    alert: Alert
    condition: bool = True               # the rules' condition holds (False: held by flapping)
    acknowledged_by: str | None = None
    acknowledged_at: str | None = None
    note: str | None = None
    suppressed: dict[str, Any] | None = None
    flapping: bool = False
    escalation: str | None = None
    esc_elapsed: float = 0.0             # seconds counted towards escalation before esc_since
    esc_since: float | None = None       # mono; None: the escalation clock is stopped
    drill: bool = False
    quiet_since: float | None = None     # mono; held by flapping and the condition is off since
    version: int = 0                     # bumped for every publication
    published: int = 0                   # the last version handed to the publisher

    @property
    def key(self) -> tuple[str, str]:
        return self.alert.key

    def handling(self) -> dict[str, Any]:
        return {"acknowledged_by": self.acknowledged_by, "acknowledged_at": self.acknowledged_at,
                "note": self.note, "suppressed": self.suppressed, "flapping": self.flapping,
                "escalation": self.escalation, "drill": self.drill}

    def elapsed(self, mono: float) -> float:
        return self.esc_elapsed + (max(0.0, mono - self.esc_since) if self.esc_since is not None else 0.0)


@dataclass
class Drill:
    inputs: tuple[str, ...]
    by: str
    started_at: str
    ends: float                          # mono
    minutes: float
    pressed: dict[str, str] = field(default_factory=dict)  # input -> when (wall, ISO)


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds")


def _text(args: dict, key: str, required: bool = True, limit: int = 200) -> str | None:
    value = args.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise AlarmError("bad-args", f"'{key}' must be a non-empty string")
    if len(value) > limit:
        raise AlarmError("bad-args", f"'{key}' is longer than {limit} characters")
    return value.strip()


class AlarmBook:
    def __init__(self, policy: Policy):
        self.policy = policy
        self.tz = ZoneInfo(policy.timezone)
        self.entries: dict[tuple[str, str], Entry] = {}
        self.raises: dict[tuple[str, str], list[float]] = {}    # mono times the condition was raised
        self.windows: dict[tuple[str, str], Window] = {}        # from commands
        self.skipped: dict[int, str] = {}                        # scheduled index -> until (ISO) ended early
        self.scheduled_on: dict[int, str] = {}                   # scheduled index -> until of the running one
        self.drill: Drill | None = None
        self.last_tested: dict[str, str] = {}                    # panic input -> wall ISO of its last pass
        self.first_seen: dict[str, str] = {}                     # panic input -> wall ISO first known
        self.last_report: dict[str, Any] | None = None
        self.published_windows: list[dict[str, Any]] = []       # the last list handed to the publisher
        self._closed: dict[tuple[str, str], Entry] = {}          # the last closed entry of each key (undo)
        self.synced = True

    # -- reading ----------------------------------------------------------------------------
    def active(self) -> list[dict[str, Any]]:
        items = sorted(self.entries.values(), key=lambda e: (e.alert.priority, e.alert.raised_at))
        return [{"rule": e.alert.rule, "source": e.alert.source, "severity": e.alert.severity,
                 "priority": e.alert.priority, "category": e.alert.category, "message": e.alert.message,
                 "raised_at": e.alert.raised_at, **e.handling()} for e in items]

    def window_list(self) -> list[dict[str, Any]]:
        out = [w.as_dict() for w in self._windows_now()]
        out.sort(key=lambda w: (w["until"], w["rule"], w["source"]))
        return out

    def held_quiet(self) -> list[tuple[str, str]]:
        """Alerts flapping holds active while their condition is off."""
        return [k for k, e in self.entries.items() if e.flapping and not e.condition]

    def retained_alerts(self) -> list[Handled]:
        """Every active alert as it should stand on its retained topic (a rebirth)."""
        return [self._make(e, True) for e in self.entries.values()]

    # -- the rules' changes -------------------------------------------------------------------
    def on_changes(self, changes: Iterable[AlertChange], mono: float, wall: datetime) -> list[Output]:
        out: list[Output] = []
        for change in changes:
            if isinstance(change, Handled):
                out.append(change)
            elif change.active:
                out += self._raised(change.alert, mono, wall)
            else:
                out += self._cleared(change.alert, mono, wall)
        return out

    def _raised(self, alert: Alert, mono: float, wall: datetime) -> list[Output]:
        key = alert.key
        self._note_raise(key, mono)
        e = self.entries.get(key)
        if e is not None:  # held by flapping (or already known): still active, nothing new to say
            e.condition, e.quiet_since = True, None
            return []
        e = Entry(alert=alert)
        if alert.rule == "panic" and self.drill is not None and alert.source in self.drill.inputs:
            e.drill = True
            self.drill.pressed.setdefault(alert.source, _iso(wall.astimezone(self.tz)))
        e.suppressed = self._suppression(alert.rule, alert.source, wall)
        if alert.priority == 1:
            e.escalation = LEVELS[0]
        self._escalation_clock(e, mono)
        self.entries[key] = e
        return [self._publish(e, True)]

    def _cleared(self, alert: Alert, mono: float, wall: datetime) -> list[Output]:
        key = alert.key
        e = self.entries.get(key)
        if e is None:  # the rules cleared what this book never saw (its state was lost): say it cleared
            e = Entry(alert=alert, escalation=LEVELS[0] if alert.priority == 1 else None)
            return [self._publish(e, False)]
        was_on, e.condition = e.condition, False
        e.alert.message = alert.message or e.alert.message
        if e.flapping:
            if was_on or e.quiet_since is None:  # quiet from now (already quiet: it stays so since then)
                e.quiet_since = mono
            return []
        if alert.rule != "panic" and len(self._recent(key, mono)) >= self.policy.flap_count:
            e.flapping, e.quiet_since = True, mono
            return [self._publish(e, True)]
        e.alert.cleared_at = alert.cleared_at or _iso(wall.astimezone(self.tz))
        return [self._close(e)]

    def _note_raise(self, key: tuple[str, str], mono: float) -> None:
        times = self.raises.setdefault(key, [])
        times.append(mono)
        self._recent(key, mono)

    def _recent(self, key: tuple[str, str], mono: float) -> list[float]:
        times = self.raises.get(key, [])
        cut = bisect.bisect_left(times, mono - self.policy.flap_window_s)
        del times[:cut]
        if not times:
            self.raises.pop(key, None)
        return times

    # -- acknowledgement ----------------------------------------------------------------------
    def ack(self, args: dict, mono: float, wall: datetime) -> list[Output]:
        ref = args.get("alert")
        if not isinstance(ref, str) or ref.count("/") != 1:
            raise AlarmError("bad-args", "'alert' must be \"rule/source\", e.g. \"door-after-hours/door.back\"")
        by = _text(args, "by", limit=64)
        note = _text(args, "note", required=False, limit=500)
        rule, source = ref.split("/")
        e = self.entries.get((rule, source))
        if e is None:
            raise AlarmError("not-found", f"no active alert {ref} (unknown, or already cleared)")
        if e.acknowledged_by is not None:
            raise AlarmError("conflict", f"{ref} was already acknowledged by {e.acknowledged_by} "
                                         f"at {e.acknowledged_at}")
        e.acknowledged_by, e.acknowledged_at, e.note = by, _iso(wall.astimezone(self.tz)), note
        self._escalation_clock(e, mono)
        return [self._publish(e, True)]

    # -- escalation ---------------------------------------------------------------------------
    def _escalates(self, e: Entry) -> bool:
        return e.alert.priority == 1 and e.acknowledged_by is None and e.suppressed is None and not e.drill

    def _escalation_clock(self, e: Entry, mono: float) -> None:
        """Start or stop the entry's escalation clock to match whether it escalates now."""
        running = e.esc_since is not None
        if self._escalates(e) and not running:
            e.esc_since = mono
        elif not self._escalates(e) and running:
            e.esc_elapsed, e.esc_since = e.elapsed(mono), None

    def _level(self, e: Entry, mono: float) -> str | None:
        if e.escalation is None:
            return None
        elapsed = e.elapsed(mono)
        reached = 2 if elapsed >= self.policy.escalate_city_s else 1 if elapsed >= self.policy.escalate_branch_s else 0
        return LEVELS[max(reached, LEVELS.index(e.escalation))]

    # -- maintenance windows ------------------------------------------------------------------
    def start_window(self, args: dict, mono: float, wall: datetime) -> list[Output]:
        rule, source = _text(args, "rule", limit=64), _text(args, "source", limit=64)
        if rule == "panic":
            raise AlarmError("refused", "panic alarms can never be suppressed: no maintenance window for 'panic'")
        reason, by = _text(args, "reason"), _text(args, "by", limit=64)
        if not self.synced:
            raise AlarmError("refused", "the hall's clock is not synchronised: a window's end cannot be trusted")
        until = self.parse_until(args.get("until"), wall)
        window = Window(rule, source, until, reason, by)
        self.windows[(rule, source)] = window
        out: list[Output] = [Event("maintenance-started", window.as_dict())]
        return out + self._refresh(mono, wall, force_list=True)

    def parse_until(self, value: Any, wall: datetime) -> datetime:
        if not isinstance(value, str):
            raise AlarmError("bad-args", "'until' must be an ISO 8601 time, e.g. \"2026-11-26T20:00:00+08:00\"")
        try:
            until = datetime.fromisoformat(value)
        except ValueError:
            raise AlarmError("bad-args", f"'until' {value!r} is not an ISO 8601 time") from None
        if until.tzinfo is None:
            until = until.replace(tzinfo=self.tz)  # a time without offset is the hall's local time
        until = until.astimezone(self.tz)
        if until <= wall:
            raise AlarmError("bad-args", f"'until' {value} is not in the future (now {_iso(wall.astimezone(self.tz))})")
        if until - wall > MAX_WINDOW:
            raise AlarmError("bad-args", f"'until' {value} is more than 24 h ahead")
        return until

    def end_window(self, args: dict, mono: float, wall: datetime) -> list[Output]:
        rule, source = _text(args, "rule", limit=64), _text(args, "source", limit=64)
        by = _text(args, "by", required=False, limit=64)
        window = self.windows.pop((rule, source), None)
        if window is None:
            for i, w in self._scheduled_now(wall):
                if (w.rule, w.source) == (rule, source):
                    self.skipped[i] = _iso(w.until)
                    self.scheduled_on.pop(i, None)
                    window = w
                    break
        if window is None:
            raise AlarmError("not-found", f"no maintenance window for rule {rule!r} and source {source!r} is running")
        out: list[Output] = [Event("maintenance-ended", {**window.as_dict(), "ended": "command", "ended_by": by})]
        return out + self._refresh(mono, wall, force_list=True)

    def _scheduled_now(self, wall: datetime) -> list[tuple[int, Window]]:
        if not self.synced:
            return []
        local = wall.astimezone(self.tz)
        out = []
        for i, s in enumerate(self.policy.scheduled):
            until = s.until(local)
            if until is None or self.skipped.get(i) == _iso(until):
                continue
            out.append((i, Window(s.rule, s.source, until, s.reason, "config", scheduled=True)))
        return out

    def _windows_now(self, wall: datetime | None = None) -> list[Window]:
        scheduled = [w for _, w in self._scheduled_now(wall)] if wall is not None else \
            [Window(s.rule, s.source, datetime.fromisoformat(self.scheduled_on[i]), s.reason, "config", True)
             for i, s in enumerate(self.policy.scheduled) if i in self.scheduled_on]
        return list(self.windows.values()) + scheduled

    def _suppression(self, rule: str, source: str, wall: datetime) -> dict[str, Any] | None:
        if rule == "panic":
            return None
        best = None
        for w in self._windows_now(wall):
            if w.matches(rule, source) and (best is None or w.until > best.until):
                best = w
        return None if best is None else {"reason": best.reason, "by": best.by, "until": _iso(best.until)}

    # -- drills -------------------------------------------------------------------------------
    def start_drill(self, args: dict, mono: float, wall: datetime) -> list[Output]:
        if self.drill is not None:
            raise AlarmError("busy", f"a drill by {self.drill.by} is running (started {self.drill.started_at}); "
                                     f"end it with drill-end first")
        panics = self.policy.panic_inputs
        wanted = args.get("inputs")
        if wanted == "*":
            inputs = tuple(panics)
        elif isinstance(wanted, list) and wanted and all(isinstance(i, str) for i in wanted):
            unknown = [i for i in wanted if i not in panics]
            if unknown:
                raise AlarmError("bad-args", f"not panic inputs of this hall: {', '.join(unknown)}; "
                                             f"panic inputs: {', '.join(panics) or 'none'}")
            inputs = tuple(dict.fromkeys(wanted))
        else:
            raise AlarmError("bad-args", "'inputs' must be a list of panic input ids or \"*\"")
        if not inputs:
            raise AlarmError("bad-args", "this hall has no panic input to drill")
        minutes = args.get("minutes")
        if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or not 0 < minutes <= MAX_DRILL_MIN:
            raise AlarmError("bad-args", f"'minutes' must be a number above 0 and at most {MAX_DRILL_MIN}")
        by = _text(args, "by", limit=64)
        latched = [i for i in inputs if ("panic", i) in self.entries]
        if latched:
            raise AlarmError("refused", f"in alarm now, reset before a drill: {', '.join(latched)}")
        self.drill = Drill(inputs, by, _iso(wall.astimezone(self.tz)), mono + float(minutes) * 60, float(minutes))
        return [Event("drill-started", {"inputs": list(inputs), "minutes": minutes, "by": by,
                                        "ends_at": _iso((wall + timedelta(minutes=minutes)).astimezone(self.tz))})]

    def end_drill(self, mono: float, wall: datetime, held: Iterable[str] = (), by: str | None = None
                  ) -> list[Output]:
        drill = self.drill
        if drill is None:
            raise AlarmError("not-found", "no drill is running")
        self.drill = None
        held = set(held)
        items = []
        local = wall.astimezone(self.tz)
        for button in drill.inputs:
            at = drill.pressed.get(button)
            if at is None:
                items.append({"id": button, "result": "fail", "detail": "never pressed (or the press never "
                                                                        "reached the agent)"})
            elif button in held:
                items.append({"id": button, "result": "warn", "detail": f"pressed at {at}, never released"})
            else:
                items.append({"id": button, "result": "pass", "detail": f"pressed at {at} and released"})
                self.last_tested[button] = _iso(local)
        results = {i["result"] for i in items}
        result = "fail" if "fail" in results else "warn" if "warn" in results else "pass"
        data = {"check": "drill", "result": result, "scheduled_for": None, "started_at": drill.started_at,
                "finished_at": _iso(local), "items": items, "by": drill.by,
                "ended": "command" if by is not None else "time", "ended_by": by, "minutes": drill.minutes}
        self.last_report = data
        out: list[Output] = [DrillReport(data)]
        for button in drill.inputs:  # a passed button is tested: its drill-due clears
            e = self.entries.get(("drill-due", button))
            if e is not None and self.last_tested.get(button) == _iso(local):
                e.alert.cleared_at, e.alert.message = _iso(local), f"panic button {button} passed a drill"
                out.append(self._close(e))
        return out

    def _drill_due(self, wall: datetime) -> list[Output]:
        if not self.synced:
            return []
        out: list[Output] = []
        local = wall.astimezone(self.tz)
        due = timedelta(days=self.policy.drill_due_days)
        for button in self.policy.panic_inputs:
            self.first_seen.setdefault(button, _iso(local))
            since = datetime.fromisoformat(self.last_tested.get(button) or self.first_seen[button])
            if local - since <= due or ("drill-due", button) in self.entries:
                continue
            alert = Alert("drill-due", button, "warning", "internal", 2,
                          f"panic button {button} not tested in a drill since {since.date().isoformat()}",
                          value=(local - since).days, threshold=self.policy.drill_due_days, raised_at=_iso(local))
            e = Entry(alert=alert)
            e.suppressed = self._suppression(alert.rule, alert.source, wall)
            self.entries[alert.key] = e
            out.append(self._publish(e, True))
        return out

    # -- time -----------------------------------------------------------------------------------
    def tick(self, mono: float, wall: datetime, synced: bool = True, held: Iterable[str] = ()) -> list[Output]:
        self.synced = synced
        out: list[Output] = []
        if self.drill is not None and mono >= self.drill.ends:
            out += self.end_drill(mono, wall, held)
        for key, w in list(self.windows.items()):
            if w.until <= wall:
                del self.windows[key]
                out.append(Event("maintenance-ended", {**w.as_dict(), "ended": "expired", "ended_by": None}))
        for e in list(self.entries.values()):
            if e.flapping and not e.condition and e.quiet_since is not None and \
                    mono - e.quiet_since >= self.policy.flap_window_s:
                e.alert.cleared_at = _iso(wall.astimezone(self.tz))
                self.raises.pop(e.key, None)
                out.append(self._close(e))
        out += self._refresh(mono, wall, force_list=any(isinstance(o, Event) for o in out))
        out += self._drill_due(wall)
        return out

    def _refresh(self, mono: float, wall: datetime, force_list: bool = False) -> list[Output]:
        """Windows that started or ended, suppression and escalation brought up to date."""
        out: list[Output] = []
        now = dict((i, _iso(w.until)) for i, w in self._scheduled_now(wall))
        for i, until in now.items():
            if self.scheduled_on.get(i) != until:
                s = self.policy.scheduled[i]
                out.append(Event("maintenance-started", Window(s.rule, s.source, datetime.fromisoformat(until),
                                                               s.reason, "config", True).as_dict()))
        for i, until in self.scheduled_on.items():
            if now.get(i) != until:
                s = self.policy.scheduled[i]
                ended = "command" if self.skipped.get(i) == until else "expired"
                out.append(Event("maintenance-ended", {**Window(s.rule, s.source, datetime.fromisoformat(until),
                                 s.reason, "config", True).as_dict(), "ended": ended, "ended_by": None}))
        changed_list = force_list or now != self.scheduled_on
        self.scheduled_on = now
        for i in [i for i, until in self.skipped.items() if datetime.fromisoformat(until) <= wall]:
            del self.skipped[i]
        if changed_list:
            out.append(MaintenanceList(self.window_list()))
        for e in list(self.entries.values()):
            suppressed = self._suppression(e.alert.rule, e.alert.source, wall)
            changed = suppressed != e.suppressed
            e.suppressed = suppressed
            self._escalation_clock(e, mono)
            level = self._level(e, mono)
            if level != e.escalation:
                e.escalation, changed = level, True
            if changed:
                out.append(self._publish(e, True))
        return out

    # -- publication --------------------------------------------------------------------------
    def _make(self, e: Entry, active: bool) -> Handled:
        values = {f.name: getattr(e.alert, f.name) for f in fields(Alert)}
        return Handled(HandledAlert(**values, handling=e.handling()), active, e.version)

    def _publish(self, e: Entry, active: bool) -> Handled:
        e.version += 1
        return self._make(e, active)

    def _close(self, e: Entry) -> Handled:
        self.entries.pop(e.key, None)
        self._closed[e.key] = e
        return self._publish(e, False)

    def undo(self, outputs: Iterable[Output]) -> None:
        """These could not be published: a fresh raise is forgotten (the rules raise it again), a
        clear is taken back (the alert stays active); a republication stays due (``published``)."""
        for o in outputs:
            if not isinstance(o, Handled):
                continue
            key = o.alert.key
            e = self.entries.get(key)
            if o.active and e is not None and o.version == 1:
                del self.entries[key]
                times = self.raises.get(key)
                if times:  # a raise that never went out does not count towards flapping
                    times.pop()
                    if not times:
                        del self.raises[key]
            elif not o.active and e is None and key in self._closed:
                e = self._closed.pop(key)
                e.alert.cleared_at = None
                self.entries[key] = e

    def mark_published(self, outputs: Iterable[Output]) -> None:
        """The publisher has these: a restart need not republish them."""
        for o in outputs:
            if isinstance(o, MaintenanceList):
                self.published_windows = o.windows
            if isinstance(o, Handled) and o.active:
                e = self.entries.get(o.alert.key)
                if e is not None and e.alert.raised_at == o.alert.raised_at:
                    e.published = max(e.published, o.version)

    # -- persistence ----------------------------------------------------------------------------
    def snapshot(self, mono: float, wall: datetime) -> dict[str, Any]:
        entries = []
        for e in self.entries.values():
            d = {k: v for k, v in asdict(e).items() if k not in ("alert", "esc_since", "esc_elapsed", "quiet_since")}
            d["alert"] = {f.name: getattr(e.alert, f.name) for f in fields(Alert)}
            d["esc_elapsed"] = e.elapsed(mono)
            d["esc_running"] = e.esc_since is not None
            d["quiet_age"] = None if e.quiet_since is None else mono - e.quiet_since
            entries.append(d)
        drill = None
        if self.drill is not None:
            drill = {**asdict(self.drill), "inputs": list(self.drill.inputs), "remaining": self.drill.ends - mono}
            del drill["ends"]
        return {
            "version": 1, "saved_at": _iso(wall), "entries": entries,
            "raises": [[list(k), [mono - t for t in ts]] for k, ts in self.raises.items()],
            "windows": [w.as_dict() for w in self.windows.values()],
            "skipped": {str(i): u for i, u in self.skipped.items()},
            "scheduled_on": {str(i): u for i, u in self.scheduled_on.items()},
            "drill": drill, "last_tested": self.last_tested, "first_seen": self.first_seen,
            "last_report": self.last_report, "published_windows": self.published_windows,
        }

    def restore(self, doc: dict[str, Any], mono: float, wall: datetime, synced: bool = True) -> None:
        """State from before a restart. The time the agent was down (by the wall clock, when it is
        synchronised) counts towards escalation, flapping quiet and the drill's length."""
        self.synced = synced
        down = 0.0
        try:
            saved = datetime.fromisoformat(doc["saved_at"])
            if synced and 0 <= (wall - saved).total_seconds() <= MAX_DOWNTIME_S:
                down = (wall - saved).total_seconds()
        except (KeyError, TypeError, ValueError):
            pass
        alert_names = {f.name for f in fields(Alert)}
        entry_names = {f.name for f in fields(Entry)} - {"alert", "esc_since", "esc_elapsed", "quiet_since"}
        for d in doc.get("entries", []):
            try:
                alert = Alert(**{k: v for k, v in d["alert"].items() if k in alert_names})
                e = Entry(alert=alert, **{k: v for k, v in d.items() if k in entry_names})
            except (KeyError, TypeError):
                continue
            e.esc_elapsed = float(d.get("esc_elapsed") or 0.0)
            if d.get("esc_running"):
                e.esc_elapsed += down
                e.esc_since = mono
            if d.get("quiet_age") is not None:
                e.quiet_since = mono - float(d["quiet_age"]) - down
            self.entries[e.key] = e
        for key, ages in doc.get("raises", []):
            self.raises[tuple(key)] = sorted(mono - float(a) - down for a in ages)
        for w in doc.get("windows", []):
            try:
                window = Window(w["rule"], w["source"], datetime.fromisoformat(w["until"]), w["reason"], w["by"])
            except (KeyError, TypeError, ValueError):
                continue
            self.windows[(window.rule, window.source)] = window
        n = len(self.policy.scheduled)
        self.skipped = {int(i): u for i, u in doc.get("skipped", {}).items() if int(i) < n}
        self.scheduled_on = {int(i): u for i, u in doc.get("scheduled_on", {}).items() if int(i) < n}
        d = doc.get("drill")
        if d:
            inputs = tuple(i for i in d.get("inputs", []) if i in self.policy.panic_inputs)
            if inputs:
                self.drill = Drill(inputs, d["by"], d["started_at"], mono + float(d["remaining"]) - down,
                                   float(d.get("minutes", 0)), dict(d.get("pressed", {})))
        self.last_tested = dict(doc.get("last_tested", {}))
        self.first_seen = dict(doc.get("first_seen", {}))
        self.last_report = doc.get("last_report")
        self.published_windows = list(doc.get("published_windows", []))

    def reconcile(self, engine_active: dict[tuple[str, str], Alert], known_sources: set[str] | None,
                  mono: float, wall: datetime) -> list[Output]:
        """After ``restore``: line the book up with the rules engine's restored alerts.
        An alert the engine holds and the book does not is adopted (and republished with its
        handling); an entry the engine no longer holds is forgotten unless flapping holds it or
        the book raised it; an entry of a part no longer configured clears; entries whose last
        version was not handed over before the stop are republished."""
        out: list[Output] = []
        for key, alert in engine_active.items():
            e = self.entries.get(key)
            if e is None:  # the book lost it: adopted, its escalation clock starts now
                e = Entry(alert=alert, escalation=LEVELS[0] if alert.priority == 1 else None)
                e.suppressed = self._suppression(alert.rule, alert.source, wall)
                self._escalation_clock(e, mono)
                self.entries[key] = e
                e.published = -1  # never published with its handling
            if e.flapping and not e.condition:
                continue  # restored from its (held) publication, not from its condition: still quiet
            e.condition = True
            e.quiet_since = None
        for key, e in list(self.entries.items()):
            if key in engine_active:
                continue
            if e.alert.rule in OWN_RULES:
                if e.alert.rule == "drill-due" and e.alert.source not in self.policy.panic_inputs:
                    e.alert.cleared_at = _iso(wall.astimezone(self.tz))
                    out.append(self._close(e))
                continue
            if not e.flapping:
                del self.entries[key]
                continue
            e.condition = False
            if e.quiet_since is None:
                e.quiet_since = mono
            if known_sources is not None and e.alert.source not in known_sources:
                e.alert.cleared_at = _iso(wall.astimezone(self.tz))
                e.alert.message = f"{e.alert.source} is no longer configured"
                out.append(self._close(e))
        for e in self.entries.values():
            if e.published < e.version:
                out.append(self._publish(e, True))
        return out + self._refresh(mono, wall)
