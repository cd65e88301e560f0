"""Contacts on GPIO: doors, panic buttons, motion detectors, reset keys.

The logic (polarity, pulse filter, debounce, the panic latch) is pure and
takes time as an argument; ``InputWatcher`` binds it to a gpiozero pin whose
edge callbacks drive it (interrupts, not polling).

Every edge is taken with **its own level and its own timestamp** (gpiozero's
``Pin.when_changed(ticks, state)``), never with a fresh read of the pin: the
lgpio factory (the default on Raspberry Pi OS Bookworm and the Pi 5) runs
callbacks on its own thread, tens of milliseconds after the edge, by which
time a short press has already been released.

- ``min_pulse_ms`` (``PulseFilter``; panic default 10 ms, else 0): an
  activation shorter than this, measured between the two edges' timestamps,
  is a glitch and is dropped. A press is passed on as soon as it is known to
  be longer: when its release edge arrives (width >= min_pulse), or
  ``min_pulse_ms`` after the press edge while the pin still reads pressed. A
  press whose release edge never comes is passed on after a grace period
  (the safe side for an alarm loop).
- ``bounce_ms`` (``Debouncer``, done here because gpiozero's mock pins ignore
  ``bounce_time`` and the behaviour must be tested):
  panic and reset inputs: **leading edge**, the first (filtered) edge counts at
  once, then edges are ignored for ``bounce_ms``; at the end of that lock-out
  the level of the last edge seen is the input's level.
  Doors and motion: **trailing edge**, a level counts once it has held for
  ``bounce_ms``, so a bouncing contact gives one change, not many.
- The panic latch, its update and ``reset`` run under one lock.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger(__name__)

ACTIVE_WORD = {"door": "open", "panic": "alarm", "motion": "motion", "reset": "pressed"}
REST_WORD = {"door": "closed", "panic": "normal", "motion": "still", "reset": "released"}
#: how long a press whose release edge has not arrived is held before it is taken as real
LOST_EDGE_GRACE_S = 0.25
#: an edge reported more than this late is taken as "now" (a timestamp on another time base)
MAX_LATENESS_S = 5.0


def active_when_contact_closed(contact: str) -> bool:
    """NO contact: active (door open, button pressed) when the contact closes; NC: when it opens."""
    return contact == "no"


class PulseFilter:
    """Drops activations shorter than ``min_s`` (pure; times in seconds).

    ``edge`` and ``expire`` return the edges to pass on, as ``(active, t)``.
    """

    def __init__(self, min_s: float, grace_s: float = LOST_EDGE_GRACE_S):
        self.min_s = min_s
        self.grace_s = grace_s
        self.pending_at: float | None = None
        self.glitches = 0

    def edge(self, active: bool, t: float) -> list[tuple[bool, float]]:
        if self.min_s <= 0:
            return [(active, t)]
        if active:
            if self.pending_at is None:
                self.pending_at = t
            return []
        if self.pending_at is None:
            return [(False, t)]
        started, self.pending_at = self.pending_at, None
        if t - started >= self.min_s - 1e-9:
            return [(True, started), (False, t)]
        self.glitches += 1
        log.debug("input pulse of %.1f ms ignored (min_pulse %.0f ms)", (t - started) * 1000, self.min_s * 1000)
        return []

    def due(self) -> float | None:
        """When ``expire`` should be called (None: nothing pending)."""
        return None if self.pending_at is None else self.pending_at + self.min_s

    def expire(self, now: float, pin_active: bool) -> list[tuple[bool, float]]:
        """A pending press has lasted ``min_s`` with no release edge: pass it on if the
        pin still reads pressed, or once the release edge is overdue (lost)."""
        if self.pending_at is None or now < self.pending_at + self.min_s:
            return []
        if pin_active or now >= self.pending_at + self.min_s + self.grace_s:
            started, self.pending_at = self.pending_at, None
            return [(True, started)]
        return []


class Debouncer:
    """Pure debounce state machine; ``now`` in seconds."""

    def __init__(self, bounce_s: float, leading: bool, initial: bool):
        self.bounce_s = bounce_s
        self.leading = leading
        self.state = initial
        self.last_level = initial   # the level of the last edge seen
        self.lock_until = float("-inf")
        self.deadline: float | None = None

    def _lead(self, level: bool, now: float) -> bool | None:
        """Leading edge: a different level counts at once, outside the lock-out."""
        if now >= self.lock_until and level != self.state:
            self.state = level
            self.lock_until = now + self.bounce_s
            return level
        return None

    def edge(self, level: bool, now: float) -> bool | None:
        """An edge to ``level``; returns the new accepted state, or None for no change yet."""
        self.last_level = level
        if self.leading:
            return self._lead(level, now)
        self.deadline = now + self.bounce_s
        if self.bounce_s == 0 and level != self.state:
            self.state = level
            return level
        return None

    def settle_at(self) -> float | None:
        """When ``settle`` should be called (None: nothing pending)."""
        if self.leading:
            return self.lock_until if self.lock_until > float("-inf") else None
        return self.deadline

    def settle(self, level: bool, now: float) -> bool | None:
        """At (or after) ``settle_at``, with the input's level (that of the last edge seen)."""
        if self.leading:
            return self._lead(level, now)
        if self.deadline is not None and now >= self.deadline:
            self.deadline = None
            if level != self.state:
                self.state = level
                return level
        return None


