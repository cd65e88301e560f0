"""Contacts on GPIO: doors, panic buttons, motion detectors, reset keys.

The logic (polarity, debounce, the panic latch) is pure and takes time as an
argument; ``InputWatcher`` binds it to a gpiozero ``DigitalInputDevice``
whose edge callbacks drive it (interrupts, not polling).

Debounce (``bounce_ms``), done here because gpiozero's mock pins ignore
``bounce_time`` and the behaviour must be tested:

- panic and reset inputs: **leading edge** — the first edge counts at once,
  then edges are ignored for ``bounce_ms``; at the end of that lock-out the
  pin is read again and a different level is a new change. No delay on the
  alarm path; a glitch shorter than ``bounce_ms`` can raise an alarm (which,
  for a panic loop, is the safe side).
- doors and motion: **trailing edge** — a level counts once it has held for
  ``bounce_ms``, so a bouncing contact gives one change, not many.
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


def active_when_contact_closed(contact: str) -> bool:
    """NO contact: active (door open, button pressed) when the contact closes; NC: when it opens."""
    return contact == "no"


class Debouncer:
    """Pure debounce state machine; ``now`` in seconds."""

    def __init__(self, bounce_s: float, leading: bool, initial: bool):
        self.bounce_s = bounce_s
        self.leading = leading
        self.state = initial
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
        """At (or after) ``settle_at``, with the pin's current level."""
        if self.leading:
            return self._lead(level, now)
        if self.deadline is not None and now >= self.deadline:
            self.deadline = None
            if level != self.state:
                self.state = level
                return level
        return None


class PanicLatch:
    """A panic alarm stays until reset, and a reset needs the button released."""

    def __init__(self, pressed: bool = False, latched: bool = False):
        self.pressed = pressed
        self.alarm = pressed or latched

    def update(self, pressed: bool) -> bool:
        """The button's level changed; returns True when this raised the alarm."""
        self.pressed = pressed
        if pressed and not self.alarm:
            self.alarm = True
            return True
        return False

    def reset(self) -> str | None:
        """Clear the latch; returns a reason when it cannot be cleared."""
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
    """One configured input on a gpiozero pin."""

    def __init__(self, cfg, pin_factory, on_change: Callable[[InputChange], None], clock=time.monotonic):
        from gpiozero import DigitalInputDevice
        self.cfg = cfg
        self.kind = cfg.kind
        self.on_change = on_change
        self.clock = clock
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self.device = DigitalInputDevice(cfg.pin, pull_up=cfg.pull_up, pin_factory=pin_factory)
        self._closed_means_active = active_when_contact_closed(cfg.contact)
        leading = cfg.kind in ("panic", "reset")
        self.debouncer = Debouncer(cfg.bounce_ms / 1000.0, leading, self._level())
        self.latch = PanicLatch(pressed=self.active) if cfg.kind == "panic" else None
        self.device.when_activated = self._edge
        self.device.when_deactivated = self._edge

    def _level(self) -> bool:
        """True when the input is active (gpiozero's is_active = the contact is closed)."""
        return bool(self.device.is_active) == self._closed_means_active

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

    def _edge(self, *_: object) -> None:
        now = self.clock()
        with self._lock:
            changed = self.debouncer.edge(self._level(), now)
        if changed is not None:
            self._changed(changed)  # first the change (the alarm path), then the bookkeeping
        with self._lock:
            self._arm_timer()

    def _arm_timer(self) -> None:
        at = self.debouncer.settle_at()
        if at is None or self.debouncer.bounce_s == 0:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = threading.Timer(max(0.0, at - self.clock()) + 0.001, self._settle)
        self._timer.daemon = True
        self._timer.start()

    def _settle(self) -> None:
        with self._lock:
            changed = self.debouncer.settle(self._level(), self.clock())
            if changed is not None and self.debouncer.leading:
                self._arm_timer()
        if changed is not None:
            self._changed(changed)

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
            reason = self.latch.reset()
        if reason is None:
            self.on_change(InputChange(self.cfg.id, self.kind, self.state, self.active))
        return reason

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.device.close()
