"""Relay outputs that switch equipment power."""

from __future__ import annotations

import threading


class Relay:
    """A relay on a GPIO pin. The pin is left as found at start (an agent restart
    must not switch the hall's equipment off); ``power`` is the level it drives."""

    def __init__(self, equipment_id: str, pin, pin_factory, active_high: bool = True):
        from gpiozero import OutputDevice
        self.id = equipment_id
        self._lock = threading.Lock()
        self.device = OutputDevice(pin, active_high=active_high, initial_value=None, pin_factory=pin_factory)

    def set(self, on: bool) -> None:
        with self._lock:
            if on:
                self.device.on()
            else:
                self.device.off()

    @property
    def power(self) -> str:
        return "on" if self.device.value else "off"

    def close(self) -> None:
        self.device.close()
