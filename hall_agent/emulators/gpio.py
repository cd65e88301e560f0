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
