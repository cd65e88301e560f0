"""Between the rules engine and the outbox: alert envelopes, their retained
topics, and the active alerts kept across restarts.

An alert's state is committed in the same transaction as the envelope that
announces it (the outbox's ``state`` table, key ``alert/{rule}/{source}``):
after a crash or a power cut the agent holds exactly the alerts whose
envelopes it committed. The engine keeps a change only once its envelope was
emitted; a change that could not be emitted is undone, so it is tried again.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Callable

from .envelope import Envelope, Events, Moment
from .outbox import Outbox, Raw
from .rules import AlertChange, RulesEngine

log = logging.getLogger(__name__)

PREFIX = "alert/"


def state_key(rule: str, source: str) -> str:
    return f"{PREFIX}{rule}/{source}"


def _state(alert) -> str:
    """What the engine restores: the alert's own fields (its handling lives in alarms.json)."""
    return json.dumps({k: v for k, v in asdict(alert).items() if k != "handling"}, ensure_ascii=False, default=str)


class Alerts:
    def __init__(self, engine: RulesEngine, events: Events, emit: Callable[..., int | None], outbox: Outbox,
                 path: Path, now: Callable[[], datetime]):
        self.engine = engine
        self.events = events
        self.emit = emit
        self.outbox = outbox
        self.path = path  # alerts.json of earlier versions: imported once, then renamed
        self.now = now
        self.lock = threading.RLock()
        self.problems: list[str] = []  # damaged state met while loading (the agent reports them)
        #: alarm handling (hall_agent/alarms): turns the rules' changes into what is published
        self.hook: Callable[[list[AlertChange]], list[AlertChange]] | None = None
        self.unhook: Callable[[list[AlertChange]], None] | None = None  # takes back what could not be emitted
        self.retained_alerts: Callable[[], list[AlertChange]] | None = None  # what republish() sends

    def load(self) -> list[dict]:
        """Active alerts from before a restart (not raised again)."""
        items = []
        for key, value in sorted(self.outbox.state_items(PREFIX).items()):
            try:
                item = json.loads(value)
            except ValueError:
                self.problems.append(f"alert state {key} unreadable: dropped")
                self.outbox.put_state({key: None})
                continue
            if isinstance(item, dict):
                items.append(item)
        if not items:
            items = self._import_legacy()
        self.engine.restore(items)
        return items

    def _import_legacy(self) -> list[dict]:
        """alerts.json of an earlier version: imported into the outbox, then renamed (never deleted);
        a damaged one is set aside with a warning."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        except OSError as e:
            self.problems.append(f"{self.path} unreadable ({e.strerror or e}): no alerts restored from it")
            return []
        try:
            items = json.loads(text)
            if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
                raise ValueError("not a list of alerts")
        except ValueError as e:
            aside = self.path.with_name(f"{self.path.name}.damaged-{int(time.time())}")
            self.problems.append(f"{self.path} damaged ({e}): moved to {aside}")
            try:
                self.path.rename(aside)
            except OSError:
                pass
            return []
        self.outbox.put_state({state_key(i.get("rule", "?"), i.get("source", "?")): json.dumps(i, ensure_ascii=False)
                               for i in items})
        try:
            self.path.rename(self.path.with_name(self.path.name + ".imported"))
        except OSError:
            pass
        return items

    def feed(self, call: Callable[[datetime], list[AlertChange]]) -> None:
        """Run one engine call (given the time) under the lock and publish what it changed;
        a change that could not be emitted is undone in the engine (it is tried again)."""
        with self.lock:
            changes = call(self.now())
            outs = self.hook(changes) if self.hook is not None else changes
            for i, change in enumerate(outs):
                try:
                    self.publish(change)
                except Exception as e:
                    failed = outs[i:]
                    if self.hook is None:
                        undo = failed
                    else:  # the engine's own changes behind what failed; the hook takes back its part
                        keys = {c.alert.key for c in failed}
                        undo = [c for c in changes if c.alert.key in keys]
                        if self.unhook is not None:
                            self.unhook(failed)
                    for later in reversed(undo):
                        if type(later) is AlertChange:
                            self.engine.undo(later)
                    log.error("alert %s/%s could not be emitted (%s): not recorded", change.alert.rule,
                              change.alert.source, e)
                    if not isinstance(e, RuntimeError):
                        raise
                    return

    def publish(self, change: AlertChange) -> None:
        a = change.alert
        moment = Moment(a.category, a.priority)
        key = state_key(a.rule, a.source)
        if change.active:
            self.emit(self.events.alert(a.rule, a.source, a.data("active"), a.severity, moment),
                      state={key: _state(a)})
            log.warning("alert %s/%s raised: %s", a.rule, a.source, a.message)  # after: off the alarm path
        else:
            self.emit(self.events.alert(a.rule, a.source, a.data("cleared"), "info", moment, retain=False),
                      state={key: None})
            # then the empty retained message that removes the topic, through the same path (same order)
            self.emit(Raw(self.events.topic(f"alert/{a.rule}/{a.source}"), b"", qos=1, retain=True))
            log.info("alert %s/%s cleared", a.rule, a.source)

    def republish(self) -> None:
        """Every active alert again (after its retained topic or its state may be lost)."""
        with self.lock:
            if self.retained_alerts is not None:  # with their handling (hall_agent/alarms)
                for change in self.retained_alerts():
                    self.publish(change)
                return
            for alert in list(self.engine.active.values()):
                m = Moment(alert.category, alert.priority)
                self.emit(self.events.alert(alert.rule, alert.source, alert.data("active"), alert.severity, m),
                          state={state_key(alert.rule, alert.source): _state(alert)})

    def active(self) -> list[dict]:
        with self.lock:
            items = list(self.engine.active.values())
        items.sort(key=lambda a: (a.priority, a.raised_at))
        return [{"rule": a.rule, "source": a.source, "severity": a.severity, "priority": a.priority,
                 "category": a.category, "message": a.message, "raised_at": a.raised_at} for a in items]
