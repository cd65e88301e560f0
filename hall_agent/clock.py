"""Time as a dependency: one object gives wall time, monotonic time and
whether the system clock is synchronised.

Rules of use (SPEC section 4):
- durations (``for_s``, ``held_open_s``, means, settle, probe and poll
  timings, ages) come from :meth:`Clock.monotonic` only;
- wall-clock time (:meth:`Clock.time`, :meth:`Clock.now`) only for calendar
  questions and timestamps;
- a verdict that needs the time of day waits for :meth:`Clock.synced`.

The agent builds one :class:`SystemClock` and hands it to every part; tests
hand a :class:`FakeClock` and move it.
"""

from __future__ import annotations

import threading
import time as _time
from datetime import datetime, timezone, tzinfo
from typing import Callable, Protocol


class Clock(Protocol):
    def time(self) -> float: ...           # seconds since the epoch (wall clock; may jump)
    def monotonic(self) -> float: ...      # seconds, never jumps; for durations only
    def synced(self) -> bool: ...          # has the system clock been synchronised?
    def now(self, tz: tzinfo | None = None) -> datetime: ...
    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The machine's clocks. ``synced`` asks ``sync_probe`` (by default the
    kernel / timesyncd / timedated, see ``scheduler.TimeSync``) and remembers a
    positive answer: once synchronised, a clock stays usable.

    Every envelope asks ``synced()``, alarms included, and the probe may be a
    subprocess (``timedatectl``, up to 5 s): only the first question waits for
    the probe; later ones answer at once from the last result while a probe
    runs in the background, at most every ``probe_every_s``."""

    def __init__(self, sync_probe: Callable[[], bool] | None = None, probe_every_s: float = 5.0):
        self._probe = sync_probe
        self._synced = sync_probe is None
        self._lock = threading.Lock()
        self.probe_every_s = probe_every_s
        self._probed_at: float | None = None
        self._probing = False

    def time(self) -> float:
        return _time.time()

    def monotonic(self) -> float:
        return _time.monotonic()

    def _ask(self) -> None:
        try:
            answer = bool(self._probe())
        except Exception:  # a probe must never take a caller down
            answer = False
        with self._lock:
            self._synced = self._synced or answer
            self._probing = False

    def synced(self) -> bool:
        if self._synced:
            return True
        with self._lock:
            now = _time.monotonic()
            due = self._probed_at is None or now - self._probed_at >= self.probe_every_s
            if self._synced or self._probe is None or self._probing or not due:
                return self._synced
            first = self._probed_at is None
            self._probed_at = now
            self._probing = True
        if first:
            self._ask()
        else:
            threading.Thread(target=self._ask, name="clock-sync-probe", daemon=True).start()
        return self._synced

    def now(self, tz: tzinfo | None = None) -> datetime:
        return datetime.fromtimestamp(self.time(), tz or timezone.utc)

    def sleep(self, seconds: float) -> None:
        _time.sleep(max(0.0, seconds))


class FakeClock:
    """A clock a test owns. ``advance`` moves both clocks; ``step`` moves only
    the wall clock (what NTP does to a Pi without an RTC)."""

    def __init__(self, wall: float | datetime = 1_780_000_000.0, mono: float = 1000.0, synced: bool = True):
        if isinstance(wall, datetime):
            wall = wall.timestamp()
        self._wall = float(wall)
        self._mono = float(mono)
        self._synced = synced
        self._lock = threading.Lock()

    def time(self) -> float:
        with self._lock:
            return self._wall

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def synced(self) -> bool:
        return self._synced

    def set_synced(self, value: bool = True) -> None:
        self._synced = value

    def now(self, tz: tzinfo | None = None) -> datetime:
        return datetime.fromtimestamp(self.time(), tz or timezone.utc)

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._wall += seconds
            self._mono += seconds

    def step(self, seconds: float) -> None:
        with self._lock:
            self._wall += seconds

    def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))


SYSTEM = SystemClock()
