"""A stand-in for the ``lgpio`` module, so gpiozero's real ``LGPIOFactory``
(the default on Raspberry Pi OS Bookworm and the Pi 5) runs here.

It behaves as lgpio does where the agent depends on it:
- ``gpio_claim_output(handle, gpio, level=0)`` drives the line at ``level``,
  0 unless told otherwise; gpiozero's ``pin.function = "output"`` passes none;
- gpiozero's ``LGPIOPin.close()`` claims the line back as a floating input;
- alerts: a level change on an input is reported to ``callback`` functions
  on lgpio's own thread, ``delay_s`` late, with the edge's own level and its
  timestamp in nanoseconds (``callback(chip, gpio, level, timestamp_ns)``).

``FakeChip`` is the hardware: it outlives a factory (a process), so a
restart can be modelled by a second factory on the same chip. ``history``
lists every level each line has been driven at, in order.
"""

from __future__ import annotations

import contextlib
import queue
import sys
import threading
import time

SET_ACTIVE_LOW, SET_OPEN_DRAIN, SET_OPEN_SOURCE = 4, 8, 16
SET_PULL_UP, SET_PULL_DOWN, SET_PULL_NONE = 32, 64, 128
SET_BIAS_PULL_UP, SET_BIAS_PULL_DOWN, SET_BIAS_DISABLE = SET_PULL_UP, SET_PULL_DOWN, SET_PULL_NONE
RISING_EDGE, FALLING_EDGE, BOTH_EDGES = 1, 2, 3
MODE_OUT = 1 << 1


class error(Exception):
    pass


class Line:
    def __init__(self, external: int = 0):
        self.output = False
        self.driven = 0
        self.external = external   # what the wiring (pull resistor, contact) holds an undriven line at
        self.flags = 0
        self.alert_edges = 0

    @property
    def level(self) -> int:
        return self.driven if self.output else self.external


class FakeChip:
    def __init__(self, delay_s: float = 0.0):
        self.lines: dict[int, Line] = {}
        self.history: dict[int, list[int]] = {}
        self.delay_s = delay_s
        self.callbacks: list[_Callback] = []
        self._queue: "queue.Queue[tuple | None]" = queue.Queue()
        self._thread: threading.Thread | None = None
        self.queued = self.delivered = 0

    def line(self, gpio: int) -> Line:
        return self.lines.setdefault(gpio, Line())

    def _drive(self, gpio: int, level: int) -> None:
        line = self.line(gpio)
        line.output, line.driven = True, int(bool(level))
        self.history.setdefault(gpio, []).append(line.driven)

    def set_external(self, gpio: int, level: int) -> None:
        """The outside world changes an undriven line (a contact closes, a pull resistor)."""
        line = self.line(gpio)
        before = line.level
        line.external = int(bool(level))
        if not line.output and line.level != before and line.alert_edges:
            edge = RISING_EDGE if line.level else FALLING_EDGE
            if line.alert_edges & edge:
                self._post(gpio, line.level, time.monotonic_ns())

    def _post(self, gpio, level, ts_ns) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._alerts, name="fake-lgpio-alerts", daemon=True)
            self._thread.start()
        self.queued += 1
        self._queue.put((time.monotonic() + self.delay_s, gpio, level, ts_ns))

    def _alerts(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            due, gpio, level, ts_ns = item
            if due > time.monotonic():
                time.sleep(due - time.monotonic())
            for cb in list(self.callbacks):
                if cb.gpio == gpio and not cb.cancelled:
                    try:
                        cb.func(0, gpio, level, ts_ns)
                    except Exception:
                        pass
            self.delivered += 1

    def drain(self, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while self.delivered < self.queued:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True


class _Callback:
    def __init__(self, gpio, func):
        self.gpio, self.func, self.cancelled = gpio, func, False

    def cancel(self):
        self.cancelled = True


class FakeLgpio:
    """The functions and constants of ``lgpio`` that gpiozero uses."""

    error = error

    def __init__(self, chip: FakeChip):
        self.chip = chip
        for name, value in globals().items():
            if name.isupper():
                setattr(self, name, value)

    def gpiochip_open(self, n):
        return 1

    def gpiochip_close(self, handle):
        pass

    def gpio_claim_input(self, handle, gpio, flags=0):
        line = self.chip.line(gpio)
        line.output, line.flags, line.alert_edges = False, flags, 0

    def gpio_claim_output(self, handle, gpio, level=0, flags=0):
        self.chip._drive(gpio, level)
        self.chip.line(gpio).flags = flags

    def gpio_claim_alert(self, handle, gpio, edges, flags=0, notify_handle=None):
        line = self.chip.line(gpio)
        line.output, line.alert_edges, line.flags = False, edges, flags

    def gpio_free(self, handle, gpio):
        self.chip.line(gpio).alert_edges = 0

    def gpio_get_mode(self, handle, gpio):
        line = self.chip.line(gpio)
        return (MODE_OUT if line.output else 0) | (line.flags & (SET_PULL_UP | SET_PULL_DOWN | SET_PULL_NONE))

    def gpio_read(self, handle, gpio):
        return self.chip.line(gpio).level

    def gpio_write(self, handle, gpio, level):
        line = self.chip.line(gpio)
        if not line.output:
            raise error("GPIO not allocated for output")
        self.chip._drive(gpio, level)

    def gpio_set_debounce_micros(self, handle, gpio, micros):
        pass

    def callback(self, handle, gpio, edges=BOTH_EDGES, func=None):
        cb = _Callback(gpio, func)
        self.chip.callbacks.append(cb)
        return cb

    def tx_pwm(self, *a):
        raise error("no PWM here")


@contextlib.contextmanager
def lgpio_factory(chip: FakeChip, revision: int = 0xC03111):
    """gpiozero's real LGPIOFactory on ``chip`` (a Raspberry Pi 4 B by default)."""
    fake = FakeLgpio(chip)
    saved = sys.modules.get("lgpio")
    sys.modules["lgpio"] = fake
    import gpiozero.pins.lgpio as gl
    saved_ref = gl.lgpio
    gl.lgpio = fake

    class Factory(gl.LGPIOFactory):
        def _get_revision(self):
            return revision

    from gpiozero.pins.local import LocalPiFactory
    factory = Factory(chip=0)
    try:
        yield factory
    finally:
        try:
            factory.close()
        finally:
            # gpiozero shares pins and reservations between every local factory of a
            # process; a factory here is one process, so they go with it
            LocalPiFactory.pins.clear()
            LocalPiFactory._reservations.clear()
            gl.lgpio = saved_ref
            if saved is None:
                sys.modules.pop("lgpio", None)
            else:
                sys.modules["lgpio"] = saved
