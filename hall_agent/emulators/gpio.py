"""A contact wired to a GPIO pin, for gpiozero's mock pin factory.

gpiozero's ``MockPin`` drives itself to its pull level whenever the pull is
set, so a door contact closed at boot would read open. ``ContactPin`` models
the wiring: the pull resistor sets the level while the contact is open; a
closed contact ties the pin to the other rail (to ground with a pull-up).
"""

from __future__ import annotations

from gpiozero.pins.mock import MockFactory, MockPin


class ContactPin(MockPin):
    contact_closed = False

    def _set_pull(self, value):
        super()._set_pull(value)
        self._apply()

    def set_contact(self, closed: bool) -> None:
        self.contact_closed = closed
        self._apply()

    def _apply(self) -> None:
        if self.function != "input":
            return
        pull_up = self._pull == "up"
        level = (not self.contact_closed) if pull_up else self.contact_closed
        self.drive_high() if level else self.drive_low()


def contact_factory() -> MockFactory:
    return MockFactory(pin_class=ContactPin)


class LatePin(ContactPin):
    """A pin whose edge callbacks arrive late, on another thread, each with the
    edge's own timestamp and level: what the lgpio factory does on a real Pi
    (its alert thread runs callbacks tens of milliseconds after the edge).

    ``delay_s``: how late every callback runs. Callbacks keep their order.
    """

    delay_s = 0.05

    def __init__(self, factory, info):
        import queue
        super().__init__(factory, info)
        self._late: "queue.Queue[tuple[float, float, bool] | None]" = queue.Queue()
        self._worker = None
        self.queued = 0
        self.delivered = 0

    def _call_when_changed(self, ticks=None, state=None):
        import threading
        from time import monotonic
        edge = (self._last_change if ticks is None else ticks, self._state if state is None else state)
        if self._worker is None:
            self._worker = threading.Thread(target=self._deliver, name=f"late-{self.info.name}", daemon=True)
            self._worker.start()
        self.queued += 1
        self._late.put((monotonic() + self.delay_s, *edge))

    def _deliver(self) -> None:
        from time import monotonic, sleep
        from gpiozero.pins.pi import PiPin
        while True:
            item = self._late.get()
            if item is None:
                return
            due, ticks, state = item
            wait = due - monotonic()
            if wait > 0:
                sleep(wait)
            try:
                PiPin._call_when_changed(self, ticks, state)
            finally:
                self.delivered += 1

    def drain(self, timeout: float = 5.0) -> bool:
        """Wait until every edge so far has been delivered."""
        from time import monotonic, sleep
        deadline = monotonic() + timeout
        while self.delivered < self.queued:
            if monotonic() > deadline:
                return False
            sleep(0.005)
        return True

    def close(self):
        super().close()
        if self._worker is not None:
            self._late.put(None)


def late_factory(delay_s: float = 0.05) -> MockFactory:
    """A mock factory whose pins deliver edges ``delay_s`` late, with their own level (as lgpio)."""
    cls = type("LatePin", (LatePin,), {"delay_s": delay_s})
    return MockFactory(pin_class=cls)
