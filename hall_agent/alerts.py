"""Between the rules engine and the outbox: alert envelopes, their retained
topics, and the active alerts kept in the state folder across restarts."""

from __future__ import annotations

import json
import logging
import os
import threading
from datetime import datetime
from pathlib import Path
from typing import Callable

from .envelope import Envelope, Events, Moment
from .outbox import Outbox, Raw
from .rules import AlertChange, RulesEngine

log = logging.getLogger(__name__)


class Alerts:
    def __init__(self, engine: RulesEngine, events: Events, emit: Callable[[Envelope | Raw], int | None], outbox: Outbox,
                 path: Path, now: Callable[[], datetime]):
        self.engine = engine
        self.events = events
        self.emit = emit
        self.outbox = outbox
        self.path = path
        self.now = now
        self.lock = threading.RLock()
        self._dirty = False

    def load(self) -> list[dict]:
        """Active alerts from before a restart (not raised again)."""
        try:
            items = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as e:
            log.warning("could not read %s (%s): starting with no active alerts", self.path, e)
            return []
        self.engine.restore(items if isinstance(items, list) else [])
        return items

    def feed(self, call: Callable[[datetime], list[AlertChange]]) -> None:
        """Run one engine call (given the time) under the lock and publish what it changed."""
        with self.lock:
            changes = call(self.now())
            for change in changes:
                self.publish(change)
            if changes:
                self._dirty = True

    def publish(self, change: AlertChange) -> None:
        a = change.alert
        moment = Moment(a.category, a.priority)
        if change.active:
            self.emit(self.events.alert(a.rule, a.source, a.data("active"), a.severity, moment))
            log.warning("alert %s/%s raised: %s", a.rule, a.source, a.message)  # after: off the alarm path
        else:
            self.emit(self.events.alert(a.rule, a.source, a.data("cleared"), "info", moment, retain=False))
            # then the empty retained message that removes the topic, through the same path (same order)
            self.emit(Raw(self.events.topic(f"alert/{a.rule}/{a.source}"), b"", qos=1, retain=True))
            log.info("alert %s/%s cleared", a.rule, a.source)

    def save(self, force: bool = False) -> None:
        """Write the active alerts (off the alarm path: called by the agent's tick)."""
        with self.lock:
            if not (self._dirty or force):
                return
            data = json.dumps(self.engine.snapshot(), ensure_ascii=False)
            self._dirty = False
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(data)
        os.replace(tmp, self.path)

    def active(self) -> list[dict]:
        with self.lock:
            items = list(self.engine.active.values())
        items.sort(key=lambda a: (a.priority, a.raised_at))
        return [{"rule": a.rule, "source": a.source, "severity": a.severity, "priority": a.priority,
                 "category": a.category, "message": a.message, "raised_at": a.raised_at} for a in items]