class PanicLatch:
    """A panic alarm stays until reset, and a reset needs the button released.
    Thread-safe: ``update`` (edge callbacks, timers) and ``reset`` (commands,
    reset keys) run under one lock."""

    def __init__(self, pressed: bool = False, latched: bool = False):
        self._lock = threading.Lock()
        self.pressed = pressed
        self.alarm = pressed or latched

    def update(self, pressed: bool) -> bool:
        """The button's level changed; returns True when this raised the alarm."""
        with self._lock:
            self.pressed = pressed
            if pressed and not self.alarm:
                self.alarm = True
                return True
            return False

    def reset(self) -> str | None:
        """Clear the latch; returns a reason when it cannot be cleared."""
        with self._lock:
            if self.pressed:
                return "the panic button is still pressed (or its loop is open)"
            if not self.alarm:
                return "not in alarm"
            self.alarm = False
            return None


@dataclass
class InputChange:
    id: str
    kind: str
    state: str            # the SPEC's word: open/closed, alarm/normal, motion/still, pressed/released
    active: bool
    at_boot: bool = False


class InputWatcher:
    """One configured input on a gpiozero pin.

    The pin's ``when_changed(ticks, state)`` callback gives each edge's level
    and timestamp; both drive the logic. The edge's time on our monotonic
    clock is ``now - (factory.ticks() - ticks)``: a callback that runs late is
    placed where its edge happened.
    """

    def __init__(self, cfg, pin_factory, on_change: Callable[[InputChange], None], clock=time.monotonic):
        from gpiozero import DigitalInputDevice
        self.cfg = cfg
        self.kind = cfg.kind
        self.on_change = on_change
        self.clock = clock
        self._lock = threading.RLock()   # edges, timers and reset: one at a time
        self._timer: threading.Timer | None = None
        self._closed = False
        self.device = DigitalInputDevice(cfg.pin, pull_up=cfg.pull_up, pin_factory=pin_factory)
        self.pin = self.device.pin
        self.factory = self.device.pin_factory
        self._closed_means_active = active_when_contact_closed(cfg.contact)
        leading = cfg.kind in ("panic", "reset")
        min_pulse_ms = getattr(cfg, "min_pulse_ms", None)
        if min_pulse_ms is None:
            min_pulse_ms = 10 if cfg.kind == "panic" else 0
        self.pulses = PulseFilter(min_pulse_ms / 1000.0)
        self.debouncer = Debouncer(cfg.bounce_ms / 1000.0, leading, self._level())
        self.latch = PanicLatch(pressed=self.active) if cfg.kind == "panic" else None
        # the pin's own callback: (ticks, state) of the edge; replaces the device's
        # event handler (we do not use when_activated, which carries neither)
        self.pin.when_changed = self._pin_changed

    def _active_from_state(self, state) -> bool:
        """A pin level (electrical) -> is the input active? (pulled up: a closed contact reads low)."""
        contact_closed = (not bool(state)) if self.cfg.pull_up else bool(state)
        return contact_closed == self._closed_means_active

    def _level(self) -> bool:
        """The input's level read from the pin now (used at boot and for a pending press only)."""
        return self._active_from_state(self.pin.state)

    @property
    def active(self) -> bool:
        return self.debouncer.state

    @property
    def state(self) -> str:
        if self.latch is not None:
            return "alarm" if self.latch.alarm else "normal"
        return ACTIVE_WORD[self.kind] if self.active else REST_WORD[self.kind]

    def boot_state(self) -> InputChange:
        return InputChange(self.cfg.id, self.kind, self.state, self.active, at_boot=True)

    def _edge_time(self, ticks) -> float:
        now = self.clock()
        try:
            late = self.factory.ticks_diff(self.factory.ticks(), ticks)
        except Exception:
            return now
        if not 0 <= late <= MAX_LATENESS_S:
            return now
        return now - late

    def _pin_changed(self, ticks, state) -> None:
        """gpiozero's pin callback (lgpio: on its own thread, maybe late)."""
        try:
            self._edge(self._active_from_state(state), self._edge_time(ticks))
        except Exception:  # a callback must never die silently: the next edge must still count
            log.exception("input %s: edge handling failed", self.cfg.id)

    def _edge(self, active: bool, t: float) -> None:
        with self._lock:  # changes are reported under the lock: in the order of their edges
            if self._closed:
                return
            for level, at in self.pulses.edge(active, t):
                self._debounced(self.debouncer.edge(level, at))
            self._arm_timer()

    def _debounced(self, changed: bool | None) -> None:
        if changed is not None:
            self._changed(changed)

    def _next_wake(self, now: float) -> float | None:
        times = []
        if self.pulses.pending_at is not None:
            due = self.pulses.due()
            times.append(due if now < due else due + self.pulses.grace_s)
        d = self.debouncer
        if d.bounce_s > 0:
            if d.leading and d.last_level != d.state:
                times.append(max(d.lock_until, now))
            elif not d.leading and d.deadline is not None:
                times.append(d.deadline)
        return min(times) if times else None

    def _arm_timer(self) -> None:
        now = self.clock()
        at = self._next_wake(now)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if at is None:
            return
        self._timer = threading.Timer(max(0.0, at - now) + 0.001, self._settle)
        self._timer.daemon = True
        self._timer.start()

    def _settle(self) -> None:
        try:
            with self._lock:
                if self._closed:
                    return
                now = self.clock()
                for level, at in self.pulses.expire(now, self._level()):
                    self._debounced(self.debouncer.edge(level, at))
                at = self.debouncer.settle_at()
                if at is not None and now >= at:
                    self._debounced(self.debouncer.settle(self.debouncer.last_level, now))
                self._arm_timer()
        except Exception:
            log.exception("input %s: debounce timer failed", self.cfg.id)

    def _changed(self, active: bool) -> None:
        if self.latch is not None:
            raised = self.latch.update(active)
            if not raised:
                return  # a release, or a press while already latched: the alarm state is unchanged
        self.on_change(InputChange(self.cfg.id, self.kind, self.state, active))

    def reset(self) -> str | None:
        if self.latch is None:
            return f"{self.cfg.id} is not a panic input"
        with self._lock:
            if self.pulses.pending_at is not None:  # a press still being measured
                return "the panic button is still pressed (or its loop is open)"
            reason = self.latch.reset()
            if reason is None:
                self.on_change(InputChange(self.cfg.id, self.kind, self.state, self.active))
        return reason

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
        self.device.close()
